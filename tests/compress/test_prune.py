"""Structured pruning: real channel removal, a pruned checkpoint that reloads, fine-tuning."""

import importlib.util
import subprocess
import sys

import pytest
import torch

from edgeseg.compress.config import PruneConfig
from edgeseg.compress.prune import prune_checkpoint, prune_model
from edgeseg.errors import EdgesegError
from edgeseg.models import create_model, list_models
from edgeseg.models.complexity import count_gflops, count_params

# A GPU machine's image may lack torch-pruning: the suite still collects and runs there.
needs_torch_pruning = pytest.mark.skipif(
    importlib.util.find_spec("torch_pruning") is None, reason="torch-pruning is not installed"
)


@needs_torch_pruning
@pytest.mark.parametrize("name", list_models())
def test_pruning_removes_channels_and_keeps_the_model_working(name):
    model = create_model(name, 11).eval()
    g0, p0 = count_gflops(model, (64, 96)), count_params(model)
    prune_model(model, 0.3, (64, 96), 11)
    assert count_gflops(model, (64, 96)) < 0.75 * g0 and count_params(model) < p0
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 11, 64, 96)


@needs_torch_pruning
def test_prune_and_finetune_a_checkpoint(tiny_run, tmp_path, monkeypatch):
    from edgeseg.compress import prune
    from edgeseg.models.checkpoint import load_model, read_checkpoint

    scored_on: list[str] = []  # the device of each val mIoU measurement
    evaluate = prune.evaluate

    def spy(checkpoint, data, split, backend, device, **kw):
        scored_on.append(device)
        return evaluate(checkpoint, data, split, backend, device, **kw)

    monkeypatch.setattr(prune, "evaluate", spy)
    cfg = PruneConfig(
        str(tiny_run / "best.pt"),
        0.3,
        "synthetic:8",
        str(tmp_path),
        finetune_epochs=1,
        device="auto",  # not measure()'s own default ("cpu"): it must come from here
        workers=0,
        quiet=True,
    )
    res = prune_checkpoint(cfg)
    assert res["gflops_cut"] >= 0.25
    assert res["after"]["params"] == res["pruned"]["params"] < res["before"]["params"]
    for k in ("params", "gflops", "ort_cpu_ms", "val_miou"):
        assert k in res["before"] and k in res["after"]
    # before, right after pruning and after fine-tuning: each scored on the device asked for
    assert scored_on == ["auto"] * 3
    model, spec, ckpt = load_model(
        tmp_path / "best.pt"
    )  # the pruned structure is rebuilt from the file
    assert "pruned" in ckpt and count_params(model) == res["after"]["params"]
    # distill (the default): the fine-tuning run's teacher was the unpruned checkpoint
    run = read_checkpoint(tmp_path / "last.pt")["config"]
    assert res["distilled"] is True and run["teacher"] == str(tiny_run / "best.pt")
    assert run["init_from"] == str(tmp_path / "pruned.pt")


@needs_torch_pruning
@pytest.mark.parametrize("distill", [True, False])
def test_distill_sets_the_fine_tuning_teacher(tiny_run, tmp_path, monkeypatch, distill):
    """--no-distill fine-tunes on the labels alone; --distill from the unpruned model."""
    from edgeseg.compress import prune

    runs = []
    monkeypatch.setattr(prune, "measure", lambda *a, **k: {"gflops": 1.0, "ort_cpu_ms": 1.0})
    monkeypatch.setattr(prune, "train", runs.append)  # the fine-tuning's TrainConfig, not run
    cfg = PruneConfig(
        str(tiny_run / "best.pt"), 0.3, "synthetic:8", str(tmp_path), finetune_epochs=1
    )
    cfg.distill = distill
    res = prune.prune_checkpoint(cfg)
    (run,) = runs
    assert res["distilled"] is distill
    assert run.teacher == (str(tiny_run / "best.pt") if distill else None)
    assert run.init_from == str(tmp_path / "pruned.pt") and run.epochs == 1


def test_bad_ratio(tiny_run, tmp_path):
    with pytest.raises(EdgesegError, match="ratio must be between 0 and 1"):
        prune_model(create_model("mbv3_unet_small", 3), 1.5, (64, 64), 3)


def test_without_torch_pruning_edgeseg_imports_and_prune_says_what_to_install():
    code = (
        "import sys; sys.modules['torch_pruning'] = None\n"  # as if not installed
        "from edgeseg.compress.prune import prune_model\n"
        "from edgeseg.errors import EdgesegError\n"
        "from edgeseg.models import create_model\n"
        "try:\n"
        "    prune_model(create_model('mbv3_unet_small', 3), 0.3, (64, 64), 3)\n"
        "except EdgesegError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install 'torch-pruning" in out.stdout
