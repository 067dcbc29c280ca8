"""``BenchConfig``: the settings of ``edgeseg bench``, free of PyTorch (the CLI builds its flags
from them without loading it)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeseg._config import setting

DEFAULT_FRAMES, ZOO_FRAMES = 200, 50


@dataclass
class BenchConfig:
    """Everything ``edgeseg bench`` takes (each field a flag: ``cuda_graph`` ->
    ``--cuda-graph``; ``models`` the positional files)."""

    models: list[str] = setting(
        help=".pt, .onnx or .engine files (with --zoo: checkpoints)", factory=list, positional=True
    )
    backend: str = setting("auto", "auto, ort, trt or torch; comma-separate several")
    precision: str | None = setting(
        None, "fp32, fp16, int8; comma-separate several", default_text="the file's"
    )
    source: str = setting("synthetic", "video file or synthetic[:WxH] (unpaced)")
    frames: int | None = setting(
        None,
        "frames (and model-only calls) to time",
        default_text=f"{DEFAULT_FRAMES} ({ZOO_FRAMES} with --zoo)",
    )
    warmup: int = setting(20, "untimed calls first")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    calib: str | None = setting(
        None, "INT8 calibration frames", default_text="the training data", metavar="SPEC|DIR|VIDEO"
    )
    baselines: bool = setting(True, "also the naive loop and PyTorch eager (--no-baselines: not)")
    isolate: bool = setting(
        True,
        "measure each configuration in a process of its own (--no-isolate: in this one, faster; "
        "peak RSS is then the whole run's)",
    )
    cuda_graph: bool = setting(
        False, "also GPU rows with each frame's whole step replayed as one CUDA graph"
    )
    compile: bool = setting(False, "also torch rows through torch.compile")
    rebuild: bool = setting(
        True,
        "a .engine built by another TensorRT version or for another GPU is rebuilt from the "
        "ONNX it was built from, with the same options (--no-rebuild: refused)",
    )
    power: bool = setting(
        False,
        "also watts and joules per frame over the pipeline's frames: tegrastats on a Jetson, "
        "NVML on other NVIDIA GPUs, RAPL for the CPU (the whole board or package, not just "
        "edgeseg), and per frame above the idle draw measured for a second before",
    )
    zoo: bool = setting(False, "every registered model: val mIoU against latency")
    data: str | None = setting(None, "--zoo: dataset for the val mIoU", metavar="SPEC")
    sizes: str | None = setting(
        None, "--zoo: input sizes", default_text="480x360,960x720", metavar="WxH,..."
    )
    json: str | None = setting(None, "write the report as JSON", metavar="OUT")
    plot: str | None = setting(None, "write the figure", metavar="OUT.png")

    @property
    def backends(self) -> list[str]:
        return [b.strip() for b in self.backend.split(",") if b.strip()]

    @property
    def precisions(self) -> list[str] | None:
        """None: each file's own (a checkpoint: fp32)."""
        return [p.strip() for p in self.precision.split(",")] if self.precision else None

    @property
    def timed_frames(self) -> int:
        return self.frames or (ZOO_FRAMES if self.zoo else DEFAULT_FRAMES)

    def variants(self, backend: str) -> list[dict[str, bool]]:
        """Segmenter options each configuration of ``backend`` is measured with."""
        out: list[dict[str, bool]] = [{}]
        if self.cuda_graph and backend in ("torch", "trt"):
            out.append({"cuda_graph": True})
        if self.compile and backend == "torch":
            out += [{"compile": True}] + (
                [{"compile": True, "cuda_graph": True}] if self.cuda_graph else []
            )
        return out


@dataclass
class InfoConfig:
    """Everything ``edgeseg info`` takes (``name`` positional)."""

    name: str = setting(help="a model name, or 'all'", positional=True)
    num_classes: int = setting(11, "output classes")
    input_size: tuple[int, int] = setting((352, 480), "input HxW")
    json: str | None = setting(None, "write the figures as JSON", metavar="OUT")
