"""The GPU figures of issue 15, measured in one run on whatever GPU this machine has.

    python benchmarks/gpu_figures.py --out OUT/gpu.json [--checkpoint CKPT] [--clip CLIP]

- model-only latency of ``mbv3_unet_small`` at 352x480, device-resident (a synchronise after
  each): FP32 eager, FP16 eager, FP16 + CUDA graph, against PyTorch eager;
- labels: graph == eager exactly; FP16 against FP32;
- one stream through the whole GPU pipeline without a video sink (pre-rendered 960x540 frames,
  no decoding), and on the clip beside its decode-only rate;
- 8 sources batched into one inference, FPS together;
- ``bisenetv2`` at 512x1024, FP16 + CUDA graph, model-only FPS.

Each section writes its results into the JSON as soon as it has them (a timeout keeps what is
done) and records its error instead of stopping the rest. Without ``--checkpoint`` the model is
trained for 20 s on synthetic scenes (speed does not depend on the weights; agreement figures
are then on a briefly trained model); if that fails, an untrained one is used and the
``checkpoint`` section says why.

``--rehearse`` (benchmarks/gpu_check.sh --rehearse, in CI): the same sections on the CPU at a
tiny scale, so every import and call is exercised; a section that needs a GPU records
``{"skipped": "no GPU", "rehearsal": <what its CPU run returned>}``, and the JSON holds every
section a GPU run writes (``SECTIONS``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

RESULTS: dict = {}
DEVICE = "cuda"  # --device cpu: a smoke run of this script's plumbing where there is no GPU
REHEARSAL = False  # --rehearse: GPU sections run on the CPU and say they were skipped
# Every section of a GPU run, in order (the clip's two only with --clip); True: needs a GPU.
SECTIONS = {
    "machine": False,
    "checkpoint": False,
    "model_only_ms": True,
    "labels": True,
    "stream_1_source_prerendered": True,
    "clip_decode_only": False,
    "stream_1_source_clip": True,
    "stream_8_sources_batched": True,
    "stream_8_sources_unbatched": True,
    "bisenetv2_512x1024_fp16_graph": True,
    "confidence_fp16_graph": True,
}


def gpu(**options) -> dict:
    """Segmenter options that need a GPU (precision, cuda_graph), dropped on a smoke run."""
    return {"device": DEVICE, **(options if DEVICE != "cpu" else {})}


def _save(out: Path) -> None:
    out.write_text(json.dumps(RESULTS, indent=2, default=str))


def section(name: str, out: Path):
    def wrap(fn):
        def run(*args):
            t0 = time.perf_counter()
            try:
                value = fn(*args)
                RESULTS[name] = (
                    {"skipped": "no GPU", "rehearsal": value}
                    if REHEARSAL and SECTIONS[name]
                    else value
                )
            except Exception as e:  # record and go on: the other figures still count
                RESULTS[name] = {
                    "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc()[-2000:],
                }
            RESULTS[name + "_seconds"] = round(time.perf_counter() - t0, 1)
            _save(out)
            print(name, json.dumps(RESULTS[name], default=str)[:600], flush=True)
            return RESULTS[name]

        return run

    return wrap


def machine() -> dict:
    import onnxruntime
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (smoke run)"
    return {
        "gpu": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def checkpoint(path: str | None, work: Path, seconds: float) -> dict:
    """The model every section measures: ``path``, or ``seconds`` of training on synthetic
    scenes, or (if that fails) an untrained one, with the reason."""
    if path:
        return {"path": path, "trained": "given"}
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.trainer import train

    try:
        train(
            TrainConfig(
                data="synthetic:64:352x480",
                model="mbv3_unet_small",
                out=str(work / "ckpt"),
                minutes=seconds / 60,
                input_size=(352, 480),
                device=DEVICE,
                workers=0,
                quiet=True,
            )
        )
        return {"path": str(work / "ckpt" / "best.pt"), "trained": f"{seconds:g} s"}
    except Exception as e:  # the speed figures do not depend on the weights
        from edgeseg.bench.zoo import _untrained_checkpoint

        ckpt = _untrained_checkpoint("mbv3_unet_small", "synthetic:8", work / "untrained.pt")
        return {"path": str(ckpt), "trained": f"no: {type(e).__name__}: {e}"}


def _fallback(work: Path) -> Path:
    from edgeseg.bench.zoo import _untrained_checkpoint

    return _untrained_checkpoint("mbv3_unet_small", "synthetic:8", work / "untrained.pt")


def frames_of(clip: str | None, n: int = 16) -> list[np.ndarray]:
    from edgeseg.streaming.sources import open_source

    src = open_source(clip or "synthetic:960x540@0")
    try:
        frames = [f.image for f, _ in zip(src, range(n))]
    finally:
        src.close()
    return frames


def model_only(ckpt: str, calls: int = 500) -> dict:
    from edgeseg.bench.baselines import torch_eager
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.timing import summarize, time_calls

    out = {"torch_eager_fp32": torch_eager(ckpt, min(30, calls), min(300, calls), DEVICE)}
    variants = {
        "fp32": {},
        "fp16": {"precision": "fp16"},
        "fp32_graph": {"cuda_graph": True},
        "fp16_graph": {"precision": "fp16", "cuda_graph": True},
    }
    for name, kw in variants.items():
        with Segmenter(ckpt, **gpu(**kw)) as seg:
            if seg._gpu is None:  # smoke run: the host path
                x = np.zeros((1, 3, *seg.spec.input_hw), np.float32)
                out[name] = summarize(time_calls(lambda: seg.backend.infer(x), 2, 5))  # noqa: B023
            else:
                out[name] = summarize(seg._gpu.time_model(30, calls))
    return out


def labels(ckpt: str, frames: list[np.ndarray]) -> dict:
    from edgeseg.runtime.segmenter import Segmenter

    eager, graph = Segmenter(ckpt, **gpu()), Segmenter(ckpt, **gpu(cuda_graph=True))
    half = Segmenter(ckpt, **gpu(precision="fp16", cuda_graph=True))
    same, agree = [], []
    for _ in range(3):  # eager, capture, replay
        for f in frames:
            a = eager(f).labels
            same.append(float((a == graph(f).labels).mean()))
            agree.append(float((a == half(f).labels).mean()))
    return {
        "graph_label_agreement_min": min(same),  # 1.0 unless cuDNN chose differently
        "fp16_label_agreement_min": min(agree),
        "fp16_label_agreement_mean": float(np.mean(agree)),
        "frames": len(same),
    }


def stream(ckpt: str, sources: list[str], frames: int, batch: int | None = None) -> dict:
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.streaming.pipeline import StreamPipeline

    with Segmenter(ckpt, **gpu(precision="fp16", cuda_graph=True)) as seg:
        pipe = StreamPipeline(
            seg, sources, sinks=[], mode="every-frame", max_frames=frames, batch=batch
        )
        rep = pipe.run()
    return {
        "fps": rep["fps"],
        "frames": rep["frames_out"],
        "batch": pipe.batch,
        "latency_ms": rep["latency_ms"],
        "stages_ms": rep["stages_ms"],
    }


def confidence(ckpt: str, frames: list[np.ndarray], calls: int) -> dict:
    """What per-pixel confidence adds to a GPU step (FP16, CUDA graph; the two Segmenters
    alternating frame by frame), and how it compares with the CPU path's where labels agree."""
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.timing import summarize

    segs = {
        "plain": Segmenter(ckpt, **gpu(precision="fp16", cuda_graph=True)),
        "confidence": Segmenter(ckpt, **gpu(precision="fp16", cuda_graph=True), confidence=True),
    }
    times: dict[str, list[float]] = {name: [] for name in segs}
    for i in range(calls):
        for name, seg in segs.items():
            t0 = time.perf_counter()
            seg(frames[i % len(frames)])
            times[name].append((time.perf_counter() - t0) * 1e3)
    got = segs["confidence"](frames[0])
    want = Segmenter(ckpt, device="cpu", confidence=True)(frames[0])
    same = got.labels == want.labels
    diff = np.abs(got.confidence.astype(int) - want.confidence)[same]
    out = {name: summarize(v) for name, v in times.items()}
    return {
        **out,
        "extra_ms_p50": round(out["confidence"]["p50"] - out["plain"]["p50"], 4),
        "labels_agree_with_cpu": float(same.mean()),
        "confidence_equal_where_labels_agree": float((diff == 0).mean()),
        "confidence_max_difference": int(diff.max()) if diff.size else 0,
    }


