"""Segmenter: the embedding API — frames in, labels at frame size out."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeseg import zoo
from edgeseg.errors import EdgesegError
from edgeseg.runtime import kernels
from edgeseg.runtime.backends import load_backend
from edgeseg.runtime.backends.base import Backend
from edgeseg.runtime.result import SegResult
from edgeseg.runtime.smoothing import SmoothState
from edgeseg.spec import ModelSpec

MODES = ("nearest", "bilinear")
# edgeseg.stream, set by edgeseg.streaming when it loads (``import edgeseg`` loads it): the
# streaming service lives above the runtime, which never imports it.
STREAM_ENTRY: Callable[..., Any] | None = None


class Segmenter:
    """Run a segmentation model on BGR frames.

    >>> seg = Segmenter("model.onnx")        # or a .engine / .pt; backend="auto"
    >>> seg = Segmenter()                    # the shipped road model (edgeseg models lists all)
    >>> res = seg(frame_bgr)                 # res.labels: (H, W) uint8 at frame size
    >>> vis = res.overlay(alpha=0.5)
    >>> results = seg.segment([cam0, cam1])  # several frames, one batched inference

    One instance is meant for one thread; create one per camera, or batch the cameras.

    ``mode``: ``"nearest"`` (argmax at model size, labels upsampled: the runtime default) or
    ``"bilinear"`` (logits resized to frame size first: the accuracy path). In nearest mode an
    ONNX model's trailing logits resize runs in the post-processing kernel instead of ONNX
    Runtime (``fuse_resize=False`` keeps the graph whole); the labels are the model's.
    On a GPU the whole frame path runs there (:mod:`edgeseg.runtime.gpu_pipeline`);
    ``cuda_graph`` replays it as one CUDA graph, ``precision="fp16"`` runs a ``.pt`` in half
    precision.
    ``confidence``: each result also carries ``confidence``, (H, W) uint8 round(255 x the
    winning class's softmax probability) of the model's output grid (docs/kernels.md: how the
    upsample interacts), computed in an argmax pass; ``min_confidence`` (a probability) gives
    pixels below it the model's ignore label (implies ``confidence``). Neither costs anything
    when off.
    ``backend_options`` go to :func:`~edgeseg.runtime.backends.load_backend`.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        backend: str = "auto",
        device: str = "auto",
        mode: str = "nearest",
        *,
        precision: str | None = None,
        cuda_graph: bool = False,
        confidence: bool = False,
        min_confidence: float | None = None,
        **backend_options,
    ) -> None:
        if mode not in MODES:
            raise EdgesegError(f"mode must be 'nearest' or 'bilinear', got '{mode}'")
        # In nearest mode an ONNX model's trailing logits resize moves into the post-processing
        # kernel, fused with the argmax (docs/kernels.md): same labels, less time.
        backend_options.setdefault("fuse_resize", mode == "nearest")
        path = zoo.resolve(model, "checkpoint" if backend == "torch" else "onnx")
        self.backend = load_backend(path, backend, device, precision=precision, **backend_options)
        self.model_path = str(path)
        # what the model is called: a shipped model's name (the default one when none is given)
        self.model_name = self.model_path
        if zoo.is_name(model):
            self.model_name = zoo.DEFAULT if model is None else str(model)
        self.spec: ModelSpec = self.backend.spec
        self.mode = mode
        self.confidence = confidence or min_confidence is not None
        self.min_confidence = min_confidence
        self._gpu = (
            self._gpu_pipeline(cuda_graph, self.confidence)
            if self.backend.caps.device_buffers
            else None
        )
        if cuda_graph and (self._gpu is None or self._gpu.graph_kind is None):
            self.close()
            raise EdgesegError(
                f"cuda_graph needs a GPU backend that supports it, not {self.backend.name} "
                f"on {self.backend.device}"
            )
        try:
            self._conf_floor = _confidence_floor(self, confidence, min_confidence)
        except EdgesegError:
            self.close()
            raise
        self._inputs: dict[int, np.ndarray] = {}  # host input batches, reused

    def _gpu_pipeline(self, cuda_graph: bool, confidence: bool = False):
        from edgeseg.runtime.gpu_pipeline import GpuPipeline

        try:
            return GpuPipeline(self.backend, self.mode, cuda_graph, confidence=confidence)
        except EdgesegError as e:
            if self.backend.name == "trt":
                raise
            # no cuda-python: the model still runs on the GPU, the kernels on the CPU
            warnings.warn(
                f"CUDA kernels unavailable ({e}); pre/post-processing runs on the CPU",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    @property
    def upsample(self) -> int:
        """The factor of the model's trailing resize that post-processing applies (1: none)."""
        return self.backend.caps.upsample

    @property
    def kernels(self) -> str:
        """Which pre/post-processing runs: ``cuda``, ``cpu`` (C++) or ``reference`` (NumPy)."""
        return "cuda" if self._gpu is not None else kernels.implementation

    @property
    def max_batch(self) -> int | None:
        """The most frames one :meth:`segment` call takes (None: any)."""
        return self.backend.caps.max_batch

    def __call__(self, frame_bgr: np.ndarray, overlay_alpha: float | None = None) -> SegResult:
        """Segment one BGR uint8 frame; with ``overlay_alpha`` the overlay is blended in the same
        post-processing pass (``res.vis``, also what ``res.overlay(alpha)`` then returns)."""
        return self.segment([frame_bgr], overlay_alpha)[0]

    def segment(
        self,
        frames: Sequence[np.ndarray],
        overlay_alpha: float | None = None,
        smooth: Sequence[SmoothState | None] | None = None,
    ) -> list[SegResult]:
        """Segment several frames (of any sizes) in one batched inference; a result each.

        ``smooth``: per frame, the :class:`~edgeseg.runtime.smoothing.SmoothState` of its stream
        (or None): its labels come from the stream's moving average of class scores.

        On the host this is :meth:`prepare`, :meth:`infer` and :meth:`finish`, the steps the
        stream pipeline runs on its own threads; on a GPU one step of the GPU frame pipeline."""
        if not frames:
            return []
        frames = self.check_frames(frames)
        smooth = self._check_smooth(smooth, len(frames))
        if self._gpu is not None:
            outs, timings = self._gpu.run(frames, overlay_alpha, smooth)
            return [
                self._floored(SegResult(lab, self.spec, f, dict(timings), vis, overlay_alpha, conf))
                for f, (lab, vis, conf) in zip(frames, outs)
            ]
        t0 = time.perf_counter()
        n = len(frames)
        if n not in self._inputs:  # this thread's reused input batch
            self._inputs[n] = np.empty((n, 3, *self.spec.input_hw), np.float32)
        x = self.prepare(frames, out=self._inputs[n])
        t1 = time.perf_counter()
        scores = self.infer(x)
        t2 = time.perf_counter()
        results = [
            self.finish(scores[i : i + 1], f, overlay_alpha, smooth[i])
            for i, f in enumerate(frames)
        ]
        t3 = time.perf_counter()
        timings = {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3}
        for r in results:
            r.timings_ms = dict(timings)
        return results

    def check_frames(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The frames as the kernels take them (packed BGR uint8); one clear error otherwise."""
        if any(f is None for f in frames):
            raise EdgesegError(
                "a frame is None: the image could not be read (cv2.imread returns None for a "
                "missing or unreadable file); check its path"
            )
        return [kernels._check_frame(f) for f in frames]

    # -- the per-frame steps on the host: prepare, infer, finish
    def prepare(self, frames: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Step 1: BGR frames -> the (N, 3, h, w) float32 model input (host kernels), written
        into ``out`` when given (no allocation), else into a new array."""
        s = self.spec
        x = out if out is not None else np.empty((len(frames), 3, *s.input_hw), np.float32)
        for i, f in enumerate(frames):
            kernels.preprocess(f, s.input_hw, s.input.mean, s.input.std, out=x[i : i + 1])
        return x

    def infer(self, x: np.ndarray, backend: Backend | None = None) -> np.ndarray:
        """Step 2: the model on a prepared batch (``backend``: another session of the same
        model, e.g. a stream's worker; by default this Segmenter's)."""
        return (backend or self.backend).infer(x)

    def finish(
        self,
        scores: np.ndarray,
        frame: np.ndarray,
        overlay_alpha: float | None = None,
        smooth: SmoothState | None = None,
    ) -> SegResult:
        """Step 3: one frame's model output (batch of 1) -> its SegResult (host kernels); with
        ``smooth``, the labels of the stream's moving average after taking ``scores`` in."""
        if smooth is not None:
            scores = smooth.update(scores)
        hw, kw = frame.shape[:2], {"mode": self.mode, "upsample": self.upsample}
        conf = kw["conf_out"] = np.empty(hw, np.uint8) if self.confidence else None
        if overlay_alpha is None:
            labels, vis = kernels.postprocess(scores, hw, **kw), None
        else:
            labels, vis = kernels.postprocess(
                scores, hw, self.spec.palette, frame, overlay_alpha, **kw
            )
        return self._floored(SegResult(labels, self.spec, frame, {}, vis, overlay_alpha, conf))

    def _floored(self, res: SegResult) -> SegResult:
        """``res`` with pixels less sure than ``min_confidence`` given the ignore label
        (costmap-ready: guesses are marked as such) and, in the overlay, the frame's own
        pixels (no class colour where there is no class)."""
        if self._conf_floor is not None:
            unsure = res.confidence < self._conf_floor
            np.putmask(res.labels, unsure, self.spec.ignore_index)
            if res.vis is not None:
                np.copyto(res.vis, res.frame, where=unsure[..., None])
        return res

    def require_logits(self, what: str) -> None:
        """The one check that the model outputs class scores (``what`` needs them)."""
        if self.spec.output.kind != "logits":
            raise EdgesegError(
                f"{what} needs a model that outputs class scores; {self.model_path} outputs "
                "labels (an argmax model): use the model.onnx exported beside it"
            )

    def _check_smooth(self, smooth, n: int) -> list[SmoothState | None]:
        smooth = list(smooth) if smooth is not None else [None] * n
        if len(smooth) != n:
            raise ValueError(f"smooth needs one state per frame: {n} frames, {len(smooth)} states")
        if any(s is not None for s in smooth):
            self.require_logits("smoothing")
        return smooth

    def stream(self, source, **settings):
        """Iterate over results for a source through the threaded pipeline: the same as
        ``edgeseg.stream(self, source, **settings)`` (settings: fields of
        :class:`~edgeseg.streaming.config.StreamConfig`, e.g. ``mode``, ``max_frames``,
        ``duration``, ``reconnect``; and ``overlay_alpha``).

        ``source``: camera index, video file, image folder or glob, rtsp:// or http:// URL,
        GStreamer pipeline, ``synthetic`` (or a list of them). Results are
        :class:`~edgeseg.streaming.pipeline.StreamResult` (labels, frame, index, source, timings).
        """
        if STREAM_ENTRY is None:  # edgeseg.streaming registers it when it is imported
            raise EdgesegError("the streaming service is not loaded: import edgeseg.streaming")
        return STREAM_ENTRY(self, source, **settings)

    def close(self) -> None:
        """Release the GPU pipeline and the backend (sessions, engines, device memory)."""
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _confidence_floor(
    seg: Segmenter, confidence: bool, min_confidence: float | None
) -> float | None:
    """The uint8 confidence below which ``seg``'s labels become the ignore label (None: none),
    after checking that ``seg`` can give confidence at all."""
    if not confidence and min_confidence is None:
        return None
    what = "--min-confidence" if min_confidence is not None else "per-pixel confidence"
    seg.require_logits(what)
    if min_confidence is None:
        return None
    if not 0.0 <= min_confidence <= 1.0:
        raise EdgesegError(f"min_confidence is a probability in [0, 1], got {min_confidence}")
    return min_confidence * 255.0
