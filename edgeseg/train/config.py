"""``TrainConfig``: the settings of a training run, free of PyTorch so the CLI can build its
flags from them without loading it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from edgeseg._config import setting
from edgeseg.errors import EdgesegError
from edgeseg.train import LOSSES, MIXES, TEACHER_LOGITS


def default_workers(cores: int | None = None) -> int:
    """Data-loading processes: half the cores (1 to 4), but none on a machine with two cores or
    fewer. There a loader process preempts one of the two compute threads every batch and the
    whole parallel region waits for it, while preloaded samples cost little in the main process
    (measured in docs/training.md)."""
    cores = cores or os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


@dataclass
class TrainConfig:
    """Everything ``edgeseg train`` takes (each field a flag: ``batch_size`` -> ``--batch-size``);
    stored in checkpoints for the record."""

    data: str = setting(help="camvid:PATH, cityscapes:PATH, folder:PATH or synthetic[:N]")
    model: str = setting(help="architecture name ('edgeseg info all' lists them)")
    out: str = setting(help="folder for best.pt, last.pt, metrics.json, curves.png")
    epochs: int | None = setting(None, "training epochs", group="budget")
    minutes: float | None = setting(
        None, "wall-clock budget; the learning-rate schedule fits it", group="budget"
    )
    batch_size: int = setting(4, "images per step (over all processes)")
    crop: tuple[int, int] | None = setting(
        None, "training crop HxW", default_text="3/4 of the input size, multiples of 32"
    )
    input_size: tuple[int, int] | None = setting(
        None, "model input HxW", default_text="the dataset's image size rounded to 32"
    )
    lr: float = setting(4e-3, "peak learning rate (AdamW)")
    weight_decay: float = setting(1e-4, "AdamW weight decay (not on norms and biases)")
    warmup: float = setting(0.03, "fraction of the run spent warming the learning rate up")
    scale: tuple[float, float] = setting((0.5, 1.75), "random scale range", metavar=("MIN", "MAX"))
    photometric: bool = setting(
        False,
        "also vary gamma, colour cast, blur and sensor noise: for cameras and streets the "
        "data never saw",
    )
    loss: str = setting("ce+dice", "loss function", choices=LOSSES)
    class_weights: str = setting(
        "auto",
        "dataset class weights: auto = their square root, full = as given, none",
        choices=("auto", "full", "none"),
    )
    boundary_weight: float = setting(
        2.0, "extra weight of pixels within 2 px of a label boundary (the +boundary losses)"
    )
    mix: str = setting(
        "none", "mix each batch with itself: cutmix, classmix or mixup", choices=MIXES
    )
    mix_prob: float = setting(0.5, "probability a batch is mixed")
    aux_weight: float = setting(0.4, "weight of auxiliary heads' losses (bisenetv2)")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    workers: int = setting(
        help="data-loading processes",
        factory=default_workers,
        default_text="half the cores, 1 to 4; 0 on 2 cores or fewer",
    )
    seed: int = setting(0, "random seed")
    val_every: int = setting(0, "validate every N epochs (0: five times a run); always at the end")
    ema: float = setting(
        0.999, "validate and save an exponential moving average of the weights (0: off)"
    )
    freeze_bn: float = setting(
        0.15, "train the last FRACTION of the run with BatchNorm statistics frozen (0: never)"
    )
    resume: str | None = setting(None, "continue from a last.pt", metavar="CKPT")
    init_from: str | None = setting(
        None, "start from this checkpoint's weights (fine-tuning, pruned models)", metavar="CKPT"
    )
    teacher: str | None = setting(
        None, "also distil from this trained model's predictions", metavar="CKPT"
    )
    unlabeled: str | None = setting(
        None,
        "Mean Teacher: also learn from these unlabeled frames (video file or image folder), "
        "consistent with the weight average's predictions",
        metavar="PATH",
    )
    consistency_weight: float = setting(1.0, "weight of Mean Teacher's consistency loss")
    confidence: float = setting(
        0.9, "Mean Teacher learns only pixels the teacher is at least this sure of"
    )
    encoder: str = setting(
        "mbv3", "the encoder of mbv3_* heads: mbv3, or timm:NAME (needs timm)", metavar="NAME"
    )
    pretrained: str | None = setting(
        None,
        "ImageNet weights for a timm encoder: a file of the timm model's state_dict, or hub",
        metavar="PATH|hub",
    )
    freeze_encoder: int = setting(0, "keep the encoder fixed for the first N epochs", metavar="N")
    distill_weight: float = setting(1.0, "weight of the distillation loss")
    teacher_logits: str = setting(
        "auto",
        "how --teacher's predictions are made: stored (once per training image, then cropped "
        "with each sample: cheap), live (a teacher pass every batch), auto (stored on a CPU "
        "unless --mix, live on a GPU)",
        choices=TEACHER_LOGITS,
    )
    distill_temperature: float = setting(
        2.0, "softmax temperature of the distillation (higher: more of the teacher's runners-up)"
    )
    model_kwargs: dict[str, Any] = setting(
        help="keyword arguments for the architecture", factory=dict, metavar="JSON"
    )
    quiet: bool = setting(False, "print nothing")

    def check(self) -> None:
        """Raise :class:`EdgesegError` naming the setting that is wrong."""
        if (self.epochs is None) == (self.minutes is None):
            raise EdgesegError("give exactly one of epochs or minutes (the training budget)")
        if (self.epochs is not None and self.epochs < 1) or (
            self.minutes is not None and self.minutes <= 0
        ):
            raise EdgesegError("epochs must be at least 1 and minutes more than 0")
        if self.batch_size < 1 or self.lr <= 0:
            raise EdgesegError("batch_size must be at least 1 and lr more than 0")
        if not 0 <= self.mix_prob <= 1 or not 0 <= self.confidence < 1:
            raise EdgesegError("mix_prob must be in [0, 1] and confidence in [0, 1)")
        if self.unlabeled and self.ema <= 0:
            raise EdgesegError(
                "Mean Teacher's teacher is the weight average: keep ema above 0 with unlabeled"
            )
        if self.pretrained and not self.encoder.startswith("timm:"):
            raise EdgesegError("pretrained weights are for a timm encoder: add --encoder timm:NAME")
        if self.freeze_encoder < 0 or self.boundary_weight < 0:
            raise EdgesegError("freeze_encoder and boundary_weight must not be negative")
        if self.distill_temperature <= 0:
            raise EdgesegError(
                f"distill_temperature must be above 0, got {self.distill_temperature}"
            )


@dataclass
class EvalConfig:
    """Everything ``edgeseg eval`` takes (``model`` the positional file)."""

    model: str = setting(help="a .pt, .onnx or .engine", positional=True)
    data: str = setting(help="dataset spec, e.g. camvid:PATH", metavar="SPEC")
    split: str = setting("val", "dataset split", choices=("train", "val", "test"))
    backend: str = setting("auto", "auto, ort, trt or torch")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    hd95: bool = setting(False, "also per-class 95% Hausdorff distance")
    limit: int | None = setting(None, "evaluate only the first N images", metavar="N")
    tta: str | None = setting(
        None,
        "test-time augmentation: average over mirrored and rescaled inputs, e.g. flip or "
        "flip,0.75,1.0,1.25 (scales need a .pt)",
        metavar="flip[,SCALE...]",
    )
    exact_qdq: bool = setting(
        False,
        "INT8 ONNX: run Q/DQ nodes as written (what TensorRT computes) instead of ONNX "
        "Runtime's fused CPU integer kernels",
    )
    rebuild: bool = setting(
        True,
        "a .engine built by another TensorRT version or for another GPU is rebuilt from the "
        "ONNX it was built from, with the same options (--no-rebuild: refused)",
    )
    json: str | None = setting(None, "write the metrics as JSON", metavar="OUT")
