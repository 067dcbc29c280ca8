"""The baselines every ``edgeseg bench`` figure is divided by, measured in the same run.

- :func:`naive_loop`: what most projects ship — one thread, ``cv2`` read, ``cv2.dnn.blobFromImage``,
  ONNX Runtime, NumPy argmax, ``cv2.resize``, palette lookup, ``cv2.addWeighted``, ``VideoWriter``.
- :func:`torch_eager`: the checkpoint in eager PyTorch, model only.
- :func:`tensorrt_compute`: a TensorRT engine's enqueue-to-finish time on the GPU with no host
  copies, as ``trtexec`` reports its GPU compute time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.timing import summarize, time_calls


def _frames_for_naive(source: str, frames: int):
    """Yield BGR frames the way the naive loop reads them: ``cv2.VideoCapture`` for files and
    streams, the pre-rendered synthetic clip otherwise."""
    import cv2

    if source == "synthetic" or source.startswith("synthetic:"):
        from edgeseg.streaming.sources import open_source

        src = open_source(source.split("@")[0] + "@0", max_frames=frames)  # unpaced
        for f in src:
            yield f.image
        return
    cap = cv2.VideoCapture(source)
    try:
        for _ in range(frames):
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def naive_loop(
    onnx_path: str | os.PathLike,
    source: str,
    frames: int,
    out_video: str | os.PathLike,
    warmup: int = 5,
) -> dict[str, Any]:
    """Run the naive single-thread loop over ``frames`` frames of ``source``; FPS and per-frame
    latency (read to written)."""
    import cv2
    import onnxruntime as ort

    from edgeseg.runtime.backends.onnxruntime import read_onnx_spec
    from edgeseg.runtime.kernels.reference import palette_lut_bgr

    spec = read_onnx_spec(onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    lut = palette_lut_bgr(spec.palette)
    std = np.asarray(spec.input.std, np.float32).reshape(1, 3, 1, 1)
    size = (spec.input.width, spec.input.height)
    dummy = np.zeros((1, 3, spec.input.height, spec.input.width), np.float32)
    for _ in range(warmup):
        sess.run(None, {name: dummy})
    writer = None
    lat: list[float] = []
    it = _frames_for_naive(source, frames)
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        frame = next(it, None)
        if frame is None:
            break
        blob = cv2.dnn.blobFromImage(frame, 1.0, size, spec.input.mean, swapRB=True)
        logits = sess.run(None, {name: blob / std})[0]
        labels = logits[0].argmax(0).astype(np.uint8)
        labels = cv2.resize(labels, frame.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        vis = cv2.addWeighted(frame, 0.5, lut[labels], 0.5, 0)
        if writer is None:
            writer = cv2.VideoWriter(
                str(out_video), cv2.VideoWriter_fourcc(*"mp4v"), 25, frame.shape[1::-1]
            )
        writer.write(vis)
        lat.append((time.perf_counter() - t) * 1e3)
    dt = time.perf_counter() - t0
    if writer is not None:
        writer.release()
    if not lat:
        return {"frames": 0, "fps": 0.0, "latency_ms": None}
    s = summarize(lat)
    return {
        "frames": len(lat),
        "seconds": round(dt, 3),
        "fps": round(len(lat) / dt, 3),
        "latency_ms": {"p50": s["p50"], "p99": s["p99"]},
    }


def torch_eager(
    checkpoint: str | os.PathLike, warmup: int, iters: int, device: str = "cpu"
) -> dict[str, Any]:
    """Model-only latency of a checkpoint in eager PyTorch (no_grad, batch 1, float32)."""
    import torch

    from edgeseg.device import resolve_device
    from edgeseg.models.checkpoint import load_model

    dev = resolve_device(device)
    model, spec, _ = load_model(checkpoint, dev)
    x = torch.randn(1, 3, *spec.input_hw, device=dev)

    def call() -> None:
        with torch.no_grad():
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return summarize(time_calls(call, warmup, iters))


def tensorrt_compute(backend, warmup: int, iters: int) -> dict[str, Any]:
    """GPU time of ``execute_async_v3`` alone (device buffers already filled, no copies), from CUDA
    events around each enqueue — the figure ``trtexec`` calls GPU compute time."""
    drv = backend.drv
    io = backend.device_io(1)
    stream = drv.stream_create()
    start, end = drv.event_create(), drv.event_create()
    samples = []
    try:
        for i in range(warmup + iters):
            drv.event_record(start, stream)
            backend.run_device(io, stream)
            drv.event_record(end, stream)
            ms = drv.event_elapsed_ms(start, end)  # waits for the end event
            if i >= warmup:
                samples.append(ms)
    finally:
        for ev in (start, end):
            drv.event_destroy(ev)
        drv.stream_destroy(stream)
    return summarize(samples)


def checkpoint_for(model_path: str | os.PathLike) -> Path | None:
    """The training checkpoint behind a model file, where one is known: the file itself (.pt), or
    ``best.pt`` beside an exported ``model*.onnx`` / engine (where ``edgeseg export`` writes by
    default)."""
    p = Path(model_path)
    if p.suffix in (".pt", ".pth"):
        return p
    for cand in (p.parent / "best.pt", p.parent.parent / "best.pt"):
        if cand.is_file():
            return cand
    return None
