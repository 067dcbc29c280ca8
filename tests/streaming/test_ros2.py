"""sensor_msgs/Image conversion, checked on message-shaped objects (ROS is not installed here)."""

from types import SimpleNamespace

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.streaming.ros2 import array_to_image_fields, fill_image_msg, image_msg_to_bgr


def msg_of(img, encoding, pad=0):
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else img.shape[2]
    rows = np.zeros((h, w * ch + pad), np.uint8)
    rows[:, : w * ch] = img.reshape(h, -1)
    return SimpleNamespace(
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=w * ch + pad,
        data=rows.tobytes(),
        header="hdr",
    )


@pytest.fixture
def bgr():
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_round_trip_to_bgr(bgr, pad):
    np.testing.assert_array_equal(image_msg_to_bgr(msg_of(bgr, "bgr8", pad)), bgr)
    np.testing.assert_array_equal(image_msg_to_bgr(msg_of(bgr[..., ::-1], "rgb8", pad)), bgr)
    bgra = np.concatenate([bgr, np.full((5, 7, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_msg_to_bgr(msg_of(bgra, "bgra8", pad)), bgr)
    rgba = np.concatenate([bgr[..., ::-1], np.full((5, 7, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_msg_to_bgr(msg_of(rgba, "rgba8", pad)), bgr)


def test_mono_becomes_grey_bgr():
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    out = image_msg_to_bgr(msg_of(grey, "mono8", pad=1))
    assert out.shape == (5, 7, 3) and (out == grey[..., None]).all()


def test_labels_and_overlay_messages():
    labels = np.random.default_rng(1).integers(0, 11, (4, 6)).astype(np.uint8)
    msg = fill_image_msg(SimpleNamespace(), labels, "mono8", header="h")
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.header) == (4, 6, 6, "mono8", "h")
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(4, 6), labels)
    vis = np.zeros((4, 6, 3), np.uint8)
    assert array_to_image_fields(vis, "bgr8")["step"] == 18
    round_trip = image_msg_to_bgr(SimpleNamespace(**array_to_image_fields(vis + 7, "bgr8")))
    assert (round_trip == 7).all()


def test_bad_messages_are_clear_errors(bgr):
    with pytest.raises(EdgesegError, match="unsupported image encoding 'yuv422'"):
        image_msg_to_bgr(msg_of(bgr, "yuv422"))
    short = msg_of(bgr, "bgr8")
    short.data = short.data[:10]
    with pytest.raises(EdgesegError, match="malformed image message"):
        image_msg_to_bgr(short)
    with pytest.raises(EdgesegError, match=r"mono8 needs a \(H, W\)"):
        array_to_image_fields(bgr, "mono8")
