"""Segmenter: the embedding API — a frame in, labels at frame size out."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np

from edgeseg.runtime import kernels
from edgeseg.runtime.backends import load_backend
from edgeseg.runtime.result import SegResult
from edgeseg.runtime.stream import stream
from edgeseg.spec import ModelSpec


class Segmenter:
    """Run a segmentation model on BGR frames.

    >>> seg = Segmenter("model.onnx")        # or a .pt checkpoint; backend="auto"
    >>> res = seg(frame_bgr)                 # res.labels: (H, W) uint8 at frame size
    >>> vis = res.overlay(alpha=0.5)

    One instance is meant for one thread; create one per camera, they are cheap.

    ``mode``: ``"nearest"`` (argmax at model size, labels upsampled: the runtime default) or
    ``"bilinear"`` (logits resized to frame size first: the accuracy path). In nearest mode an
    ONNX model's trailing logits resize runs in the post-processing kernel instead of ONNX
    Runtime (``fuse_resize=False`` keeps the graph whole); the labels are the model's.
    ``backend_options`` go to :func:`~edgeseg.runtime.backends.load_backend`.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        backend: str = "auto",
        device: str = "auto",
        mode: str = "nearest",
        **backend_options,
    ) -> None:
        # In nearest mode an ONNX model's trailing logits resize moves into the post-processing
        # kernel, fused with the argmax (docs/kernels.md): same labels, less time.
        backend_options.setdefault("fuse_resize", mode == "nearest")
        self.backend = load_backend(model, backend, device, **backend_options)
        self.model_path = str(model)
        self.spec: ModelSpec = self.backend.spec
        self.mode = mode
        self._input = np.empty((1, 3, *self.spec.input_hw), np.float32)  # reused every frame
        self._gpu = _GpuPipeline(self) if _gpu_pipeline_possible(self.backend) else None

    @property
    def upsample(self) -> int:
        """The factor of the model's trailing resize that post-processing applies (1: none)."""
        return getattr(self.backend, "upsample", 1)

    @property
    def kernels(self) -> str:
        """Which pre/post-processing runs: ``cuda``, ``cpu`` (C++) or ``reference`` (NumPy)."""
        return (
            "cuda" if self._gpu is not None or hasattr(self.backend, "segment") else kernels.backend
        )

    def __call__(self, frame_bgr: np.ndarray, overlay_alpha: float | None = None) -> SegResult:
        """Segment one BGR uint8 frame; with ``overlay_alpha`` the overlay is blended in the same
        post-processing pass (``res.vis``, also what ``res.overlay(alpha)`` then returns)."""
        if self._gpu is not None:
            return self._gpu(frame_bgr, overlay_alpha)
        if hasattr(self.backend, "segment"):  # TensorRT: the whole pipeline on the GPU
            labels, vis, timings = self.backend.segment(
                kernels._check_frame(frame_bgr), self.mode, overlay_alpha
            )
            return SegResult(labels, self.spec, frame_bgr, timings, vis, overlay_alpha)
        t0 = time.perf_counter()
        x = kernels.preprocess(
            frame_bgr,
            self.spec.input_hw,
            self.spec.input.mean,
            self.spec.input.std,
            out=self._input,
        )
        t1 = time.perf_counter()
        scores = self.backend.infer(x)
        t2 = time.perf_counter()
        vis = None
        if overlay_alpha is None:
            labels = kernels.postprocess(
                scores, frame_bgr.shape[:2], mode=self.mode, upsample=self.upsample
            )
        else:
            labels, vis = kernels.postprocess(
                scores,
                frame_bgr.shape[:2],
                self.spec.palette,
                frame_bgr,
                overlay_alpha,
                mode=self.mode,
                upsample=self.upsample,
            )
        t3 = time.perf_counter()
        return SegResult(
            labels,
            self.spec,
            frame_bgr,
            {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3},
            vis,
            overlay_alpha,
        )

    def stream(
        self,
        source,
        mode: str | None = None,
        max_frames: int | None = None,
        duration: float | None = None,
        overlay_alpha: float | None = None,
        reconnect: bool = False,
    ):
        """Iterate over results for a source through the threaded pipeline.

        ``source``: camera index, video file, image folder or glob, rtsp:// or http:// URL,
        GStreamer pipeline, ``synthetic`` (or a list of them). ``mode``: ``realtime`` (newest
        frame wins) or ``every-frame``; by default realtime for live sources. Results are
        :class:`~edgeseg.runtime.stream.StreamResult` (labels, frame, index, source, timings).
        """
        return stream(self, source, mode, max_frames, duration, overlay_alpha, reconnect)


