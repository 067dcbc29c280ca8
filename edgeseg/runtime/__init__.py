"""Runtime: backends, pre/post-processing kernels and the Segmenter."""

from edgeseg.runtime.backends import load_backend
from edgeseg.runtime.result import SegResult
from edgeseg.runtime.segmenter import Segmenter

__all__ = ["SegResult", "Segmenter", "load_backend"]
