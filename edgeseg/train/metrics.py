"""Segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy, Dice; HD95.

A class absent from both prediction and ground truth over the whole set has no IoU (NaN) and is
left out of the means, as in the Cityscapes and CamVid protocols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch


class ConfusionMatrix:
    """A ``num_classes x num_classes`` count matrix; rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch of predicted and true label maps of the same shape."""
        pred = torch.as_tensor(pred).reshape(-1).to("cpu", torch.int64)
        target = torch.as_tensor(target).reshape(-1).to("cpu", torch.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels, target {target.numel()}")
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        n = self.num_classes
        idx = target[keep] * n + pred[keep].clamp(0, n - 1)
        self.mat += torch.bincount(idx, minlength=n * n).reshape(n, n)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of a torch.distributed run."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat)

    def compute(self) -> SegMetrics:
        m = self.mat.double()
        tp = m.diag()
        gt = m.sum(1)
        pr = m.sum(0)
        union = gt + pr - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        dice = torch.where(
            gt + pr > 0, 2 * tp / (gt + pr).clamp(min=1), torch.full_like(tp, float("nan"))
        )
        total = m.sum()
        return SegMetrics(
            miou=_nanmean(iou),
            per_class_iou=iou.tolist(),
            pixel_acc=float(tp.sum() / total) if total > 0 else float("nan"),
            mean_dice=_nanmean(dice),
            per_class_dice=dice.tolist(),
        )


@dataclass
class SegMetrics:
    miou: float
    per_class_iou: list[float]
    pixel_acc: float
    mean_dice: float
    per_class_dice: list[float]

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(len(self.per_class_iou))]
        return {
            "miou": self.miou,
            "per_class_iou": dict(zip(names, self.per_class_iou)),
            "pixel_acc": self.pixel_acc,
            "mean_dice": self.mean_dice,
            "per_class_dice": dict(zip(names, self.per_class_dice)),
        }


def _nanmean(t: torch.Tensor) -> float:
    valid = ~torch.isnan(t)
    return float(t[valid].mean()) if valid.any() else float("nan")


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch the background (4-neighbourhood)."""
    m = mask.astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (eroded == 0)


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance (pixels) between two binary masks.

    NaN when either mask is empty (the distance is undefined), so callers can skip it.
    """
    pred, target = pred.astype(bool), target.astype(bool)
    if not pred.any() or not target.any():
        return float("nan")
    bp, bt = _boundary(pred), _boundary(target)
    # distanceTransform measures distance to the nearest zero pixel, so zero out the boundary.
    dt_to_t = cv2.distanceTransform((~bt).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dt_to_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    d = np.concatenate([dt_to_t[bp], dt_to_p[bt]])
    return float(np.percentile(d, 95))


class HD95Meter:
    """Per-class HD95 averaged over the images where the class is in both prediction and truth."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.sums = np.zeros(num_classes)
        self.counts = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image's label maps (H, W)."""
        pred = np.asarray(pred)
        target = np.asarray(target)
        valid = (
            np.ones_like(target, dtype=bool)
            if self.ignore_index is None
            else target != self.ignore_index
        )
        for c in range(self.num_classes):
            d = hd95((pred == c) & valid, target == c)
            if not math.isnan(d):
                self.sums[c] += d
                self.counts[c] += 1

    def compute(self) -> list[float]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sums / self.counts).tolist()
