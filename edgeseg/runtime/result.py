"""What segmenting a frame returns: labels at frame size, the spec, timings, the overlay."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeseg.runtime import kernels
from edgeseg.spec import ModelSpec


@dataclass
class SegResult:
    """One frame's segmentation: ``labels`` (H, W) uint8 at frame size."""

    labels: np.ndarray
    spec: ModelSpec
    frame: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    vis: np.ndarray | None = None  # the overlay, when it was blended during post-processing
    vis_alpha: float | None = None
    # (H, W) uint8, round(255 x the winning class's probability), when it was asked for
    confidence: np.ndarray | None = None

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """The frame with each class's palette colour blended in (BGR uint8)."""
        if self.vis is not None and self.vis_alpha == alpha:
            return self.vis
        if self.frame is None:
            raise ValueError("this result holds no frame to draw on")
        vis = kernels.overlay(self.frame, self.labels, self.spec.palette, alpha)
        unsure = self.labels == self.spec.ignore_index  # --min-confidence: no class, no colour
        if unsure.any():
            np.copyto(vis, self.frame, where=unsure[..., None])
        return vis

    def colorize(self) -> np.ndarray:
        """The label map painted in the palette (BGR uint8)."""
        return kernels.reference.palette_lut_bgr(self.spec.palette)[self.labels]
