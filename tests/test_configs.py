"""Settings passed whole: every field of every command's config reaches the run.

Each command runs once through the CLI with every field set to a value other than its default
(tiny data, tiny budgets); a field that nothing but validation reads has been dropped on its way
(that is how ``--stall-timeout`` once got lost). A field that cannot be set here is named with
where its effect is shown. ``edgeseg stream``'s walk is in tests/streaming/test_config.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import pytest

from edgeseg.bench.config import BenchConfig, InfoConfig
from edgeseg.compress.config import PruneConfig
from edgeseg.data.synthetic import write_clip
from edgeseg.demo import DemoConfig
from edgeseg.export.config import CheckConfig, ExportConfig
from edgeseg.runtime.predict import PredictConfig
from edgeseg.train.config import EvalConfig, TrainConfig


@contextlib.contextmanager
def reads_of(cls, monkeypatch):
    """The fields of ``cls`` read while the block runs, except inside ``check()`` and inside
    serialisation of the whole config (``asdict``: a report's settings, a checkpoint's record),
    which read every field whether it is used or not."""
    fields = {f.name for f in dataclasses.fields(cls)}
    reads: set[str] = set()
    off = threading.local()
    get = object.__getattribute__

    def recorded(self, name):
        if name in fields and not getattr(off, "on", False):
            reads.add(name)
        return get(self, name)

    def unrecorded(fn):
        def call(*a, **k):
            off.on = True
            try:
                return fn(*a, **k)
            finally:
                off.on = False

        return call

    monkeypatch.setattr(cls, "__getattribute__", recorded)
    if hasattr(cls, "check"):
        monkeypatch.setattr(cls, "check", unrecorded(cls.check))
    for module in ("edgeseg.bench.runner", "edgeseg.train.checkpointing"):
        monkeypatch.setattr(f"{module}.asdict", unrecorded(dataclasses.asdict))
    yield reads


def walk(cls, argv: list[str], not_walked: dict[str, str], monkeypatch) -> None:
    from edgeseg.cli import main

    fields = {f.name for f in dataclasses.fields(cls)}
    given = {a[2:].replace("-", "_") for a in argv if a.startswith("--")}
    given = {n.removeprefix("no_") for n in given}
    positional = {f.name for f in dataclasses.fields(cls) if f.metadata.get("positional")}
    assert fields - given - positional == set(not_walked), "walk the new setting, or say why not"
    with reads_of(cls, monkeypatch) as reads:
        assert main(argv) == 0
    assert fields - reads - set(not_walked) == set()


def test_train(tiny_run, tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "u.mp4", 12, (64, 128), fps=25)
    ckpt = str(tiny_run / "best.pt")
    argv = ["train", "--data", "synthetic:8", "--model", "mbv3_unet_small", "--out",
            str(tmp_path / "t"), "--epochs", "1", "--batch-size", "2", "--crop", "64x96",
            "--input-size", "64x128", "--lr", "0.002", "--weight-decay", "0.001", "--warmup",
            "0.1", "--scale", "0.8", "1.2", "--photometric", "--loss", "ce+dice+boundary",
            "--class-weights", "full", "--boundary-weight", "2", "--mix", "cutmix",
            "--mix-prob", "0.9", "--aux-weight", "0.3", "--device", "cpu", "--workers", "1",
            "--seed", "3", "--val-every", "1", "--ema", "0.99", "--freeze-bn", "0.5",
            "--init-from", ckpt, "--teacher", ckpt, "--unlabeled", str(clip),
            "--consistency-weight", "2", "--confidence", "0.8", "--freeze-encoder", "1",
            "--distill-weight", "0.5", "--distill-temperature", "3", "--teacher-logits",
            "live", "--model-kwargs",
            '{"dropout": 0.2}', "--quiet"]  # fmt: skip
    not_walked = {
        "minutes": "the alternative to epochs: tests/train/test_trainer.py (budget tests)",
        "resume": "with --init-from it is refused: tests/train/test_trainer.py (resume tests)",
        "encoder": "timm:NAME needs timm: tests/models/test_encoders.py",
        "pretrained": "needs timm or weights: tests/models/test_encoders.py",
    }
    walk(TrainConfig, argv, not_walked, monkeypatch)


def test_export(tiny_run, tmp_path, monkeypatch):
    argv = ["export", str(tiny_run / "best.pt"), "--out", str(tmp_path / "x"), "--input-size",
            "64x96", "--simplify", "--argmax", "--fp16", "--int8", "--calib", "synthetic:4",
            "--calib-count", "2", "--calib-method", "percentile", "--target", "cpu",
            "--keep-fp32", "1", "--max-drop", "100", "--max-kept", "2", "--qat", "--data",
            "synthetic:4", "--epochs", "1",
            "--device", "cpu", "--json", str(tmp_path / "x.json")]  # fmt: skip
    not_walked = {
        "trt": "needs TensorRT: tests/runtime/test_tensorrt_backend.py (fake TensorRT 11)",
        "timing_cache": "--trt only: tests/runtime/test_tensorrt_backend.py",
        "workspace": "--trt only: tests/runtime/test_tensorrt_backend.py",
        "dynamic": "--trt only: tests/runtime/test_tensorrt_backend.py",
        "dla": "--trt only: tests/export/test_dla.py (refusals, pre-flight, builder settings)",
        "gpu_fallback": "--dla only: tests/export/test_dla.py",
    }
    walk(ExportConfig, argv, not_walked, monkeypatch)


def test_prune(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("torch_pruning")
    argv = ["prune", str(tiny_run / "best.pt"), "--ratio", "0.2", "--data", "synthetic:8",
            "--out", str(tmp_path / "p"), "--finetune-epochs", "1", "--lr", "0.002",
            "--batch-size", "2", "--device", "cpu", "--workers", "0", "--no-distill", "--quiet",
            "--json", str(tmp_path / "p.json")]  # fmt: skip
    not_walked = {"finetune_minutes": "the alternative to finetune_epochs: test_prune.py"}
    walk(PruneConfig, argv, not_walked, monkeypatch)


def test_eval(tiny_onnx, tmp_path, monkeypatch):
    argv = ["eval", str(tiny_onnx), "--data", "synthetic:8", "--split", "train", "--backend",
            "ort", "--device", "cpu", "--hd95", "--limit", "2", "--tta", "flip", "--exact-qdq",
            "--no-rebuild", "--json", str(tmp_path / "e.json")]  # fmt: skip
    walk(EvalConfig, argv, {}, monkeypatch)


def test_predict(tiny_onnx, tmp_path, monkeypatch):
    import cv2

    from edgeseg.data.synthetic import render_scene

    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), render_scene(0, (64, 128))[0])
    argv = ["predict", "--model", str(tiny_onnx), str(tmp_path / "img"), "--out",
            str(tmp_path / "p"), "--overlay", "--alpha", "0.3", "--backend", "ort", "--device",
            "cpu", "--no-rebuild"]  # fmt: skip
    walk(PredictConfig, argv, {}, monkeypatch)


def test_bench(tiny_onnx, tmp_path, monkeypatch):
    argv = ["bench", str(tiny_onnx), "--backend", "ort", "--precision", "fp32", "--source",
            "synthetic:128x64", "--frames", "3", "--warmup", "1", "--device", "cpu", "--calib",
            "synthetic:4", "--no-baselines", "--no-isolate", "--cuda-graph", "--compile",
            "--no-rebuild", "--power", "--json", str(tmp_path / "b.json"), "--plot",
            str(tmp_path / "b.png")]  # fmt: skip
    not_walked = {
        "zoo": "the other mode (every architecture): tests/bench/test_bench.py",
        "data": "--zoo only: tests/bench/test_bench.py",
        "sizes": "--zoo only: tests/bench/test_bench.py",
    }
    walk(BenchConfig, argv, not_walked, monkeypatch)


def test_info(tmp_path, monkeypatch):
    argv = ["info", "mbv3_unet_small", "--num-classes", "5", "--input-size", "64x96", "--json",
            str(tmp_path / "i.json")]  # fmt: skip
    walk(InfoConfig, argv, {}, monkeypatch)


def test_demo(tmp_path, monkeypatch):
    argv = ["demo", "--out", str(tmp_path / "d"), "--model", "camvid-small"]
    not_walked = {
        "train": "the other flow (train, export, segment): tests/test_demo.py",
        "seconds": "--train only: tests/test_demo.py",
    }
    walk(DemoConfig, argv, not_walked, monkeypatch)


def test_check(monkeypatch, tmp_path):
    argv = ["check", "mbv3_unet_small_minimal", "--dla", "--num-classes", "3", "--input-size",
            "64x96", "--model-kwargs", '{"dropout": 0.0}', "--json",
            str(tmp_path / "c.json")]  # fmt: skip
    walk(CheckConfig, argv, {}, monkeypatch)
