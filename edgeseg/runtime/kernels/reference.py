"""Pre- and post-processing in plain NumPy: the specification the fast kernels must match.

Conventions (shared by every implementation):
- Bilinear resampling uses half-pixel centres, ``src = (dst + 0.5) * in / out - 0.5`` clamped at
  the borders (OpenCV's INTER_LINEAR, without its fixed-point rounding), the index and weight
  from exact integers (one float32 division for the weight).
- Sides are at most :data:`MAX_SIDE` (the kernels' 32-bit tap arithmetic).
- Nearest resampling of labels also uses centres: ``src = floor((dst + 0.5) * in / out)``, in
  exact integer arithmetic so every implementation agrees bit for bit. This is OpenCV's
  INTER_NEAREST_EXACT except where a sample falls exactly on a pixel edge: there we take the
  pixel after the edge, OpenCV's fixed-point maths the one before.
- Argmax over classes: the first maximum wins.
- Overlay: ``round(frame * (1 - alpha) + colour * alpha)`` per channel, in BGR order.
- Temporal smoothing: ``ema = ema * keep + x * (1 - keep)`` per class in float32, unless more
  than ``cut`` of the pixels' argmax differs between ``x`` and the old average (a scene cut):
  then ``ema = x``.
"""

from __future__ import annotations

import numpy as np

