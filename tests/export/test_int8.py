"""INT8 Q/DQ structure: what TensorRT (target trt) and ONNX Runtime CPU (target cpu) expect."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseg.errors import EdgesegError
from edgeseg.export.int8 import quantize_int8
from edgeseg.runtime import Segmenter
from edgeseg.runtime.backends.onnxruntime import read_onnx_spec


@pytest.fixture(scope="module")
def int8_trt(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "model.int8-trt.onnx"
    rep = quantize_int8(tiny_onnx, out, "synthetic:6", count=6, target="trt", keep_fp32=2)
    return out, rep


def _producers(graph):
    return {o: n for n in graph.node for o in n.output}


def test_trt_flavour_is_symmetric_per_channel_and_quantizes_every_conv_but_the_kept(int8_trt):
    path, rep = int8_trt
    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    zero_points = [
        inits[n.input[2]]
        for n in g.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    prod = _producers(g)
    kept = set(rep["kept"])
    assert len(kept) == 2
    for conv in (n for n in g.node if n.op_type == "Conv"):
        x, w = (prod.get(conv.input[0]), prod.get(conv.input[1]))
        quantized = (
            x is not None
            and x.op_type == "DequantizeLinear"
            and w is not None
            and w.op_type == "DequantizeLinear"
        )
        assert quantized != (conv.name in kept), conv.name
        if quantized:
            scale = inits[w.input[1]]
            out_channels = inits[w.input[0]].shape[0]
            assert scale.shape == (out_channels,), "weights must be quantized per output channel"
    spec = read_onnx_spec(path)
    assert spec.precision == "int8" and spec.source["int8"]["kept"] == rep["kept"]


def test_int8_model_runs_and_tracks_fp32(int8_trt, tiny_onnx):
    import onnxruntime as ort

    from edgeseg.data.synthetic import render_scene
    from edgeseg.runtime import kernels

    spec = read_onnx_spec(tiny_onnx)
    x = kernels.preprocess(
        render_scene(99, (64, 128))[0][..., ::-1].copy(),
        spec.input_hw,
        spec.input.mean,
        spec.input.std,
    )
    run = {
        p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[
            0
        ]
        for p in (int8_trt[0], tiny_onnx)
    }
    q, f = run[int8_trt[0]].ravel(), run[tiny_onnx].ravel()
    # A two-epoch toy model calibrated on 6 frames: a loose check that the logits follow FP32.
    # The accuracy bar (within 1 mIoU point) is measured on CamVid, not here.
    assert np.corrcoef(q, f)[0, 1] > 0.7
    assert Segmenter(int8_trt[0])(np.zeros((50, 70, 3), np.uint8)).labels.shape == (50, 70)


def test_cpu_flavour_is_u8s8_with_7_bit_weights(tiny_onnx, tmp_path):
    out = tmp_path / "cpu.onnx"
    quantize_int8(tiny_onnx, out, "synthetic:4", count=4, target="cpu", method="percentile")
    g = onnx.load(str(out)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    act_zp = [
        inits[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    assert {z.dtype for z in act_zp} == {np.dtype(np.uint8)}
    # 7-bit weights: no saturation in the U8 x S8 multiply-adds of x86 CPUs without VNNI
    stored = [
        inits[n.input[0]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    weights = [w for w in stored if w.dtype == np.int8]  # (biases are int32)
    assert weights and all(np.abs(w.astype(int)).max() <= 64 for w in weights)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"method": "kl"}, "unknown --calib-method"),
        ({"target": "gpu"}, "unknown --target"),
        ({"count": 0}, "at least 1"),
    ],
)
def test_bad_options(tiny_onnx, tmp_path, kw, msg):
    with pytest.raises(EdgesegError, match=msg):
        quantize_int8(tiny_onnx, tmp_path / "x.onnx", "synthetic:2", **kw)


def _cpu_session(path, optimized: bool):
    """An ONNX Runtime CPU session built here, with all graph optimizations or none."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimized else level.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_exact_qdq_runs_the_qdq_nodes_as_written(int8_trt):
    from edgeseg.runtime.backends import load_backend

    path = int8_trt[0]
    x = np.random.default_rng(0).standard_normal((1, 3, *read_onnx_spec(path).input_hw))
    x = x.astype(np.float32)
    as_written = _cpu_session(path, optimized=False).run(None, {"input": x})[0]
    fused = _cpu_session(path, optimized=True).run(None, {"input": x})[0]
    # Optimized, ONNX Runtime fuses the Q/DQ pairs into integer kernels (QLinearConv) whose
    # rounding differs from dequantize -> float Conv: the two ways of running are told apart.
    assert np.abs(as_written - fused).max() > 1e-2
    exact = load_backend(path, "ort", "cpu", exact_qdq=True).infer(x)
    default = load_backend(path, "ort", "cpu").infer(x)
    np.testing.assert_allclose(exact, as_written, rtol=0, atol=1e-5)
    np.testing.assert_allclose(default, fused, rtol=0, atol=1e-5)


def test_exact_qdq_eval_scores_the_graph_as_written(int8_trt):
    """``edgeseg eval --exact-qdq`` scores the predictions of the unoptimized graph."""
    from edgeseg.data import build_dataset
    from edgeseg.runtime import kernels
    from edgeseg.train.evaluate import evaluate

    path, data, n = int8_trt[0], "synthetic:8", 2
    spec = read_onnx_spec(path)
    dataset = build_dataset(data, "val")

    def pixel_acc(session) -> float:  # accuracy computed here, from a session built here
        hits = total = 0
        for i in range(n):
            img_rgb, mask = dataset[i]
            frame = np.ascontiguousarray(img_rgb[..., ::-1])
            x = kernels.preprocess(frame, spec.input_hw, spec.input.mean, spec.input.std)
            logits = session.run(None, {"input": x})[0]
            pred = kernels.postprocess(logits, mask.shape[:2], mode="bilinear")
            keep = mask < spec.num_classes
            hits += int((pred[keep] == mask[keep]).sum())
            total += int(keep.sum())
        return hits / total

    as_written = pixel_acc(_cpu_session(path, optimized=False))
    fused = pixel_acc(_cpu_session(path, optimized=True))
    assert as_written != pytest.approx(fused, abs=1e-3)  # the two are told apart on these frames
    exact = evaluate(path, data, device="cpu", limit=n, exact_qdq=True)
    default = evaluate(path, data, device="cpu", limit=n)
    assert exact["exact_qdq"] is True and default["exact_qdq"] is False
    assert exact["pixel_acc"] == pytest.approx(as_written, abs=1e-9)
    assert default["pixel_acc"] == pytest.approx(fused, abs=1e-9)
