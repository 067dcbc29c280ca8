"""The TensorRT layer and the GPU frame pipeline, proven without a GPU against fakes shaped like
TensorRT 11 and cuda-python (tests/fakes): engine build and cache, shape/dtype/profile checks,
CUDA graphs and their failures, contexts on other threads, several GPUs, resource release."""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.runtime import cuda_driver
from edgeseg.runtime.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes import fake_tensorrt  # noqa: E402
from fakes.fake_gpu import CUresult, FakeGpu  # noqa: E402

pytestmark = pytest.mark.skipif(
    __import__("edgeseg.runtime.kernels", fromlist=["_cpu"])._cpu is None,
    reason="the fake GPU runs its kernels with the C++ extension",
)


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    """A fake machine with two GPUs, TensorRT 11 and cuda-python, installed for the test."""
    fake = FakeGpu(devices=2)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.install(fake))
    monkeypatch.setattr(cuda_driver, "_DRIVERS", {})
    monkeypatch.setattr(cuda_driver, "Driver", _driver_on(fake))
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    return fake


def _driver_on(fake):
    real = cuda_driver.Driver

    class FakeBackedDriver(real):
        def __init__(self, device: int = 0) -> None:
            super().__init__(device, cu=fake.cu, nvrtc=fake.nvrtc)

    return FakeBackedDriver


def _engine(tiny_onnx, tmp_path, dynamic="1,2,4", **plan) -> Path:
    from edgeseg.export.engine import EngineOptions, build_engine

    out = tmp_path / f"model-{dynamic.replace(',', '-')}.engine"
    build_engine(tiny_onnx, out, EngineOptions.parse_dynamic(dynamic), use_cache=False)
    if plan:
        out.write_bytes(json.dumps({**json.loads(out.read_bytes()), **plan}).encode())
    return out


@pytest.fixture
def frame():
    return np.random.default_rng(0).integers(0, 256, (90, 170, 3), dtype=np.uint8)


def test_engine_pipeline_equals_onnxruntime_on_the_cpu(gpu, tiny_onnx, tmp_path, frame):
    """uint8 up, our kernels, the engine, our kernels, labels and overlay down: the CPU path's
    labels and overlay, exactly (the fake engine runs the same ONNX)."""
    seg = Segmenter(_engine(tiny_onnx, tmp_path))
    ref = Segmenter(tiny_onnx, fuse_resize=False)
    assert seg.backend.name == "trt" and seg.kernels == "cuda"
    for alpha in (None, 0.4):
        got, want = seg(frame, alpha), ref(frame, alpha)
        np.testing.assert_array_equal(got.labels, want.labels)
        if alpha is not None:
            np.testing.assert_array_equal(got.vis, want.vis)
    assert fake_tensorrt.removed_asked == []  # nothing TensorRT 11 removed was needed
    assert ("create_network", 0) in fake_tensorrt.calls  # strongly typed, no flags


def test_a_batch_of_frames_of_different_sizes_equals_single_frames(gpu, tiny_onnx, tmp_path, frame):
    seg = Segmenter(_engine(tiny_onnx, tmp_path))
    frames = [frame, np.ascontiguousarray(frame[:61, :99]), np.ascontiguousarray(frame[::-1])]
    batched = seg.segment(frames, overlay_alpha=0.5)
    for f, r in zip(frames, batched):
        np.testing.assert_array_equal(r.labels, seg(f).labels)


