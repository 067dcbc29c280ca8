"""TensorRT engine records: cache keys, sidecars, stale/foreign refusal; the build on a GPU."""

import importlib
import json

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.export.engine import EngineOptions, cache_key, file_sha256
from edgeseg.runtime.engine_files import SIDECAR_FORMAT, check_engine, read_sidecar, sidecar_path


def test_cache_key_changes_with_everything_a_plan_depends_on():
    base = cache_key("a" * 64, "10.7.0", "NVIDIA H100", EngineOptions())
    assert base == cache_key("a" * 64, "10.7.0", "NVIDIA H100", EngineOptions())
    others = [
        cache_key("b" * 64, "10.7.0", "NVIDIA H100", EngineOptions()),
        cache_key("a" * 64, "11.0.0", "NVIDIA H100", EngineOptions()),
        cache_key("a" * 64, "10.7.0", "Orin", EngineOptions()),
        cache_key("a" * 64, "10.7.0", "NVIDIA H100", EngineOptions(workspace_mb=512)),
        cache_key("a" * 64, "10.7.0", "NVIDIA H100", EngineOptions.parse_dynamic("1,2,4")),
    ]
    assert len({base, *others}) == 6


@pytest.mark.parametrize(
    "text,err", [("1,2", "MIN,OPT,MAX"), ("4,2,8", "MIN <= OPT"), ("a,b,c", "MIN,OPT,MAX")]
)
def test_dynamic_profile_parsing(text, err):
    assert EngineOptions.parse_dynamic("1,4,8") == EngineOptions(None, 1, 4, 8)
    with pytest.raises(EdgesegError, match=err):
        EngineOptions.parse_dynamic(text)


def _engine(tmp_path, version="10.7.0", gpu="NVIDIA H100"):
    eng = tmp_path / "model.engine"
    eng.write_bytes(b"plan")
    sidecar_path(eng).write_text(
        json.dumps(
            {"format": SIDECAR_FORMAT, "spec": {}, "tensorrt": {"version": version, "gpu": gpu}}
        )
    )
    return eng


def test_stale_or_foreign_engines_are_refused_clearly(tmp_path):
    eng = _engine(tmp_path)
    meta = read_sidecar(eng)
    check_engine(meta, "10.7.0", "NVIDIA H100", eng)  # the machine it was built on
    with pytest.raises(
        EdgesegError, match="built with TensorRT 10.7.0, this machine has 11.0.0.*rebuild"
    ):
        check_engine(meta, "11.0.0", "NVIDIA H100", eng)
    with pytest.raises(EdgesegError, match="built for NVIDIA H100, this GPU is Orin"):
        check_engine(meta, "10.7.0", "Orin", eng)


def test_engine_without_or_with_a_broken_record(tmp_path):
    with pytest.raises(EdgesegError, match="engine not found"):
        read_sidecar(tmp_path / "none.engine")
    eng = tmp_path / "bare.engine"
    eng.write_bytes(b"plan")
    with pytest.raises(EdgesegError, match="has no bare.engine.json"):
        read_sidecar(eng)
    sidecar_path(eng).write_text("{not json")
    with pytest.raises(EdgesegError, match="not valid JSON"):
        read_sidecar(eng)
    sidecar_path(eng).write_text("{}")
    with pytest.raises(EdgesegError, match="not an edgeseg engine record"):
        read_sidecar(eng)


def test_file_hash_is_of_the_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    assert file_sha256(a) == file_sha256(b) != file_sha256(__file__)


def _tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here, or None. Asked at collection, so a test that needs it
    is skipped before its fixtures run (tiny_onnx trains and exports a model)."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as e:  # noqa: BLE001 - ImportError, or a TensorRT that cannot load
        return f"TensorRT is not usable here ({type(e).__name__}: {e})"
    if not hasattr(trt, "Builder"):
        return "the tensorrt module here is not TensorRT (stubs installed beside edgeseg?)"
    return None


TENSORRT_MISSING = _tensorrt_missing()


@pytest.mark.gpu
@pytest.mark.skipif(TENSORRT_MISSING is not None, reason=TENSORRT_MISSING or "")
def test_engine_build_and_label_agreement_with_onnxruntime(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))
    from edgeseg.export.engine import build_engine
    from edgeseg.runtime import Segmenter

    rec = build_engine(tiny_onnx, tmp_path / "model.engine", timing_cache=tmp_path / "tc.bin")
    assert not rec["from_cache"] and (tmp_path / "tc.bin").is_file()
    again = build_engine(tiny_onnx, tmp_path / "again.engine")
    assert again["from_cache"] and again["cache_key"] == rec["cache_key"]
    frame = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    trt_res = Segmenter(tmp_path / "model.engine")(frame, overlay_alpha=0.5)
    ort_res = Segmenter(tiny_onnx)(frame)
    assert (trt_res.labels == ort_res.labels).mean() > 0.99
    assert trt_res.vis.shape == frame.shape


def test_engine_without_tensorrt_installed_says_how_to_get_it(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from edgeseg.runtime.backends import load_backend

    with pytest.raises(EdgesegError, match="TensorRT is not installed.*JetPack"):
        load_backend(_engine(tmp_path))
