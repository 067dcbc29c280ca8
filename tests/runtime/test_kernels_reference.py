"""The NumPy reference is the spec: check it against OpenCV where OpenCV has the same semantics."""

import cv2
import numpy as np
import pytest

from edgeseg.runtime.kernels import reference as ref

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


@pytest.mark.parametrize(
    "src_hw,dst_hw",
    [
        ((360, 480), (352, 480)),
        ((37, 53), (64, 96)),
        ((1, 1), (32, 32)),
        ((720, 1280), (256, 512)),
        ((5, 7), (3, 2)),
    ],
)
def test_bilinear_matches_opencv_half_pixel(src_hw, dst_hw):
    img = np.random.default_rng(0).uniform(0, 255, (*src_hw, 3)).astype(np.float32)
    want = cv2.resize(img, dst_hw[::-1], interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(
        ref.resize_bilinear(img, dst_hw), want.reshape(*dst_hw, 3), atol=1e-3
    )


@pytest.mark.parametrize(
    "src_hw,dst_hw", [((64, 128), (360, 480)), ((13, 17), (40, 41)), ((2, 2), (1, 1))]
)
def test_nearest_matches_opencv_exact(src_hw, dst_hw):
    lab = np.random.default_rng(1).integers(0, 19, src_hw).astype(np.uint8)
    want = cv2.resize(lab, dst_hw[::-1], interpolation=cv2.INTER_NEAREST_EXACT)

    # Samples exactly on a pixel edge are ties, resolved differently by design (see reference).
    def ties(n_in, n_out):
        return ((2 * np.arange(n_out) + 1) * n_in) % (2 * n_out) == 0

    off_edge = ~ties(src_hw[0], dst_hw[0])[:, None] & ~ties(src_hw[1], dst_hw[1])[None, :]
    got = ref.resize_nearest(lab, dst_hw)
    np.testing.assert_array_equal(got[off_edge], want[off_edge])


def test_preprocess_layout_and_normalisation():
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[..., 0] = 10  # B
    frame[..., 2] = 200  # R
    x = ref.preprocess(frame, (32, 32), MEAN, STD)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.allclose(x[0, 0], (200 - MEAN[0]) / STD[0])  # channel 0 is red: BGR was swapped
    assert np.allclose(x[0, 2], (10 - MEAN[2]) / STD[2])
    out = np.empty((1, 3, 32, 32), np.float32)
    assert ref.preprocess(frame, (32, 32), MEAN, STD, out=out) is out
    assert ref.preprocess(frame, (32, 32), MEAN, STD, dtype=np.float16).dtype == np.float16


@pytest.mark.parametrize(
    "bad,err",
    [
        (np.zeros((4, 4, 3), np.float32), TypeError),
        (np.zeros((4, 4), np.uint8), ValueError),
        (np.zeros((4, 4, 4), np.uint8), ValueError),
        ([[1, 2, 3]], TypeError),
    ],
)
def test_preprocess_rejects_wrong_input(bad, err):
    with pytest.raises(err, match="uint8|numpy"):
        ref.preprocess(bad, (32, 32), MEAN, STD)


def test_postprocess_argmax_first_max_wins_and_resizes():
    scores = np.zeros((1, 3, 2, 2), np.float32)
    scores[0, 1, 0, 0] = 1
    scores[0, 2, 1, 1] = 5
    lab = ref.postprocess(scores, (4, 4))
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    np.testing.assert_array_equal(
        ref.postprocess(np.array([[[3, 1], [0, 2]]], np.int64), (2, 2)), [[3, 1], [0, 2]]
    )


def test_postprocess_bilinear_upsamples_logits_before_argmax():
    scores = np.random.default_rng(2).normal(size=(1, 5, 8, 8)).astype(np.float32)
    lab = ref.postprocess(scores, (24, 16), mode="bilinear")
    up = cv2.resize(scores[0].transpose(1, 2, 0), (16, 24), interpolation=cv2.INTER_LINEAR)
    assert (lab == up.argmax(-1)).mean() > 0.999  # float ties aside


def test_overlay_rounds_and_uses_bgr_palette():
    frame = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [1, 0]], np.uint8)
    palette = [[0, 0, 0], [255, 0, 0]]  # class 1 is red in RGB
    lab, vis = ref.postprocess(
        labels[None].astype(np.int32), (2, 2), palette=palette, frame=frame, alpha=0.5
    )
    assert vis[0, 1].tolist() == [
        50,
        50,
        178,
    ]  # 100*0.5 + 255*0.5 = 177.5 -> 178 in the R (last) channel
    assert vis[0, 0].tolist() == [50, 50, 50]


