"""CUDA pre/post-processing on device memory, on the caller's stream.

Two layers:
- :class:`CudaKernels` launches the kernels of ``cpp_ext/cuda/kernels.cu`` on raw device pointers
  (what the TensorRT backend uses with its own buffers);
- :func:`preprocess` / :func:`postprocess` take PyTorch CUDA tensors and run on PyTorch's current
  stream (the torch-CUDA pipeline: upload uint8, preprocess, infer, postprocess, download labels,
  with no host round trip in between). Their semantics are those of
  :mod:`edgeseg.runtime.kernels.reference`; overlays use the 16-bit blend (within 1 LSB).
"""

from __future__ import annotations

import numpy as np

from edgeseg.runtime.cuda import Driver, get_driver
from edgeseg.runtime.kernels.reference import palette_lut_bgr

_BLOCK = (32, 8, 1)


def _grid(w: int, h: int) -> tuple[int, int, int]:
    return ((w + _BLOCK[0] - 1) // _BLOCK[0], (h + _BLOCK[1] - 1) // _BLOCK[1], 1)


def colour_table(palette_rgb, alpha: float) -> tuple[np.ndarray, int]:
    """(256, 4) uint16 colour terms (BGR + pad) and keep_q, as pixel_ops.h's blend_q wants them.

    Float32 arithmetic in the order the C++ uses, so CPU and CUDA blend identically.
    """
    lut = palette_lut_bgr(palette_rgb).astype(np.float32)
    ca = lut * np.float32(alpha)
    table = np.zeros((256, 4), np.uint16)
    table[:, :3] = (ca * np.float32(128.0) + np.float32(0.5)).astype(np.uint16) + 64
    keep_q = int(
        (np.float32(1.0 - alpha) * np.float32(32768.0) + np.float32(0.5)).astype(np.uint16)
    )
    return table, keep_q


class CudaKernels:
    """Launchers over device pointers; every call is asynchronous on ``stream``."""

    def __init__(self, driver: Driver | None = None) -> None:
        self.driver = driver or get_driver()

    def preprocess(
        self,
        frame: int,
        frame_hw: tuple[int, int],
        pitch: int,
        out: int,
        size_hw: tuple[int, int],
        mean,
        std,
        half: bool = False,
        stream: int = 0,
    ) -> None:
        """uint8 BGR frame at ``frame`` -> (1, 3, h, w) float32 (or float16) at ``out``."""
        (H, W), (h, w) = frame_hw, size_hw
        mean = np.asarray(mean, np.float32)
        inv_std = (np.float32(1.0) / np.asarray(std, np.float32)).astype(np.float32)
        self.driver.launch(
            "preprocess_f16" if half else "preprocess_f32",
            _grid(w, h),
            _BLOCK,
            (frame, H, W, pitch, out, h, w, mean, inv_std),
            stream,
        )

    def postprocess(
        self,
        scores: int,
        kind: str,
        classes: int,
        model_hw: tuple[int, int],
        labels: int,
        frame_hw: tuple[int, int],
        small: int,
        mode: str = "nearest",
        frame: int = 0,
        frame_pitch: int = 0,
        overlay: int = 0,
        colour_q: int = 0,
        keep_q: int = 0,
        stream: int = 0,
    ) -> None:
        """Scores at ``scores`` -> uint8 labels at ``labels`` (frame size), optional overlay.

        ``kind``: ``f32``/``f16`` logits (C = ``classes``) or ``u8``/``i32``/``i64`` labels.
        ``small``: scratch of h*w bytes (labels at model size); unused for u8 labels and for
        ``mode="bilinear"`` without an overlay.
        """
        (h, w), (H, W) = model_hw, frame_hw
        logits = kind in ("f32", "f16")
        if logits and mode == "bilinear":
            self.driver.launch(
                f"bilinear_argmax_{kind}",
                _grid(W, H),
                _BLOCK,
                (scores, classes, h, w, labels, H, W),
                stream,
            )
            src, sh, sw = labels, H, W  # the overlay pass below keeps labels as they are
        else:
            if logits:
                self.driver.launch(
                    f"argmax_{kind}", _grid(w, h), _BLOCK, (scores, classes, h, w, small), stream
                )
                src = small
            elif kind == "u8":
                src = scores
            else:
                n = h * w
                self.driver.launch(
                    f"labels_from_{kind}",
                    ((n + 255) // 256, 1, 1),
                    (256, 1, 1),
                    (scores, n, small),
                    stream,
                )
                src = small
            sh, sw = h, w
        if src == labels and not overlay:
            return
        self.driver.launch(
            "upsample_blend",
            _grid(W, H),
            _BLOCK,
            (src, sh, sw, labels, H, W, frame, frame_pitch, overlay, colour_q, keep_q),
            stream,
        )


# ----------------------------------------------------------------------------- PyTorch tensors

_KERNELS: CudaKernels | None = None
_TABLES: dict = {}


def _kernels() -> CudaKernels:
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = CudaKernels()
    return _KERNELS


def _stream(tensor) -> int:
    import torch

    return int(torch.cuda.current_stream(tensor.device).cuda_stream)


def preprocess(frame, size_hw: tuple[int, int], mean, std, out=None, dtype=None):
    """CUDA uint8 (H, W, 3) BGR tensor -> (1, 3, h, w) normalised RGB tensor on the same device."""
    import torch

    if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or not frame.is_cuda:
        raise ValueError(
            f"frame must be a CUDA uint8 (H, W, 3) tensor, got {frame.dtype} {tuple(frame.shape)}"
        )
    frame = frame.contiguous()
    dtype = dtype or (out.dtype if out is not None else torch.float32)
    h, w = size_hw
    if out is None:
        out = torch.empty((1, 3, h, w), dtype=dtype, device=frame.device)
    if (
        out.shape != (1, 3, h, w)
        or out.dtype not in (torch.float32, torch.float16)
        or not out.is_contiguous()
    ):
        raise ValueError(f"out must be a contiguous float32/float16 (1, 3, {h}, {w}) tensor")
    _kernels().preprocess(
        frame.data_ptr(),
        tuple(frame.shape[:2]),
        frame.stride(0),
        out.data_ptr(),
        (h, w),
        mean,
        std,
        out.dtype == torch.float16,
        _stream(frame),
    )
    return out


def _score_kind(scores, mode: str) -> tuple[str, int]:
    """(kernel kind, classes) of a scores tensor, or a ValueError saying what is wrong."""
    import torch

    kinds = {
        torch.float32: "f32",
        torch.float16: "f16",
        torch.uint8: "u8",
        torch.int32: "i32",
        torch.int64: "i64",
    }
    if (
        not scores.is_cuda
        or scores.dtype not in kinds
        or scores.ndim not in (3, 4)
        or scores.shape[0] != 1
    ):
        raise ValueError(
            f"scores must be a CUDA (1, C, h, w) or (1, h, w) tensor, got {scores.dtype} "
            f"{tuple(scores.shape)}"
        )
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    kind = kinds[scores.dtype]
    classes = scores.shape[1] if scores.ndim == 4 else 1
    if (scores.ndim == 4) != (kind in ("f32", "f16")) or classes > 256:
        raise ValueError(
            f"scores {scores.dtype} {tuple(scores.shape)}: logits must be float with <= 256 "
            "classes, labels integer (1, h, w)"
        )
    return kind, classes


def _overlay_args(frame, palette, alpha: float, frame_hw, overlay_out, dev):
    """(frame, overlay tensor, colour table tensor, keep_q) for the blend in post-processing."""
    import torch

    H, W = frame_hw
    if palette is None:
        raise ValueError("an overlay needs a palette")
    if frame.dtype != torch.uint8 or tuple(frame.shape) != (H, W, 3) or not frame.is_cuda:
        raise ValueError(
            f"frame must be a CUDA uint8 ({H}, {W}, 3) tensor, got {tuple(frame.shape)}"
        )
    vis = (
        overlay_out
        if overlay_out is not None
        else torch.empty((H, W, 3), dtype=torch.uint8, device=dev)
    )
    key = (str(dev), tuple(map(tuple, np.asarray(palette, np.int64).tolist())), float(alpha))
    if key not in _TABLES:
        table, kq = colour_table(palette, alpha)
        _TABLES[key] = (torch.from_numpy(table).to(dev), kq)
    table_t, keep_q = _TABLES[key]
    return frame.contiguous(), vis, table_t, keep_q


def postprocess(
    scores,
    frame_hw: tuple[int, int],
    palette=None,
    frame=None,
    alpha: float = 0.5,
    out=None,
    mode: str = "nearest",
    overlay_out=None,
    scratch=None,
):
    """CUDA scores tensor -> CUDA uint8 labels (and overlay when ``frame`` is given).

    ``scores``: (1, C, h, w) float32/float16 or (1, h, w) integer labels. Returns ``labels`` or
    ``(labels, overlay)``; ``out``/``overlay_out``/``scratch`` (h*w uint8) avoid allocation.
    """
    import torch

    kind, classes = _score_kind(scores, mode)
    scores = scores.contiguous()
    (h, w), (H, W), dev = scores.shape[-2:], frame_hw, scores.device
    labels = out if out is not None else torch.empty((H, W), dtype=torch.uint8, device=dev)
    small = scratch if scratch is not None else torch.empty((h * w,), dtype=torch.uint8, device=dev)
    blend = (0, 0, 0, 0, 0)
    vis = None
    if frame is not None:
        frame, vis, table, keep_q = _overlay_args(frame, palette, alpha, frame_hw, overlay_out, dev)
        blend = (frame.data_ptr(), frame.stride(0), vis.data_ptr(), table.data_ptr(), keep_q)
    _kernels().postprocess(
        scores.data_ptr(),
        kind,
        classes,
        (h, w),
        labels.data_ptr(),
        (H, W),
        small.data_ptr(),
        mode,
        *blend,
        _stream(scores),
    )
    return labels if vis is None else (labels, vis)
