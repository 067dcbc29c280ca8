"""The CUDA driver layer against the fake GPU (tests/fakes): no driver, NVRTC's architectures,
contexts per thread across GPUs, and the Segmenter falling back when CUDA kernels cannot run."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.runtime import cuda_driver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes import fake_gpu  # noqa: E402
from fakes.fake_gpu import FakeGpu  # noqa: E402

NVRTC_13 = [75, 80, 86, 87, 88, 89, 90, 100, 103, 107, 110, 120, 121]


@pytest.mark.parametrize(
    "arch,want",
    [
        ("sm_87", ("sm_87", True)),  # Jetson Orin: its own CUBIN
        ("sm_90", ("sm_90", True)),
        ("sm_101", ("sm_100", True)),  # not listed by NVRTC 13: sm_100 code runs on sm_101
        ("sm_89", ("sm_89", True)),
        ("sm_130", ("compute_121", False)),  # newer than this NVRTC: PTX, the driver finishes it
    ],
)
def test_nvrtc_builds_for_the_best_architecture_it_lists(arch, want):
    assert cuda_driver.nvrtc_target(arch, NVRTC_13, (13, 0)) == want


def test_a_gpu_older_than_nvrtc_supports_is_a_clear_error():
    with pytest.raises(EdgesegError, match=r"sm_72, and NVRTC 13\.0 builds for sm_75 and newer"):
        cuda_driver.nvrtc_target("sm_72", NVRTC_13, (13, 0))  # Jetson Xavier under CUDA 13


def test_no_driver_library_is_an_edgeseg_error(monkeypatch):
    fake = FakeGpu()

    def no_libcuda(flags):  # what cuda-bindings 13 does without libcuda.so.1
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    monkeypatch.setattr(fake.cu, "cuInit", no_libcuda)
    with pytest.raises(EdgesegError, match="no usable CUDA device 0.*libcuda"):
        cuda_driver.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc)


def test_a_thread_switching_gpus_makes_each_context_current_again(monkeypatch):
    fake = FakeGpu(devices=2)
    monkeypatch.setattr(cuda_driver, "_CURRENT", type(cuda_driver._CURRENT)())
    gpu0 = cuda_driver.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc)
    gpu1 = cuda_driver.Driver(1, cu=fake.cu, nvrtc=fake.nvrtc)  # now current on this thread
    gpu0.mem_alloc(16)
    assert fake._local.ctx is fake.contexts[0]
    gpu1.stream_create()
    assert fake._local.ctx is fake.contexts[1]
    gpu0.event_create()
    assert fake._local.ctx is fake.contexts[0]


def test_a_context_changed_behind_our_back_is_seen_by_ensure_current(monkeypatch):
    fake = FakeGpu(devices=2)
    monkeypatch.setattr(cuda_driver, "_CURRENT", type(cuda_driver._CURRENT)())
    gpu0 = cuda_driver.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc)
    fake.cu.cuCtxSetCurrent(fake.contexts[1])  # e.g. PyTorch working on cuda:1
    gpu0.ensure_current()
    assert fake._local.ctx is fake.contexts[0]


def _pipeline_on(fake, monkeypatch, tmp_path):
    from edgeseg.runtime.gpu_pipeline import GpuPipeline

    monkeypatch.setattr(cuda_driver, "_CURRENT", type(cuda_driver._CURRENT)())
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))

    class Backend:  # just what GpuPipeline reads before it builds the kernels
        device, spec = "cuda:0", None

    return GpuPipeline(Backend(), driver=cuda_driver.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc))


def test_a_gpu_nvrtc_cannot_build_for_is_an_error_the_segmenter_falls_back_on(
    monkeypatch, tmp_path
):
    fake = FakeGpu()
    fake.cc = (7, 2)  # Jetson Xavier, NVRTC 13
    with pytest.raises(EdgesegError, match="sm_72.*cannot be built"):
        _pipeline_on(fake, monkeypatch, tmp_path)


def test_a_failed_nvrtc_compile_is_an_error_the_segmenter_falls_back_on(monkeypatch, tmp_path):
    fake = FakeGpu()
    monkeypatch.setattr(fake.nvrtc, "nvrtcCompileProgram", lambda prog, n, opts: (6,))
    monkeypatch.setattr(fake.nvrtc, "nvrtcGetProgramLogSize", lambda prog: (0, 5), raising=False)
    monkeypatch.setattr(fake.nvrtc, "nvrtcGetProgramLog", lambda prog, log: (0,), raising=False)
    with pytest.raises(EdgesegError, match="could not be built for sm_87: NVRTC failed"):
        _pipeline_on(fake, monkeypatch, tmp_path)


def test_the_segmenter_warns_in_one_line_and_keeps_the_model_on_the_gpu(monkeypatch):
    from edgeseg.runtime import segmenter

    def refuse(*args, **kwargs):
        raise EdgesegError("the CUDA kernels could not be built for sm_72: ...")

    monkeypatch.setattr("edgeseg.runtime.gpu_pipeline.GpuPipeline", refuse)
    seg = segmenter.Segmenter.__new__(segmenter.Segmenter)
    seg.backend, seg.mode = type("B", (), {"name": "torch"})(), "nearest"
    with pytest.warns(RuntimeWarning, match="pre/post-processing runs on the CPU") as seen:
        assert seg._gpu_pipeline(False) is None
    assert len(seen) == 1 and "\n" not in str(seen[0].message)


# ----------------------------------------------------------------------------------------------
# The fake holds code to what a GPU would: stream order, handles, kernel signatures and launch
# shapes, NVRTC's options, a context per thread per device. Each test passes on the real code;
# the planted fault it names in its docstring makes it fail.

needs_cpu_kernels = pytest.mark.skipif(
    __import__("edgeseg.runtime.kernels", fromlist=["_cpu"])._cpu is None,
    reason="the fake GPU runs its kernels with the C++ extension",
)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake machine with two GPUs; a fresh per-thread context record; kernels cached in tmp."""
    monkeypatch.setattr(cuda_driver, "_CURRENT", type(cuda_driver._CURRENT)())
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))
    return FakeGpu(devices=2)


