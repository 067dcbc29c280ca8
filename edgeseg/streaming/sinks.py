"""Where stream results go: a window, an mp4, mask PNGs, a user callback.

A sink gets each result with its frame and, when ``needs_overlay``, the colour overlay that the
post-processing kernel blended in the same pass. A sink that raises is logged and skipped by the
pipeline; capture goes on.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeseg._io import fsync_path, remove_leftovers, temp_tag
from edgeseg.errors import EdgesegError


class SinkFailed(Exception):
    """A sink cannot go on (disk full, no encoder): the pipeline disables it at once."""


class Sink:
    """Where results go: ``write`` each, ``close`` at the end (finalise files)."""

    name = "sink"
    needs_overlay = False

    def start(self, sources: list[str]) -> None:
        """Called once before the first result, with the names of the stream's sources."""

    def write(self, result) -> None:  # result: edgeseg.streaming.pipeline.StreamResult
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def wants_stop(self) -> bool:
        return False


def source_path(template: str | os.PathLike, sid: int, several: bool) -> Path:
    """``template`` for source ``sid``: ``{source}`` becomes its number; with several sources
    and no ``{source}``, the number goes before the extension (``out.mp4`` -> ``out_1.mp4``)."""
    text = str(template)
    if "{source}" in text:
        return Path(text.replace("{source}", str(sid)))
    p = Path(text)
    return p.with_name(f"{p.stem}_{sid}{p.suffix}") if several else p


def free_name(path: Path) -> Path:
    """``path``, or the first ``NAME-k.EXT`` that does not exist: nothing is overwritten."""
    k = 0
    out = path
    while out.exists():
        k += 1
        out = path.with_name(f"{path.stem}-{k}{path.suffix}")
    return out


class _Recording:
    """One source's current mp4: the writer, its hidden temporary file and the final name."""

    def __init__(self, final: Path, fps: float, size: tuple[int, int]) -> None:
        import cv2

        self.final, self.size = final, size
        self.tmp = final.with_name(f".{final.name}.{temp_tag()}.partial{final.suffix}")
        self.frames = 0
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise SinkFailed(f"cannot write {final}: OpenCV has no mp4v encoder here")

    def finish(self) -> Path:
        """Write the index (moov atom), flush to disk, rename into place; the final path."""
        self.writer.release()
        if not self.tmp.is_file() or self.tmp.stat().st_size == 0:
            raise SinkFailed(f"{self.final} came out empty (disk full or not writable?)")
        fsync_path(self.tmp)
        final = free_name(self.final)
        os.replace(self.tmp, final)
        fsync_path(final.parent, directory=True)
        return final


