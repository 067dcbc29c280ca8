"""Shared fixtures: the shared data folder, and one tiny trained model reused by many tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CAMVID = SHARED_DATA / "camvid"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (see ../shared/data/README.md)")
    return CAMVID


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A mbv3_unet_small trained for one short epoch on synthetic scenes at 64x128."""
    from edgeseg.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_run")
    train(
        TrainConfig(
            data="synthetic:16",
            model="mbv3_unet_small",
            out=str(out),
            epochs=2,
            batch_size=4,
            input_size=(64, 128),
            crop=(64, 128),
            workers=0,
            quiet=True,
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory) -> Path:
    from edgeseg.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("tiny_onnx")
    export_onnx(tiny_run / "best.pt", out)
    return out / "model.onnx"


@pytest.fixture(autouse=True)
def every_frame_is_accounted_for(monkeypatch):
    """Every stream run of the suite: frames_in == out + dropped + failed, per source and in all."""
    from edgeseg.streaming.pipeline import StreamPipeline

    join = StreamPipeline.join

    def checked(self, *args, **kwargs):
        report = join(self, *args, **kwargs)
        for counts in [report, *report["sources"]]:
            got = counts["frames_out"] + counts["frames_dropped"] + counts["frames_failed"]
            assert counts["frames_in"] == got, counts
        return report

    monkeypatch.setattr(StreamPipeline, "join", checked)


@pytest.fixture(scope="session")
def dashcam() -> Path:
    clip = SHARED_DATA / "video" / "dashcam_960x540.mp4"
    if not clip.is_file():
        pytest.skip(f"the dash-cam clip is not at {clip} (see ../shared/data/README.md)")
    return clip


@pytest.fixture(scope="session")
def rtsp_ready() -> None:
    """Skips, with the reason, where a real RTSP server cannot run (see edgeseg.testing)."""
    from edgeseg.testing import rtsp_server_missing

    reason = rtsp_server_missing()
    if reason:
        pytest.skip(f"no RTSP server here: {reason}")


@pytest.fixture
def rtsp_server(rtsp_ready):
    """A factory of real RTSP servers serving the dash-cam clip (the shared one where present,
    else the package's 5 s of it); all are killed at the end."""
    from edgeseg.demo import CLIP
    from edgeseg.testing import RtspServer

    shared = SHARED_DATA / "video" / "dashcam_960x540.mp4"
    clip = shared if shared.is_file() else CLIP
    servers = []

    def make(**kwargs) -> RtspServer:
        server = RtspServer(clip, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.close()