def _gpu_pipeline_possible(backend) -> bool:
    if getattr(backend, "name", "") != "torch" or not str(
        getattr(backend, "device", "")
    ).startswith("cuda"):
        return False
    try:
        from edgeseg.runtime.cuda import get_driver

        get_driver()
        return True
    except (
        Exception
    ) as e:  # no cuda-python / pycuda: the model still runs on the GPU, kernels on CPU
        warnings.warn(
            f"CUDA kernels unavailable ({e}); pre/post-processing runs on the CPU",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


class _GpuPipeline:
    """uint8 frame up, preprocess, infer, postprocess on the GPU, uint8 labels down.

    One stream (PyTorch's current one); page-locked staging buffers and device tensors are
    kept between frames and reallocated only when the frame size changes.
    """

    def __init__(self, seg: Segmenter) -> None:
        import torch

        self.seg = seg
        self.torch = torch
        self.device = torch.device(seg.backend.device)
        h, w = seg.spec.input_hw
        self.input = torch.empty((1, 3, h, w), dtype=torch.float32, device=self.device)
        self.scratch = torch.empty(
            (h * w,), dtype=torch.uint8, device=self.device
        )  # labels at model size
        self.frame_hw: tuple[int, int] | None = None
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]

    def _buffers(self, hw: tuple[int, int]) -> None:
        torch = self.torch
        if self.frame_hw == hw:
            return
        H, W = hw
        self.host_frame = torch.empty((H, W, 3), dtype=torch.uint8).pin_memory()
        self.host_labels = torch.empty((H, W), dtype=torch.uint8).pin_memory()
        self.dev_frame = torch.empty((H, W, 3), dtype=torch.uint8, device=self.device)
        self.dev_labels = torch.empty((H, W), dtype=torch.uint8, device=self.device)
        self.host_vis = torch.empty((H, W, 3), dtype=torch.uint8).pin_memory()
        self.dev_vis = torch.empty((H, W, 3), dtype=torch.uint8, device=self.device)
        self.frame_hw = hw

    def __call__(self, frame_bgr: np.ndarray, overlay_alpha: float | None = None) -> SegResult:
        from edgeseg.runtime.kernels import cuda as kcuda

        spec = self.seg.spec
        frame_bgr = kernels._check_frame(frame_bgr)
        t0 = time.perf_counter()
        self._buffers(frame_bgr.shape[:2])
        self.host_frame.numpy()[...] = frame_bgr
        e = self.events
        e[0].record()
        self.dev_frame.copy_(self.host_frame, non_blocking=True)
        kcuda.preprocess(
            self.dev_frame, spec.input_hw, spec.input.mean, spec.input.std, out=self.input
        )
        e[1].record()
        scores = self.seg.backend.infer_tensor(self.input)
        e[2].record()
        if overlay_alpha is None:
            kcuda.postprocess(
                scores, self.frame_hw, out=self.dev_labels, mode=self.seg.mode, scratch=self.scratch
            )
        else:
            kcuda.postprocess(
                scores,
                self.frame_hw,
                spec.palette,
                self.dev_frame,
                overlay_alpha,
                out=self.dev_labels,
                mode=self.seg.mode,
                overlay_out=self.dev_vis,
                scratch=self.scratch,
            )
            self.host_vis.copy_(self.dev_vis, non_blocking=True)
        self.host_labels.copy_(self.dev_labels, non_blocking=True)
        e[3].record()
        e[3].synchronize()
        labels = self.host_labels.numpy().copy()  # the staging buffers are reused by the next frame
        vis = self.host_vis.numpy().copy() if overlay_alpha is not None else None
        total = (time.perf_counter() - t0) * 1e3
        pre, infer, post = (
            e[0].elapsed_time(e[1]),
            e[1].elapsed_time(e[2]),
            e[2].elapsed_time(e[3]),
        )
        return SegResult(
            labels,
            spec,
            frame_bgr,
            {"pre": pre, "infer": infer, "post": post, "total": total},
            vis,
            overlay_alpha,
        )
