"""Temporal smoothing of segmentation: a moving average of class scores per stream.

Labels of a video flicker: a pixel on the edge between road and pavement changes class from one
frame to the next although nothing moved. ``edgeseg stream --smooth A`` keeps, per source, the
exponential moving average ``avg = A * avg + (1 - A) * scores`` of the model's class scores at
model resolution and takes the labels from the average. It restarts from the current frame when
the stream is new, reconnected or changes frame size, and at a scene cut: when more than
``cut`` of the pixels' argmax differs between the frame and the average (the average would
otherwise blend two scenes). The update runs inside the post-processing kernels, on the CPU
(:func:`edgeseg.runtime.kernels.smooth`) and on the GPU (``ema_*`` in ``kernels.cu``), with the
same arithmetic (the NumPy reference in :mod:`edgeseg.runtime.kernels.reference`). ``A = 0``
is no smoothing at all: no state, the labels bit for bit those of the frame alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime import kernels

DEFAULT_CUT = 0.3


def check_smoothing(keep: float, cut: float = DEFAULT_CUT) -> None:
    """Raise :class:`EdgesegError` naming the setting that is out of range."""
    if not 0.0 <= keep < 1.0:
        raise EdgesegError(
            f"smooth must be in [0, 1) (the weight of the past frames; 0 is off), got {keep}"
        )
    if not 0.0 <= cut <= 1.0:
        raise EdgesegError(f"smooth_cut must be a fraction in [0, 1], got {cut}")


@dataclass(eq=False)
class SmoothState:
    """One stream's moving average (host array for the CPU kernels, device buffers for the GPU
    pipeline, which allocates and frees them)."""

    keep: float
    cut: float = DEFAULT_CUT
    key: Any = None  # what the average belongs to: (frame shape, feed epoch)
    scores: np.ndarray | None = None
    restart: bool = True  # the next update starts over (GPU: the host's word to the kernel)
    restarts: int = 0
    device: dict = field(default_factory=dict)

    def follow(self, key: Any) -> None:
        """The next frame is of ``key``; a new key (another frame size, a reconnected feed)
        restarts the average."""
        if key != self.key:
            self.key, self.scores, self.restart = key, None, True

    def update(self, scores: np.ndarray) -> np.ndarray:
        """Take in one frame's (1, C, h, w) logits; the average, to post-process instead."""
        self.scores, restarted = kernels.smooth(scores, self.scores, self.keep, self.cut)
        self.restarts += int(restarted)
        self.restart = False
        return self.scores
