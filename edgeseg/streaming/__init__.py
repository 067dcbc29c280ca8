"""The streaming service above the inference core: sources, the threaded pipeline, sinks,
statistics and metrics, configured by one :class:`StreamConfig`.

``edgeseg.stream(segmenter, source)`` iterates over results; :class:`StreamPipeline` runs
sources into sinks (what ``edgeseg stream`` does). The runtime never imports this package;
loading it makes ``Segmenter.stream`` forward here.
"""

from edgeseg.runtime import segmenter as _segmenter
from edgeseg.streaming.config import StreamConfig
from edgeseg.streaming.frame import Frame, StreamResult
from edgeseg.streaming.iterate import stream
from edgeseg.streaming.pipeline import StreamPipeline
from edgeseg.streaming.sources import Source, open_source

_segmenter.STREAM_ENTRY = stream

__all__ = [
    "Frame",
    "Source",
    "StreamConfig",
    "StreamPipeline",
    "StreamResult",
    "open_source",
    "stream",
]
