"""DLA pre-flight: which layers of an ONNX graph TensorRT would run on the DLA, and why not.

The rules are TensorRT's documented DLA layer support and limits ("DLA Supported Layers and
Restrictions", :data:`DOCS_URL`; :data:`DOCS_VERSION`), written as data (:data:`LIMITS`, the op
sets) and one small rule function per TensorRT layer. ONNX nodes are mapped to the layers
TensorRT's ONNX parser makes of them (Conv -> convolution, HardSwish -> a hard-sigmoid
activation times its input, GlobalAveragePool -> an average reduce, ...). Each node that would
fall back to the GPU gets the reason and the change that would keep it on the DLA.

It is a pre-flight, not the builder: the DLA compiler can still refuse a combination of layers
that exceeds its internal buffers (the docs' "combination of layers" case); only a build on the
Jetson says that. What it does catch is every documented per-layer limit, before a build.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

DOCS_VERSION = (
    "TensorRT 10.x (JetPack 6, DLA releases up to 10.7) and 11.4.1 (JetPack 7.2.2, strongly typed)"
)
DOCS_URL = (
    "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/"
    "dla-layer-restrictions.html"
)

# Documented ranges, inclusive (the docs' "[lo, hi]").
LIMITS: dict[str, tuple[int, int]] = {
    "dim": (1, 8192),  # every non-batch dimension
    "batch": (1, 4096),
    "conv_kernel": (1, 32),
    "conv_padding": (0, 31),
    "conv_stride": (1, 8),
    "conv_dilation": (1, 32),
    "conv_channels": (1, 8192),
    "conv_groups": (1, 8192),
    "deconv_kernel": (1, 32),
    "pool_window": (1, 8),
    "pool_padding": (0, 7),
    "pool_stride": (1, 16),
    "clipped_relu_max": (1, 127),
    "resize_nearest_scale": (1, 32),
    "resize_linear_scale": (1, 4),
}
ACTIVATIONS = {"Relu", "Sigmoid", "Tanh", "LeakyRelu"}  # plus Clip as clipped ReLU
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}
COMPARISONS = {"Equal", "Greater", "Less"}
UNARY = {"Abs", "Sin", "Cos", "Atan"}
SHUFFLES = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}
REDUCES = {
    "ReduceMean": "average",
    "ReduceSum": "sum",
    "ReduceMin": "min",
    "ReduceProd": "product",
    "ReduceL1": "L1",
    "ReduceL2": "L2",
    "ReduceSumSquare": "sum of squares",
    "ReduceLogSumExp": "log-sum-exp",
    "GlobalAveragePool": "average",
    "ReduceMax": "max",
    "GlobalMaxPool": "max",
}
# Not layers of the built network: folded into constants, dropped, or fused into the layers
# they quantize (explicit quantization).
NOT_LAYERS = {"Constant", "Identity", "Dropout", "QuantizeLinear", "DequantizeLinear"}
FLOAT32, FLOAT16 = 1, 10  # onnx.TensorProto data types


@dataclass(frozen=True)
class Finding:
    """One ONNX node that would run on the GPU instead: why, and what would keep it on the DLA."""

    node: str
    op: str
    layer: str  # the TensorRT layer the parser makes of it
    rule: str  # short key, for counting reasons
    reason: str
    fix: str


@dataclass
class DlaReport:
    """The pre-flight of one graph."""

    model: str
    precision: str  # fp32, fp16 or int8 (Q/DQ)
    layers: int  # nodes that become layers of the network
    findings: list[Finding] = field(default_factory=list)
    boundary: list[str] = field(default_factory=list)  # I/O casts: reformats, not layers
    notes: list[str] = field(default_factory=list)

    @property
    def precision_error(self) -> str | None:
        """Why the whole graph cannot run on the DLA, or None."""
        if self.precision != "fp32":
            return None
        return (
            f"{self.model} computes in FP32; the DLA runs FP16 and INT8 only (TensorRT takes the "
            "precision from the ONNX): export with --fp16 or --int8"
        )

    @property
    def clean(self) -> bool:
        return not self.findings and self.precision_error is None

    @property
    def fallback_nodes(self) -> list[str]:
        return sorted({f.node for f in self.findings})

    def reasons(self) -> Counter:
        """Nodes falling back per rule."""
        return Counter(f.rule for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "precision": self.precision,
            "layers": self.layers,
            "fallback_nodes": len(self.fallback_nodes),
            "clean": self.clean,
            "precision_error": self.precision_error,
            "reasons": dict(self.reasons()),
            "findings": [asdict(f) for f in self.findings],
            "boundary": self.boundary,
            "notes": self.notes,
            "docs": {"version": DOCS_VERSION, "url": DOCS_URL},
        }


# ---------------------------------------------------------------------------- the graph


@dataclass
class Graph:
    """What the rules read of an ONNX graph: shapes (None where symbolic), types, constants."""

    shapes: dict[str, tuple[int | None, ...]]
    dtypes: dict[str, int]
    consts: dict[str, np.ndarray]
    static: set[str]  # tensors known at build time (TensorRT folds what computes them)
    inputs: set[str]
    outputs: set[str]

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        return self.shapes.get(name)

    def data_inputs(self, node) -> list[str]:
        """The node's inputs that are activations, not weights or shape constants."""
        return [i for i in node.input if i and i not in self.static]


