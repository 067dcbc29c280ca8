"""One build of edgeseg against another, on this machine, in alternating pairs.

    python benchmarks/compare.py --base REF [--head REF] [--bench stream,kernels,model]
        [--pairs 5] [--model MODEL.onnx] [--source CLIP] [--max-frames N] [--json OUT]

Each build (``--base``, and ``--head``: by default this working tree, uncommitted and untracked
files included) is checked out into a temporary git worktree, installed without network into a
virtual environment of its own that sees this interpreter's packages (torch, ONNX Runtime,
OpenCV: the same wheels for both) and built with its own C++ extension. Builds are cached by
commit under ``--cache`` (default ``~/.cache/edgeseg/compare``), so a second comparison starts
at once. Both builds then run the same benchmarks on the same model and input, in pairs whose
order alternates (base-head, head-base, ...) so that a machine slowing down or warming up
favours neither:

- ``stream``: ``edgeseg stream --mode every-frame --record --report`` on the clip; the report's
  FPS (and the whole process's wall time, start-up included, and the stage medians);
- ``kernels``: benchmarks/kernel_times.py under each build (preprocess, postprocess, with overlay);
- ``model``: ``edgeseg bench MODEL --no-baselines``: the model-only p50 (and the pipeline FPS).

For each figure it prints both builds' medians, the median of the per-pair ratios (head speed over
base speed: above 1 the head is faster) and a verdict: a regression when at least 5 pairs give a
median ratio below 0.95 (exit status 1). Without ``--model``, a 352x480 ``mbv3_unet_small`` is
trained for one epoch on synthetic scenes by the base build and exported (timing does not depend
on the weights; an older build's file is what both read).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "video" / "dashcam_960x540.mp4"
BENCHES = ("stream", "kernels", "model")
MIN_PAIRS = 5  # fewer pairs give no verdict: one noisy run must not decide
REGRESSION = 0.95  # median ratio below this is a regression
FASTER = 1.05


class CompareError(Exception):
    """A build or a benchmark run that failed: its message says which and why."""


def git(*args: str, env: dict | None = None) -> str:
    r = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, env=env, check=False
    )
    if r.returncode:
        raise CompareError(f"git {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def resolve(ref: str) -> str:
    """A commit's full hash (an unknown ref is an error naming it)."""
    try:
        return git("rev-parse", "--verify", f"{ref}^{{commit}}")
    except CompareError:
        raise CompareError(f"unknown git ref {ref!r}: give a commit, tag or branch") from None


def working_tree_commit() -> tuple[str, str]:
    """(commit, label) of this working tree as it is: HEAD when clean, else a commit made
    (in a temporary index; the real index and HEAD are untouched) of every tracked and
    untracked file that .gitignore does not exclude."""
    head = resolve("HEAD")
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(d, "index"))}
        git("read-tree", "HEAD", env=env)
        git("add", "-A", env=env)
        tree = git("write-tree", env=env)
    if tree == git("rev-parse", "HEAD^{tree}"):
        return head, f"HEAD {head[:9]}"
    who = {"GIT_AUTHOR_NAME": "compare.py", "GIT_AUTHOR_EMAIL": "compare@localhost"}
    who.update(
        GIT_COMMITTER_NAME=who["GIT_AUTHOR_NAME"], GIT_COMMITTER_EMAIL=who["GIT_AUTHOR_EMAIL"]
    )
    env = {**os.environ, **who}
    commit = git("commit-tree", tree, "-p", head, "-m", "compare.py: working tree", env=env)
    return commit, f"working tree (HEAD {head[:9]} + changes)"


@dataclass
class Build:
    """One installed build: its interpreter, and what it was built from."""

    label: str
    commit: str
    python: Path


def build(commit: str, label: str, cache: Path) -> Build:
    """Install ``commit`` into its own cached virtual environment (see the module docstring)."""
    home = cache / commit
    python = home / "venv" / "bin" / "python"
    if (home / "built").is_file():
        return Build(label, commit, python)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    src = home / "src"
    print(f"building {label} ({commit[:9]}) in {home} ...", flush=True)
    git("worktree", "add", "--detach", str(src), commit)
    try:
        # --without-pip: the venv's bundled pip and setuptools would shadow this interpreter's,
        # which it sees through --system-site-packages (pybind11 and a current setuptools).
        _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
              str(home / "venv")], "create the virtual environment")  # fmt: skip
        _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
              "--no-index", str(src)], f"install {label}")  # fmt: skip
        where = _run([str(python), "-c", "import edgeseg, edgeseg._cpu; print(edgeseg.__file__)"],
                     f"import {label}", cwd=home)  # fmt: skip
        if not where.strip().startswith(str(home / "venv")):
            raise CompareError(f"{label} imports edgeseg from {where.strip()}, not its own venv")
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    finally:
        git("worktree", "remove", "--force", str(src))
    (home / "built").write_text(f"{commit}\n")
    return Build(label, commit, python)


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 1800) -> str:
    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise CompareError(f"{what}: no result after {timeout:.0f} s") from None
    if r.returncode:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-8:])
        raise CompareError(f"{what} failed (exit {r.returncode}):\n{tail}")
    return r.stdout


