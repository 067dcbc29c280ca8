"""Make a shipped model (edgeseg/zoo/NAME/) from a training run: the checkpoint and its ONNX
with weights stored in half precision, and the model card with what both score.

    python benchmarks/zoo_model.py RUN/best.pt --name camvid-small \
        --data camvid:../shared/data/camvid --command "edgeseg train ..." \
        --machine "2-core x86-64 CPU (AMD EPYC)" --train-time "5 h 10 min"

Half-precision storage halves the files (the zoo ships inside the package): every float tensor
of more than 1,024 values is stored as float16 and turned back into float32 when loaded (the
checkpoint by ``load_state_dict``, the ONNX by a Cast that ONNX Runtime folds at load), so the
model computes in FP32 as it was trained. The card records the val mIoU of the stored files, the
checkpoint's and the ONNX's each (``edgeseg eval``), so "scores the same" is measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ZOO = Path(__file__).resolve().parents[1] / "edgeseg" / "zoo"
SMALL = 1024  # tensors with fewer values stay float32 (biases, BatchNorm, resize scales)


def half_checkpoint(src: Path, dst: Path) -> None:
    """The deployable weights only (no optimizer, no raw weights), large tensors in float16."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    for key in ("optimizer", "raw_state_dict", "history"):
        ckpt.pop(key, None)
    ckpt["state_dict"] = {
        k: v.half() if v.is_floating_point() and v.numel() > SMALL else v
        for k, v in ckpt["state_dict"].items()
    }
    ckpt["stored_fp16"] = True
    torch.save(ckpt, dst)


def half_onnx(src: Path, dst: Path) -> None:
    """Large float initializers as float16, each followed by a Cast back to float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) <= SMALL:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16))
        half.name = f"{init.name}__fp16"
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def scores(path: Path, data: str) -> dict:
    from edgeseg.train.evaluate import evaluate

    res = evaluate(path, data, "val", device="cpu")
    return {"miou": round(res["miou"], 4), "per_class_iou": res["per_class_iou"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True, help="dataset spec the card's figures come from")
    ap.add_argument("--command", required=True, help="the training command, as it was run")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--train-time", required=True)
    ap.add_argument("--data-name", default="CamVid (SegNet release: 367 train, 101 val images)")
    ap.add_argument("--licence", default="CC BY-NC 4.0 (CamVid): research and evaluation use")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--zoo", type=Path, default=ZOO, help="where the model folder goes")
    a = ap.parse_args(argv)
    from edgeseg.export.onnx import export_onnx
    from edgeseg.models.checkpoint import read_checkpoint

    ckpt = read_checkpoint(a.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx32 = Path(export_onnx(a.checkpoint, work)["path"])
        half_checkpoint(a.checkpoint, work / "model.pt")
        half_onnx(onnx32, work / "model.onnx")
        pt, onnx = scores(work / "model.pt", a.data), scores(work / "model.onnx", a.data)
        full = scores(a.checkpoint, a.data)
        spec = ckpt["spec"]
        card = {
            "name": a.name,
            "arch": ckpt["arch"],
            "classes": spec["classes"],
            "input_size": [spec["input"]["height"], spec["input"]["width"]],
            "val_miou": onnx["miou"],
            "per_class_iou": {k: round(v, 4) for k, v in onnx["per_class_iou"].items()},
            "data": a.data_name,
            "licence": a.licence,
            "command": a.command,
            "machine": a.machine,
            "train_time": a.train_time,
            "notes": [
                f"val mIoU of the stored files: checkpoint {pt['miou']}, ONNX {onnx['miou']}; "
                f"of the FP32 training checkpoint {full['miou']}",
                *a.note,
            ],
        }
        (work / "card.json").write_text(json.dumps(card, indent=1) + "\n")
        out = a.zoo / a.name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in ("model.pt", "model.onnx", "card.json"):
            shutil.move(work / f, out / f)
    sizes = {f.name: round(f.stat().st_size / 2**20, 2) for f in out.iterdir()}
    json.dump({"card": card, "sizes_mb": sizes}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
