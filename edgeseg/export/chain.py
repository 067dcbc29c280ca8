"""The export chain, from a checkpoint to every deployable file, in one function that
``edgeseg export`` and ``edgeseg bench`` both call:

::

    CKPT ──(QAT)──► qat.pt ─────────────────────┐
      └──► model.onnx  (FP32; .argmax / .fp16)   ├──► model.int8[-qat]-TARGET.onnx (Q/DQ)
                                                 └──► *.engine + *.engine.json (TensorRT)

Everything the chain needs is checked before anything is written, and every file is written
into a staging folder beside the output and moved into place only when the whole chain has
succeeded: a failed export leaves the output folder as it was.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeseg import zoo
from edgeseg.errors import EdgesegError
from edgeseg.export import accuracy
from edgeseg.export.config import ExportConfig
from edgeseg.export.engine import build_engine
from edgeseg.export.int8 import Int8Export, calibration_inputs
from edgeseg.export.names import QAT_CHECKPOINT, engine_name, onnx_name
from edgeseg.export.onnx import export_onnx
from edgeseg.runtime.engine_files import sidecar_path


def _move_into(staging: Path, out: Path) -> dict[str, str]:
    """Move every staged file into ``out`` (renames on one file system); staged -> final path."""
    moved = {}
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(staging.iterdir()):
        os.replace(f, out / f.name)
        moved[str(f)] = str(out / f.name)
    return moved


def _onnx_steps(cfg: ExportConfig, stage: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The ONNX exports of the checkpoint; (their reports, the FP32 logits graph INT8 starts
    from, exported as ``model.onnx`` when no other step writes it)."""
    if cfg.from_onnx:
        return [], cfg.checkpoint
    kw = {"input_size": cfg.input_size, "simplify": cfg.simplify, "argmax": cfg.argmax}
    reports = [export_onnx(cfg.checkpoint, stage, fp16=cfg.fp16, **kw)]
    plain = not (cfg.fp16 or cfg.argmax)
    if cfg.int8 and not plain:  # INT8 quantizes the FP32 logits graph
        reports.insert(0, export_onnx(cfg.checkpoint, stage, **{**kw, "argmax": False}))
    return reports, reports[0]["path"] if cfg.int8 or plain else None


AGREEMENT_FRAMES = 8
AGREEMENT_WARN = 0.95


def int8_agreement(int8_path: Path, reference: str, calib: str) -> dict[str, Any]:
    """The INT8 file against the FP32 model it was made from, on real frames (the first of the
    calibration source): how many pixels' labels agree, and the largest logit difference. The
    reference runs in PyTorch (a ``.pt``) or ONNX Runtime (an FP32 ``.onnx``)."""
    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

    int8 = OnnxRuntimeBackend(int8_path, "cpu")
    if reference.endswith(".pt"):
        from edgeseg.runtime.backends.torch import TorchBackend

        ref, against = TorchBackend(reference, "cpu"), f"{Path(reference).name} in PyTorch"
    else:
        ref, against = OnnxRuntimeBackend(reference, "cpu"), f"the FP32 {Path(reference).name}"
    agree, diff = [], 0.0
    for x in calibration_inputs(calib, int8.spec, AGREEMENT_FRAMES):
        a, b = int8.infer(x), ref.infer(x)
        agree.append(float((a.argmax(1) == b.argmax(1)).mean()))
        diff = max(diff, float(abs(a - b).max()))
    report = {
        "output": int8.spec.output.kind,
        "max_abs_diff": diff,
        "label_agreement": min(agree),
        "agreement": f"{against}, {len(agree)} frames of {calib} (the lowest frame)",
    }
    if report["label_agreement"] < AGREEMENT_WARN:
        report["agreement_note"] = (
            f"labels agree with {against} on only {report['label_agreement']:.1%} of pixels: "
            "calibrate on frames like the deployment's (--calib), or keep the most sensitive "
            "layers in FP32 (--keep-fp32 N)"
        )
    return report


def training_data(cfg: ExportConfig) -> str:
    """The dataset INT8 calibrates on (by default) and is checked against: ``--data``, else the
    one the checkpoint records having been trained on, when it is on this machine."""
    if cfg.data:
        return cfg.data
    if cfg.from_onnx:
        from edgeseg.runtime.backends.onnxruntime import read_onnx_spec

        recorded = read_onnx_spec(cfg.checkpoint).source.get("dataset")
    else:
        from edgeseg.models.checkpoint import read_checkpoint

        recorded = read_checkpoint(cfg.checkpoint)["spec"].get("source", {}).get("dataset")
    if not recorded:
        raise EdgesegError(
            f"{cfg.checkpoint} records no training data to calibrate on: give --calib "
            "SPEC|DIR|VIDEO (and --data SPEC for the held-out check, or --max-drop none)"
        )
    scheme, _, where = recorded.partition(":")
    if scheme != "synthetic" and where and not Path(where).exists():
        raise EdgesegError(
            f"INT8 calibrates on the data {cfg.checkpoint} was trained on, {recorded}, but "
            f"{where} is not on this machine: give --calib SPEC|DIR|VIDEO and --data SPEC"
        )
    return recorded


