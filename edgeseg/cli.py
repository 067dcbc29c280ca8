"""The ``edgeseg`` command: one sub-command a function, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError


def parse_hw(text: str) -> tuple[int, int]:
    """``"352x480"`` -> (352, 480)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HEIGHTxWIDTH such as 352x480, got '{text}'"
        ) from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got '{text}'")
    return h, w


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        t.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r))
    from rich.console import Console

    Console().print(t)


def _positive_int(text: str, flag: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise EdgesegError(f"{flag} must be a positive integer or auto, got '{text}'")
    return int(text)


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        from edgeseg._io import write_text_atomic

        write_text_atomic(path, json.dumps(payload, indent=2, default=str))


# ---------------------------------------------------------------------------- sub-commands


def cmd_train(a: argparse.Namespace) -> int:
    from edgeseg.train.trainer import TrainConfig, train

    extra = {"workers": a.workers} if a.workers is not None else {}
    cfg = TrainConfig(
        data=a.data,
        model=a.model,
        out=a.out,
        epochs=a.epochs,
        minutes=a.minutes,
        batch_size=a.batch_size,
        crop=a.crop,
        input_size=a.input_size,
        lr=a.lr,
        loss=a.loss,
        class_weights=a.class_weights,
        device=a.device,
        seed=a.seed,
        val_every=a.val_every,
        ema=a.ema,
        freeze_bn=a.freeze_bn,
        teacher=a.teacher,
        resume=a.resume,
        scale=tuple(a.scale),
        **extra,
    )
    res = train(cfg)
    if res:
        rows = [[name, iou] for name, iou in res["per_class_iou"].items()]
        rows.append(["mIoU (best)", res["val_miou"]])
        _table(
            f"{a.model} on {a.data}: {res['epochs']} epochs, {res['train_time_s']:.0f} s",
            ["class", "val IoU"],
            rows,
        )
        print(f"wrote {a.out}/best.pt, last.pt, metrics.json, curves.png")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from rich.progress import Progress

    from edgeseg.train.evaluate import evaluate

    with Progress(console=_console(), transient=True) as bar:
        task = bar.add_task("evaluating", total=None)
        res = evaluate(
            a.model,
            a.data,
            a.split,
            a.backend,
            a.device,
            a.hd95,
            a.limit,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
            exact_qdq=a.exact_qdq,
        )
    rows = [
        [c, iou, res["per_class_dice"][c]] + ([res["per_class_hd95"][c]] if a.hd95 else [])
        for c, iou in res["per_class_iou"].items()
    ]
    rows.append(["mean", res["miou"], res["mean_dice"]] + ([""] if a.hd95 else []))
    _table(
        f"{Path(a.model).name} on {a.data} [{a.split}, {res['images']} images, {res['backend']}]",
        ["class", "IoU", "Dice"] + (["HD95 px"] if a.hd95 else []),
        rows,
    )
    print(
        f"mIoU {res['miou']:.4f}  pixel acc {res['pixel_acc']:.4f}  mean Dice {res['mean_dice']:.4f}"
    )
    _write_json(a.json, res)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from edgeseg.export.onnx import export_onnx

    if a.qat and not (a.data and a.epochs):
        raise EdgesegError(
            "--qat needs --data SPEC (the training set) and --epochs N (e.g. --epochs 3)"
        )
    res = export_onnx(a.checkpoint, a.out, a.input_size, a.simplify, a.argmax, a.fp16)
    if a.int8 or a.qat:
        from edgeseg.compress.quantize import quantize_int8

        calib = a.calib or (a.data if a.qat else None)
        if not calib:
            raise EdgesegError(
                "--int8 needs --calib SPEC|DIR|VIDEO: real frames to calibrate on (e.g. the training set)"
            )
        if a.qat:
            import tempfile

            from edgeseg.compress.qat import qat_finetune

            qat = qat_finetune(
                a.checkpoint, a.data, Path(a.out) / "qat.pt", a.epochs, a.target, device=a.device
            )
            res.update({f"qat_{k}": v for k, v in qat.items()})
            with tempfile.TemporaryDirectory() as d:
                fp32 = export_onnx(qat["checkpoint"], d, a.input_size, a.simplify)
                q = quantize_int8(
                    fp32["path"],
                    Path(a.out) / f"model.int8-qat-{a.target}.onnx",
                    calib,
                    a.calib_count,
                    a.calib_method,
                    a.target,
                    a.keep_fp32,
                )
        else:
            q = quantize_int8(
                res["path"],
                Path(a.out) / f"model.int8-{a.target}.onnx",
                calib,
                a.calib_count,
                a.calib_method,
                a.target,
                a.keep_fp32,
            )
        res = {**res, **{f"int8_{k}": v for k, v in q.items()}, "path": q["path"]}
    if a.trt:
        from edgeseg.export.tensorrt import EngineOptions, build_engine

        opts = EngineOptions.parse_dynamic(a.dynamic, a.workspace)
        eng = build_engine(
            res["path"], Path(res["path"]).with_suffix(".engine"), opts, a.timing_cache
        )
        res.update({f"engine_{k}": v for k, v in eng.items()})
    _table("export", ["field", "value"], [[k, v] for k, v in res.items()])
    _write_json(a.json, res)
    return 0


def _collect_images(inputs: list[str]) -> list[Path]:
    import glob

    exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in exts)
        elif p.is_file():
            found.append(p)
        elif any(ch in item for ch in "*?["):
            found += sorted(Path(q) for q in glob.glob(item) if Path(q).suffix.lower() in exts)
        else:
            raise EdgesegError(
                f"input not found: {item}; pass image files, folders or quoted globs"
            )
    if not found:
        raise EdgesegError(
            f"no images found in {' '.join(inputs)} (looked for {', '.join(sorted(exts))})"
        )
    return found


