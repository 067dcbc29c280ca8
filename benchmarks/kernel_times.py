"""Time the CPU pre/post-processing kernels of whichever edgeseg this interpreter imports.

    python benchmarks/kernel_times.py --model M.onnx [--frame 960x540] [--iters 200] [--json OUT]

benchmarks/compare.py runs this one file under each build's interpreter, so both builds are
timed by the same harness. It uses only the kernels API every build since the C++ kernels
has (``kernels.preprocess``, ``kernels.postprocess``), at the model's input size and with the
trailing upsample the stream lifts out of the graph. Times are per call on one thread (as in the
stream, where each stage runs single-threaded beside the others).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _best_ms(fn, iters: int, rounds: int = 5) -> float:
    """The fastest of ``rounds`` medians of thread CPU time: this machine is shared, and its
    slow phases last longer than one round, so the quietest round is the kernel's own cost."""
    for _ in range(max(3, iters // 10)):  # warm caches and the allocator
        fn()
    best = float("inf")
    for _ in range(rounds):
        times = []
        for _ in range(max(1, iters // rounds)):
            t0 = time.thread_time()
            fn()
            times.append(time.thread_time() - t0)
        best = min(best, float(np.median(times)))
    return best * 1e3


def measure(model: str, frame_hw: tuple[int, int], iters: int) -> dict[str, float]:
    """Median ms of preprocess, postprocess (labels) and postprocess with the overlay."""
    from edgeseg.runtime import kernels
    from edgeseg.runtime.backends.onnxruntime import lift_trailing_resize, read_onnx_spec

    if kernels._cpu is None:
        raise SystemExit("this build's C++ kernels are not built")
    kernels._cpu.set_num_threads(1)
    import onnx

    spec = read_onnx_spec(model)
    up = lift_trailing_resize(onnx.load(model, load_external_data=False))
    rng = np.random.default_rng(0)
    H, W = frame_hw
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    h, w = spec.input_hw
    stride = spec.output.stride * up
    logits = rng.standard_normal((1, spec.num_classes, h // stride, w // stride)).astype(np.float32)
    mean, std = spec.input.mean, spec.input.std
    return {
        "preprocess_ms": _best_ms(lambda: kernels.preprocess(frame, (h, w), mean, std), iters),
        "postprocess_ms": _best_ms(lambda: kernels.postprocess(logits, (H, W), upsample=up), iters),
        "postprocess_overlay_ms": _best_ms(
            lambda: kernels.postprocess(logits, (H, W), spec.palette, frame, 0.5, upsample=up),
            iters,
        ),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--frame", default="960x540", help="frame WxH")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--json", help="write the times here (else stdout)")
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.frame.lower().split("x"))
    out = measure(a.model, (h, w), a.iters)
    text = json.dumps(out, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
