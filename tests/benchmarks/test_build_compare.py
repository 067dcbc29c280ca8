"""benchmarks/compare.py: two builds installed side by side, alternating pairs, a verdict."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.data.synthetic import write_clip

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "compare.py"


def _module():
    if "compare" not in sys.modules:  # dataclasses look their module up there
        spec = importlib.util.spec_from_file_location("compare", SCRIPT)
        sys.modules["compare"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["compare"])
    return sys.modules["compare"]


def test_the_verdict_needs_five_pairs_and_reads_ratios_the_right_way_up():
    c = _module()
    fps = c.Series(base=[100.0] * 5, head=[90.0] * 5)  # FPS: more is better
    ms = c.Series(base=[10.0] * 5, head=[9.0] * 5)  # times: less is better
    assert c.verdict(fps.ratios(True), True) == "REGRESSION"
    assert c.verdict(ms.ratios(False), True) == "faster"
    assert c.verdict(fps.ratios(True)[:4], True).startswith("no verdict: 4 pairs")
    assert c.verdict([0.96, 0.5, 1.0, 0.97, 1.2], True) == "same"  # the median, not the worst
    assert c.verdict([0.5] * 5, False) == "(context)"  # shown, never decides


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout"
)
def test_compare_builds_and_runs_every_benchmark_on_both_builds(tiny_onnx, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 6, (96, 160), fps=25)
    out = tmp_path / "compare.json"
    cmd = [sys.executable, str(SCRIPT), "--base", "HEAD", "--pairs", "2",
           "--bench", "stream,kernels,model", "--model", str(tiny_onnx), "--source", str(clip),
           "--bench-frames", "5", "--kernel-iters", "10", "--cache", str(tmp_path / "cache"),
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = {r["figure"]: r for r in res["rows"]}
    assert set(rows) == set(_module().FIGURES)
    for r in rows.values():
        assert len(r["base"]) == len(r["head"]) == 2 and min(r["base"] + r["head"]) > 0
        assert r["verdict"] in ("(context)", "no verdict: 2 pairs, 5 needed")
    assert (
        res["base"]["commit"]
        == subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "HEAD"], text=True).strip()
    )
    assert "stream FPS" in proc.stdout and "verdict" in proc.stdout
    # each build lives in its own environment, and its worktree is gone
    builds = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert builds and all((b / "built").is_file() and not (b / "src").exists() for b in builds)
    assert str(tmp_path / "cache") not in subprocess.check_output(
        ["git", "-C", str(REPO), "worktree", "list"], text=True
    )


def test_an_unknown_ref_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--base", "no-such-ref-xyz", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "compare.py: unknown git ref 'no-such-ref-xyz': give a commit, tag or branch"
    ]
