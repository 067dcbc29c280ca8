"""The one base class every registered architecture derives from (segmentation_models_pytorch's
``SegmentationModel`` in a few lines): what the rest of edgeseg reads off a model."""

from __future__ import annotations

import torch
import torch.nn as nn

from edgeseg.errors import EdgesegError


class SegmentationModel(nn.Module):
    """(N, 3, H, W) images -> (N, ``num_classes``, H / output_stride, W / output_stride) logits.

    Class attributes an architecture sets: ``output_stride`` of the logits it returns (1: at
    input size), ``logits_stride`` of its logits before the trailing bilinear resize that the
    runtime may lift into the post-processing kernel, and ``input_multiple``, what the input's
    sides must be multiples of. ``arch`` is the registry name (``create_model`` sets it), which
    checkpoints and the ModelSpec record.
    """

    arch: str = ""
    output_stride: int = 1
    logits_stride: int = 1
    input_multiple: int = 32

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise EdgesegError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.register_forward_pre_hook(_check_input)

    def check_input(self, x: torch.Tensor) -> None:
        """One clear error for an input the network cannot take (instead of a shape mismatch
        deep inside a decoder's concatenation). Skipped while tracing or exporting: the shapes
        are symbolic there, and the check would bake a Python branch into the graph."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        m, name = self.input_multiple, self.arch or type(self).__name__
        if x.ndim != 4 or x.shape[1] != 3:
            raise EdgesegError(f"{name} takes (N, 3, H, W) images, got {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % m or w % m:
            raise EdgesegError(
                f"input height and width must be multiples of {m}, got {h}x{w}; resize or pad "
                f"the input (e.g. to {-(-h // m) * m}x{-(-w // m) * m})"
            )


def _check_input(module: SegmentationModel, args: tuple) -> None:
    module.check_input(args[0])