def cmd_predict(a: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from edgeseg._io import atomic_path
    from edgeseg.runtime import Segmenter

    images = _collect_images(a.inputs)
    seg = Segmenter(a.model, backend=a.backend, device=a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    times = []
    for path in images:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise EdgesegError(
                f"cannot read image {path}: the file is missing, empty or not an image"
            )
        res = seg(frame)
        times.append(sum(res.timings_ms[k] for k in ("pre", "infer", "post")))
        for name, img in [(f"{path.stem}.png", res.labels)] + (
            [(f"{path.stem}_overlay.jpg", res.overlay(a.alpha))] if a.overlay else []
        ):
            with atomic_path(out / name) as tmp:
                if not cv2.imwrite(str(tmp), img):
                    raise EdgesegError(
                        f"could not write {out / name}; check the folder is writable"
                    )
    print(
        f"{len(images)} images -> {out}/ (labels as class-index PNG{', overlays as JPEG' if a.overlay else ''}); "
        f"{seg.backend.name} on {seg.backend.device}, {seg.kernels} kernels, {float(np.mean(times)):.1f} ms/image"
    )
    return 0


def cmd_stream(a: argparse.Namespace) -> int:
    import gc
    import signal

    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.runtime.sinks import DisplaySink, MaskSink, VideoSink
    from edgeseg.runtime.stream import StreamPipeline

    sources = [*(a.source or []), *(str(c) for c in (a.camera or []))]
    if not sources:
        raise EdgesegError(
            "give a --source (file, folder, glob, URL, GStreamer pipeline, synthetic) or --camera N"
        )
    seg = Segmenter(a.model, backend=a.backend, device=a.device)
    workers = (
        a.infer_workers
        if a.infer_workers == "auto"
        else _positive_int(a.infer_workers, "--infer-workers")
    )
    pipe = StreamPipeline(
        seg,
        sources,
        [],
        a.mode,
        a.max_frames,
        a.duration,
        a.reconnect,
        a.alpha,
        infer_workers=workers,
    )
    try:
        fps = next((s.fps for s in pipe.sources if getattr(s, "fps", 0)), 25.0)
        if a.record:
            pipe.sinks.append(VideoSink(a.record, fps))
        if a.save_masks:
            pipe.sinks.append(MaskSink(a.save_masks, multi_source=len(pipe.sources) > 1))
        if a.display:
            pipe.sinks.append(DisplaySink(seg.spec.classes, seg.spec.palette, pipe.stats))
    except Exception:
        pipe.close()
        raise

    def on_signal(signum, _frame):  # finish cleanly: mp4 finalised, report written
        pipe.stop()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    tty = sys.stderr.isatty()
    print(
        f"edgeseg stream: {pipe.source_names} -> {seg.model_path} [{seg.backend.name}, {seg.kernels} kernels, "
        f"{pipe.mode}]",
        file=sys.stderr,
    )

    def status(stats) -> None:
        if tty:
            print(f"\r{stats.status_line()}   ", end="", file=sys.stderr, flush=True)

    # Everything alive now (the model, ONNX Runtime, PyTorch's modules if the CLI loaded them)
    # lives until exit: keep it out of the garbage collector's reach, or every full collection
    # that the per-frame allocations trigger walks all of it (gc_collect_main was ~10% of a CPU
    # stream's cycles in a perf profile; 4.5% of cycles in the interpreter after this, from 15%).
    gc.freeze()
    try:
        pipe.start()
        report = pipe.join(on_status=status)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if tty:
        print(file=sys.stderr)
    _write_json(a.report, report)
    lat, st = report["latency_ms"], report["stages_ms"]
    _table(
        f"stream: {report['frames_out']} frames from {report['source']}",
        ["metric", "value"],
        [
            [
                "frames in / out / dropped",
                f"{report['frames_in']} / {report['frames_out']} / {report['frames_dropped']}",
            ],
            ["FPS", report["fps"]],
            [
                "latency p50 / p95 / p99 / max (ms)",
                f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f}",
            ],
            *[[f"{k} p50 / p99 (ms)", f"{v['p50']:.2f} / {v['p99']:.2f}"] for k, v in st.items()],
        ],
    )
    for err in pipe.errors:
        print(f"edgeseg stream: warning: {err}", file=sys.stderr)
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from rich.console import Console

    from edgeseg.bench.report import print_table, write_plot, write_zoo_plot

    console = Console(stderr=True)

    def progress(msg: str) -> None:
        console.print(f"[dim]{msg}[/]")

    if a.zoo:
        from edgeseg.bench.zoo import parse_sizes, run_zoo

        if not a.data:
            raise EdgesegError(
                "--zoo needs --data SPEC for the val mIoU (e.g. camvid:../shared/data/camvid)"
            )
        res = run_zoo(
            a.models,
            a.data,
            parse_sizes(a.sizes) if a.sizes else None,
            a.warmup,
            a.frames or 50,
            not a.no_isolate,
            progress,
        )
        _table(
            f"zoo: ONNX Runtime CPU, {res['machine']['cpu']}",
            ["model", "size", "params M", "GFLOPs", "latency p50 ms", "p99 ms", "FPS", "val mIoU"],
            [
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
            ],
        )
        if a.plot:
            write_zoo_plot(res["rows"], a.plot)
        _write_json(a.json, res)
        return 0
    from edgeseg.bench.runner import BenchConfig, run_bench

    if not a.models:
        raise EdgesegError("give one or more models to bench (.pt, .onnx, .engine), or --zoo")
    cfg = BenchConfig(
        models=a.models,
        backends=a.backend.split(","),
        precisions=a.precision.split(",") if a.precision else None,
        source=a.source,
        frames=a.frames or 200,
        warmup=a.warmup,
        device=a.device,
        calib=a.calib,
        baselines=not a.no_baselines,
        isolate=not a.no_isolate,
    )
    res = run_bench(cfg, progress)
    print_table(res)
    if a.plot:
        write_plot(res, a.plot)
    _write_json(a.json, res)
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from edgeseg.compress.prune import prune_checkpoint

    res = prune_checkpoint(
        a.checkpoint,
        a.ratio,
        a.data,
        a.out,
        a.finetune_epochs,
        a.finetune_minutes,
        a.lr,
        a.batch_size,
        a.device,
        a.workers,
        distill=not a.no_distill,
    )
    rows = [
        [k, res["before"].get(k, ""), res["pruned"].get(k, ""), res["after"].get(k, "")]
        for k in ("params", "gflops", "ort_cpu_ms", "val_miou")
    ]
    _table(
        f"prune {a.checkpoint} at ratio {a.ratio}: {res['gflops_cut']:.1%} fewer GFLOPs, "
        f"x{res['latency_speedup']:.2f} ONNX Runtime CPU speed, mIoU {res['miou_change']:+.4f}",
        ["", "before", "pruned", "fine-tuned"],
        rows,
    )
    print(f"wrote {a.out}/pruned.pt, {a.out}/best.pt")
    _write_json(a.json, res)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from edgeseg.models import create_model, list_models
    from edgeseg.models.complexity import count_gflops, count_params

    names = list_models() if a.name == "all" else [a.name]
    rows = []
    for name in names:
        model = create_model(name, a.num_classes)
        rows.append(
            [name, f"{count_params(model) / 1e6:.3f}", f"{count_gflops(model, a.input_size):.3f}"]
        )
    _table(
        f"{a.num_classes} classes at {a.input_size[0]}x{a.input_size[1]}",
        ["model", "params (M)", "GFLOPs"],
        rows,
    )
    _write_json(a.json, {r[0]: {"params_m": float(r[1]), "gflops": float(r[2])} for r in rows})
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from edgeseg.demo import run_demo

    run_demo(a.out, seconds=a.seconds)
    return 0


# ---------------------------------------------------------------------------- parser


# The built-in architectures by name, free of PyTorch: the registry imports it (~1.5 s, ~200 MB),
# which commands such as ``stream`` on an ONNX model never need. A test keeps this equal to
# ``edgeseg.models.list_models()``; the trainer validates names against the registry itself.
MODEL_NAMES = ("bisenetv2", "mbv3_unet_large", "mbv3_unet_small")


def build_parser() -> argparse.ArgumentParser:
    from edgeseg.train import LOSSES

    p = argparse.ArgumentParser(
        prog="edgeseg", description="Real-time semantic segmentation for the edge."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on a dataset")
    t.add_argument(
        "--data", required=True, help="camvid:PATH, cityscapes:PATH, folder:PATH or synthetic[:N]"
    )
    t.add_argument("--model", required=True, help=f"one of: {', '.join(MODEL_NAMES)}")
    t.add_argument(
        "--out", required=True, help="folder for best.pt, last.pt, metrics.json, curves.png"
    )
    budget = t.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--minutes", type=float, help="wall-clock budget; the LR schedule fits it")
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument(
        "--crop",
        type=parse_hw,
        help="training crop HxW (default: 3/4 of the input size, multiples of 32)",
    )
    t.add_argument(
        "--input-size", type=parse_hw, help="model input HxW (default: dataset size rounded to 32)"
    )
    t.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.75), metavar=("MIN", "MAX"))
    t.add_argument("--lr", type=float, default=4e-3)
    t.add_argument("--loss", choices=LOSSES, default="ce+dice")
    t.add_argument(
        "--class-weights",
        choices=("auto", "full", "none"),
        default="auto",
        help="dataset class weights: auto = their square root, full = as given, none",
    )
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument(
        "--workers",
        type=int,
        help="data-loading processes (default: half the cores, 1 to 4; 0 on 2 cores or fewer)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--val-every",
        type=int,
        default=0,
        help="validate every N epochs (default 0: five times a run); always at the end",
    )
    t.add_argument(
        "--ema",
        type=float,
        default=0.999,
        metavar="DECAY",
        help="validate and save an exponential moving average of the weights (0: off)",
    )
    t.add_argument(
        "--freeze-bn",
        type=float,
        default=0.15,
        metavar="FRACTION",
        help="train the last FRACTION of the run with BatchNorm statistics frozen (0: never)",
    )
    t.add_argument(
        "--teacher", metavar="CKPT", help="also distil from this trained model's predictions"
    )
    t.add_argument("--resume", help="continue from a last.pt")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="accuracy of a .pt or .onnx on a dataset split")
    e.add_argument("model")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val", choices=("train", "val", "test"))
    e.add_argument("--backend", default="auto")
    e.add_argument("--device", default="auto")
    e.add_argument("--hd95", action="store_true", help="also per-class 95%% Hausdorff distance")
    e.add_argument("--limit", type=int, help="evaluate only the first N images")
    e.add_argument(
        "--exact-qdq",
        action="store_true",
        help="INT8 ONNX: run Q/DQ nodes as written (what TensorRT computes) instead of ONNX Runtime's "
        "fused CPU integer kernels",
    )
    e.add_argument("--json", metavar="OUT", help="write the metrics as JSON")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="checkpoint -> ONNX carrying its ModelSpec")
    x.add_argument("checkpoint")
    x.add_argument("--out", required=True, help="folder for model.onnx")
    x.add_argument(
        "--input-size", type=parse_hw, help="HxW baked into the graph (default: the training size)"
    )
    x.add_argument("--simplify", action="store_true", help="fold and fuse the graph with onnxslim")
    x.add_argument(
        "--fp16",
        action="store_true",
        help="write DIR/model.fp16.onnx: FP16 weights/activations, sensitive ops and I/O in FP32",
    )
    x.add_argument(
        "--int8",
        action="store_true",
        help="also write DIR/model.int8-TARGET.onnx: post-training INT8 quantization (Q/DQ)",
    )
    x.add_argument(
        "--calib",
        metavar="SPEC|DIR|VIDEO",
        help="calibration frames: a dataset spec, image folder or video",
    )
    x.add_argument("--calib-count", type=int, default=128, metavar="N")
    x.add_argument("--calib-method", default="minmax", help="minmax, entropy or percentile")
    x.add_argument(
        "--target",
        default="trt",
        choices=("trt", "cpu"),
        help="trt: symmetric INT8 for TensorRT; cpu: the layout ONNX Runtime's CPU runs fastest",
    )
    x.add_argument(
        "--keep-fp32",
        type=int,
        default=0,
        metavar="K",
        help="keep the K convolutions most sensitive to quantization in float",
    )
    x.add_argument(
        "--qat",
        action="store_true",
        help="quantization-aware fine-tuning first (torch.ao fake quantization), then the INT8 "
        "export: writes DIR/qat.pt and DIR/model.int8-qat-TARGET.onnx; needs --data and --epochs",
    )
    x.add_argument(
        "--data", metavar="SPEC", help="--qat: training data (also the calibration set by default)"
    )
    x.add_argument("--epochs", type=int, help="--qat: fine-tuning epochs")
    x.add_argument("--device", default="auto", help="--qat: training device")
    x.add_argument(
        "--trt",
        action="store_true",
        help="also build DIR/model.engine with TensorRT on this machine (cached by ONNX hash, "
        "TensorRT version, GPU and options)",
    )
    x.add_argument(
        "--timing-cache", metavar="FILE", help="TensorRT timing cache to read and update"
    )
    x.add_argument("--workspace", type=int, metavar="MB", help="TensorRT builder workspace limit")
    x.add_argument(
        "--dynamic", metavar="MIN,OPT,MAX", help="TensorRT batch-size profile (default 1,1,1)"
    )
    x.add_argument(
        "--argmax",
        action="store_true",
        help="end the graph with ArgMax: uint8 labels leave the model instead of float logits",
    )
    x.add_argument("--json", metavar="OUT")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser("predict", help="segment images; write label PNGs (and overlays)")
    r.add_argument("model")
    r.add_argument("inputs", nargs="+", help="image files, folders or quoted globs")
    r.add_argument("--out", required=True)
    r.add_argument("--overlay", action="store_true")
    r.add_argument("--alpha", type=float, default=0.5)
    r.add_argument("--backend", default="auto")
    r.add_argument("--device", default="auto")
    r.set_defaults(func=cmd_predict)

    i = sub.add_parser("info", help="parameters and GFLOPs of an architecture")
    pr = sub.add_parser(
        "prune", help="structured channel pruning (torch-pruning) + fine-tuning, before/after table"
    )
    pr.add_argument("checkpoint")
    pr.add_argument(
        "--ratio", type=float, required=True, help="fraction of channels to remove, e.g. 0.3"
    )
    pr.add_argument("--data", required=True, help="dataset spec for fine-tuning and the val mIoU")
    pr.add_argument("--out", required=True)
    ft = pr.add_mutually_exclusive_group(required=True)
    ft.add_argument("--finetune-epochs", type=int)
    ft.add_argument("--finetune-minutes", type=float)
    pr.add_argument("--lr", type=float, default=1e-3)
    pr.add_argument("--batch-size", type=int, default=4)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--workers", type=int)
    pr.add_argument(
        "--no-distill",
        action="store_true",
        help="fine-tune on the labels only (default: also distil from the unpruned model)",
    )
    pr.add_argument("--json", metavar="OUT")
    pr.set_defaults(func=cmd_prune)

    b = sub.add_parser(
        "bench", help="latency, FPS, per-stage times and memory of models against baselines"
    )
    b.add_argument(
        "models", nargs="*", help=".pt, .onnx or .engine files (with --zoo: trained checkpoints)"
    )
    b.add_argument(
        "--backend", default="auto", help="auto, ort, trt or torch; comma-separate several"
    )
    b.add_argument(
        "--precision", help="fp32, fp16, int8; comma-separate several (default: each file's own)"
    )
    b.add_argument("--source", default="synthetic", help="video file or synthetic[:WxH] (unpaced)")
    b.add_argument(
        "--frames", type=int, help="frames (and model-only calls) to time; default 200 (zoo: 50)"
    )
    b.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    b.add_argument("--device", default="auto")
    b.add_argument(
        "--calib",
        metavar="SPEC|DIR|VIDEO",
        help="INT8 calibration frames (default: the training data)",
    )
    b.add_argument(
        "--no-baselines", action="store_true", help="skip the naive loop and PyTorch eager"
    )
    b.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process (faster; peak RSS is then the whole run's)",
    )
    b.add_argument(
        "--zoo", action="store_true", help="every registered model: val mIoU against latency"
    )
    b.add_argument("--data", metavar="SPEC", help="--zoo: dataset for the val mIoU")
    b.add_argument(
        "--sizes", metavar="WxH,...", help="--zoo: input sizes (default 480x360,960x720)"
    )
    b.add_argument("--json", metavar="OUT")
    b.add_argument("--plot", metavar="OUT.png")
    b.set_defaults(func=cmd_bench)

    st = sub.add_parser(
        "stream", help="segment live video: cameras, files, RTSP, GStreamer -> display, mp4, masks"
    )
    st.add_argument("--model", required=True, help="model.onnx or a .pt checkpoint")
    st.add_argument(
        "--source",
        action="append",
        help="video file, image folder or glob, rtsp:// or http:// URL, "
        "GStreamer pipeline ending in appsink, or synthetic[:WxH[@FPS]]; repeat for several streams",
    )
    st.add_argument(
        "--camera", action="append", type=int, metavar="N", help="V4L2 camera index (repeatable)"
    )
    st.add_argument(
        "--mode",
        choices=("realtime", "every-frame"),
        help="realtime: newest frame wins (default for live sources); every-frame: nothing dropped "
        "(default for files)",
    )
    st.add_argument("--display", action="store_true", help="show a window (q or Esc quits)")
    st.add_argument("--record", metavar="OUT.mp4", help="write the overlay video")
    st.add_argument("--save-masks", metavar="DIR", help="write class-index PNGs")
    st.add_argument(
        "--report", metavar="R.json", help="write frame counts, FPS, latency and stage percentiles"
    )
    st.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    st.add_argument("--max-frames", type=int, help="stop each source after N frames")
    st.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    st.add_argument(
        "--reconnect", action="store_true", help="reopen a live source that drops, with back-off"
    )
    st.add_argument("--backend", default="auto")
    st.add_argument("--device", default="auto")
    st.add_argument(
        "--infer-workers",
        default="auto",
        metavar="N|auto",
        help="inference threads; auto: 2 single-threaded ONNX Runtime sessions on a multi-core CPU, else 1",
    )
    st.set_defaults(func=cmd_stream)

    i.add_argument("name", help="a model name, or 'all'")
    i.add_argument("--num-classes", type=int, default=11)
    i.add_argument("--input-size", type=parse_hw, default=(352, 480))
    i.add_argument("--json", metavar="OUT")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser(
        "demo", help="train on synthetic scenes, export, segment a clip (about 2 min on CPU)"
    )
    d.add_argument("--out", default="edgeseg_demo")
    d.add_argument("--seconds", type=float, default=60.0, help="training budget")
    d.set_defaults(func=cmd_demo)
    return p


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