def _quantized(cfg: ExportConfig, fp32_onnx: str, out: Path, data: str | None) -> dict[str, Any]:
    """The INT8 file of ``fp32_onnx``: within the --max-drop budget (with its accuracy report),
    or with --keep-fp32 layers in float when there is no budget."""
    job = Int8Export(fp32_onnx, cfg.calib or data, cfg.calib_count, (cfg.calib_method, cfg.target))
    try:
        if cfg.max_drop is None:
            return job.write(out, job.ranked()[: cfg.keep_fp32] if cfg.keep_fp32 else [])
        fp32 = accuracy.measure(fp32_onnx, data, cfg.target, int8=False)
        checked = accuracy.within_budget(job, out, fp32, cfg, data)
        return {**checked.pop("file"), "accuracy": checked}
    finally:
        job.close()


def _agreement(q: dict[str, Any], reference: str, calib: str) -> dict[str, Any]:
    """Label agreement with ``reference``; its warning only when no mIoU check ran (the check's
    per-class table says more than agreement on a handful of frames)."""
    check = int8_agreement(Path(q["path"]), reference, calib)
    if "accuracy" in q:
        check.pop("agreement_note", None)
    return check


def _int8_step(cfg: ExportConfig, stage: Path, base: str, work: Path) -> list[dict[str, Any]]:
    """QAT (when asked) and the INT8 Q/DQ export, each INT8 file checked against the FP32 model
    it came from: its mIoU on held-out frames (--max-drop) and its labels on calibration frames."""
    from edgeseg.export.qat import qat_finetune

    data = cfg.data  # export_model resolved it when it is needed
    calib = cfg.calib or data
    if not cfg.qat:
        q = _quantized(cfg, base, stage / onnx_name("int8", target=cfg.target), data)
        return [{**q, "precision": "int8", **_agreement(q, cfg.checkpoint, calib)}]
    qat = qat_finetune(cfg.checkpoint, data, stage / QAT_CHECKPOINT, cfg.epochs, cfg.target,
                       device=cfg.device)  # fmt: skip
    qat_onnx = export_onnx(
        qat["checkpoint"], work, input_size=cfg.input_size, simplify=cfg.simplify
    )
    name = onnx_name("int8", target=cfg.target, qat=True)
    q = _quantized(cfg, qat_onnx["path"], stage / name, data)
    # against the QAT-tuned weights it was made from (the pre-QAT ones differ by design)
    check = _agreement(q, qat["checkpoint"], calib)
    return [
        {"path": qat["checkpoint"], "kind": "checkpoint", **qat},
        {**q, "precision": "int8", **check},
    ]


def dla_preflight(onnx: str, gpu_fallback: bool) -> None:
    """Before a DLA build: refuse an FP32 graph, and (without GPU fallback) every layer that
    would fall back, each with its reason and fix."""
    from edgeseg.export.dla import check_onnx, refusal

    report = check_onnx(onnx)
    if report.precision_error:
        raise EdgesegError(report.precision_error)
    if report.findings and not gpu_fallback:
        raise EdgesegError(refusal(report))


def export_model(cfg: ExportConfig) -> dict[str, Any]:
    """Run the export chain of ``cfg``; returns ``{"files": [one report per file written]}``,
    each describing its own file (path, precision, size, checks)."""
    # a shipped model's name is its checkpoint (edgeseg export camvid-small --int8 ...)
    cfg = dataclasses.replace(cfg, checkpoint=str(zoo.resolve(cfg.checkpoint, "checkpoint")))
    cfg.check()
    quantized = cfg.int8 or cfg.qat
    if cfg.qat or quantized and (cfg.max_drop is not None or not cfg.calib):
        # before anything is written: the data calibration, QAT and the check need is here
        cfg = dataclasses.replace(cfg, data=training_data(cfg))
        if cfg.max_drop is not None:
            accuracy.held_out(cfg.data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgeseg-export-", dir=out) as tmp:
        stage, work = Path(tmp, "stage"), Path(tmp, "work")
        stage.mkdir()
        work.mkdir()
        files, base = _onnx_steps(cfg, stage)
        if quantized:
            files += _int8_step(cfg, stage, base, work)
        if cfg.trt:
            onnx = next((f["path"] for f in reversed(files) if f["path"].endswith(".onnx")), base)
            opts = cfg.engine_options()
            if opts.dla_core is not None:
                dla_preflight(onnx, opts.gpu_fallback)
            engine = stage / engine_name(Path(onnx).name)
            files.append({**build_engine(onnx, engine, opts, cfg.timing_cache), "kind": "engine"})
        moved = _move_into(stage, out)
    for f in files:
        f["path"] = moved.get(f["path"], f["path"])
        if Path(f["path"]).is_file():
            f["size_mb"] = round(Path(f["path"]).stat().st_size / 2**20, 3)
        if f.get("kind") == "engine":
            f["sidecar"] = str(sidecar_path(f["path"]))
    return {"checkpoint": cfg.checkpoint, "out": str(out), "files": files}
