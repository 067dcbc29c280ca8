"""``edgeseg export``: checkpoint -> ONNX with its ModelSpec, verified against PyTorch on the spot."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg._io import atomic_path
from edgeseg.errors import EdgesegError
from edgeseg.export.spec import METADATA_KEY, ModelSpec
from edgeseg.train.checkpoint import load_model

OPSET = 17


def _export_graph(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for these
    # convolutional graphs. Batch is dynamic so eval and multi-stream can batch frames.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def _finalise(path: Path, spec: ModelSpec, simplify: bool) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path))
    nodes_before = len(proto.graph.node)
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    proto.producer_name = "edgeseg"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return {"nodes_before": nodes_before, "nodes": len(proto.graph.node)}


def verify_onnx(path: Path, model: torch.nn.Module, spec: ModelSpec, samples: int = 2,
                rtol: float = 1e-3) -> dict[str, float]:
    """Compare ONNX Runtime (CPU) with PyTorch on random inputs.

    Tolerance is relative to the logits' range: ``rtol * max(1, max|torch logits|)``.
    Raises EdgesegError when the export is off, so a broken file is never left behind.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    max_diff, agree, scale = 0.0, [], 1.0
    for _ in range(samples):
        x = torch.randn(1, 3, *spec.input_hw, generator=g)
        with torch.no_grad():
            ref = model(x).float().numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        if got.shape != ref.shape:
            raise EdgesegError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape}; the export is broken")
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        agree.append(float((got.argmax(1) == ref.argmax(1)).mean()))
    tol = rtol * scale
    if not max_diff <= tol:
        raise EdgesegError(f"ONNX Runtime disagrees with PyTorch: max |difference| {max_diff:.3g} exceeds "
                           f"the tolerance {tol:.3g}; the file was not written (report this with the checkpoint)")
    return {"max_abs_diff": max_diff, "tolerance": tol, "label_agreement": min(agree)}


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                input_size: tuple[int, int] | None = None, simplify: bool = False) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` from a training checkpoint; returns a report dict."""
    model, spec, _ = load_model(checkpoint, "cpu")
    if input_size is not None:
        h, w = input_size
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            raise EdgesegError(f"--input-size must be positive multiples of 32, got {h}x{w}")
        spec = replace(spec, input=replace(spec.input, height=h, width=w))
    out = Path(out_dir) / "model.onnx"
    with atomic_path(out) as tmp:
        _export_graph(model, torch.zeros(1, 3, *spec.input_hw), tmp)
        graph = _finalise(tmp, spec, simplify)
        check = verify_onnx(tmp, model, spec)
    return {"path": str(out), "size_mb": round(out.stat().st_size / 2**20, 3), "opset": OPSET,
            "input_size": list(spec.input_hw), "simplified": simplify, **graph, **check}
