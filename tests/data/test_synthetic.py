"""Procedural scenes: determinism, label range, clips and mp4 writing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.data import synthetic
from edgeseg.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    render_clip,
    render_scene,
    write_clip,
)
from edgeseg.errors import EdgesegError


def test_same_seed_same_scene_different_seed_different() -> None:
    a_img, a_mask = render_scene(3)
    b_img, b_mask = render_scene(3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    render_scene(3, (300, 700))  # rendering another size first must not change anything
    np.testing.assert_array_equal(render_scene(3)[0], a_img)
    c_img, c_mask = render_scene(4)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_mask, c_mask)


def test_shapes_dtypes_and_label_range() -> None:
    assert len(SYNTHETIC_PALETTE) == len(SYNTHETIC_CLASSES) == 7
    seen: set[int] = set()
    for seed in range(6):
        img, mask = render_scene(seed)
        assert img.shape == (256, 512, 3) and img.dtype == np.uint8
        assert mask.shape == (256, 512) and mask.dtype == np.uint8
        assert mask.max() < len(SYNTHETIC_CLASSES)
        assert SYNTHETIC_CLASSES.index("road") in mask and SYNTHETIC_CLASSES.index("sky") in mask
        seen |= set(np.unique(mask).tolist())
    assert seen == set(range(len(SYNTHETIC_CLASSES)))
    img, mask = render_scene(0, (64, 96))
    assert img.shape == (64, 96, 3) and mask.shape == (64, 96)


def test_regions_look_like_their_class() -> None:
    """The mask is exact: road pixels look alike, and unlike sky pixels, in the same scene."""
    img, mask = render_scene(11)
    road = img[mask == SYNTHETIC_CLASSES.index("road")].astype(float).mean(0)
    sky = img[mask == SYNTHETIC_CLASSES.index("sky")].astype(float).mean(0)
    assert np.abs(road - sky).max() > 15


def test_clip_is_smooth_and_deterministic() -> None:
    frames = list(render_clip(6, (64, 128), seed=2))
    assert len(frames) == 6
    again = list(render_clip(6, (64, 128), seed=2))
    for (a, am), (b, bm) in zip(frames, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(am, bm)
    for (_, am), (_, bm) in zip(frames, frames[1:]):
        assert not np.array_equal(am, bm)  # things move...
        assert (am != bm).mean() < 0.2  # ...but only a little per frame


def test_write_clip_writes_a_readable_mp4(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "demo.mp4"
    assert write_clip(path, 7, (64, 96), fps=10, seed=1) == path
    cap = cv2.VideoCapture(str(path))
    try:
        assert cap.isOpened()
        assert (
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
            and int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == 64
        )
        count = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (64, 96, 3)
            count += 1
    finally:
        cap.release()
    assert count == 7
    assert [p.name for p in path.parent.iterdir()] == ["demo.mp4"]  # no temp file left behind


def test_write_clip_never_leaves_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(num_frames, size_hw, seed):
        yield np.zeros((*size_hw, 3), np.uint8), np.zeros(size_hw, np.uint8)
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(synthetic, "render_clip", broken)
    with pytest.raises(RuntimeError):
        write_clip(tmp_path / "demo.mp4", 5, (32, 32))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EdgesegError, match="num_frames"):
        write_clip(tmp_path / "demo.mp4", 0, (32, 32))