def test_fault1_batch_outside_the_profile_is_refused_and_shapes_are_concrete(
    gpu, tiny_onnx, tmp_path
):
    """An engine built with --dynamic 2,4,8 rejects batch 1: a clear error, not short buffers."""
    seg = Segmenter(_engine(tiny_onnx, tmp_path, "2,4,8"))
    be = seg.backend
    assert (be.caps.min_batch, be.caps.max_batch) == (2, 8)
    with pytest.raises(EdgesegError, match=r"batch 1 is outside what this model takes \(2 to 8\)"):
        be.device_io(1)
    io = be.device_io(4)
    assert io.output_shape[0] == 4 and -1 not in io.output_shape
    x = np.random.default_rng(1).standard_normal((4, 3, *be.spec.input_hw)).astype(np.float32)
    want = Segmenter(tiny_onnx, fuse_resize=False).backend.infer(x)
    np.testing.assert_allclose(be.infer(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(EdgesegError, match="outside"):
        be.infer(x[:1])


def test_fault1_tensorrt_refusing_a_shape_is_reported(gpu, tiny_onnx, tmp_path, monkeypatch):
    seg = Segmenter(_engine(tiny_onnx, tmp_path, "1,1,4"))
    monkeypatch.setattr(type(seg.backend.context), "set_input_shape", lambda *a: False)
    with pytest.raises(EdgesegError, match="TensorRT refused batch 3"):
        seg.backend.device_io(3)


@pytest.mark.parametrize(
    "dtype,msg",
    [
        ("UINT8", "its input is uint8"),
        ("INT8", "its input is int8"),
        ("BF16", "input type is DataType.BF16"),
    ],
)
def test_fault2_an_input_the_preprocess_kernel_cannot_write_is_refused(
    gpu, tiny_onnx, tmp_path, dtype, msg
):
    with pytest.raises(EdgesegError, match=msg):
        Segmenter(_engine(tiny_onnx, tmp_path, in_dtype=dtype))
    assert not gpu.memory  # refused before any device buffer


def test_fault3_cuda_graph_replays_and_every_resource_is_released(gpu, tiny_onnx, tmp_path, frame):
    seg = Segmenter(_engine(tiny_onnx, tmp_path), cuda_graph=True)
    want = seg(frame).labels
    results = [seg(frame) for _ in range(3)]  # second eager run captures; then replays
    assert [r.timings_ms.get("graph") for r in results] == [None, 1.0, 1.0]
    assert all(np.array_equal(r.labels, want) for r in results)
    assert any(name == "cuGraphLaunch" for name, _ in gpu.calls)
    assert gpu.live["exec"]  # the graph exists until close
    seg.close()
    assert not any(gpu.live.values()), gpu.live  # streams, events, graphs: all destroyed
    assert not gpu.memory  # every device buffer freed


def test_fault3_a_failed_enqueue_inside_the_capture_ends_it_and_raises(
    gpu, tiny_onnx, tmp_path, frame, monkeypatch
):
    seg = Segmenter(_engine(tiny_onnx, tmp_path), cuda_graph=True)
    seg(frame)  # the eager run
    monkeypatch.setattr(type(seg.backend.context), "execute_async_v3", lambda self, s: False)
    with pytest.raises(EdgesegError, match="TensorRT failed to run"):
        seg(frame)  # the capturing run
    assert not gpu.capturing and not gpu.live["graph"] and not gpu.live["exec"]


@pytest.mark.parametrize("call", ["cuStreamBeginCapture", "cuGraphLaunch", "cuGraphInstantiate"])
def test_fault3_graph_api_errors_are_raised(gpu, tiny_onnx, tmp_path, frame, call):
    seg = Segmenter(_engine(tiny_onnx, tmp_path), cuda_graph=True)
    seg(frame)
    if call == "cuGraphLaunch":
        seg(frame)  # captured
    gpu.fail[call] = CUresult.CUDA_ERROR_INVALID_VALUE
    with pytest.raises(cuda_driver.CudaError, match=f"{call} failed: CUDA_ERROR_INVALID_VALUE"):
        seg(frame)
    assert not gpu.capturing


def test_fault4_pycuda_streams_reach_tensorrt_as_their_handle():
    class FakeStream:
        handle = 0xBEEF

    drv = cuda_driver.PyCudaDriver.__new__(cuda_driver.PyCudaDriver)
    assert drv.stream_handle(FakeStream()) == 0xBEEF and isinstance(
        drv.stream_handle(FakeStream()), int
    )


def test_fault4_pycuda_pushes_its_context_on_every_thread():
    pushed: list[int] = []

    class Ctx:
        def push(self):
            pushed.append(threading.get_ident())

    drv = cuda_driver.PyCudaDriver.__new__(cuda_driver.PyCudaDriver)
    drv.ctx, drv._local = Ctx(), threading.local()
    drv.make_current()
    drv.make_current()  # once per thread
    t = threading.Thread(target=drv.make_current)
    t.start()
    t.join()
    assert len(pushed) == 2 and pushed[0] != pushed[1]


def test_fault5_a_pipeline_driven_from_another_thread_makes_its_context_current(
    gpu, tiny_onnx, tmp_path, frame
):
    """The stream's inference thread is not the thread that loaded the engine."""
    seg = Segmenter(_engine(tiny_onnx, tmp_path))
    got: list = []
    worker: list[int] = []

    def segment() -> None:
        worker.append(threading.get_ident())
        got.append(seg(frame, 0.5))

    t = threading.Thread(target=segment)
    t.start()
    t.join()
    assert got and got[0].labels.shape == frame.shape[:2]  # none failed: they would have raised
    on_worker = [n for n, thread in gpu.calls if thread == worker[0]]
    # the frame's work ran on the worker thread, once that thread had bound the context
    assert "cuLaunchKernel" in on_worker and "cuMemcpyDtoHAsync" in on_worker, on_worker
    binding = ("cuCtxGetCurrent", "cuCtxSetCurrent")
    first_work = next(i for i, name in enumerate(on_worker) if name not in binding)
    assert "cuCtxSetCurrent" in on_worker[:first_work], on_worker


def test_fault5_the_fake_does_refuse_a_thread_without_a_context(gpu):
    out: list = []
    t = threading.Thread(target=lambda: out.append(gpu.cu.cuStreamCreate(1)[0]))
    t.start()
    t.join()
    assert out == [CUresult.CUDA_ERROR_INVALID_CONTEXT]


def test_fault6_cuda_1_runs_on_gpu_1_and_checks_gpu_1s_name(gpu, tiny_onnx, tmp_path):
    engine = _engine(tiny_onnx, tmp_path)  # built on GPU 0
    with pytest.raises(EdgesegError, match="built for Fake GPU 0, this GPU is Fake GPU 1"):
        Segmenter(engine, device="cuda:1", rebuild=False)
    assert set(cuda_driver._DRIVERS) == {0, 1} and cuda_driver._DRIVERS[1].index == 1
    with pytest.raises(EdgesegError, match="device 'cuda:2'|numbered from 0"):
        Segmenter(engine, device="cuda:2", rebuild=False)


@pytest.mark.parametrize("dtype", ["INT8", "BOOL"])
def test_fault7_an_output_type_edgeseg_cannot_read_is_a_clear_error(
    gpu, tiny_onnx, tmp_path, dtype
):
    with pytest.raises(EdgesegError, match=f"its output is {dtype.lower()}"):
        Segmenter(_engine(tiny_onnx, tmp_path, out_dtype=dtype))


def test_fault8_gpu_extras_pin_what_the_code_needs():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extras = meta["project"]["optional-dependencies"]
    cu12, cu13 = " ".join(extras["gpu-cu12"]), " ".join(extras["gpu-cu13"])
    # cuda_driver.bindings first shipped in 12.6.1; cuda-python 13 needs driver 580 (not JetPack 6)
    assert "cuda-python>=12.6.1,<13" in cu12
    assert "cuda-python>=13,<14" in cu13 and "tensorrt" in cu12 and "tensorrt" in cu13
    # onnxruntime-gpu shares the onnxruntime module with the CPU build: never an extra
    assert not any("onnxruntime-gpu" in " ".join(deps) for deps in extras.values())


def test_sidecar_that_disagrees_with_the_engine_is_refused(gpu, tiny_onnx, tmp_path):
    engine = _engine(tiny_onnx, tmp_path)
    side = Path(f"{engine}.json")
    meta = json.loads(side.read_text())
    meta["spec"]["input"].update(height=1024, width=2048)
    side.write_text(json.dumps(meta))
    with pytest.raises(EdgesegError, match=r"ModelSpec says \(N, 3, 1024, 2048\)"):
        Segmenter(engine)


def test_a_cache_hit_never_creates_a_builder(gpu, tiny_onnx, tmp_path):
    from edgeseg.export.engine import build_engine

    first = build_engine(tiny_onnx, tmp_path / "a.engine")
    fake_tensorrt.calls.clear()
    again = build_engine(tiny_onnx, tmp_path / "b.engine")
    assert not first["from_cache"] and again["from_cache"]
    assert ("Builder",) not in fake_tensorrt.calls and not fake_tensorrt.calls
    assert (tmp_path / "b.engine").read_bytes() == (tmp_path / "a.engine").read_bytes()


def test_an_engine_of_another_tensorrt_version_is_refused_with_no_rebuild(gpu, tiny_onnx, tmp_path):
    engine = _engine(tiny_onnx, tmp_path)
    side = Path(f"{engine}.json")
    meta = json.loads(side.read_text())
    meta["tensorrt"]["version"] = "10.7.0"
    side.write_text(json.dumps(meta))
    with pytest.raises(EdgesegError, match="built with TensorRT 10.7.0, this machine has 11.1.0"):
        Segmenter(engine, rebuild=False)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_smoothing_on_the_gpu_pipeline_equals_the_cpu_path(
    gpu, tiny_onnx, tmp_path, frame, cuda_graph
):
    """The device average (three kernels, the host's restart word read at replay time) gives
    the CPU path's labels frame after frame: through graph replays, a reconnect (a new feed
    epoch) during replays, a frame-size change, and every buffer is freed at close."""
    from edgeseg.runtime.smoothing import SmoothState

    seg = Segmenter(_engine(tiny_onnx, tmp_path), cuda_graph=cuda_graph)
    ref = Segmenter(tiny_onnx, fuse_resize=False)
    on_gpu, on_cpu = SmoothState(0.6), SmoothState(0.6)
    rng = np.random.default_rng(3)
    noisy = [
        np.clip(frame + rng.normal(0, 25, frame.shape), 0, 255).astype(np.uint8) for _ in range(10)
    ]
    noisy[6:8] = [np.ascontiguousarray(f[:64, :120]) for f in noisy[6:8]]  # a new frame size
    epochs = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]  # a reconnect at frame 3
    smoothed_differs, graphs = 0, 0
    for f, epoch in zip(noisy, epochs):
        for state in (on_gpu, on_cpu):
            state.follow((f.shape, epoch))
        got = seg.segment([f], smooth=[on_gpu])[0]
        want = ref.segment([f], smooth=[on_cpu])[0]
        np.testing.assert_array_equal(got.labels, want.labels)
        smoothed_differs += not np.array_equal(want.labels, ref(f).labels)
        graphs += got.timings_ms.get("graph", 0) == 1.0
    assert on_cpu.restarts >= 4  # the first frame, the reconnect, two size changes
    assert smoothed_differs > 0  # the average is not just the frame
    assert graphs >= (3 if cuda_graph else 0)  # frame 3's restart ran as a replay
    seg.close()
    assert not gpu.memory and not any(gpu.live.values())


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_confidence_on_the_gpu_pipeline_equals_the_cpu_path(
    gpu, tiny_onnx, tmp_path, frame, cuda_graph
):
    """Per-pixel confidence from the CUDA kernels, brought down beside the labels: the CPU
    path's bytes, for a batch of frames of two sizes, through graph replays, with
    --min-confidence marking the same pixels; without it no buffer for it exists."""
    engine = _engine(tiny_onnx, tmp_path)
    plain = Segmenter(engine)
    assert plain(frame).confidence is None and all(
        s.d_conf == 0 for s in plain._gpu._slots.values()
    )
    plain.close()
    seg = Segmenter(engine, cuda_graph=cuda_graph, min_confidence=0.6)
    ref = Segmenter(tiny_onnx, fuse_resize=False, min_confidence=0.6)
    frames = [frame, np.ascontiguousarray(frame[:61, :99])]
    for _ in range(3):  # eager, capture, replay
        for got, want in zip(seg.segment(frames, overlay_alpha=0.5), ref.segment(frames, 0.5)):
            np.testing.assert_array_equal(got.confidence, want.confidence)
            np.testing.assert_array_equal(got.labels, want.labels)
    assert (got.labels == seg.spec.ignore_index).any()  # the floor marked some pixels
    seg.close()
    assert not gpu.memory and not any(gpu.live.values())


def test_graph_replays_never_read_an_evicted_colour_table_and_graphs_are_bounded(
    gpu, tiny_onnx, tmp_path, frame, monkeypatch
):
    """Six overlay opacities in turn, twice over, under CUDA graphs: ColourTables keeps four, so
    the graph of an opacity met again must not replay a freed table (the fake GPU faults on
    freed memory), and the graphs kept stay within MAX_GRAPHS."""
    from edgeseg.runtime import gpu_pipeline

    monkeypatch.setattr(gpu_pipeline, "MAX_GRAPHS", 3)
    seg = Segmenter(_engine(tiny_onnx, tmp_path), cuda_graph=True)
    ref = Segmenter(tiny_onnx, fuse_resize=False)
    alphas = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    for _ in range(2):
        for alpha in alphas:
            for _ in range(3):  # eager, capture, replay
                np.testing.assert_array_equal(seg(frame, alpha).vis, ref(frame, alpha).vis)
    assert 0 < len(seg._gpu.graphs.kept) <= 3
    assert len(gpu.live["exec"]) == len(seg._gpu.graphs.kept)  # evicted graphs were destroyed
    seg.close()
    assert not any(gpu.live.values()) and not gpu.memory


# ----------------------------------------------------------------------------------------------
# What the stricter fakes can now show. Each test passes on the real code; the planted fault its
# docstring names makes it fail.


def test_infer_reads_the_engines_output_only_after_the_stream_synchronises(
    gpu, tiny_onnx, tmp_path
):
    """Planted: infer() without its stream synchronise (test fails: the page-locked output is
    read while the copy into it is still queued)."""
    be = Segmenter(_engine(tiny_onnx, tmp_path)).backend
    ref = Segmenter(tiny_onnx, fuse_resize=False).backend
    rng = np.random.default_rng(5)
    for n in (1, 2, 2):
        x = rng.standard_normal((n, 3, *be.spec.input_hw)).astype(np.float32)
        np.testing.assert_allclose(be.infer(x), ref.infer(x), rtol=1e-5, atol=1e-5)
    assert gpu.pending() == 0


def test_infer_after_another_library_switched_this_threads_gpu(gpu, tiny_onnx, tmp_path):
    """PyTorch (say) made GPU 1 current on this thread since the engine's last call: infer()
    must run the engine in GPU 0's context again (the fake TensorRT refuses another)."""
    be = Segmenter(_engine(tiny_onnx, tmp_path)).backend
    x = np.random.default_rng(6).standard_normal((1, 3, *be.spec.input_hw)).astype(np.float32)
    want = be.infer(x)
    gpu.cu.cuCtxSetCurrent(gpu.contexts[1])  # behind the driver's back
    np.testing.assert_array_equal(be.infer(x), want)
    assert fake_tensorrt.errors == []


def test_nothing_tensorrt_11_removed_is_called_or_probed(gpu, tiny_onnx, tmp_path, frame):
    """Build, load, run (pipeline, graphs, infer): no removed API asked for, not even by a
    hasattr probe, and nothing TensorRT would log as an error. Planted: run_device calling
    execute_async_v2 (test fails: AttributeError); a hasattr(context, "execute_async_v2") probe
    before execute_async_v3 (test fails: the probe is recorded)."""
    seg = Segmenter(_engine(tiny_onnx, tmp_path), cuda_graph=True)
    for _ in range(3):
        seg(frame, 0.5)
    seg.backend.infer(np.zeros((2, 3, *seg.spec.input_hw), np.float32))
    seg.close()
    assert fake_tensorrt.removed_asked == [] and fake_tensorrt.errors == []


def test_the_fake_tensorrt_refuses_removed_api_on_instances_and_unknown_tensor_names(
    gpu, tiny_onnx, tmp_path
):
    trt = fake_tensorrt
    be = Segmenter(_engine(tiny_onnx, tmp_path)).backend
    ctx, engine = be.context, be.engine
    assert not hasattr(ctx, "execute_async_v2") and not hasattr(engine, "num_bindings")
    with pytest.raises(AttributeError, match="removed in TensorRT 11"):
        ctx.execute_v2([0, 0])
    config = trt.Builder(trt.Logger()).create_builder_config()
    with pytest.raises(AttributeError, match="removed"):
        config.max_workspace_size = 1 << 30
    with pytest.raises(AttributeError):
        trt.IInt8EntropyCalibrator2  # noqa: B018
    with pytest.raises(AttributeError):
        config.set_flag(trt.BuilderFlag.FP16)
    assert trt.removed_asked == [
        "execute_async_v2",
        "num_bindings",
        "execute_v2",
        "max_workspace_size",
        "IInt8EntropyCalibrator2",
        "FP16",
    ]
    assert not ctx.set_tensor_address("no_such_tensor", 0x7F0000000000)
    assert not ctx.set_input_shape("no_such_tensor", (1, 3, 8, 8))
    assert engine.get_tensor_mode("no_such_tensor") == trt.TensorIOMode.NONE
    assert len(trt.errors) == 3 and all("no_such_tensor" in e for e in trt.errors)
    io = be.device_io(1)
    be.out_name = "logits:0"  # a name the engine does not have: refused, not run
    with pytest.raises(EdgesegError, match="refused the device buffer of logits:0"):
        be.run_device(io, be.drv.stream_create())
    with pytest.raises(EdgesegError, match=r"TensorRT left the output shape \(\) for batch 2"):
        be.device_io(2)


def test_the_profile_tensorrt_gets_is_min_opt_max_and_an_unordered_one_is_refused(
    gpu, tiny_onnx, tmp_path
):
    """Planted: the profile built from (max, opt, min) (test fails: TensorRT refuses it)."""
    from edgeseg.export.engine import EngineOptions, build_engine

    h, w = Segmenter(tiny_onnx).spec.input_hw
    be = Segmenter(_engine(tiny_onnx, tmp_path, "1,2,4")).backend
    assert be.engine.get_tensor_profile_shape(be.in_name, 0) == [
        (1, 3, h, w),
        (2, 3, h, w),
        (4, 3, h, w),
    ]
    assert fake_tensorrt.errors == []
    with pytest.raises(EdgesegError, match="TensorRT refused the optimization profile"):
        build_engine(tiny_onnx, tmp_path / "bad.engine", EngineOptions(None, 4, 2, 8))
    assert "min <= opt <= max" in fake_tensorrt.errors[-1]
    assert not (tmp_path / "bad.engine").exists()


@pytest.fixture(scope="module")
def argmax_onnx(tiny_run, tmp_path_factory) -> Path:
    from edgeseg.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("argmax_onnx")
    return Path(export_onnx(tiny_run / "best.pt", out, argmax=True)["path"])


def _labels_as(argmax_onnx: Path, dtype: str, out: Path) -> Path:
    """The argmax model with its labels cast to ``dtype`` (an ONNX TensorProto type name)."""
    import onnx

    proto = onnx.load(str(argmax_onnx))
    to = getattr(onnx.TensorProto, dtype)
    (cast,) = [n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name]
    assert cast.op_type == "Cast"
    next(a for a in cast.attribute if a.name == "to").i = to
    proto.graph.output[0].type.tensor_type.elem_type = to
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize(
    "dtype,kernel",
    [("UINT8", None), ("INT32", "labels_from_i32"), ("INT64", "labels_from_i64")],
)
def test_engines_with_integer_label_outputs_give_the_cpu_paths_labels(
    gpu, argmax_onnx, tmp_path, frame, dtype, kernel
):
    """An argmax model's labels as uint8, int32 or int64 (what ArgMax gives without the Cast):
    the engine's output type comes from the ONNX, and the pipeline reads each as it is."""
    onnx_path = _labels_as(argmax_onnx, dtype, tmp_path / f"labels.{dtype}.onnx")
    seg = Segmenter(_engine(onnx_path, tmp_path))
    assert seg.backend.out_dtype == np.dtype(dtype.lower())
    ref = Segmenter(argmax_onnx)
    frames = [frame, np.ascontiguousarray(frame[::-1, ::2])]
    for f in frames:
        got, want = seg(f, 0.5), ref(f, 0.5)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.vis, want.vis)
    launched = {name for name, _, _ in gpu.launches}
    assert (kernel in launched) if kernel else not any("labels_from" in n for n in launched)
    assert fake_tensorrt.errors == []


