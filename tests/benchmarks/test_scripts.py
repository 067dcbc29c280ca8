"""Smoke tests of the scripts in benchmarks/: each runs as a user runs it (a subprocess from the
repository root) with tiny settings (few frames, seconds of training, the tiny model), and what it
promises to print or write is checked, so a change that breaks a script fails the suite.

The figures themselves are not checked (they need the real model, the whole clip and a quiet
machine); the shape of the output is, and the counts that follow from the arguments."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import median

import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
SHARED = REPO.parent / "shared" / "data"
TINY_TRAIN = ["--input-size", "64x96", "--crop", "64x96", "--batch-size", "2", "--workers", "0"]
# Training budgets count from before the optimiser is built (seconds of imports on a busy 2-core
# machine): a budget much under 9 s may end before the first step, and then no best.pt is written.
TINY_MINUTES = "0.15"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _env(**extra) -> dict[str, str]:
    """This environment, with this interpreter's ``edgeseg`` and ``python`` first on PATH (the
    shell scripts call both by name)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(cmd: list, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    return proc


def _script(name: str, *args, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return _run([sys.executable, BENCH / name, *args], timeout=timeout, **env)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_camvid(camvid_root, tmp_path_factory) -> Path:
    """CamVid's layout with 4 train and 2 val frames (links into the shared data)."""
    root = tmp_path_factory.mktemp("camvid")
    (root / "classes.json").symlink_to(camvid_root / "classes.json")
    for split, n in (("train", 4), ("val", 2)):
        for folder in (split, f"{split}annot"):
            (root / folder).mkdir()
        for image in sorted((camvid_root / split).glob("*.png"))[:n]:
            (root / split / image.name).symlink_to(image)
            (root / f"{split}annot" / image.name).symlink_to(
                camvid_root / f"{split}annot" / image.name
            )
    return root


# ---------------------------------------------------------------------------- training


def test_ablation_trains_skips_finished_runs_and_summarises(tmp_path):
    out = tmp_path / "ablation"
    # a finished run is not repeated: this one only enters the summary
    done = out / f"boundary-m{TINY_MINUTES}-s0"
    done.mkdir(parents=True)
    finished = {"val_miou": 0.5, "per_class_iou": {"Pole": 0.25}, "iterations": 7}
    (done / "metrics.json").write_text(json.dumps(finished))
    args = ["--minutes", TINY_MINUTES, "--seeds", "0", "--configs", "default", "boundary"]
    args += ["--data", "synthetic:8", "--out", out, "--", *TINY_TRAIN]
    lines = _script("ablation.py", *args).stdout.splitlines()

    commands = [line for line in lines if line.startswith("-m edgeseg train")]
    assert len(commands) == 1
    assert f"--data synthetic:8 --minutes {TINY_MINUTES} --seed 0" in commands[0]
    assert "--input-size 64x96" in commands[0]
    run = out / f"default-m{TINY_MINUTES}-s0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] >= 1 and 0 <= metrics["val_miou"] <= 1
    assert (run / "best.pt").is_file()

    rows = {r[0]: r for r in _table_rows(lines)}
    assert set(rows) == {"default", "boundary"}
    miou, thin = metrics["val_miou"], _load("ablation").THIN
    assert rows["default"] == [
        *["default", f"{TINY_MINUTES} min", "1", f"{miou:.4f}", "+0.0"],
        *[f"{metrics['per_class_iou'].get(c, 0.0):.3f}" for c in thin],
        str(metrics["iterations"]),
    ]
    want = ["boundary", f"{TINY_MINUTES} min", "1", "0.5000", f"{100 * (0.5 - miou):+.1f}"]
    assert rows["boundary"] == [*want, "0.250", "0.000", "0.000", "0.000", "7"]

    # --summary prints the same table without training
    again = _script("ablation.py", "--summary", "--out", out).stdout.splitlines()
    assert again == [line for line in lines if line.startswith("|")]


def _table_rows(lines: list[str]) -> list[list[str]]:
    """The data rows of a markdown table: cells stripped, header and rule left out."""
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| configuration |") and table[1].startswith("|---")
    return [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]


def test_every_ablation_configuration_is_a_valid_train_command(tmp_path):
    """The run above trains one configuration; the flags of every one must still be flags
    ``edgeseg train`` takes, for an architecture that builds with its keyword arguments."""
    from edgeseg._config import from_args
    from edgeseg.cli import build_parser
    from edgeseg.models import create_model
    from edgeseg.train.config import TrainConfig

    ablation = _load("ablation")
    assert (REPO / ablation.DASHCAM).resolve() == (SHARED / "video/dashcam_960x540.mp4").resolve()
    assert ablation.DATA == "camvid:../shared/data/camvid"
    for name, flags in ablation.CONFIGS.items():
        ns = build_parser().parse_args(
            ["train", "--data", "synthetic:8", "--minutes", "1", "--out", str(tmp_path), *flags]
        )
        cfg = from_args(TrainConfig, ns)
        cfg.check()
        assert create_model(cfg.model, 11, **cfg.model_kwargs) is not None, name


@needs_bash
def test_camvid_30min_trains_exports_evaluates_and_tabulates(tiny_camvid, tmp_path):
    out = tmp_path / "runs"
    proc = _run(
        [BENCH / "camvid_30min.sh", "mbv3_unet_small"],
        timeout=300,
        CAMVID=tiny_camvid,
        OUT=out,
        MINUTES=TINY_MINUTES,
        SEEDS="0",
        EXTRA=" ".join([*TINY_TRAIN, "--quiet"]),
    )
    run = out / "mbv3_unet_small-s0"
    for name in ("best.pt", "model.onnx", "metrics.json", "eval_pt.json", "eval_onnx.json"):
        assert (run / name).is_file(), name
    train = json.loads((run / "metrics.json").read_text())
    assert train["data"] == f"camvid:{tiny_camvid}" and train["input_size"] == [64, 96]
    assert train["iterations"] >= 1
    evals = [json.loads((run / f"eval_{k}.json").read_text()) for k in ("pt", "onnx")]
    for e in evals:
        assert 0 <= e["miou"] <= 1 and "Pole" in e["per_class_iou"]
    assert abs(evals[0]["miou"] - evals[1]["miou"]) < 0.02  # the FP32 export agrees

    lines = proc.stdout.splitlines()
    header = lines.index(
        f"{'run':34s} {'train val mIoU':>15s} {'eval .pt':>9s} {'eval .onnx':>10s} {'Pole':>6s}"
    )
    assert lines[header + 1 :] == [
        f"{str(run):34s} {train['val_miou']:15.4f} {evals[0]['miou']:9.4f} "
        f"{evals[1]['miou']:10.4f} {evals[0]['per_class_iou']['Pole']:6.3f}"
    ]


@pytest.fixture(scope="module")
def camvid_checkpoint(tiny_camvid, tmp_path_factory) -> Path:
    """mbv3_unet_small trained one epoch on the tiny CamVid at 64x96."""
    from edgeseg.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("camvid_run")
    train(
        TrainConfig(
            data=f"camvid:{tiny_camvid}",
            model="mbv3_unet_small",
            out=str(out),
            epochs=1,
            batch_size=2,
            input_size=(64, 96),
            crop=(64, 96),
            workers=0,
            quiet=True,
        )
    )
    return out / "best.pt"


PRECISION_MODELS = [
    "model",
    "model.fp16",
    "model.int8-trt",
    "model.int8-cpu",
    "model.int8-qat-trt",
    "model.int8-qat-cpu",
]


@needs_bash
@pytest.mark.slow  # 2 QAT runs, 9 evals, 6 exports and a bench: ~1.5 min at the smallest
def test_precision_table_exports_evaluates_benches_every_precision(
    camvid_checkpoint, tiny_camvid, tmp_path
):
    out = tmp_path / "precision"
    proc = _run(
        [BENCH / "precision_table.sh", camvid_checkpoint, out],
        timeout=480,
        CAMVID=tiny_camvid,
        QAT_EPOCHS="1",
        BENCH_FRAMES="3",
    )
    for m in PRECISION_MODELS:
        assert (out / f"{m}.onnx").is_file(), m
    assert (out / "qat.pt").is_file()
    for name in ["fp32", "fp16", "int8_trt", "int8_cpu", "qat_trt", "qat_cpu"]:
        assert json.loads((out / f"export_{name}.json").read_text()), name
    miou = {m: json.loads((out / f"eval_{m}.json").read_text())["miou"] for m in PRECISION_MODELS}
    exact = {
        m: json.loads((out / f"eval_exact_{m}.json").read_text())["miou"]
        for m in ("model.int8-trt", "model.int8-qat-trt")
    }
    assert 0 <= json.loads((out / "eval_qat_fp32.json").read_text())["miou"] <= 1

    bench = json.loads((out / "bench.json").read_text())["results"]
    timed = {Path(r["file"]).name: r for r in bench if "skipped" not in r}
    want = {"model.onnx", "model.int8-cpu.onnx", "model.fp16.onnx", "model.int8-qat-cpu.onnx"}
    assert set(timed) == want
    assert all(r["model_only_ms"]["p50"] > 0 for r in timed.values())

    lines = proc.stdout.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("model "))
    rows = [line.split() for line in lines[top + 1 :]]
    assert [r[0] for r in rows] == [f"{m}.onnx" for m in PRECISION_MODELS]
    for m, row in zip(PRECISION_MODELS, rows):
        assert float(row[1]) == pytest.approx(miou[m], abs=5e-5), m
        if m in exact:
            assert float(row[3]) == pytest.approx(exact[m], abs=5e-5), m
        else:
            assert row[3] == "-", m
        p50 = timed.get(f"{m}.onnx", {}).get("model_only_ms", {}).get("p50")
        assert row[-1] == (f"{p50:.2f}" if p50 is not None else "-"), m


# ---------------------------------------------------------------------------- ONNX Runtime


def test_ort_profile_sums_kernel_time_per_operator(tiny_onnx):
    lines = _script("ort_profile.py", tiny_onnx, "--runs", "2").stdout.splitlines()
    head = re.fullmatch(re.escape(str(tiny_onnx)) + r": (\d+\.\d\d) ms a run in kernels", lines[0])
    assert head, lines[0]
    ops = [re.fullmatch(r"  (\w+)\s+(\d+\.\d\d) ms", line) for line in lines[1:]]
    assert ops and all(ops) and len(ops) <= 10, lines
    assert "Conv" in [m[1] for m in ops]
    times = [float(m[2]) for m in ops]
    assert times == sorted(times, reverse=True)
    assert sum(times) <= float(head[1]) + 0.01 * len(times)  # the top ten of the total


# ---------------------------------------------------------------------------- streaming


def test_smoothing_measures_flicker_and_cost_on_the_first_frames(tiny_onnx, dashcam, tmp_path):
    out = tmp_path / "smoothing.json"
    args = ["--model", tiny_onnx, "--clip", dashcam, "--frames", "6", "--repeats", "2"]
    proc = _script("smoothing.py", *args, "--json", out)
    res = json.loads(out.read_text())
    assert res["frames"] == 6 and res["repeats"] == 2 and res["smooth"] == 0.5
    assert res["frame_hw"] == [540, 960]
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    classes = session.get_outputs()[0].shape[1]
    assert len(res["scores_shape"]) == 4 and res["scores_shape"][:2] == [1, classes]
    assert 0 <= res["flicker_smoothed"] <= 1 and 0 < res["flicker_plain"] <= 1
    assert res["post_ms"] > 0 and res["post_smoothed_ms"] > 0
    assert res["extra_ms"] == pytest.approx(res["post_smoothed_ms"] - res["post_ms"], abs=2e-4)
    assert proc.stdout.startswith(
        f"flicker {res['flicker_plain']:.4f} -> {res['flicker_smoothed']:.4f} at --smooth 0.5"
    )
    assert "frames 960x540)" in proc.stdout


def test_confidence_times_its_cost_on_the_first_frames(tiny_onnx, dashcam, tmp_path):
    out = tmp_path / "confidence.json"
    args = ["--model", tiny_onnx, "--clip", dashcam, "--frames", "3", "--repeats", "2"]
    proc = _script("confidence.py", *args, "--json", out)
    res = json.loads(out.read_text())
    assert res["frames"] == 3 and res["repeats"] == 2 and res["frame_hw"] == [540, 960]
    assert res["post_ms"] > 0 and res["post_confidence_ms"] > 0 and 0 < res["mean_confidence"] <= 1
    plain, conf = res["frame_ms"], res["frame_confidence_ms"]  # each frame's quickest of 2
    assert len(plain) == len(conf) == 3 and res["post_ms"] == pytest.approx(median(plain), abs=2e-4)
    diffs = [c - p for p, c in zip(plain, conf)]
    assert res["extra_ms"] == pytest.approx(median(diffs), abs=3e-4)
    assert proc.stdout.startswith(f"post-processing {res['post_ms']:.3f} -> ")


@pytest.mark.parametrize("given_model", [True, False], ids=["model", "untrained-export"])
def test_stream_batch_runs_batched_and_unbatched(tiny_onnx, dashcam, tmp_path, given_model):
    out = tmp_path / "batch.json"
    repeats = 2 if given_model else 1
    args = ["--clip", dashcam, "--sources", "2", "--repeats", repeats, "--frames", "3"]
    if given_model:
        args += ["--model", tiny_onnx]
    proc = _script("stream_batch.py", *args, "--json", out)
    res = json.loads(out.read_text())
    assert res["sources"] == 2 and res["clip"] == str(dashcam)
    assert res["model"] == (str(tiny_onnx) if given_model else "untrained mbv3_unet_small 352x480")
    for name, batch in (("unbatched", 1), ("batched", 2)):
        runs = res["runs"][name]
        assert len(runs) == repeats
        assert all(r["frames"] == 2 * 3 and r["batch"] == batch for r in runs), runs
        assert all(r["fps"] > 0 and r["infer_p50_ms"] > 0 for r in runs)
    med = res["median_fps"]
    assert res["batched_over_unbatched"] == round(med["batched"] / med["unbatched"], 3)
    assert proc.stdout.count("run ") == 2 * repeats


def test_stream_soak_samples_memory_over_every_frame(tiny_onnx, tmp_path):
    out = tmp_path / "soak.json"
    args = ["--model", tiny_onnx, "--frames", "60", "--size", "160x96", "--warmup", "20"]
    proc = _script("stream_soak.py", *args, "--sample-every", "10", "--json", out)
    res = json.loads(out.read_text())
    assert res["frames_out"] == 60
    assert [i for i, _ in res["samples"]] == list(range(0, 60, 10))
    rss = dict(res["samples"])
    assert res["rss_mb_after_warmup"] == round(rss[20], 1)
    assert res["rss_mb_end"] == round(rss[50], 1)
    assert res["rss_growth_mb"] == round(rss[50] - rss[20], 2)
    assert res["fps"] > 0 and res["latency_ms"]["p50"] > 0
    printed = json.loads(proc.stdout)
    assert printed == {k: v for k, v in res.items() if k != "samples"}


@pytest.mark.parametrize("reader", ["ffmpeg", "gstreamer"])
def test_rtsp_latency_reports_glass_to_label(rtsp_ready, dashcam, tiny_onnx, tmp_path, reader):
    if reader == "gstreamer" and shutil.which("gst-launch-1.0") is None:
        pytest.skip("the gstreamer reader needs gst-launch-1.0")
    out = tmp_path / "latency.json"
    args = ["--model", tiny_onnx, "--clip", dashcam, "--minutes", "0.05", "--size", "320x180"]
    proc = _script("rtsp_latency.py", *args, "--reader", reader, "--json", out, timeout=90)
    res = json.loads(out.read_text())
    assert json.loads(proc.stdout) == res
    assert (res["reader"], res["transport"], res["size"]) == (reader, "tcp", "320x180")
    assert res["minutes"] == 0.05 and res["fps_sent"] == 25.0
    # 3 s at 25 fps: 75 frames sent, give or take the start
    assert 10 <= res["frames_out"] + res["frames_dropped"] <= 110, res
    assert res["frames_out"] >= 10 and res["fps_out"] > 0
    for window in ("glass_to_label_ms", "first_minute_ms", "last_minute_ms"):
        assert 0 < res[window]["p50"] <= res[window]["p99"], window
    assert res["p99_over_p50"] >= 1
    assert res["first_minute_ms"] == res["glass_to_label_ms"]  # the whole run is one minute
    assert {"decode", "pre", "infer", "post"} <= set(res["stages_ms"])


def test_rtsp_soak_survives_a_server_death_in_order(rtsp_ready, dashcam, tiny_onnx, tmp_path):
    out = tmp_path / "soak.json"
    args = ["--model", tiny_onnx, "--clip", dashcam, "--frames", "60", "--cycles", "1"]
    args += ["--size", "320x180", "--down", "0.5", "--warmup", "20", "--sample-every", "10"]
    proc = _script("rtsp_soak.py", *args, "--json", out, timeout=120)
    res = json.loads(out.read_text())
    assert json.loads(proc.stdout) == {k: v for k, v in res.items() if k != "samples"}
    assert res["frames_out"] >= 60 and res["exit_code"] == 0
    assert res["reconnects"] >= 1 and res["outage_s"] > 0
    assert res["in_order"] is True and res["unreadable_stamps"] == 0
    frames = [s["frames"] for s in res["samples"]]
    assert frames[:6] == [10, 20, 30, 40, 50, 60]
    assert res["warmup"]["frames"] == 20
    for key in ("rss_mb", "fds", "threads"):
        assert res["warmup"][key] > 0 and res["end_streaming"][key] > 0
    assert res["after_stop"]["children"] == 0  # no reader process left behind


# ---------------------------------------------------------------------------- kernels


def test_kernel_benchmarks_run_every_body_and_tabulate_speedups(tmp_path):
    """benchmarks/test_kernels.py through pytest, one round a benchmark: every body runs (with
    its assertions) and benchmarks/conftest.py prints and writes the ratio table."""
    from edgeseg.runtime import kernels

    out = tmp_path / "speedups.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        BENCH / "test_kernels.py",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    cmd += ["--benchmark-min-rounds=1", "--benchmark-max-time=0.001", "--benchmark-warmup=off"]
    proc = _run(cmd, timeout=120, EDGESEG_BENCH_JSON=out)
    counts = {w: int(n) for n, w in re.findall(r"(\d+) (passed|skipped|failed|error)", proc.stdout)}
    sizes = list(_load("test_kernels").SIZES)
    assert sum(counts.values()) == 5 * len(sizes) and set(counts) <= {"passed", "skipped"}
    # 2 baselines and 2 C++ kernels a size; the CUDA one (the fifth) skips without a GPU
    cpu_ext = kernels._cpu is not None
    assert counts["passed"] - (4 if cpu_ext else 2) * len(sizes) in (0, len(sizes)), counts
    if not cpu_ext:
        return
    rows = json.loads(out.read_text())
    assert sorted(r["group"] for r in rows) == sorted(
        f"{stage} {size}" for stage in ("preprocess", "postprocess+overlay") for size in sizes
    )
    for r in rows:
        assert "edgeseg_cpu" in r["candidate"] and r["candidate_ms"] > 0 < r["baseline_ms"]
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["candidate_ms"])
    assert "speed-up against the baseline (median, same run)" in proc.stdout
