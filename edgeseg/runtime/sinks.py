"""Where stream results go: a window, an mp4, mask PNGs, a user callback.

A sink gets each result with its frame and, when ``needs_overlay``, the colour overlay that the
post-processing kernel blended in the same pass. A sink that raises is logged and skipped by the
pipeline; capture goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError


class Sink:
    name = "sink"
    needs_overlay = False

    def write(self, result) -> None:  # result: edgeseg.runtime.stream.StreamResult
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def wants_stop(self) -> bool:
        return False


class VideoSink(Sink):
    """The overlay as an mp4 (``mp4v``). Written to a hidden temp file, renamed into place on close,
    so an interrupted run never leaves a truncated file under the final name."""

    needs_overlay = True

    def __init__(self, path: str | os.PathLike, fps: float = 25.0) -> None:
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 25.0
        self.name = f"record {self.path.name}"
        if not self.path.parent.exists():
            raise EdgesegError(
                f"cannot record to {self.path}: folder {self.path.parent} does not exist"
            )
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        self.writer = None
        self.size: tuple[int, int] | None = None

    def write(self, result) -> None:
        import cv2

        vis = result.vis
        h, w = vis.shape[:2]
        if self.writer is None:
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h)
            )
            if not self.writer.isOpened():
                raise EdgesegError(f"cannot write {self.path}: OpenCV has no mp4v encoder here")
            self.size = (w, h)
        if (w, h) != self.size:  # several sources of different sizes into one file
            vis = cv2.resize(vis, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(vis)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()  # writes the moov atom: the file is playable from here
            self.writer = None
            os.replace(self.tmp, self.path)


class MaskSink(Sink):
    """Class-index PNGs, one per frame: ``DIR/<source>_<index>.png`` (or ``DIR/<index>.png``)."""

    def __init__(self, folder: str | os.PathLike, multi_source: bool = False) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.multi = multi_source
        self.name = f"save-masks {self.dir}"

    def write(self, result) -> None:
        import cv2

        stem = f"{result.source_id}_{result.index:06d}" if self.multi else f"{result.index:06d}"
        final = self.dir / f"{stem}.png"
        tmp = self.dir / f".{stem}.tmp.png"
        if not cv2.imwrite(str(tmp), result.labels):
            raise EdgesegError(f"could not write {final}; check the folder is writable")
        os.replace(tmp, final)


class CallbackSink(Sink):
    """Calls ``fn(result)`` for every result (embedding: publish to ROS, a socket, a queue...)."""

    def __init__(self, fn: Callable, overlay: bool = False) -> None:
        self.fn = fn
        self.needs_overlay = overlay
        self.name = f"callback {getattr(fn, '__name__', 'fn')}"

    def write(self, result) -> None:
        self.fn(result)


def display_available() -> str | None:
    """None when a window can be opened, else why not."""
    import cv2

    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return (
            "no display (DISPLAY is not set): run on a desktop session, or use --record out.mp4 "
            "instead"
        )
    try:
        cv2.namedWindow("edgeseg-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("edgeseg-probe")
    except cv2.error:
        return (
            "this OpenCV has no GUI (opencv-python-headless): pip install opencv-python for "
            "--display, "
            "or use --record out.mp4 instead"
        )
    return None


class DisplaySink(Sink):
    """A window with the overlay, an FPS/latency HUD and a class legend; q or Esc stops it."""

    needs_overlay = True
    name = "display"

    def __init__(
        self, classes: list[str], palette: list[list[int]], stats=None, title: str = "edgeseg"
    ) -> None:
        why = display_available()
        if why:
            raise EdgesegError(f"--display refused: {why}")
        self.title, self.stats = title, stats
        self.legend = _legend(classes, palette)
        self._stop = False
        self._last = time.perf_counter()

    def write(self, result) -> None:
        import cv2

        vis = result.vis.copy()
        lh, lw = self.legend.shape[:2]
        if vis.shape[0] >= lh and vis.shape[1] >= lw:
            vis[:lh, -lw:] = self.legend
        hud = self.stats.status_line() if self.stats is not None else f"frame {result.index}"
        cv2.putText(vis, hud, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            vis, hud, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA
        )
        cv2.imshow(self.title, vis)
        if (cv2.waitKey(1) & 0xFF) in (ord("q"), 27):
            self._stop = True

    @property
    def wants_stop(self) -> bool:
        return self._stop

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


def _legend(classes: list[str], palette: list[list[int]]) -> np.ndarray:
    import cv2

    row = 18
    img = np.full((row * len(classes) + 6, 150, 3), 32, np.uint8)
    for i, (name, rgb) in enumerate(zip(classes, palette)):
        y = 3 + i * row
        cv2.rectangle(img, (4, y + 2), (18, y + row - 3), tuple(int(c) for c in rgb[::-1]), -1)
        cv2.putText(
            img,
            name[:16],
            (24, y + row - 5),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.42,
            (235, 235, 235),
            1,
            cv2.LINE_AA,
        )
    return img