@pytest.mark.parametrize("dtype", ["INT8", "BOOL"])
def test_engines_with_label_outputs_edgeseg_cannot_read_are_refused(
    gpu, argmax_onnx, tmp_path, dtype
):
    onnx_path = _labels_as(argmax_onnx, dtype, tmp_path / f"labels.{dtype}.onnx")
    with pytest.raises(EdgesegError, match=f"its output is {dtype.lower()}"):
        Segmenter(_engine(onnx_path, tmp_path))
    assert not gpu.memory


def test_the_gpu_pipeline_runs_model_and_kernels_in_one_streams_order(
    gpu, tiny_onnx, tmp_path, frame
):
    """Uploads, kernels, the engine, downloads: one stream, read after its synchronise, frame
    after different frame. Planted: post-processing launched on the legacy default stream
    (test fails: the labels are downloaded before they are computed)."""
    seg = Segmenter(_engine(tiny_onnx, tmp_path))
    ref = Segmenter(tiny_onnx, fuse_resize=False)
    rng = np.random.default_rng(9)
    for i in range(4):
        f = np.clip(frame.astype(int) + rng.integers(-60, 60, frame.shape), 0, 255).astype(np.uint8)
        got, want = seg(f, 0.3 if i % 2 else None), ref(f, 0.3 if i % 2 else None)
        np.testing.assert_array_equal(got.labels, want.labels)
        assert got.vis is None or np.array_equal(got.vis, want.vis)
    assert gpu.pending() == 0


