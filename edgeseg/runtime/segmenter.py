"""Segmenter: the embedding API — a frame in, labels at frame size out."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from edgeseg.export.spec import ModelSpec
from edgeseg.runtime import kernels
from edgeseg.runtime.backends import load_backend


@dataclass
class SegResult:
    """One frame's segmentation: ``labels`` (H, W) uint8 at frame size."""

    labels: np.ndarray
    spec: ModelSpec
    frame: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """The frame with each class's palette colour blended in (BGR uint8)."""
        if self.frame is None:
            raise ValueError("this result holds no frame to draw on")
        return kernels.overlay(self.frame, self.labels, self.spec.palette, alpha)

    def colorize(self) -> np.ndarray:
        """The label map painted in the palette (BGR uint8)."""
        return kernels.reference.palette_lut_bgr(self.spec.palette)[self.labels]


class Segmenter:
    """Run a segmentation model on BGR frames.

    >>> seg = Segmenter("model.onnx")        # or a .pt checkpoint; backend="auto"
    >>> res = seg(frame_bgr)                 # res.labels: (H, W) uint8 at frame size
    >>> vis = res.overlay(alpha=0.5)

    One instance is meant for one thread; create one per camera, they are cheap.
    """

    def __init__(self, model: str | os.PathLike, backend: str = "auto", device: str = "auto",
                 mode: str = "nearest") -> None:
        self.backend = load_backend(model, backend, device)
        self.spec: ModelSpec = self.backend.spec
        self.mode = mode
        self._input = np.empty((1, 3, *self.spec.input_hw), np.float32)  # reused every frame

    def __call__(self, frame_bgr: np.ndarray) -> SegResult:
        t0 = time.perf_counter()
        x = kernels.preprocess(frame_bgr, self.spec.input_hw, self.spec.input.mean, self.spec.input.std,
                               out=self._input)
        t1 = time.perf_counter()
        scores = self.backend.infer(x)
        t2 = time.perf_counter()
        labels = kernels.postprocess(scores, frame_bgr.shape[:2], mode=self.mode)
        t3 = time.perf_counter()
        return SegResult(labels, self.spec, frame_bgr,
                         {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3})