MAX_SIDE = 32767  # pixel_ops.h ES_MAX_SIDE


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(f"frame must be uint8 BGR (H, W, 3), got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"frame must be uint8 BGR with shape (H, W, 3), got shape {frame.shape}")
    if max(frame.shape[:2]) > MAX_SIDE:
        raise ValueError(f"frame sides must be at most {MAX_SIDE} pixels, got {frame.shape[:2]}")


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight of each output sample along one axis.

    ``src = ((2 dst + 1) in - out) / (2 out)`` clamped to ``[0, in - 1]``, exactly: the index is
    the integer quotient, the weight the remainder over ``2 out`` in one float32 division (what
    the kernels compute in 32-bit integers, pixel_ops.h)."""
    num = (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in - n_out
    den = 2 * n_out
    q = np.maximum(num, 0) // den
    top = q >= n_in - 1
    i0 = np.where(top, n_in - 1, q)
    rem = np.where((num > 0) & ~top, num - q * den, 0)
    w = rem.astype(np.float32) / np.float32(den)
    return i0, np.minimum(i0 + 1, n_in - 1), w


def _nearest_taps(n_in: int, n_out: int) -> np.ndarray:
    # Integer arithmetic: floor((2 * dst + 1) * in / (2 * out)) is exact where floats round down.
    idx = ((2 * np.arange(n_out, dtype=np.int64) + 1) * n_in) // (2 * n_out)
    return np.minimum(idx, n_in - 1)


def resize_bilinear(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W, ...) array to ``size_hw``, computed in float32."""
    h, w = img.shape[:2]
    y0, y1, wy = _linear_taps(h, size_hw[0])
    x0, x1, wx = _linear_taps(w, size_hw[1])
    img = img.astype(np.float32, copy=False)
    extra = (1,) * (img.ndim - 2)
    wy = wy.reshape(-1, 1, *extra)
    wx = wx.reshape(1, -1, *extra)
    rows = img[y0] * (1 - wy) + img[y1] * wy
    return rows[:, x0] * (1 - wx) + rows[:, x1] * wx


def resize_nearest(labels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest resize (centre sampling) of an (H, W) label map."""
    h, w = labels.shape[:2]
    return labels[_nearest_taps(h, size_hw[0])][:, _nearest_taps(w, size_hw[1])]


def preprocess(
    frame_bgr: np.ndarray,
    size_hw: tuple[int, int],
    mean,
    std,
    out: np.ndarray | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """uint8 BGR (H, W, 3) frame -> (1, 3, h, w) RGB tensor ``(x - mean) / std`` at ``size_hw``."""
    _check_frame(frame_bgr)
    rgb = resize_bilinear(frame_bgr, size_hw)[..., ::-1]
    mean = np.asarray(mean, np.float32)
    inv_std = 1.0 / np.asarray(std, np.float32)
    chw = ((rgb - mean) * inv_std).transpose(2, 0, 1)[None]
    if out is None:
        return np.ascontiguousarray(chw, dtype=dtype)
    if out.shape != chw.shape or out.dtype != np.dtype(dtype):
        raise ValueError(f"out must be {np.dtype(dtype)} {chw.shape}, got {out.dtype} {out.shape}")
    out[...] = chw
    return out


def scores_to_labels(scores: np.ndarray) -> np.ndarray:
    """(1, C, h, w) logits -> (h, w) uint8 labels; (1, h, w) integer labels pass through."""
    scores = np.asarray(scores)
    if scores.ndim == 4 and scores.shape[0] == 1 and np.issubdtype(scores.dtype, np.floating):
        if scores.shape[1] > 256:
            raise ValueError(f"at most 256 classes fit uint8 labels, got {scores.shape[1]}")
        return scores[0].argmax(0).astype(np.uint8)
    if scores.ndim == 3 and scores.shape[0] == 1 and np.issubdtype(scores.dtype, np.integer):
        return scores[0].astype(np.uint8)
    raise ValueError(
        "scores must be (1, C, h, w) float logits or (1, h, w) integer labels, "
        f"got {scores.dtype} {scores.shape}"
    )


def palette_lut_bgr(palette_rgb) -> np.ndarray:
    """(256, 3) uint8 table: label -> BGR colour (RGB palette flipped; unlisted labels black)."""
    lut = np.zeros((256, 3), np.uint8)
    pal = np.asarray(palette_rgb, np.uint8)[:256, ::-1]
    lut[: len(pal)] = pal
    return lut


def overlay(
    frame_bgr: np.ndarray, labels: np.ndarray, palette_rgb, alpha: float = 0.5
) -> np.ndarray:
    """Blend the palette colour of each label onto the frame."""
    _check_frame(frame_bgr)
    if labels.shape != frame_bgr.shape[:2]:
        raise ValueError(f"labels {labels.shape} and frame {frame_bgr.shape[:2]} differ in size")
    lut = palette_lut_bgr(palette_rgb).astype(np.float32)
    blended = frame_bgr.astype(np.float32) * (1 - alpha) + lut[labels] * alpha
    return np.floor(blended + 0.5).clip(0, 255).astype(np.uint8)


def postprocess(
    scores: np.ndarray,
    frame_hw: tuple[int, int],
    palette=None,
    frame: np.ndarray | None = None,
    alpha: float = 0.5,
    out: np.ndarray | None = None,
    mode: str = "nearest",
    upsample: int = 1,
    conf_out: np.ndarray | None = None,
):
    """Model output -> uint8 labels at ``frame_hw`` (and the overlay when ``frame`` is given;
    with ``conf_out``, the :func:`confidence` written there).

    ``mode="nearest"`` takes the argmax at model size and upsamples labels (fast);
    ``mode="bilinear"`` upsamples logits first, then takes the argmax (what accuracy metrics use).
    ``upsample=k`` (nearest mode): the logits are first resized x``k`` bilinearly, the model's own
    trailing resize that the runtime moved out of the graph.
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    scores = np.asarray(scores)
    if conf_out is not None:
        conf_out[...] = confidence(scores, frame_hw, mode, upsample)
    if upsample > 1:  # the model's own last step, then the usual nearest path
        if scores.ndim != 4 or mode != "nearest":
            raise ValueError("upsample > 1 needs (1, C, h, w) logits and mode='nearest'")
        h, w = scores.shape[-2:]
        scores = resize_bilinear(
            scores[0].transpose(1, 2, 0), (h * upsample, w * upsample)
        ).transpose(2, 0, 1)[None]
    if mode == "bilinear" and scores.ndim == 4 and np.issubdtype(scores.dtype, np.floating):
        labels = resize_bilinear(scores[0].transpose(1, 2, 0), frame_hw).argmax(-1).astype(np.uint8)
    else:
        labels = resize_nearest(scores_to_labels(scores), frame_hw)
    if out is not None:
        out[...] = labels
        labels = out
    if frame is None:
        return labels
    if palette is None:
        raise ValueError("an overlay needs a palette")
    return labels, overlay(frame, labels, palette, alpha)


_LOG2E = np.float32(1.44269504)
_EXP_CUTOFF = np.float32(-12.0)
_EXP2_POLY = [np.float32(c) for c in (2.42210463e-1, 6.93282902e-1, 1.0)]


def exp_nonpositive(x: np.ndarray) -> np.ndarray:
    """exp(x) for x <= 0 in float32 multiplies and adds, as pixel_ops.h computes it (library exp
    differs between NumPy, the CPU and CUDA in the last place; this is the same everywhere)."""
    x = x.astype(np.float32)
    live = x >= _EXP_CUTOFF  # below it (and NaN): 0, see pixel_ops.h
    x = np.where(live, x, np.float32(0.0))
    t = x * _LOG2E
    k = (t - np.float32(0.5)).astype(np.int32)  # truncation: round half away from 0
    f = t - k.astype(np.float32)
    p = np.full_like(f, np.float32(5.50087206e-2))  # 2^f, degree 3 (pixel_ops.h)
    for c in _EXP2_POLY:
        p = p * f + c
    return np.where(live, p * ((k + 127).astype(np.uint32) << 23).view(np.float32), np.float32(0))


def top_probability_u8(scores_hwc: np.ndarray) -> np.ndarray:
    """(H, W, C) float scores -> uint8 round(255 x the top class's softmax probability): the max,
    then exp(score - max) summed in class order."""
    v = scores_hwc.astype(np.float32, copy=False)
    best = v[..., 0]
    for c in range(1, v.shape[-1]):  # as the kernels: a class replaces the best only when
        best = np.where(v[..., c] > best, v[..., c], best)  # greater (a NaN never is)
    total = np.zeros(best.shape, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN/inf scores: confidence 0
        for c in range(v.shape[-1]):
            total += exp_nonpositive(v[..., c] - best)
        conf = (np.float32(255.0) / np.maximum(total, 1) + np.float32(0.5)).astype(np.int32)
    return np.where(total >= 1, conf, 0).astype(np.uint8)


def confidence(
    scores: np.ndarray, frame_hw: tuple[int, int], mode: str = "nearest", upsample: int = 1
) -> np.ndarray:
    """uint8 (H, W) confidence: in nearest mode that of the scores' own grid (before an
    ``upsample``), upsampled to ``frame_hw`` with nearest taps; in bilinear mode that of the
    logits resized to each output pixel (``upsample`` does not change the grid it is taken on)."""
    scores = np.asarray(scores)
    if scores.ndim != 4 or not np.issubdtype(scores.dtype, np.floating):
        raise ValueError("confidence needs (1, C, h, w) float logits, not labels")
    hwc = scores[0].transpose(1, 2, 0)
    if mode == "bilinear":
        return top_probability_u8(resize_bilinear(hwc, frame_hw))
    return resize_nearest(top_probability_u8(hwc), frame_hw)


def cut_limit(cut: float, pixels: int) -> int:
    """Changed pixels above which a frame is a scene cut: ``floor(cut * pixels)``."""
    return int(cut * pixels)


def smooth(
    scores: np.ndarray, state: np.ndarray | None, keep: float, cut: float
) -> tuple[np.ndarray, bool]:
    """The moving average of (1, C, h, w) logits, updated in place in ``state`` (float32, same
    shape); a new one when ``state`` is None or of another shape. Returns ``(state, reset)``:
    ``reset`` when the average restarted from ``scores`` (no state yet, or a scene cut)."""
    x = np.asarray(scores)[0].astype(np.float32)
    if state is None or state.shape != (1, *x.shape):
        return x[None].copy(), True
    ema = state[0]
    changed = int(np.count_nonzero(x.argmax(0) != ema.argmax(0)))
    if changed > cut_limit(cut, x.shape[1] * x.shape[2]):
        ema[...] = x
        return state, True
    ema *= np.float32(keep)
    ema += x * np.float32(1.0 - keep)
    return state, False
