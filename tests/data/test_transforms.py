"""Paired transforms: alignment, padding, normalization, determinism and worker safety."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseg.data import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform
from edgeseg.data.transforms import denormalize, normalize
from edgeseg.errors import EdgesegError

IGNORE = 255
# Saturated, far-apart colours; black marks ignore (and is what padding becomes).
COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255], [0, 0, 0]]
)


def block_sample(classes: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Image whose colour encodes the mask, in ``block``-pixel squares (class 6 -> ignore)."""
    grid = np.kron(classes, np.ones((block, block), np.int64))
    mask = np.where(grid == 6, IGNORE, grid).astype(np.uint8)
    return COLOURS[grid].astype(np.uint8), mask


def decode(img_chw: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Nearest colour's class per pixel, and whether the pixel is that colour exactly (+-1)."""
    rgb = denormalize(img_chw).astype(np.int64)
    diff = np.abs(rgb[:, :, None, :] - COLOURS[None, None]).max(-1)
    cls = diff.argmin(-1)
    pure = diff.min(-1) <= 1
    return np.where(cls == 6, IGNORE, cls), pure


@settings(max_examples=40, deadline=None, database=None)
@given(
    classes=st.integers(2, 5).flatmap(
        lambda n: st.lists(
            st.lists(st.integers(0, 6), min_size=n, max_size=n), min_size=2, max_size=5
        )
    ),
    block=st.sampled_from([8, 12, 16]),
    crop=st.tuples(st.integers(8, 72), st.integers(8, 72)),
    scale_lo=st.floats(0.5, 2.0),
    scale_span=st.floats(0.0, 1.0),
    base=st.none() | st.tuples(st.floats(0.5, 1.0), st.floats(0.5, 1.0)),
    seed=st.integers(0, 2**32 - 1),
)
def test_train_transform_keeps_image_and_mask_aligned(
    classes, block, crop, scale_lo, scale_span, base, seed
):
    img, mask = block_sample(np.array(classes), block)
    h, w = mask.shape
    base_hw = None if base is None else (max(1, round(h * base[0])), max(1, round(w * base[1])))
    tf = TrainTransform(
        crop,
        scale=(scale_lo, min(2.0, scale_lo + scale_span)),
        hflip=True,
        jitter=0.0,
        ignore_index=IGNORE,
        base_hw=base_hw,
        rng=np.random.default_rng(seed),
    )
    x, y = tf(img, mask)
    assert x.shape == (3, *crop) and x.dtype == torch.float32
    assert y.shape == crop and y.dtype == torch.int64
    y = y.numpy()
    assert set(np.unique(y)) <= set(np.unique(mask)) | {IGNORE}
    decoded, pure = decode(x)
    # Wherever bilinear sampling saw a single block (the colour is pure), nearest sampling of the
    # mask must have picked that block too: this catches even a one-pixel misalignment.
    np.testing.assert_array_equal(decoded[pure], y[pure])
    # And away from block borders (mask constant over 5x5) the colour is always pure. Blocks just
    # outside the crop are unseen, so the crop's outer 2 pixels do not count as interior.
    y8 = y.astype(np.uint8)
    kernel = np.ones((5, 5), np.uint8)
    interior = cv2.erode(y8, kernel) == cv2.dilate(y8, kernel)
    interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False
    assert pure[interior].all()


def test_matches_resize_pad_crop_reference() -> None:
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), (5, 5), 0)
    mask = np.zeros((40, 60), np.uint8)
    for s in (0.6, 1.5):
        hs, ws = round(40 * s), round(60 * s)
        ref = cv2.resize(
            img, (ws, hs), interpolation=cv2.INTER_LINEAR
        )  # crop == scaled size: no offset
        tf = TrainTransform((hs, ws), scale=(s, s), hflip=False, jitter=0, ignore_index=IGNORE)
        got = denormalize(tf(img, mask)[0]).astype(int)
        assert np.abs(got - ref).mean() < 1.0 and np.abs(got - ref).max() <= 4
        flipped = TrainTransform(
            (hs, ws), scale=(s, s), hflip=True, jitter=0, rng=np.random.default_rng(0)
        )
        outs = [denormalize(flipped(img, mask)[0]).astype(int) for _ in range(8)]
        assert any(np.abs(o - ref[:, ::-1]).mean() < 1.0 for o in outs)
        assert all(min(np.abs(o - ref).mean(), np.abs(o - ref[:, ::-1]).mean()) < 1.0 for o in outs)


