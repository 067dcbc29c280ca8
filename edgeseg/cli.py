"""The ``edgeseg`` command: one sub-command a function, each a thin layer over the library.

Each command imports what it needs inside its function: ``edgeseg stream`` on an ONNX model
must not pay for PyTorch (see :mod:`edgeseg._lazy`). The flags of ``train`` and ``export`` are
derived from :class:`~edgeseg.train.config.TrainConfig` and
:class:`~edgeseg.export.config.ExportConfig` (:mod:`edgeseg._config`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeseg._config import add_arguments, from_args
from edgeseg.bench.config import BenchConfig, InfoConfig
from edgeseg.compress.config import PruneConfig
from edgeseg.demo import DemoConfig
from edgeseg.errors import EdgesegError
from edgeseg.export.config import CheckConfig, ExportConfig
from edgeseg.runtime.predict import PredictConfig
from edgeseg.streaming.config import StreamConfig
from edgeseg.train.config import EvalConfig, TrainConfig


def _table(
    title: str, columns: list[str], rows: list[list[Any]], formats: dict[str, str] | None = None
) -> None:
    from edgeseg._table import print_table

    print_table(title, columns, rows, formats)


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        from edgeseg._io import write_text_atomic

        write_text_atomic(path, json.dumps(payload, indent=2, default=str))


# ---------------------------------------------------------------------------- sub-commands


def cmd_train(a: argparse.Namespace) -> int:
    from edgeseg.train.trainer import train

    cfg = from_args(TrainConfig, a)
    res = train(cfg)
    if res and not cfg.quiet:
        rows = [[name, iou] for name, iou in res["per_class_iou"].items()]
        rows.append(["mIoU (best)", res["val_miou"]])
        title = f"{cfg.model} on {cfg.data}: {res['epochs']} epochs, {res['train_time_s']:.0f} s"
        _table(title, ["class", "val IoU"], rows, {"val IoU": ".4f"})
        print(f"wrote {cfg.out}/best.pt, last.pt, metrics.json, curves.png")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from rich.progress import Progress

    from edgeseg.train.evaluate import run_eval

    cfg = from_args(EvalConfig, a)
    with Progress(console=_stderr(), transient=True) as bar:
        task = bar.add_task("evaluating", total=None)
        res = run_eval(cfg, progress=lambda i, n: bar.update(task, completed=i, total=n))
    rows = [
        [c, iou, res["per_class_dice"][c]] + ([res["per_class_hd95"][c]] if cfg.hd95 else [])
        for c, iou in res["per_class_iou"].items()
    ]
    rows.append(["mean", res["miou"], res["mean_dice"]] + ([""] if cfg.hd95 else []))
    title = (
        f"{Path(cfg.model).name} on {cfg.data} [{cfg.split}, {res['images']} images, "
        f"{res['backend']}]"
    )
    columns = ["class", "IoU", "Dice"] + (["HD95 px"] if cfg.hd95 else [])
    _table(title, columns, rows, {"IoU": ".4f", "Dice": ".4f", "HD95 px": ".1f"})
    print(
        f"mIoU {res['miou']:.4f}  pixel acc {res['pixel_acc']:.4f}  mean Dice "
        f"{res['mean_dice']:.4f}"
    )
    _write_json(cfg.json, res)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from edgeseg.export.chain import export_model

    cfg = from_args(ExportConfig, a)
    res = export_model(cfg)
    columns = ["file", "precision", "output", "size MB", "max |diff|", "label agreement"]
    rows = [
        [
            Path(f["path"]).name,
            f.get("precision", ""),
            f.get("output", ""),
            f.get("size_mb", ""),
            f.get("max_abs_diff", ""),
            f.get("label_agreement", ""),
        ]
        for f in res["files"]
    ]
    formats = {"size MB": ".3f", "max |diff|": ".2e", "label agreement": ".4f"}
    _table(f"export {cfg.checkpoint} -> {res['out']}", columns, rows, formats)
    for f in res["files"]:
        _int8_lines(f)
    _write_json(cfg.json, res)
    return 0


def _int8_lines(f: dict[str, Any]) -> None:
    """An INT8 file's calibration, accuracy against FP32 per class, and the layers kept."""
    name = Path(f["path"]).name
    if f.get("calibration"):
        print(f"{name}: calibration: {f['calibration']}")
    acc = f.get("accuracy")
    if acc:
        rows = [[c, v["fp32"], v["int8"], v["change_points"]] for c, v in acc["per_class"].items()]
        rows.append(["mIoU", acc["fp32_miou"], acc["int8_miou"], -acc["drop_points"]])
        tries = ", ".join(f"{r['kept']} kept: -{r['drop_points']:.2f}" for r in acc["rounds"])
        title = (
            f"{name}: INT8 against FP32 on {acc['held_out_images']} held-out images (val): "
            f"mIoU -{acc['drop_points']:.2f} points, within the budget of {acc['max_drop']:g} "
            f"(layers kept in float, mIoU points: {tries})"
        )
        formats = {"FP32 IoU": ".4f", "INT8 IoU": ".4f", "change (points)": "+.2f"}
        _table(title, ["class", "FP32 IoU", "INT8 IoU", "change (points)"], rows, formats)
        losing = acc["classes_losing_over_3_points"]
        if losing:
            print(f"{name}: classes losing over 3 points: {', '.join(losing)}")
    precision = f.get("kept_precision", "float").upper()
    for layer in f.get("kept", []):
        why = f.get("kept_sqnr_db", {}).get(layer)
        print(f"{name}: kept in {precision}: {layer}" + (f" (output SQNR {why} dB)" if why else ""))
    if f.get("agreement_note"):
        print(f"{name}: {f['agreement_note']}")


