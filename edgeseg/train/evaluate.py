"""``edgeseg eval``: accuracy of any model file (.pt or .onnx) through the runtime's own path."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime import kernels
from edgeseg.runtime.backends import load_backend
from edgeseg.train.config import EvalConfig
from edgeseg.train.metrics import ConfusionMatrix, HD95Meter


def parse_tta(text: str | None) -> tuple[bool, tuple[float, ...]]:
    """``flip``, scales (``0.75,1,1.25``) or both (``flip,0.75,1,1.25``) -> (flip, scales)."""
    if not text:
        return False, (1.0,)
    flip, scales = False, []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item == "flip":
            flip = True
            continue
        try:
            scales.append(float(item))
        except ValueError:
            raise EdgesegError(
                f"--tta takes flip and scales, e.g. flip,0.75,1.0,1.25; got '{item}'"
            ) from None
    if any(not 0.25 <= s <= 4 for s in scales):
        raise EdgesegError(f"--tta scales must be between 0.25 and 4, got {scales}")
    return flip, tuple(scales) or (1.0,)


def tta_probs(infer, frame_bgr: np.ndarray, spec, flip: bool, scales, out_hw) -> np.ndarray:
    """Class probabilities at ``out_hw`` averaged over the scales (input sides rounded to
    multiples of 32) and, with ``flip``, their mirror images (predictions mirrored back)."""
    import torch
    import torch.nn.functional as F

    total = None
    for s in scales:
        hw = tuple(max(32, round(v * s / 32) * 32) for v in spec.input_hw)
        x = kernels.preprocess(frame_bgr, hw, spec.input.mean, spec.input.std)
        for mirrored in (False, True) if flip else (False,):
            xi = np.ascontiguousarray(x[..., ::-1]) if mirrored else x
            logits = torch.from_numpy(np.asarray(infer(xi), np.float32))
            if mirrored:
                logits = logits.flip(-1)
            up = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
            probs = up.softmax(1)[0]
            total = probs if total is None else total + probs
    return total.numpy()


def evaluate(
    model: str | os.PathLike,
    data: str,
    split: str = "val",
    backend: str = "auto",
    device: str = "auto",
    *,
    progress=None,
    **settings,
) -> dict[str, Any]:
    """:func:`run_eval` of ``EvalConfig(model, data, split, backend, device, **settings)``."""
    cfg = EvalConfig(str(model), data, split, backend, device, **settings)
    return run_eval(cfg, progress)


def run_eval(cfg: EvalConfig, progress=None) -> dict[str, Any]:
    """Confusion-matrix metrics at label resolution; logits are resized bilinearly before argmax.

    The same preprocessing as deployment (``kernels.preprocess``) is used, so the figure is what
    a user of the exported model gets. ``tta`` (see :func:`parse_tta`) averages the class
    probabilities over mirrored and rescaled inputs instead; scales other than 1 need a model
    that takes any input size (a ``.pt``). ``progress(done, total)`` after each image.
    """
    from edgeseg.data import build_dataset

    model_path, data, tta = cfg.model, cfg.data, cfg.tta
    options = {"exact_qdq": True} if cfg.exact_qdq else {}
    runner = load_backend(model_path, cfg.backend, cfg.device, rebuild=cfg.rebuild, **options)
    spec = runner.spec
    flip, scales = parse_tta(tta)
    if scales != (1.0,) and runner.name != "torch":
        raise EdgesegError(
            "--tta scales need a model that takes any input size: the .pt checkpoint "
            f"({runner.name} models take the one size they were exported at); --tta flip works "
            "with both"
        )
    dataset = build_dataset(data, cfg.split)
    if list(dataset.info.classes) != list(spec.classes):
        raise EdgesegError(
            f"{model_path} predicts {spec.num_classes} classes ({', '.join(spec.classes[:4])}...) "
            f"but {data} has {len(dataset.info.classes)} "
            f"({', '.join(dataset.info.classes[:4])}...); "
            "evaluate on the dataset the model was trained for"
        )
    n = len(dataset) if cfg.limit is None else min(cfg.limit, len(dataset))
    cm = ConfusionMatrix(spec.num_classes, dataset.info.ignore_index)
    hd = HD95Meter(spec.num_classes, dataset.info.ignore_index) if cfg.hd95 else None
    x = np.empty((1, 3, *spec.input_hw), np.float32)
    t_infer = 0.0
    for i in range(n):
        img_rgb, mask = dataset[i]
        frame = np.ascontiguousarray(img_rgb[..., ::-1])
        t0 = time.perf_counter()
        if tta:
            probs = tta_probs(runner.infer, frame, spec, flip, scales, mask.shape[:2])
            pred = probs.argmax(0).astype(np.uint8)
        else:
            kernels.preprocess(frame, spec.input_hw, spec.input.mean, spec.input.std, out=x)
            pred = kernels.postprocess(runner.infer(x), mask.shape[:2], mode="bilinear")
        t_infer += time.perf_counter() - t0
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
            "split": cfg.split,
            "images": n,
            "input_size": list(spec.input_hw),
            "infer_ms_mean": round(t_infer / max(1, n) * 1e3, 3),
            "exact_qdq": cfg.exact_qdq,
            "tta": tta or None,
        }
    )
    if hd is not None:
        metrics["per_class_hd95"] = dict(zip(spec.classes, hd.compute()))
    return metrics