class VideoSink(Sink):
    """The overlay as mp4 (``mp4v``), one file per source (``{source}`` in the path, else
    ``NAME_<n>.mp4`` with several sources).

    ``segment_s``: a new file every ``segment_s`` seconds of video (``NAME.000.mp4``,
    ``NAME.001.mp4``...), so a hard kill or a power cut loses at most the segment being
    written: an mp4 is playable only once its index is written at the end. Files are written
    under a hidden name that carries this process's id (concurrent runs never collide; a later
    run removes what a crashed one left) and renamed when complete; an existing file is never
    replaced (the next free ``NAME-k.mp4`` is taken). A frame size that changes (a camera that
    came back at another resolution) starts a new file. Free disk space is checked every second:
    below ``min_free_mb`` the recording stops with :class:`SinkFailed`.
    """

    needs_overlay = True

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float = 25.0,
        *,
        segment_s: float | None = None,
        several: bool = False,
        min_free_mb: float = 64.0,
    ) -> None:
        self.template, self.several = str(path), several
        self.fps = fps if fps and fps > 0 else 25.0
        self.segment_s, self.min_free = segment_s, min_free_mb * 2**20
        self.name = f"record {Path(self.template).name}"
        folder = source_path(self.template, 0, several).parent
        if not folder.exists():
            raise EdgesegError(f"cannot record to {self.template}: folder {folder} does not exist")
        if segment_s is not None and segment_s <= 0:
            raise EdgesegError(f"record_segment must be above 0, got {segment_s}")
        self._current: dict[int, _Recording] = {}
        self._segment: dict[int, int] = {}
        self.written: list[Path] = []
        self._checked = 0.0

    def start(self, sources: list[str]) -> None:
        self.several = self.several or len(sources) > 1

    def _final(self, sid: int) -> Path:
        path = source_path(self.template, sid, self.several)
        if self.segment_s is None and sid not in self._segment:
            self._segment[sid] = 0
            return path
        k = self._segment.get(sid, -1) + 1
        self._segment[sid] = k
        return path.with_name(f"{path.stem}.{k:03d}{path.suffix}")

    def _start(self, sid: int, size: tuple[int, int]) -> _Recording:
        final = self._final(sid)
        base = source_path(self.template, sid, self.several)
        remove_leftovers(final.parent, f".{base.stem}*.partial{base.suffix}")
        self._current[sid] = rec = _Recording(final, self.fps, size)
        return rec

    def _finish(self, sid: int) -> None:
        rec = self._current.pop(sid)
        self.written.append(rec.finish())

    def _check_disk(self, folder: Path) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        free = shutil.disk_usage(folder).free
        if free < self.min_free:
            raise SinkFailed(
                f"disk full: {free / 2**20:.0f} MB left in {folder}; recording stopped"
            )

    def write(self, result) -> None:
        sid, vis = result.source_id, result.vis
        size = (vis.shape[1], vis.shape[0])
        rec = self._current.get(sid)
        if rec is not None and (
            rec.size != size or (self.segment_s and rec.frames >= self.segment_s * self.fps)
        ):
            self._finish(sid)
            rec = None
        if rec is None:
            rec = self._start(sid, size)
        self._check_disk(rec.final.parent)
        rec.writer.write(vis)
        rec.frames += 1

    def close(self) -> None:
        errors = []
        for sid in list(self._current):
            try:
                self._finish(sid)
            except SinkFailed as e:
                errors.append(str(e))
        if errors:
            raise SinkFailed("; ".join(errors))