# -- benchmarks: each runs one build once and returns {figure: value}
@dataclass
class Figure:
    """How to read a figure: its unit, and whether more is better."""

    unit: str
    higher_is_better: bool
    decides: bool = True  # counts for the verdict (others are shown for context)


FIGURES = {
    "stream FPS": Figure("FPS", True),
    "stream whole process": Figure("s", False, decides=False),
    "kernels preprocess": Figure("ms", False),
    "kernels postprocess": Figure("ms", False),
    "kernels postprocess+overlay": Figure("ms", False),
    "model-only p50": Figure("ms", False),
    "bench pipeline FPS": Figure("FPS", True, decides=False),
}


def bench_stream(b: Build, a: argparse.Namespace, work: Path) -> dict[str, float]:
    out = work / "stream"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = [str(b.python), "-m", "edgeseg", "stream", "--source", str(a.source), "--model",
           str(a.model), "--mode", "every-frame", "--record", str(out / "out.mp4"),
           "--report", str(out / "r.json")]  # fmt: skip
    if a.max_frames:
        cmd += ["--max-frames", str(a.max_frames)]
    t0 = time.perf_counter()
    _run(cmd, f"edgeseg stream ({b.label})", cwd=work)
    wall = time.perf_counter() - t0
    report = json.loads((out / "r.json").read_text())
    return {"stream FPS": report["fps"], "stream whole process": wall}


def bench_kernels(b: Build, a: argparse.Namespace, work: Path) -> dict[str, float]:
    out = work / "kernels.json"
    harness = Path(__file__).with_name("kernel_times.py")
    _run([str(b.python), str(harness), "--model", str(a.model), "--iters", str(a.kernel_iters),
          "--json", str(out)], f"kernel timing ({b.label})", cwd=work)  # fmt: skip
    t = json.loads(out.read_text())
    return {
        "kernels preprocess": t["preprocess_ms"],
        "kernels postprocess": t["postprocess_ms"],
        "kernels postprocess+overlay": t["postprocess_overlay_ms"],
    }


def bench_model(b: Build, a: argparse.Namespace, work: Path) -> dict[str, float]:
    out = work / "bench.json"
    _run([str(b.python), "-m", "edgeseg", "bench", str(a.model), "--no-baselines",
          "--no-isolate", "--frames", str(a.bench_frames), "--warmup", "10",
          "--json", str(out)], f"edgeseg bench ({b.label})", cwd=work)  # fmt: skip
    row = json.loads(out.read_text())["results"][0]
    return {
        "model-only p50": row["model_only_ms"]["p50"],
        "bench pipeline FPS": row["pipeline"]["fps"],
    }


RUNNERS = {"stream": bench_stream, "kernels": bench_kernels, "model": bench_model}


# -- the comparison
@dataclass
class Series:
    """One figure's values per pair, for both builds."""

    base: list[float] = field(default_factory=list)
    head: list[float] = field(default_factory=list)

    def ratios(self, higher_is_better: bool) -> list[float]:
        """Head speed over base speed per pair (above 1: the head is faster)."""
        return [
            (h / b if higher_is_better else b / h) if min(b, h) > 0 else float("nan")
            for b, h in zip(self.base, self.head)
        ]


def verdict(ratios: list[float], decides: bool) -> str:
    if not decides:
        return "(context)"
    if len(ratios) < MIN_PAIRS:
        return f"no verdict: {len(ratios)} pairs, {MIN_PAIRS} needed"
    r = statistics.median(ratios)
    if r < REGRESSION:
        return "REGRESSION"
    return "faster" if r > FASTER else "same"


