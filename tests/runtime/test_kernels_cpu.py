"""The C++ CPU kernels equal the NumPy reference: labels exactly, floats to 1e-5, overlays 1 LSB."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeseg.runtime import kernels
from edgeseg.runtime.kernels import reference as ref

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)

pytestmark = pytest.mark.skipif(kernels._cpu is None, reason="C++ extension not built")


@pytest.fixture(autouse=True)
def _cpu_backend():
    before = kernels.implementation
    kernels.use("cpu")
    yield
    kernels.use(before)


def _frame(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_preprocess(frame, size_hw, dtype=np.float32):
    got = kernels.preprocess(frame, size_hw, MEAN, STD, dtype=dtype)
    want = ref.preprocess(frame, size_hw, MEAN, STD, dtype=dtype)
    assert got.shape == want.shape == (1, 3, *size_hw) and got.dtype == want.dtype
    if dtype == np.float16:  # identical float32 values round to the same half
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def check_postprocess(scores, frame, palette, alpha=0.5, mode="nearest"):
    hw = frame.shape[:2]
    labels, vis = kernels.postprocess(scores, hw, palette, frame, alpha, mode=mode)
    want_labels, want_vis = ref.postprocess(scores, hw, palette, frame, alpha, mode=mode)
    np.testing.assert_array_equal(labels, want_labels)
    assert np.abs(vis.astype(np.int16) - want_vis).max() <= 1
    # labels alone take the same path
    np.testing.assert_array_equal(kernels.postprocess(scores, hw, mode=mode), want_labels)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    H=st.integers(1, 70),
    W=st.integers(1, 70),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    C=st.integers(1, 24),
    half=st.booleans(),
    mode=st.sampled_from(["nearest", "bilinear"]),
    alpha=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(H, W, h, w, C, half, mode, alpha, seed):
    rng = np.random.default_rng(seed)
    frame = _frame(rng, H, W)
    check_preprocess(frame, (h, w), np.float16 if half else np.float32)
    scores = rng.standard_normal((1, C, h, w)).astype(np.float16 if half else np.float32)
    check_postprocess(scores, frame, rng.integers(0, 256, (C, 3)), alpha, mode)


@pytest.mark.parametrize(
    "frame_hw,model_hw",
    [
        ((1, 1), (1, 1)),
        ((1, 1), (32, 32)),
        ((37, 53), (64, 32)),
        ((721, 1279), (256, 512)),
        ((2160, 3840), (512, 1024)),
    ],
)
def test_edge_sizes(frame_hw, model_hw):
    rng = np.random.default_rng(0)
    frame = _frame(rng, *frame_hw)
    check_preprocess(frame, model_hw)
    scores = rng.standard_normal((1, 19, *model_hw)).astype(np.float32)
    for mode in ("nearest", "bilinear") if frame_hw[0] < 2000 else ("nearest",):
        check_postprocess(scores, frame, rng.integers(0, 256, (19, 3)), 0.5, mode)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 80),
    k=st.integers(2, 4),
    C=st.integers(1, 24),
    half=st.booleans(),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_upsample_matches_reference_at_random_sizes(h, w, k, C, half, ties, seed):
    """Rows long enough for the 16-pixel register blocks, with their scalar edges and tails."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if half else np.float32
    scores = (
        rng.integers(-2, 3, (1, C, h, w)) if ties else rng.standard_normal((1, C, h, w))
    ).astype(dtype)
    hw = (h * k + 3, w * k - 1)  # frame size off the model's grid: the nearest step runs too
    np.testing.assert_array_equal(
        kernels.postprocess(scores, hw, upsample=k), ref.postprocess(scores, hw, upsample=k)
    )
    np.testing.assert_array_equal(kernels.postprocess(scores, hw), ref.postprocess(scores, hw))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 80),
    k=st.integers(1, 4),
    C=st.integers(1, 24),
    mode=st.sampled_from(["nearest", "bilinear"]),
    half=st.booleans(),
    ties=st.booleans(),
    spread=st.sampled_from([4.0, 20.0]),
    seed=st.integers(0, 2**16),
)
def test_confidence_equals_the_reference_bit_for_bit(h, w, k, C, mode, half, ties, spread, seed):
    """Every path that takes an argmax (model size, fused upsample, bilinear at frame size; the
    16-pixel register blocks, their scalar edges) gives the reference's confidence exactly, and
    asking for it leaves the labels as they were; ``spread`` 20 puts many classes past the cutoff
    (pixel_ops.h ES_EXP_CUTOFF), where whole vectors are skipped."""
    if mode == "bilinear":
        k = 1
    rng = np.random.default_rng(seed)
    dtype = np.float16 if half else np.float32
    scores = (
        rng.integers(-2, 3, (1, C, h, w)) if ties else spread * rng.standard_normal((1, C, h, w))
    ).astype(dtype)
    hw = (h * k + 3, w * k + 5)
    conf = np.empty(hw, np.uint8)
    labels = kernels.postprocess(scores, hw, mode=mode, upsample=k, conf_out=conf)
    np.testing.assert_array_equal(conf, ref.confidence(scores, hw, mode, k))
    np.testing.assert_array_equal(labels, kernels.postprocess(scores, hw, mode=mode, upsample=k))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_confidence_of_nan_and_infinite_scores_equals_the_reference(dtype, mode):
    """A model that overflows (float16 engines can) gives NaN or inf scores: the kernels and
    the reference agree on every pixel (a NaN after the first class is passed over, as the
    argmax passes it; a best score that is NaN or infinite gives confidence 0)."""
    rng = np.random.default_rng(5)
    scores = (3 * rng.standard_normal((1, 5, 6, 40))).astype(dtype)
    scores[0, 0, 0, :20] = np.nan  # the first class NaN: the best stays NaN
    scores[0, 2, 1, :] = np.nan  # a later class NaN: passed over
    scores[0, 3, 2, :] = np.inf
    scores[0, :, 3, :] = -np.inf
    scores[0, 1, 4, 5:30] = -np.inf
    hw = (12, 80) if mode == "bilinear" else (6, 40)
    conf = np.empty(hw, np.uint8)
    with np.errstate(invalid="ignore"):
        kernels.postprocess(scores, hw, mode=mode, conf_out=conf)
        want = ref.confidence(scores, hw, mode)
    np.testing.assert_array_equal(conf, want)
    if mode == "nearest":
        assert (conf[0, :20] == 0).all() and (conf[2] == 0).all() and (conf[3] == 0).all()
        assert (conf[1] > 0).all() and (conf[4] > 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_confidence_is_the_softmax_of_the_winning_class(dtype):
    """Against the softmax computed in float64 with NumPy's exp: round(255 p) of the top class,
    at most one step off where the float32 sum rounds across a half."""
    rng = np.random.default_rng(3)
    scores = (5 * rng.standard_normal((1, 19, 40, 48))).astype(dtype)
    scores[0, :, 0, 0] = 0  # a 19-way tie
    scores[0, 3, 1, 1] = 60  # one class far ahead
    conf = np.empty((40, 48), np.uint8)
    kernels.postprocess(scores, (40, 48), conf_out=conf)
    x = scores[0].astype(np.float64)
    p = np.exp(x - x.max(0))
    want = np.round(255 * (p / p.sum(0)).max(0))
    assert np.abs(conf - want).max() <= 1 and (conf == want).mean() > 0.99
    assert conf[0, 0] == round(255 / 19) and conf[1, 1] == 255


def test_confidence_needs_logits_and_a_buffer_of_the_labels_size():
    labels = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="confidence needs"):
        kernels.postprocess(labels, (8, 8), conf_out=np.empty((8, 8), np.uint8))
    scores = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="conf_out must be a uint8 array of shape"):
        kernels.postprocess(scores, (8, 8), conf_out=np.empty((4, 8), np.uint8))