def _drv(fake, device: int = 0) -> cuda_driver.Driver:
    return cuda_driver.Driver(device, cu=fake.cu, nvrtc=fake.nvrtc)


def _up(drv, array: np.ndarray, stream) -> cuda_driver.DeviceBuffer:
    buf = drv.mem_alloc(array.nbytes)
    drv.memcpy_htod(buf.ptr, np.ascontiguousarray(array), stream)
    return buf


def _down(drv, ptr: int, shape, dtype, stream) -> np.ndarray:
    """Into pinned memory, read after the stream's synchronise (as the pipelines do)."""
    host = drv.pinned_empty(shape, dtype)
    drv.memcpy_dtoh(host, ptr, stream)
    drv.stream_synchronize(stream)
    return host.copy()


def test_stream_work_runs_in_order_at_its_synchronise_and_pinned_reads_wait_for_it(fake):
    drv = _drv(fake)
    s = drv.stream_create()
    src = drv.pinned_empty((1000,), np.uint8)
    src[:] = np.arange(1000) % 251
    dst = drv.pinned_empty((1000,), np.uint8)
    buf = drv.mem_alloc(1000)
    drv.memcpy_htod(buf.ptr, src, s)
    drv.memcpy_dtoh(dst, buf.ptr, s)
    assert fake.pending() == 2  # nothing ran yet
    assert (dst == fake_gpu.POISON).all()  # what the host sees before the synchronise
    src[:] = 7  # page-locked: the copy reads it when it runs, so this is what arrives
    drv.stream_synchronize(s)
    assert (dst == 7).all() and fake.pending() == 0


def test_data_made_on_one_stream_is_read_on_another_only_after_an_event(fake):
    drv = _drv(fake)
    a, b = drv.stream_create(), drv.stream_create()
    data = np.arange(64, dtype=np.uint8)
    buf = _up(drv, data, a)  # written on stream a (from pageable memory: staged at the call)
    assert (_down(drv, buf.ptr, (64,), np.uint8, b) == fake_gpu.UNINITIALISED).all()  # no order
    ev = drv.event_create()
    buf2 = _up(drv, data, a)
    drv.event_record(ev, a)
    check = cuda_driver.check
    check(fake.cu.cuStreamWaitEvent(b, ev, 0), "cuStreamWaitEvent")
    np.testing.assert_array_equal(_down(drv, buf2.ptr, (64,), np.uint8, b), data)


