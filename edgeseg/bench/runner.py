"""``edgeseg bench``: every model x backend x precision measured the same way, with its baselines.

For each configuration, in a fresh process (so peak memory is its own):

- params and GFLOPs (of the file that runs);
- model-only latency (p50/p90/p99, throughput) of ``backend.infer`` on a preprocessed frame;
- the end-to-end pipeline (:class:`~edgeseg.streaming.pipeline.StreamPipeline`, every-frame mode,
  the overlay recorded to an mp4): FPS, latency p50/p99 from capture, per-stage p50/p99;
- peak RSS (and device memory on a GPU).

Per model, also in its own process, the baselines: the naive single-thread loop on the same source
and frames, PyTorch eager (when the checkpoint is known) and, for engines, TensorRT GPU compute
time.

The spawned measuring processes import this module: it imports PyTorch (and the export chain,
which needs it) inside the functions that use them, so an ONNX configuration's peak memory
never includes PyTorch.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from edgeseg.bench.config import BenchConfig
from edgeseg.errors import EdgesegError, did_you_mean
from edgeseg.export.names import exported_for
from edgeseg.runtime.backends.onnxruntime import read_onnx_spec

PRECISIONS = ("fp32", "fp16", "int8")
SCHEMA = "edgeseg-bench-v1"


class Skip(Exception):
    """A configuration that cannot run here; the reason goes in the report."""


def normalise_source(source: str) -> str:
    """``synthetic`` benchmarks unpaced at 960x540 (the dash-cam size); files must exist."""
    if source == "synthetic":
        return "synthetic:960x540@0"
    if source.startswith("synthetic:"):
        return source if "@" in source else source + "@0"
    if "://" not in source and "!" not in source and not Path(source).exists():
        raise EdgesegError(f"bench source not found: {source}; pass a video file or 'synthetic'")
    return source


def _natural_backend(path: Path) -> str:
    """What ``--backend auto`` benches a file on: a checkpoint goes through its ONNX export (the
    deployment path); PyTorch eager is its baseline."""
    from edgeseg.runtime.backends import file_backend

    kind = file_backend(path)
    return "ort" if kind in (None, "torch") else kind


def _file_precision(path: Path) -> str:
    if path.suffix.lower() in (".pt", ".pth"):
        return "fp32"
    if path.suffix.lower() == ".onnx":
        return read_onnx_spec(path).precision
    from edgeseg.runtime.engine_files import read_sidecar

    return read_sidecar(path)["spec"].get("precision", "fp32")


class Artifacts:
    """The file each configuration runs: the user's own (the model given, or one exported beside
    it for that precision: ``model.int8-cpu.onnx`` next to ``model.onnx``), else one derived
    through the export chain (:func:`edgeseg.export.chain.export_model`), once, in a work folder
    that lives as long as the bench run. ``say`` tells the user which, as it happens."""

    def __init__(self, work: Path, calib: str | None, say=lambda msg: None) -> None:
        self.work, self.calib, self.say = work, calib, say
        self._cache: dict[tuple, Path] = {}

    def _export(self, model: Path, key: tuple, source: Path, **settings) -> Path:
        """The last file the chain writes for ``settings``, exported from ``source`` once."""
        from edgeseg.export.chain import export_model
        from edgeseg.export.config import ExportConfig

        if key not in self._cache:
            out = self.work / f"{len(self._cache)}_{model.stem}"
            what = ", ".join(k if v is True else f"{k} {v}" for k, v in settings.items() if v)
            self.say(f"deriving a model from {source.name} for this run ({what or 'fp32'})")
            res = export_model(ExportConfig(checkpoint=str(source), out=str(out), **settings))
            self._cache[key] = Path(res["files"][-1]["path"])
        return self._cache[key]

    def beside(self, model: Path, precision: str, backend: str) -> Path | None:
        """An exported file of ``precision`` next to ``model`` that ``backend`` runs, if any."""
        if precision not in ("int8", "fp16"):
            return None
        trt = backend == "trt"
        for name in exported_for(precision, "trt" if trt else "cpu", engine=trt):
            if (model.parent / name).is_file():
                self.say(f"measuring {model.parent / name} (exported beside {model.name})")
                return model.parent / name
        return None

    def _checkpoint(self, model: Path, why: str) -> Path:
        from edgeseg.bench.baselines import checkpoint_for

        ckpt = checkpoint_for(model)
        if ckpt is None:
            raise Skip(why)
        return ckpt

    def fp32_onnx(self, model: Path) -> Path:
        if model.suffix.lower() == ".onnx" and _file_precision(model) == "fp32":
            return model
        ckpt = self._checkpoint(model, f"no FP32 ONNX or checkpoint known for {model.name}")
        return self._export(model, ("fp32", model), ckpt)

    def file_for(self, model: Path, backend: str, precision: str) -> Path:
        if backend == "torch":
            if precision not in ("fp32", "fp16"):
                raise Skip("the torch backend runs checkpoints in fp32 (or fp16 on a GPU)")
            return self._checkpoint(model, "the torch backend runs checkpoints (.pt)")
        own = _file_precision(model)
        if (
            model.suffix.lower() != ".pt"
            and precision == own
            and _natural_backend(model) == backend
        ):
            return model
        trt = backend == "trt"
        key = (precision, backend, model)
        mine = self.beside(model, precision, backend)
        if mine is not None:
            return mine
        if precision == "fp32":
            if not trt:
                return self.fp32_onnx(model)
            return self._export(model, key, self.fp32_onnx(model), trt=True)
        if precision == "fp16":
            ckpt = self._checkpoint(model, "FP16 export needs the checkpoint (.pt)")
            return self._export(model, key, ckpt, fp16=True, trt=trt)
        fp32 = self.fp32_onnx(model)
        calib = self.calib or read_onnx_spec(fp32).source.get("dataset")
        if not calib:
            raise Skip("INT8 needs calibration frames: pass --calib SPEC|DIR|VIDEO")
        target = "trt" if trt else "cpu"
        self.say(
            f"no INT8 file beside {model.name}: quantizing one on 64 frames of {calib} for its "
            f"speed, its accuracy unchecked (export your own with 'edgeseg export --int8' to "
            f"measure that instead)"
        )
        settings = {"calib": calib, "calib_count": 64, "target": target, "trt": trt}
        return self._export(model, key, fp32, int8=True, max_drop=None, **settings)


# ---------------------------------------------------------------------------- in the child process


def _first_frame(source: str):
    from edgeseg.streaming.sources import open_source

    with open_source(source, max_frames=1) as src:
        f = src.read()
    if f is None:
        raise EdgesegError(f"bench source {source} gave no frame")
    return f.image


def measure_config(
    path: str,
    backend: str,
    device: str,
    source: str,
    frames: int,
    warmup: int,
    precision: str | None = None,
    options: dict[str, bool] | None = None,
    power: bool = False,
) -> dict[str, Any]:
    """Model-only and end-to-end figures of one model file on one backend (in a fresh process).

    ``options``: Segmenter options of the configuration (``cuda_graph``, ``compile``).
    ``power``: also the power over the pipeline's frames (:func:`_metered`).
    """
    from edgeseg.bench.measure import gpu_memory_mb, peak_rss_mb, rss_mb
    from edgeseg.runtime import kernels
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.timing import summarize, time_calls

    idle = _idle(device) if power else None
    rss_start = rss_mb()
    # Model-only: the file's whole graph, as any runtime would run it (the pipeline below lets
    # the post-processing kernel do an ONNX model's final resize instead).
    options = options or {}
    kw = {"backend": backend, "device": device, "precision": precision, **options}
    whole = Segmenter(path, fuse_resize=False, **kw)
    spec = whole.spec
    frame = _first_frame(source)
    if whole._gpu is not None:  # device-resident, like PyTorch eager with a synchronise
        samples = whole._gpu.time_model(warmup, frames)
    else:
        x = kernels.preprocess(frame, spec.input_hw, spec.input.mean, spec.input.std)
        samples = time_calls(lambda: whole.backend.infer(x), warmup, frames)
    model_only = summarize(samples)
    if whole.backend.name == "ort":
        whole.close()  # freed before the pipeline's session: peak RSS counts one model
        seg = Segmenter(path, **kw)
    else:
        seg = whole
    for _ in range(min(warmup, 5)):
        seg(frame, overlay_alpha=0.5)
    report, energy = _pipeline(seg, source, frames, power, idle)
    complexity = _complexity(Path(path), spec)
    res = {
        "backend": seg.backend.name,
        "device": seg.backend.device,
        "kernels": seg.kernels,
        "precision": seg.backend.caps.precision,
        "options": options,
        "input_size": list(spec.input_hw),
        **complexity,
        "model_only_ms": model_only,
        "model_only_samples_ms": [round(v, 4) for v in samples],
        "pipeline": {
            "fps": report["fps"],
            "frames": report["frames_out"],
            "latency_ms": {k: report["latency_ms"][k] for k in ("p50", "p99")},
            "stages_ms": report["stages_ms"],
        },
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_model_mb": rss_start,
        "gpu_mem_mb": gpu_memory_mb(seg.backend.device),
        **energy,
    }
    if seg.backend.name == "trt":
        from edgeseg.bench.baselines import tensorrt_compute

        res["tensorrt_compute_ms"] = tensorrt_compute(seg.backend, warmup, frames)
    seg.close()
    return res


def _idle(device: str) -> tuple[float, str] | None:
    """The idle draw of the power source ``device`` will be metered by (:func:`_metered`)."""
    from edgeseg.bench.power import idle_watts
    from edgeseg.device import resolve_device

    return idle_watts(str(resolve_device(device)) if device == "auto" else device)


def _pipeline(
    seg, source: str, frames: int, power: bool, idle: tuple[float, str] | None = None
) -> tuple[dict, dict[str, Any]]:
    """The stream pipeline end to end over ``frames`` frames of ``source`` (decode to encode):
    its report, and with ``power`` its energy figures (:func:`_metered`)."""
    from edgeseg.streaming.pipeline import StreamPipeline
    from edgeseg.streaming.sinks import VideoSink

    with tempfile.TemporaryDirectory() as d:
        pipe = StreamPipeline(
            seg,
            [source],
            sinks=[VideoSink(Path(d) / "out.mp4")],
            mode="every-frame",
            max_frames=frames,
        )
        return _metered(pipe, seg.backend.device, idle) if power else (pipe.run(), {})


def _metered(
    pipe, device: str, idle: tuple[float, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline's report, and its ``watts``, ``joules_per_frame`` and ``power_source`` (or
    ``power_none_why``) measured over the same frames: the end-to-end cost of a frame, decode
    and encode included, as a robot pays it; with ``idle`` (:func:`_idle`, from the same
    source), also above the idle draw (``idle_watts``, ``joules_per_frame_above_idle``)."""
    from edgeseg.bench.power import NoPower, open_meter

    try:
        meter = open_meter(device)
        idle_w = idle[0] if idle is not None and idle[1] == meter.source else None
        meter.start()
    except NoPower as e:
        return pipe.run(), {"power_none_why": str(e)}
    try:
        report = pipe.run()
    finally:
        try:
            reading = meter.stop()
        except NoPower as e:
            reading = e
    if isinstance(reading, NoPower):
        return report, {"power_none_why": str(reading)}
    return report, reading.row(report["frames_out"], idle_w)