def cmd_predict(a: argparse.Namespace) -> int:
    from edgeseg.runtime.predict import PredictConfig, predict

    res = predict(from_args(PredictConfig, a))
    kinds = "labels as class-index PNG" + (", overlays as JPEG" if res["overlay"] else "")
    print(
        f"{res['images']} images -> {res['out']}/ ({kinds}); {res['model']}, {res['backend']} "
        f"on {res['device']}, {res['kernels']} kernels, {res['ms_per_image']:.1f} ms/image"
    )
    return 0


def _stream_sinks(cfg: StreamConfig, pipe, seg) -> None:
    from edgeseg.streaming.sinks import DisplaySink, MaskSink, VideoSink

    several = len(pipe.runners) > 1
    fps = next((r.fps for r in pipe.runners if r.fps), 25.0)
    if cfg.record:
        segment = cfg.record_segment * 60 if cfg.record_segment else None
        pipe.sinks.append(VideoSink(cfg.record, fps, segment_s=segment, several=several))
    if cfg.save_masks:
        pipe.sinks.append(MaskSink(cfg.save_masks, several, cfg.save_masks_max))
    if cfg.save_confidence:
        confidence = MaskSink(cfg.save_confidence, several, cfg.save_masks_max, "confidence")
        pipe.sinks.append(confidence)
    if cfg.display:
        pipe.sinks.append(DisplaySink(seg.spec.classes, seg.spec.palette, pipe.stats))


def _print_stream_report(report: dict[str, Any]) -> None:
    lat, st = report["latency_ms"], report["stages_ms"]
    counts = (
        f"{report['frames_in']} / {report['frames_out']} / {report['frames_dropped']} / "
        f"{report['frames_failed']}"
    )
    latency = f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f}"
    rows = [
        ["frames in / out / dropped / failed", counts],
        ["FPS", f"{report['fps']:.1f}"],
        ["latency p50 / p95 / p99 / max (ms)", latency],
    ]
    rows += [[f"{k} p50 / p99 (ms)", f"{v['p50']:.2f} / {v['p99']:.2f}"] for k, v in st.items()]
    if report["reconnects"] or report["outage_s"]:
        rows.append(
            ["reconnects / outage (s)", f"{report['reconnects']} / {report['outage_s']:.1f}"]
        )
    for s in report["sources"] if len(report["sources"]) > 1 else []:
        rows.append(
            [
                f"{s['name']} ({s['mode']}, {s['state']})",
                f"{s['frames_out']} out, {s['frames_dropped']} dropped, {s['frames_failed']} "
                "failed",
            ]
        )
    _table(
        f"stream: {report['frames_out']} frames from {report['source']}", ["metric", "value"], rows
    )