@pytest.mark.parametrize("ordered", [False, True])
def test_a_model_on_another_stream_is_ordered_only_by_events(
    gpu, tiny_onnx, tmp_path, frame, ordered
):
    """What the fake now catches: a backend that runs its model on a stream of its own without
    events gives the pipeline logits not yet computed; with an event each way it is right."""
    seg = Segmenter(_engine(tiny_onnx, tmp_path))
    want = Segmenter(tiny_onnx, fuse_resize=False)(frame).labels
    be, drv = seg.backend, seg.backend.drv
    other, ready, done = drv.stream_create(), drv.event_create(), drv.event_create()
    run = be.run_device

    def on_other(io, stream):
        if ordered:
            drv.event_record(ready, stream)  # the input is preprocessed...
            cuda_driver.check(gpu.cu.cuStreamWaitEvent(other, ready, 0))
        out = run(io, other)
        if ordered:
            drv.event_record(done, other)  # ...and the output computed before post-processing
            cuda_driver.check(gpu.cu.cuStreamWaitEvent(stream, done, 0))
        return out

    be.run_device = on_other
    assert np.array_equal(seg(frame).labels, want) == ordered


def test_graphs_outliving_their_colour_table_are_never_replayed(
    gpu, tiny_onnx, tmp_path, frame, monkeypatch
):
    """Colour-table lifetime under CUDA-graph replay: two tables kept, eight graphs, four
    opacities in turn (each table is evicted, freed and its address handed to the next table
    while graphs that read it are still kept). Planted: captured steps keyed without the table
    (test fails: a replay blends with another opacity's table)."""
    from edgeseg.runtime import gpu_pipeline

    monkeypatch.setattr(gpu_pipeline, "MAX_GRAPHS", 8)
    seg = Segmenter(_engine(tiny_onnx, tmp_path), cuda_graph=True)
    seg._gpu.tables.keep = 2
    ref = Segmenter(tiny_onnx, fuse_resize=False)
    replays = 0
    for _ in range(3):
        for alpha in (0.2, 0.4, 0.6, 0.8):
            for _ in range(3):  # eager, capture, replay
                got = seg(frame, alpha)
                np.testing.assert_array_equal(got.vis, ref(frame, alpha).vis)
                replays += got.timings_ms.get("graph", 0) == 1.0
    assert replays >= 12 and gpu.faults == []
    seg.close()
    assert not gpu.memory and not any(gpu.live.values())