def _graph(proto) -> Graph:
    """Shape inference, constants and the set of build-time tensors of ``proto``."""
    import onnx
    from onnx import numpy_helper, shape_inference

    proto = shape_inference.infer_shapes(proto)
    g = proto.graph
    shapes: dict[str, tuple[int | None, ...]] = {}
    dtypes: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        dtypes[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                    for d in t.shape.dim)  # fmt: skip
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for t in g.initializer:
        shapes[t.name], dtypes[t.name] = tuple(t.dims), t.data_type
    static = set(consts)
    for node in g.node:
        if node.op_type == "Constant":
            value = onnx.helper.get_attribute_value(node.attribute[0])
            if isinstance(value, onnx.TensorProto):
                consts[node.output[0]] = numpy_helper.to_array(value)
        elif node.op_type in ("Cast", "Identity") and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]  # a cast weight: the same values
        # DLA shapes are static, so a Shape (and all computed from it) is known at build time.
        if node.op_type in ("Constant", "Shape") or all(i in static for i in node.input if i):
            static.update(node.output)
    inputs = {i.name for i in g.input} - set(consts)
    return Graph(shapes, dtypes, consts, static, inputs, {o.name for o in g.output})


def _attrs(node) -> dict[str, Any]:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# ---------------------------------------------------------------------------- the rules

Problem = tuple[str, str, str]  # (rule, reason, fix)
Rule = Callable[[Any, Graph], list[Problem]]


def _outside(values, key: str) -> list[int]:
    lo, hi = LIMITS[key]
    return [int(v) for v in values if not lo <= int(v) <= hi]


def _range_problem(rule: str, what: str, values, key: str, fix: str) -> list[Problem]:
    """One problem when any of ``values`` is outside ``LIMITS[key]``."""
    bad = _outside(values, key)
    if not bad:
        return []
    lo, hi = LIMITS[key]
    return [(rule, f"{what} {list(map(int, values))} outside the DLA's [{lo}, {hi}]", fix)]


def _rank4(node, g: Graph, layer: str) -> list[Problem]:
    """The DLA's layers are 2-D (N, C, H, W) with every non-batch dim in [1, 8192]."""
    problems: list[Problem] = []
    for name in g.data_inputs(node)[:1] + list(node.output[:1]):
        shape = g.shape(name)
        if shape is None:
            continue
        if len(shape) != 4:
            fix = f"keep the {layer} on a 4-D (N, C, H, W) tensor"
            return [("rank", f"{layer} on a {len(shape)}-D tensor; the DLA takes 4-D only", fix)]
        big = [d for d in shape[1:] if d is not None and d > LIMITS["dim"][1]]
        if big:
            fix = "a smaller input size, or split the tensor"
            problems.append(("dims", f"dimension {big[0]} over the DLA's 8192", fix))
    return problems