@pytest.mark.parametrize("C", [1, 2, 19, 255, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_class_counts_and_half_logits(C, dtype):
    rng = np.random.default_rng(C)
    frame = _frame(rng, 45, 67)
    # integers make ties frequent: the first maximum must win in every implementation
    scores = rng.integers(-3, 4, (1, C, 16, 24)).astype(dtype)
    check_postprocess(scores, frame, rng.integers(0, 256, (C, 3)), 0.4, "nearest")
    check_postprocess(scores, frame, rng.integers(0, 256, (C, 3)), 0.4, "bilinear")


@pytest.mark.parametrize("k", [2, 3, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_upsample_fuses_the_models_trailing_resize(k, dtype):
    """upsample=k: bilinear xk of the logits, argmax, nearest to frame size, as the reference."""
    rng = np.random.default_rng(k)
    frame = _frame(rng, 131, 197)
    palette = rng.integers(0, 256, (7, 3))
    for scores in (
        rng.standard_normal((1, 7, 11, 15)).astype(dtype),
        rng.integers(-2, 3, (1, 7, 11, 15)).astype(dtype),
    ):  # ties: first maximum wins
        labels, vis = kernels.postprocess(scores, frame.shape[:2], palette, frame, 0.5, upsample=k)
        want_labels, want_vis = ref.postprocess(
            scores, frame.shape[:2], palette, frame, 0.5, upsample=k
        )
        np.testing.assert_array_equal(labels, want_labels)
        assert np.abs(vis.astype(np.int16) - want_vis).max() <= 1
        # the same labels as resizing the logits first and post-processing the full-size scores
        full = ref.resize_bilinear(scores[0].transpose(1, 2, 0), (11 * k, 15 * k)).transpose(
            2, 0, 1
        )[None]
        np.testing.assert_array_equal(
            labels, kernels.postprocess(np.ascontiguousarray(full), frame.shape[:2])
        )


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_label_inputs(dtype):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 19, (1, 30, 40)).astype(dtype)
    frame = _frame(rng, 61, 83)
    check_postprocess(labels, frame, rng.integers(0, 256, (19, 3)))


@pytest.mark.parametrize(
    "w,W",
    [
        (1, 16),
        (15, 16),
        (16, 16),
        (17, 33),
        (100, 250),
        (240, 960),
        (240, 961),
        (480, 960),
        (240, 200),
        (20, 17),
        (64, 65),
    ],
)
def test_nearest_rows_at_the_edges_of_the_16_byte_shuffles(w, W):
    """Row gathers go 16 output bytes at a time where 16 taps fit in one 16-byte load: widths
    around 16, upscales, tiny downscales and tails all land where the taps say."""
    rng = np.random.default_rng(w * 1000 + W)
    labels = rng.integers(0, 256, (1, 3, w)).astype(np.uint8)
    frame = _frame(rng, 5, W)
    check_postprocess(labels, frame, rng.integers(0, 256, (256, 3)))
    scores = rng.standard_normal((1, 7, 3, w)).astype(np.float32)
    conf, want = np.empty((5, W), np.uint8), np.empty((5, W), np.uint8)
    kernels.postprocess(scores, (5, W), conf_out=conf)
    ref.postprocess(scores, (5, W), conf_out=want)
    np.testing.assert_array_equal(conf, want)


def test_non_contiguous_inputs():
    rng = np.random.default_rng(2)
    big = _frame(rng, 100, 160)
    frame = big[10:90:2, 5:150:3]  # strided crop
    assert not frame.flags.c_contiguous
    check_preprocess(frame, (32, 64))
    bgr_view = np.ascontiguousarray(big[..., ::-1])[..., ::-1]  # negative channel stride
    check_preprocess(bgr_view, (32, 64))
    scores = rng.standard_normal((1, 24, 32, 48)).astype(np.float32)[:, ::2]  # every other class
    check_postprocess(scores, np.ascontiguousarray(frame), rng.integers(0, 256, (12, 3)))


def test_writes_into_caller_buffers():
    rng = np.random.default_rng(3)
    frame = _frame(rng, 90, 120)
    x = np.empty((1, 3, 64, 96), np.float32)
    assert kernels.preprocess(frame, (64, 96), MEAN, STD, out=x) is x
    labels = np.empty((90, 120), np.uint8)
    vis = np.empty((90, 120, 3), np.uint8)
    scores = rng.standard_normal((1, 5, 64, 96)).astype(np.float32)
    got_l, got_v = kernels.postprocess(
        scores, (90, 120), rng.integers(0, 256, (5, 3)), frame, out=labels, overlay_out=vis
    )
    assert got_l is labels and got_v is vis
    np.testing.assert_array_equal(labels, ref.postprocess(scores, (90, 120)))
    o = np.empty_like(frame)
    assert kernels.overlay(frame, labels, [[255, 0, 0]] * 5, 0.3, out=o) is o
    assert np.abs(o.astype(int) - ref.overlay(frame, labels, [[255, 0, 0]] * 5, 0.3)).max() <= 1


@pytest.mark.parametrize(
    "call,err,match",
    [
        (
            lambda: kernels.preprocess(np.zeros((4, 4, 3), np.float32), (8, 8), MEAN, STD),
            TypeError,
            "uint8",
        ),
        (
            lambda: kernels.preprocess(np.zeros((4, 4), np.uint8), (8, 8), MEAN, STD),
            ValueError,
            r"\(H, W, 3\)",
        ),
        (
            lambda: kernels.preprocess(np.zeros((4, 4, 3), np.uint8), (0, 8), MEAN, STD),
            ValueError,
            "positive",
        ),
        (
            lambda: kernels.preprocess(
                np.zeros((4, 4, 3), np.uint8), (8, 8), MEAN, STD, dtype=np.int8
            ),
            ValueError,
            "float16",
        ),
        (
            lambda: kernels.preprocess(
                np.zeros((4, 4, 3), np.uint8),
                (8, 8),
                MEAN,
                STD,
                out=np.empty((1, 3, 8, 9), np.float32),
            ),
            ValueError,
            "shape",
        ),
        (
            lambda: kernels.postprocess(np.zeros((1, 3, 4, 4), np.float64), (8, 8)),
            ValueError,
            "float32/float16",
        ),
        (
            lambda: kernels.postprocess(np.zeros((3, 4, 4), np.float32), (8, 8)),
            ValueError,
            r"\(1, C, h, w\)",
        ),
        (
            lambda: kernels.postprocess(np.zeros((1, 300, 4, 4), np.float32), (8, 8)),
            ValueError,
            "256 classes",
        ),
        (
            lambda: kernels.postprocess(np.zeros((1, 3, 4, 4), np.float32), (8, 8), mode="cubic"),
            ValueError,
            "mode",
        ),
        (
            lambda: kernels.postprocess(
                np.zeros((1, 3, 4, 4), np.float32), (8, 8), frame=np.zeros((8, 8, 3), np.uint8)
            ),
            ValueError,
            "palette",
        ),
        (
            lambda: kernels.postprocess(
                np.zeros((1, 3, 4, 4), np.float32),
                (8, 8),
                [[0, 0, 0]] * 3,
                np.zeros((9, 8, 3), np.uint8),
            ),
            ValueError,
            "frame_hw",
        ),
        (
            lambda: kernels.postprocess(np.zeros((1, 3, 4, 4), np.float32), (8, 8), alpha=2),
            ValueError,
            "alpha",
        ),
        (lambda: kernels.use("gpu"), ValueError, "reference"),
        (
            lambda: kernels.postprocess(np.zeros((1, 3, 4, 4), np.float32), (8, 8), upsample=0),
            ValueError,
            "positive",
        ),
        (
            lambda: kernels.postprocess(
                np.zeros((1, 3, 4, 4), np.float32), (8, 8), mode="bilinear", upsample=2
            ),
            ValueError,
            "nearest",
        ),
        (
            lambda: kernels.postprocess(np.zeros((1, 4, 4), np.uint8), (8, 8), upsample=2),
            ValueError,
            "logits",
        ),
    ],
)
def test_wrong_input_is_a_clear_error(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_backend_is_visible_and_selectable(monkeypatch):
    """The implementation selected is the one that runs: with "cpu" the NumPy reference is never
    called, with "reference" the C++ extension never is; both give the reference's results."""
    rng = np.random.default_rng(4)
    frame = _frame(rng, 20, 30)
    scores = rng.standard_normal((1, 5, 6, 7)).astype(np.float32)
    palette = rng.integers(0, 256, (5, 3))
    want_x = ref.preprocess(frame, (8, 8), MEAN, STD)
    want_labels, want_vis = ref.postprocess(scores, (20, 30), palette, frame, 0.3)

    def run_all() -> None:
        x = kernels.preprocess(frame, (8, 8), MEAN, STD)
        np.testing.assert_allclose(x, want_x, rtol=0, atol=1e-5)
        labels, vis = kernels.postprocess(scores, (20, 30), palette, frame, 0.3)
        np.testing.assert_array_equal(labels, want_labels)
        assert np.abs(vis.astype(np.int16) - want_vis).max() <= 1
        again = kernels.overlay(frame, labels, palette, 0.3)
        assert np.abs(again.astype(np.int16) - want_vis).max() <= 1

    def refuse(what: str):
        def call(*args, **kwargs):
            raise AssertionError(f"{what} ran")

        return call

    class NoCpp:
        def __getattr__(self, name):
            return refuse(f"the C++ kernel {name}")

    assert kernels.implementation == "cpu"
    with monkeypatch.context() as m:
        for name in ("preprocess", "postprocess", "overlay"):
            m.setattr(ref, name, refuse(f"the reference {name}"))
        run_all()
    kernels.use("reference")
    assert kernels.implementation == "reference"
    with monkeypatch.context() as m:
        m.setattr(kernels, "_cpu", NoCpp())
        run_all()


def test_threads_setting_round_trips():
    n = kernels._cpu.get_num_threads()
    kernels._cpu.set_num_threads(1)
    assert kernels._cpu.get_num_threads() == 1
    frame = _frame(np.random.default_rng(5), 300, 400)
    check_preprocess(frame, (256, 320))
    kernels._cpu.set_num_threads(n)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    C=st.integers(1, 20),
    h=st.integers(1, 30),
    w=st.integers(1, 45),
    half=st.booleans(),
    keep=st.floats(0, 0.99),
    cut=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_smoothing_equals_the_reference_bit_for_bit(C, h, w, half, keep, cut, seed):
    """A sequence of correlated frames (flicker around a scene, a cut halfway): the same
    averages, bit for bit, and the same restarts."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if half else np.float32
    scene = rng.standard_normal((1, C, h, w))
    got = want = None
    for t in range(6):
        if t == 3:
            scene = rng.standard_normal((1, C, h, w))
        x = (scene + 0.4 * rng.standard_normal(scene.shape)).astype(dtype)
        want, want_restart = ref.smooth(x, want, keep, cut)
        got, got_restart = kernels.smooth(x, got, keep, cut)
        assert got_restart == want_restart
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kernels.smooth(np.zeros((1, 5, 5), np.uint8), None, 0.5), "logits, not labels"),
        (lambda: kernels.smooth(np.zeros((1, 2, 5, 5), np.float32), None, 1.0), r"\[0, 1\)"),
        (lambda: kernels.smooth(np.zeros((1, 2, 5, 5), np.float32), None, 0.5, 2), "cut"),
        (
            lambda: kernels.smooth(
                np.zeros((1, 2, 5, 5), np.float32), np.zeros((1, 2, 5, 5), np.float64), 0.5
            ),
            "state must be a float32",
        ),
    ],
)
def test_smoothing_rejects_what_it_cannot_average(call, match):
    with pytest.raises(ValueError, match=match):
        call()