def test_segmenters_on_gpu_1_then_gpu_0_from_one_thread(gpu, tiny_onnx, tmp_path, frame):
    """Drivers made on the main thread; a worker thread loads and runs an engine on GPU 1, one on
    GPU 0, then GPU 1 again: each engine is deserialized and run in its own GPU's context (the
    fake TensorRT refuses an engine run from another context)."""
    engine0 = _engine(tiny_onnx, tmp_path)
    engine1 = tmp_path / "gpu1.engine"
    engine1.write_bytes(engine0.read_bytes())
    meta = json.loads(Path(f"{engine0}.json").read_text())
    meta["tensorrt"]["gpu"] = "Fake GPU 1"
    Path(f"{engine1}.json").write_text(json.dumps(meta))
    for d in (0, 1):
        cuda_driver.get_driver(d)
    want = Segmenter(tiny_onnx, fuse_resize=False)(frame, 0.5)
    got, errors = [], []

    def work():
        try:
            seg1 = Segmenter(engine1, device="cuda:1")
            got.append(seg1(frame, 0.5))
            seg0 = Segmenter(engine0, device="cuda:0")
            got.append(seg0(frame, 0.5))
            got.append(seg1(frame, 0.5))
            assert seg1.backend.engine.ctx is gpu.contexts[1]
            assert seg0.backend.engine.ctx is gpu.contexts[0]
            seg0.close()
            seg1.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors, errors
    for r in got:
        np.testing.assert_array_equal(r.labels, want.labels)
        np.testing.assert_array_equal(r.vis, want.vis)