class _Signals:
    """The first SIGINT/SIGTERM stops the stream cleanly (before it started: at once); a second
    forces the exit."""

    def __init__(self) -> None:
        import signal

        self.pipe, self.count = None, 0
        self.old = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}

    def __call__(self, signum, _frame) -> None:
        self.count += 1
        if self.count == 1 and self.pipe is not None:
            self.pipe.stop()  # finish cleanly: files finalised, report written
        else:
            raise _ForcedExit(128 + signum)

    def restore(self) -> None:
        import signal

        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class _ForcedExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _run_stream(pipe, cfg: StreamConfig, signals: _Signals) -> int:
    """Run to the end; the report written; the exit code (docs/operations.md)."""
    import gc
    import os

    tty = sys.stderr.isatty()

    def status(stats) -> None:
        if tty:
            print(f"\r{stats.status_line()}   ", end="", file=sys.stderr, flush=True)

    signals.pipe = pipe
    # Everything alive now (the model, ONNX Runtime, PyTorch if it loaded) lives until exit:
    # keep it out of the garbage collector's reach, or every full collection that the per-frame
    # allocations trigger walks all of it (the profile is in docs/pipeline.md).
    gc.freeze()
    try:
        pipe.start()
        report = pipe.join(on_status=status)
    except _ForcedExit as e:  # a second signal: the report as it stands, then out at once
        report = pipe.report()
        _write_json(cfg.report, report)
        print(f"\nedgeseg stream: forced to stop (exit {e.code})", file=sys.stderr, flush=True)
        os._exit(e.code)
    if tty:
        print(file=sys.stderr)
    _write_json(cfg.report, report)
    _print_stream_report(report)
    for err in report["errors"]:
        print(f"edgeseg stream: {err}", file=sys.stderr)
    return report["exit_code"]


def _serve_metrics(cfg: StreamConfig, pipe, seg):
    """The metrics endpoint when ``--metrics-port`` asks for one (the pipeline closed if it
    cannot listen)."""
    if cfg.metrics_port is None:
        return None
    from pathlib import Path

    from edgeseg.streaming.metrics import MetricsServer

    try:
        server = MetricsServer(
            pipe.stats,
            cfg.metrics_port,
            cfg.metrics_host,
            model=Path(seg.model_path).name,
            backend=seg.backend.name,
        )
    except BaseException:
        pipe.close()
        raise
    print(f"edgeseg stream: metrics at {server.url}", file=sys.stderr)
    return server


def cmd_stream(a: argparse.Namespace) -> int:
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.streaming.pipeline import StreamPipeline

    cfg = from_args(StreamConfig, a)
    cfg.check()
    signals = _Signals()  # from the start: a signal while a camera opens is not lost
    try:
        seg = Segmenter(cfg.model, **cfg.segmenter_options())
        pipe = StreamPipeline(seg, config=cfg)
        try:
            _stream_sinks(cfg, pipe, seg)
        except Exception:
            pipe.close()
            raise
        what = f"{seg.backend.name}, {seg.kernels} kernels, {pipe.mode}, batch {pipe.batch}"
        readers = sorted({s.via for s in pipe.sources if s is not None and s.via})
        what += "".join(f", {r}" for r in readers)
        line = f"edgeseg stream: {pipe.source_names} -> {_model_line(seg)} [{what}]"
        print(line, file=sys.stderr)
        metrics = _serve_metrics(cfg, pipe, seg)
        try:
            return _run_stream(pipe, cfg, signals)
        finally:
            if metrics is not None:
                metrics.close()
    except _ForcedExit as e:  # stopped before the stream started: nothing to finalise
        print(f"edgeseg stream: stopped while starting (exit {e.code})", file=sys.stderr)
        return e.code
    finally:
        signals.restore()


