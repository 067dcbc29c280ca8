"""Losses: cross-entropy, OHEM cross-entropy, cross-entropy + Dice, and boundary-weighted
cross-entropy (``+boundary``); all honour ignore_index."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeseg.errors import EdgesegError, did_you_mean
from edgeseg.train import LOSSES


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hardest pixels only.

    Keeps pixels whose true-class probability is below ``thresh``, but at least ``min_kept`` of
    them, so the loss never collapses onto a handful of pixels late in training.
    """

    def __init__(
        self,
        ignore_index: int,
        weight: torch.Tensor | None = None,
        thresh: float = 0.7,
        min_kept: int = 100_000,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight)
        self.loss_thresh = -torch.log(torch.tensor(thresh)).item()
        self.min_kept = min_kept

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, reduction="none"
        ).flatten()
        valid = target.flatten() != self.ignore_index
        loss = loss[valid]
        if loss.numel() == 0:
            return logits.sum() * 0
        n_min = min(self.min_kept, loss.numel())
        hard = loss[loss > self.loss_thresh]
        if hard.numel() < n_min:
            hard = loss.topk(n_min).values
        return hard.mean()


class DiceLoss(nn.Module):
    """Soft multi-class Dice over valid pixels, averaged over the classes present in the batch."""

    def __init__(self, ignore_index: int, eps: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1)
        prob = logits.softmax(1) * valid
        # Per-class sums without materialising a one-hot tensor (C x pixels of int64 is slow on
        # CPU): the true-class probability is gathered, then binned by class.
        t = target.clamp(0, c - 1).unsqueeze(1)
        p_true = prob.gather(1, t).flatten()
        keep = valid.flatten()
        cls = t.flatten()[keep]
        inter = torch.zeros(c, dtype=prob.dtype, device=prob.device).index_add_(
            0, cls, p_true[keep]
        )
        count = torch.bincount(cls, minlength=c).to(prob.dtype)
        denom = prob.sum((0, 2, 3)) + count
        present = count > 0
        dice = (2 * inter + self.eps) / (denom + self.eps)
        return 1 - dice[present].mean() if present.any() else logits.sum() * 0


def boundary_mask(target: torch.Tensor, ignore_index: int, radius: int = 2) -> torch.Tensor:
    """Valid pixels within ``radius`` of a label change: (N, H, W) bool. A window whose largest
    and smallest label differ straddles a boundary (two max-pools, no per-class maps)."""
    t = target.unsqueeze(1).float()
    k = 2 * radius + 1
    high = F.max_pool2d(t, k, stride=1, padding=radius)
    low = -F.max_pool2d(-t, k, stride=1, padding=radius)
    return (high != low).squeeze(1) & (target != ignore_index)


class BoundaryWeightedCE(nn.Module):
    """Cross-entropy with the pixels near label boundaries weighted ``1 + boundary_weight``.

    Chosen over a boundary-distance term (Kervadec et al.'s boundary loss needs a signed distance
    map per class and crop, costly on a CPU, and targets few-class problems): thin structures —
    poles, sign posts, cyclists — are almost all boundary, so weighting boundaries raises them
    most, and the weights compose with the class weights. The mean is normalised by the total
    weight, so ``boundary_weight=0`` is exactly ``nn.CrossEntropyLoss(weight)``.
    """

    def __init__(
        self,
        ignore_index: int,
        weight: torch.Tensor | None = None,
        boundary_weight: float = 2.0,
        radius: int = 2,
    ) -> None:
        super().__init__()
        self.ignore_index, self.boundary_weight, self.radius = ignore_index, boundary_weight, radius
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        w = valid.to(ce.dtype)
        if self.weight is not None:
            w = w * self.weight[target.clamp(0, len(self.weight) - 1)]
        edge = boundary_mask(target, self.ignore_index, self.radius)
        w = w * (1 + self.boundary_weight * edge.to(ce.dtype))
        total = w.sum()
        return (ce * w).sum() / total if total > 0 else logits.sum() * 0


class CEDice(nn.Module):
    def __init__(
        self,
        ignore_index: int,
        weight: torch.Tensor | None = None,
        dice_weight: float = 0.5,
        ce: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.ce = ce or nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.dice = DiceLoss(ignore_index)
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice_weight * self.dice(logits, target)


def build_loss(
    name: str,
    ignore_index: int,
    weight: torch.Tensor | None = None,
    boundary_weight: float = 2.0,
) -> nn.Module:
    """``ce`` | ``ohem`` | ``ce+dice`` | ``ce+boundary`` | ``ce+dice+boundary``."""
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
    if name == "ohem":
        return OhemCrossEntropy(ignore_index, weight)
    if name == "ce+dice":
        return CEDice(ignore_index, weight)
    if name in ("ce+boundary", "ce+dice+boundary"):
        ce = BoundaryWeightedCE(ignore_index, weight, boundary_weight)
        return ce if name == "ce+boundary" else CEDice(ignore_index, weight, ce=ce)
    raise EdgesegError(
        f"unknown loss '{name}'{did_you_mean(name, LOSSES)}; choose one of: {', '.join(LOSSES)}"
    )


def _area_down(x: torch.Tensor, hw) -> torch.Tensor:
    """``x`` area-averaged to ``hw`` (a plain average pool where the sizes divide: faster)."""
    ky, kx = x.shape[-2] // hw[0], x.shape[-1] // hw[1]
    if (ky * hw[0], kx * hw[1]) == tuple(x.shape[-2:]):
        return F.avg_pool2d(x, (ky, kx))
    return F.interpolate(x, size=tuple(hw), mode="area")


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """Pixel-wise KL divergence from the teacher's softened class distribution to the student's
    (Hinton et al., 2015), scaled by T² so its gradients keep their size as T changes; averaged
    over pixels, void ones included (the teacher has an opinion there, the labels do not).
    Pixels where ``teacher`` is NaN (stored logits over a crop's padding) do not count.
    Logits of two sizes are compared on the coarser grid (the finer one area-averaged down, or a
    finer teacher resized): per-pixel softmaxes over 11+ classes at full size would cost a CPU
    step more than the student's own pass."""
    if student.shape[-2:] != teacher.shape[-2:]:
        if teacher.shape[-2] * teacher.shape[-1] < student.shape[-2] * student.shape[-1]:
            student = _area_down(student, teacher.shape[-2:])
        else:
            teacher = F.interpolate(
                teacher, size=student.shape[-2:], mode="bilinear", align_corners=False
            )
    valid = torch.isfinite(teacher).all(1)
    t = temperature
    log_p = F.log_softmax(student / t, dim=1)
    log_q = F.log_softmax(torch.where(valid[:, None], teacher, 0.0) / t, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum(1)
    return (kl * valid).sum() / valid.sum().clamp(min=1) * t * t


def segmentation_loss(
    outputs: torch.Tensor | tuple,
    target: torch.Tensor,
    criterion: nn.Module,
    aux_weight: float = 0.4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, main logits) of a model's training output: plain logits, or (logits,
    [auxiliary logits]) from models with deep supervision (bisenetv2's heads in train mode)."""
    main, aux = (outputs[0], outputs[1]) if isinstance(outputs, tuple) else (outputs, [])
    loss = criterion(main.float(), target)
    for a in aux:
        loss = loss + aux_weight * criterion(a.float(), target)
    return loss, main