def _complexity(path: Path, spec) -> dict[str, Any]:
    from edgeseg.bench.measure import onnx_complexity

    if path.suffix.lower() == ".onnx":
        return onnx_complexity(path)
    if path.suffix.lower() in (".pt", ".pth"):
        from edgeseg.models.checkpoint import load_model
        from edgeseg.models.complexity import count_gflops, count_params

        model, _, _ = load_model(path, "cpu")
        return {
            "params": count_params(model),
            "gflops": round(count_gflops(model, spec.input_hw), 4),
        }
    onnx = path.with_suffix(
        ".onnx"
    )  # an engine: count the ONNX it was built from, when it is beside it
    return onnx_complexity(onnx) if onnx.is_file() else {"params": None, "gflops": None}


def measure_baselines(
    model: str, fp32_onnx: str | None, source: str, frames: int, warmup: int, device: str
) -> dict[str, Any]:
    """The naive loop (CPU, FP32 ONNX) and PyTorch eager for one model (run in a fresh process)."""
    from edgeseg.bench.baselines import checkpoint_for, naive_loop, torch_eager

    out: dict[str, Any] = {}
    if fp32_onnx:
        with tempfile.TemporaryDirectory() as d:
            out["naive_loop"] = naive_loop(
                fp32_onnx, source, frames, Path(d) / "naive.mp4", warmup=min(warmup, 5)
            )
    ckpt = checkpoint_for(model)
    if ckpt is not None:
        dev = "cuda" if device.startswith("cuda") or (device == "auto" and _cuda()) else "cpu"
        out["torch_eager_ms"] = torch_eager(ckpt, warmup, frames, dev)
    return out


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


