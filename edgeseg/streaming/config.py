"""``StreamConfig``: the settings of ``edgeseg stream`` and of the library's stream pipeline, free
of PyTorch so the CLI can build its flags from them without loading it.

The CLI parses this dataclass and hands it whole to :class:`~edgeseg.streaming.pipeline.
StreamPipeline`; nothing copies fields into keyword lists (that is how ``--stall-timeout`` once
got lost). Each setting has one default in one unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeseg._config import setting
from edgeseg.errors import EdgesegError
from edgeseg.runtime.smoothing import DEFAULT_CUT, check_smoothing

MODES = ("realtime", "every-frame")


def parse_workers(text: str) -> int | str:
    """``--infer-workers``: ``auto`` or a positive integer."""
    return text if text == "auto" else int(text) if text.isdigit() else text


@dataclass
class StreamConfig:
    """Everything ``edgeseg stream`` takes (each field a flag: ``max_frames`` ->
    ``--max-frames``)."""

    model: str | None = setting(None, "model.onnx, model.engine or a .pt checkpoint")
    source: list[str] = setting(
        help="video file, image folder or glob, rtsp:// or http:// URL, GStreamer pipeline "
        "ending in appsink, or synthetic[:WxH[@FPS]]; repeat for several streams",
        factory=list,
    )
    camera: list[int] = setting(help="V4L2 camera index (repeatable)", factory=list, metavar="N")
    mode: str | None = setting(
        None,
        "realtime: newest frame wins (default for live sources); every-frame: nothing dropped "
        "(default for files)",
        choices=MODES,
    )
    display: bool = setting(False, "show a window (q or Esc quits)")
    record: str | None = setting(
        None,
        "write the overlay video; {source} in the name: one file per source (several sources "
        "without it: NAME_<n>.mp4)",
        metavar="OUT.mp4",
    )
    record_segment: float | None = setting(
        None,
        "start a new video file every MINUTES (NAME.000.mp4, ...): a hard kill loses at most "
        "the last one",
        metavar="MINUTES",
    )
    save_masks: str | None = setting(
        None,
        "write class-index PNGs into DIR/run-<time>-<pid>/ ({source}: a folder each)",
        metavar="DIR",
    )
    save_masks_max: int | None = setting(
        None, "keep only the newest N mask (and confidence) files of the run", metavar="N"
    )
    confidence: bool = setting(
        False,
        "per-pixel confidence (the winning class's softmax probability): each source's mean in "
        "the report and the metrics; implied by --save-confidence and --min-confidence",
    )
    save_confidence: str | None = setting(
        None,
        "write confidence PNGs (uint8, 255 = certain) into DIR/run-<time>-<pid>/, named as the "
        "masks",
        metavar="DIR",
    )
    min_confidence: float | None = setting(
        None,
        "pixels whose winning class is less likely than P get the model's ignore label in the "
        "labels and masks (costmap-ready)",
        metavar="P",
    )
    report: str | None = setting(
        None, "write frame counts, FPS, latency and stage percentiles", metavar="R.json"
    )
    metrics_port: int | None = setting(
        None,
        "serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)",
        metavar="PORT",
    )
    metrics_host: str = setting(
        "127.0.0.1", "address the metrics listen on (0.0.0.0: every interface)", metavar="HOST"
    )
    alpha: float = setting(0.5, "overlay opacity")
    smooth: float = setting(
        0.0,
        "temporal smoothing: labels from each source's moving average of class scores, A the "
        "weight of the past (0: off); restarts at a scene cut, a reconnect or a new frame size",
        metavar="A",
    )
    max_frames: int | None = setting(None, "stop each source after N frames", metavar="N")
    duration: float | None = setting(None, "stop after S seconds", metavar="S")
    reconnect: bool = setting(
        False,
        "reopen a live source that drops, stalls or is not up yet, with back-off (at most 0.5 s "
        "between tries)",
    )
    rtsp_transport: str = setting(
        "tcp",
        "RTSP over tcp (no lost packets) or udp (less delay on a clean network)",
        choices=("tcp", "udp"),
    )
    reader: str = setting(
        "auto",
        "how RTSP is read: gstreamer (rtspsrc and a hardware or libav decoder), ffmpeg "
        "(OpenCV's), or auto: gstreamer where it runs here",
        choices=("auto", "gstreamer", "ffmpeg"),
    )
    stall_timeout: float | None = setting(
        None,
        "a live source that delivers nothing for S seconds is treated as dead (0: never)",
        default_text="5 for live sources, never for files",
        metavar="S",
    )
    backend: str = setting("auto", "auto, ort, trt or torch")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str | None = setting(
        None,
        "fp16 runs a .pt in half precision on a GPU (an ONNX or engine file has its own)",
        choices=("fp32", "fp16", "int8"),
    )
    cuda_graph: bool = setting(
        False, "GPU: replay each frame's whole step (pre, model, post) as one CUDA graph"
    )
    compile: bool = setting(False, "a .pt through torch.compile (GPU: needs Triton)")
    rebuild: bool = setting(
        True,
        "a .engine built by another TensorRT version or for another GPU is rebuilt from the "
        "ONNX it was built from, with the same options (--no-rebuild: refused)",
    )
    batch: int | None = setting(
        None,
        "frames of different sources inferred together",
        default_text="one per source on a GPU, 1 on a CPU; at most what the model takes",
    )
    batch_wait: float = setting(
        10.0, "the most a frame waits for the others of its batch", metavar="MS"
    )
    infer_workers: int | str = setting(
        "auto",
        "inference threads; auto: 2 single-threaded ONNX Runtime sessions on a multi-core "
        "CPU, else 1",
        metavar="N|auto",
        parse=parse_workers,
    )
    smooth_cut: float = setting(
        DEFAULT_CUT,
        "--smooth: the fraction of pixels changing class at once that counts as a scene cut and "
        "restarts the average",
        metavar="F",
    )
    backoff: tuple[float, float] = setting(
        (0.25, 0.5),
        "--reconnect: the first and the longest wait between tries, in seconds",
        metavar=("FIRST", "LONGEST"),
    )
    open_timeout: float = setting(
        15.0, "seconds a source's first open may take before it counts as failed", metavar="S"
    )
    stop_timeout: float = setting(
        5.0,
        "seconds the stages get to finish after a stop before they are left behind (a read "
        "that never returns) and the report is written",
        metavar="S",
    )
    queue_size: int = setting(
        4, "frames each every-frame queue holds before capture waits for inference", metavar="N"
    )
    max_sink_errors: int = setting(
        25, "a sink that fails this many frames in a row is disabled", metavar="N"
    )
    kernel_threads: int = setting(
        1,
        "threads of the C++ kernels inside each stage (the stages already share the cores)",
        metavar="N",
    )

    @property
    def sources(self) -> list[str]:
        """Every source, cameras by their index."""
        return [*self.source, *(str(c) for c in self.camera)]

    def check(self, sources: bool = True) -> None:
        """Raise :class:`EdgesegError` naming the setting that is wrong (``sources``: also
        require a source, which the library may pass separately)."""
        if sources and not self.sources:
            raise EdgesegError(
                "give a source (file, folder, glob, URL, GStreamer pipeline, synthetic) or a camera"
            )
        if self.mode is not None and self.mode not in MODES:
            raise EdgesegError(f"unknown mode '{self.mode}'; choose realtime or every-frame")
        for name in ("max_frames", "batch", "queue_size", "max_sink_errors", "kernel_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EdgesegError(f"{name} must be at least 1, got {value}")
        for name in ("duration", "record_segment", "open_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise EdgesegError(f"{name} must be above 0, got {value}")
        for name in ("batch_wait", "stall_timeout", "stop_timeout"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise EdgesegError(f"{name} must be at least 0, got {value}")
        if not 0.0 <= self.alpha <= 1.0:
            raise EdgesegError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise EdgesegError(
                f"min_confidence is a probability between 0 and 1, got {self.min_confidence}"
            )
        check_smoothing(self.smooth, self.smooth_cut)
        w = self.infer_workers
        if w != "auto" and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise EdgesegError(f"infer_workers must be a positive integer or auto, got '{w}'")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise EdgesegError(f"metrics_port must be 0-65535, got {self.metrics_port}")
        first, longest = self.backoff
        if not 0 < first <= longest:
            raise EdgesegError(f"backoff must be 0 < first <= longest seconds, got {self.backoff}")

    @property
    def wants_confidence(self) -> bool:
        """Whether per-pixel confidence is computed (asked for, or needed by another setting)."""
        return (
            self.confidence or self.save_confidence is not None or (self.min_confidence is not None)
        )

    def segmenter_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~edgeseg.runtime.segmenter.Segmenter`."""
        options: dict[str, Any] = {
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "cuda_graph": self.cuda_graph,
            "confidence": self.wants_confidence,
            "min_confidence": self.min_confidence,
            "rebuild": self.rebuild,
        }
        if self.compile:
            options["compile"] = True
        return options
