"""Training in parts, in the manner of torchvision's references.

- :func:`build_data`: datasets, transforms and loaders;
- :func:`build_model` / :func:`build_loop`: the network, optimizer, loss, weight average, AMP;
- :func:`train_one_epoch`: one pass over the loader under a learning-rate schedule;
- :func:`validate`: confusion-matrix mIoU at label resolution;
- :func:`save_run`: ``best.pt`` / ``last.pt``.

:func:`train` composes them; QAT fine-tuning (``edgeseg.export.qat``) reuses the same parts.
One process trains on CPU or one GPU; under ``torchrun`` every process trains a shard with
DistributedDataParallel (gloo on CPU, NCCL on CUDA) and rank 0 alone writes files and prints.
The learning-rate schedule is a function of progress in [0, 1] — iterations for ``epochs``,
wall-clock time for ``minutes`` — so a time budget gets a complete warm-up/decay cycle.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from edgeseg._io import atomic_path, write_text_atomic
from edgeseg._table import console as make_console
from edgeseg.data import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform, build_dataset
from edgeseg.data.datasets import DatasetInfo, SegDataset
from edgeseg.device import check_gpu_per_process, resolve_device
from edgeseg.errors import EdgesegError
from edgeseg.models import create_model
from edgeseg.models.checkpoint import build_model as model_from_checkpoint
from edgeseg.models.checkpoint import read_checkpoint, save_checkpoint
from edgeseg.models.encoders import load_pretrained
from edgeseg.spec import InputSpec, ModelSpec, OutputSpec
from edgeseg.train import semi
from edgeseg.train.config import TrainConfig
from edgeseg.train.losses import build_loss, distillation_loss, segmentation_loss
from edgeseg.train.metrics import ConfusionMatrix, SegMetrics
from edgeseg.train.mixing import Targets, mix_batch


@dataclass
class DistInfo:
    """This process's place in a torchrun job (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Join the torchrun process group when there is one (gloo on CPU, NCCL on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return DistInfo()
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        check_gpu_per_process(local_rank, local_world, torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def default_input_size(image_hw: tuple[int, int]) -> tuple[int, int]:
    """The dataset's native size rounded to the nearest multiple of 32 (at least 32)."""
    return tuple(max(32, int(round(s / 32)) * 32) for s in image_hw)  # type: ignore[return-value]


def default_crop(input_hw: tuple[int, int]) -> tuple[int, int]:
    """Three quarters of each side, down to a multiple of 32: smaller crops mean more, cheaper
    steps in a time budget (352x480 -> 256x352 on CamVid)."""
    return tuple(max(32, int(0.75 * s) // 32 * 32) for s in input_hw)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- data


@dataclass
class Data:
    """The datasets and loaders of one run."""

    train_set: SegDataset
    val_set: SegDataset
    loader: DataLoader
    val_loader: DataLoader
    sampler: DistributedSampler | None
    input_hw: tuple[int, int]
    crop_hw: tuple[int, int]
    unlabeled: DataLoader | None = None  # Mean Teacher's frames: (weak, strong) views

    @property
    def info(self) -> DatasetInfo:
        return self.train_set.info

    @property
    def num_classes(self) -> int:
        return len(self.info.classes)


def _seed_worker(worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # workers share the cores with the training process
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_data(
    data: str,
    *,
    input_size: tuple[int, int] | None = None,
    crop: tuple[int, int] | None = None,
    scale: tuple[float, float] = (0.5, 1.75),
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    batch_size: int = 4,
    workers: int = 0,
    seed: int = 0,
    dist_info: DistInfo | None = None,
    pin_memory: bool = False,
    unlabeled: str | None = None,
    photometric: bool = False,
) -> Data:
    """Train and val sets of ``data`` with their transforms, preloaded when small, and loaders;
    with ``unlabeled`` (a video or image folder) also the loader of Mean Teacher's frames.

    Val masks stay at native resolution (batch 1 allows images of different sizes); under
    torchrun each process scores a disjoint shard, and the confusion matrices are summed.
    """
    dist_info = dist_info or DistInfo()
    train_set, val_set = build_dataset(data, "train"), build_dataset(data, "val")
    input_hw = tuple(input_size) if input_size else default_input_size(val_set[0][0].shape[:2])
    if input_hw[0] % 32 or input_hw[1] % 32:
        raise EdgesegError(f"input_size must be multiples of 32, got {input_hw[0]}x{input_hw[1]}")
    crop_hw = tuple(crop) if crop else default_crop(input_hw)
    ignore = train_set.info.ignore_index
    train_set.transform = TrainTransform(
        crop_hw,
        scale=scale,
        ignore_index=ignore,
        mean=mean,
        std=std,
        base_hw=input_hw,
        photometric=photometric,
    )
    val_set.transform = EvalTransform(input_hw, mean=mean, std=std)
    if len(train_set) <= 2000:  # decoding PNGs every epoch would dominate a CPU run
        train_set.preload()
        val_set.preload()
    world, rank = dist_info.world, dist_info.rank
    sampler = DistributedSampler(train_set, world, rank, seed=seed) if world > 1 else None
    per_proc = max(1, batch_size // world)
    loader = DataLoader(
        train_set,
        per_proc,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=len(train_set) // world >= per_proc,
        worker_init_fn=_seed_worker,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        # Forked workers inherit OpenCV's thread pool half-alive and hang in it; spawned ones
        # start clean (a one-off start-up cost: the workers persist).
        multiprocessing_context="spawn" if workers > 0 else None,
    )
    shard = Subset(val_set, range(rank, len(val_set), world)) if world > 1 else val_set
    val_loader = DataLoader(shard, 1, shuffle=False, num_workers=0)
    frames = None
    if unlabeled:
        views = TrainTransform(crop_hw, scale=scale, ignore_index=ignore, mean=mean, std=std)
        unlabeled_set = semi.UnlabeledFrames(unlabeled, views, input_hw[0])
        if len(unlabeled_set) < per_proc:
            raise EdgesegError(
                f"{unlabeled} has {len(unlabeled_set)} frames, fewer than a batch ({per_proc})"
            )
        frames = DataLoader(
            unlabeled_set,
            per_proc,
            shuffle=True,
            drop_last=True,
            num_workers=0,
        )
    return Data(train_set, val_set, loader, val_loader, sampler, input_hw, crop_hw, frames)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- model and loop


def _start_checkpoints(cfg: TrainConfig, num_classes: int) -> tuple[dict | None, dict | None]:
    """(checkpoint to resume, checkpoint whose weights start the run), each checked."""
    resume = read_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None:
        if resume["arch"] != cfg.model:
            raise EdgesegError(
                f"{cfg.resume} holds a '{resume['arch']}' model, not '{cfg.model}'; "
                f"train model {resume['arch']} or do not resume"
            )
        if "optimizer" not in resume:
            raise EdgesegError(
                f"{cfg.resume} has no optimizer state (best.pt keeps only the weights); "
                "resume from last.pt of the same run"
            )
        return resume, resume
    init = read_checkpoint(cfg.init_from) if cfg.init_from else None
    if init is not None and init["arch"] != cfg.model:
        raise EdgesegError(
            f"{cfg.init_from} holds a '{init['arch']}' model, not '{cfg.model}'; pass --model "
            f"{init['arch']} to start from it"
        )
    return None, init


def build_model(
    arch: str,
    num_classes: int,
    device: torch.device,
    init: dict | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, str | None]:
    """The network, channels-last on ``device``, and a note on how it was initialised.

    With ``init``, its raw training weights: all of them for the same classes; for another class
    set (transfer learning) every tensor whose shape still fits — encoder and decoder — and the
    classifier layers re-initialised. NHWC: oneDNN's depthwise and 1x1 convolutions (and
    cuDNN's under AMP) run faster in it (measured in docs/training.md).
    """
    note = None
    if init is not None and init["spec"]["num_classes"] == num_classes:
        model = model_from_checkpoint(init, num_classes, raw=True)
    elif init is not None:
        model = create_model(arch, num_classes, **init.get("model_kwargs", {}))
        note = transfer_weights(model, init, num_classes)
    else:
        model = create_model(arch, num_classes, **(model_kwargs or {}))
    return model.to(device).to(memory_format=torch.channels_last), note


def _model_kwargs(cfg: TrainConfig, start: dict | None) -> dict[str, Any]:
    """The architecture's keyword arguments: a starting checkpoint's own, else the config's with
    the encoder when it is not the default (checkpoints record them to rebuild the model)."""
    if start is not None:
        return dict(start.get("model_kwargs", {}))
    kwargs = dict(cfg.model_kwargs)
    if cfg.encoder != "mbv3":
        kwargs["encoder"] = cfg.encoder
    return kwargs


def transfer_weights(model: nn.Module, init: dict, num_classes: int) -> str:
    """Copy ``init``'s weights into ``model`` wherever name and shape agree; the rest (the
    classifiers, whose class count changed) keep their fresh initialisation. Returns what was
    kept and what was not."""
    weights = init.get("raw_state_dict", init["state_dict"])
    own = model.state_dict()
    kept = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    fresh = sorted(k for k in own if k not in kept)
    if not kept:
        raise EdgesegError("the --init-from checkpoint shares no weights with this model")
    model.load_state_dict(kept, strict=False)
    before = init["spec"]["num_classes"]
    listed = ", ".join(fresh[:6]) + (f" and {len(fresh) - 6} more" if len(fresh) > 6 else "")
    return (
        f"{len(kept)} of {len(own)} tensors from the checkpoint ({before} -> {num_classes} "
        f"classes); re-initialised: {listed or 'none'}"
    )


def class_weights(mode: str, info: DatasetInfo, num_classes: int) -> torch.Tensor | None:
    """The dataset's class weights per ``mode`` (``auto``: square root, ``full``, ``none``)."""
    if mode == "none":
        return None
    if mode not in ("auto", "full"):
        raise EdgesegError(f"class_weights must be 'auto', 'full' or 'none', got '{mode}'")
    if not info.class_weights:
        return None
    w = torch.tensor(info.class_weights[:num_classes], dtype=torch.float32)
    if mode == "auto":
        # Median-frequency weights span 0.14..9.6 on CamVid; their square root keeps rare classes
        # (poles, signs, cyclists) visible without flooding large classes with false positives.
        w = w.sqrt()
    return w / w.mean()


def lr_at(progress: float, warmup: float) -> float:
    """Multiplier of the base LR: linear warm-up, then poly(0.9) decay to zero at progress 1."""
    if progress < warmup:
        return 0.05 + 0.95 * progress / warmup
    return max(0.0, 1 - (progress - warmup) / (1 - warmup)) ** 0.9


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm in eval mode (running statistics used and kept); returns how many.

    Batches of 4 crops give noisy batch statistics that the running averages used at inference
    do not match; training the last part of the run against the frozen statistics closes that
    gap (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021). The affine weights still learn.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.eval()
    return len(bns)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights, none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _ema_update(decay: float):
    """``multi_avg_fn`` for AveragedModel: EMA whose decay ramps up over the first steps.

    The ramp (timm's ModelEmaV2 schedule) stops the average from clinging to the random
    initialisation when a run is short.
    """

    def update(ema_params, params, num_averaged) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1 - d)
        for e, p in zip(ema_params, params):  # integer buffers (BN's num_batches_tracked)
            if not e.is_floating_point():
                e.copy_(p)

    return update


def load_teacher(path: str, num_classes: int, device: torch.device) -> nn.Module:
    """A frozen model in eval mode (BN statistics fixed) whose logits the student learns from."""
    ckpt = read_checkpoint(path)
    if ckpt["spec"]["num_classes"] != num_classes:
        raise EdgesegError(
            f"teacher {path} predicts {ckpt['spec']['num_classes']} classes, the data has "
            f"{num_classes}"
        )
    teacher = model_from_checkpoint(ckpt, num_classes, raw=True)
    teacher = teacher.to(device).to(memory_format=torch.channels_last).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@dataclass
class Loop:
    """What :func:`train_one_epoch` works with, and where the run stands."""

    model: nn.Module  # the module being trained (what checkpoints save)
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    device: torch.device
    lr: float
    schedule: Callable[[float], float]  # progress in [0, 1] -> multiplier of lr
    progress: Callable[[int], float]  # iterations done -> progress in [0, 1]
    forward: nn.Module | None = None  # what runs the batch (DDP wrapper); default: model
    ema: torch.optim.swa_utils.AveragedModel | None = None
    teacher: nn.Module | None = None
    distill_weight: float = 1.0
    aux_weight: float = 0.4
    freeze_bn_at: float | None = None  # progress from which BatchNorm statistics stay frozen
    mix: str = "none"
    mix_prob: float = 0.0
    ignore_index: int = 255
    unlabeled: Iterator | None = None  # Mean Teacher: endless (weak, strong) batches
    consistency_weight: float = 1.0
    confidence: float = 0.9
    freeze_encoder_epochs: int = 0
    amp: bool = False
    on_step: Callable[[int], None] | None = None  # called before step ``it`` (QAT observers)
    it: int = 0
    bn_frozen: bool = False
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.forward = self.forward or self.model

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and deployed: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def done(self) -> bool:
        return self.progress(self.it) >= 1.0


def build_loop(
    cfg: TrainConfig,
    model: nn.Module,
    data: Data,
    device: torch.device,
    dist_info: DistInfo,
    progress: Callable[[int], float],
) -> Loop:
    """Optimizer (AdamW), loss, weight average, teacher, DDP wrapper and AMP for ``model``."""
    forward: nn.Module = model
    if dist_info.world > 1:
        if device.type == "cuda":  # per-GPU batches are small: share BN statistics (NCCL only)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    weight = class_weights(cfg.class_weights, data.info, data.num_classes)
    criterion = build_loss(
        cfg.loss,
        data.info.ignore_index,
        weight.to(device) if weight is not None else None,
        cfg.boundary_weight,
    ).to(device)
    # The exponential moving average of the weights (BN statistics included) is what gets
    # validated and saved: on a short, noisy CPU schedule it is steadier than the last step.
    ema = None
    if cfg.ema > 0:
        avg = _ema_update(cfg.ema)
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=avg, use_buffers=True)
    return Loop(
        model=model,
        forward=forward,
        optimizer=torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr),
        criterion=criterion,
        device=device,
        lr=cfg.lr,
        schedule=lambda p: lr_at(p, cfg.warmup),
        progress=progress,
        ema=ema,
        teacher=load_teacher(cfg.teacher, data.num_classes, device) if cfg.teacher else None,
        distill_weight=cfg.distill_weight,
        aux_weight=cfg.aux_weight,
        freeze_bn_at=1 - cfg.freeze_bn if cfg.freeze_bn > 0 else None,
        mix=cfg.mix,
        mix_prob=cfg.mix_prob,
        ignore_index=data.info.ignore_index,
        unlabeled=semi.endless(data.unlabeled) if data.unlabeled is not None else None,
        consistency_weight=cfg.consistency_weight,
        confidence=cfg.confidence,
        freeze_encoder_epochs=cfg.freeze_encoder,
        amp=device.type == "cuda",
    )


# ---------------------------------------------------------------------------- one epoch


def _labeled(outputs, n: int):
    """The outputs of the first ``n`` images (the labeled ones) of a joint batch."""
    if isinstance(outputs, tuple):
        return outputs[0][:n], [a[:n] for a in outputs[1]]
    return outputs[:n]


def _step_loss(
    loop: Loop, img: torch.Tensor, targets: Targets, views: tuple | None = None
) -> torch.Tensor:
    """The step's loss: supervised on each mixed target (weighted), distillation from a fixed
    teacher, and Mean Teacher's consistency on unlabeled ``views`` (weak, strong) — the strong
    views run in the same forward pass as the labeled images."""
    n = img.shape[0]
    x = img if views is None else torch.cat([img, views[1]])
    with torch.autocast(loop.device.type, dtype=torch.float16, enabled=loop.amp):
        outputs = loop.forward(x)
        labeled = _labeled(outputs, n) if views is not None else outputs
        loss = img.new_zeros(())
        for mask, weight in targets:
            part, main = segmentation_loss(labeled, mask, loop.criterion, loop.aux_weight)
            loss = loss + weight * part
        if loop.teacher is not None:
            with torch.no_grad():
                target = loop.teacher(img)
            loss = loss + loop.distill_weight * distillation_loss(main.float(), target.float())
        if views is not None:
            student = semi.unlabeled_part(outputs, n)
            teacher = semi.resize_like(semi.teacher_logits(loop.eval_model, views[0]), student)
            w = semi.ramp_weight(loop.progress(loop.it), loop.consistency_weight)
            loss = loss + w * semi.consistency_loss(student, teacher, loop.confidence)
    return loss


def _batch(loop: Loop, img: torch.Tensor, mask: torch.Tensor):
    """The step's inputs on the device: images (mixed), targets, unlabeled views."""
    img = img.to(loop.device, non_blocking=True)
    mask = mask.to(loop.device, non_blocking=True)
    img, targets = mix_batch(img, mask, loop.mix, loop.mix_prob, loop.ignore_index)
    views = None
    if loop.unlabeled is not None:
        weak, strong = next(loop.unlabeled)
        views = tuple(
            v.to(loop.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            for v in (weak, strong)
        )
    return img.contiguous(memory_format=torch.channels_last), targets, views


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, BatchNorm statistics fixed) or release the model's encoder."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise EdgesegError(f"{getattr(model, 'arch', 'this model')} has no separate encoder")
    for p in encoder.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        freeze_batchnorm(encoder)


def train_one_epoch(
    loop: Loop, loader: DataLoader, epoch: int, on_batch: Callable[[float], None] | None = None
) -> float:
    """One pass over ``loader`` (stopping early when the budget runs out); the mean loss.

    ``on_batch(mean loss so far)`` is called after every step (progress display).
    """
    loop.model.train()
    if loop.bn_frozen:
        freeze_batchnorm(loop.model)
    if loop.freeze_encoder_epochs:
        set_encoder_frozen(loop.model, epoch < loop.freeze_encoder_epochs)
    loss_sum, n = 0.0, 0
    for img, mask in loader:
        if loop.on_step is not None:
            loop.on_step(loop.it)
        progress = loop.progress(loop.it)
        for g in loop.optimizer.param_groups:
            g["lr"] = loop.lr * loop.schedule(progress)
        if not loop.bn_frozen and loop.freeze_bn_at is not None and progress >= loop.freeze_bn_at:
            freeze_batchnorm(loop.model)
            loop.bn_frozen = True
        loss = _step_loss(loop, *_batch(loop, img, mask))
        if not torch.isfinite(loss):
            raise EdgesegError(
                f"training diverged (loss {loss.item()}) at epoch {epoch + 1}; lower lr (now "
                f"{loop.lr})"
            )
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        if loop.ema is not None:
            loop.ema.update_parameters(loop.model)
        loss_sum += loss.item()
        n += 1
        loop.it += 1
        if on_batch is not None:
            on_batch(loss_sum / n)
        if loop.done():
            break
    return loss_sum / max(1, n)


@torch.no_grad()
def validate(
    model: nn.Module, loader: DataLoader, num_classes: int, ignore_index: int, device: torch.device
) -> SegMetrics:
    """mIoU at label resolution: logits are bilinearly resized to each mask before argmax."""
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    for img, mask in loader:
        logits = model(img.to(device, non_blocking=True))
        if logits.shape[-2:] != mask.shape[-2:]:
            logits = F.interpolate(
                logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
        cm.update(logits.argmax(1), mask)
    cm.all_reduce()
    return cm.compute()


# ---------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """Where a run stands between epochs (restored by ``resume``)."""

    history: list[dict] = field(default_factory=list)
    best_miou: float = -1.0
    epoch: int = 0
    elapsed_s: float = 0.0
    next_val: float = 0.2
    last: SegMetrics | None = None
    best: SegMetrics | None = None


def restore(loop: Loop, ckpt: dict | None, iters_per_epoch: int) -> RunState:
    """Optimizer, weight average and history from a ``last.pt`` (a fresh state without one)."""
    if ckpt is None:
        return RunState()
    loop.optimizer.load_state_dict(ckpt["optimizer"])
    if loop.ema is not None:
        loop.ema.module.load_state_dict(ckpt["state_dict"])
        loop.ema.n_averaged.fill_(ckpt.get("ema_steps", 0))
    state = RunState(ckpt.get("history", []), ckpt.get("best_miou", -1.0), ckpt.get("epoch", 0))
    state.elapsed_s = ckpt.get("elapsed_s", 0.0)
    loop.it = state.epoch * iters_per_epoch
    return state


def model_spec(cfg: TrainConfig, data: Data, model: nn.Module) -> ModelSpec:
    """The ModelSpec the run's checkpoints (and every file exported from them) carry."""
    info, n = data.info, data.num_classes
    h, w = data.input_hw
    return ModelSpec(
        arch=cfg.model,
        num_classes=n,
        classes=list(info.classes),
        palette=[list(map(int, c)) for c in info.palette[:n]],
        ignore_index=info.ignore_index,
        input=InputSpec(height=h, width=w, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        output=OutputSpec("logits", getattr(model, "output_stride", 1)),
        source={"dataset": cfg.data, "val_miou": None},
    )


def validation_due(cfg: TrainConfig, state: RunState, progress: float, done: bool) -> bool:
    """Every ``val_every`` epochs, or five times a run (validation costs as much as a third of
    a CPU epoch); always at the end."""
    if cfg.val_every > 0:
        return done or state.epoch % cfg.val_every == 0
    due = progress >= state.next_val
    while state.next_val <= progress:
        state.next_val += 0.2
    return done or due


def validate_run(loop: Loop, data: Data, done: bool, record: dict) -> tuple[SegMetrics, nn.Module]:
    """Validate the deployed weights; at the end, also the raw ones, and keep the better.

    At the end of a schedule decayed to zero the raw weights have settled, while the average
    still carries weights from higher learning rates (docs/training.md has the comparison).
    """
    args = (data.val_loader, data.num_classes, data.info.ignore_index, loop.device)
    metrics, chosen = validate(loop.eval_model, *args), loop.eval_model
    if done and loop.ema is not None:
        raw = validate(loop.model, *args)
        record["val_miou_raw"] = raw.miou
        if raw.miou > metrics.miou:
            record["val_miou_average"] = metrics.miou
            metrics, chosen = raw, loop.model
    record["val_miou"] = metrics.miou
    return metrics, chosen


def save_run(
    out: Path,
    cfg: TrainConfig,
    loop: Loop,
    spec: ModelSpec,
    state: RunState,
    chosen: nn.Module,
    t0: float,
) -> None:
    """``best.pt`` when the last validation improved (weights and spec only, for deployment) and
    ``last.pt`` always (with optimizer state and history, to resume)."""
    record = state.history[-1]
    extra = {
        "epoch": state.epoch,
        "elapsed_s": time.perf_counter() - t0,
        "history": state.history,
        "config": config_record(cfg),
    }
    if record["val_miou"] is not None and record["val_miou"] > state.best_miou:
        state.best_miou, state.best = record["val_miou"], state.last
        spec.source["val_miou"] = round(state.best_miou, 4)
        save_checkpoint(
            out / "best.pt", chosen, spec, cfg.model_kwargs, best_miou=state.best_miou, **extra
        )
    spec.source["val_miou"] = round(state.best_miou, 4)
    if loop.ema is not None:  # the raw weights continue training; the average is deployed
        extra.update(raw_state_dict=loop.model.state_dict(), ema_steps=int(loop.ema.n_averaged))
    save_checkpoint(
        out / "last.pt",
        loop.eval_model,
        spec,
        cfg.model_kwargs,
        best_miou=state.best_miou,
        optimizer=loop.optimizer.state_dict(),
        **extra,
    )


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def _progress_bar(console: Console) -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    return Progress(*columns, console=console, transient=False)


def _budget(cfg: TrainConfig, iters_per_epoch: int, t0: float) -> Callable[[int], float]:
    """Progress in [0, 1]: wall-clock time for a ``minutes`` budget, iterations for ``epochs``."""
    if cfg.minutes:
        budget_s = cfg.minutes * 60
        return lambda it: min(1.0, (time.perf_counter() - t0) / budget_s)
    total = max(1, (cfg.epochs or 0) * iters_per_epoch)
    return lambda it: min(1.0, it / total)


def _epochs(cfg, loop, data, spec, state, out, dist_info, console, t0) -> None:
    """Train, validate and checkpoint epoch by epoch until the budget is spent."""
    with _progress_bar(console) as bar:
        task = bar.add_task("training", total=1.0, completed=loop.progress(loop.it), status="")
        # A budget spent before the first step (start-up took it) still leaves a checkpoint:
        # one step, then the usual validation and save.
        while not loop.done() or not state.history:
            if data.sampler is not None:
                data.sampler.set_epoch(state.epoch)
            epoch = state.epoch

            def show(loss: float, epoch: int = epoch) -> None:
                lr = loop.optimizer.param_groups[0]["lr"]
                status = f"epoch {epoch + 1} loss {loss:.3f} lr {lr:.2e}"
                bar.update(task, completed=loop.progress(loop.it), status=status)

            loss = train_one_epoch(loop, data.loader, epoch, show)
            state.epoch += 1
            done = loop.done()
            record = {
                "epoch": state.epoch,
                "train_loss": loss,
                "val_miou": None,
                "lr": loop.optimizer.param_groups[0]["lr"],
                "elapsed_s": round(time.perf_counter() - t0, 1),
            }
            chosen = loop.eval_model
            if validation_due(cfg, state, loop.progress(loop.it), done):
                state.last, chosen = validate_run(loop, data, done, record)
            bar.console.print(_epoch_line(record, time.perf_counter() - t0))
            state.history.append(record)
            if dist_info.main:
                save_run(out, cfg, loop, spec, state, chosen, t0)


def _epoch_line(record: dict, seconds: float) -> str:
    line = f"epoch {record['epoch']}: loss {record['train_loss']:.4f}"
    if "val_miou_average" in record:
        line += f"  (average {record['val_miou_average']:.4f}; raw weights kept)"
    if record["val_miou"] is not None:
        line += f"  val mIoU {record['val_miou']:.4f}"
    return f"{line}  ({seconds:.0f} s)"


def _finish(
    cfg: TrainConfig, data: Data, loop: Loop, state: RunState, out: Path, t0: float
) -> dict[str, Any]:
    """metrics.json and curves.png of the run (rank 0); returns the metrics."""
    best = state.best or state.last
    m = best.to_dict(list(data.info.classes)) if best else {}
    result = {
        "val_miou": state.best_miou,
        "per_class_iou": m.get("per_class_iou", {}),
        "pixel_acc": m.get("pixel_acc"),
        "mean_dice": m.get("mean_dice"),
        "final_val_miou": state.last.miou if state.last else None,
        "epochs": state.epoch,
        "iterations": loop.it,
        "train_time_s": round(time.perf_counter() - t0, 1),
        "model": cfg.model,
        "data": cfg.data,
        "input_size": list(data.input_hw),
        "history": state.history,
    }
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    plot_history(state.history, out / "curves.png")
    return result


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the metrics written to ``out/metrics.json``
    (an empty dict on ranks other than 0)."""
    cfg.check()
    dist_info = setup_distributed(cfg.device)
    device = resolve_device(cfg.device, dist_info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    console = make_console(stderr=True, quiet=cfg.quiet or not dist_info.main)
    seed_everything(cfg.seed + dist_info.rank)
    data = build_data(
        cfg.data,
        input_size=cfg.input_size,
        crop=cfg.crop,
        scale=cfg.scale,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        seed=cfg.seed,
        dist_info=dist_info,
        pin_memory=device.type == "cuda",
        unlabeled=cfg.unlabeled,
        photometric=cfg.photometric,
    )
    resume, init = _start_checkpoints(cfg, data.num_classes)
    cfg.model_kwargs = _model_kwargs(cfg, init or resume)
    model, init_note = build_model(cfg.model, data.num_classes, device, init, cfg.model_kwargs)
    if cfg.pretrained and init is None:
        init_note = load_pretrained(model, cfg.pretrained)
    ckpt_elapsed = resume.get("elapsed_s", 0.0) if resume else 0.0
    t0 = time.perf_counter() - ckpt_elapsed
    loop = build_loop(cfg, model, data, device, dist_info, _budget(cfg, len(data.loader), t0))
    state = restore(loop, resume, len(data.loader))
    spec = model_spec(cfg, data, model)
    out = Path(cfg.out)
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
    console.print(_banner(cfg, data, device, dist_info))
    if init_note:
        console.print(f"weights: {init_note}")
    _epochs(cfg, loop, data, spec, state, out, dist_info, console, t0)
    result = _finish(cfg, data, loop, state, out, t0) if dist_info.main else {}
    if result and init_note:
        result["init"] = init_note
        write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    if dist_info.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _banner(cfg: TrainConfig, data: Data, device: torch.device, dist_info: DistInfo) -> str:
    (h, w), (ch, cw) = data.input_hw, data.crop_hw
    procs = f", {dist_info.world} processes" if dist_info.world > 1 else ""
    return (
        f"[bold]edgeseg train[/] {cfg.model} on {cfg.data}: {len(data.train_set)} train / "
        f"{len(data.val_set)} val images, {data.num_classes} classes, input {h}x{w}, "
        f"crop {ch}x{cw}, batch {cfg.batch_size}, device {device}{procs}"
    )


def plot_history(history: list[dict], path: Path) -> None:
    """Train loss and val mIoU per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], "C0-", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="C0")
    ax2 = ax1.twinx()
    vals = [(h["epoch"], h["val_miou"]) for h in history if h.get("val_miou") is not None]
    if vals:
        ax2.plot(*zip(*vals), "C1o-", label="val mIoU")
    ax2.set_ylabel("val mIoU", color="C1")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