# ---------------------------------------------------------------------------- orchestration


def _call(isolate: bool, fn, *args):
    if not isolate:
        return fn(*args)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def machine_info() -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def _ratios(res: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    mo = res["model_only_ms"]["p50"]
    eager = base.get("torch_eager_ms", {}).get("p50")
    naive = base.get("naive_loop", {}).get("fps")
    trt = res.get("tensorrt_compute_ms", {}).get("p50")
    return {
        "model_only_vs_torch_eager": round(eager / mo, 3) if eager and mo else None,
        "pipeline_fps_vs_naive_loop": round(res["pipeline"]["fps"] / naive, 3) if naive else None,
        "model_only_vs_tensorrt_compute": round(trt / mo, 3) if trt and mo else None,
    }


def _check(cfg: BenchConfig) -> list[Path]:
    """The models of ``cfg``, after every setting is checked (errors name the setting)."""
    from edgeseg.runtime.backends import BACKENDS

    if not cfg.models:
        raise EdgesegError("give at least one model (.pt, .onnx or .engine)")
    if cfg.timed_frames < 1 or cfg.warmup < 0:
        raise EdgesegError("frames must be at least 1 and warmup at least 0")
    for b in cfg.backends:
        if b not in BACKENDS:
            hint = did_you_mean(b, BACKENDS)
            raise EdgesegError(f"unknown backend '{b}'{hint}; choose from {', '.join(BACKENDS)}")
    for p in cfg.precisions or []:
        if p not in PRECISIONS:
            hint = did_you_mean(p, PRECISIONS)
            raise EdgesegError(
                f"unknown precision '{p}'{hint}; choose from {', '.join(PRECISIONS)}"
            )
    models = [Path(m) for m in cfg.models]
    for m in models:
        if not m.is_file():
            raise EdgesegError(f"model not found: {m}; pass a .pt, .onnx or .engine file")
    return models


def _baselines(cfg: BenchConfig, arts: Artifacts, m: Path, source: str, progress) -> dict[str, Any]:
    try:
        fp32 = str(arts.fp32_onnx(m))
    except Skip:
        fp32 = None
    progress(f"baselines for {m.name}: naive loop, PyTorch eager")
    args = (str(m), fp32, source, cfg.timed_frames, cfg.warmup, cfg.device)
    return _call(cfg.isolate, measure_baselines, *args)


def _row(
    options: dict[str, bool],
    cfg: BenchConfig,
    arts: Artifacts,
    m: Path,
    backend: str,
    precision: str,
    source: str,
    base: dict[str, Any],
    progress,
) -> dict[str, Any]:
    """One configuration's row (or its ``skipped`` reason)."""
    row: dict[str, Any] = {
        "model": str(m),
        "name": m.stem,
        "backend_requested": backend,
        "precision_requested": precision,
        "options": options,
    }
    try:
        path = arts.file_for(m, backend, precision)
        extra = "".join(f", {k.replace('_', ' ')}" for k in options)
        progress(
            f"{path.name} [{backend}, {precision}{extra}]: model-only latency, then "
            f"{cfg.timed_frames} frames through the pipeline"
        )
        t0 = time.perf_counter()
        args = (str(path), backend, cfg.device, source, cfg.timed_frames, cfg.warmup)
        # --no-rebuild is no variant of the row (its options): it decides if a foreign engine runs
        loading = {**options, "rebuild": cfg.rebuild}
        measured = _call(cfg.isolate, measure_config, *args, precision, loading, cfg.power)
        row.update(measured, options=options)
        progress(
            f"  {row['model_only_ms']['p50']:.1f} ms model p50, {row['pipeline']['fps']:.1f} "
            f"FPS end to end ({time.perf_counter() - t0:.0f} s)"
        )
        derived = path.is_relative_to(arts.work)  # exported/quantized/built for this run
        row["file"] = f"{path.name} (derived from {m.name})" if derived else str(path)
        row["ratios"] = _ratios(row, base)
    except (Skip, EdgesegError) as e:
        row["skipped"] = str(e)
    return row


def run_bench(cfg: BenchConfig, progress=print) -> dict[str, Any]:
    """Measure every configuration of ``cfg``; returns the report (schema ``edgeseg-bench-v1``)."""
    models = _check(cfg)
    source = normalise_source(cfg.source)
    results, baselines = [], {}
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as work:
        arts = Artifacts(Path(work), cfg.calib, progress)
        for m in models:
            if cfg.baselines:
                baselines[str(m)] = _baselines(cfg, arts, m, source, progress)
            backends = [_natural_backend(m) if b == "auto" else b for b in cfg.backends]
            for backend in dict.fromkeys(backends):
                for precision in cfg.precisions or [_file_precision(m)]:
                    base = baselines.get(str(m), {})
                    for opts in cfg.variants(backend):
                        row = _row(opts, cfg, arts, m, backend, precision, source, base, progress)
                        results.append(row)
    return {
        "schema": SCHEMA,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_info(),
        "settings": {
            **asdict(cfg),
            "backends": cfg.backends,
            "precisions": cfg.precisions,
            "frames": cfg.timed_frames,
            "source": source,
        },
        "baselines": baselines,
        "results": results,
    }