def _logits(rng, C=4, h=6, w=7, scale=1.0):
    return (rng.standard_normal((1, C, h, w)) * scale).astype(np.float32)


def test_smoothing_starts_from_the_first_frame_then_blends_in_float32():
    rng = np.random.default_rng(0)
    a, b = _logits(rng), _logits(rng)
    state, restarted = ref.smooth(a, None, 0.75, cut=1.0)
    assert restarted and np.array_equal(state, a) and state is not a
    state, restarted = ref.smooth(b, state, 0.75, cut=1.0)
    want = a * np.float32(0.75) + b * np.float32(0.25)
    assert not restarted and state.dtype == np.float32 and np.array_equal(state, want)


def test_smoothing_restarts_at_a_scene_cut_and_at_a_new_shape():
    rng = np.random.default_rng(1)
    a = _logits(rng)
    state, _ = ref.smooth(a, None, 0.5, cut=0.3)
    flipped = -a  # nearly every pixel's argmax changes
    state, restarted = ref.smooth(flipped, state, 0.5, cut=0.3)
    assert restarted and np.array_equal(state, flipped)
    state, restarted = ref.smooth(_logits(rng, h=3), state, 0.5, cut=0.3)
    assert restarted and state.shape == (1, 4, 3, 7)


def test_the_cut_counts_changed_pixels_strictly_above_its_fraction():
    a = np.zeros((1, 2, 1, 10), np.float32)
    a[0, 0] = 1.0  # class 0 everywhere
    b = a.copy()
    b[0, 1, 0, :3] = 2.0  # 3 of 10 pixels change class
    state, _ = ref.smooth(a, None, 0.5, cut=0.3)
    assert not ref.smooth(b, state.copy(), 0.5, cut=0.3)[1]  # 3 > floor(0.3 * 10) is false
    assert ref.smooth(b, state.copy(), 0.5, cut=0.2)[1]


@pytest.mark.parametrize(
    "n_in,n_out", [(360, 352), (176, 540), (1, 7), (7, 1), (3840, 480), (240, 32767), (32767, 3)]
)
def test_bilinear_taps_are_exact_rationals_rounded_once(n_in, n_out):
    from fractions import Fraction

    i0, i1, w = ref._linear_taps(n_in, n_out)
    for dst in {d for d in (0, 1, n_out // 3, n_out // 2, n_out - 2, n_out - 1) if 0 <= d < n_out}:
        src = min(max(Fraction(2 * dst + 1, 2) * n_in / n_out - Fraction(1, 2), 0), n_in - 1)
        lo = int(src)  # floor: src >= 0
        assert i0[dst] == lo and i1[dst] == min(lo + 1, n_in - 1)
        assert w[dst] == np.float32(float(src - lo))  # one rounding of the exact weight


def test_the_shared_pixel_maths_has_no_double_and_no_64_bit_division():
    # FP64 and 64-bit division run at a fraction of FP32 speed on a Jetson's GPU: the per-pixel
    # maths that CPU and CUDA share keeps to 32-bit (fault 11 of issue 23).
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "cpp_ext" / "include" / "pixel_ops.h").read_text()
    code = "\n".join(line.split("//")[0] for line in src.splitlines())
    assert "double" not in code
    assert "(i64)n_in" not in code and "(i64)n_out" not in code


def test_sides_above_the_kernels_limit_are_refused():
    with pytest.raises(ValueError, match="at most 32767"):
        ref.preprocess(np.zeros((1, ref.MAX_SIDE + 1, 3), np.uint8), (32, 32), [0] * 3, [1] * 3)
