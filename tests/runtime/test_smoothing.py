"""Temporal smoothing in the stream (``--smooth``): off is exactly off, on steadies the labels,
and the average restarts where it must (a new frame size, a reconnected feed)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.runtime import Segmenter
from edgeseg.runtime.smoothing import SmoothState
from edgeseg.streaming.pipeline import StreamPipeline
from edgeseg.streaming.sinks import CallbackSink
from edgeseg.streaming.sources import Frame, Source, open_source


@pytest.fixture(scope="module")
def seg(tiny_onnx):
    return Segmenter(tiny_onnx)


def _labels(seg, sources, **kw) -> list[np.ndarray]:
    got: list[tuple[int, np.ndarray]] = []
    sink = CallbackSink(lambda r: got.append((r.index, r.labels.copy())))
    StreamPipeline(seg, sources, sinks=[sink], mode="every-frame", **kw).run()
    return [labels for _, labels in sorted(got, key=lambda t: t[0])]


def _flicker(labels: list[np.ndarray]) -> float:
    """Mean fraction of pixels whose label changes between consecutive frames."""
    return float(np.mean([np.mean(a != b) for a, b in zip(labels, labels[1:])]))


class Noisy(Source):
    """A still scene under sensor noise (the flicker smoothing is for); ``sizes`` switches the
    frame size at given frames."""

    live = False

    def __init__(self, n: int = 16, sizes: dict[int, tuple[int, int]] | None = None) -> None:
        from edgeseg.data.synthetic import render_scene

        self.base = render_scene(3, (96, 160))[0][..., ::-1].astype(np.float32)
        self.n, self.sizes, self.index, self.name = n, sizes or {}, 0, "noisy"
        self.rng = np.random.default_rng(0)
        self.hw = (96, 160)

    def read(self) -> Frame | None:
        if self.index >= self.n:
            return None
        self.hw = self.sizes.get(self.index, self.hw)
        noisy = self.base + self.rng.normal(0, 30, self.base.shape)
        img = np.ascontiguousarray(
            np.clip(noisy, 0, 255).astype(np.uint8)[: self.hw[0], : self.hw[1]]
        )
        self.index += 1
        return Frame(img, self.index - 1, 0.0)


def test_smooth_zero_gives_exactly_the_labels_of_each_frame(seg, tmp_path):
    from edgeseg.data.synthetic import write_clip

    clip = write_clip(tmp_path / "c.mp4", 12, (96, 160), fps=25)
    plain = _labels(seg, [str(clip)])
    off = _labels(seg, [str(clip)], smooth=0.0)
    with open_source(str(clip)) as src:
        alone = [seg(f.image).labels for f in src]
    assert len(plain) == len(off) == len(alone) == 12
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(plain, off, alone))


def test_smoothing_steadies_flickering_labels(seg):
    plain = _flicker(_labels(seg, [Noisy()]))
    smoothed = _flicker(_labels(seg, [Noisy()], smooth=0.7))
    assert plain > 0.01, "the noise must make the plain labels flicker for this test to mean much"
    assert smoothed < 0.7 * plain, (plain, smoothed)


def test_the_average_restarts_for_a_new_frame_size(seg):
    src = Noisy(n=10, sizes={4: (80, 128), 7: (96, 160)})
    pipe = StreamPipeline(seg, [src], mode="every-frame", smooth=0.5, smooth_cut=1.0)
    pipe.run()
    assert pipe.shared.smoothing[0].restarts == 3  # the first frame and two size changes


def test_a_reconnected_feed_restarts_the_average():
    state = SmoothState(0.5, cut=1.0)
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    for key in [((4, 5, 3), 0), ((4, 5, 3), 0), ((4, 5, 3), 1), ((4, 5, 3), 1)]:
        state.follow(key)
        state.update(x)
    assert state.restarts == 2


def test_smoothing_refuses_bad_settings_and_models_without_scores(seg, tiny_run, tmp_path):
    with pytest.raises(EdgesegError, match=r"smooth must be in \[0, 1\)"):
        StreamPipeline(seg, [Noisy()], smooth=1.0)
    with pytest.raises(EdgesegError, match="smooth_cut"):
        StreamPipeline(seg, [Noisy()], smooth=0.5, smooth_cut=-0.1)
    from edgeseg.export.onnx import export_onnx

    export_onnx(tiny_run / "best.pt", tmp_path, argmax=True)
    argmax_models = sorted(tmp_path.glob("*argmax*.onnx"))
    assert argmax_models
    with pytest.raises(EdgesegError, match="outputs labels"):
        StreamPipeline(Segmenter(argmax_models[0]), [Noisy()], smooth=0.5)
