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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgeseg._io import write_text_atomic
from edgeseg._table import console as make_console
from edgeseg.device import resolve_device
from edgeseg.models.encoders import load_pretrained
from edgeseg.spec import ModelSpec
from edgeseg.train import distill
from edgeseg.train.checkpointing import (
    RunState,
    _model_kwargs,
    _start_checkpoints,
    build_model,
    model_spec,
    plot_history,
    restore,
    save_run,
)
from edgeseg.train.config import TrainConfig
from edgeseg.train.data import Data, build_data, train_loader
from edgeseg.train.distributed import DistInfo, seed_everything, setup_distributed
from edgeseg.train.loop import Loop, build_loop, train_one_epoch, validate
from edgeseg.train.metrics import SegMetrics


@dataclass
class Run:
    """One training run's state, what every part of :func:`train` works on: its settings, this
    process's place in the job, the data, the loop, where it stands, and where it writes."""

    cfg: TrainConfig
    dist: DistInfo
    data: Data
    loop: Loop
    state: RunState
    spec: ModelSpec
    out: Path
    console: Console
    t0: float  # perf_counter() at the run's start, earlier by the time a resumed run had spent

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0


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


def _epochs(run: Run) -> None:
    """Train, validate and checkpoint epoch by epoch until the budget is spent."""
    cfg, loop, data, state = run.cfg, run.loop, run.data, run.state
    with _progress_bar(run.console) as bar:
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
                "elapsed_s": round(run.elapsed_s, 1),
            }
            chosen = loop.eval_model
            if validation_due(cfg, state, loop.progress(loop.it), done):
                state.last, chosen = validate_run(loop, data, done, record)
            bar.console.print(_epoch_line(record, run.elapsed_s))
            state.history.append(record)
            if run.dist.main:
                save_run(run, chosen)


def _epoch_line(record: dict, seconds: float) -> str:
    line = f"epoch {record['epoch']}: loss {record['train_loss']:.4f}"
    if "val_miou_average" in record:
        line += f"  (average {record['val_miou_average']:.4f}; raw weights kept)"
    if record["val_miou"] is not None:
        line += f"  val mIoU {record['val_miou']:.4f}"
    return f"{line}  ({seconds:.0f} s)"


def _finish(run: Run) -> dict[str, Any]:
    """metrics.json and curves.png of the run (rank 0); returns the metrics."""
    state, data = run.state, run.data
    best = state.best or state.last
    m = best.to_dict(list(data.info.classes)) if best else {}
    result = {
        "val_miou": state.best_miou,
        "per_class_iou": m.get("per_class_iou", {}),
        "pixel_acc": m.get("pixel_acc"),
        "mean_dice": m.get("mean_dice"),
        "final_val_miou": state.last.miou if state.last else None,
        "epochs": state.epoch,
        "iterations": run.loop.it,
        "train_time_s": round(run.elapsed_s, 1),
        "model": run.cfg.model,
        "data": run.cfg.data,
        "input_size": list(data.input_hw),
        "history": state.history,
    }
    write_text_atomic(run.out / "metrics.json", json.dumps(result, indent=2))
    plot_history(state.history, run.out / "curves.png")
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
    data = build_data(cfg, dist_info, pin_memory=device.type == "cuda")
    run, init_note = _start(cfg, dist_info, data, device, console)
    console.print(_banner(cfg, data, device, dist_info))
    if init_note:
        console.print(f"weights: {init_note}")
    _epochs(run)
    result = _finish(run) if dist_info.main else {}
    if result and init_note:
        result["init"] = init_note
        write_text_atomic(run.out / "metrics.json", json.dumps(result, indent=2))
    if dist_info.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _start(
    cfg: TrainConfig, dist_info: DistInfo, data: Data, device: torch.device, console: Console
) -> tuple[Run, str | None]:
    """The run, from scratch, from --init-from weights, or resumed; and a note on the weights."""
    resume, init = _start_checkpoints(cfg, data.num_classes)
    cfg.model_kwargs = _model_kwargs(cfg, init or resume)
    model, init_note = build_model(cfg.model, data.num_classes, device, init, cfg.model_kwargs)
    if cfg.pretrained and init is None:
        init_note = load_pretrained(model, cfg.pretrained)
    t0 = time.perf_counter() - (resume.get("elapsed_s", 0.0) if resume else 0.0)
    loop = build_loop(cfg, model, data, device, dist_info, _budget(cfg, len(data.loader), t0))
    state = restore(loop, resume, len(data.loader))
    teacher_note = _store_teacher(cfg, data, loop, dist_info, device)
    if teacher_note:
        console.print(teacher_note)
    out = Path(cfg.out)
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
    spec = model_spec(cfg, data, model)
    return Run(cfg, dist_info, data, loop, state, spec, out, console, t0), init_note


def _store_teacher(
    cfg: TrainConfig, data: Data, loop: Loop, dist_info: DistInfo, device: torch.device
) -> str | None:
    """With a teacher whose logits are stored (``--teacher-logits``): its logits for every
    training image, once, and a loader that crops them with each sample; a line saying so."""
    if loop.teacher is None or not distill.stored_mode(cfg.teacher_logits, device, cfg.mix):
        return None
    t0 = time.perf_counter()
    logits = distill.store_teacher_logits(loop.teacher, data.train_set, data.input_hw, device)
    dataset = distill.WithTeacherLogits(data.train_set, logits)
    pin = device.type == "cuda"
    data.loader = train_loader(
        dataset, data.sampler, cfg.batch_size, cfg.workers, dist_info.world, pin
    )
    loop.teacher = None  # its answers are stored: no pass per batch
    return distill.stored_teacher_note(logits, time.perf_counter() - t0)


def _banner(cfg: TrainConfig, data: Data, device: torch.device, dist_info: DistInfo) -> str:
    (h, w), (ch, cw) = data.input_hw, data.crop_hw
    procs = f", {dist_info.world} processes" if dist_info.world > 1 else ""
    return (
        f"[bold]edgeseg train[/] {cfg.model} on {cfg.data}: {len(data.train_set)} train / "
        f"{len(data.val_set)} val images, {data.num_classes} classes, input {h}x{w}, "
        f"crop {ch}x{cw}, batch {cfg.batch_size}, device {device}{procs}"
    )
