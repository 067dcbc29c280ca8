"""Training loop, flat and readable in the manner of torchvision's references.

One process trains on CPU or one GPU; under ``torchrun`` every process trains a shard with
DistributedDataParallel (gloo on CPU, NCCL on CUDA) and rank 0 alone writes files and prints.
The learning-rate schedule is a function of progress in [0, 1] — iterations for ``--epochs``,
wall-clock time for ``--minutes`` — so a time budget gets a complete warm-up/decay cycle.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset

from edgeseg._io import atomic_path, write_text_atomic
from edgeseg.errors import EdgesegError
from edgeseg.export.spec import InputSpec, ModelSpec, OutputSpec
from edgeseg.train.checkpoint import build_model, read_checkpoint, save_checkpoint
from edgeseg.train.losses import build_loss, distillation_loss, segmentation_loss
from edgeseg.train.metrics import ConfusionMatrix, SegMetrics


@dataclass
class TrainConfig:
    """Everything ``edgeseg train`` takes; stored in checkpoints for the record."""

    data: str
    model: str
    out: str
    epochs: int | None = None
    minutes: float | None = None
    batch_size: int = 4
    crop: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup: float = 0.03
    scale: tuple[float, float] = (0.5, 1.75)
    loss: str = "ce+dice"
    class_weights: str = "auto"
    aux_weight: float = 0.4
    device: str = "auto"
    workers: int = field(default_factory=lambda: default_workers())
    seed: int = 0
    val_every: int = 0  # 0: five validations spread over the run, and always the last epoch
    ema: float = 0.999
    freeze_bn: float = 0.15  # last fraction of the run trained with BatchNorm statistics frozen
    resume: str | None = None
    init_from: str | None = (
        None  # start from this checkpoint's weights (fine-tuning, pruned models)
    )
    teacher: str | None = (
        None  # distil from this checkpoint's predictions (pruned models recover faster)
    )
    distill_weight: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_kind: str) -> DistInfo:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    if device_kind == "cuda":
        check_gpu_per_process(
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
            torch.cuda.device_count(),
        )
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def check_gpu_per_process(local_rank: int, local_world: int, gpus: int) -> None:
    """Each CUDA process needs a GPU of its own (NCCL refuses two ranks on one device): more
    processes than GPUs is an error before any rank joins the group, not a crash inside it."""
    if local_world > gpus or local_rank >= gpus:
        raise EdgesegError(
            f"torchrun started {local_world} processes on this machine but it has {gpus} CUDA GPU(s); "
            f"use --nproc_per_node {gpus} or less, or train on the CPU with --device cpu"
        )


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EdgesegError(
                "--device cuda was asked for but PyTorch sees no CUDA GPU; "
                "use --device cpu or install a CUDA build of torch"
            )
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name != "cpu":
        raise EdgesegError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def default_workers(cores: int | None = None) -> int:
    """Data-loading processes: half the cores (1 to 4), but none on a machine with two cores or
    fewer. There the loader process preempts one of the two compute threads every batch and the
    whole parallel region waits for it; loading in the main process (images are preloaded, a
    sample costs ~1.4 ms) made a CamVid epoch of mbv3_unet_small 9% faster (22.9 vs 25.1 s)."""
    cores = cores or os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


def default_input_size(image_hw: tuple[int, int]) -> tuple[int, int]:
    """The dataset's native size rounded to the nearest multiple of 32 (at least 32)."""
    return tuple(max(32, int(round(s / 32)) * 32) for s in image_hw)  # type: ignore[return-value]