def _zoo(cfg, progress) -> int:
    from edgeseg.bench.report import write_zoo_plot
    from edgeseg.bench.zoo import parse_sizes, run_zoo

    if not cfg.data:
        raise EdgesegError(
            "--zoo needs --data SPEC for the val mIoU (e.g. camvid:../shared/data/camvid)"
        )
    sizes = parse_sizes(cfg.sizes) if cfg.sizes else None
    res = run_zoo(cfg.models, cfg.data, sizes, cfg.warmup, cfg.timed_frames, cfg.isolate, progress)
    columns = ["model", "size", "params M", "GFLOPs", "latency p50 ms", "p99 ms", "FPS", "val mIoU"]
    rows = [
        [
            r["model"],
            r["size"],
            r["params"] / 1e6,
            r["gflops"],
            r["latency_ms_p50"],
            r["latency_ms_p99"],
            r["throughput_fps"],
            "untrained" if r["miou"] is None else r["miou"],
        ]
        for r in res["rows"]
    ]
    _table(f"zoo: ONNX Runtime CPU, {res['machine']['cpu']}", columns, rows)
    if cfg.plot:
        write_zoo_plot(res["rows"], cfg.plot)
    _write_json(cfg.json, res)
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from edgeseg.bench.report import print_table, write_plot
    from edgeseg.bench.runner import run_bench

    console = _stderr()

    def progress(msg: str) -> None:
        console.print(f"[dim]{msg}[/]")

    cfg = from_args(BenchConfig, a)
    if cfg.zoo:
        return _zoo(cfg, progress)
    if not cfg.models:  # the shipped road model
        from edgeseg import zoo

        cfg.models = [str(zoo.resolve(None))]
        progress(f"edgeseg bench: {zoo.DEFAULT} (the shipped road model: {cfg.models[0]})")
    res = run_bench(cfg, progress)
    print_table(res)
    if cfg.plot:
        write_plot(res, cfg.plot)
    _write_json(cfg.json, res)
    if all("skipped" in r for r in res["results"]):
        print("edgeseg bench: no configuration could run (reasons above)", file=sys.stderr)
        return 2
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from edgeseg.compress.prune import prune_checkpoint

    cfg = from_args(PruneConfig, a)
    res = prune_checkpoint(cfg)
    rows = [
        [k, res["before"].get(k, ""), res["pruned"].get(k, ""), res["after"].get(k, "")]
        for k in ("params", "gflops", "ort_cpu_ms", "val_miou")
    ]
    title = (
        f"prune {cfg.checkpoint} at ratio {cfg.ratio}: {res['gflops_cut']:.1%} fewer GFLOPs, "
        f"x{res['latency_speedup']:.2f} ONNX Runtime CPU speed, mIoU {res['miou_change']:+.4f}"
    )
    _table(title, ["", "before", "pruned", "fine-tuned"], rows)
    print(f"wrote {cfg.out}/pruned.pt, {cfg.out}/best.pt")
    _write_json(cfg.json, res)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from edgeseg.models import create_model, list_models
    from edgeseg.models.complexity import count_gflops, count_params, deployed_params

    cfg = from_args(InfoConfig, a)
    names = list_models() if cfg.name == "all" else [cfg.name]
    rows, out = [], {}
    for name in names:
        model = create_model(name, cfg.num_classes)
        deployed = deployed_params(model, cfg.input_size) / 1e6
        training = count_params(model) / 1e6
        gflops = count_gflops(model, cfg.input_size)
        rows.append([name, deployed, training if training != deployed else "", gflops])
        out[name] = {"params_m": deployed, "params_in_training_m": training, "gflops": gflops}
    h, w = cfg.input_size
    columns = ["model", "params (M)", "with training-only heads", "GFLOPs"]
    formats = {"params (M)": ".3f", "with training-only heads": ".3f", "GFLOPs": ".3f"}
    _table(f"{cfg.num_classes} classes at {h}x{w}", columns, rows, formats)
    _write_json(cfg.json, out)
    return 0


