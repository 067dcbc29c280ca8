"""Measurement primitives of ``edgeseg bench``: memory, and the complexity of any model file.

Latency summaries and timed loops live in :mod:`edgeseg.timing` (shared with the stream
statistics and ``edgeseg prune``)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux/macOS ``ru_maxrss``), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if os.uname().sysname == "Darwin" else 2**10), 1)


def rss_mb() -> float:
    """This process's current resident set size in MiB (Linux ``/proc``; peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def gpu_memory_mb(device: str) -> float | None:
    """Device memory in use on the GPU a configuration ran on (``cudaMemGetInfo``: all of it,
    CUDA context included), or None when it ran on the CPU (asking would create a CUDA context
    in a CPU configuration's process, and report other processes' memory as its own)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return round((total - free) / 2**20, 1)
    except Exception:
        return None


def onnx_complexity(path: str | os.PathLike) -> dict[str, float]:
    """Parameters and GFLOPs of an ONNX graph, counted the way
    :func:`edgeseg.models.complexity.count_gflops` counts PyTorch models: 2 FLOPs per
    multiply-add of Conv, ConvTranspose, Gemm and MatMul, nothing else. Works for FP32, FP16 and
    Q/DQ INT8 graphs (parameters are the weight and bias initializers, not the quantization
    scales)."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = [
            d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim
        ]
        shapes[vi.name] = dims
    inits = {i.name: i for i in g.initializer}
    for name, init in inits.items():
        shapes[name] = list(init.dims)
    qdq_params = {
        n.input[i]
        for n in g.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        for i in (1, 2)
        if i < len(n.input)
    }
    params = sum(
        int(np.prod(init.dims))
        for name, init in inits.items()
        if name not in qdq_params and len(init.dims) >= 1 and int(np.prod(init.dims)) > 1
    )
    macs = 0
    for n in g.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            w, y = shapes.get(n.input[1]), shapes.get(n.output[0])
            if not w or not y:
                continue
            if n.op_type == "Conv":  # each output element: Cin/group * kh * kw multiply-adds
                macs += int(np.prod(y)) * int(np.prod(w[1:]))
            else:  # each input element scatters into Cout/group * kh * kw outputs
                x = shapes.get(n.input[0])
                macs += int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
        elif n.op_type in ("Gemm", "MatMul"):
            a, y = shapes.get(n.input[0]), shapes.get(n.output[0])
            if a and y:
                macs += int(np.prod(y)) * a[-1]
    return {"params": int(params), "gflops": round(2 * macs / 1e9, 6)}
