"""The CUDA driver layer against the fake GPU (tests/fakes): no driver, NVRTC's architectures,
contexts per thread across GPUs, and the Segmenter falling back when CUDA kernels cannot run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeseg.errors import EdgesegError
from edgeseg.runtime import cuda

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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
    assert cuda.nvrtc_target(arch, NVRTC_13, (13, 0)) == want


def test_a_gpu_older_than_nvrtc_supports_is_a_clear_error():
    with pytest.raises(EdgesegError, match=r"sm_72, and NVRTC 13\.0 builds for sm_75 and newer"):
        cuda.nvrtc_target("sm_72", NVRTC_13, (13, 0))  # Jetson Xavier under CUDA 13


def test_no_driver_library_is_an_edgeseg_error(monkeypatch):
    fake = FakeGpu()

    def no_libcuda(flags):  # what cuda-bindings 13 does without libcuda.so.1
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    monkeypatch.setattr(fake.cu, "cuInit", no_libcuda)
    with pytest.raises(EdgesegError, match="no usable CUDA device 0.*libcuda"):
        cuda.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc)


def test_a_thread_switching_gpus_makes_each_context_current_again(monkeypatch):
    fake = FakeGpu(devices=2)
    monkeypatch.setattr(cuda, "_CURRENT", type(cuda._CURRENT)())
    gpu0 = cuda.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc)
    gpu1 = cuda.Driver(1, cu=fake.cu, nvrtc=fake.nvrtc)  # now current on this thread
    gpu0.mem_alloc(16)
    assert fake._local.ctx is fake.contexts[0]
    gpu1.stream_create()
    assert fake._local.ctx is fake.contexts[1]
    gpu0.event_create()
    assert fake._local.ctx is fake.contexts[0]


def test_a_context_changed_behind_our_back_is_seen_by_ensure_current(monkeypatch):
    fake = FakeGpu(devices=2)
    monkeypatch.setattr(cuda, "_CURRENT", type(cuda._CURRENT)())
    gpu0 = cuda.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc)
    fake.cu.cuCtxSetCurrent(fake.contexts[1])  # e.g. PyTorch working on cuda:1
    gpu0.ensure_current()
    assert fake._local.ctx is fake.contexts[0]


def _pipeline_on(fake, monkeypatch, tmp_path):
    from edgeseg.runtime.gpu import GpuPipeline

    monkeypatch.setattr(cuda, "_CURRENT", type(cuda._CURRENT)())
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path))

    class Backend:  # just what GpuPipeline reads before it builds the kernels
        device, spec = "cuda:0", None

    return GpuPipeline(Backend(), driver=cuda.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc))


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

    monkeypatch.setattr("edgeseg.runtime.gpu.GpuPipeline", refuse)
    seg = segmenter.Segmenter.__new__(segmenter.Segmenter)
    seg.backend, seg.mode = type("B", (), {"name": "torch"})(), "nearest"
    with pytest.warns(RuntimeWarning, match="pre/post-processing runs on the CPU") as seen:
        assert seg._gpu_pipeline(False) is None
    assert len(seen) == 1 and "\n" not in str(seen[0].message)