def _dla_reports(cfg) -> list:
    """The DLA pre-flight of what ``edgeseg check`` names: a file, a shipped model, an
    architecture, or every architecture."""
    from edgeseg import zoo
    from edgeseg.export.dla import check_architecture, check_onnx
    from edgeseg.models import list_models

    arch = {"num_classes": cfg.num_classes, "input_size": cfg.input_size}
    if cfg.model == "all":
        return [check_architecture(n, **arch, model_kwargs=cfg.model_kwargs) for n in list_models()]
    if cfg.model in list_models():
        return [check_architecture(cfg.model, **arch, model_kwargs=cfg.model_kwargs)]
    return [check_onnx(zoo.resolve(cfg.model, "onnx"))]  # a path stays itself; a name: its ONNX


def _print_dla(reports: list) -> None:
    """One table of the layers falling back per model (a summary row each for several)."""
    from edgeseg.export.dla import DOCS_URL, DOCS_VERSION

    if len(reports) > 1:
        rows = [
            [r.model, r.layers, len(r.fallback_nodes),
             ", ".join(f"{k} ({n})" for k, n in r.reasons().most_common(4)) or "DLA-clean"]
            for r in reports
        ]  # fmt: skip
        _table("DLA pre-flight (FP16)", ["model", "layers", "fall back", "main reasons"], rows)
    for r in reports if len(reports) == 1 else []:
        if r.precision_error:
            print(f"{r.model}: {r.precision_error}")
        rows = [[f.node, f.op, f.layer, f.reason, f.fix] for f in r.findings]
        if rows:
            title = f"{r.model}: {len(r.fallback_nodes)} of {r.layers} layers fall back to the GPU"
            _table(title, ["node", "op", "TensorRT layer", "reason", "fix"], rows)
        for note in r.notes:
            print(f"{r.model}: note: {note}")
    for r in reports:
        if r.clean:
            print(f"{r.model}: DLA-clean: all {r.layers} layers run on the DLA ({r.precision})")
    print(f"rules: DLA Supported Layers and Restrictions, {DOCS_VERSION}: {DOCS_URL}")


def cmd_check(a: argparse.Namespace) -> int:
    cfg = from_args(CheckConfig, a)
    if not cfg.dla:
        raise EdgesegError("say what to check: --dla (the DLA pre-flight)")
    reports = _dla_reports(cfg)
    _print_dla(reports)
    _write_json(cfg.json, {"dla": [r.to_dict() for r in reports]})
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from edgeseg import zoo

    cfg = from_args(zoo.ModelsConfig, a)
    cards = [zoo.card(cfg.name)] if cfg.name else [zoo.card(n) for n in zoo.names()]
    rows = [
        [c.name + (" (default)" if c.name == zoo.DEFAULT else ""), c.arch, len(c.classes),
         f"{c.input_size[0]}x{c.input_size[1]}", c.val_miou, c.size_mb(), c.data, c.licence]
        for c in cards
    ]  # fmt: skip
    columns = ["name", "architecture", "classes", "input", "val mIoU", "MB", "data", "licence"]
    _table("shipped models (--model NAME, Segmenter('NAME'))", columns, rows, {"MB": ".2f"})
    for c in cards if cfg.name else []:
        rows = [[k, v] for k, v in c.per_class_iou.items()]
        _table(f"{c.name}: val IoU per class", ["class", "IoU"], rows, {"IoU": ".4f"})
        print(f"trained with: {c.command}\non: {c.machine}, in {c.train_time}")
        for note in c.notes:
            print(f"note: {note}")
    _write_json(cfg.json, [{**asdict(c), "folder": str(c.folder)} for c in cards])
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from edgeseg.demo import run_demo

    run_demo(from_args(DemoConfig, a))
    return 0


