"""Datasets (``build_dataset``) and paired image/mask transforms."""

__all__ = [
    "build_dataset",
    "SegDataset",
    "DatasetInfo",
    "TrainTransform",
    "EvalTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

_HOMES = {
    "build_dataset": "datasets",
    "SegDataset": "datasets",
    "DatasetInfo": "datasets",
    "TrainTransform": "transforms",
    "EvalTransform": "transforms",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
}


def __getattr__(name: str):
    # Resolved on first use: datasets and transforms import PyTorch, and the synthetic scenes in
    # this package feed ONNX-only streams (``--source synthetic``) that must not load it.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"edgeseg.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'edgeseg.data' has no attribute {name!r}")