def default_crop(input_hw: tuple[int, int]) -> tuple[int, int]:
    """Three quarters of each side, down to a multiple of 32: smaller crops mean more, cheaper
    steps in a time budget (352x480 -> 256x352 on CamVid)."""
    return tuple(max(32, int(0.75 * s) // 32 * 32) for s in input_hw)


def _class_weights(mode: str, info, num_classes: int) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode not in ("auto", "full"):
        raise EdgesegError(f"--class-weights must be 'auto', 'full' or 'none', got '{mode}'")
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


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
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


def _load_teacher(path: str, num_classes: int, device: torch.device) -> nn.Module:
    """A frozen model in eval mode (BN statistics fixed) whose logits the student learns from."""
    ckpt = read_checkpoint(path)
    if ckpt["spec"]["num_classes"] != num_classes:
        raise EdgesegError(
            f"teacher {path} predicts {ckpt['spec']['num_classes']} classes, the data has {num_classes}"
        )
    teacher = (
        build_model(ckpt, num_classes, raw=True)
        .to(device)
        .to(memory_format=torch.channels_last)
        .eval()
    )
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _seed_worker(worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # workers share the cores with the training process
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


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


def _plot_history(history: list[dict], path: Path) -> None:
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


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the metrics written to ``out/metrics.json``."""
    from rich.console import Console

    from edgeseg.data import EvalTransform, TrainTransform, build_dataset
    from edgeseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from edgeseg.models import create_model

    if (cfg.epochs is None) == (cfg.minutes is None):
        raise EdgesegError("give exactly one of --epochs or --minutes")
    if (cfg.epochs is not None and cfg.epochs < 1) or (
        cfg.minutes is not None and cfg.minutes <= 0
    ):
        raise EdgesegError("--epochs must be >= 1 and --minutes > 0")
    device_kind = (
        "cuda"
        if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    dinfo = _setup_distributed(device_kind)
    device = resolve_device(cfg.device, dinfo.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    console = Console(stderr=True, quiet=cfg.quiet or not dinfo.main)
    torch.manual_seed(cfg.seed + dinfo.rank)
    np.random.seed(cfg.seed + dinfo.rank)
    random.seed(cfg.seed + dinfo.rank)

    ckpt = read_checkpoint(cfg.resume) if cfg.resume else None
    if ckpt is not None and ckpt["arch"] != cfg.model:
        raise EdgesegError(
            f"{cfg.resume} holds a '{ckpt['arch']}' model, not '{cfg.model}'; "
            f"pass --model {ckpt['arch']} or drop --resume"
        )
    if ckpt is not None and "optimizer" not in ckpt:
        raise EdgesegError(
            f"{cfg.resume} has no optimizer state (best.pt keeps only the weights); "
            "resume from last.pt of the same run"
        )

    train_set = build_dataset(cfg.data, "train")
    val_set = build_dataset(cfg.data, "val")
    info = train_set.info
    num_classes = len(info.classes)
    first_img, _ = val_set[0]
    input_hw = tuple(cfg.input_size) if cfg.input_size else default_input_size(first_img.shape[:2])
    if input_hw[0] % 32 or input_hw[1] % 32:
        raise EdgesegError(f"--input-size must be multiples of 32, got {input_hw[0]}x{input_hw[1]}")
    crop_hw = tuple(cfg.crop) if cfg.crop else default_crop(input_hw)
    train_set.transform = TrainTransform(
        crop_hw,
        scale=cfg.scale,
        ignore_index=info.ignore_index,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        base_hw=input_hw,
    )
    val_set.transform = EvalTransform(input_hw, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if len(train_set) <= 2000:  # decoding PNGs every epoch would dominate a CPU run
        train_set.preload()
        val_set.preload()

    sampler = (
        DistributedSampler(train_set, dinfo.world, dinfo.rank, seed=cfg.seed)
        if dinfo.world > 1
        else None
    )
    per_proc_batch = max(1, cfg.batch_size // dinfo.world)
    drop_last = len(train_set) // dinfo.world >= per_proc_batch
    loader = DataLoader(
        train_set,
        per_proc_batch,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=drop_last,
        worker_init_fn=_seed_worker,
        persistent_workers=cfg.workers > 0,
        pin_memory=device.type == "cuda",
        # Forked workers inherit OpenCV's thread pool half-alive and hang in it;
        # spawned ones start clean (one-off start-up cost, workers persist).
        multiprocessing_context="spawn" if cfg.workers > 0 else None,
    )
    # Masks stay at native resolution; batch 1 allows datasets whose images differ in size.
    # Each process scores a disjoint shard (no padding, unlike DistributedSampler); the confusion
    # matrices are summed, so every image counts exactly once.
    val_shard = (
        Subset(val_set, range(dinfo.rank, len(val_set), dinfo.world))
        if dinfo.world > 1
        else val_set
    )
    val_loader = DataLoader(val_shard, 1, shuffle=False, num_workers=0)

    init = ckpt if ckpt is not None else (read_checkpoint(cfg.init_from) if cfg.init_from else None)
    if init is not None and init is not ckpt:
        if init["arch"] != cfg.model:
            raise EdgesegError(f"{cfg.init_from} holds a '{init['arch']}' model, not '{cfg.model}'")
        if init["spec"]["num_classes"] != num_classes:
            raise EdgesegError(
                f"{cfg.init_from} predicts {init['spec']['num_classes']} classes, "
                f"{cfg.data} has {num_classes}"
            )
    if init is not None:
        model = build_model(init, num_classes, raw=True).to(device)
    else:
        model = create_model(cfg.model, num_classes, **cfg.model_kwargs).to(device)
    # NHWC: oneDNN's depthwise and 1x1 convolutions (and cuDNN's under AMP) run faster in it; a
    # batch-4 CamVid step of mbv3_unet_small on 2 CPU cores went from 0.31 to 0.25 s.
    model = model.to(memory_format=torch.channels_last)
    ddp_model: nn.Module = model
    if dinfo.world > 1:
        if device.type == "cuda":  # per-GPU batches are small: share BN statistics (NCCL only)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    weight = _class_weights(cfg.class_weights, info, num_classes)
    criterion = build_loss(
        cfg.loss, info.ignore_index, weight.to(device) if weight is not None else None
    ).to(device)
    teacher = _load_teacher(cfg.teacher, num_classes, device) if cfg.teacher else None
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    # An exponential moving average of the weights (BN statistics included) is what gets
    # validated and saved: on a short, noisy CPU schedule it is steadier than the last step.
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=_ema_update(cfg.ema), use_buffers=True
        )
        if cfg.ema > 0
        else None
    )
    eval_model = ema.module if ema is not None else model
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history: list[dict] = []
    best_miou, start_epoch, elapsed_before = -1.0, 0, 0.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["state_dict"])
            ema.n_averaged.fill_(ckpt.get("ema_steps", 0))
        history, best_miou = ckpt.get("history", []), ckpt.get("best_miou", -1.0)
        start_epoch, elapsed_before = ckpt.get("epoch", 0), ckpt.get("elapsed_s", 0.0)

    out = Path(cfg.out)
    if dinfo.main:
        out.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(
        arch=cfg.model,
        num_classes=num_classes,
        classes=list(info.classes),
        palette=[list(map(int, c)) for c in info.palette[:num_classes]],
        ignore_index=info.ignore_index,
        input=InputSpec(
            height=input_hw[0], width=input_hw[1], mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)
        ),
        output=OutputSpec("logits", getattr(model, "output_stride", 1)),
        source={"dataset": cfg.data, "val_miou": None},
    )
    iters_per_epoch = len(loader)
    total_iters = (cfg.epochs or 0) * iters_per_epoch
    budget_s = cfg.minutes * 60 if cfg.minutes else None
    console.print(
        f"[bold]edgeseg train[/] {cfg.model} on {cfg.data}: {len(train_set)} train / {len(val_set)} val images, "
        f"{num_classes} classes, input {input_hw[0]}x{input_hw[1]}, crop {crop_hw[0]}x{crop_hw[1]}, "
        f"batch {cfg.batch_size}, device {device}"
        + (f", {dinfo.world} processes" if dinfo.world > 1 else "")
    )

    t0 = time.perf_counter() - elapsed_before
    it = start_epoch * iters_per_epoch
    epoch = start_epoch
    last_metrics: SegMetrics | None = None
    best_metrics: SegMetrics | None = None

    next_val = 0.2
    bn_frozen = False

    def progress() -> float:
        if budget_s is not None:
            return min(1.0, (time.perf_counter() - t0) / budget_s)
        return min(1.0, it / max(1, total_iters))

    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )
    with bar:
        task = bar.add_task("training", total=1.0, completed=progress(), status="")
        done = progress() >= 1.0
        while not done:
            model.train()
            if bn_frozen:
                freeze_batchnorm(model)
            if sampler is not None:
                sampler.set_epoch(epoch)
            loss_sum, n = 0.0, 0
            for img, mask in loader:
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * lr_at(progress(), cfg.warmup)
                if not bn_frozen and cfg.freeze_bn > 0 and progress() >= 1 - cfg.freeze_bn:
                    freeze_batchnorm(model)
                    bn_frozen = True
                img = img.to(device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last
                )
                mask = mask.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    loss, main = segmentation_loss(ddp_model(img), mask, criterion, cfg.aux_weight)
                    if teacher is not None:
                        with torch.no_grad():
                            target = teacher(img)
                        loss = loss + cfg.distill_weight * distillation_loss(
                            main.float(), target.float()
                        )
                if not torch.isfinite(loss):
                    raise EdgesegError(
                        f"training diverged (loss {loss.item()}) at epoch {epoch + 1}; lower --lr (now {cfg.lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += loss.item()
                n += 1
                it += 1
                bar.update(
                    task,
                    completed=progress(),
                    status=f"epoch {epoch + 1} loss {loss_sum / n:.3f} lr {optimizer.param_groups[0]['lr']:.2e}",
                )
                if progress() >= 1.0:
                    break
            epoch += 1
            done = progress() >= 1.0
            record = {
                "epoch": epoch,
                "train_loss": loss_sum / max(1, n),
                "lr": optimizer.param_groups[0]["lr"],
                "elapsed_s": round(time.perf_counter() - t0, 1),
                "val_miou": None,
            }
            line = f"epoch {epoch}: loss {record['train_loss']:.4f}"
            if cfg.val_every > 0:
                due = epoch % cfg.val_every == 0
            else:  # validation costs as much as a third of a CPU epoch: five of them a run
                due = progress() >= next_val
                while next_val <= progress():
                    next_val += 0.2
            chosen = eval_model
            if done or due:
                last_metrics = validate(
                    eval_model, val_loader, num_classes, info.ignore_index, device
                )
                if done and ema is not None:
                    # At the end of a schedule decayed to zero the raw weights have settled, while the
                    # average still carries weights from higher learning rates: keep the better one
                    # (the 0.61 CamVid run: 0.6115 raw against 0.6076 averaged).
                    raw = validate(model, val_loader, num_classes, info.ignore_index, device)
                    record["val_miou_raw"] = raw.miou
                    if raw.miou > last_metrics.miou:
                        line += f"  (average {last_metrics.miou:.4f}; raw weights kept)"
                        last_metrics, chosen = raw, model
                record["val_miou"] = last_metrics.miou
                line += f"  val mIoU {last_metrics.miou:.4f}"
            bar.console.print(f"{line}  ({time.perf_counter() - t0:.0f} s)")
            history.append(record)
            if dinfo.main:
                state = {
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "elapsed_s": time.perf_counter() - t0,
                    "history": history,
                    "config": _config_record(cfg),
                }
                if record["val_miou"] is not None and record["val_miou"] > best_miou:
                    best_miou = record["val_miou"]
                    best_metrics = last_metrics
                    spec.source["val_miou"] = round(best_miou, 4)
                    # best.pt is for deployment and evaluation: no optimizer state (a third of the size).
                    best_state = {k: v for k, v in state.items() if k != "optimizer"}
                    save_checkpoint(
                        out / "best.pt",
                        chosen,
                        spec,
                        cfg.model_kwargs,
                        best_miou=best_miou,
                        **best_state,
                    )
                spec.source["val_miou"] = round(best_miou, 4)
                if (
                    ema is not None
                ):  # the raw weights continue training; the average is what is deployed
                    state.update(raw_state_dict=model.state_dict(), ema_steps=int(ema.n_averaged))
                save_checkpoint(
                    out / "last.pt",
                    eval_model,
                    spec,
                    cfg.model_kwargs,
                    best_miou=best_miou,
                    **state,
                )

    result: dict[str, Any] = {}
    if dinfo.main:
        best_metrics = best_metrics or last_metrics
        m = best_metrics.to_dict(list(info.classes)) if best_metrics else {}
        result = {
            "val_miou": best_miou,
            "per_class_iou": m.get("per_class_iou", {}),
            "pixel_acc": m.get("pixel_acc"),
            "mean_dice": m.get("mean_dice"),
            "final_val_miou": last_metrics.miou if last_metrics else None,
            "epochs": epoch,
            "iterations": it,
            "train_time_s": round(time.perf_counter() - t0, 1),
            "model": cfg.model,
            "data": cfg.data,
            "input_size": list(input_hw),
            "history": history,
        }
        write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
        _plot_history(history, out / "curves.png")
    if dinfo.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _config_record(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
