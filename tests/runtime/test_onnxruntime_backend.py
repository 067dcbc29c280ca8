"""ONNX Runtime: provider choice and options for a GPU (checked against a small fake session:
onnxruntime-gpu cannot be installed here), the check that a GPU was really given, IO binding
(real, on the CPU), and the trailing-resize lift."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.runtime import cuda_driver
from edgeseg.runtime.backends import load_backend
from edgeseg.runtime.backends.onnxruntime import (
    CPU_EP,
    CUDA_EP,
    TRT_EP,
    OnnxRuntimeBackend,
    check_providers,
    providers_for,
    trt_cache_dir,
)
from edgeseg.runtime.segmenter import Segmenter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes.fake_gpu import FakeGpu  # noqa: E402


def test_provider_options_for_a_gpu(tmp_path):
    model = tmp_path / "m.onnx"
    got = providers_for("cuda:1", [TRT_EP, CUDA_EP, CPU_EP], model, stream=1234)
    assert [p for p, _ in got] == [TRT_EP, CUDA_EP, CPU_EP]
    trt, cuda_ep = got[0][1], got[1][1]
    assert trt["device_id"] == cuda_ep["device_id"] == "1"
    assert cuda_ep["user_compute_stream"] == "1234" and cuda_ep["has_user_compute_stream"] == "1"
    assert (
        trt["trt_engine_cache_path"]
        == trt["trt_timing_cache_path"]
        == str(tmp_path / "m.trt-cache")
    )
    assert trt["trt_engine_cache_enable"] == trt["trt_timing_cache_enable"] == "True"
    assert not any(
        k in trt for k in ("trt_fp16_enable", "trt_int8_enable")
    )  # precision: the model's
    assert providers_for("cpu", [CUDA_EP, CPU_EP], model) == [(CPU_EP, {})]
    assert [p for p, _ in providers_for("auto", [CPU_EP], model)] == [CPU_EP]
    with pytest.raises(EdgesegError, match="device 'cuda' needs onnxruntime-gpu"):
        providers_for("cuda", [CPU_EP], model)


def test_a_silent_fallback_to_the_cpu_is_refused():
    with pytest.raises(
        EdgesegError, match="could not start CUDAExecutionProvider.*fell back to the CPU"
    ):
        check_providers("cuda", [CUDA_EP, CPU_EP], [CPU_EP], "m.onnx")
    assert check_providers("cuda:1", [CUDA_EP, CPU_EP], [CUDA_EP, CPU_EP], "m.onnx") == "cuda:1"
    assert (
        check_providers("auto", [CUDA_EP, CPU_EP], [CPU_EP], "m.onnx") == "cpu"
    )  # auto may fall back


import onnxruntime  # noqa: E402

_REAL_SESSION = onnxruntime.InferenceSession


class _FakeSession:
    """The part of ``onnxruntime.InferenceSession`` the backend uses, wrapping a real CPU one."""

    created: list[dict] = []
    gives = [CPU_EP]

    def __init__(self, model, sess_options=None, providers=None, provider_options=None):
        type(self).created.append({"providers": providers, "options": provider_options})
        self._real = _REAL_SESSION(model, sess_options, providers=[CPU_EP])

    def get_providers(self):
        return list(type(self).gives)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def fake_gpu_ort(monkeypatch, tmp_path):
    import onnxruntime as ort

    fake = FakeGpu(devices=2)
    real = cuda_driver.Driver

    class FakeBacked(real):
        def __init__(self, device=0):
            super().__init__(device, cu=fake.cu, nvrtc=fake.nvrtc)

    monkeypatch.setattr(cuda_driver, "_DRIVERS", {})
    monkeypatch.setattr(cuda_driver, "Driver", FakeBacked)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_EP, CPU_EP])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    _FakeSession.created.clear()
    return fake


def test_cuda_n_plumbing_reaches_the_session(fake_gpu_ort, tiny_onnx, monkeypatch):
    monkeypatch.setattr(_FakeSession, "gives", [CUDA_EP, CPU_EP])
    be = OnnxRuntimeBackend(tiny_onnx, "cuda:1")
    (made,) = _FakeSession.created
    assert made["providers"] == [CUDA_EP, CPU_EP]
    opts = made["options"][0]
    assert opts["device_id"] == "1"
    assert opts["user_compute_stream"] == str(
        int(be.device_stream())
    )  # our stream, ORT computes on it
    assert be.device == "cuda:1" and be.caps.device_buffers
    be.close()
    assert not fake_gpu_ort.live["stream"]


def test_device_cuda_that_ends_on_the_cpu_is_an_error(fake_gpu_ort, tiny_onnx):
    with pytest.raises(EdgesegError, match="fell back to the CPU"):
        load_backend(tiny_onnx, device="cuda")


def test_io_binding_gives_the_plain_paths_labels(tiny_onnx):
    frames = [
        np.random.default_rng(i).integers(0, 256, (77, 141, 3), dtype=np.uint8) for i in range(3)
    ]
    for fuse in (False, True):
        plain = Segmenter(tiny_onnx, fuse_resize=fuse)
        bound = Segmenter(tiny_onnx, fuse_resize=fuse, io_binding=True)
        assert bound.backend._io_binding and not plain.backend._io_binding
        for f in frames:
            np.testing.assert_array_equal(bound(f, 0.5).labels, plain(f, 0.5).labels)
        x = plain.prepare(frames)
        np.testing.assert_array_equal(bound.backend.infer(x), plain.backend.infer(x))


def test_names_and_capabilities(tiny_onnx, tiny_run):
    ort_be = load_backend(tiny_onnx)
    assert ort_be.name == "ort" and ort_be.caps.device == "cpu" and not ort_be.caps.device_buffers
    assert ort_be.caps.max_batch is None  # the export's batch is dynamic
    torch_be = load_backend(tiny_run / "best.pt", device="cpu")
    assert torch_be.name == "torch" and torch_be.caps.graph is None
    with pytest.raises(EdgesegError, match="computes in fp32, not fp16"):
        load_backend(tiny_onnx, precision="fp16")
    with pytest.raises(EdgesegError, match="fp16 on the torch backend needs a CUDA device"):
        load_backend(tiny_run / "best.pt", device="cpu", precision="fp16")
    with load_backend(tiny_onnx) as be:
        assert be.infer(np.zeros((2, 3, *be.spec.input_hw), np.float32)).shape[0] == 2
    assert be.session is None  # closed


def test_trt_cache_lives_beside_the_model(tmp_path):
    assert (
        trt_cache_dir(tmp_path / "deploy" / "model.fp16.onnx")
        == tmp_path / "deploy" / "model.fp16.trt-cache"
    )


def test_an_onnx_whose_input_disagrees_with_its_spec_is_refused(tiny_onnx, tmp_path):
    import json

    import onnx

    from edgeseg.spec import METADATA_KEY

    proto = onnx.load(str(tiny_onnx))
    meta = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    spec = json.loads(meta.value)
    spec["input"].update(height=1024, width=2048)  # a sidecar from another model
    meta.value = json.dumps(spec)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    with pytest.raises(
        EdgesegError, match=r"the graph's input is .* ModelSpec says \(N, 3, 1024, 2048\)"
    ):
        load_backend(tmp_path / "m.onnx")


def test_the_colour_tables_of_a_gpu_stay_few_whatever_the_alphas(tmp_path):
    from edgeseg.runtime.kernels.cuda import ColourTables

    fake = FakeGpu()
    drv = cuda_driver.Driver(0, cu=fake.cu, nvrtc=fake.nvrtc)
    tables = ColourTables(drv, keep=4)
    palette = [[1, 2, 3], [4, 5, 6]]
    for i in range(50):
        tables.get(palette, i / 50)
    assert len(fake.memory) == 4  # the four most recent; the others were freed
    tables.free()
    assert not fake.memory
