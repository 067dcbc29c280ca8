"""Several cameras, one model: batched against unbatched inference, alternating runs.

    python benchmarks/stream_batch.py [--model M.onnx] [--sources 4] [--repeats 3] [--frames N]
        [--json OUT]

Runs ``StreamPipeline`` over N copies of the dash-cam clip in every-frame mode (no sink: the
pipeline's own throughput), once with one frame per inference (``batch=1``) and once with one
frame per source in each inference (``batch=--sources``; the GPU default, not the CPU one),
alternating, and reports the median aggregate FPS of each and their ratio. Without ``--model``
an untrained ``mbv3_unet_small`` at 352x480 is exported (speed does not depend on the weights).
``--frames N`` stops each source after N frames (default: the whole clip).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

CLIP = Path(__file__).resolve().parents[2] / "shared/data/video/dashcam_960x540.mp4"


def untrained_onnx(work: Path) -> str:
    from edgeseg.bench.zoo import _untrained_checkpoint
    from edgeseg.export.onnx import export_onnx

    ckpt = _untrained_checkpoint("mbv3_unet_small", "synthetic:8", work / "m.pt")
    return export_onnx(ckpt, work)["path"]


def run_once(model: str, sources: list[str], batch: int, frames: int | None = None) -> dict:
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.streaming.pipeline import StreamPipeline

    with Segmenter(model) as seg:
        pipe = StreamPipeline(
            seg, sources, sinks=[], mode="every-frame", batch=batch, max_frames=frames
        )
        rep = pipe.run()
    return {
        "fps": rep["fps"],
        "frames": rep["frames_out"],
        "batch": pipe.batch,
        "infer_p50_ms": rep["stages_ms"]["infer"]["p50"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--clip", default=str(CLIP))
    p.add_argument("--sources", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frames", type=int, help="frames from each source (default: the whole clip)")
    p.add_argument("--json")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or untrained_onnx(Path(tmp))
        runs: dict[str, list[dict]] = {"unbatched": [], "batched": []}
        for r in range(a.repeats):
            for name, batch in (("unbatched", 1), ("batched", a.sources)):
                res = run_once(model, [a.clip] * a.sources, batch, a.frames)
                runs[name].append(res)
                print(f"run {r + 1} {name}: {res}", flush=True)
    med = {k: statistics.median(x["fps"] for x in v) for k, v in runs.items()}
    out = {
        "sources": a.sources,
        "clip": a.clip,
        "model": a.model or "untrained mbv3_unet_small 352x480",
        "median_fps": med,
        "batched_over_unbatched": round(med["batched"] / med["unbatched"], 3),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
