"""Checkpoint -> ONNX with its ModelSpec, verified against PyTorch on the spot."""

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
from edgeseg.export.names import onnx_name
from edgeseg.models.checkpoint import load_model
from edgeseg.spec import METADATA_KEY, ModelSpec

OPSET = 17


def _export_graph(
    model: torch.nn.Module, x: torch.Tensor, path: Path, output_name: str = "logits"
) -> None:
    # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for these
    # convolutional graphs. Batch is dynamic so eval and multi-stream can batch frames.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            opset_version=OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=[output_name],
            dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}},
        )


# Ops kept in FP32 by --fp16: reductions and transcendental functions lose too much in half
# precision (a 16x16 global average of FP16 activations, softmax exponentials).
FP16_KEEP_FP32 = [
    "GlobalAveragePool",
    "ReduceMean",
    "ReduceSum",
    "Softmax",
    "LogSoftmax",
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "ArgMax",
]


def to_fp16(proto):
    """FP16 weights and activations (onnxconverter-common), FP32 graph inputs and outputs."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every tiny weight it rounds to zero
        proto = float16.convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FP16_KEEP_FP32
        )
    return resize_in_fp16(proto)


def resize_in_fp16(proto):
    """Resize on the FP16 data itself, without the FP32 round trip the converter wraps it in.

    onnxconverter-common keeps Resize in FP32 (its block list) only because converting it would
    also turn the ``scales`` input into FP16, which ONNX forbids; the data input may be FP16.
    Interpolating FP16 loses nothing that matters (a weighted mean of four values), and a Resize
    between two casts is a layer the DLA cannot run (edgeseg.export.dla): each one split the
    DLA graph in three."""
    graph = proto.graph
    made_by = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        src = made_by.get(node.input[0]) if node.op_type == "Resize" else None
        if src is not None and src.op_type == "Cast" and src.attribute[0].i == 1:  # to FP32
            node.input[0] = src.input[0]
    for node in graph.node:  # FP32 -> FP16 after it: now FP16 -> FP16, an identity
        to_fp16 = node.op_type == "Cast" and node.attribute[0].i == 10  # TensorProto.FLOAT16
        src = made_by.get(node.input[0]) if to_fp16 else None
        if src is not None and src.op_type == "Resize":
            node.op_type = "Identity"
            del node.attribute[:]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Cast" and set(n.output).isdisjoint(used)]:
        graph.node.remove(node)
    del graph.value_info[:]  # the casts' types are stale; shape inference redoes them
    return proto


def append_argmax(proto) -> None:
    """End the graph in ArgMax over classes + Cast to uint8: a (N, h, w) ``labels`` output.

    Moves the argmax onto the accelerator (TensorRT fuses it) and shrinks the device-to-host
    copy C-fold (19 float channels become one byte). Added to the finished logits graph (after
    any FP16 conversion, which mistypes its own casts when a graph's output is not a float:
    --argmax --fp16 wrote an invalid model), so every precision gets the same tail."""
    from onnx import TensorProto, helper

    graph = proto.graph
    logits = graph.output[0]
    dims = [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim]
    graph.node.extend(
        [
            helper.make_node("ArgMax", [logits.name], ["labels_i64"], axis=1, keepdims=0),
            helper.make_node("Cast", ["labels_i64"], ["labels"], to=TensorProto.UINT8),
        ]
    )
    graph.output.pop()
    shape = [dims[0], *dims[2:]] if len(dims) == 4 else None
    graph.output.append(helper.make_tensor_value_info("labels", TensorProto.UINT8, shape))


def _finalise(path: Path, spec: ModelSpec, simplify: bool, fp16: bool = False) -> dict[str, Any]:
    """Simplify, convert, end in labels (per the spec's output kind), store the spec."""
    import onnx

    proto = onnx.load(str(path))
    nodes_before = len(proto.graph.node)
    if fp16:  # first: the converter cannot type the casts of some graphs onnxslim has folded
        proto = to_fp16(proto)
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    if spec.output.kind == "labels":
        append_argmax(proto)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    proto.producer_name = "edgeseg"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return {"nodes_before": nodes_before, "nodes": len(proto.graph.node)}


def verify_onnx(
    path: Path,
    model: torch.nn.Module,
    spec: ModelSpec,
    samples: int = 2,
    rtol: float = 1e-3,
    min_agreement: float = 0.0,
) -> dict[str, float]:
    """Compare ONNX Runtime (CPU) with PyTorch on random inputs.

    Tolerance is relative to the logits' range: ``rtol * max(1, max|torch logits|)``.
    Raises EdgesegError when the export is off, so a broken file is never left behind.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if spec.output.kind == "labels":
        # FP16 (min_agreement given) flips near-tie pixels; FP32 may flip only float noise
        return _verify_labels(sess, model, spec, samples, min_agreement or 0.999)
    g = torch.Generator().manual_seed(0)
    max_diff, agree, scale = 0.0, [], 1.0
    for _ in range(samples):
        x = torch.randn(1, 3, *spec.input_hw, generator=g)
        with torch.no_grad():
            ref = model(x).float().numpy()
        got = sess.run(None, {"input": x.numpy()})[0].astype(np.float32)
        if got.shape != ref.shape:
            raise EdgesegError(
                f"ONNX output shape {got.shape} differs from PyTorch {ref.shape}; the export is "
                "broken"
            )
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        agree.append(float((got.argmax(1) == ref.argmax(1)).mean()))
    tol = rtol * scale
    if min(agree) < min_agreement:
        raise EdgesegError(
            f"ONNX Runtime's labels agree with PyTorch on only {min(agree):.2%} of pixels "
            f"(need {min_agreement:.0%}); the file was not written"
        )
    if not max_diff <= tol:
        raise EdgesegError(
            f"ONNX Runtime disagrees with PyTorch: max |difference| {max_diff:.3g} exceeds "
            f"the tolerance {tol:.3g}; the file was not written (report this with the checkpoint)"
        )
    return {"max_abs_diff": max_diff, "tolerance": tol, "label_agreement": min(agree)}


def _verify_labels(
    sess, model: torch.nn.Module, spec: ModelSpec, samples: int, min_agreement: float = 0.999
) -> dict[str, float]:
    """Labels cannot be compared with a tolerance: require (almost) every pixel to agree.

    Pixels may flip only where two classes' logits are within float noise of each other.
    """
    g = torch.Generator().manual_seed(0)
    agree = []
    for _ in range(samples):
        x = torch.randn(1, 3, *spec.input_hw, generator=g)
        with torch.no_grad():
            ref = model(x).float().argmax(1).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        if got.shape != ref.shape or got.dtype != np.uint8:
            raise EdgesegError(
                f"ONNX labels {got.dtype} {got.shape} differ from the expected uint8 {ref.shape}; "
                "the export is broken"
            )
        agree.append(float((got == ref).mean()))
    if min(agree) < min_agreement:
        raise EdgesegError(
            f"ONNX Runtime's labels agree with PyTorch on only {min(agree):.2%} of pixels "
            f"(need {min_agreement:.1%}); the file was not written"
        )
    return {"max_abs_diff": 0.0, "tolerance": 0.0, "label_agreement": min(agree)}


def export_onnx(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    input_size: tuple[int, int] | None = None,
    simplify: bool = False,
    argmax: bool = False,
    fp16: bool = False,
) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` from a training checkpoint; returns a report dict.

    ``argmax=True`` ends the graph with ArgMax + Cast: a (N, h, w) uint8 ``labels`` output
    (ModelSpec ``output.kind = "labels"``) instead of (N, C, h, w) float logits, written as
    ``model.argmax.onnx`` (:mod:`edgeseg.export.names`).
    ``fp16=True`` writes ``model.fp16.onnx`` instead: FP16 weights and activations, FP32 inputs,
    outputs and numerically sensitive ops (``FP16_KEEP_FP32``); the precision TensorRT 11's
    strongly typed networks take from the file.
    """
    model, spec, _ = load_model(checkpoint, "cpu")
    if fp16:
        spec = replace(spec, precision="fp16")
    if argmax:
        if spec.num_classes > 256:
            raise EdgesegError(
                "argmax needs at most 256 classes for uint8 labels, the model has "
                f"{spec.num_classes}"
            )
        spec = replace(spec, output=replace(spec.output, kind="labels"))
    if input_size is not None:
        h, w = input_size
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            raise EdgesegError(f"input_size must be positive multiples of 32, got {h}x{w}")
        spec = replace(spec, input=replace(spec.input, height=h, width=w))
    out = Path(out_dir) / onnx_name("fp16" if fp16 else "fp32", argmax=argmax)
    with atomic_path(out) as tmp:
        _export_graph(model, torch.zeros(1, 3, *spec.input_hw), tmp, "logits")
        graph = _finalise(tmp, spec, simplify, fp16)
        # FP16 carries ~3 significant digits: compare at 1% of the logit range, and by labels
        check = (
            verify_onnx(tmp, model, spec, rtol=1e-2, min_agreement=0.99)
            if fp16
            else verify_onnx(tmp, model, spec)
        )
    return {
        "path": str(out),
        "size_mb": round(out.stat().st_size / 2**20, 3),
        "opset": OPSET,
        "input_size": list(spec.input_hw),
        "simplified": simplify,
        "precision": spec.precision,
        "output": spec.output.kind,
        **graph,
        **check,
    }
