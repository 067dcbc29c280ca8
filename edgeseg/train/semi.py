"""Semi-supervised training: Mean Teacher on unlabeled frames (Tarvainen & Valpola, NeurIPS 2017).

The teacher is the exponential moving average of the student's weights — the same average the
run validates and saves — so what is deployed is the teacher. Each step, a batch of unlabeled
frames is cropped once; the teacher sees the plain crop (weak view), the student the same pixels
with strong colour jitter, blur and greyscale (strong view: geometry untouched, so predictions
compare pixel for pixel). The consistency loss is the KL divergence from the teacher's class
distribution to the student's, on pixels where the teacher is at least ``confidence`` sure,
averaged over all pixels (zero where the two agree), and ramped up over the first 30% of the run
while the teacher is still poor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from edgeseg._io import list_images
from edgeseg.data.transforms import TrainTransform, normalize
from edgeseg.errors import EdgesegError

RAMP = 0.3  # fraction of the run over which the consistency weight ramps up


def read_frames(path: str | Path, max_frames: int = 2000) -> list[np.ndarray]:
    """RGB frames of a video file or an image folder (at most ``max_frames``, evenly spaced)."""
    path = Path(path)
    if path.is_dir():
        files = list_images(path)
        step = max(1, math.ceil(len(files) / max_frames))
        frames = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files[::step]]
        frames = [f[..., ::-1].copy() for f in frames if f is not None]
    elif path.is_file():
        cap = cv2.VideoCapture(str(path))
        frames = []
        while len(frames) < 50 * max_frames:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(np.ascontiguousarray(f[..., ::-1]))
        cap.release()
        frames = frames[:: max(1, math.ceil(len(frames) / max_frames))]
    else:
        raise EdgesegError(f"unlabeled data not found: {path}; pass an image folder or a video")
    if not frames:
        raise EdgesegError(f"no frames could be read from {path}: is it a video or image folder?")
    return frames


def strong_view(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strong photometric augmentation of an RGB uint8 crop: colour jitter, then greyscale
    (p 0.2) and Gaussian blur (p 0.5). Geometry is left alone."""
    b, c, s = rng.uniform(0.6, 1.4, 3)
    x = crop.astype(np.float32)
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    x = (x * s + gray * (1 - s)) * b
    x = (x - x.mean()) * c + x.mean()
    if rng.random() < 0.2:
        x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.1, 2.0)))
    return np.clip(x, 0, 255).astype(np.uint8)


class UnlabeledFrames(torch.utils.data.Dataset):
    """Unlabeled frames, each sample two views of one random crop: ``(weak, strong)``.

    Frames are resized once to the model input's height (aspect kept) and cropped like the
    labeled data (``transform``'s scale range, crop size and flips; its ``base_hw`` None).
    """

    def __init__(self, path: str | Path, transform: TrainTransform, input_h: int) -> None:
        self.frames = [
            cv2.resize(f, (round(f.shape[1] * input_h / f.shape[0]), input_h), cv2.INTER_AREA)
            for f in read_frames(path)
        ]
        self.transform = transform
        self.rng = np.random.default_rng(torch.initial_seed() % 2**32)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.frames[i]
        blank = np.zeros(img.shape[:2], np.uint8)
        t = self.transform  # base_hw None: crops are scaled from the frame's own size
        crop, _ = t.crop(img, blank)
        weak = normalize(crop, t.mean, t.std)
        strong = normalize(strong_view(crop, self.rng), t.mean, t.std)
        return torch.from_numpy(weak), torch.from_numpy(strong)


def endless(loader) -> Iterator:
    """Batches of ``loader`` forever (a new shuffle each pass)."""
    while True:
        yield from loader


def consistency_loss(
    student: torch.Tensor, teacher: torch.Tensor, confidence: float = 0.9
) -> torch.Tensor:
    """KL(teacher || student) per pixel where the teacher's top class has at least
    ``confidence`` probability, averaged over every pixel: zero where the two agree."""
    log_t = teacher.log_softmax(1)
    log_s = student.log_softmax(1)
    p_t = log_t.exp()
    keep = (p_t.max(1).values >= confidence).to(student.dtype)
    kl = (p_t * (log_t - log_s)).sum(1)
    return (kl * keep).sum() / kl.numel()


def ramp_weight(progress: float, weight: float) -> float:
    """The consistency weight at ``progress`` in [0, 1]: Mean Teacher's sigmoid ramp-up."""
    t = min(1.0, progress / RAMP)
    return weight * math.exp(-5.0 * (1.0 - t) ** 2)


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, weak: torch.Tensor) -> torch.Tensor:
    """The teacher's predictions on the weak views (eval mode: its averaged BN statistics)."""
    teacher.eval()
    out = teacher(weak)
    out = out[0] if isinstance(out, tuple) else out
    return out.float()


def unlabeled_part(outputs, n: int) -> torch.Tensor:
    """The student's logits of the unlabeled images (batch positions ``n`` onwards)."""
    main = outputs[0] if isinstance(outputs, tuple) else outputs
    return main[n:].float()


def resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)
