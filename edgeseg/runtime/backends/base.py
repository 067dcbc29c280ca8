"""The Backend contract: ``load(path, device) -> Backend``; ``infer(batch) -> outputs``."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edgeseg.spec import ModelSpec


class Backend(Protocol):
    """One loaded model behind one inference API (Polygraphy-style runner)."""

    name: str
    device: str
    spec: ModelSpec

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on an (N, 3, H, W) float32 batch; returns logits or labels per the spec."""
        ...
