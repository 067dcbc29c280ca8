"""The TensorRT layer and the GPU frame pipeline, proven without a GPU against fakes shaped like
TensorRT 11 and cuda-python (tests/fakes): engine build and cache, shape/dtype/profile checks,
CUDA graphs and their failures, contexts on other threads, several GPUs, resource release."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.runtime import cuda
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
    monkeypatch.setattr(cuda, "_DRIVERS", {})
    monkeypatch.setattr(cuda, "Driver", _driver_on(fake))
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    return fake


def _driver_on(fake):
    real = cuda.Driver

    class FakeBackedDriver(real):
        def __init__(self, device: int = 0) -> None:
            super().__init__(device, cu=fake.cu, nvrtc=fake.nvrtc)

    return FakeBackedDriver


def _engine(tiny_onnx, tmp_path, dynamic="1,2,4", **plan) -> Path:
    from edgeseg.export.tensorrt import EngineOptions, build_engine

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
    with pytest.raises(cuda.CudaError, match=f"{call} failed: CUDA_ERROR_INVALID_VALUE"):
        seg(frame)
    assert not gpu.capturing


def test_fault4_pycuda_streams_reach_tensorrt_as_their_handle():
    class FakeStream:
        handle = 0xBEEF

    drv = cuda.PyCudaDriver.__new__(cuda.PyCudaDriver)
    assert drv.stream_handle(FakeStream()) == 0xBEEF and isinstance(
        drv.stream_handle(FakeStream()), int
    )


def test_fault4_pycuda_pushes_its_context_on_every_thread():
    pushed: list[int] = []

    class Ctx:
        def push(self):
            pushed.append(threading.get_ident())

    drv = cuda.PyCudaDriver.__new__(cuda.PyCudaDriver)
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
    t = threading.Thread(target=lambda: got.append(seg(frame, 0.5)))
    t.start()
    t.join()
    assert got and got[0].labels.shape == frame.shape[:2]
    errors = [n for n, _ in gpu.calls if n.startswith("cu")]
    assert errors  # calls happened on the new thread, and none failed (they would have raised)


def test_fault5_the_fake_does_refuse_a_thread_without_a_context(gpu):
    out: list = []
    t = threading.Thread(target=lambda: out.append(gpu.cu.cuStreamCreate(1)[0]))
    t.start()
    t.join()
    assert out == [CUresult.CUDA_ERROR_INVALID_CONTEXT]


def test_fault6_cuda_1_runs_on_gpu_1_and_checks_gpu_1s_name(gpu, tiny_onnx, tmp_path):
    engine = _engine(tiny_onnx, tmp_path)  # built on GPU 0
    with pytest.raises(EdgesegError, match="built for Fake GPU 0, this GPU is Fake GPU 1"):
        Segmenter(engine, device="cuda:1")
    assert set(cuda._DRIVERS) == {0, 1} and cuda._DRIVERS[1].index == 1
    with pytest.raises(EdgesegError, match="device 'cuda:2'|numbered from 0"):
        Segmenter(engine, device="cuda:2")


@pytest.mark.parametrize("dtype", ["INT8", "BOOL"])
def test_fault7_an_output_type_edgeseg_cannot_read_is_a_clear_error(
    gpu, tiny_onnx, tmp_path, dtype
):
    with pytest.raises(EdgesegError, match=f"its output is {dtype.lower()}"):
        Segmenter(_engine(tiny_onnx, tmp_path, out_dtype=dtype))


def test_fault8_gpu_extras_pin_what_the_code_needs():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    gpu_extra = " ".join(meta["project"]["optional-dependencies"]["gpu"])
    assert "cuda-python>=12.6.1" in gpu_extra  # cuda.bindings first shipped in 12.6.1
    assert "onnxruntime-gpu>=1.27" in gpu_extra  # the first with TensorRT 11's EP


def test_sidecar_that_disagrees_with_the_engine_is_refused(gpu, tiny_onnx, tmp_path):
    engine = _engine(tiny_onnx, tmp_path)
    side = Path(f"{engine}.json")
    meta = json.loads(side.read_text())
    meta["spec"]["input"].update(height=1024, width=2048)
    side.write_text(json.dumps(meta))
    with pytest.raises(EdgesegError, match=r"ModelSpec says \(N, 3, 1024, 2048\)"):
        Segmenter(engine)


def test_a_cache_hit_never_creates_a_builder(gpu, tiny_onnx, tmp_path):
    from edgeseg.export.tensorrt import build_engine

    first = build_engine(tiny_onnx, tmp_path / "a.engine")
    fake_tensorrt.calls.clear()
    again = build_engine(tiny_onnx, tmp_path / "b.engine")
    assert not first["from_cache"] and again["from_cache"]
    assert ("Builder",) not in fake_tensorrt.calls and not fake_tensorrt.calls
    assert (tmp_path / "b.engine").read_bytes() == (tmp_path / "a.engine").read_bytes()


def test_an_engine_of_another_tensorrt_version_is_refused(gpu, tiny_onnx, tmp_path):
    engine = _engine(tiny_onnx, tmp_path)
    side = Path(f"{engine}.json")
    meta = json.loads(side.read_text())
    meta["tensorrt"]["version"] = "10.7.0"
    side.write_text(json.dumps(meta))
    with pytest.raises(EdgesegError, match="built with TensorRT 10.7.0, this machine has 11.1.0"):
        Segmenter(engine)


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


def test_graph_replays_never_read_an_evicted_colour_table_and_graphs_are_bounded(
    gpu, tiny_onnx, tmp_path, frame, monkeypatch
):
    """Six overlay opacities in turn, twice over, under CUDA graphs: ColourTables keeps four, so
    the graph of an opacity met again must not replay a freed table (the fake GPU faults on
    freed memory), and the graphs kept stay within MAX_GRAPHS."""
    from edgeseg.runtime import gpu as gpu_pipeline

    monkeypatch.setattr(gpu_pipeline, "MAX_GRAPHS", 3)
    seg = Segmenter(_engine(tiny_onnx, tmp_path), cuda_graph=True)
    ref = Segmenter(tiny_onnx, fuse_resize=False)
    alphas = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    for _ in range(2):
        for alpha in alphas:
            for _ in range(3):  # eager, capture, replay
                np.testing.assert_array_equal(seg(frame, alpha).vis, ref(frame, alpha).vis)
    assert 0 < len(seg._gpu._graphs) <= 3
    assert len(gpu.live["exec"]) == len(seg._gpu._graphs)  # evicted graphs were destroyed
    seg.close()
    assert not any(gpu.live.values()) and not gpu.memory
