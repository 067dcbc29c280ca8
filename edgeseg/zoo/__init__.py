"""Models that ship with edgeseg, by name: ``Segmenter("camvid-small")``, ``edgeseg stream
--camera 0`` (the default), ``edgeseg export camvid-small ...``, ``--teacher camvid-small``.

Each model is a folder of this package (installed by ``pip install``): ``model.onnx`` (with its
ModelSpec), ``model.pt`` (the checkpoint, for fine-tuning and as a teacher) and ``card.json``
(what it is, how well it does, how it was made, and the licence of the data it learned from).
Weights are stored in half precision (``card.json`` says so, and what they score in it): the
files are half the size and the models compute in FP32 as before.

A path always wins over a name: a file called ``camvid-small`` in the working folder is that
file. An unknown name is one error listing the known ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg._config import setting
from edgeseg.errors import EdgesegError, did_you_mean

ZOO_DIR = Path(__file__).resolve().parent
DEFAULT = "camvid-small"  # what stream, predict and bench run when no model is given
FILES = {"onnx": "model.onnx", "checkpoint": "model.pt"}


@dataclass
class Card:
    """One shipped model's description (``card.json``)."""

    name: str
    arch: str
    classes: list[str]
    input_size: list[int]  # [height, width]
    val_miou: float
    per_class_iou: dict[str, float]
    data: str  # what it was trained on
    licence: str  # of the training data, hence of the weights' use
    command: str  # how it was trained
    machine: str
    train_time: str
    notes: list[str] = field(default_factory=list)
    folder: Path = Path()

    def file(self, kind: str) -> Path:
        """The model's ``onnx`` or ``checkpoint`` file."""
        return self.folder / FILES[kind]

    def size_mb(self) -> float:
        return round(sum(self.file(k).stat().st_size for k in FILES) / 2**20, 2)


@dataclass
class ModelsConfig:
    """Everything ``edgeseg models`` takes."""

    name: str | None = setting(
        None, "one model's whole card (per-class IoU, how it was made)", positional=True
    )
    json: str | None = setting(None, "write the cards as JSON", metavar="OUT")


def names() -> list[str]:
    """The shipped models, sorted."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "card.json").is_file())


def card(name: str) -> Card:
    """The card of ``name``; one error naming the known models when there is none."""
    folder = ZOO_DIR / name
    if not (folder / "card.json").is_file():
        known = names()
        raise EdgesegError(
            f"no model file or shipped model called '{name}'{did_you_mean(name, known)}; "
            f"shipped models: {', '.join(known) or 'none'} (edgeseg models lists them)"
        )
    data: dict[str, Any] = json.loads((folder / "card.json").read_text())
    return Card(**data, folder=folder)


def resolve(model: str | os.PathLike | None, kind: str = "onnx") -> Path:
    """The file ``model`` names: itself when it exists (a path always wins), else the ``kind``
    file of the shipped model of that name, else the default model when ``model`` is None."""
    if model is None:
        return card(DEFAULT).file(kind)
    path = Path(model)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path  # a path: loaders say clearly when it is missing or wrong
    return card(str(model)).file(kind)


def is_name(model: str | os.PathLike | None) -> bool:
    """Whether ``model`` refers to a shipped model rather than a file."""
    return model is None or resolve(model) != Path(model)


__all__ = ["DEFAULT", "Card", "ModelsConfig", "card", "is_name", "names", "resolve"]
