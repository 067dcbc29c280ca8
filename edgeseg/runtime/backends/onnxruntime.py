"""ONNX Runtime backend: the best available execution provider, spec from the model's metadata."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.export.spec import METADATA_KEY, ModelSpec

# Preferred first; TensorRT and CUDA EPs exist only in onnxruntime-gpu builds.
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def read_onnx_spec(path: str | os.PathLike) -> ModelSpec:
    """Read the ModelSpec stored in an ONNX file's metadata without building a session."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise EdgesegError(f"{path} is not a valid ONNX model ({type(e).__name__}); re-export it with 'edgeseg export'") from None
    meta = {p.key: p.value for p in model.metadata_props}
    return _spec_from_meta(meta, path)


def _spec_from_meta(meta: dict[str, str], path: Path) -> ModelSpec:
    if METADATA_KEY not in meta:
        raise EdgesegError(f"{path} has no edgeseg model spec (ONNX metadata key '{METADATA_KEY}'); "
                           "export it with 'edgeseg export' so it carries its classes, size and normalisation")
    return ModelSpec.from_json(meta[METADATA_KEY], origin=str(path))


class OnnxRuntimeBackend:
    """Runs an exported ``.onnx`` with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 spin: bool = True, exact_qdq: bool = False) -> None:
        """``threads``: intra-op threads (default: one per core). ``spin=False`` lets idle pool
        threads sleep instead of busy-waiting: slower for back-to-back calls, but it leaves the
        cores to the other stages of a pipeline (decode, encode) between inferences."""
        import onnxruntime as ort

        path = Path(path)
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            providers = [p for p in _GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
            if device.startswith("cuda") and len(providers) == 1:
                raise EdgesegError("--device cuda needs onnxruntime-gpu (CUDA execution provider); "
                                   "pip uninstall onnxruntime && pip install onnxruntime-gpu, or use --device cpu")
        opts = ort.SessionOptions()
        # exact_qdq: no graph optimizations, so Q/DQ nodes run as written (quantize, dequantize,
        # float op) instead of being fused into integer kernels: the arithmetic TensorRT does
        # (int32 accumulation), free of the x86 U8S8 saturation that full-range S8 weights hit.
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if exact_qdq
                                         else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise EdgesegError(f"{path} could not be loaded by ONNX Runtime ({msg}); "
                               "check the file is a complete .onnx written by 'edgeseg export'") from None
        self.spec = _spec_from_meta(self.session.get_modelmeta().custom_metadata_map, path)
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] in _GPU_PROVIDERS else "cpu"
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: batch})[0]
