"""Pre/post-processing front: one API, selectable implementation.

Implementations with identical semantics (``reference`` is the spec, in NumPy):

- ``"cpu"``: the C++ extension ``edgeseg._cpu`` (OpenMP, GIL released, caller's buffers);
- ``"reference"``: :mod:`edgeseg.runtime.kernels.reference`.

``kernels.implementation`` names the one in use: ``"cpu"`` whenever the extension is built (it is
by ``pip install``), else ``"reference"`` with a warning. ``use(name)`` switches; the
environment variable ``EDGESEG_KERNELS=cpu|reference`` picks one for a whole process (CLI runs).
Device
arrays (CUDA) go through :mod:`edgeseg.runtime.kernels.cuda`, which works on device pointers.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from edgeseg.runtime.kernels import reference
from edgeseg.runtime.kernels.reference import palette_lut_bgr

try:
    from edgeseg import _cpu
except ImportError as e:  # a source checkout that was never built
    _cpu = None
    _IMPORT_ERROR = str(e)
else:
    _IMPORT_ERROR = ""

IMPLEMENTATIONS = ("cpu", "reference")
implementation = "cpu" if _cpu is not None else "reference"
_requested = os.environ.get("EDGESEG_KERNELS", "")
if _requested == "reference" or (_requested == "cpu" and _cpu is not None):
    implementation = _requested
elif _requested:
    warnings.warn(
        f"EDGESEG_KERNELS={_requested!r} is not available here; using {implementation!r}",
        RuntimeWarning,
        stacklevel=2,
    )
if _cpu is None and _requested != "reference":
    warnings.warn(
        f"edgeseg's C++ kernels are not built ({_IMPORT_ERROR}); using the slow NumPy reference. "
        "Build them with: pip install -e .",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = [
    "IMPLEMENTATIONS",
    "implementation",
    "overlay",
    "postprocess",
    "preprocess",
    "reference",
    "use",
    "smooth",
]

_SCORE_CODES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}


def use(name: str) -> None:
    """Select ``"cpu"`` or ``"reference"`` for every later call."""
    global implementation
    if name not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown kernels implementation {name!r}; choose one of: {', '.join(IMPLEMENTATIONS)}"
        )
    if name == "cpu" and _cpu is None:
        raise RuntimeError(
            f"the C++ kernels are not built ({_IMPORT_ERROR}); run: pip install -e ."
        )
    implementation = name


def _check_frame(frame: np.ndarray) -> np.ndarray:
    """The reference's checks, then packed BGR pixels for the C++ and CUDA kernels."""
    reference._check_frame(frame)
    if frame.strides[2] != 1 or frame.strides[1] != 3:
        frame = np.ascontiguousarray(frame)  # e.g. a crop with a step, or a channel view
    return frame