def _conv(node, g: Graph) -> list[Problem]:
    """Convolution: 2-D, kernel [1,32], padding [0,31] and below the kernel, stride [1,8],
    dilation [1,32], channels and groups [1,8192]."""
    problems = _rank4(node, g, "convolution")
    w = g.shape(node.input[1]) or ()
    a = _attrs(node)
    kernel = a.get("kernel_shape") or list(w[2:])
    pads = a.get("pads", [0] * 2 * len(kernel))
    split = "split the kernel into smaller ones (e.g. two 3x3 for a 5x5)"
    problems += _range_problem("conv-kernel", "kernel", kernel, "conv_kernel", split)
    problems += _range_problem("conv-padding", "padding", pads, "conv_padding",
                               "pad with at most 31 per side")  # fmt: skip
    dil = a.get("dilations", [1] * len(kernel))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]  # a dilated kernel's extent
    if any(p >= k for p, k in zip(pads, span * 2)):
        problems.append(("conv-padding", f"padding {list(pads)} not below the kernel {span}",
                         "pad by less than the kernel size (a Pad before the conv)"))  # fmt: skip
    problems += _range_problem("conv-stride", "stride", a.get("strides", [1]), "conv_stride",
                               "stride at most 8; downsample in several steps")  # fmt: skip
    problems += _range_problem("conv-dilation", "dilation", a.get("dilations", [1]),
                               "conv_dilation", "dilation at most 32")  # fmt: skip
    if w:
        problems += _range_problem("conv-channels", "output channels", [w[0]], "conv_channels",
                                   "at most 8192 output channels")  # fmt: skip
    problems += _range_problem("conv-groups", "groups", [a.get("group", 1)], "conv_groups",
                               "at most 8192 groups")  # fmt: skip
    return problems


def _deconv(node, g: Graph) -> list[Problem]:
    """Deconvolution: 2-D, kernel and stride [1,32], no padding, no groups, no dilation."""
    problems = _rank4(node, g, "deconvolution")
    a = _attrs(node)
    w = g.shape(node.input[1]) or ()
    kernel = a.get("kernel_shape") or list(w[2:])
    fix_up = "upsample with Resize (nearest, integer scale) and a 3x3 convolution instead"
    problems += _range_problem("deconv-kernel", "kernel", kernel, "deconv_kernel", fix_up)
    problems += _range_problem("deconv-stride", "stride", a.get("strides", [1]), "deconv_kernel",
                               fix_up)  # fmt: skip
    if any(a.get("pads", [0])) or any(a.get("output_padding", [0])):
        problems.append(("deconv-padding", "deconvolution with padding; the DLA takes none",
                         "padding 0 (crop after it), or " + fix_up))  # fmt: skip
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1])):
        problems.append(("deconv-group", "grouped or dilated deconvolution", fix_up))
    return problems


def _pool(node, g: Graph) -> list[Problem]:
    """Pooling (max, average): 2-D, window [1,8], padding [0,7], stride [1,16]."""
    problems = _rank4(node, g, "pooling")
    a = _attrs(node)
    fix = "a window of at most 8 (stack two pools for a larger one)"
    problems += _range_problem("pool-window", "window", a.get("kernel_shape", []), "pool_window",
                               fix)  # fmt: skip
    problems += _range_problem("pool-padding", "padding", a.get("pads", [0]), "pool_padding",
                               "pad by at most 7")  # fmt: skip
    problems += _range_problem("pool-stride", "stride", a.get("strides", [1]), "pool_stride",
                               "stride at most 16")  # fmt: skip
    return problems


def _reduce(node, g: Graph) -> list[Problem]:
    """Reduce: 4-D, max only (any of C, H, W)."""
    kind = REDUCES[node.op_type]
    problems = _rank4(node, g, "reduce")
    if kind != "max":
        fix = (
            "the DLA reduces by max only: drop the global-context branch (e.g. the 'minimal' "
            "MobileNetV3 encoder has no squeeze-excitation), or average with a pooling window of "
            "at most 8 where the map is that small"
        )
        problems.append(("reduce-" + kind.replace(" ", "-"), f"{kind} reduce", fix))
    return problems


def _activation(node, g: Graph) -> list[Problem]:
    """ReLU, sigmoid, tanh, leaky ReLU: 4-D."""
    return _rank4(node, g, "activation")


