"""``edgeseg predict``: segment image files; label PNGs (and overlays) written beside nothing
the user gave (the inputs are never overwritten)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg import zoo
from edgeseg._config import setting
from edgeseg.errors import EdgesegError


@dataclass
class PredictConfig:
    """Everything ``edgeseg predict`` takes (``model`` and ``inputs`` positional)."""

    inputs: list[str] = setting(
        help="image files, folders or quoted globs (a model file or name first: the model)",
        positional=True,
    )
    out: str = setting(help="folder for the label PNGs (and overlays)")
    overlay: bool = setting(False, "also write the overlay as NAME_overlay.jpg")
    alpha: float = setting(0.5, "overlay opacity")
    backend: str = setting("auto", "auto, ort, trt or torch")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    rebuild: bool = setting(
        True,
        "a .engine built by another TensorRT version or for another GPU is rebuilt from the "
        "ONNX it was built from, with the same options (--no-rebuild: refused)",
    )
    model: str | None = setting(
        None, "a .onnx, .engine or .pt, or a shipped model", default_text="the shipped road model"
    )

    def split_model(self) -> None:
        """``edgeseg predict model.onnx images/`` as before ``--model``: a first argument that
        is a model file (or a shipped model's name) and not an image is the model."""
        first = self.inputs[0] if self.inputs else ""
        model_file = Path(first).suffix.lower() in (".onnx", ".engine", ".plan", ".pt", ".pth")
        if self.model is None and len(self.inputs) > 1 and (model_file or first in zoo.names()):
            self.model, self.inputs = first, self.inputs[1:]


def output_names(images: list[Path], out: Path) -> list[str]:
    """Output stems, one per image: ``a.jpg`` and ``a.png`` get ``a_jpg``/``a_png``; refuses an
    output folder where an input image would be overwritten."""
    stems = [p.stem for p in images]
    names = [
        f"{p.stem}_{p.suffix[1:].lower()}" if stems.count(p.stem) > 1 else p.stem for p in images
    ]
    inputs = {p.resolve() for p in images}
    for name in names:
        for suffix in (".png", "_overlay.jpg"):
            if (out / f"{name}{suffix}").resolve() in inputs:
                raise EdgesegError(
                    f"out {out} would overwrite the input image {name}{suffix}; choose another "
                    "folder"
                )
    return names


def predict(cfg: PredictConfig) -> dict[str, Any]:
    """Segment every input image; returns what was written and how fast."""
    import cv2
    import numpy as np

    from edgeseg._io import atomic_path, find_images
    from edgeseg.runtime.segmenter import Segmenter

    cfg.split_model()
    if not 0.0 <= cfg.alpha <= 1.0:
        raise EdgesegError(f"alpha must be between 0 and 1, got {cfg.alpha}")
    images = find_images(cfg.inputs)
    out = Path(cfg.out)
    names = output_names(images, out)
    seg = Segmenter(cfg.model, backend=cfg.backend, device=cfg.device, rebuild=cfg.rebuild)
    out.mkdir(parents=True, exist_ok=True)
    times = []
    for path, name in zip(images, names):
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise EdgesegError(
                f"cannot read image {path}: the file is missing, empty or not an image"
            )
        res = seg(frame)
        times.append(sum(res.timings_ms[k] for k in ("pre", "infer", "post")))
        outputs = [(f"{name}.png", res.labels)]
        if cfg.overlay:
            outputs.append((f"{name}_overlay.jpg", res.overlay(cfg.alpha)))
        for file, img in outputs:
            with atomic_path(out / file, durable=False) as tmp:
                if not cv2.imwrite(str(tmp), img):
                    raise EdgesegError(
                        f"could not write {out / file}; check the folder is writable"
                    )
    return {
        "model": seg.model_name,
        "images": len(images),
        "out": str(out),
        "overlay": cfg.overlay,
        "backend": seg.backend.name,
        "device": seg.backend.device,
        "kernels": seg.kernels,
        "ms_per_image": float(np.mean(times)),
    }
