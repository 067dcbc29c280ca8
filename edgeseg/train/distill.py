"""Distillation from stored teacher logits.

A teacher's forward pass on every batch costs a CPU run about 40% of its steps
(docs/training.md). Stored instead, the teacher runs once per training image, on the whole image
at the input size, and each random crop takes its soft targets from those logits through the
same scale, crop and flip as its pixels (:meth:`TrainTransform.__call__` with ``soft``) — the
way ReLabel (Yun et al., 2021) crops stored label maps for ImageNet's random crops. What the
student sees differs from what the teacher saw only in the photometric changes (which should
not change the answer) and in the teacher's context: the whole image rather than the crop.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from edgeseg.data import EvalTransform
from edgeseg.data.datasets import SegDataset
from edgeseg.data.transforms import SOFT_STRIDE, TrainTransform
from edgeseg.errors import EdgesegError


def stored_mode(mode: str, device: torch.device, mix: str) -> bool:
    """Whether the teacher's logits are stored (``auto``: on a CPU, where its pass per batch is
    dear, unless batches are mixed: a mixed image needs the teacher's view of the mix)."""
    if mode == "stored" and mix != "none":
        raise EdgesegError(
            f"stored teacher logits cannot follow --mix {mix}: use --teacher-logits live"
        )
    return mode == "stored" or (mode == "auto" and device.type == "cpu" and mix == "none")


@torch.no_grad()
def store_teacher_logits(
    teacher: nn.Module,
    dataset: SegDataset,
    input_hw: tuple[int, int],
    device: torch.device,
    batch: int = 8,
) -> np.ndarray:
    """The teacher's logits for every image of ``dataset``: float16 (N, h, w, C) at
    1/SOFT_STRIDE of ``input_hw``, the image resized to the input size and normalized as the
    dataset's training transform normalizes (eval mode: the teacher's averaged BN statistics)."""
    tf = dataset.transform
    if not isinstance(tf, TrainTransform):
        raise TypeError("stored teacher logits need the dataset's TrainTransform")
    eval_tf = EvalTransform(input_hw, tf.mean, tf.std)
    hw = (max(1, input_hw[0] // SOFT_STRIDE), max(1, input_hw[1] // SOFT_STRIDE))
    teacher.eval()
    out: np.ndarray | None = None
    for start in range(0, len(dataset), batch):
        idx = range(start, min(start + batch, len(dataset)))
        x = torch.stack([eval_tf(*dataset.load(i))[0] for i in idx]).to(device)
        y = teacher(x.contiguous(memory_format=torch.channels_last))
        y = F.interpolate((y[0] if isinstance(y, tuple) else y).float(), size=hw, mode="area")
        y = y.permute(0, 2, 3, 1).half().cpu().numpy()
        if out is None:
            out = np.empty((len(dataset), *y.shape[1:]), np.float16)
        out[idx.start : idx.stop] = y
    assert out is not None  # a dataset is never empty here (build_dataset refuses)
    return out


class WithTeacherLogits(Dataset):
    """``dataset``'s samples with their stored teacher logits: (image, mask, soft targets)."""

    def __init__(self, dataset: SegDataset, logits: np.ndarray) -> None:
        if len(logits) != len(dataset):
            raise ValueError(f"{len(logits)} stored logits for {len(dataset)} images")
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        img, mask = self.dataset.load(i)
        return self.dataset.transform(img, mask, soft=self.logits[i])


def stored_teacher_note(logits: np.ndarray, seconds: float) -> str:
    """One line for the run's banner."""
    n, h, w, c = logits.shape
    return (
        f"teacher: logits of {n} training images stored ({c}x{h}x{w} each, "
        f"{logits.nbytes / 2**20:.0f} MB, {seconds:.0f} s); each crop takes its own"
    )