class MaskSink(Sink):
    """Class-index PNGs, one per frame, in a folder of their own for each run
    (``DIR/run-YYYYmmdd-HHMMSS-PID/``), so a restarted service never overwrites the previous
    run's masks: ``<source>_<index>.png`` (``<index>.png`` with one source). ``{source}`` in
    ``DIR`` gives each source its own folder. ``max_files``: keep only the newest N of a run
    (the older ones are deleted as new ones come), so days of 30 FPS cannot fill the disk.
    ``plane``: the result's array written (``labels``, or ``confidence``)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        several: bool = False,
        max_files: int | None = None,
        plane: str = "labels",
    ) -> None:
        self.template, self.several, self.plane = str(folder), several, plane
        self.run = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.max_files = max_files
        if max_files is not None and max_files < 1:
            raise EdgesegError(f"save_masks_max must be at least 1, got {max_files}")
        self._kept: deque[Path] = deque()
        self._made: set[Path] = set()  # folders created: one mkdir a folder, not one a frame
        self.name = f"save-{'masks' if plane == 'labels' else plane} {self.template}"

    def start(self, sources: list[str]) -> None:
        self.several = self.several or len(sources) > 1

    def folder(self, sid: int) -> Path:
        base = Path(self.template.replace("{source}", str(sid)))
        return base / self.run

    def write(self, result) -> None:
        import cv2

        folder = self.folder(result.source_id)
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        shared = self.several and "{source}" not in self.template
        stem = f"{result.source_id}_{result.index:06d}" if shared else f"{result.index:06d}"
        final = folder / f"{stem}.png"
        tmp = folder / f".{stem}.tmp.png"
        image = getattr(result, self.plane)
        ok = cv2.imwrite(str(tmp), image)
        if not ok and not folder.is_dir():  # removed while streaming: made again
            folder.mkdir(parents=True, exist_ok=True)
            ok = cv2.imwrite(str(tmp), image)
        if not ok:
            raise SinkFailed(f"could not write {final}; check the folder is writable and not full")
        os.replace(tmp, final)
        self._kept.append(final)
        while self.max_files is not None and len(self._kept) > self.max_files:
            self._kept.popleft().unlink(missing_ok=True)


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


class Mosaic:
    """Several sources in one picture: a grid of tiles, each source's newest overlay letterboxed
    into its tile with its own HUD (name, FPS, state); a source with no frame yet says so."""

    def __init__(self, names: list[str], tile_hw: tuple[int, int] = (360, 640)) -> None:
        self.names, self.tile_hw = names, tile_hw
        self.cols = math.ceil(math.sqrt(len(names)))
        self.rows = math.ceil(len(names) / self.cols)
        th, tw = tile_hw
        self.canvas = np.zeros((self.rows * th, self.cols * tw, 3), np.uint8)
        for sid, name in enumerate(names):
            self._text(self._tile(sid), [name, "waiting for frames"])

    def _tile(self, sid: int) -> np.ndarray:
        th, tw = self.tile_hw
        r, c = divmod(sid, self.cols)
        return self.canvas[r * th : (r + 1) * th, c * tw : (c + 1) * tw]

    @staticmethod
    def _text(tile: np.ndarray, lines: list[str]) -> None:
        import cv2

        for k, line in enumerate(lines):
            org = (8, 22 + 20 * k)
            cv2.putText(tile, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(
                tile, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
            )

    def update(self, sid: int, image: np.ndarray, lines: list[str]) -> None:
        """Draw ``image`` (BGR, any size) into source ``sid``'s tile, keeping its aspect."""
        import cv2

        tile = self._tile(sid)
        th, tw = self.tile_hw
        scale = min(th / image.shape[0], tw / image.shape[1])
        h, w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
        y, x = (th - h) // 2, (tw - w) // 2
        tile[...] = 0
        tile[y : y + h, x : x + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        self._text(tile, lines)


class DisplaySink(Sink):
    """A window with the overlay, an FPS/latency HUD and a class legend; q or Esc stops it.
    Several sources share one window: a :class:`Mosaic`, redrawn at most ``max_fps`` times a
    second."""

    needs_overlay = True
    name = "display"

    def __init__(
        self,
        classes: list[str],
        palette: list[list[int]],
        stats=None,
        title: str = "edgeseg",
        max_fps: float = 30.0,
    ) -> None:
        why = display_available()
        if why:
            raise EdgesegError(f"--display refused: {why}")
        self.title, self.stats, self.max_fps = title, stats, max_fps
        self.legend = _legend(classes, palette)
        self.mosaic: Mosaic | None = None
        self._stop = False
        self._shown = 0.0

    def start(self, sources: list[str]) -> None:
        self.mosaic = Mosaic(sources) if len(sources) > 1 else None

    def _hud(self, result) -> str:
        return self.stats.status_line() if self.stats is not None else f"frame {result.index}"

    def _with_legend(self, vis: np.ndarray) -> np.ndarray:
        lh, lw = self.legend.shape[:2]
        if vis.shape[0] >= lh and vis.shape[1] >= lw:
            vis[:lh, -lw:] = self.legend
        return vis

    def write(self, result) -> None:
        import cv2

        if self.mosaic is None:
            vis = self._with_legend(result.vis.copy())
            Mosaic._text(vis, [self._hud(result)])
        else:
            sid = result.source_id
            line = self.stats.source_line(sid) if self.stats is not None else f"{result.index}"
            self.mosaic.update(sid, result.vis, [result.source, line])
            now = time.perf_counter()
            if now - self._shown < 1.0 / self.max_fps:
                return
            self._shown = now
            vis = self._with_legend(self.mosaic.canvas.copy())
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