def test_small_images_are_padded_with_zero_and_ignore() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    mask = np.arange(120, dtype=np.uint8).reshape(10, 12)  # every pixel distinct
    tf = TrainTransform(
        (32, 40), scale=(1.0, 1.0), ignore_index=255, jitter=0, rng=np.random.default_rng(3)
    )
    flips = set()
    for _ in range(12):
        x, y = tf(img, mask)
        valid = (y != 255).numpy()
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        assert valid.sum() == 120 and len(rows) == 10 and len(cols) == 12
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        got_mask, got_img = y.numpy()[window], denormalize(x)[window]
        flipped = bool(got_mask[0, 0] != 0)
        flips.add(flipped)
        ref = slice(None, None, -1 if flipped else 1)
        np.testing.assert_array_equal(got_mask, mask[:, ref])
        np.testing.assert_array_equal(got_img, img[:, ref])
        pad = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
        torch.testing.assert_close(x[:, ~valid], pad[:, None].expand(3, int((~valid).sum())))
    assert flips == {False, True}


def test_jitter_changes_only_the_image_and_inputs_are_untouched() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (48, 64), dtype=np.uint8)
    before = img.copy(), mask.copy()
    plain = TrainTransform((32, 32), jitter=0.0, rng=np.random.default_rng(7))(img, mask)
    jittered = TrainTransform((32, 32), jitter=0.4, rng=np.random.default_rng(7))(img, mask)
    torch.testing.assert_close(plain[1], jittered[1])
    assert not torch.allclose(plain[0], jittered[0])
    assert torch.isfinite(jittered[0]).all()
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert (jittered[0] >= lo[:, None, None] - 1e-5).all() and (
        jittered[0] <= hi[:, None, None] + 1e-5
    ).all()
    np.testing.assert_array_equal(img, before[0])
    np.testing.assert_array_equal(mask, before[1])


def test_same_seed_same_output_different_seed_different() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (48, 64), dtype=np.uint8)

    def run(seed):
        return TrainTransform((24, 24), rng=np.random.default_rng(seed))(img, mask)

    a, b, c = run(1), run(1), run(2)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0], c[0])


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, tf, n=6):
        self.tf, self.n = tf, n
        self.img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        self.mask = np.zeros((64, 64), np.uint8)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.tf(self.img, self.mask)[0]


@pytest.mark.parametrize("explicit_rng", [False, True])
def test_workers_do_not_repeat_augmentations(explicit_rng: bool) -> None:
    tf = TrainTransform((16, 16), rng=np.random.default_rng(0) if explicit_rng else None)
    loader = torch.utils.data.DataLoader(_Repeat(tf), batch_size=1, num_workers=2)
    outs = [x[0] for x in loader]
    distinct = {tuple(o.flatten()[:64].tolist()) for o in outs}
    assert len(distinct) == len(outs)


def test_eval_transform_shapes_and_values() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (36, 48), dtype=np.uint8)
    x, y = EvalTransform((24, 32))(img, mask)
    assert x.shape == (3, 24, 32) and x.dtype == torch.float32
    assert y.shape == (36, 48) and y.dtype == torch.int64  # labels stay at full resolution
    np.testing.assert_array_equal(y.numpy(), mask)
    x, _ = EvalTransform(None)(img, mask)
    np.testing.assert_array_equal(denormalize(x), img)


def test_normalize() -> None:
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    out = normalize(img, (10.0, 10.0, 10.0), (1.0, 2.0, 4.0))
    assert out.dtype == np.float32 and out.shape == (3, 2, 3)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 5.0, 5.0])
    full = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    ref = ((full - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(normalize(full), ref, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"crop_hw": (0, 5)}, "crop_hw"),
        ({"crop_hw": (8, 8), "scale": (2.0, 1.0)}, "scale"),
        ({"crop_hw": (8, 8), "jitter": 1.5}, "jitter"),
        ({"crop_hw": (8, 8), "ignore_index": 300}, "ignore_index"),
    ],
)
def test_bad_parameters(kwargs, text) -> None:
    with pytest.raises(EdgesegError, match=text):
        TrainTransform(**kwargs)


