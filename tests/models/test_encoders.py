"""Encoders: the minimalistic MobileNetV3, output stride 16, and timm feature extractors (random
initialisation and a weights-file round trip; no download is possible on these machines)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgeseg.errors import EdgesegError
from edgeseg.models import create_model
from edgeseg.models.encoders import build_encoder, load_pretrained
from edgeseg.models.mobilenetv3 import MobileNetV3Encoder


def test_the_minimal_encoder_has_no_hard_swish_no_se_and_3x3_depthwise_only():
    enc = MobileNetV3Encoder("small", minimal=True)
    kinds = {type(m) for m in enc.modules()}
    assert nn.Hardswish not in kinds and nn.Hardsigmoid not in kinds
    depthwise = [m for m in enc.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.kernel_size == (3, 3) for m in depthwise)
    assert enc.out_channels == MobileNetV3Encoder("small").out_channels


def test_output_stride_16_dilates_the_last_stage():
    x = torch.randn(1, 3, 64, 96)
    enc = MobileNetV3Encoder("small", output_stride=16).eval()
    shapes = [f.shape[-2:] for f in enc(x)]
    assert shapes[-1] == shapes[-2] == (4, 6) and enc.strides == [2, 4, 8, 16, 16]


def test_an_unknown_encoder_is_named():
    with pytest.raises(EdgesegError, match="unknown encoder 'vgg'"):
        build_encoder("vgg")


def test_timm_encoder_builds_and_loads_a_weights_file(tmp_path):
    timm = pytest.importorskip("timm")
    name = "mobilenetv3_small_100"
    model = create_model("mbv3_unet_small", 5, encoder=f"timm:{name}").eval()
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 5, 64, 96)
    torch.manual_seed(7)
    source = timm.create_model(name, pretrained=False)  # stands in for ImageNet weights
    torch.save(source.state_dict(), tmp_path / "w.pth")
    note = load_pretrained(model, str(tmp_path / "w.pth"))
    assert note.startswith("loaded ")
    loaded = model.encoder.model.state_dict()
    same = [k for k in loaded if k in source.state_dict()]
    assert same and all(torch.equal(loaded[k], source.state_dict()[k]) for k in same)


def test_timm_encoders_that_do_not_fit_are_refused():
    pytest.importorskip("timm")
    with pytest.raises(EdgesegError, match="strides"):
        build_encoder("timm:convnext_atto")


def test_pretrained_weights_need_a_timm_encoder(tmp_path):
    with pytest.raises(EdgesegError, match="timm encoder"):
        load_pretrained(create_model("mbv3_unet_small", 3), str(tmp_path / "w.pth"))
