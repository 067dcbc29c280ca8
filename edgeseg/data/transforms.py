"""Paired image/mask transforms: geometry applied identically to both, photometry to the image.

Both transforms take ``(RGB uint8 HxWx3, uint8 HxW mask)`` numpy arrays, never modify them, and
return ``(float32 tensor 3xHxW normalized as (x - mean) / std on the 0-255 scale, int64 tensor
HxW)``. They use OpenCV and whole-plane numpy: no per-pixel Python.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from edgeseg.errors import EdgesegError

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _planes_to_normalized(
    planes: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    h, w = planes[0].shape
    out = np.empty((3, h, w), np.float32)
    for c in range(3):
        # Per-plane work: numpy broadcasting over a trailing channel axis is several times slower.
        np.multiply(planes[c], np.float32(1.0 / std[c]), out=out[c], casting="unsafe")
        out[c] -= np.float32(mean[c] / std[c])
    return out


def normalize(
    img: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 3xHxW ``(x - mean) / std`` (mean/std on the 0-255 scale, RGB)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects an HxWx3 RGB image, got shape {img.shape}")
    return _planes_to_normalized(cv2.split(img), mean, std)


def denormalize(
    chw: np.ndarray | torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Inverse of :func:`normalize` (for visualisation): float 3xHxW -> RGB uint8 HxWx3."""
    arr = chw.detach().cpu().numpy() if isinstance(chw, torch.Tensor) else np.asarray(chw)
    hwc = arr.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(hwc), 0, 255).astype(np.uint8)


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.int64))


def _check_hw(name: str, hw) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise EdgesegError(
            f"{name} must be (height, width), got {hw!r}; pass two positive integers"
        ) from None
    if h < 1 or w < 1:
        raise EdgesegError(f"{name} must be positive, got {hw!r}; pass two positive integers")
    return h, w


# Stored teacher logits are warped to 1/SOFT_STRIDE of the crop: soft targets vary smoothly, and
# the distillation loss resizes them to the student's output.
SOFT_STRIDE = 2


@dataclass(frozen=True)
class _Crop:
    """One sample's geometry: ``m`` maps crop pixels to source pixels (an inverse warp), and
    ``valid`` = (y0, y1, x0, x1) is the part of the crop on the image (the rest is padding)."""

    m: np.ndarray
    valid: tuple[int, int, int, int]


