"""The CLI as a user meets it: real subprocesses, one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest


def run(*args, timeout=300, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgeseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["eval", "nope.onnx", "--data", "synthetic:4"], ["model not found: nope.onnx"]),
        (
            [
                "train",
                "--data",
                "camvd:/x",
                "--model",
                "mbv3_unet_small",
                "--out",
                "o",
                "--epochs",
                "1",
            ],
            ["camvid"],
        ),
        (
            [
                "train",
                "--data",
                "synthetic:4",
                "--model",
                "mbv3_unet_smal",
                "--out",
                "o",
                "--epochs",
                "1",
            ],
            ["did you mean 'mbv3_unet_small'"],
        ),
        (["info", "unet"], ["unknown model 'unet'"]),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, args, fragments):
    assert_one_line_error(run(*args), *fragments)


def test_wrong_architecture_checkpoint(tiny_run, tmp_path):
    proc = run(
        "train",
        "--data",
        "synthetic:8",
        "--model",
        "bisenetv2",
        "--out",
        tmp_path,
        "--epochs",
        "1",
        "--resume",
        tiny_run / "last.pt",
    )
    assert_one_line_error(proc, "holds a 'mbv3_unet_small' model, not 'bisenetv2'")


def test_predict_writes_labels_and_overlays(tiny_onnx, tmp_path):
    from edgeseg.data.synthetic import render_scene

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        cv2.imwrite(str(imgs / f"f{i}.png"), render_scene(i, (90, 160))[0][..., ::-1])
    proc = run("predict", tiny_onnx, imgs, "--out", tmp_path / "pred", "--overlay")
    assert proc.returncode == 0, proc.stderr
    lab = cv2.imread(str(tmp_path / "pred" / "f0.png"), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (90, 160) and lab.dtype == np.uint8 and lab.max() < 16
    assert cv2.imread(str(tmp_path / "pred" / "f1_overlay.jpg")).shape == (90, 160, 3)


def test_predict_unreadable_image(tiny_onnx, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert_one_line_error(
        run("predict", tiny_onnx, bad, "--out", tmp_path / "o"), "cannot read image", "broken.png"
    )


def test_eval_json_and_export(tiny_run, tmp_path):
    proc = run(
        "export", tiny_run / "best.pt", "--out", tmp_path, "--json", tmp_path / "export.json"
    )
    assert proc.returncode == 0, proc.stderr
    proc = run(
        "eval",
        tmp_path / "model.onnx",
        "--data",
        "synthetic:16",
        "--json",
        tmp_path / "m.json",
        "--hd95",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"miou", "per_class_iou", "pixel_acc", "mean_dice", "per_class_hd95"} <= set(m)
    assert "mIoU" in proc.stdout


def test_info_lists_params_and_gflops(tmp_path):
    proc = run("info", "all", "--input-size", "256x512", "--json", tmp_path / "i.json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "i.json").read_text())
    from edgeseg.models import list_models

    assert set(info) == set(list_models())
    assert all(v["params_m"] > 0 and v["gflops"] > 0 for v in info.values())


def test_predict_with_cpp_kernels_equals_reference_path_on_camvid(tiny_onnx, camvid_root, tmp_path):
    frames = sorted((camvid_root / "val").glob("*.png"))[:3]
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for f in frames:
        (imgs / f.name).symlink_to(f)
    outs = {}
    for impl in ("cpu", "reference"):
        proc = run(
            "predict",
            tiny_onnx,
            imgs,
            "--out",
            tmp_path / impl,
            env_extra={"EDGESEG_KERNELS": impl},
        )
        assert proc.returncode == 0, proc.stderr
        assert f"{impl} kernels" in proc.stdout
        outs[impl] = [
            cv2.imread(str(tmp_path / impl / f"{f.stem}.png"), cv2.IMREAD_UNCHANGED) for f in frames
        ]
    for a, b, f in zip(outs["cpu"], outs["reference"], frames):
        assert a.shape == cv2.imread(str(f)).shape[:2]
        np.testing.assert_array_equal(a, b)


# Every flag each command had when the CLI began to be derived from the config dataclasses.
FLAGS = {
    "train": "--batch-size --class-weights --crop --data --device --ema --epochs --freeze-bn "
    "--input-size --loss --lr --minutes --model --out --resume --scale --seed --teacher "
    "--val-every --workers",
    "eval": "--backend --data --device --exact-qdq --hd95 --json --limit --split",
    "export": "--argmax --calib --calib-count --calib-method --data --device --dynamic --epochs "
    "--fp16 --input-size --int8 --json --keep-fp32 --out --qat --simplify --target "
    "--timing-cache --trt --workspace",
    "predict": "--alpha --backend --device --out --overlay",
    "info": "--input-size --json --num-classes",
    "prune": "--batch-size --data --device --finetune-epochs --finetune-minutes --json --lr "
    "--no-distill --out --ratio --workers",
    "bench": "--backend --calib --data --device --frames --json --no-baselines --no-isolate --plot "
    "--precision --sizes --source --warmup --zoo",
    "stream": "--alpha --backend --camera --device --display --duration --infer-workers "
    "--max-frames --mode --model --reconnect --record --report --save-masks --source",
    "demo": "--out --seconds",
}


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_lists_every_flag(command, capsys):
    from edgeseg.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    missing = [f for f in FLAGS[command].split() if f not in text]
    assert not missing, f"edgeseg {command} --help lost {missing}"


def test_every_train_setting_is_a_flag():
    """Each TrainConfig field can be set from the command line and reaches the config."""
    import dataclasses

    from edgeseg._config import from_args
    from edgeseg.cli import build_parser
    from edgeseg.train.config import TrainConfig

    argv = [
        "train",
        "--data",
        "synthetic:4",
        "--model",
        "bisenetv2",
        "--out",
        "o",
        "--minutes",
        "2",
        "--batch-size",
        "3",
        "--crop",
        "64x96",
        "--input-size",
        "96x128",
        "--lr",
        "0.01",
        "--weight-decay",
        "0.5",
        "--warmup",
        "0.1",
        "--scale",
        "0.6",
        "1.2",
        "--loss",
        "ohem",
        "--class-weights",
        "none",
        "--aux-weight",
        "0.2",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--seed",
        "7",
        "--val-every",
        "2",
        "--ema",
        "0",
        "--freeze-bn",
        "0",
        "--resume",
        "r.pt",
        "--init-from",
        "i.pt",
        "--teacher",
        "t.pt",
        "--distill-weight",
        "2",
        "--distill-temperature",
        "4",
        "--teacher-logits",
        "live",
        "--model-kwargs",
        '{"width_mult": 0.75}',
        "--boundary-weight",
        "3",
        "--mix",
        "cutmix",
        "--mix-prob",
        "0.3",
        "--unlabeled",
        "u.mp4",
        "--consistency-weight",
        "2",
        "--confidence",
        "0.8",
        "--encoder",
        "timm:resnet18",
        "--pretrained",
        "w.pth",
        "--freeze-encoder",
        "2",
        "--photometric",
        "--quiet",
    ]
    cfg = from_args(TrainConfig, build_parser().parse_args(argv))
    defaults = TrainConfig(data="d", model="m", out="o", epochs=1)
    changed = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if getattr(cfg, f.name) != getattr(defaults, f.name)
    ]
    assert set(changed) == {f.name for f in dataclasses.fields(TrainConfig)} - {"out"}
    assert (
        cfg.scale == (0.6, 1.2)
        and cfg.crop == (64, 96)
        and cfg.model_kwargs == {"width_mult": 0.75}
    )


def test_the_cli_reference_is_generated_from_the_parser():
    from edgeseg.cli import reference_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert doc == reference_markdown(), (
        "docs/cli.md is out of date: regenerate it with the command at its top"
    )


def test_two_sources_record_one_video_each_with_their_own_frame_count(tiny_onnx, tmp_path):
    import cv2

    proc = run(
        "stream",
        "--model",
        tiny_onnx,
        "--source",
        "synthetic:160x96@0",
        "--source",
        "synthetic:128x64@0",
        "--max-frames",
        "7",
        "--record",
        tmp_path / "out_{source}.mp4",
        "--report",
        tmp_path / "r.json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    for sid, (w, h) in enumerate([(160, 96), (128, 64)]):
        cap = cv2.VideoCapture(str(tmp_path / f"out_{sid}.mp4"))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == report["sources"][sid]["frames_out"]
        assert (
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        ) == (w, h)
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["out_0.mp4", "out_1.mp4"]


def test_a_frame_that_could_not_be_read_is_named_as_such(tiny_onnx):
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime import Segmenter

    with pytest.raises(EdgesegError, match="could not be read"):
        Segmenter(tiny_onnx)(None)


def test_piped_tables_keep_their_titles_and_file_names_whole(tiny_run, tmp_path):
    proc = run("eval", tiny_run / "best.pt", "--data", "synthetic:4", "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("best.pt on synthetic:4 [val, ")  # one line, not wrapped
    ious = [line.split("│")[2].strip() for line in lines if line.startswith("│")]
    assert ious and all(len(v.split(".")[-1]) == 4 for v in ious)  # one format: 4 decimals
