"""CUDA pre/post-processing on device memory, on the caller's stream.

Two layers:
- :class:`CudaKernels` launches the kernels of ``cpp_ext/cuda/kernels.cu`` on raw device pointers
  (what the GPU frame pipeline, :mod:`edgeseg.runtime.gpu_pipeline`, uses for every backend);
- :func:`preprocess` / :func:`postprocess` take PyTorch CUDA tensors and run on PyTorch's current
  stream (for tests and interactive use). Their semantics are those of
  :mod:`edgeseg.runtime.kernels.reference`; overlays use the 16-bit blend (within 1 LSB).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from edgeseg.runtime.cuda_driver import Driver, get_driver
from edgeseg.runtime.kernels.reference import cut_limit, palette_lut_bgr

_BLOCK = (32, 8, 1)
LOGITS = ("f32", "f16")
LABELS = ("u8", "i32", "i64")


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
    keep = np.float32(1.0 - alpha) * np.float32(32768.0) + np.float32(0.5)
    return table, int(keep.astype(np.uint16))


def scratch_bytes(model_hw: tuple[int, int], upsample: int = 1) -> int:
    """Bytes of the ``small`` scratch :meth:`CudaKernels.postprocess` needs."""
    return model_hw[0] * model_hw[1] * upsample * upsample


class CudaKernels:
    """Launchers over device pointers; every call is asynchronous on ``stream``."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

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
        stream: Any = 0,
    ) -> None:
        """uint8 BGR frame at ``frame`` -> (1, 3, h, w) float32 (or float16) at ``out``."""
        (H, W), (h, w) = frame_hw, size_hw
        mean = np.asarray(mean, np.float32)
        inv_std = (np.float32(1.0) / np.asarray(std, np.float32)).astype(np.float32)
        args = (frame, H, W, pitch, out, h, w, mean, inv_std)
        self.driver.launch(
            "preprocess_f16" if half else "preprocess_f32", _grid(w, h), _BLOCK, args, stream
        )

    def _labels_small(
        self,
        scores: int,
        kind: str,
        classes: int,
        model_hw: tuple[int, int],
        small: int,
        upsample: int,
        stream: Any,
    ) -> tuple[int, int, int]:
        """Labels at model size (x ``upsample``) into ``small``; returns (pointer, h, w)."""
        h, w = model_hw
        if kind in LOGITS and upsample > 1:  # the model's trailing resize, fused with the argmax
            hu, wu = h * upsample, w * upsample
            args = (scores, classes, h, w, small, hu, wu)
            self.driver.launch(f"bilinear_argmax_{kind}", _grid(wu, hu), _BLOCK, args, stream)
            return small, hu, wu
        if kind in LOGITS:
            self.driver.launch(
                f"argmax_{kind}", _grid(w, h), _BLOCK, (scores, classes, h, w, small), stream
            )
            return small, h, w
        if kind == "u8":
            return scores, h, w
        n = h * w
        self.driver.launch(
            f"labels_from_{kind}", ((n + 255) // 256, 1, 1), (256, 1, 1), (scores, n, small), stream
        )
        return small, h, w

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
        stream: Any = 0,
        upsample: int = 1,
        conf: int = 0,
        small_conf: int = 0,
    ) -> None:
        """Scores at ``scores`` -> uint8 labels at ``labels`` (frame size), optional overlay.

        ``kind``: ``f32``/``f16`` logits (C = ``classes``) or ``u8``/``i32``/``i64`` labels.
        ``small``: scratch of :func:`scratch_bytes` bytes (labels at model size); unused for u8
        labels and for ``mode="bilinear"`` without an overlay. ``upsample=k`` (nearest mode,
        logits): the logits are a model's before its trailing x``k`` bilinear resize, done here
        fused with the argmax, as the CPU kernel does. ``conf`` (logits only): uint8 (H, W)
        confidence, as the CPU kernel computes it: in nearest mode on the scores' own grid by
        an argmax kernel (into ``small`` and ``small_conf``, each of :func:`scratch_bytes`
        bytes), then upsampled with nearest taps; in bilinear mode by the argmax's kernel at
        each output pixel.
        """
        H, W = frame_hw
        if upsample > 1 and (kind not in LOGITS or mode != "nearest"):
            raise ValueError("upsample > 1 needs logits and mode='nearest'")
        if conf and kind not in LOGITS:
            raise ValueError("confidence needs logits, not labels")
        if kind in LOGITS and mode == "bilinear":
            h, w = model_hw
            name, extra = (
                (f"bilinear_argmax_conf_{kind}", (conf,))
                if conf
                else (f"bilinear_argmax_{kind}", ())
            )
            args = (scores, classes, h, w, labels, *extra, H, W)
            self.driver.launch(name, _grid(W, H), _BLOCK, args, stream)
            src, sh, sw = labels, H, W  # the overlay pass below keeps labels as they are
        else:
            if conf:  # first: its labels go to ``small``, which the labels' kernel then rewrites
                h, w = model_hw
                args = (scores, classes, h, w, small, small_conf)
                self.driver.launch(f"argmax_conf_{kind}", _grid(w, h), _BLOCK, args, stream)
                args = (small_conf, h, w, conf, H, W, 0, 0, 0, 0, 0)
                self.driver.launch("upsample_blend", _grid(W, H), _BLOCK, args, stream)
            src, sh, sw = self._labels_small(
                scores, kind, classes, model_hw, small, upsample, stream
            )
        if src == labels and not overlay:
            return
        args = (src, sh, sw, labels, H, W, frame, frame_pitch, overlay, colour_q, keep_q)
        self.driver.launch("upsample_blend", _grid(W, H), _BLOCK, args, stream)

    def smooth(
        self,
        scores: int,
        kind: str,
        classes: int,
        model_hw: tuple[int, int],
        ema: int,
        words: int,
        keep: float,
        cut: float,
        stream: Any = 0,
    ) -> None:
        """Temporal smoothing on the device (reference: ``kernels.reference.smooth``): the
        float32 (C, h, w) average at ``ema`` takes in the logits at ``scores``, or restarts from
        them when the u32 at ``words + 4`` is non-zero (the host's say) or more than ``cut`` of
        the pixels changed class. ``words``: 8 bytes of device scratch. Three launches, no sync.
        """
        if kind not in LOGITS:
            raise ValueError("smoothing needs float logits")
        n = model_hw[0] * model_hw[1]
        grid, block = ((n + 255) // 256, 1, 1), (256, 1, 1)
        drv = self.driver
        drv.launch("ema_reset_count", (1, 1, 1), (1, 1, 1), (words,), stream)
        drv.launch(f"ema_votes_{kind}", grid, block, (scores, ema, classes, n, words), stream)
        fresh = np.float32(1.0 - keep)
        args = (scores, ema, classes, n, np.float32(keep), fresh, words, cut_limit(cut, n))
        drv.launch(f"ema_apply_{kind}", grid, block, args, stream)


class ColourTables:
    """Device colour tables for overlays, one per (palette, alpha), the few most recent kept: a
    stream that varies its alpha cannot grow device memory without bound."""

    def __init__(self, driver: Driver, keep: int = 4) -> None:
        self.driver, self.keep = driver, keep
        self._tables: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()

    def get(self, palette, alpha: float, stream: Any = 0) -> tuple[int, int]:
        """(device pointer of the table, keep_q) for ``palette`` at ``alpha``."""
        key = (tuple(map(tuple, np.asarray(palette, np.int64).tolist())), float(alpha))
        if key not in self._tables:
            table, keep_q = colour_table(palette, alpha)
            buf = self.driver.mem_alloc(table.nbytes)
            self.driver.memcpy_htod(buf.ptr, table, stream)
            self.driver.stream_synchronize(stream)  # ``table`` is pageable and goes out of scope
            self._tables[key] = (buf, keep_q)
            while len(self._tables) > self.keep:
                self._tables.popitem(last=False)[1][0].free()
        self._tables.move_to_end(key)
        buf, keep_q = self._tables[key]
        return buf.ptr, keep_q

    def free(self) -> None:
        for buf, _ in self._tables.values():
            buf.free()
        self._tables.clear()


# ----------------------------------------------------------------------------- PyTorch tensors

_PER_DEVICE: dict[int, tuple[CudaKernels, ColourTables]] = {}


def _for(tensor) -> tuple[CudaKernels, ColourTables]:
    index = tensor.device.index or 0
    if index not in _PER_DEVICE:
        drv = get_driver(index)
        _PER_DEVICE[index] = (CudaKernels(drv), ColourTables(drv))
    return _PER_DEVICE[index]


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
    half = out.dtype == torch.float16
    _for(frame)[0].preprocess(
        frame.data_ptr(),
        tuple(frame.shape[:2]),
        frame.stride(0),
        out.data_ptr(),
        (h, w),
        mean,
        std,
        half,
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
    if (scores.ndim == 4) != (kind in LOGITS) or classes > 256:
        raise ValueError(
            f"scores {scores.dtype} {tuple(scores.shape)}: logits must be float with <= 256 "
            "classes, labels integer (1, h, w)"
        )
    return kind, classes


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
    upsample: int = 1,
    conf_out=None,
):
    """CUDA scores tensor -> CUDA uint8 labels (and overlay when ``frame`` is given; with
    ``conf_out``, a CUDA uint8 (H, W) tensor, each pixel's confidence written there).

    ``scores``: (1, C, h, w) float32/float16 or (1, h, w) integer labels. Returns ``labels`` or
    ``(labels, overlay)``; ``out``/``overlay_out``/``scratch`` avoid allocation. ``upsample``:
    see :meth:`CudaKernels.postprocess`.
    """
    import torch

    kind, classes = _score_kind(scores, mode)
    scores = scores.contiguous()
    (h, w), (H, W), dev = scores.shape[-2:], frame_hw, scores.device
    labels = out if out is not None else torch.empty((H, W), dtype=torch.uint8, device=dev)
    nbytes = scratch_bytes((h, w), upsample)
    small = (
        scratch if scratch is not None else torch.empty((nbytes,), dtype=torch.uint8, device=dev)
    )
    kern, tables = _for(scores)
    conf = small_conf = None
    if conf_out is not None:
        if conf_out.dtype != torch.uint8 or tuple(conf_out.shape) != (H, W) or not conf_out.is_cuda:
            raise ValueError(f"conf_out must be a CUDA uint8 ({H}, {W}) tensor")
        conf = conf_out
        small_conf = torch.empty((nbytes,), dtype=torch.uint8, device=dev)
    blend, vis = (0, 0, 0, 0, 0), None
    if frame is not None:
        if palette is None:
            raise ValueError("an overlay needs a palette")
        if frame.dtype != torch.uint8 or tuple(frame.shape) != (H, W, 3) or not frame.is_cuda:
            raise ValueError(
                f"frame must be a CUDA uint8 ({H}, {W}, 3) tensor, got {tuple(frame.shape)}"
            )
        frame = frame.contiguous()
        vis = (
            overlay_out
            if overlay_out is not None
            else torch.empty((H, W, 3), dtype=torch.uint8, device=dev)
        )
        table, keep_q = tables.get(palette, alpha, _stream(scores))
        blend = (frame.data_ptr(), frame.stride(0), vis.data_ptr(), table, keep_q)
    kern.postprocess(
        scores.data_ptr(),
        kind,
        classes,
        (h, w),
        labels.data_ptr(),
        (H, W),
        small.data_ptr(),
        mode,
        *blend,
        stream=_stream(scores),
        upsample=upsample,
        conf=conf.data_ptr() if conf is not None else 0,
        small_conf=small_conf.data_ptr() if small_conf is not None else 0,
    )
    return labels if vis is None else (labels, vis)


def smooth(scores, state, keep: float, cut: float = 0.3, restart: bool = False, words=None):
    """CUDA twin of :func:`edgeseg.runtime.kernels.smooth` on PyTorch tensors: ``state`` (a
    float32 CUDA tensor shaped like ``scores``) takes in ``scores``, or restarts from them when
    ``restart`` or a scene cut says so. ``words``: optional int32 (2,) CUDA scratch."""
    import torch

    kind, classes = _score_kind(scores, "nearest")
    if kind not in LOGITS or state.dtype != torch.float32 or state.shape != scores.shape:
        raise ValueError("smoothing needs float logits and a float32 state of their shape")
    scores = scores.contiguous()
    if words is None:
        words = torch.zeros(2, dtype=torch.int32, device=scores.device)
    words[1] = int(restart)
    kern, _ = _for(scores)
    h, w = scores.shape[-2:]
    kern.smooth(
        scores.data_ptr(),
        kind,
        classes,
        (h, w),
        state.data_ptr(),
        words.data_ptr(),
        keep,
        cut,
        _stream(scores),
    )
    return state
