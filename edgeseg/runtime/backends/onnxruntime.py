"""ONNX Runtime backend: the best available execution provider, spec from the model's metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.spec import METADATA_KEY, ModelSpec

# Preferred first; TensorRT and CUDA EPs exist only in onnxruntime-gpu builds.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def read_onnx_spec(path: str | os.PathLike) -> ModelSpec:
    """Read the ModelSpec stored in an ONNX file's metadata without building a session."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EdgesegError(
            f"{path} is not a valid ONNX model ({type(e).__name__}); re-export it with 'edgeseg "
            "export'"
        ) from None
    meta = {p.key: p.value for p in model.metadata_props}
    return _spec_from_meta(meta, path)


def _spec_from_meta(meta: dict[str, str], path: Path) -> ModelSpec:
    if METADATA_KEY not in meta:
        raise EdgesegError(
            f"{path} has no edgeseg model spec (ONNX metadata key '{METADATA_KEY}'); "
            "export it with 'edgeseg export' so it carries its classes, size and normalisation"
        )
    return ModelSpec.from_json(meta[METADATA_KEY], origin=str(path))


def lift_trailing_resize(model) -> int:
    """Remove a trailing x``k`` bilinear Resize from an ONNX ModelProto in place; return ``k``
    (1 when the graph does not end in one, and the model is left as it was).

    Segmentation models end by resizing their logits to input size (mbv3_unet: x2, bisenetv2:
    x8). On ONNX Runtime CPU that last resize and the NCHWc-to-NCHW reorder of its large output
    are a large share of a small model's time (docs/kernels.md); the post-processing kernel does
    the same resize fused with the argmax at a fraction of the cost
    (``kernels.postprocess(upsample=k)``).
    Only the exact form that kernel reproduces is lifted: one Resize producing the only graph
    output, ``mode=linear``, ``coordinate_transformation_mode=half_pixel``, constant scales
    ``(1, 1, k, k)`` with integer ``k >= 2``.
    """
    from onnx import helper

    graph = model.graph
    if len(graph.output) != 1:
        return 1
    producers = [n for n in graph.node if graph.output[0].name in n.output]
    if len(producers) != 1 or producers[0].op_type != "Resize" or len(producers[0].input) < 3:
        return 1
    node = producers[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (
        attrs.get("mode", b"nearest") != b"linear"
        or attrs.get("coordinate_transformation_mode") != b"half_pixel"
    ):
        return 1
    if any(attrs.get(k) for k in ("antialias", "exclude_outside")) or "axes" in attrs:
        return 1
    scales = _constant(graph, node.input[2])
    if (
        scales is None
        or scales.shape != (4,)
        or tuple(scales[:2]) != (1, 1)
        or scales[2] != scales[3]
    ):
        return 1
    k = int(scales[2])
    if k < 2 or k != scales[2] or sum(node.input[0] in n.input for n in graph.node) != 1:
        return 1  # not an integer factor, or its input feeds other nodes too
    graph.node.remove(node)
    for name in node.input[1:]:  # its roi/scales constants, unless something else reads them
        if name and not any(name in n.input for n in graph.node):
            _drop_constant(graph, name)
    out = graph.output[0]
    graph.output.remove(out)
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    if len(dims) == 4:  # (N, C, H, W): the spatial sides before the resize
        dims[2:] = [
            d // k if isinstance(d, int) and d else f"{d or 'dim'}_before_resize" for d in dims[2:]
        ]
    graph.output.append(
        helper.make_tensor_value_info(
            node.input[0], out.type.tensor_type.elem_type, dims if len(dims) == 4 else None
        )
    )
    return k


def _constant(graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for n in graph.node:
        if (
            n.op_type == "Constant"
            and name in n.output
            and n.attribute
            and n.attribute[0].name == "value"
        ):
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _drop_constant(graph, name: str) -> None:
    for init in list(graph.initializer):
        if init.name == name:
            graph.initializer.remove(init)
    for n in list(graph.node):
        if n.op_type == "Constant" and name in n.output:
            graph.node.remove(n)


class OnnxRuntimeBackend:
    """Runs an exported ``.onnx`` with ONNX Runtime.

    ``upsample``: 1, or the factor of the trailing resize lifted out of the graph with
    ``fuse_resize=True`` — ``infer`` then returns logits at 1/``upsample`` of the model's output
    size and post-processing must resize them (``kernels.postprocess(upsample=...)``).
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        threads: int | None = None,
        spin: bool = True,
        exact_qdq: bool = False,
        fuse_resize: bool = False,
    ) -> None:
        """``threads``: intra-op threads (default: one per core). ``spin=False`` lets idle pool
        threads sleep instead of busy-waiting: slower for back-to-back calls, but it leaves the
        cores to the other stages of a pipeline (decode, encode) between inferences.
        ``fuse_resize``: lift the model's trailing logits resize out of the graph (see
        :func:`lift_trailing_resize`) for a caller whose post-processing does it."""
        import onnxruntime as ort

        path = Path(path)
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            providers = [p for p in _GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
            if device.startswith("cuda") and len(providers) == 1:
                raise EdgesegError(
                    "--device cuda needs onnxruntime-gpu (CUDA execution provider); "
                    "pip uninstall onnxruntime && pip install onnxruntime-gpu, or use --device cpu"
                )
        opts = ort.SessionOptions()
        # exact_qdq: no graph optimizations, so Q/DQ nodes run as written (quantize, dequantize,
        # float op) instead of being fused into integer kernels: the arithmetic TensorRT does
        # (int32 accumulation), free of the x86 U8S8 saturation that full-range S8 weights hit.
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if exact_qdq
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model: str | bytes = str(path)
        self.upsample = 1
        if fuse_resize and path.is_file():
            import onnx

            try:
                proto = onnx.load(str(path))
                self.upsample = lift_trailing_resize(proto)
                if self.upsample > 1:
                    model = proto.SerializeToString()
            except Exception:  # unreadable here: let ONNX Runtime report it below
                self.upsample = 1
        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as e:
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise EdgesegError(
                f"{path} could not be loaded by ONNX Runtime ({msg}); "
                "check the file is a complete .onnx written by 'edgeseg export'"
            ) from None
        self.spec = _spec_from_meta(self.session.get_modelmeta().custom_metadata_map, path)
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] in _GPU_PROVIDERS else "cpu"
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: batch})[0]
