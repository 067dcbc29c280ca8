"""edgeseg: real-time semantic segmentation for the edge."""

from edgeseg.errors import EdgesegError
from edgeseg.export.spec import ModelSpec
from edgeseg.models import create_model, list_models
from edgeseg.runtime import Segmenter, SegResult

__version__ = "0.1.0"
__all__ = ["EdgesegError", "ModelSpec", "SegResult", "Segmenter", "create_model", "list_models"]