def _check_hw(size_hw, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size_hw)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {size_hw!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {h}x{w}")
    if max(h, w) > reference.MAX_SIDE:
        raise ValueError(f"{name} sides must be at most {reference.MAX_SIDE}, got {h}x{w}")
    return h, w


def _check_out(out: np.ndarray, shape: tuple[int, ...], dtype, name: str) -> None:
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.dtype(dtype):
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"{name} must be a {np.dtype(dtype)} array of shape {shape}, got {got}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def _check_scores(scores) -> np.ndarray:
    scores = np.asarray(scores)
    logits = scores.ndim == 4 and scores.shape[0] == 1 and scores.dtype in (np.float32, np.float16)
    labels = (
        scores.ndim == 3 and scores.shape[0] == 1 and scores.dtype in (np.uint8, np.int32, np.int64)
    )
    if not (logits or labels):
        raise ValueError(
            "scores must be (1, C, h, w) float32/float16 logits or (1, h, w) uint8/int32/int64 "
            f"labels, got {scores.dtype} {scores.shape}"
        )
    if logits and not 1 <= scores.shape[1] <= 256:
        raise ValueError(f"logits need 1 to 256 classes for uint8 labels, got {scores.shape[1]}")
    if min(scores.shape[-2:]) < 1:
        raise ValueError(f"scores are empty: {scores.shape}")
    if max(scores.shape[-2:]) > reference.MAX_SIDE:
        raise ValueError(f"scores sides must be at most {reference.MAX_SIDE}: {scores.shape}")
    return np.ascontiguousarray(scores)


def _check_upsample(upsample, scores: np.ndarray, mode: str) -> int:
    if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or upsample < 1:
        raise ValueError(f"upsample must be a positive integer, got {upsample!r}")
    if upsample > 1 and (scores.ndim != 4 or mode != "nearest"):
        raise ValueError("upsample > 1 needs (1, C, h, w) logits and mode='nearest'")
    return int(upsample)


def preprocess(
    frame_bgr: np.ndarray,
    size_hw: tuple[int, int],
    mean,
    std,
    out: np.ndarray | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """uint8 BGR (H, W, 3) frame -> (1, 3, h, w) RGB ``(x - mean) / std`` at ``size_hw`` (bilinear).

    ``mean``/``std`` are per RGB channel on the 0-255 scale; ``dtype`` float32 or float16.
    With ``out`` the result is written there (no allocation) and ``out`` is returned.
    """
    frame_bgr = _check_frame(frame_bgr)
    h, w = _check_hw(size_hw, "size_hw")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    mean = np.asarray(mean, np.float32).reshape(-1)
    std = np.asarray(std, np.float32).reshape(-1)
    if mean.size != 3 or std.size != 3 or not np.all(std != 0):
        raise ValueError(
            f"mean and std need 3 values each (std non-zero), got {mean.tolist()} / {std.tolist()}"
        )
    if out is not None:
        _check_out(out, (1, 3, h, w), dtype, "out")
    if implementation == "reference":
        return reference.preprocess(frame_bgr, (h, w), mean, std, out=out, dtype=dtype)
    if out is None:
        out = np.empty((1, 3, h, w), dtype)
    inv_std = (np.float32(1.0) / std).astype(np.float32)  # as the reference: float32 reciprocal
    _cpu.preprocess(
        frame_bgr,
        out,
        _cpu.F32 if dtype == np.float32 else _cpu.F16,
        mean.tolist(),
        inv_std.tolist(),
    )
    return out


def postprocess(
    scores: np.ndarray,
    frame_hw: tuple[int, int],
    palette=None,
    frame: np.ndarray | None = None,
    alpha: float = 0.5,
    out: np.ndarray | None = None,
    mode: str = "nearest",
    overlay_out: np.ndarray | None = None,
    upsample: int = 1,
    conf_out: np.ndarray | None = None,
):
    """Model output -> uint8 labels at ``frame_hw``; with ``frame``, also the colour overlay.

    ``scores``: (1, C, h, w) float32/float16 logits or (1, h, w) integer labels.
    ``mode="nearest"`` takes the argmax at model size and upsamples labels (fast);
    ``mode="bilinear"`` upsamples logits first, then takes the argmax (what accuracy metrics use).
    ``upsample=k`` (nearest mode, logits only): ``scores`` are a model's logits *before* its
    trailing x``k`` bilinear resize (half-pixel centres), which the runtime lifted out of the
    graph (see ``OnnxRuntimeBackend(fuse_resize=True)``); the resize happens here, fused with
    the argmax, and the labels equal those of the whole model followed by ``mode="nearest"``
    up to float rounding in the resize.
    ``conf_out`` (uint8 (H, W), logits only): receives each pixel's confidence, round(255 x the
    softmax probability of the winning class) — in nearest mode that of the scores' own grid
    (before an ``upsample``), upsampled with nearest taps; in bilinear mode that of the logits
    resized to the output pixel (docs/kernels.md); computed by an argmax pass, and not at all
    without ``conf_out``.
    Returns ``labels``, or ``(labels, overlay)`` when ``frame`` is given; ``out`` and
    ``overlay_out`` receive them without allocation.
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    scores = _check_scores(scores)
    upsample = _check_upsample(upsample, scores, mode)
    H, W = _check_hw(frame_hw, "frame_hw")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if out is not None:
        _check_out(out, (H, W), np.uint8, "out")
    if conf_out is not None:
        _check_out(conf_out, (H, W), np.uint8, "conf_out")
        if scores.ndim != 4:
            raise ValueError("confidence needs (1, C, h, w) logits, not labels")
    if frame is not None:
        frame = _check_frame(frame)
        if frame.shape[:2] != (H, W):
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]} but frame_hw is {W}x{H}")
        if palette is None:
            raise ValueError("an overlay needs a palette")
        if overlay_out is not None:
            _check_out(overlay_out, (H, W, 3), np.uint8, "overlay_out")
    if implementation == "reference":
        res = reference.postprocess(
            scores, (H, W), palette, frame, alpha, out, mode, upsample, conf_out
        )
        if frame is not None and overlay_out is not None:
            overlay_out[...] = res[1]
            res = (res[0], overlay_out)
        return res
    labels = out if out is not None else np.empty((H, W), np.uint8)
    lut = vis = None
    if frame is not None:
        lut = palette_lut_bgr(palette)
        vis = overlay_out if overlay_out is not None else np.empty((H, W, 3), np.uint8)
    _cpu.postprocess(
        scores,
        getattr(_cpu, _SCORE_CODES[scores.dtype]),
        labels,
        mode == "bilinear",
        frame,
        vis,
        lut,
        float(alpha),
        upsample,
        conf_out,
    )
    return labels if frame is None else (labels, vis)


def smooth(
    scores: np.ndarray, state: np.ndarray | None, keep: float, cut: float = 0.3
) -> tuple[np.ndarray, bool]:
    """Temporal smoothing: the moving average of (1, C, h, w) float logits, kept in ``state``.

    ``state`` (float32, the shape of ``scores``) is updated in place to ``state * keep + scores
    * (1 - keep)`` and returned; when it is None or of another shape, or when more than ``cut``
    of the pixels' argmax differs between ``scores`` and the old average (a scene cut), the
    average restarts from ``scores``. Returns ``(state, restarted)``; post-process ``state`` for
    the smoothed labels. See the reference for the exact arithmetic.
    """
    scores = _check_scores(scores)
    if scores.ndim != 4:
        raise ValueError("smoothing needs (1, C, h, w) float logits, not labels")
    if not 0.0 <= float(keep) < 1.0:
        raise ValueError(f"keep (the weight of the past) must be in [0, 1), got {keep}")
    if not 0.0 <= float(cut) <= 1.0:
        raise ValueError(f"cut must be a fraction in [0, 1], got {cut}")
    fresh_state = state is None or state.shape != scores.shape
    if not fresh_state:
        _check_out(state, scores.shape, np.float32, "state")
    if implementation == "reference" or fresh_state:
        return reference.smooth(scores, None if fresh_state else state, keep, cut)
    limit = reference.cut_limit(cut, scores.shape[2] * scores.shape[3])
    code = _cpu.F32 if scores.dtype == np.float32 else _cpu.F16
    return state, _cpu.smooth(scores, code, state, float(keep), limit)


def overlay(
    frame_bgr: np.ndarray,
    labels: np.ndarray,
    palette_rgb,
    alpha: float = 0.5,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Blend the palette colour of each label onto the frame (BGR uint8)."""
    frame_bgr = _check_frame(frame_bgr)
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.shape != frame_bgr.shape[:2]:
        raise ValueError(
            f"labels must be uint8 {frame_bgr.shape[:2]} like the frame, got {labels.dtype} "
            f"{labels.shape}"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if out is not None:
        _check_out(out, frame_bgr.shape, np.uint8, "out")
    if implementation == "reference":
        res = reference.overlay(frame_bgr, labels, palette_rgb, alpha)
        if out is not None:
            out[...] = res
            return out
        return res
    out = out if out is not None else np.empty(frame_bgr.shape, np.uint8)
    _cpu.overlay(
        np.ascontiguousarray(labels), frame_bgr, out, palette_lut_bgr(palette_rgb), float(alpha)
    )
    return out
