"""Datasets (``build_dataset``) and paired image/mask transforms."""

from edgeseg.data.datasets import DatasetInfo, SegDataset, build_dataset
from edgeseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

__all__ = [
    "build_dataset",
    "SegDataset",
    "DatasetInfo",
    "TrainTransform",
    "EvalTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
