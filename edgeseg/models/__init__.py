"""Segmentation architectures behind one registry."""

# Importing the architecture modules registers them.
from edgeseg.models import bisenetv2, deeplabv3p, lraspp, mbv3_unet  # noqa: E402,F401
from edgeseg.models._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