def test_an_engine_is_built_on_the_gpu_its_record_names(gpu, tiny_onnx, tmp_path):
    """The builder works in the thread's current context: after the thread last used GPU 1, the
    engine (recorded as GPU 0's) must still be built on GPU 0."""
    from edgeseg.export.engine import build_engine

    cuda_driver.get_driver(0)
    cuda_driver.get_driver(1)  # made last: this thread's current GPU is 1
    rec = build_engine(tiny_onnx, tmp_path / "m.engine", use_cache=False)
    assert rec["gpu"] == "Fake GPU 0"
    assert json.loads((tmp_path / "m.engine").read_bytes())["device"] == 0


# ----------------------------------------------------------------------------------------------
# An engine that repairs itself: one built by another TensorRT version or for another GPU is
# rebuilt from the ONNX its record names (path and hash checked), with the same build options.


def _own_onnx(tiny_onnx, folder: Path) -> Path:
    """A copy of the tiny ONNX that the test may move, change or delete."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "model.onnx"
    out.write_bytes(Path(tiny_onnx).read_bytes())
    return out


def _make_foreign(engine: Path, **built) -> dict:
    """``engine`` as if built elsewhere: its record says ``built`` (version, gpu), and its plan
    is one this TensorRT cannot load. Returns the record as it was."""
    side = Path(f"{engine}.json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "tensorrt": {**meta["tensorrt"], **built}}))
    engine.write_bytes(b"a plan of TensorRT 10.7")
    return meta


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_an_engine_of_another_tensorrt_version_is_rebuilt_from_its_onnx(
    gpu, tiny_onnx, tmp_path, frame, capsys
):
    from edgeseg.runtime.engine_files import read_sidecar

    onnx = _own_onnx(tiny_onnx, tmp_path / "src")
    engine = _engine(onnx, tmp_path, "2,4,8")  # built without the cache: the cache is empty
    before = _make_foreign(engine, version="10.7.0")
    capsys.readouterr()
    fake_tensorrt.calls.clear()
    seg = Segmenter(engine)
    line = _one_line(capsys.readouterr().err)
    assert "built with TensorRT 10.7.0, this machine has 11.1.0" in line and "rebuilding" in line
    assert str(onnx) in line
    assert ("build_serialized_network",) in fake_tensorrt.calls
    after = read_sidecar(engine)
    assert after["tensorrt"]["version"] == "11.1.0"
    # same ONNX, precision, profile and workspace: only what the machine changes differs
    assert after["spec"] == before["spec"]
    for key in ("options", "onnx_sha256", "strongly_typed", "gpu"):
        assert after["tensorrt"][key] == before["tensorrt"][key], key
    assert (seg.backend.caps.min_batch, seg.backend.caps.max_batch) == (2, 8)
    ref = Segmenter(tiny_onnx, fuse_resize=False)
    for got in seg.segment([frame, frame], 0.5):  # the profile takes 2 to 8 frames
        np.testing.assert_array_equal(got.vis, ref(frame, 0.5).vis)
    # the engine cache holds the new plan; nothing half-written is left beside the engine
    cached = tmp_path / "cache" / "engines" / f"{after['tensorrt']['cache_key']}.engine"
    assert cached.read_bytes() == engine.read_bytes()
    assert sorted(p.name for p in engine.parent.iterdir() if p.is_file()) == [
        engine.name,
        f"{engine.name}.json",
    ]
    fake_tensorrt.calls.clear()
    Segmenter(engine)  # the next load takes it as it is
    assert ("Builder",) not in fake_tensorrt.calls and capsys.readouterr().err == ""


def test_an_engine_for_another_gpu_is_rebuilt_on_the_gpu_it_runs_on(
    gpu, tiny_onnx, tmp_path, frame, capsys
):
    engine = _engine(_own_onnx(tiny_onnx, tmp_path / "src"), tmp_path)  # GPU 0's
    seg = Segmenter(engine, device="cuda:1")
    line = _one_line(capsys.readouterr().err)
    assert "built for Fake GPU 0, this GPU is Fake GPU 1" in line
    assert json.loads(Path(f"{engine}.json").read_text())["tensorrt"]["gpu"] == "Fake GPU 1"
    assert json.loads(engine.read_bytes())["device"] == 1  # built in GPU 1's context
    assert seg.backend.engine.ctx is gpu.contexts[1]
    want = Segmenter(tiny_onnx, fuse_resize=False)(frame).labels
    np.testing.assert_array_equal(seg(frame).labels, want)


@pytest.mark.parametrize(
    "built,why",
    [
        ({"version": "10.7.0"}, "built with TensorRT 10.7.0, this machine has 11.1.0"),
        ({"gpu": "Orin"}, "built for Orin, this GPU is Fake GPU 0"),
    ],
)
def test_no_rebuild_refuses_a_foreign_engine_as_before(gpu, tiny_onnx, tmp_path, built, why):
    engine = _engine(_own_onnx(tiny_onnx, tmp_path / "src"), tmp_path)
    _make_foreign(engine, **built)
    fake_tensorrt.calls.clear()
    with pytest.raises(EdgesegError, match=why):
        Segmenter(engine, rebuild=False)
    assert engine.read_bytes() == b"a plan of TensorRT 10.7" and not fake_tensorrt.calls


def _unrecord(key):
    def edit(engine: Path, onnx: Path) -> None:
        side = Path(f"{engine}.json")
        meta = json.loads(side.read_text())
        if key == "options":
            meta["tensorrt"]["options"]["turbo"] = True
        else:
            for k in ("onnx", "onnx_relative", "onnx_sha256"):
                meta["tensorrt"].pop(k, None)
        side.write_text(json.dumps(meta))

    return edit


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda engine, onnx: onnx.unlink(), r"its ONNX \S*model.onnx is missing"),
        (
            lambda engine, onnx: onnx.write_bytes(onnx.read_bytes() + b"\0"),
            r"its ONNX \S*model.onnx has changed since the engine was built",
        ),
        (_unrecord("onnx"), "its record names no ONNX"),
        (_unrecord("options"), "it has build options this edgeseg does not know: turbo"),
    ],
    ids=["missing", "changed", "unrecorded", "unknown-option"],
)
def test_an_engine_that_cannot_be_rebuilt_is_refused_with_the_reason(
    gpu, tiny_onnx, tmp_path, damage, reason
):
    onnx = _own_onnx(tiny_onnx, tmp_path / "src")
    engine = _engine(onnx, tmp_path)
    _make_foreign(engine, version="10.7.0")
    damage(engine, onnx)
    fake_tensorrt.calls.clear()
    with pytest.raises(EdgesegError) as e:
        Segmenter(engine)
    msg = str(e.value)
    assert "\n" not in msg and "built with TensorRT 10.7.0, this machine has 11.1.0" in msg
    assert re.search(f"cannot be rebuilt here: {reason}", msg), msg
    assert "edgeseg export" in msg  # the fix
    assert engine.read_bytes() == b"a plan of TensorRT 10.7" and not fake_tensorrt.calls


def test_an_engine_that_cannot_be_written_is_one_clear_error(gpu, tiny_onnx, tmp_path, monkeypatch):
    """A read-only deployment folder (root ignores chmod: the write fails by hand)."""
    from edgeseg._io import atomic_path as real
    from edgeseg.export import engine as builder

    engine = _engine(_own_onnx(tiny_onnx, tmp_path / "src"), tmp_path)
    _make_foreign(engine, version="10.7.0")

    def read_only(path, *a, **k):
        if Path(path).parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(builder, "atomic_path", read_only)
    with pytest.raises(EdgesegError) as e:
        Segmenter(engine)
    msg = str(e.value)
    assert "\n" not in msg and "could not be rebuilt: cannot write" in msg, msg
    assert "Permission denied" in msg and engine.read_bytes() == b"a plan of TensorRT 10.7"


def test_an_exported_engine_finds_its_onnx_after_the_export_folder_moves(
    gpu, tiny_run, tmp_path, frame, capsys, monkeypatch
):
    """``edgeseg export --trt`` builds in a staging folder and moves the files out; then the
    folder is copied to the robot. The record still leads to the ONNX beside the engine; the
    CLI's --no-rebuild refuses with one line, without it predict rebuilds and runs."""
    import cv2

    from edgeseg.cli import main

    made = tmp_path / "made"
    assert main(["export", str(tiny_run / "best.pt"), "--out", str(made), "--trt"]) == 0
    robot = tmp_path / "robot"
    made.rename(robot)
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "robot-cache"))  # another machine's
    engine = robot / "model.engine"
    _make_foreign(engine, version="10.7.0")
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), frame)
    argv = ["predict", "--model", str(engine), str(tmp_path / "img"), "--out", str(tmp_path / "p")]
    capsys.readouterr()
    assert main([*argv, "--no-rebuild"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "error" in line and "built with TensorRT 10.7.0, this machine has 11.1.0" in line
    assert main(argv) == 0
    line = _one_line(capsys.readouterr().err)
    assert "rebuilding" in line and str(robot / "model.onnx") in line
    want = Segmenter(robot / "model.onnx", fuse_resize=False)(frame).labels
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "p" / "a.png"), 0), want)
