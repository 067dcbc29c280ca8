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
with the whole model quantized (:func:`layer_sensitivity`), and the most sensitive are kept out of
INT8: in FP16 for ``trt`` (Cast islands in the Q/DQ graph: a strongly typed TensorRT network runs
the precision the ONNX states, and FP16 keeps what these layers need at half FP32's cost), in FP32
for ``cpu`` (ONNX Runtime's x86 kernels have no faster FP16 convolution). The report names them.
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


def _is_dataset(source: str) -> bool:
    """A dataset spec (``camvid:PATH``, ``synthetic:N``), not a folder, glob or video."""
    return ":" in source and not Path(source).exists() or source.startswith("synthetic")


def calibration_inputs(source: str, spec: ModelSpec, count: int = 128) -> list[np.ndarray]:
    """``count`` preprocessed (1, 3, H, W) inputs from a dataset spec (its train split), an image
    folder or glob, or a video; spread evenly over the source."""
    from edgeseg.runtime import kernels

    if count < 1:
        raise EdgesegError("--calib-count must be at least 1")
    frames: list[np.ndarray] = []
    if _is_dataset(source):
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
    fp32: Path,
    out: Path,
    inputs: list[np.ndarray],
    settings: tuple[str, str],
    exclude: list[str],
    cache: Path | None = None,
) -> None:
    """quantize_static with ``settings`` (method, target); ``cache``: a calibration cache file
    ONNX Runtime reads the activation ranges from when it exists, and writes them to when not
    (ONNX Runtime 1.23 and newer; older ones calibrate every time)."""
    import inspect
    import logging

    from onnxruntime.quantization import CalibrationMethod, quantize_static

    method, target = settings
    logging.getLogger().setLevel(
        max(logging.getLogger().level, logging.ERROR)
    )  # its pre-process nags
    cal = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    options = _settings(target)
    extra = dict(options.pop("extra_options"))
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    if (
        cache is not None
        and "calibration_cache_path" in inspect.signature(quantize_static).parameters
    ):
        options["calibration_cache_path"] = str(cache)
    quantize_static(
        str(fp32),
        str(out),
        _Reader(inputs),
        calibrate_method=cal,
        nodes_to_exclude=exclude or None,
        extra_options=extra,
        **options,
    )


KEPT_PRECISION = {"trt": "fp16", "cpu": "fp32"}


def fp16_islands(proto, kept: list[str]) -> None:
    """Run the ``kept`` convolutions of a Q/DQ graph in FP16: their weights and bias stored FP16,
    a Cast to FP16 before each and back to FP32 after, so the tensors around them keep their
    types and Q/DQ nodes."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "Conv" or node.name not in kept:
            nodes.append(node)
            continue
        for j, name in enumerate(node.input[1:], start=1):
            if name not in inits:
                raise EdgesegError(f"{node.name}: weights {name} are not constant; cannot keep it")
            half = numpy_helper.from_array(
                numpy_helper.to_array(inits[name]).astype(np.float16), f"{name}/fp16"
            )
            graph.initializer.append(half)
            node.input[j] = half.name
        x, y = node.input[0], node.output[0]
        node.input[0], node.output[0] = f"{node.name}/x_fp16", f"{node.name}/y_fp16"
        nodes += [
            helper.make_node("Cast", [x], [node.input[0]], f"{node.name}/to_fp16",
                             to=TensorProto.FLOAT16),
            node,
            helper.make_node("Cast", [node.output[0]], [y], f"{node.name}/to_fp32",
                             to=TensorProto.FLOAT),
        ]  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)


def calibration_key(fp32: Path, inputs: list[np.ndarray], method: str) -> str:
    """What calibrated ranges depend on: the model's weights, the frames, the method."""
    import hashlib

    import onnx

    h = hashlib.sha256()
    for init in sorted(load_weights(fp32), key=lambda t: t.name):
        h.update(init.name.encode() + onnx.numpy_helper.to_array(init).tobytes())
    for x in inputs:
        h.update(np.ascontiguousarray(x).tobytes())
    h.update(method.encode())
    return h.hexdigest()[:32]


def load_weights(path: Path) -> list:
    import onnx

    return list(onnx.load(str(path)).graph.initializer)


def calibration_cache_dir() -> Path:
    """Where calibrated activation ranges are kept between exports."""
    root = Path(os.environ.get("EDGESEG_CACHE", Path.home() / ".cache" / "edgeseg"))
    return root / "calibration"


def layer_sensitivity(
    fp32: Path, inputs: list[np.ndarray], method: str, target: str, cache: Path | None = None
) -> dict[str, float]:
    """Conv node -> SQNR (dB) of its output when the whole model is quantized (local error: the
    tensor before quantization against after), lowest = most sensitive."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    with tempfile.TemporaryDirectory() as d:
        q = Path(d) / "q.onnx"
        _quantize(fp32, q, inputs, (method, target), [], cache)
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


class Int8Export:
    """One FP32 ONNX on its way to INT8: calibration frames, cached activation ranges, layer
    sensitivity, and the Q/DQ files written from them (several, while a budget is searched)."""

    def __init__(
        self, fp32_path: str | os.PathLike, calib: str, count: int, settings: tuple[str, str]
    ) -> None:
        from edgeseg.runtime.backends.onnxruntime import read_onnx_spec

        self.method, self.target = settings
        if self.method not in METHODS:
            raise EdgesegError(
                f"unknown --calib-method '{self.method}'{did_you_mean(self.method, METHODS)}; "
                f"choose one of: {', '.join(METHODS)}"
            )
        if self.target not in TARGETS:
            raise EdgesegError(
                f"unknown --target '{self.target}'; choose trt (TensorRT) or cpu (ONNX Runtime CPU)"
            )
        self.fp32, self.calib = Path(fp32_path), calib
        self.spec = read_onnx_spec(self.fp32)
        self.inputs = calibration_inputs(calib, self.spec, count)
        # Not the target: both flavours calibrate the same tensors (the inputs of the ops they
        # quantize) to the same raw ranges, and apply their symmetry afterwards.
        tensors = ",".join(_settings(self.target)["op_types_to_quantize"])
        key = calibration_key(self.fp32, self.inputs, f"{self.method} {tensors}")
        self.cache = calibration_cache_dir() / f"{key}.json"
        self.cache_reused = self.cache.is_file()
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeseg-int8-")
        self.src = _preprocess(self.fp32, Path(self._tmp.name) / "pre.onnx")
        self._sens: dict[str, float] | None = None

    @property
    def calibration(self) -> str:
        """What the report says about the calibration: computed, or reused from the cache."""
        how = "reused from the cache" if self.cache_reused else "computed and cached"
        split = "'s train split" if _is_dataset(self.calib) else ""
        return (
            f"{len(self.inputs)} frames of {self.calib}{split}, {self.method}: ranges {how} "
            f"({self.cache})"
        )

    def sensitivity(self) -> dict[str, float]:
        """Conv node -> output SQNR (dB), computed once."""
        if self._sens is None:
            self._sens = layer_sensitivity(
                self.src, self.inputs, self.method, self.target, self.cache
            )
        return self._sens

    def ranked(self) -> list[str]:
        """Convolutions, most sensitive (lowest SQNR) first."""
        sens = self.sensitivity()
        return sorted(sens, key=sens.get)

    def write(self, out_path: str | os.PathLike, kept: list[str]) -> dict[str, Any]:
        """The Q/DQ ONNX with ``kept`` convolutions out of INT8, its ModelSpec recording how it was
        made; returns the report."""
        import onnx

        out_path = Path(out_path)
        with atomic_path(out_path) as tmp:
            _quantize(
                self.src, Path(tmp), self.inputs, (self.method, self.target), kept, self.cache
            )
            proto = onnx.load(str(tmp))
            if kept and KEPT_PRECISION[self.target] == "fp16":
                fp16_islands(proto, kept)
            int8 = {
                "target": self.target,
                "method": self.method,
                "calib": self.calib,
                "calib_count": len(self.inputs),
                "kept": kept,
                "kept_precision": KEPT_PRECISION[self.target],
            }
            q_spec = replace(self.spec, precision="int8", source={**self.spec.source, "int8": int8})
            del proto.metadata_props[:]
            entry = proto.metadata_props.add()
            entry.key, entry.value = METADATA_KEY, q_spec.to_json()
            onnx.save(proto, str(tmp))
        sens = self._sens or {}
        return {
            "path": str(out_path),
            "target": self.target,
            "method": self.method,
            "calib_frames": len(self.inputs),
            "calibration": self.calibration,
            "convs": len(_conv_nodes(self.fp32)),
            "kept": kept,
            "kept_precision": KEPT_PRECISION[self.target],
            "kept_sqnr_db": {k: round(sens[k], 2) for k in kept if k in sens},
            "size_mb": round(out_path.stat().st_size / 2**20, 3),
        }

    def close(self) -> None:
        self._tmp.cleanup()


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib: str,
    count: int = 128,
    method: str = "minmax",
    target: str = "trt",
    keep_fp32: int = 0,
) -> dict[str, Any]:
    """Q/DQ INT8 ONNX from an FP32 ONNX and calibration frames, the ``keep_fp32`` most sensitive
    convolutions kept in float; returns the report."""
    job = Int8Export(fp32_path, calib, count, (method, target))
    try:
        return job.write(out_path, job.ranked()[:keep_fp32] if keep_fp32 > 0 else [])
    finally:
        job.close()