def test_photometric_changes_vary_the_image_only_and_each_one_happens(monkeypatch) -> None:
    from edgeseg.data import transforms

    rng = np.random.default_rng(5)
    img = rng.integers(40, 216, (64, 96, 3), dtype=np.uint8)
    mask = rng.integers(0, 11, (64, 96), dtype=np.uint8)

    def run(photometric: bool, seed: int = 1):
        t = TrainTransform((64, 96), scale=(1, 1), hflip=False, jitter=0.0, photometric=photometric)
        t._rng, t._rng_pid = np.random.default_rng(seed), None
        return t(img, mask)

    plain, plain_mask = run(False)
    # every change forced on: gamma, cast, blur and noise each leave their trace
    monkeypatch.setattr(
        transforms, "PHOTOMETRIC", {k: (1.0, r) for k, (_, r) in transforms.PHOTOMETRIC.items()}
    )
    varied, varied_mask = run(True)
    assert torch.equal(plain_mask, varied_mask)  # geometry and labels untouched
    rgb = denormalize(varied).astype(np.float32)
    base = denormalize(plain).astype(np.float32)
    assert abs(float(rgb.mean() - base.mean())) > 1  # gamma / cast moved the levels
    means = [float(rgb[..., c].mean() / base[..., c].mean()) for c in range(3)]
    assert max(means) - min(means) > 0.01  # the channels moved differently: a colour cast
    residual = rgb - cv2.GaussianBlur(rgb, (0, 0), 2.0)
    assert residual.std() > 1  # sensor noise on top of the blur
    assert not torch.equal(varied, run(True, seed=2)[0])  # drawn per sample
    # and with every probability at zero nothing changes
    monkeypatch.setattr(
        transforms, "PHOTOMETRIC", {k: (0.0, r) for k, (_, r) in transforms.PHOTOMETRIC.items()}
    )
    assert torch.allclose(run(True)[0], plain, atol=1e-5)


def test_stored_teacher_logits_follow_the_crop_of_the_pixels() -> None:
    """Soft targets stored over the whole image are scaled, cropped and flipped with the pixels:
    logits that are the source coordinates come out as the coordinates the crop's pixels show,
    NaN over the padding, and the random draws are those of the same sample without them."""
    h0, w0, gh, gw = 40, 60, 10, 15
    yy, xx = np.mgrid[0:h0, 0:w0]
    img = np.dstack([xx, yy, np.zeros_like(xx)]).astype(np.uint8)  # R = column, G = row
    mask = np.zeros((h0, w0), np.uint8)
    cy, cx = (np.arange(gh) + 0.5) * h0 / gh - 0.5, (np.arange(gw) + 0.5) * w0 / gw - 0.5
    soft = np.dstack(np.broadcast_arrays(cx[None, :], cy[:, None])).astype(np.float16)
    mean, std = (np.asarray(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    cells = lambda a: a.reshape(12, 2, 20, 2).mean((1, 3))  # noqa: E731  2x2 crop pixels a cell
    padded = set()
    for seed in range(16):

        def make(seed=seed):
            return TrainTransform(
                (24, 40),
                scale=(0.3, 1.2),
                jitter=0,
                ignore_index=IGNORE,
                rng=np.random.default_rng(seed),
            )

        x, y, s = make()(img, mask, soft=soft)
        x0, y0 = make()(img, mask)
        assert torch.equal(x, x0) and torch.equal(y, y0)
        assert s.shape == (2, 12, 20) and s.dtype == torch.float32
        pad = cells((y == IGNORE).numpy().astype(float))
        padded |= {"rows"} if (pad.min(1) == 1).any() else set()
        padded |= {"columns"} if (pad.min(0) == 1).any() else set()
        nan = torch.isnan(s).all(0).numpy()
        assert nan[pad == 1].all() and not nan[pad == 0].any()
        rgb = x.numpy() * std + mean
        want = np.stack([cells(rgb[0]), cells(rgb[1])])
        # where both lie on the linear part of the ramps (between the outermost cell centres)
        inner = (pad == 0) & (want[0] > cx[0]) & (want[0] < cx[-1])
        inner &= (want[1] > cy[0]) & (want[1] < cy[-1])
        assert inner.sum() >= 4
        np.testing.assert_allclose(s.numpy()[:, inner], want[:, inner], atol=0.6)
    assert padded == {"rows", "columns"}