def test_unknown_or_destroyed_streams_and_events_are_invalid_handles(fake):
    drv = _drv(fake)
    s = drv.stream_create()
    buf = drv.mem_alloc(16)
    host = np.zeros(16, np.uint8)
    drv.stream_destroy(s)
    for call in (
        lambda: drv.memcpy_htod(buf.ptr, host, s),
        lambda: drv.memcpy_dtoh(host, buf.ptr, int(s)),
        lambda: drv.stream_synchronize(s),
        lambda: drv.stream_synchronize(0xDEAD),
        lambda: drv.event_record(drv.event_create(), s),
        lambda: drv.graph_capture(s, lambda: None),
    ):
        with pytest.raises(cuda_driver.CudaError, match="CUDA_ERROR_INVALID_HANDLE"):
            call()
    ev = drv.event_create()
    drv.event_destroy(ev)
    with pytest.raises(cuda_driver.CudaError, match="CUDA_ERROR_INVALID_HANDLE"):
        drv.event_elapsed_ms(ev, ev)


def test_a_capture_records_work_that_replays_run_and_refuses_what_it_cannot_hold(fake):
    drv = _drv(fake)
    s = drv.stream_create()
    src, dst = drv.pinned_empty((8,), np.uint8), drv.pinned_empty((8,), np.uint8)
    buf = drv.mem_alloc(8)

    def enqueue():
        drv.memcpy_htod(buf.ptr, src, s)
        drv.memcpy_dtoh(dst, buf.ptr, s)

    graph = drv.graph_capture(s, enqueue)
    assert fake.pending() == 0  # recorded, not run
    for v in (3, 9):
        src[:] = v  # page-locked: each replay reads it then
        drv.graph_launch(graph, s)
        drv.stream_synchronize(s)
        assert (dst == v).all()
    for inside in (
        lambda: drv.stream_synchronize(s),
        lambda: drv.memcpy_htod(buf.ptr, np.zeros(8, np.uint8), s),  # pageable: staged now
    ):
        with pytest.raises(cuda_driver.CudaError, match="CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"):
            drv.graph_capture(s, inside)
    assert not fake.capturing and not fake.live["graph"]


def test_a_fault_surfaces_at_the_synchronise_and_the_context_is_lost(fake):
    drv = _drv(fake)
    s = drv.stream_create()
    buf = drv.mem_alloc(16)
    drv.memcpy_htod(buf.ptr + 8, np.zeros(16, np.uint8), s)  # runs past the allocation: later
    with pytest.raises(
        cuda_driver.CudaError, match="cuStreamSynchronize failed: CUDA_ERROR_ILLEGAL_ADD"
    ):
        drv.stream_synchronize(s)
    with pytest.raises(cuda_driver.CudaError, match="ILLEGAL_ADDRESS"):
        drv.mem_alloc(16)  # sticky: every later call fails
    assert "outside every allocation" in fake.faults[0]