def _model_line(seg) -> str:
    """Which model runs: a shipped one by its name and what it is, else its file."""
    from edgeseg import zoo

    if not zoo.is_name(seg.model_name):
        return seg.model_path
    c = zoo.card(seg.model_name)
    return f"{c.name} (shipped {c.arch}, val mIoU {c.val_miou:.3f} on {c.data.split(' (')[0]})"


def _stderr():
    from edgeseg._table import console

    return console(stderr=True)


# ---------------------------------------------------------------------------- parser


def _commands() -> list[tuple[str, str, type, Any]]:
    """Every command: (name, one-line help, its config dataclass, the function that runs it)."""
    from edgeseg.zoo import ModelsConfig

    return [
        ("train", "train a model on a dataset", TrainConfig, cmd_train),
        ("eval", "accuracy of a .pt or .onnx on a dataset split", EvalConfig, cmd_eval),
        ("export", "checkpoint -> ONNX (FP32, FP16, INT8) and TensorRT engines", ExportConfig,
         cmd_export),
        ("predict", "segment images; write label PNGs (and overlays)", PredictConfig, cmd_predict),
        ("prune", "structured channel pruning (torch-pruning) + fine-tuning, before/after table",
         PruneConfig, cmd_prune),
        ("bench", "latency, FPS, per-stage times and memory against baselines", BenchConfig,
         cmd_bench),
        ("stream", "segment live video: cameras, files, RTSP, GStreamer", StreamConfig,
         cmd_stream),
        ("models", "the models that ship with edgeseg, by name", ModelsConfig, cmd_models),
        ("check", "pre-flight a model for a target: --dla (TensorRT's DLA)", CheckConfig,
         cmd_check),
        ("info", "parameters and GFLOPs of an architecture", InfoConfig, cmd_info),
        ("demo", "the shipped road model on real dash-cam video (--train: train, export, "
         "stream a model of its own)", DemoConfig, cmd_demo),
    ]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (``edgeseg COMMAND --help`` for each command's flags)."""
    p = argparse.ArgumentParser(
        prog="edgeseg", description="Real-time semantic segmentation for the edge."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, config, func in _commands():
        command = sub.add_parser(name, help=help_text)
        add_arguments(command, config)
        command.set_defaults(func=func)
    return p


def _flag_row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
    metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else "")
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    if action.choices:
        metavar = ", ".join(map(str, action.choices))
    text = (action.help or "").replace("%%", "%")
    shown = action.default not in (None, False, argparse.SUPPRESS) and "(default:" not in text
    if shown and action.option_strings:
        text += f" (default: {action.default})"
    text = text.replace("|", "\\|")
    return f"| {flags} | {metavar} | {text} |"


def reference_markdown() -> str:
    """docs/cli.md: every command's arguments, generated from the parser."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out = [
        "# `edgeseg` command reference",
        "",
        "Generated from the parser (`edgeseg/cli.py`); regenerate with",
        "`python -c \"from edgeseg.cli import reference_markdown as r; print(r(), end='')\" "
        "> docs/cli.md`.",
        "The same text, formatted for a terminal: `edgeseg COMMAND --help`.",
        "",
    ]
    for name, parser in sub.choices.items():
        out += [
            f"## `edgeseg {name}`",
            "",
            f"{helps[name]}.",
            "",
            "| argument | value | |",
            "|---|---|---|",
        ]
        out += [_flag_row(a) for a in parser._actions if a.dest != "help"]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgesegError as e:
        print(f"edgeseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgeseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
