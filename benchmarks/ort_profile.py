"""Where ONNX Runtime's CPU time goes, per operator type, for one or more ONNX models.

    python benchmarks/ort_profile.py MODEL.onnx [MODEL.onnx ...] [--runs 30]

Each model runs ``--runs`` times on a random input of its own size with ONNX Runtime's profiler
on (two intra-op threads, like ``edgeseg``); the kernel times are summed per operator type. Used
to see why an INT8 file is slower than its FP32 twin (benchmarks/RESULTS.md, precision section).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def op_times_ms(path: str, runs: int) -> collections.Counter:
    """Milliseconds a run per operator type."""
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        sess.run(None, {inp.name: x})  # warm-up, before profiling counts
        for _ in range(runs):
            sess.run(None, {inp.name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    times: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["args"]["op_name"]] += e["dur"] / 1000 / (runs + 1)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    for path in a.models:
        times = op_times_ms(path, a.runs)
        print(f"{path}: {sum(times.values()):.2f} ms a run in kernels")
        for op, ms in times.most_common(10):
            print(f"  {op:24s} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
