"""Where a run starts and what it leaves: the starting weights (``--resume``, ``--init-from``),
the run's state between epochs, ``best.pt``/``last.pt``, and the curves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from edgeseg._io import atomic_path
from edgeseg.data import IMAGENET_MEAN, IMAGENET_STD
from edgeseg.errors import EdgesegError
from edgeseg.models import create_model
from edgeseg.models.checkpoint import build_model as model_from_checkpoint
from edgeseg.models.checkpoint import read_checkpoint, save_checkpoint
from edgeseg.spec import InputSpec, ModelSpec, OutputSpec
from edgeseg.train.config import TrainConfig
from edgeseg.train.data import Data
from edgeseg.train.loop import Loop

if TYPE_CHECKING:
    from edgeseg.train.trainer import Run
from edgeseg.train.metrics import SegMetrics


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
        output=OutputSpec("logits", model.output_stride),
        source={"dataset": cfg.data, "val_miou": None},
    )


def save_run(run: Run, chosen: nn.Module) -> None:
    """``best.pt`` when the last validation improved (weights and spec only, for deployment) and
    ``last.pt`` always (with optimizer state and history, to resume)."""
    cfg, loop, spec, state, out = run.cfg, run.loop, run.spec, run.state, run.out
    record = state.history[-1]
    extra = {
        "epoch": state.epoch,
        "elapsed_s": run.elapsed_s,
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
