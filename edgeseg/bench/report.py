"""The bench report at a glance: a terminal table, the JSON, and a PNG (latency histogram + stacked
per-stage bars; for the zoo, mIoU against latency with the Pareto front)."""

from __future__ import annotations

import os
from typing import Any

from edgeseg.streaming.stats import STAGES


def _fmt(v, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _variant(r: dict[str, Any]) -> str:
    """``+graph``, ``+compile``: the options a row ran with."""
    names = {"cuda_graph": "graph", "compile": "compile"}
    return "".join(f" +{names.get(k, k)}" for k, v in (r.get("options") or {}).items() if v)


def _label(r: dict[str, Any]) -> str:
    backend = r.get("backend", r["backend_requested"])
    return f"{r['name']} {backend}{_variant(r)} {r.get('precision', r['precision_requested'])}"


COLUMNS = (
    "model",
    "backend",
    "prec",
    "params M",
    "GFLOPs",
    "model ms p50/p90/p99",
    "model FPS",
    "e2e FPS",
    "e2e ms p50/p99",
    "stages p50 ms dec/pre/inf/post/sink",
    "RSS MB",
    "x eager",
    "x naive",
)


def _result_row(r: dict[str, Any]) -> list[str]:
    if "skipped" in r:  # the reason is printed in full below the table
        what = [r["name"], r["backend_requested"] + _variant(r), r["precision_requested"]]
        return [*what, "[yellow]skipped[/]", *[""] * (len(COLUMNS) - 4)]
    mo, pl, ra = r["model_only_ms"], r["pipeline"], r["ratios"]
    stages = "/".join(_fmt(pl["stages_ms"][s]["p50"]) for s in STAGES)
    return [
        r["name"],
        r["backend"] + _variant(r),
        r["precision"],
        _fmt(r["params"] / 1e6 if r["params"] else None, 2),
        _fmt(r["gflops"], 2),
        f"{mo['p50']:.1f}/{mo['p90']:.1f}/{mo['p99']:.1f}",
        _fmt(mo["throughput_fps"]),
        _fmt(pl["fps"]),
        f"{pl['latency_ms']['p50']:.1f}/{pl['latency_ms']['p99']:.1f}",
        stages,
        _fmt(r["peak_rss_mb"], 0),
        _fmt(ra["model_only_vs_torch_eager"], 2),
        _fmt(ra["pipeline_fps_vs_naive_loop"], 2),
    ]


POWER_COLUMNS = ("W", "J/frame", "J/frame over idle")


def _power_cells(r: dict[str, Any]) -> list[str]:
    """Mean watts and joules per frame over the pipeline's frames, and per frame above the
    idle draw; ``-`` where the row has none (the reason is printed below the table)."""
    if "skipped" in r:
        return ["", "", ""]
    return [
        _fmt(r.get("watts"), 2),
        _fmt(r.get("joules_per_frame"), 4),
        _fmt(r.get("joules_per_frame_above_idle"), 4),
    ]


def power_lines(report: dict[str, Any]) -> list[str]:
    """Where each row's power came from, or why it has none: one line when every row shares it."""
    rows = [r for r in report["results"] if "skipped" not in r]
    said = [r.get("power_source") or f"none: {r.get('power_none_why', '?')}" for r in rows]
    if len(set(said)) == 1:
        return [f"power: {said[0]}"] if said else []
    return [
        f"power of {r['name']} [{r['backend']}{_variant(r)}, {r['precision']}]: {what}"
        for r, what in zip(rows, said)
    ]


def _baseline_rows(model: str, base: dict[str, Any]) -> list[list[str]]:
    name = os.path.splitext(os.path.basename(model))[0]
    rows = []
    if "torch_eager_ms" in base:
        e = base["torch_eager_ms"]
        eager = ["", "", f"{e['p50']:.1f}/{e['p90']:.1f}/{e['p99']:.1f}", _fmt(e["throughput_fps"])]
        rows.append([name, "[dim]PyTorch eager[/]", "fp32", *eager, "", "", "", "", "1.00", ""])
    if base.get("naive_loop", {}).get("latency_ms"):
        n = base["naive_loop"]
        latency = f"{n['latency_ms']['p50']:.1f}/{n['latency_ms']['p99']:.1f}"
        rows.append(
            [
                name,
                "[dim]naive loop[/]",
                "fp32",
                "",
                "",
                "",
                "",
                _fmt(n["fps"]),
                latency,
                "",
                "",
                "",
                "1.00",
            ]
        )
    return rows


def describe_source(source: str) -> str:
    """``synthetic:960x540@0`` -> ``the synthetic scene at 960x540, unpaced``; files as given."""
    if source.startswith("synthetic:"):
        size, _, fps = source[len("synthetic:") :].partition("@")
        pace = "unpaced" if fps in ("", "0") else f"{fps} FPS"
        return f"the synthetic road scene at {size}, {pace}"
    return source


def skipped_lines(report: dict[str, Any]) -> list[str]:
    """One line per configuration that did not run, with its whole reason."""
    return [
        f"skipped {r['name']} [{r['backend_requested']}{_variant(r)}, "
        f"{r['precision_requested']}]: {r['skipped']}"
        for r in report["results"]
        if "skipped" in r
    ]


def print_table(report: dict[str, Any], console=None) -> None:
    """One row per configuration, one row per baseline; every figure with its ratio; then why
    any configuration was skipped."""
    from rich.table import Table

    from edgeseg._table import console as make_console

    console = console or make_console()
    m, settings = report["machine"], report["settings"]
    gpu = f", {m['gpu']}" if m["gpu"] else ""
    title = (
        f"edgeseg bench — {m['cpu']} ({m['cores']} cores){gpu}, {settings['frames']} frames "
        f"of {describe_source(settings['source'])}"
    )
    power = bool(settings.get("power"))
    t = Table()
    for col in COLUMNS + (POWER_COLUMNS if power else ()):
        left = col in ("model", "backend", "prec")
        t.add_column(col, justify="left" if left else "right", no_wrap=True)
    for r in report["results"]:
        t.add_row(*_result_row(r), *(_power_cells(r) if power else []))
    for model, base in report["baselines"].items():
        for row in _baseline_rows(model, base):
            t.add_row(*row, *([""] * len(POWER_COLUMNS) if power else []))
    console.print(title, soft_wrap=True, markup=False, highlight=False)
    console.print(t)
    for line in skipped_lines(report) + (power_lines(report) if power else []):
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def _histograms(ax, samples: dict[str, list[float]]) -> None:
    for label, vals in samples.items():
        ax.hist(vals, bins=40, alpha=0.55, label=label)
    ax.set_xlabel("model-only latency (ms)")
    ax.set_ylabel("calls")
    ax.set_title("model-only latency")
    if samples:
        ax.legend(fontsize=7)


def _stage_bars(ax, report: dict[str, Any]) -> None:
    rows = [r for r in report["results"] if "skipped" not in r]
    labels = [_label(r) for r in rows]
    left = [0.0] * len(rows)
    for stage in STAGES:
        vals = [r["pipeline"]["stages_ms"][stage]["p50"] for r in rows]
        ax.barh(labels, vals, left=left, label=stage)
        left = [a + b for a, b in zip(left, vals)]
    for i, r in enumerate(rows):
        ax.text(left[i], i, f"  {r['pipeline']['fps']:.1f} FPS", va="center", fontsize=7)
    ax.set_xlabel("p50 per stage (ms); stages overlap across threads")
    ax.set_title("end-to-end pipeline")
    ax.legend(fontsize=7, loc="lower right")


def write_plot(
    report: dict[str, Any], path: str | os.PathLike, samples: dict[str, list[float]] | None = None
) -> None:
    """Model-only latency histograms (``samples``: label -> ms; by default each result's
    ``model_only_samples_ms``) and stacked per-stage bars; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeseg._io import atomic_path

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    if samples is None:
        samples = {
            _label(r): r.get("model_only_samples_ms", [])
            for r in report["results"]
            if "skipped" not in r
        }
    _histograms(a, {k: v for k, v in samples.items() if v})
    _stage_bars(b, report)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and mIoU (higher),
    in order of latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def write_zoo_plot(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """mIoU against model-only latency, one point per model and size, the Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeseg._io import atomic_path

    pts = [r for r in rows if r.get("miou") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xy = [(r["latency_ms_p50"], r["miou"]) for r in pts]
    ax.scatter([p[0] for p in xy], [p[1] for p in xy])
    for r, (x, y) in zip(pts, xy):
        ax.annotate(
            f"{r['model']} {r['size']}",
            (x, y),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    front = pareto_front(xy)
    if front:
        ax.plot(
            [xy[i][0] for i in front],
            [xy[i][1] for i in front],
            "--",
            color="gray",
            label="Pareto front",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("model-only latency p50 (ms)")
    ax.set_ylabel("val mIoU")
    ax.set_title("edgeseg zoo: accuracy against latency")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
