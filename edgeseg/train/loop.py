"""The training loop's parts: optimizer, loss, weight average, teacher, schedule (:class:`Loop`,
:func:`build_loop`), one epoch (:func:`train_one_epoch`) and validation (:func:`validate`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from edgeseg.data.datasets import DatasetInfo
from edgeseg.errors import EdgesegError
from edgeseg.models.checkpoint import build_model as model_from_checkpoint
from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.train import semi
from edgeseg.train.config import TrainConfig
from edgeseg.train.data import Data
from edgeseg.train.distributed import DistInfo
from edgeseg.train.losses import build_loss, distillation_loss, segmentation_loss
from edgeseg.train.metrics import ConfusionMatrix, SegMetrics
from edgeseg.train.mixing import Targets, mix_batch


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
    distill_temperature: float = 2.0
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
        distill_temperature=cfg.distill_temperature,
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


def _labeled(outputs, n: int):
    """The outputs of the first ``n`` images (the labeled ones) of a joint batch."""
    if isinstance(outputs, tuple):
        return outputs[0][:n], [a[:n] for a in outputs[1]]
    return outputs[:n]


def _step_loss(
    loop: Loop,
    img: torch.Tensor,
    targets: Targets,
    views: tuple | None = None,
    soft: torch.Tensor | None = None,
) -> torch.Tensor:
    """The step's loss: supervised on each mixed target (weighted), distillation from a fixed
    teacher (its stored logits ``soft``, or its pass over ``img``), and Mean Teacher's
    consistency on unlabeled ``views`` (weak, strong) — the strong views run in the same forward
    pass as the labeled images."""
    n = img.shape[0]
    x = img if views is None else torch.cat([img, views[1]])
    with torch.autocast(loop.device.type, dtype=torch.float16, enabled=loop.amp):
        outputs = loop.forward(x)
        labeled = _labeled(outputs, n) if views is not None else outputs
        loss = img.new_zeros(())
        for mask, weight in targets:
            part, main = segmentation_loss(labeled, mask, loop.criterion, loop.aux_weight)
            loss = loss + weight * part
        if soft is not None or loop.teacher is not None:
            if soft is None:
                with torch.no_grad():
                    soft = loop.teacher(img)
            kd = distillation_loss(main.float(), soft.float(), loop.distill_temperature)
            loss = loss + loop.distill_weight * kd
        if views is not None:
            student = semi.unlabeled_part(outputs, n)
            teacher = semi.resize_like(semi.teacher_logits(loop.eval_model, views[0]), student)
            w = semi.ramp_weight(loop.progress(loop.it), loop.consistency_weight)
            loss = loss + w * semi.consistency_loss(student, teacher, loop.confidence)
    return loss


def _batch(loop: Loop, img: torch.Tensor, mask: torch.Tensor, *soft: torch.Tensor):
    """The step's inputs on the device: images (mixed), targets, unlabeled views, and the
    stored teacher logits when the loader gives them."""
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
    stored = soft[0].to(loop.device, non_blocking=True) if soft else None
    return img.contiguous(memory_format=torch.channels_last), targets, views, stored


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
    for batch in loader:  # (image, mask), and stored teacher logits when distilling from them
        if loop.on_step is not None:
            loop.on_step(loop.it)
        progress = loop.progress(loop.it)
        for g in loop.optimizer.param_groups:
            g["lr"] = loop.lr * loop.schedule(progress)
        if not loop.bn_frozen and loop.freeze_bn_at is not None and progress >= loop.freeze_bn_at:
            freeze_batchnorm(loop.model)
            loop.bn_frozen = True
        loss = _step_loss(loop, *_batch(loop, *batch))
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
