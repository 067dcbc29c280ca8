"""Batch mixing for segmentation: CutMix, ClassMix and MixUp, labels following pixels exactly.

Each mixes a batch with a shuffled copy of itself, with probability ``prob`` per step:

- ``cutmix`` (Yun et al., 2019): a random box of the other image, and the same box of its mask;
- ``classmix`` (Olsson et al., 2021): the pixels of half the classes present in the other mask,
  with their labels — whole objects move, their outlines intact;
- ``mixup`` (Zhang et al., 2018): a blend ``lam * a + (1 - lam) * b`` of two images; the loss is
  the same blend of the two masks' losses.

Ignored pixels stay ignored: a pasted region carries the other mask's labels, void included, and
ClassMix never picks void as a class. Returns the mixed images and ``[(mask, weight), ...]``.
"""

from __future__ import annotations

import torch

from edgeseg.errors import EdgesegError, did_you_mean
from edgeseg.train import MIXES

Targets = list[tuple[torch.Tensor, float]]


def _box(h: int, w: int, lam: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """A box of about ``1 - lam`` of the area, centred at a random point, clipped to the image."""
    cut = (1.0 - lam) ** 0.5
    bh, bw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=gen))
    cx = int(torch.randint(w, (1,), generator=gen))
    y0, x0 = max(0, cy - bh // 2), max(0, cx - bw // 2)
    return y0, min(h, cy + bh - bh // 2), x0, min(w, cx + bw - bw // 2)


def cutmix(img, mask, perm, gen) -> tuple[torch.Tensor, Targets]:
    lam = float(torch.rand(1, generator=gen))  # Beta(1, 1)
    y0, y1, x0, x1 = _box(img.shape[-2], img.shape[-1], lam, gen)
    img, mask = img.clone(), mask.clone()
    img[..., y0:y1, x0:x1] = img[perm][..., y0:y1, x0:x1]
    mask[..., y0:y1, x0:x1] = mask[perm][..., y0:y1, x0:x1]
    return img, [(mask, 1.0)]


def classmix(img, mask, perm, gen, ignore_index: int) -> tuple[torch.Tensor, Targets]:
    other = mask[perm]
    paste = torch.zeros_like(mask, dtype=torch.bool)
    for i in range(mask.shape[0]):
        classes = other[i].unique()
        classes = classes[classes != ignore_index]
        if classes.numel() == 0:
            continue
        pick = classes[torch.randperm(classes.numel(), generator=gen)[: (classes.numel() + 1) // 2]]
        paste[i] = torch.isin(other[i], pick)
    img = torch.where(paste.unsqueeze(1), img[perm], img)
    return img, [(torch.where(paste, other, mask), 1.0)]


def mixup(img, mask, perm, alpha: float = 0.4) -> tuple[torch.Tensor, Targets]:
    lam = float(torch.distributions.Beta(alpha, alpha).sample())  # the global generator
    return lam * img + (1 - lam) * img[perm], [(mask, lam), (mask[perm], 1 - lam)]


def mix_batch(
    img: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    prob: float,
    ignore_index: int,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, Targets]:
    """``(images, [(mask, weight)])``: the batch mixed by ``mode`` with probability ``prob``,
    else as it is."""
    if mode not in MIXES:
        choices = ", ".join(MIXES)
        raise EdgesegError(f"unknown mix '{mode}'{did_you_mean(mode, MIXES)}; choose: {choices}")
    gen = gen or torch.default_generator
    if mode == "none" or img.shape[0] < 2 or float(torch.rand(1, generator=gen)) >= prob:
        return img, [(mask, 1.0)]
    perm = torch.randperm(img.shape[0], generator=gen)
    if mode == "cutmix":
        return cutmix(img, mask, perm, gen)
    if mode == "classmix":
        return classmix(img, mask, perm, gen, ignore_index)
    return mixup(img, mask, perm)
