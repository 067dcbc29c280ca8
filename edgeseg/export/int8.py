"""INT8 post-training quantization to a Q/DQ ONNX, with ONNX Runtime's quantization tools.

Explicit quantization only (TensorRT 10.1 deprecated implicit INT8 calibrators, TensorRT 11
removed them): the calibrated scales live in QuantizeLinear/DequantizeLinear nodes of the ONNX,
which TensorRT 10 and 11 and ONNX Runtime all read. Two flavours (``target``):

- ``trt``: symmetric INT8 activations and weights (zero points 0), per-channel weights, Q/DQ on
  convolution inputs only — the pattern TensorRT fuses into INT8 convolutions;
- ``cpu``: asymmetric UINT8 activations, symmetric per-channel INT8 weights — the U8S8 layout
  ONNX Runtime's CPU kernels (QLinearConv) run fastest — in the 7-bit "reduce range" that keeps
  them exact on x86 CPUs without VNNI, convolutions only.

A sensitivity pass ranks convolutions by the signal-to-quantization-noise ratio of their output
(quantized alone, on the calibration frames) and keeps the worst ``keep_fp32`` of them in float;
the report names them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg._io import atomic_path
from edgeseg.errors import EdgesegError, did_you_mean
from edgeseg.export.config import METHODS, TARGETS
from edgeseg.spec import METADATA_KEY, ModelSpec


def calibration_inputs(source: str, spec: ModelSpec, count: int = 128) -> list[np.ndarray]:
    """``count`` preprocessed (1, 3, H, W) inputs from a dataset spec (its train split), an image
    folder or glob, or a video; spread evenly over the source."""
    from edgeseg.runtime import kernels

    if count < 1:
        raise EdgesegError("--calib-count must be at least 1")
    frames: list[np.ndarray] = []
    path = Path(source)
    if ":" in source and not path.exists() or source.startswith("synthetic"):
        from edgeseg.data import build_dataset

        ds = build_dataset(source, "train")
        for i in np.linspace(0, len(ds) - 1, min(count, len(ds))).astype(int):
            rgb, _ = ds.load(int(i))
            frames.append(np.ascontiguousarray(rgb[..., ::-1]))
    else:
        from edgeseg.streaming.sources import open_source

        with open_source(source) as src:
            all_frames = [f.image for f in src]
        if not all_frames:
            raise EdgesegError(f"no frames in calibration source {source}")
        frames = [
            all_frames[i]
            for i in np.linspace(0, len(all_frames) - 1, min(count, len(all_frames))).astype(int)
        ]
    return [kernels.preprocess(f, spec.input_hw, spec.input.mean, spec.input.std) for f in frames]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed arrays."""

    def __init__(self, inputs: list[np.ndarray], name: str = "input") -> None:
        self.inputs, self.name, self.i = inputs, name, 0

    def get_next(self):
        if self.i >= len(self.inputs):
            return None
        self.i += 1
        return {self.name: self.inputs[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0

    def __iter__(self):  # qdq_loss_debug iterates instead of calling get_next
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def _settings(target: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantFormat, QuantType

    if target == "trt":
        return {
            "quant_format": QuantFormat.QDQ,
            "activation_type": QuantType.QInt8,
            "weight_type": QuantType.QInt8,
            "per_channel": True,
            "op_types_to_quantize": ["Conv"],
            "extra_options": {
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
            },
        }
    # reduce_range: 7-bit weights. x86 CPUs without VNNI multiply U8 x S8 pairs with
    # VPMADDUBSW, whose 16-bit sums saturate at full range and wreck the accuracy; ONNX
    # Runtime's documented remedy. Convolutions only, the tensors QAT simulates: quantizing the
    # adds, SE gates, concats and resizes as well gains little (docs/training.md, INT8 section;
    # figures in benchmarks/RESULTS.md).
    return {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "per_channel": True,
        "reduce_range": True,
        "op_types_to_quantize": ["Conv"],
        "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True},
    }


def _conv_nodes(path: str | os.PathLike) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def _preprocess(fp32: Path, out: Path) -> Path:
    """ONNX Runtime's recommended pre-pass (shape inference, clean-up); the input if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
        return out
    except Exception:
        return fp32


def _quantize(
    fp32: Path, out: Path, inputs: list[np.ndarray], method: str, target: str, exclude: list[str]
) -> None:
    import logging

    from onnxruntime.quantization import CalibrationMethod, quantize_static

    logging.getLogger().setLevel(
        max(logging.getLogger().level, logging.ERROR)
    )  # its pre-process nags
    cal = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    settings = _settings(target)
    extra = dict(settings.pop("extra_options"))
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    quantize_static(
        str(fp32),
        str(out),
        _Reader(inputs),
        calibrate_method=cal,
        nodes_to_exclude=exclude or None,
        extra_options=extra,
        **settings,
    )


def layer_sensitivity(
    fp32: Path, inputs: list[np.ndarray], method: str, target: str
) -> dict[str, float]:
    """Conv node -> SQNR (dB) of its output when the whole model is quantized (local error: the
    tensor before quantization against after), lowest = most sensitive."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with tempfile.TemporaryDirectory() as d:
        q = Path(d) / "q.onnx"
        _quantize(fp32, q, inputs, method, target, [])
        sample = inputs[: min(16, len(inputs))]
        acts = []
        for model in (q, fp32):
            aug = Path(d) / f"aug_{model.stem}.onnx"
            dbg.modify_model_output_intermediate_tensors(str(model), str(aug))
            acts.append(dbg.collect_activations(str(aug), _Reader(sample)))
        errors = dbg.compute_activation_error(dbg.create_activation_matching(*acts))
        graph = onnx.load(str(fp32)).graph
    by_output = {n.output[0]: n.name for n in graph.node if n.op_type == "Conv"}
    # The Conv's output is quantized on entry to the next node: its qdq error is that tensor's.
    return {
        by_output[t]: float(e["qdq_err"])
        for t, e in errors.items()
        if t in by_output and "qdq_err" in e
    }


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib: str,
    count: int = 128,
    method: str = "minmax",
    target: str = "trt",
    keep_fp32: int = 0,
) -> dict[str, Any]:
    """Q/DQ INT8 ONNX from an FP32 ONNX and calibration frames; returns the report."""
    import onnx

    from edgeseg.runtime.backends.onnxruntime import read_onnx_spec

    if method not in METHODS:
        raise EdgesegError(
            f"unknown --calib-method '{method}'{did_you_mean(method, METHODS)}; "
            f"choose one of: {', '.join(METHODS)}"
        )
    if target not in TARGETS:
        raise EdgesegError(
            f"unknown --target '{target}'; choose trt (TensorRT) or cpu (ONNX Runtime CPU)"
        )
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    spec = read_onnx_spec(fp32_path)
    inputs = calibration_inputs(calib, spec, count)
    kept: list[str] = []
    sens: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d, atomic_path(out_path) as tmp:
        src = _preprocess(fp32_path, Path(d) / "pre.onnx")
        if keep_fp32 > 0:
            sens = layer_sensitivity(src, inputs, method, target)
            kept = sorted(sens, key=sens.get)[:keep_fp32]
        _quantize(src, Path(tmp), inputs, method, target, kept)
        proto = onnx.load(str(tmp))
        q_spec = replace(
            spec,
            precision="int8",
            source={
                **spec.source,
                "int8": {
                    "target": target,
                    "method": method,
                    "calib": calib,
                    "calib_count": len(inputs),
                    "kept_fp32": kept,
                },
            },
        )
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, q_spec.to_json()
        onnx.save(proto, str(tmp))
    convs = _conv_nodes(fp32_path)
    return {
        "path": str(out_path),
        "target": target,
        "method": method,
        "calib_frames": len(inputs),
        "convs": len(convs),
        "kept_fp32": kept,
        "kept_sqnr_db": {k: round(sens[k], 2) for k in kept},
        "size_mb": round(out_path.stat().st_size / 2**20, 3),
    }
