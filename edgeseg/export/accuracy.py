"""INT8 with an accuracy guarantee: the INT8 file loses at most ``max_drop`` mIoU points against
FP32 on held-out frames, or the export fails and writes nothing.

The check measures the files that deploy: the FP32 ONNX and the INT8 Q/DQ ONNX, both on ONNX
Runtime's CPU; for ``target="trt"`` with the Q/DQ nodes run as written (``exact_qdq``: the
arithmetic TensorRT does), for ``target="cpu"`` with ONNX Runtime's fused integer kernels (what
deploys there). Held-out frames are the dataset's val split, never the calibration frames.

While the drop exceeds the budget, the most sensitive convolutions go back to float, most
sensitive first: 1, 2, 4, ... layers up to ``max_kept``. Sensitivity is each convolution's output
SQNR with the whole model quantized (:func:`~edgeseg.export.int8.layer_sensitivity`): one
quantized and one float pass score every layer at once, where quantizing each of the ~50 layers
alone would cost 50 quantize-and-evaluate rounds; the local noise ranks layers well, and the
end-to-end mIoU, measured each round, decides. Kept layers run in FP16 for ``trt`` (Cast
islands in the Q/DQ file, which ONNX Runtime runs here as TensorRT will) and in FP32 for ``cpu``
(:data:`~edgeseg.export.int8.KEPT_PRECISION`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError

CALLOUT_POINTS = 3.0  # a class losing more than this is called out, whatever the mean does


def held_out(data: str) -> tuple[str, str]:
    """(dataset spec, split) of the frames the check measures: the val split."""
    from edgeseg.data import build_dataset

    try:
        build_dataset(data, "val")
    except EdgesegError as e:
        raise EdgesegError(
            f"the INT8 accuracy check measures held-out frames, the val split of {data}, which "
            f"cannot be read ({e}); give --data with a val split, or --max-drop none"
        ) from None
    return data, "val"


def measure(path: str | Path, data: str, target: str, int8: bool) -> dict[str, Any]:
    """mIoU and per-class IoU of one ONNX file on the held-out frames, run as it deploys."""
    from edgeseg.train.evaluate import evaluate

    spec, split = held_out(data)
    exact = int8 and target == "trt"
    res = evaluate(path, spec, split, backend="ort", device="cpu", exact_qdq=exact)
    return {"miou": res["miou"], "per_class_iou": res["per_class_iou"], "images": res["images"]}


def class_report(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """FP32 against INT8 per class, with the classes that lose more than CALLOUT_POINTS."""
    classes = {
        c: {
            "fp32": round(iou, 4),
            "int8": round(int8["per_class_iou"][c], 4),
            "change_points": round(100 * (int8["per_class_iou"][c] - iou), 2),
        }
        for c, iou in fp32["per_class_iou"].items()
    }
    losing = [c for c, v in classes.items() if v["change_points"] < -CALLOUT_POINTS]
    return {
        "fp32_miou": round(fp32["miou"], 4),
        "int8_miou": round(int8["miou"], 4),
        "drop_points": round(100 * (fp32["miou"] - int8["miou"]), 2),
        "per_class": classes,
        "classes_losing_over_3_points": losing,
        "held_out_images": fp32["images"],
    }


def kept_counts(start: int, cap: int) -> list[int]:
    """How many layers each round keeps in float: ``start``, then doubling, up to ``cap``."""
    counts, k = [start], max(1, start)
    while k <= cap:
        if k > start:
            counts.append(k)
        k *= 2
    if counts[-1] < cap:
        counts.append(cap)
    return counts


def within_budget(job, out: Path, fp32: dict[str, Any], cfg, data: str) -> dict[str, Any]:
    """Write ``job``'s INT8 file to ``out`` with the most sensitive layers kept in float until it
    loses at most ``cfg.max_drop`` points (``cfg``: the export's settings; ``data``: the dataset
    whose val split is held out). Returns the accepted round's report (``file``: the written
    file's own report); raises, naming every round, when none fits within ``cfg.max_kept``."""
    rounds: list[dict[str, Any]] = []
    for k in kept_counts(cfg.keep_fp32, cfg.max_kept):
        kept = job.ranked()[:k] if k else []  # sensitivity only when a layer must be kept
        written = job.write(out, kept)
        report = class_report(fp32, measure(out, data, cfg.target, int8=True))
        why = {name: f"output SQNR {db} dB" for name, db in written["kept_sqnr_db"].items()}
        report.update(kept=kept, kept_why=why, file=written, path=written["path"])
        rounds.append({"kept": k, "drop_points": report["drop_points"]})
        if report["drop_points"] <= cfg.max_drop:
            return {**report, "rounds": rounds, "max_drop": cfg.max_drop}
        if k >= len(job.ranked()):
            break
    best = min(rounds, key=lambda r: r["drop_points"])
    raise EdgesegError(
        f"INT8 loses {best['drop_points']:.2f} mIoU points against FP32 at best ({best['kept']} "
        f"layer{'' if best['kept'] == 1 else 's'} kept in float; rounds: "
        + ", ".join(f"{r['kept']} kept: {r['drop_points']:.2f}" for r in rounds)
        + f"), over the --max-drop of {cfg.max_drop:g}; nothing was written. Allow more "
        "(--max-drop, --max-kept), calibrate on frames like the deployment's (--calib), or "
        "fine-tune for INT8 (--qat)"
    )
