"""``edgeseg bench --zoo``: every registered architecture at chosen input sizes — mIoU on a
dataset's val split (where a trained checkpoint of that architecture is given) against ONNX Runtime
model-only latency, as a table and a Pareto plot."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError

DEFAULT_SIZES = ((352, 480), (704, 960))  # CamVid's 360x480 and 720x960, rounded to multiples of 32


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``480x360,960x720`` (width x height, as cameras are named) -> [(352, 480), (704, 960)]:
    heights and widths rounded to the nearest multiple of 32, which every model needs."""
    sizes = []
    for part in text.split(","):
        try:
            w, h = (int(v) for v in part.lower().strip().split("x"))
        except ValueError:
            raise EdgesegError(
                f"bad size '{part}' in --sizes; use WIDTHxHEIGHT[,WIDTHxHEIGHT...], e.g. "
                "480x360,960x720"
            ) from None
        if w < 16 or h < 16:
            raise EdgesegError(f"--sizes: {part} is too small")
        sizes.append((max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)))
    return sizes


def _latency(onnx: str, warmup: int, iters: int) -> dict[str, Any]:
    import numpy as np

    from edgeseg.runtime.backends import load_backend
    from edgeseg.timing import summarize, time_calls

    be = load_backend(onnx, "ort", "cpu")
    x = np.random.default_rng(0).standard_normal((1, 3, *be.spec.input_hw)).astype(np.float32)
    return summarize(time_calls(lambda: be.infer(x), warmup, iters))


def _untrained_checkpoint(
    arch: str, data: str, path: Path, input_hw: tuple[int, int] = (352, 480)
) -> Path:
    """A randomly initialised checkpoint of ``arch`` with ``data``'s classes (latency needs no
    training)."""
    from edgeseg.data import build_dataset
    from edgeseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from edgeseg.models import create_model
    from edgeseg.models.checkpoint import save_checkpoint
    from edgeseg.spec import InputSpec, ModelSpec, OutputSpec

    info = build_dataset(data, "val").info
    n = len(info.classes)
    model = create_model(arch, n).eval()
    spec = ModelSpec(
        arch=arch,
        num_classes=n,
        classes=list(info.classes),
        palette=[list(map(int, c)) for c in info.palette[:n]],
        ignore_index=info.ignore_index,
        input=InputSpec(
            height=input_hw[0], width=input_hw[1], mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)
        ),
        output=OutputSpec("logits", model.output_stride),
        source={"untrained": True},
    )
    save_checkpoint(path, model, spec)
    return path


def run_zoo(
    checkpoints: list[str],
    data: str,
    sizes: list[tuple[int, int]] | None = None,
    warmup: int = 10,
    iters: int = 50,
    isolate: bool = True,
    progress=print,
) -> dict[str, Any]:
    """One row per registered architecture and size: params, GFLOPs, latency p50/p99, val mIoU
    (None without a trained checkpoint of that architecture)."""
    from edgeseg.bench.measure import onnx_complexity
    from edgeseg.bench.runner import _call, machine_info
    from edgeseg.export.onnx import export_onnx
    from edgeseg.models import list_models
    from edgeseg.models.checkpoint import read_checkpoint
    from edgeseg.train.evaluate import evaluate

    sizes = sizes or list(DEFAULT_SIZES)
    by_arch: dict[str, str] = {}
    for c in checkpoints:
        arch = read_checkpoint(c)["arch"]
        if arch in by_arch:
            raise EdgesegError(
                f"two checkpoints of {arch} given ({by_arch[arch]}, {c}); the zoo takes one per "
                "architecture"
            )
        by_arch[arch] = c
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-zoo-") as work:
        for arch in list_models():
            ckpt = by_arch.get(arch) or str(
                _untrained_checkpoint(arch, data, Path(work) / f"{arch}.pt")
            )
            for h, w in sizes:
                out = Path(work) / f"{arch}_{h}x{w}"
                progress(
                    f"zoo: {arch} at {w}x{h}"
                    + ("" if arch in by_arch else " (untrained: latency only)")
                )
                onnx = export_onnx(ckpt, out, input_size=(h, w))["path"]
                lat = _call(isolate, _latency, onnx, warmup, iters)
                miou = (
                    round(evaluate(onnx, data, "val", "ort", "cpu")["miou"], 4)
                    if arch in by_arch
                    else None
                )
                rows.append(
                    {
                        "model": arch,
                        "size": f"{w}x{h}",
                        "input_size": [h, w],
                        "checkpoint": by_arch.get(arch),
                        **onnx_complexity(onnx),
                        "latency_ms_p50": lat["p50"],
                        "latency_ms_p99": lat["p99"],
                        "throughput_fps": lat["throughput_fps"],
                        "miou": miou,
                    }
                )
    return {
        "schema": "edgeseg-zoo-v1",
        "machine": machine_info(),
        "data": data,
        "backend": "onnxruntime-cpu",
        "rows": rows,
    }
