"""sensor_msgs/Image <-> NumPy, without importing ROS (so it is testable anywhere).

Works on any object with the fields of ``sensor_msgs/msg/Image`` (``height, width, encoding,
is_bigendian, step, data``); ``examples/ros2_segmenter.py`` uses it with the real message type.
"""

from __future__ import annotations

import numpy as np

from edgeseg.errors import EdgesegError

_CHANNELS = {"bgr8": 3, "rgb8": 3, "bgra8": 4, "rgba8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3}


def image_msg_to_bgr(msg) -> np.ndarray:
    """A ROS image (bgr8, rgb8, bgra8, rgba8, mono8) -> BGR uint8 (H, W, 3), honouring padding."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise EdgesegError(
            f"unsupported image encoding '{enc}'; publish one of: {', '.join(_CHANNELS)}"
        )
    ch, h, w, step = _CHANNELS[enc], int(msg.height), int(msg.width), int(msg.step)
    buf = np.frombuffer(
        bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview)) else msg.data,
        np.uint8,
    )
    if step < w * ch or buf.size < step * h:
        raise EdgesegError(
            f"malformed image message: {w}x{h} {enc} needs step >= {w * ch} and {step * h} bytes, "
            f"got step {step} and {buf.size} bytes"
        )
    img = buf[: step * h].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if enc in ("mono8", "8UC1"):
        return np.repeat(img, 3, axis=2)
    if enc in ("rgb8", "rgba8"):
        img = img[..., 2::-1]
    elif ch == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img)


def array_to_image_fields(img: np.ndarray, encoding: str) -> dict:
    """Field values of a sensor_msgs/Image holding ``img`` (mono8: (H, W); bgr8: (H, W, 3))."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    expect = 2 if encoding == "mono8" else 3
    if img.ndim != expect or (encoding == "bgr8" and img.shape[2] != 3):
        raise EdgesegError(
            f"{encoding} needs a {'(H, W)' if expect == 2 else '(H, W, 3)'} uint8 array, got "
            f"{img.shape}"
        )
    h, w = img.shape[:2]
    return {
        "height": h,
        "width": w,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": w * (1 if encoding == "mono8" else 3),
        "data": img.tobytes(),
    }


def fill_image_msg(msg, img: np.ndarray, encoding: str, header=None):
    """Fill a sensor_msgs/Image (or any object with its fields) from an array; returns ``msg``."""
    for k, v in array_to_image_fields(img, encoding).items():
        setattr(msg, k, v)
    if header is not None:
        msg.header = header
    return msg
