"""Quantization-aware fine-tuning with ``torch.ao.quantization`` fake-quant modules.

Why torch.ao: its ``FakeQuantize`` + observers ship with the pinned PyTorch (no new dependency),
run on CPU, have straight-through gradients, and can be set to exactly the integer grids ONNX
Runtime's quantizer writes (per-channel symmetric weights, per-tensor activations, on the grids
of each ``--target``: see ``_GRIDS``). NVIDIA Model Optimizer does the same for TensorRT but
pulls in a dozen packages and targets CUDA; its advantage (TensorRT-specific Q/DQ placement) does
not apply to these conv-only graphs.

The fake quantization mirrors what :func:`edgeseg.export.int8.quantize_int8` exports: every
convolution's input (per tensor) and its weight *after* batch-norm folding (per output channel),
because the exported ONNX has BN folded into the convolutions. BN statistics are frozen during
QAT (the usual recipe for a short fine-tune) so the folding is exact. Afterwards the original
Conv/BN modules — now trained — are put back, the checkpoint is an ordinary one, and the export
writes its Q/DQ ONNX with the same calibration path as PTQ.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console

from edgeseg.device import resolve_device
from edgeseg.errors import EdgesegError
from edgeseg.models.checkpoint import load_model, save_checkpoint
from edgeseg.train.config import TrainConfig
from edgeseg.train.data import build_data
from edgeseg.train.loop import Loop, train_one_epoch, validate
from edgeseg.train.losses import build_loss

# Integer grids of ONNX Runtime's quantizer per target (quant_utils.get_qmin_qmax_for_qType):
# trt: symmetric INT8 [-127, 127]; cpu: 7-bit ("reduce range") INT8 weights [-64, 64], UINT8
# activations [0, 255].
_GRIDS = {
    "trt": {"weight": (-127, 127), "act": (-127, 127)},
    "cpu": {"weight": (-64, 64), "act": (0, 255)},
}


def _fake_quant(kind: str, target: str) -> nn.Module:
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        PerChannelMinMaxObserver,
    )

    lo, hi = _GRIDS[target][kind]
    if kind == "weight":  # symmetric, per output channel
        return FakeQuantize(
            observer=PerChannelMinMaxObserver,
            quant_min=lo,
            quant_max=hi,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
        )
    if target == "trt":  # TensorRT activations: symmetric, zero point 0
        return FakeQuantize(
            observer=MovingAverageMinMaxObserver,
            quant_min=lo,
            quant_max=hi,
            dtype=torch.qint8,
            qscheme=torch.per_tensor_symmetric,
        )
    return FakeQuantize(
        observer=MovingAverageMinMaxObserver,
        quant_min=lo,
        quant_max=hi,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )


class QuantConv2d(nn.Module):
    """A ``Conv2d`` (and the frozen ``BatchNorm2d`` after it, folded in) with fake-quantized
    input and weight. Holds references to the original modules, whose parameters it trains."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, target: str = "trt") -> None:
        super().__init__()
        if target not in _GRIDS:
            raise EdgesegError(f"unknown --target '{target}'; choose trt or cpu")
        self.conv, self.bn = conv, bn
        self.input_fq = _fake_quant("act", target)
        self.weight_fq = _fake_quant("weight", target)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.conv.weight, self.conv.bias
        if self.bn is None:
            return w, b
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if b is not None:
            bias = bias + b * scale
        return w * scale.reshape(-1, 1, 1, 1), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._folded()
        c = self.conv
        return F.conv2d(
            self.input_fq(x), self.weight_fq(w), b, c.stride, c.padding, c.dilation, c.groups
        )


def prepare_qat(model: nn.Module, target: str = "trt") -> list[tuple]:
    """Swap every convolution of ``model`` for a :class:`QuantConv2d` (in place).

    A Conv2d followed by a BatchNorm2d in the same ``nn.Sequential`` is folded with it. Returns
    what :func:`restore` needs to put the original modules back.
    """
    swaps: list[tuple] = []  # (parent, conv name, conv, bn or None, bn name or None)
    for parent in list(model.modules()):  # listed before any swap
        names = list(parent._modules)
        for i, name in enumerate(names):
            conv = parent._modules[name]
            if not isinstance(conv, nn.Conv2d):
                continue
            nxt = names[i + 1] if isinstance(parent, nn.Sequential) and i + 1 < len(names) else None
            if nxt is None or not isinstance(parent._modules[nxt], nn.BatchNorm2d):
                nxt = None
            swaps.append((parent, name, conv, parent._modules[nxt] if nxt else None, nxt))
    for parent, name, conv, bn, bn_name in swaps:
        parent._modules[name] = QuantConv2d(conv, bn, target)
        if bn_name is not None:
            parent._modules[bn_name] = nn.Identity()
    return swaps


