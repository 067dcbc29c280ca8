"""``PruneConfig``: the settings of ``edgeseg prune``, free of PyTorch so the CLI can build its
flags from them without loading it."""

from __future__ import annotations

from dataclasses import dataclass

from edgeseg._config import setting
from edgeseg.errors import EdgesegError


@dataclass
class PruneConfig:
    """Everything ``edgeseg prune`` takes (each field a flag: ``finetune_epochs`` ->
    ``--finetune-epochs``)."""

    checkpoint: str = setting(help="a .pt from 'edgeseg train'", positional=True)
    ratio: float = setting(help="fraction of channels to remove, e.g. 0.3")
    data: str = setting(help="dataset spec for fine-tuning and the val mIoU")
    out: str = setting(help="folder for pruned.pt (before fine-tuning) and best.pt")
    finetune_epochs: int | None = setting(None, "fine-tuning epochs", group="budget")
    finetune_minutes: float | None = setting(None, "fine-tuning wall-clock budget", group="budget")
    lr: float = setting(1e-3, "fine-tuning peak learning rate")
    batch_size: int = setting(4, "images per step")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    workers: int | None = setting(
        None, "data-loading processes", default_text="as edgeseg train chooses"
    )
    distill: bool = setting(
        True, "also distil from the unpruned model while fine-tuning (--no-distill: labels only)"
    )
    quiet: bool = setting(False, "print nothing")
    json: str | None = setting(None, "write the table as JSON", metavar="OUT")

    def check(self) -> None:
        """Raise :class:`EdgesegError` naming the setting that is wrong."""
        if (self.finetune_epochs is None) == (self.finetune_minutes is None):
            raise EdgesegError("give exactly one of finetune_epochs or finetune_minutes")
        if not 0.0 < self.ratio < 1.0:
            raise EdgesegError(
                f"ratio must be between 0 and 1 (the fraction of channels to remove), "
                f"got {self.ratio}"
            )