def _clip(node, g: Graph) -> list[Problem]:
    """Clip is a clipped ReLU on the DLA: lower bound 0, upper bound in [1, 127]."""
    problems = _rank4(node, g, "activation")
    a = _attrs(node)
    lo = _scalar(g, node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("min")
    hi = _scalar(g, node.input[2]) if len(node.input) > 2 and node.input[2] else a.get("max")
    lo_max, hi_max = LIMITS["clipped_relu_max"]
    if lo is None or hi is None or lo != 0 or not lo_max <= hi <= hi_max:
        fix = f"clip to [0, M] with M in [{lo_max}, {hi_max}] (ReLU6 is Clip(0, 6))"
        problems.append(("clip", f"Clip({lo}, {hi}) is not a clipped ReLU", fix))
    return problems


def _hard(node, g: Graph) -> list[Problem]:
    """HardSigmoid / HardSwish become a hard-sigmoid activation, which the DLA lacks."""
    fix = (
        "write it with ReLU6, the same function: hard_sigmoid(x) = Clip(x + 3, 0, 6) / 6, "
        "hard_swish(x) = x * Clip(x + 3, 0, 6) / 6 (an add, a clipped ReLU and products), or "
        "use ReLU (the 'minimal' MobileNetV3 encoder)"
    )
    what = "hard sigmoid" if node.op_type == "HardSigmoid" else "hard swish (x * hard sigmoid)"
    return [("hard-activation", f"{what}: not a DLA activation", fix)]


def _broadcast_ok(shape, out) -> bool:
    """DLA broadcasting: an operand is N,C,H,W, N,C,1,1 or N,1,1,1 against the output."""
    if shape is None or out is None or None in shape[-3:] or None in out[-3:]:
        return True  # not inferred: nothing to say
    chw, full = tuple(shape[-3:]), tuple(out[-3:])
    pad = (1,) * (3 - len(chw)) + chw
    return pad in (full, (full[0], 1, 1), (1, 1, 1))


def _elementwise(node, g: Graph) -> list[Problem]:
    """Sum, Sub, Product, Max, Min, Div, Pow: 4-D; broadcast NCHW, NC11 or N111 only."""
    problems = _rank4(node, g, "elementwise")
    out = g.shape(node.output[0])
    for name in node.input:
        if name and not _broadcast_ok(g.shape(name), out):
            fix = "broadcast per channel (N,C,1,1) or per tensor (N,1,1,1) only"
            why = f"broadcast of {list(g.shape(name) or ())} to {list(out or ())}"
            problems.append(("broadcast", why, fix))
            break
    return problems


def _comparison(node, g: Graph) -> list[Problem]:
    """Equal, Greater, Less: INT8 only, the result cast at once."""
    if g.dtypes.get(node.input[0]) == FLOAT16:
        fix = "compare after the network (or in an INT8 graph)"
        return [("comparison", "comparison on FP16; the DLA compares INT8 only", fix)]
    return []


def _concat(node, g: Graph) -> list[Problem]:
    """Concatenation: channel axis only, at least two inputs, same spatial size."""
    problems = _rank4(node, g, "concatenation")
    axis = _attrs(node).get("axis", 1)
    rank = len(g.shape(node.output[0]) or (0,) * 4)
    if axis % max(rank, 1) != 1:
        fix = "concatenate along channels (axis 1)"
        problems.append(("concat-axis", f"concatenation on axis {axis}", fix))
    if len(g.data_inputs(node)) < 2:
        problems.append(("concat-inputs", "concatenation of fewer than two activations",
                         "concatenate at least two tensors computed by the network"))  # fmt: skip
    return problems


def _scalar(g: Graph, name: str) -> float | None:
    value = g.consts.get(name)
    return None if value is None or value.size != 1 else float(value.reshape(-1)[0])


def _resize_scales(node, g: Graph) -> list[float] | None:
    """The resize's scales: from its scales input, its sizes, or the inferred shapes."""
    ins = list(node.input) + [""] * 4
    scales = g.consts.get(ins[2])
    if scales is not None and scales.size:
        return [float(s) for s in scales]
    src, dst = g.shape(ins[0]), g.shape(node.output[0])
    sizes = g.consts.get(ins[3])
    if sizes is not None and sizes.size:
        dst = tuple(int(s) for s in sizes)
    if src is None or dst is None or None in src[1:] or None in dst[1:]:
        return None
    return [1.0] + [d / s for s, d in zip(src[1:], dst[1:])]  # type: ignore[operator]


def _resize(node, g: Graph) -> list[Problem]:
    """Resize: 4-D; scales 1 on N and C; integer H, W scales in [1, 32] (nearest) or [1, 4]
    (bilinear, half-pixel coordinates only)."""
    problems = _rank4(node, g, "resize")
    a = _attrs(node)
    mode, coords = a.get("mode", "nearest"), a.get("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        return problems + [("resize-mode", f"{mode} resize", "nearest or bilinear resize")]
    key = "resize_nearest_scale" if mode == "nearest" else "resize_linear_scale"
    lo, hi = LIMITS[key]
    scales = _resize_scales(node, g)
    up = "upsample in integer steps (x2 twice for x4), or with nearest (up to x32)"
    if scales is None:
        problems.append(("resize-scale", "scales unknown at build time", "static sizes"))
    elif len(scales) != 4 or scales[0] != 1 or scales[1] != 1:
        problems.append(("resize-scale", f"scales {scales}: N and C must stay", "resize H, W"))
    elif any(s != int(s) or not lo <= s <= hi for s in scales[2:]):
        why = f"{mode} scales {scales[2:]}: the DLA takes integers in [{lo}, {hi}]"
        problems.append(("resize-scale", why, up))
    if mode == "linear" and coords not in ("half_pixel", "pytorch_half_pixel"):
        fix = "bilinear with align_corners=False (half-pixel coordinates)"
        problems.append(("resize-coords", f"bilinear with {coords} coordinates", fix))
    nearest = a.get("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and (coords, nearest) not in _NEAREST_OK:
        fix = "PyTorch's nearest (asymmetric coordinates, floor)"
        problems.append(("resize-coords", f"nearest with {coords} / {nearest}", fix))
    return problems


# IResizeLayer's DLA combinations for nearest: asymmetric+floor, half-pixel+round half down/up
_NEAREST_OK = {
    ("asymmetric", "floor"),
    ("half_pixel", "round_prefer_floor"),
    ("half_pixel", "round_prefer_ceil"),
    ("pytorch_half_pixel", "round_prefer_floor"),
    ("pytorch_half_pixel", "round_prefer_ceil"),
}


def _shuffle(node, g: Graph) -> list[Problem]:
    """Shuffle (reshape, transpose): 4-D in and out."""
    return _rank4(node, g, "shuffle")


def _slice(node, g: Graph) -> list[Problem]:
    """Slice: 4-D, static, not along the batch."""
    problems = _rank4(node, g, "slice")
    axes = g.consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if axes is not None and 0 in [int(x) % 4 for x in axes.reshape(-1)]:
        problems.append(("slice-batch", "slice along the batch", "slice C, H or W only"))
    return problems


def _softmax(node, g: Graph) -> list[Problem]:
    """Softmax: Orin's DLA only; 4-D, over a non-batch axis."""
    problems = _rank4(node, g, "softmax")
    if _attrs(node).get("axis", -1) % 4 == 0:
        problems.append(("softmax-axis", "softmax over the batch", "softmax over channels"))
    return problems


def _unary(node, g: Graph) -> list[Problem]:
    """Unary: abs, sin, cos, atan only."""
    return _rank4(node, g, "unary")


def _prelu(node, g: Graph) -> list[Problem]:
    """Parametric ReLU: the slope a build-time constant of the input's rank."""
    problems = _rank4(node, g, "parametric ReLU")
    slope = g.consts.get(node.input[1])
    if slope is None or slope.ndim != 4:
        fix = "a constant slope shaped (1, C, 1, 1)"
        problems.append(("prelu-slope", "slope not a 4-D constant", fix))
    return problems


def _unsupported(layer: str, fix: str, key: str = "no-dla-layer") -> Rule:
    """A rule for an op with no DLA layer at all."""

    def rule(node, g: Graph) -> list[Problem]:
        return [(key, f"{layer}: no DLA implementation", fix)]

    return rule


_ARGMAX_FIX = "take logits off the DLA and the argmax on the GPU (--gpu-fallback), or no --argmax"
RULES: dict[str, tuple[str, Rule]] = {
    "Conv": ("convolution", _conv),
    "ConvTranspose": ("deconvolution", _deconv),
    "MaxPool": ("pooling", _pool),
    "AveragePool": ("pooling", _pool),
    **{op: ("reduce", _reduce) for op in REDUCES},
    **{op: ("activation", _activation) for op in ACTIVATIONS},
    "Clip": ("activation", _clip),
    "HardSigmoid": ("activation", _hard),
    "HardSwish": ("activation + elementwise", _hard),
    "PRelu": ("parametric ReLU", _prelu),
    **{op: ("elementwise", _elementwise) for op in ELEMENTWISE},
    **{op: ("comparison", _comparison) for op in COMPARISONS},
    "BatchNormalization": ("scale", _activation),
    "Concat": ("concatenation", _concat),
    "Resize": ("resize", _resize),
    "Upsample": ("resize", _resize),
    **{op: ("shuffle", _shuffle) for op in SHUFFLES},
    "Slice": ("slice", _slice),
    "Softmax": ("softmax", _softmax),
    "LRN": ("LRN", _activation),
    **{op: ("unary", _unary) for op in UNARY},
    "ArgMax": ("top-k", _unsupported("top-k (argmax)", _ARGMAX_FIX, "argmax")),
    "Cast": ("cast", _unsupported("cast inside the graph",
                                  "one precision throughout; casts only at the inputs/outputs",
                                  "cast")),
    "MatMul": ("matrix multiply", _unsupported("matrix multiply", "a 1x1 convolution")),
    "Gemm": ("matrix multiply", _unsupported("matrix multiply", "a 1x1 convolution")),
}  # fmt: skip


def _other(node, g: Graph) -> list[Problem]:
    fix = "an equivalent made of DLA layers (convolution, pooling, activation, elementwise)"
    return [("no-dla-layer", f"ONNX {node.op_type}: no DLA layer in TensorRT", fix)]


# ---------------------------------------------------------------------------- the check


def _precision(g: Graph, ops: set[str]) -> str:
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        return "int8"
    return "fp16" if FLOAT16 in g.dtypes.values() else "fp32"


def _fp32_problem(node, g: Graph) -> list[Problem]:
    """In an FP16 graph, a node left in FP32 (``--fp16`` keeps sensitive ops so) falls back."""
    if any(g.dtypes.get(i) == FLOAT32 for i in g.data_inputs(node)):
        fix = (
            "let --fp16 convert it (edgeseg.export.onnx.FP16_KEEP_FP32 keeps this op in FP32), "
            "or --int8"
        )
        return [("fp32", "computes in FP32; the DLA runs FP16 and INT8 only", fix)]
    return []


def _is_boundary_cast(node, g: Graph) -> bool:
    """A Cast straight from a graph input or into a graph output: an I/O reformat that TensorRT
    does at the DLA's edge, not a layer inside it."""
    return node.op_type == "Cast" and (node.input[0] in g.inputs or node.output[0] in g.outputs)


def check_proto(proto, name: str = "model") -> DlaReport:
    """The DLA pre-flight of an ONNX ``ModelProto``."""
    g = _graph(proto)
    nodes = list(proto.graph.node)
    precision = _precision(g, {n.op_type for n in nodes})
    report = DlaReport(name, precision, 0)
    for i, node in enumerate(nodes):
        if node.op_type in NOT_LAYERS or all(o in g.static for o in node.output):
            continue  # folded at build time, or not a layer
        if _is_boundary_cast(node, g):
            report.boundary.append(node.name or f"{node.op_type}_{i}")
            continue
        report.layers += 1
        layer, rule = RULES.get(node.op_type, ("?", _other))
        problems = rule(node, g)
        if precision == "fp16" and node.op_type != "Cast":  # a cast is its own finding
            problems += _fp32_problem(node, g)
        for key, reason, fix in problems:
            report.findings.append(
                Finding(node.name or f"{node.op_type}_{i}", node.op_type, layer, key, reason, fix)
            )
    if precision == "int8":
        report.notes.append(
            "INT8 (Q/DQ): layers TensorRT leaves unquantized compute in FP32 and fall back; "
            "which ones is TensorRT's choice at build time"
        )
    return report


def check_onnx(path: str | Path) -> DlaReport:
    """The DLA pre-flight of the ONNX file ``path``."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # a truncated or foreign file: say which, not a protobuf trace
        raise EdgesegError(f"cannot read {path} as ONNX: {e}") from None
    return check_proto(proto, path.name)


def check_architecture(
    name: str,
    num_classes: int = 11,
    input_size: tuple[int, int] = (352, 480),
    model_kwargs: dict[str, Any] | None = None,
) -> DlaReport:
    """The pre-flight of a registered architecture as ``edgeseg export --fp16`` would write it
    (untrained weights: the layers, not the values, decide where they run)."""
    import tempfile

    import onnx
    import torch

    from edgeseg.export.onnx import _export_graph, to_fp16
    from edgeseg.models import create_model

    model = create_model(name, num_classes, **(model_kwargs or {})).eval()
    with tempfile.TemporaryDirectory(prefix="edgeseg-dla-") as tmp:
        path = Path(tmp) / f"{name}.onnx"
        _export_graph(model, torch.zeros(1, 3, *input_size), path)
        proto = to_fp16(onnx.load(str(path)))
    return check_proto(proto, name)


def refusal(report: DlaReport, limit: int = 12) -> str:
    """The message ``export --dla`` refuses with: each falling-back layer, reason and fix."""
    lines = [
        f"{len(report.fallback_nodes)} of {report.layers} layers of {report.model} would fall "
        "back to the GPU (pass --gpu-fallback to build anyway):"
    ]
    for f in report.findings[:limit]:
        lines.append(f"  {f.node} ({f.op}): {f.reason}; fix: {f.fix}")
    if len(report.findings) > limit:
        lines.append(f"  ... and {len(report.findings) - limit} more ('edgeseg check --dla')")
    return "\n".join(lines)
