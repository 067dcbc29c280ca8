"""``edgeseg eval``: accuracy of any model file (.pt or .onnx) through the runtime's own path."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime import kernels
from edgeseg.runtime.backends import load_backend
from edgeseg.train.metrics import ConfusionMatrix, HD95Meter


def evaluate(
    model_path: str | os.PathLike,
    data: str,
    split: str = "val",
    backend: str = "auto",
    device: str = "auto",
    with_hd95: bool = False,
    limit: int | None = None,
    progress=None,
    exact_qdq: bool = False,
) -> dict[str, Any]:
    """Confusion-matrix metrics at label resolution; logits are resized bilinearly before argmax.

    The same preprocessing as deployment (``kernels.preprocess``) is used, so the figure is what
    a user of the exported model gets.
    """
    from edgeseg.data import build_dataset

    runner = load_backend(model_path, backend, device, **({"exact_qdq": True} if exact_qdq else {}))
    spec = runner.spec
    dataset = build_dataset(data, split)
    if list(dataset.info.classes) != list(spec.classes):
        raise EdgesegError(
            f"{model_path} predicts {spec.num_classes} classes ({', '.join(spec.classes[:4])}...) "
            f"but {data} has {len(dataset.info.classes)} "
            f"({', '.join(dataset.info.classes[:4])}...); "
            "evaluate on the dataset the model was trained for"
        )
    n = len(dataset) if limit is None else min(limit, len(dataset))
    cm = ConfusionMatrix(spec.num_classes, dataset.info.ignore_index)
    hd = HD95Meter(spec.num_classes, dataset.info.ignore_index) if with_hd95 else None
    x = np.empty((1, 3, *spec.input_hw), np.float32)
    t_infer = 0.0
    for i in range(n):
        img_rgb, mask = dataset[i]
        kernels.preprocess(
            np.ascontiguousarray(img_rgb[..., ::-1]),
            spec.input_hw,
            spec.input.mean,
            spec.input.std,
            out=x,
        )
        t0 = time.perf_counter()
        scores = runner.infer(x)
        t_infer += time.perf_counter() - t0
        pred = kernels.postprocess(scores, mask.shape[:2], mode="bilinear")
        cm.update(pred, mask)
        if hd is not None:
            hd.update(pred, mask)
        if progress is not None:
            progress(i + 1, n)
    metrics = cm.compute().to_dict(list(spec.classes))
    metrics.update(
        {
            "model": str(model_path),
            "backend": runner.name,
            "device": runner.device,
            "data": data,
            "split": split,
            "images": n,
            "input_size": list(spec.input_hw),
            "infer_ms_mean": round(t_infer / max(1, n) * 1e3, 3),
            "exact_qdq": exact_qdq,
        }
    )
    if hd is not None:
        metrics["per_class_hd95"] = dict(zip(spec.classes, hd.compute()))
    return metrics