def decode_only(clip: str, frames: int | None = None) -> dict:
    from edgeseg.streaming.sources import open_source

    src = open_source(clip, frames)
    t0, n = time.perf_counter(), 0
    while src.read() is not None:
        n += 1
    src.close()
    return {"fps": n / (time.perf_counter() - t0), "frames": n}


def bisenet(work: Path) -> dict:
    from edgeseg.bench.zoo import _untrained_checkpoint
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.timing import summarize

    ckpt = _untrained_checkpoint(
        "bisenetv2", "synthetic:8", work / "bisenet.pt", input_hw=(512, 1024)
    )
    with Segmenter(ckpt, **gpu(precision="fp16", cuda_graph=True)) as seg:
        s = summarize(seg._gpu.time_model(30, 300) if seg._gpu else [1.0])
    return {"model_only_ms": s, "fps": round(1e3 / s["p50"], 1), "input": [512, 1024]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--clip")
    p.add_argument("--device", default="cuda", help="cpu: a quick smoke run of the plumbing")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every frame count")
    p.add_argument(
        "--rehearse", action="store_true", help="on a CPU: every section, tiny, GPU ones skipped"
    )
    a = p.parse_args()
    global DEVICE, REHEARSAL
    REHEARSAL = a.rehearse
    if a.rehearse:
        a.device, a.scale = "cpu", min(a.scale, 0.002)
    DEVICE = a.device
    n = lambda frames: max(2, int(frames * a.scale))  # noqa: E731
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        section("machine", out)(machine)()
        got = section("checkpoint", out)(checkpoint)(a.checkpoint, work, 2 if a.rehearse else 20)
        ckpt = got.get("path") or str(_fallback(work))
        frames = frames_of(a.clip, 2 if a.rehearse else 16)
        section("model_only_ms", out)(model_only)(ckpt, n(500))
        section("labels", out)(labels)(ckpt, frames)
        section("stream_1_source_prerendered", out)(stream)(ckpt, ["synthetic:960x540@0"], n(3000))
        if a.clip or a.rehearse:  # a rehearsal decodes the synthetic camera instead
            clip = a.clip or "synthetic:960x540@0"
            section("clip_decode_only", out)(decode_only)(clip, n(100000) if a.rehearse else None)
            section("stream_1_source_clip", out)(stream)(ckpt, [clip], n(100000))
        section("stream_8_sources_batched", out)(stream)(ckpt, ["synthetic:960x540@0"] * 8, n(1000))
        section("stream_8_sources_unbatched", out)(stream)(
            ckpt, ["synthetic:960x540@0"] * 8, n(1000), 1
        )
        section("bisenetv2_512x1024_fp16_graph", out)(bisenet)(work)
        section("confidence_fp16_graph", out)(confidence)(ckpt, frames, n(500))


if __name__ == "__main__":
    main()