class TrainTransform:
    """Random scale, pad, crop and flip (image bilinear, mask nearest), colour jitter, normalize.

    ``photometric=True`` adds what differs between cameras and days, for models meant for streets
    they never saw: gamma, a colour cast (per-channel gain), Gaussian blur and sensor noise
    (each with its own probability, see :data:`PHOTOMETRIC`).

    The scale and crop are one ``cv2.warpAffine`` that renders only the crop, so cost does not
    grow with the scale factor. Padding is 0 for the image and ``ignore_index`` for the mask.

    Randomness: ``rng`` if given, otherwise a generator seeded lazily from
    ``torch.initial_seed()``. When the transform is first used in a different process than the
    one its generator was made in (a DataLoader worker), it reseeds from that worker's torch seed,
    so workers never repeat each other's augmentations.
    """

    def __init__(
        self,
        crop_hw: tuple[int, int],
        scale: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        jitter: float = 0.3,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        base_hw: tuple[int, int] | None = None,
        rng: np.random.Generator | None = None,
        photometric: bool = False,
    ) -> None:
        self.crop_hw = _check_hw("crop_hw", crop_hw)
        self.base_hw = _check_hw("base_hw", base_hw) if base_hw is not None else None
        lo, hi = (float(v) for v in scale)
        if not 0 < lo <= hi:
            raise EdgesegError(
                f"scale range must satisfy 0 < min <= max, got {scale!r}; e.g. (0.5, 2.0)"
            )
        if not 0 <= jitter < 1:
            raise EdgesegError(f"jitter must be in [0, 1), got {jitter!r}; use 0 to disable it")
        if not 0 <= ignore_index <= 255:
            raise EdgesegError(
                f"ignore_index must be 0..255 for 8-bit masks, got {ignore_index!r}; use 255"
            )
        self.scale = (lo, hi)
        self.hflip = bool(hflip)
        self.jitter = float(jitter)
        self.ignore_index = int(ignore_index)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.photometric = bool(photometric)
        self._rng = rng
        self._rng_pid = os.getpid() if rng is not None else None

    def _generator(self) -> np.random.Generator:
        pid = os.getpid()
        if self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed())
        elif self._rng_pid != pid:
            # A copy of our generator in a worker: every worker holds the same state, so mix in
            # the worker's own torch seed (distinct per worker and per epoch).
            self._rng = np.random.default_rng(
                [torch.initial_seed(), int(self._rng.integers(2**63))]
            )
        self._rng_pid = pid
        return self._rng

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_hw={self.crop_hw}, scale={self.scale}, hflip={self.hflip}, "
            f"jitter={self.jitter}, ignore_index={self.ignore_index}, base_hw={self.base_hw}, "
            f"photometric={self.photometric})"
        )

    def __call__(
        self, img: np.ndarray, mask: np.ndarray, soft: np.ndarray | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(image, mask), and with ``soft`` (a teacher's (h, w, C) logits over the whole
        image, any resolution) also those logits through the same scale, crop and flip:
        float32 (C, crop_h / SOFT_STRIDE, crop_w / SOFT_STRIDE), NaN where the crop is padding."""
        rng = self._generator()
        geo = self._draw(img, mask, rng)
        out_img, out_mask = self._warp(img, mask, geo)
        gains, noise = (1.0, 1.0, 1.0), 0.0
        if self.photometric:
            out_img, gains, noise = camera_changes(out_img, rng)
        if self.jitter > 0 or self.photometric:
            image = self._jitter(out_img, rng, gains)
            if noise:
                image += rng.standard_normal(image.shape, np.float32) * (
                    np.float32(noise) / np.asarray(self.std, np.float32)[:, None, None]
                )
        else:
            image = _planes_to_normalized(cv2.split(out_img), self.mean, self.std)
        if soft is None:
            return torch.from_numpy(image), _mask_tensor(out_mask)
        warped = self._warp_soft(soft, geo, img.shape[:2])
        return torch.from_numpy(image), _mask_tensor(out_mask), torch.from_numpy(warped)

    def crop(
        self, img: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The geometric part alone: random scale, crop and flip of image and mask (uint8)."""
        return self._warp(img, mask, self._draw(img, mask, rng or self._generator()))

    def _draw(self, img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> _Crop:
        """The random scale, crop origin and flip of one sample."""
        h0, w0 = img.shape[:2]
        if mask.shape[:2] != (h0, w0):
            raise ValueError(f"image is {w0}x{h0} but mask is {mask.shape[1]}x{mask.shape[0]}")
        ch, cw = self.crop_hw
        bh, bw = self.base_hw or (h0, w0)
        s = rng.uniform(*self.scale)
        hs, ws = max(1, round(bh * s)), max(1, round(bw * s))  # size after base resize + scale
        # Crop origin in the scaled image; negative = the image sits inside the padding.
        oy = int(rng.integers(min(0, hs - ch), max(0, hs - ch) + 1))
        ox = int(rng.integers(min(0, ws - cw), max(0, ws - cw) + 1))
        flip = self.hflip and rng.random() < 0.5
        ky, kx = hs / h0, ws / w0
        # Inverse map crop pixel -> source pixel with cv2.resize's half-pixel-centre convention.
        if flip:
            m = np.array(
                [[-1 / kx, 0, (cw - 1 + ox + 0.5) / kx - 0.5], [0, 1 / ky, (oy + 0.5) / ky - 0.5]]
            )
        else:
            m = np.array([[1 / kx, 0, (ox + 0.5) / kx - 0.5], [0, 1 / ky, (oy + 0.5) / ky - 0.5]])
        y0, y1 = max(0, -oy), min(ch, hs - oy)  # rows of the crop that lie on the scaled image
        x0, x1 = max(0, -ox), min(cw, ws - ox)
        if flip:
            x0, x1 = cw - x1, cw - x0
        return _Crop(m, (y0, y1, x0, x1))

    def _warp(self, img: np.ndarray, mask: np.ndarray, geo: _Crop) -> tuple[np.ndarray, np.ndarray]:
        ch, cw = self.crop_hw
        flags = cv2.WARP_INVERSE_MAP
        # Replicate, then blank the padding explicitly: a constant border would bleed black into
        # the outermost image pixels through bilinear interpolation.
        out_img = cv2.warpAffine(
            img, geo.m, (cw, ch), flags=flags | cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        out_mask = cv2.warpAffine(
            mask, geo.m, (cw, ch), flags=flags | cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
        )
        y0, y1, x0, x1 = geo.valid
        if y0 > 0 or y1 < ch or x0 > 0 or x1 < cw:
            for arr, fill in ((out_img, 0), (out_mask, self.ignore_index)):
                arr[:y0] = fill
                arr[y1:] = fill
                arr[:, :x0] = fill
                arr[:, x1:] = fill
        return out_img, out_mask

    def _warp_soft(self, soft: np.ndarray, geo: _Crop, src_hw: tuple[int, int]) -> np.ndarray:
        """``soft`` (h, w, C) over the whole source image -> (C, oh, ow) over the crop at
        1/SOFT_STRIDE of its size: output pixel -> crop pixel -> source pixel (``geo.m``) ->
        logit cell, each step with half-pixel centres, composed into one warp."""
        ch, cw = self.crop_hw
        oh, ow = max(1, ch // SOFT_STRIDE), max(1, cw // SOFT_STRIDE)
        gh, gw = soft.shape[:2]
        sy, sx = ch / oh, cw / ow
        to_crop = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        ky, kx = gh / src_hw[0], gw / src_hw[1]
        to_cell = np.array([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1]])
        m = (to_cell @ np.vstack([geo.m, [0, 0, 1]]) @ to_crop)[:2]
        src = torch.from_numpy(np.ascontiguousarray(soft)).float().numpy()  # F16C: NumPy's is slow
        out = cv2.warpAffine(
            src,
            m,
            (ow, oh),
            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        out = out.reshape(oh, ow, -1)  # OpenCV drops a single channel's axis
        # Cells whose centre falls on the crop's padding: no teacher opinion there.
        y0, y1, x0, x1 = geo.valid
        cy, cx = (np.arange(oh) + 0.5) * sy - 0.5, (np.arange(ow) + 0.5) * sx - 0.5
        out[(cy < y0 - 0.5) | (cy > y1 - 0.5)] = np.nan
        out[:, (cx < x0 - 0.5) | (cx > x1 - 0.5)] = np.nan
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def _jitter(
        self, img: np.ndarray, rng: np.random.Generator, gains=(1.0, 1.0, 1.0)
    ) -> np.ndarray:
        """Brightness, contrast and saturation jitter (and per-channel ``gains``: a colour cast)
        fused with normalization.

        Brightness b, contrast c, saturation s compose to ``A*x + B*gray + C`` per channel, so the
        whole thing is a few whole-plane operations.
        """
        j = self.jitter
        b, c, s = rng.uniform(1 - j, 1 + j, 3) if j > 0 else (1.0, 1.0, 1.0)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        m = b * float(gray.mean())
        a_coef = np.float32(s * c * b)
        base = gray
        base *= np.float32((1 - s) * c * b)
        base += np.float32((1 - c) * m)
        out = np.empty((3, *img.shape[:2]), np.float32)
        # Work in the output planes: fewer temporaries means fewer fresh pages to fault in.
        for ch, x in enumerate(cv2.split(img)):
            p = out[ch]
            np.multiply(x, np.float32(a_coef * gains[ch]), out=p, casting="unsafe")
            p += base
            np.clip(p, 0, 255, out=p)
            p *= np.float32(1.0 / self.std[ch])
            p -= np.float32(self.mean[ch] / self.std[ch])
        return out


# Camera-to-camera changes of photometric=True: (probability, range) each.
PHOTOMETRIC = {
    "gamma": (0.5, (0.7, 1.4)),  # exposure curve
    "cast": (0.5, (0.9, 1.1)),  # per-channel gain: white balance
    "blur": (0.25, (0.3, 1.5)),  # Gaussian sigma, pixels: focus, motion, compression
    "noise": (0.25, (2.0, 8.0)),  # Gaussian sigma on the 0-255 scale: sensor noise
}


def camera_changes(
    img: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float, float], float]:
    """Gamma and blur applied to an RGB uint8 crop; the colour cast (per-channel gains) and noise
    sigma drawn for the caller to fuse with normalization. Each change happens with its
    probability in :data:`PHOTOMETRIC`; every draw is made either way (a fixed number per
    sample keeps runs reproducible)."""
    draws = {k: (rng.random() < p, lo_hi) for k, (p, lo_hi) in PHOTOMETRIC.items()}
    gamma = rng.uniform(*draws["gamma"][1])
    gains = rng.uniform(*draws["cast"][1], 3)
    sigma = rng.uniform(*draws["blur"][1])
    noise = rng.uniform(*draws["noise"][1])
    if draws["gamma"][0]:
        lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
        img = cv2.LUT(img, lut)
    if draws["blur"][0]:
        img = cv2.GaussianBlur(img, (0, 0), float(sigma))
    cast = tuple(float(g) for g in gains) if draws["cast"][0] else (1.0, 1.0, 1.0)
    return img, cast, float(noise) if draws["noise"][0] else 0.0


class EvalTransform:
    """Resize the image (bilinear) to the model input size and normalize; the mask is untouched.

    The mask keeps its original resolution because metrics are computed at label resolution
    (upsample the logits to the mask's size). ``size_hw=None`` keeps the image size.
    """

    def __init__(
        self,
        size_hw: tuple[int, int] | None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size_hw = _check_hw("size_hw", size_hw) if size_hw is not None else None
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __repr__(self) -> str:
        return f"EvalTransform(size_hw={self.size_hw})"

    def __call__(self, img: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size_hw is not None and img.shape[:2] != self.size_hw:
            img = cv2.resize(
                img, (self.size_hw[1], self.size_hw[0]), interpolation=cv2.INTER_LINEAR
            )
        return torch.from_numpy(normalize(img, self.mean, self.std)), _mask_tensor(mask)