def restore(swaps) -> None:
    """Put the original (now fine-tuned) Conv2d/BatchNorm2d modules back."""
    for parent, name, conv, bn, bn_name in swaps:
        parent._modules[name] = conv
        if bn_name is not None:
            parent._modules[bn_name] = bn


def qat_finetune(
    checkpoint: str | os.PathLike,
    data: str,
    out_path: str | os.PathLike,
    epochs: int = 2,
    target: str = "trt",
    lr: float = 2e-4,
    batch_size: int = 4,
    device: str = "auto",
    observe_frac: float = 0.1,
    quiet: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` under fake quantization for ``epochs`` on ``data``; writes the
    trained float checkpoint to ``out_path`` and returns its val mIoU under fake quantization.

    Built from the trainer's parts (data, loop, one epoch, validation). Observers track ranges
    for the first ``observe_frac`` of the steps, then freeze, so the last steps train against
    fixed quantization grids (as the deployed model has); the learning rate follows a cosine
    from ``lr`` to 0; BatchNorm statistics stay frozen throughout (the folding uses them).
    """
    if epochs < 1:
        raise EdgesegError("epochs for QAT must be at least 1")
    console = Console(stderr=True, quiet=quiet)
    dev = resolve_device(device)
    model, spec, ckpt = load_model(checkpoint, "cpu")
    mean, std = tuple(spec.input.mean), tuple(spec.input.std)
    settings = TrainConfig(
        data=data, model=spec.arch, out="", epochs=epochs, batch_size=batch_size,
        input_size=spec.input_hw,
    )  # fmt: skip
    d = build_data(settings, norm=(mean, std))
    if list(d.info.classes) != list(spec.classes):
        raise EdgesegError(
            f"{checkpoint} predicts {spec.classes[:3]}... but {data} has "
            f"{list(d.info.classes)[:3]}...; fine-tune on the dataset the model was trained on"
        )
    swaps = prepare_qat(model, target)
    model.to(dev)
    total = epochs * len(d.loader)
    observe_until = max(1, int(observe_frac * total))

    def on_step(it: int) -> None:
        if it == observe_until:
            model.apply(torch.ao.quantization.disable_observer)

    params = [p for p in model.parameters() if p.requires_grad]
    loop = Loop(
        model=model,
        optimizer=torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
        criterion=build_loss("ce+dice", spec.ignore_index).to(dev),
        device=dev,
        lr=lr,
        schedule=lambda p: 0.5 * (1 + math.cos(math.pi * p)),
        progress=lambda it: min(1.0, it / total),
        freeze_bn_at=0.0,
        on_step=on_step,
    )
    t0 = time.perf_counter()
    console.print(
        f"[bold]QAT[/] {spec.arch} ({target}): {epochs} epochs x {len(d.loader)} steps "
        f"on {data}, lr {lr}"
    )
    for epoch in range(epochs):
        loss = train_one_epoch(loop, d.loader, epoch)
        console.print(
            f"QAT epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)"
        )
    fq_miou = validate(model, d.val_loader, spec.num_classes, spec.ignore_index, dev).miou
    restore(swaps)
    model.to("cpu").eval()
    qat = {"from": str(checkpoint), "data": data, "epochs": epochs, "target": target}
    out_spec = replace(spec, source={**spec.source, "qat": qat})
    save_checkpoint(out_path, model, out_spec, ckpt.get("model_kwargs", {}))
    return {
        "checkpoint": str(out_path),
        "fake_quant_val_miou": round(float(fq_miou), 4),
        "epochs": epochs,
        "steps": loop.it,
        "seconds": round(time.perf_counter() - t0, 1),
    }
