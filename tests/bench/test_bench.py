"""edgeseg bench: statistics against hand-made samples, the report's schema, its PNGs, and a real
run of every backend that runs here against its baselines."""

import json

import cv2
import pytest

from edgeseg.bench.measure import onnx_complexity
from edgeseg.bench.report import pareto_front, write_plot, write_zoo_plot
from edgeseg.bench.runner import BenchConfig, run_bench
from edgeseg.bench.zoo import parse_sizes, run_zoo
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.streaming.stats import STAGES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10, 0.50), (5, 0.40), (20, 0.60), (15, 0.45), (5, 0.30), (30, 0.55)]
    assert pareto_front(pts) == [1, 0, 2]  # (5, .40), (10, .50), (20, .60)


def test_onnx_complexity_counts_like_the_pytorch_counter(tiny_run, tiny_onnx):
    from edgeseg.models.checkpoint import load_model
    from edgeseg.models.complexity import count_gflops

    model, spec, _ = load_model(tiny_run / "best.pt", "cpu")
    c = onnx_complexity(tiny_onnx)
    assert c["gflops"] == pytest.approx(count_gflops(model, spec.input_hw), rel=1e-3)
    # BatchNorm is folded into the convolutions in the ONNX: fewer parameters than the checkpoint
    bn = sum(m.weight.numel() * 2 for m in model.modules() if m.__class__.__name__ == "BatchNorm2d")
    assert (
        sum(p.numel() for p in model.parameters()) - bn
        <= c["params"]
        < sum(p.numel() for p in model.parameters())
    )


def test_sizes_are_width_by_height_rounded_to_multiples_of_32():
    assert parse_sizes("480x360,960x720") == [(352, 480), (704, 960)]
    with pytest.raises(EdgesegError, match="WIDTHxHEIGHT"):
        parse_sizes("480by360")


@pytest.fixture(scope="module")
def bench_report(tiny_run):
    cfg = BenchConfig(
        models=[str(tiny_run / "best.pt")],
        backend="auto,torch",
        precision="fp32,int8",
        source="synthetic:256x128",
        frames=12,
        warmup=2,
    )
    return run_bench(cfg, progress=lambda _m: None)


def test_bench_report_has_every_documented_field(bench_report):
    r = bench_report
    assert r["schema"] == "edgeseg-bench-v1" and r["machine"]["cores"] >= 1
    rows = {(x["backend_requested"], x["precision_requested"]): x for x in r["results"]}
    assert set(rows) == {("ort", "fp32"), ("ort", "int8"), ("torch", "fp32"), ("torch", "int8")}
    assert "fp32 (or fp16 on a GPU)" in rows["torch", "int8"]["skipped"]
    for key in (("ort", "fp32"), ("ort", "int8"), ("torch", "fp32")):
        row = rows[key]
        assert row["precision"] == key[1]
        assert row["params"] > 0 and row["gflops"] > 0
        mo = row["model_only_ms"]
        assert (
            0 < mo["p50"] <= mo["p90"] <= mo["p99"]
            and mo["samples"] == 12
            and mo["throughput_fps"] > 0
        )
        assert len(row["model_only_samples_ms"]) == 12
        pl = row["pipeline"]
        assert (
            pl["frames"] == 12
            and pl["fps"] > 0
            and 0 < pl["latency_ms"]["p50"] <= pl["latency_ms"]["p99"]
        )
        assert set(pl["stages_ms"]) == set(STAGES) and all(
            set(v) == {"p50", "p99"} for v in pl["stages_ms"].values()
        )
        assert row["peak_rss_mb"] > row["rss_before_model_mb"] > 0
        # device memory only for a configuration that ran on a GPU (torch picks CUDA where present)
        assert (row["gpu_mem_mb"] is None) == (not row["device"].startswith("cuda"))
        assert (
            row["ratios"]["model_only_vs_torch_eager"] > 0
            and row["ratios"]["pipeline_fps_vs_naive_loop"] > 0
        )
    base = r["baselines"][str(rows["ort", "fp32"]["model"])]
    assert base["naive_loop"]["frames"] == 12 and base["naive_loop"]["fps"] > 0
    assert base["torch_eager_ms"]["samples"] == 12
    json.dumps(r)  # the --json file is this dict


def test_bench_plot_is_a_valid_png(bench_report, tmp_path):
    out = tmp_path / "bench.png"
    write_plot(bench_report, out)
    assert out.read_bytes()[:8] == PNG_MAGIC and cv2.imread(str(out)) is not None


def test_bench_cli_writes_table_json_and_plot(tiny_onnx, tmp_path, capsys):
    rc = main(
        [
            "bench",
            str(tiny_onnx),
            "--source",
            "synthetic:256x128",
            "--frames",
            "6",
            "--warmup",
            "1",
            "--no-isolate",
            "--json",
            str(tmp_path / "b.json"),
            "--plot",
            str(tmp_path / "b.png"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "naive loop" in out and " ort " in out
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["results"][0]["pipeline"]["frames"] == 6
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.onnx"], "model not found: missing.onnx"),
        (["{onnx}", "--precision", "fp8"], "unknown precision 'fp8'"),
        (["{onnx}", "--backend", "tensorrtt"], "unknown backend 'tensorrtt'"),
        (["{onnx}", "--source", "nope.mp4"], "bench source not found: nope.mp4"),
        (["--zoo"], "--zoo needs --data"),
    ],
)
def test_bench_bad_input_is_one_clear_message(tiny_onnx, capsys, args, message):
    assert main(["bench", *(a.format(onnx=tiny_onnx) for a in args)]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_zoo_covers_every_registered_model_with_miou_where_trained(tiny_run, tiny_onnx, tmp_path):
    from edgeseg.models import list_models
    from edgeseg.train.evaluate import evaluate

    res = run_zoo(
        [str(tiny_run / "best.pt")],
        "synthetic:16",
        [(64, 128)],
        warmup=1,
        iters=3,
        isolate=False,
        progress=lambda _m: None,
    )
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows) == set(list_models())
    # the trained checkpoint's own score on the val split at that size (its ONNX is 64x128)
    want = evaluate(tiny_onnx, "synthetic:16", "val", "ort", "cpu")["miou"]
    assert rows["mbv3_unet_small"]["miou"] == round(want, 4)
    assert all(r["miou"] is None for name, r in rows.items() if name != "mbv3_unet_small")
    assert all(
        r["latency_ms_p50"] > 0 and r["gflops"] > 0 and r["size"] == "128x64" for r in rows.values()
    )
    rows["bisenetv2"]["miou"] = 0.3  # a second trained point, to draw a front
    write_zoo_plot(list(rows.values()), tmp_path / "zoo.png")
    assert (tmp_path / "zoo.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.gpu
def test_bench_on_the_gpu_reports_device_memory_and_tensorrt_compute_where_installed(tiny_run):
    import importlib.util

    backends = ["torch"] + (["trt"] if importlib.util.find_spec("tensorrt") else [])
    rep = run_bench(
        BenchConfig(
            models=[str(tiny_run / "best.pt")],
            backend=",".join(backends),
            source="synthetic:256x128",
            frames=10,
            warmup=2,
            device="cuda",
        ),
        progress=lambda _m: None,
    )
    rows = {r["backend_requested"]: r for r in rep["results"]}
    assert rows["torch"]["device"].startswith("cuda") and rows["torch"]["gpu_mem_mb"] > 0
    assert rep["machine"]["gpu"]
    if "trt" in rows:
        assert rows["trt"]["tensorrt_compute_ms"]["p50"] > 0
        assert rows["trt"]["ratios"]["model_only_vs_tensorrt_compute"] > 0
