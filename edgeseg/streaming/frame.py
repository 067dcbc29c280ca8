"""What flows through a stream: the :class:`Frame` every :class:`Source` hands out, and the
:class:`StreamResult` that comes out for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.runtime.result import SegResult


@dataclass
class Frame:
    """One captured frame: BGR uint8 pixels, its index in the source, and when it was captured."""

    image: np.ndarray
    index: int
    t_capture: float  # time.perf_counter() when the frame was read
    decode_ms: float = 0.0
    source: str = ""
    tensor: np.ndarray | None = None  # the preprocessed input, when the pipeline makes it early
    pre_ms: float = 0.0
    infer_ms: float = 0.0
    epoch: int = 0  # which opening of the source (a reconnect starts a new one)


class FrameError(Exception):
    """A frame could not be read (a corrupt image in a folder): counted; the source goes on."""


class Source:
    """Base class: ``read()`` returns the next Frame, or None at the end (or when a feed drops)."""

    live = False  # live sources are realtime by default and may be reopened
    name = "source"
    via = ""  # how a network stream is read and decoded (e.g. "gstreamer avdec_h264"), for logs

    @property
    def spec(self) -> str:
        """What :func:`open_source` opens this source again from."""
        return self.name

    def read(self) -> Frame | None:
        raise NotImplementedError

    def reopen(self) -> bool:
        """Try to reconnect a live source; True when frames flow again."""
        return False

    def close(self) -> None:
        pass

    def __iter__(self):
        while (f := self.read()) is not None:
            yield f

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class StreamResult(SegResult):
    """A SegResult with where it came from: source index and name, frame index, capture time."""

    index: int = 0
    source_id: int = 0
    source: str = ""
    t_capture: float = 0.0

    @classmethod
    def of(cls, r: SegResult, sid: int, frame: Frame) -> StreamResult:
        """``r`` stamped with the frame it came from."""
        return cls(
            labels=r.labels,
            spec=r.spec,
            frame=frame.image,
            timings_ms=r.timings_ms,
            vis=r.vis,
            vis_alpha=r.vis_alpha,
            confidence=r.confidence,
            index=frame.index,
            source_id=sid,
            source=frame.source,
            t_capture=frame.t_capture,
        )
