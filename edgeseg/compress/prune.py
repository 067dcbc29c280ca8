"""``edgeseg prune``: structured channel pruning with torch-pruning, then fine-tuning.

torch-pruning's dependency graph removes whole channels consistently through every layer that
shares them (depthwise convolutions, residual adds, SE blocks, U-Net concatenations), so the
result is a smaller dense network — real FLOP and latency cuts, not masks. Channels go by the L2
magnitude of their weights, rounded to multiples of 8 (what SIMD units and tensor cores like);
the classifier keeps its classes. The pruned checkpoint records its structure, so ``eval``,
``export`` and ``--resume`` work on it like on any other.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgeseg._lazy import require
from edgeseg.compress.config import PruneConfig
from edgeseg.errors import EdgesegError
from edgeseg.export.onnx import export_onnx
from edgeseg.models.checkpoint import load_model, save_checkpoint
from edgeseg.models.complexity import count_gflops, count_params
from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgeseg.timing import summarize, time_calls
from edgeseg.train.config import TrainConfig
from edgeseg.train.evaluate import evaluate
from edgeseg.train.trainer import train


def ort_latency_ms(onnx_path: str | os.PathLike, runs: int = 30) -> float:
    """Median ONNX Runtime CPU latency of one batch-1 inference (after warm-up)."""
    backend = OnnxRuntimeBackend(onnx_path, "cpu")
    x = np.random.default_rng(0).standard_normal((1, 3, *backend.spec.input_hw), np.float32)
    return summarize(time_calls(lambda: backend.infer(x), 5, runs))["p50"]


def measure(checkpoint: str | os.PathLike, data: str | None, device: str = "cpu") -> dict[str, Any]:
    """Params, GFLOPs at the model's input size, ONNX Runtime CPU latency and val mIoU (the
    checkpoint run with PyTorch on ``device``)."""
    model, spec, _ = load_model(checkpoint, "cpu")
    with tempfile.TemporaryDirectory() as d:
        export_onnx(checkpoint, d)
        latency = ort_latency_ms(Path(d) / "model.onnx")
    res = {
        "params": count_params(model),
        "gflops": round(count_gflops(model, spec.input_hw), 4),
        "ort_cpu_ms": round(latency, 3),
    }
    if data:
        res["val_miou"] = round(evaluate(checkpoint, data, "val", "torch", device)["miou"], 4)
    return res


def _ignored_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Classifiers (their width is the class count), grouped convolutions with a channel
    multiplier, and whatever the architecture declares in ``pruning_ignored()``."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
        and (m.out_channels == num_classes or (m.groups > 1 and m.out_channels != m.in_channels))
    ]
    return layers + (model.pruning_ignored() if hasattr(model, "pruning_ignored") else [])


def prune_model(
    model: nn.Module, ratio: float, input_hw: tuple[int, int], num_classes: int
) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group (in place); return the model."""
    if not 0.0 < ratio < 1.0:
        raise EdgesegError(
            f"ratio must be between 0 and 1 (the fraction of channels to remove), got {ratio}"
        )
    # Imported here: the rest of edgeseg (and its test collection) works where torch-pruning is
    # not installed, e.g. a GPU machine's image.
    tp = require("torch_pruning")
    model.eval()
    example = torch.randn(1, 3, *input_hw)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=_ignored_layers(model, num_classes),
        round_to=8,
    )
    pruner.step()
    model.edgeseg_pruned = True
    return model


def prune_checkpoint(cfg: PruneConfig) -> dict[str, Any]:
    """Prune, fine-tune and measure; writes ``out/pruned.pt`` (before fine-tuning) and the
    fine-tuned ``out/best.pt``; returns the before/after table.

    ``distill``: the unpruned model is the fine-tuning teacher (pixel-wise KL on its logits on
    top of the usual loss), so the pruned network relearns the function it had, not only the
    labels of a few hundred images."""
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, spec, ckpt = load_model(cfg.checkpoint, "cpu")
    before = measure(cfg.checkpoint, cfg.data, cfg.device)
    prune_model(model, cfg.ratio, spec.input_hw, spec.num_classes)
    pruned = {"ratio": cfg.ratio, "from": str(cfg.checkpoint)}
    pruned_spec = replace(spec, source={**spec.source, "pruned": pruned})
    save_checkpoint(out / "pruned.pt", model, pruned_spec, ckpt.get("model_kwargs", {}))
    right_after = measure(out / "pruned.pt", cfg.data, cfg.device)
    train(
        TrainConfig(
            data=cfg.data,
            model=spec.arch,
            out=str(out),
            epochs=cfg.finetune_epochs,
            minutes=cfg.finetune_minutes,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            input_size=spec.input_hw,
            init_from=str(out / "pruned.pt"),
            teacher=str(cfg.checkpoint) if cfg.distill else None,
            device=cfg.device,
            warmup=0.0,
            quiet=cfg.quiet,
            **({"workers": cfg.workers} if cfg.workers is not None else {}),
        )
    )
    after = measure(out / "best.pt", cfg.data, cfg.device)
    return {
        "before": before,
        "pruned": right_after,
        "after": after,
        "ratio": cfg.ratio,
        "gflops_cut": round(1 - after["gflops"] / before["gflops"], 4),
        "latency_speedup": round(before["ort_cpu_ms"] / after["ort_cpu_ms"], 3),
        "miou_change": round(after.get("val_miou", 0) - before.get("val_miou", 0), 4),
        "distilled": cfg.distill,
        "checkpoint": str(out / "best.pt"),
    }