def _frame(h=37, w=83, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@needs_cpu_kernels
def test_cuda_kernels_on_the_fake_equal_the_cpu_kernels_at_sizes_blocks_do_not_divide(fake):
    """Every kernel CudaKernels launches, at sizes no block size divides, equals the CPU
    extension: a grid that misses a pixel leaves it 0xFF (NaN, label 255) and fails here.
    Planted: every launch one block short in x (test fails: the last columns unwritten)."""
    from edgeseg.runtime import kernels
    from edgeseg.runtime.kernels.cuda import ColourTables, CudaKernels, scratch_bytes

    drv = _drv(fake)
    s = drv.stream_create()
    k, tables = CudaKernels(drv), ColourTables(drv)
    mean, std = (120.0, 110.0, 100.0), (58.0, 57.0, 56.0)
    frame = _frame()
    H, W = frame.shape[:2]
    d_frame = _up(drv, frame, s)
    for half in (False, True):
        dt = np.float16 if half else np.float32
        out = drv.mem_alloc(3 * 29 * 45 * np.dtype(dt).itemsize)
        k.preprocess(d_frame.ptr, (H, W), W * 3, out.ptr, (29, 45), mean, std, half, s)
        want = kernels.preprocess(frame, (29, 45), mean, std, dtype=dt)
        np.testing.assert_array_equal(_down(drv, out.ptr, (1, 3, 29, 45), dt, s), want)
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (5, 3))
    logits = rng.standard_normal((1, 5, 13, 21)).astype(np.float32)
    labels = drv.mem_alloc(H * W)
    vis = drv.mem_alloc(H * W * 3)
    small = drv.mem_alloc(scratch_bytes((13, 21), 2))
    table, keep_q = tables.get(palette, 0.4, s)
    blend = (d_frame.ptr, W * 3, vis.ptr, table, keep_q)
    cases = [  # (scores, kind, mode, upsample)
        (logits, "f32", "nearest", 1),
        (logits.astype(np.float16), "f16", "nearest", 1),
        (logits, "f32", "nearest", 2),
        (logits, "f32", "bilinear", 1),
        (logits.argmax(1).astype(np.int64), "i64", "nearest", 1),
        (logits.argmax(1).astype(np.int32), "i32", "nearest", 1),
        (logits.argmax(1).astype(np.uint8), "u8", "nearest", 1),
    ]
    for scores, kind, mode, up in cases:
        d_scores = _up(drv, scores, s)
        k.postprocess(d_scores.ptr, kind, 5, (13, 21), labels.ptr, (H, W), small.ptr, mode, *blend,
                      stream=s, upsample=up)  # fmt: skip
        want_l, want_v = kernels.postprocess(scores, (H, W), palette, frame, 0.4, mode=mode,
                                             upsample=up)  # fmt: skip
        np.testing.assert_array_equal(_down(drv, labels.ptr, (H, W), np.uint8, s), want_l)
        np.testing.assert_array_equal(_down(drv, vis.ptr, (H, W, 3), np.uint8, s), want_v)
    conf, small_conf = drv.mem_alloc(H * W), drv.mem_alloc(scratch_bytes((13, 21), 2))
    for scores, kind, mode, up in cases[:4]:  # confidence, computed by the argmax's kernel
        d_scores = _up(drv, scores, s)
        k.postprocess(d_scores.ptr, kind, 5, (13, 21), labels.ptr, (H, W), small.ptr, mode, *blend,
                      stream=s, upsample=up, conf=conf.ptr, small_conf=small_conf.ptr)  # fmt: skip
        want_c = np.empty((H, W), np.uint8)
        want_l = kernels.postprocess(scores, (H, W), mode=mode, upsample=up, conf_out=want_c)
        np.testing.assert_array_equal(_down(drv, labels.ptr, (H, W), np.uint8, s), want_l)
        np.testing.assert_array_equal(_down(drv, conf.ptr, (H, W), np.uint8, s), want_c)
    ema, words = drv.mem_alloc(logits.nbytes), drv.mem_alloc(8)
    state = None
    for i, force in enumerate((1, 0, 0)):
        x = (logits + 0.3 * i * rng.standard_normal(logits.shape)).astype(np.float32)
        drv.memcpy_htod(words.ptr, np.array([0, force], np.uint32), s)
        d_x = _up(drv, x, s)
        k.smooth(d_x.ptr, "f32", 5, (13, 21), ema.ptr, words.ptr, 0.6, 0.3, s)
        state, _ = kernels.smooth(x, state, 0.6, 0.3)
        np.testing.assert_array_equal(_down(drv, ema.ptr, logits.shape, np.float32, s), state)
    assert fake.faults == [] and fake.sticky is None


@needs_cpu_kernels
def test_the_fake_checks_launches_against_the_kernels_signature_and_shape(fake):
    """SIGNATURES is what kernels.cu declares (the fake NVRTC reads the source); a pointer
    argument that is not device memory, a block past the limits, a vote kernel in blocks that
    are not whole warps, a host table that disagrees with the kernel: CUDA_ERROR_INVALID_VALUE.
    And a grid one block short leaves the pixels it misses as they were."""
    src = cuda_driver.kernel_sources()
    assert fake_gpu._kernel_signatures(src["kernels.cu"]) == {
        k: list(v) for k, v in cuda_driver.SIGNATURES.items()
    }
    drv = _drv(fake)
    s = drv.stream_create()
    scores = _up(drv, np.zeros((1, 3, 8, 40), np.float32), s)
    labels = drv.mem_alloc(8 * 40)
    ok = (scores.ptr, 3, 8, 40, labels.ptr)
    drv.launch("argmax_f32", (1, 1, 1), (32, 8, 1), ok, s)  # 32 of the 40 columns
    got = _down(drv, labels.ptr, (8, 40), np.uint8, s)
    assert (got[:, :32] == 0).all() and (got[:, 32:] == fake_gpu.UNINITIALISED).all()
    bad = [
        ("argmax_f32", (2, 1, 1), (32, 8, 1), (scores.ptr, 3, 8, 40, 320)),  # an int as pointer
        ("argmax_f32", (2, 1, 1), (64, 32, 1), ok),  # 2048 threads a block
        ("ema_votes_f32", (1, 1, 1), (100, 1, 1), (scores.ptr, scores.ptr, 3, 320, labels.ptr)),
    ]
    for name, grid, block, args in bad:
        with pytest.raises(cuda_driver.CudaError, match=f"{name}.*CUDA_ERROR_INVALID_VALUE"):
            drv.launch(name, grid, block, args, s)
    import edgeseg.runtime.cuda_driver as host

    sig = host.SIGNATURES["argmax_f32"]
    try:
        host.SIGNATURES["argmax_f32"] = sig[:-1]  # the host packs four; the kernel reads five
        with pytest.raises(cuda_driver.CudaError, match="CUDA_ERROR_INVALID_VALUE"):
            drv.launch("argmax_f32", (2, 1, 1), (32, 8, 1), ok[:-1], s)
    finally:
        host.SIGNATURES["argmax_f32"] = sig
    with pytest.raises(
        cuda_driver.CudaError, match="cuModuleGetFunction failed: CUDA_ERROR_NOT_FOUND"
    ):
        drv.function("no_such_kernel")