def compare(base: Build, head: Build, a: argparse.Namespace) -> dict:
    series: dict[str, Series] = {}
    with tempfile.TemporaryDirectory(prefix="edgeseg-compare-") as d:
        work = Path(d)
        for i in range(a.pairs):
            order = (base, head) if i % 2 == 0 else (head, base)
            for name in a.bench:
                for b in order:
                    for fig, value in RUNNERS[name](b, a, work).items():
                        s = series.setdefault(fig, Series())
                        (s.base if b is base else s.head).append(value)
            print(f"pair {i + 1}/{a.pairs} done", flush=True)
    rows = []
    for fig, s in series.items():
        f = FIGURES[fig]
        ratios = s.ratios(f.higher_is_better)
        rows.append(
            {
                "figure": fig,
                "unit": f.unit,
                "base_median": statistics.median(s.base),
                "head_median": statistics.median(s.head),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "pairs": len(ratios),
                "verdict": verdict(ratios, f.decides),
                "base": s.base,
                "head": s.head,
            }
        )
    return {
        "base": {"label": base.label, "commit": base.commit},
        "head": {"label": head.label, "commit": head.commit},
        "model": str(a.model),
        "source": str(a.source),
        "max_frames": a.max_frames,
        "pairs": a.pairs,
        "rows": rows,
        "regression": any(r["verdict"] == "REGRESSION" for r in rows),
    }


def print_table(result: dict) -> None:
    print(f"\nbase: {result['base']['label']} ({result['base']['commit'][:9]})")
    print(f"head: {result['head']['label']} ({result['head']['commit'][:9]})")
    print(f"model {result['model']}, source {result['source']}, {result['pairs']} pairs")
    print("ratio: head speed / base speed, median of the pairs (above 1: head faster)\n")
    line = f"{'figure':<30} {'base':>10} {'head':>10} {'unit':<5} {'ratio':>7} {'range':>13}"
    print(line + "  verdict")
    print("-" * (len(line) + 20))
    for r in result["rows"]:
        rng = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
        print(
            f"{r['figure']:<30} {r['base_median']:>10.2f} {r['head_median']:>10.2f} "
            f"{r['unit']:<5} x{r['ratio_median']:>6.3f} {rng:>13}  {r['verdict']}"
        )


def default_model(base: Build, cache: Path) -> Path:
    """A 352x480 mbv3_unet_small, one epoch on synthetic scenes, written by the base build."""
    home = cache / base.commit / "model"
    model = home / "model.onnx"
    if model.is_file():
        return model
    print(f"making a 352x480 mbv3_unet_small with {base.label} ...", flush=True)
    home.mkdir(parents=True, exist_ok=True)
    py = str(base.python)
    _run([py, "-m", "edgeseg", "train", "--data", "synthetic:8", "--model", "mbv3_unet_small",
          "--epochs", "1", "--input-size", "352x480", "--workers", "0", "--out", str(home)],
         "training the default model", cwd=home)  # fmt: skip
    _run([py, "-m", "edgeseg", "export", str(home / "best.pt"), "--out", str(home)],
         "exporting the default model", cwd=home)  # fmt: skip
    return model


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Compare two builds of edgeseg in alternating pairs (see the module docstring)."
    )
    ap.add_argument("--base", required=True, help="the build to compare against (a git ref)")
    ap.add_argument("--head", help="the build under test (a git ref; default: this working tree)")
    ap.add_argument("--bench", default="stream", help=f"comma-separated: {', '.join(BENCHES)}")
    ap.add_argument("--pairs", type=int, default=MIN_PAIRS, help="alternating pairs (default 5)")
    ap.add_argument("--model", type=Path, help="an .onnx both builds read (default: see above)")
    ap.add_argument("--source", type=Path, default=CLIP, help="the clip for the stream")
    ap.add_argument("--max-frames", type=int, help="stream at most this many frames")
    ap.add_argument("--bench-frames", type=int, default=100, help="model: timed calls per run")
    ap.add_argument("--kernel-iters", type=int, default=1000, help="kernels: timed calls per op")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgeseg" / "compare")
    ap.add_argument("--json", type=Path, help="write the result (every value) as JSON")
    a = ap.parse_args(argv)
    a.bench = [b.strip() for b in a.bench.split(",") if b.strip()]
    unknown = [b for b in a.bench if b not in BENCHES]
    if unknown or not a.bench:
        ap.error(f"unknown --bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    if a.pairs < 1:
        ap.error("--pairs must be at least 1")
    if "stream" in a.bench and not a.source.is_file():
        ap.error(f"--source {a.source} not found: give a video file")
    if a.model is not None and not a.model.is_file():
        ap.error(f"--model {a.model} not found")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    try:
        base = build(resolve(a.base), f"base {a.base}", a.cache)
        commit, label = (resolve(a.head), f"head {a.head}") if a.head else working_tree_commit()
        head = build(commit, label, a.cache)
        a.model = (a.model or default_model(base, a.cache)).resolve()
        a.source = a.source.resolve()
        result = compare(base, head, a)
    except CompareError as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    print_table(result)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 1 if result["regression"] else 0


if __name__ == "__main__":
    sys.exit(main())
