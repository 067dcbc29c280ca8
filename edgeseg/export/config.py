"""``ExportConfig``: the settings of the export chain (``edgeseg.export.chain.export_model``), free
of PyTorch so the CLI can build its flags from them without loading it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from edgeseg._config import setting
from edgeseg._lazy import require
from edgeseg.errors import EdgesegError
from edgeseg.export.engine import EngineOptions

# INT8 calibration methods and flavours (edgeseg.export.int8 implements them).
METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("trt", "cpu")


def parse_drop(text: str) -> float | None:
    """``--max-drop``: points of mIoU, or ``none``."""
    return None if text.lower() == "none" else float(text)


@dataclass
class ExportConfig:
    """Everything ``edgeseg export`` takes (each field is a flag: ``calib_count`` ->
    ``--calib-count``)."""

    checkpoint: str = setting(
        help="a .pt from 'edgeseg train' (or an FP32 .onnx for INT8/TensorRT)", positional=True
    )
    out: str = setting(help="folder for the exported files")
    input_size: tuple[int, int] | None = setting(
        None, "HxW baked into the graph", default_text="the training size"
    )
    simplify: bool = setting(False, "fold and fuse the graph with onnxslim")
    argmax: bool = setting(
        False, "end the graph with ArgMax: uint8 labels leave the model (model.argmax.onnx)"
    )
    fp16: bool = setting(
        False, "write model.fp16.onnx: FP16 weights/activations, sensitive ops and I/O in FP32"
    )
    int8: bool = setting(
        False, "also write model.int8-TARGET.onnx: post-training INT8 quantization (Q/DQ)"
    )
    calib: str | None = setting(
        None,
        "calibration frames: a dataset spec, image folder or video (default: --data's train split)",
        metavar="SPEC|DIR|VIDEO",
    )
    calib_count: int = setting(128, "calibration frames to use", metavar="N")
    calib_method: str = setting("minmax", "INT8 calibration", choices=METHODS)
    target: str = setting(
        "trt",
        "INT8 flavour: trt (symmetric, for TensorRT) or cpu (what ONNX Runtime's CPU runs fastest)",
        choices=TARGETS,
    )
    keep_fp32: int = setting(
        0, "keep the K convolutions most sensitive to quantization in float", metavar="K"
    )
    max_drop: float | None = setting(
        1.0,
        "INT8 loses at most this many mIoU points against FP32 on held-out frames (the val "
        "split): the most sensitive layers go back to float until it holds, or the export "
        "fails and writes nothing (none: no check)",
        metavar="POINTS|none",
        parse=parse_drop,
    )
    max_kept: int = setting(
        8, "--max-drop: the most layers kept in float before the export gives up", metavar="N"
    )
    qat: bool = setting(
        False,
        "quantization-aware fine-tuning first, then the INT8 export: writes qat.pt and "
        "model.int8-qat-TARGET.onnx; needs data and epochs",
    )
    data: str | None = setting(
        None,
        "the training data: QAT trains on it, INT8 calibrates on its train split and is checked "
        "on its val split (default: the dataset the checkpoint records, when it is here)",
        metavar="SPEC",
    )
    epochs: int | None = setting(None, "QAT fine-tuning epochs")
    device: str = setting("auto", "QAT training device")
    trt: bool = setting(
        False,
        "also build a TensorRT engine of the last ONNX written, on this machine (cached by "
        "ONNX hash, TensorRT version, GPU and options)",
    )
    timing_cache: str | None = setting(
        None, "TensorRT timing cache to read and update", metavar="FILE"
    )
    workspace: int | None = setting(None, "TensorRT builder workspace limit", metavar="MB")
    dynamic: str | None = setting(
        None, "TensorRT batch-size profile", default_text="1,1,1", metavar="MIN,OPT,MAX"
    )
    dla: int | None = setting(
        None,
        "--trt: build for this DLA core of a Jetson (FP16 or INT8 ONNX); a pre-flight "
        "('edgeseg check --dla') refuses layers that would fall back to the GPU",
        metavar="CORE",
    )
    gpu_fallback: bool = setting(
        False, "--dla: let the layers the DLA cannot run fall back to the GPU instead of refusing"
    )

    json: str | None = setting(None, "write the report as JSON", metavar="OUT")

    @property
    def from_onnx(self) -> bool:
        return Path(self.checkpoint).suffix.lower() == ".onnx"

    def check(self) -> None:
        """Everything the chain needs, before anything is written; errors name the setting."""
        if not Path(self.checkpoint).is_file():
            raise EdgesegError(
                f"checkpoint not found: {self.checkpoint}; pass a .pt written by 'edgeseg train'"
            )
        if self.from_onnx:
            needs_ckpt = [k for k in ("argmax", "fp16", "qat", "simplify") if getattr(self, k)]
            if needs_ckpt or self.input_size or not (self.int8 or self.trt):
                raise EdgesegError(
                    f"{self.checkpoint} is an ONNX model: export takes a .pt from 'edgeseg train' "
                    "(an FP32 .onnx only as the start of int8 or trt)"
                )
        if self.qat and not (self.data and self.epochs):
            raise EdgesegError(
                "qat needs data (the training set, e.g. camvid:PATH) and epochs (e.g. 3)"
            )
        if self.calib_count < 1 or self.keep_fp32 < 0:
            raise EdgesegError("calib_count must be at least 1 and keep_fp32 at least 0")
        if self.max_drop is not None and self.max_drop < 0:
            raise EdgesegError(f"max_drop must be at least 0 points (or none), got {self.max_drop}")
        if self.max_kept < self.keep_fp32:
            raise EdgesegError(f"max_kept ({self.max_kept}) is below keep_fp32 ({self.keep_fp32})")
        self.engine_options()
        if self.trt:
            require("tensorrt")

    def engine_options(self) -> EngineOptions:
        """The TensorRT build options; the DLA's own limits on them refused with the reason."""
        opts = EngineOptions.parse_dynamic(self.dynamic, self.workspace)
        if self.dla is None:
            if self.gpu_fallback:
                raise EdgesegError("gpu_fallback is for a DLA build: give dla (a core, e.g. 0)")
            return opts
        if not self.trt or self.dla < 0:
            raise EdgesegError(f"dla needs trt and a core number from 0, got {self.dla}")
        if not (self.from_onnx or self.fp16 or self.int8 or self.qat):
            raise EdgesegError(
                "the DLA runs FP16 or INT8 only, and TensorRT takes the precision from the ONNX: "
                "add --fp16 or --int8"
            )
        if not opts.min_batch == opts.opt_batch == opts.max_batch:
            raise EdgesegError("the DLA takes static shapes: --dynamic needs MIN = OPT = MAX")
        return replace(opts, dla_core=self.dla, gpu_fallback=self.gpu_fallback)


@dataclass
class CheckConfig:
    """Everything ``edgeseg check`` takes (``model`` positional)."""

    model: str = setting(
        help="an .onnx file, a shipped model's name, a registered architecture or 'all' (every "
        "architecture, exported as --fp16 writes it)",
        positional=True,
    )
    dla: bool = setting(
        False, "pre-flight for TensorRT's DLA: each layer that would fall back, why, and the fix"
    )
    num_classes: int = setting(11, "an architecture's output classes")
    input_size: tuple[int, int] = setting((352, 480), "an architecture's input HxW")
    model_kwargs: dict | None = setting(
        None, "an architecture's keyword arguments (create_model)", metavar="JSON"
    )
    json: str | None = setting(None, "write the report as JSON", metavar="OUT")