def test_nvrtc_gets_fmad_false_and_the_devices_architecture(fake):
    """What Driver.compile asks NVRTC for; the fake NVRTC refuses unknown options and builds
    nothing without --fmad=false or a supported architecture. Planted: NVRTC_OPTIONS without
    --fmad=false (test fails: the kernels are not built)."""
    drv = _drv(fake)
    drv.load_kernels()
    (opts,) = fake.nvrtc_options
    assert "--fmad=false" in opts and "--gpu-architecture=sm_87" in opts
    nv, src = fake.nvrtc, cuda_driver.kernel_sources()
    for options, err in [
        ((*opts, "--frobnicate"), "NVRTC_ERROR_INVALID_OPTION"),
        (("--fmad=false", "--gpu-architecture=sm_72"), "NVRTC_ERROR_INVALID_OPTION"),
        (("--fmad=maybe", "--gpu-architecture=sm_87"), "NVRTC_ERROR_INVALID_OPTION"),
        (("-std=c++17", "--gpu-architecture=sm_87"), "NVRTC_ERROR_COMPILATION"),  # fmad on
        (("--fmad=false",), "NVRTC_ERROR_COMPILATION"),  # for which GPU?
    ]:
        prog = cuda_driver.check(
            nv.nvrtcCreateProgram(src["kernels.cu"].encode(), b"k.cu", 0, [], [])
        )
        assert (
            nv.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options])[0].name == err
        )
    # PTX of an architecture newer than the device: the driver cannot load it
    image = cuda_driver.nvrtc_compile(
        nv, src, ("--fmad=false", "--gpu-architecture=compute_90"), False
    )
    assert fake.cu.cuModuleLoadData(image)[0] == fake_gpu.CUresult.CUDA_ERROR_NO_BINARY_FOR_GPU


@needs_cpu_kernels
def test_a_thread_using_gpu_1_then_gpu_0_works_in_each_gpus_context(fake):
    """Drivers made on the main thread, then one worker thread preprocesses on GPU 1, GPU 0 and
    GPU 1 again: each launch must find its own GPU's context current (the fake refuses a stream,
    kernel or memory of another context). Planted: make_current binding only when the thread has
    no context yet (test fails: GPU 0's launch runs in GPU 1's context)."""
    from edgeseg.runtime import kernels
    from edgeseg.runtime.kernels.cuda import CudaKernels

    drvs = [_drv(fake, 0), _drv(fake, 1)]
    for d in drvs:
        d.load_kernels()
    frame = _frame(24, 40)
    want = kernels.preprocess(frame, (16, 32), (0, 0, 0), (1, 1, 1))
    got, errors = [], []

    def work():
        try:
            for index in (1, 0, 1):
                drv = drvs[index]
                s = drv.stream_create()
                img, out = _up(drv, frame, s), drv.mem_alloc(want.nbytes)
                CudaKernels(drv).preprocess(img.ptr, (24, 40), 120, out.ptr, (16, 32),
                                            (0, 0, 0), (1, 1, 1), stream=s)  # fmt: skip
                got.append((index, _down(drv, out.ptr, want.shape, np.float32, s)))
                drv.stream_destroy(s)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors, errors
    assert [i for i, _ in got] == [1, 0, 1]
    for _, g in got:
        np.testing.assert_array_equal(g, want)
    launches = [n for n, tid in fake.calls if n == "cuLaunchKernel" and tid == t.ident]
    assert len(launches) == 3
