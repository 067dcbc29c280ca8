"""Pre/post-processing front: one API, selectable implementation.

Only the NumPy reference exists so far; the C++ CPU extension and CUDA kernels plug in here
with the same functions and semantics (see ``reference`` for the contract).
"""

from __future__ import annotations

from edgeseg.runtime.kernels import reference
from edgeseg.runtime.kernels.reference import overlay, postprocess, preprocess

backend = "reference"

__all__ = ["backend", "overlay", "postprocess", "preprocess", "reference"]
