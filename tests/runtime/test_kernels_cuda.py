"""CUDA kernels: compile checks everywhere (nvcc, NVRTC), CUDA == CPU on a GPU (marked gpu)."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from edgeseg.runtime import cuda_driver as cudart
from edgeseg.runtime import kernels
from edgeseg.runtime.kernels import cuda as kcuda
from edgeseg.runtime.kernels import reference as ref

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
ENTRY_POINTS = set(cudart.SIGNATURES)
LOWEST_ARCH = "compute_75"  # CUDA 13 supports Turing (sm_75) and newer; Jetson Orin is sm_87


def _ptx_entries(ptx: str) -> set[str]:
    return set(re.findall(r"\.entry\s+(\w+)", ptx))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_compiles_kernels_to_ptx_for_lowest_arch(tmp_path):
    src = cudart.kernel_sources()
    (tmp_path / "pixel_ops.h").write_text(src["pixel_ops.h"])
    (tmp_path / "kernels.cu").write_text(src["kernels.cu"])
    out = tmp_path / "kernels.ptx"
    r = subprocess.run(
        [
            "nvcc",
            "-ptx",
            f"-arch={LOWEST_ARCH}",
            "--fmad=false",
            "-std=c++17",
            "-Werror",
            "all-warnings",
            "-I",
            str(tmp_path),
            str(tmp_path / "kernels.cu"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    ptx = out.read_text()
    assert _ptx_entries(ptx) == ENTRY_POINTS  # every signature the host knows exists, and no others
    assert "fma.rn.f32" not in ptx  # --fmad=false: same rounding as the CPU and NumPy


def test_nvrtc_builds_the_shipped_sources():
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    try:
        nvrtc.nvrtcVersion()
    except Exception as e:  # cuda-bindings without the NVRTC library
        pytest.skip(f"NVRTC library not available: {e}")
    ptx = cudart.nvrtc_compile(
        nvrtc,
        cudart.kernel_sources(),
        (*cudart.NVRTC_OPTIONS, f"--gpu-architecture={LOWEST_ARCH}"),
        want_cubin=False,
    ).decode()
    assert _ptx_entries(ptx) == ENTRY_POINTS
    cubin = cudart.nvrtc_compile(
        nvrtc,
        cudart.kernel_sources(),
        (*cudart.NVRTC_OPTIONS, "--gpu-architecture=sm_87"),
        want_cubin=True,
    )
    assert cubin[:4] == b"\x7fELF"
    with pytest.raises(RuntimeError, match="NVRTC failed"):
        cudart.nvrtc_compile(
            nvrtc, {"kernels.cu": "this is not C++", "pixel_ops.h": ""}, cudart.NVRTC_OPTIONS, False
        )


def test_kernel_arguments_are_packed_as_the_driver_expects():
    holders, ptrs = cudart.pack_args(
        ("P", "i", "q", "H", "f3"), (1234, -7, 2**40, 513, (1.0, 2.0, 3.0))
    )
    assert [h.dtype for h in holders] == [np.uint64, np.int32, np.int64, np.uint16, np.float32]
    assert holders[4].tolist() == [1.0, 2.0, 3.0] and holders[1][0] == -7
    assert ptrs.tolist() == [h.ctypes.data for h in holders]
    with pytest.raises(TypeError, match="takes 2 arguments"):
        cudart.pack_args(("P", "i"), (1,))


@pytest.mark.skipif(kernels._cpu is None, reason="C++ extension not built")
def test_colour_table_reproduces_the_cpu_blend_exactly():
    """The host-side table the CUDA kernels get + blend_q in NumPy == the C++ overlay, bitwise."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (31, 47, 3), dtype=np.uint8)
    labels = rng.integers(0, 19, (31, 47)).astype(np.uint8)
    palette = rng.integers(0, 256, (19, 3))
    for alpha in (0.0, 0.3, 0.5, 0.77, 1.0):
        table, keep_q = kcuda.colour_table(palette, alpha)
        t = ((frame.astype(np.uint32) << 8) * keep_q) >> 16
        emulated = ((t + table[labels][..., :3]) >> 7).astype(np.uint8)
        kernels.use("cpu")
        np.testing.assert_array_equal(kernels.overlay(frame, labels, palette, alpha), emulated)
        assert np.abs(emulated.astype(int) - ref.overlay(frame, labels, palette, alpha)).max() <= 1


# ----------------------------------------------------------------------------- on a GPU


def _cuda_or_skip():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("cuda.bindings.driver")
    return torch


CASES = [
    ((1, 1), (1, 1), 1),
    ((37, 53), (64, 32), 2),
    ((721, 1279), (256, 512), 19),
    ((45, 67), (16, 24), 255),
    ((2160, 3840), (512, 1024), 19),
]


@pytest.mark.gpu
@pytest.mark.parametrize("frame_hw,model_hw,C", CASES)
@pytest.mark.parametrize("half", [False, True])
def test_cuda_equals_cpu(frame_hw, model_hw, C, half):
    torch = _cuda_or_skip()
    rng = np.random.default_rng(C)
    frame = rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
    dtype = np.float16 if half else np.float32
    kernels.use("cpu")
    want_x = kernels.preprocess(frame, model_hw, MEAN, STD, dtype=dtype)
    got_x = kcuda.preprocess(
        torch.from_numpy(frame).cuda(),
        model_hw,
        MEAN,
        STD,
        dtype=torch.float16 if half else torch.float32,
    )
    np.testing.assert_allclose(
        got_x.cpu().numpy().astype(np.float32), want_x.astype(np.float32), rtol=0, atol=1e-5
    )
    scores = rng.integers(-3, 4, (1, C, *model_hw)).astype(
        dtype
    )  # ties: the first maximum must win
    palette = rng.integers(0, 256, (C, 3))
    for mode in ("nearest", "bilinear"):
        want_l, want_v = kernels.postprocess(scores, frame_hw, palette, frame, 0.4, mode=mode)
        got_l, got_v = kcuda.postprocess(
            torch.from_numpy(scores).cuda(),
            frame_hw,
            palette,
            torch.from_numpy(frame).cuda(),
            0.4,
            mode=mode,
        )
        np.testing.assert_array_equal(got_l.cpu().numpy(), want_l)
        np.testing.assert_array_equal(got_v.cpu().numpy(), want_v)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64"])
def test_cuda_label_inputs(dtype):
    torch = _cuda_or_skip()
    labels = np.random.default_rng(1).integers(0, 19, (1, 30, 40)).astype(dtype)
    got = kcuda.postprocess(torch.from_numpy(labels).cuda(), (61, 83))
    np.testing.assert_array_equal(got.cpu().numpy(), ref.postprocess(labels, (61, 83)))


@pytest.mark.gpu
def test_torch_cuda_pipeline_matches_cpu_pipeline_on_camvid(tiny_run, camvid_root):
    torch = _cuda_or_skip()
    import cv2

    from edgeseg.runtime.segmenter import Segmenter

    gpu = Segmenter(tiny_run / "best.pt", device="cuda")
    cpu = Segmenter(tiny_run / "best.pt", device="cpu")
    assert gpu.kernels == "cuda" and cpu.kernels in ("cpu", "reference")
    for path in sorted((camvid_root / "val").glob("*.png"))[:5]:
        frame = cv2.imread(str(path))
        a, b = gpu(frame), cpu(frame)
        assert set(a.timings_ms) >= {"pre", "infer", "post"}
        # cuDNN and MKL-DNN convolutions round differently: near-tie pixels may flip
        assert (a.labels == b.labels).mean() > 0.995
    assert torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("half", [False, True])
def test_cuda_fused_upsample_equals_cpu(k, half):
    """The model's lifted trailing resize, done by the CUDA post-processing: the CPU's labels."""
    torch = _cuda_or_skip()
    rng = np.random.default_rng(k)
    dtype = np.float16 if half else np.float32
    scores = rng.standard_normal((1, 11, 22, 30)).astype(dtype)
    frame = rng.integers(0, 256, (540, 960, 3), dtype=np.uint8)
    palette = rng.integers(0, 256, (11, 3))
    kernels.use("cpu")
    want_l, want_v = kernels.postprocess(scores, (540, 960), palette, frame, 0.5, upsample=k)
    got_l, got_v = kcuda.postprocess(
        torch.from_numpy(scores).cuda(),
        (540, 960),
        palette,
        torch.from_numpy(frame).cuda(),
        0.5,
        upsample=k,
    )
    np.testing.assert_array_equal(got_l.cpu().numpy(), want_l)
    np.testing.assert_array_equal(got_v.cpu().numpy(), want_v)


@pytest.mark.gpu
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("C,hw", [(1, (1, 1)), (11, (88, 120)), (19, (37, 53))])
def test_cuda_smoothing_equals_cpu_bit_for_bit(C, hw, half):
    """Flicker around a scene, a cut, a restart the host asks for: the same averages."""
    torch = _cuda_or_skip()
    rng = np.random.default_rng(C)
    dtype = np.float16 if half else np.float32
    scene = rng.standard_normal((1, C, *hw))
    want = None
    state = torch.zeros((1, C, *hw), dtype=torch.float32, device="cuda")
    for t in range(8):
        if t == 4:
            scene = rng.standard_normal(scene.shape)
        x = (scene + 0.4 * rng.standard_normal(scene.shape)).astype(dtype)
        restart = t in (0, 6)
        want, _ = kernels.smooth(x, None if restart else want, 0.6, 0.3)
        kcuda.smooth(torch.from_numpy(x).cuda(), state, 0.6, 0.3, restart=restart)
        np.testing.assert_array_equal(state.cpu().numpy(), want)


@pytest.mark.gpu
@pytest.mark.parametrize("mode,k", [("nearest", 1), ("nearest", 8), ("bilinear", 1)])
@pytest.mark.parametrize("half", [False, True])
def test_cuda_confidence_equals_cpu_bit_for_bit(mode, k, half):
    """The confidence plane, computed by the argmax's kernel: the CPU's, byte for byte."""
    torch = _cuda_or_skip()
    rng = np.random.default_rng(k)
    dtype = np.float16 if half else np.float32
    scores = (3 * rng.standard_normal((1, 11, 22, 30))).astype(dtype)
    scores[0, :, 0, :4] = 0  # an 11-way tie: the lowest confidence there is
    kernels.use("cpu")
    want_c = np.empty((540, 960), np.uint8)
    want_l = kernels.postprocess(scores, (540, 960), mode=mode, upsample=k, conf_out=want_c)
    got_c = torch.empty((540, 960), dtype=torch.uint8, device="cuda")
    got_l = kcuda.postprocess(
        torch.from_numpy(scores).cuda(), (540, 960), mode=mode, upsample=k, conf_out=got_c
    )
    np.testing.assert_array_equal(got_l.cpu().numpy(), want_l)
    np.testing.assert_array_equal(got_c.cpu().numpy(), want_c)
    assert want_c.min() == round(255 / 11)
