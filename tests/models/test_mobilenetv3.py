"""MobileNetV3 encoder: torchvision state-dict compatibility, structural taps, dilation, smp interface."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision

from segkit.models import MobileNetV3Encoder


@pytest.mark.parametrize(
    ("variant", "tv_builder"),
    [("large", torchvision.models.mobilenet_v3_large), ("small", torchvision.models.mobilenet_v3_small)],
)
def test_state_dict_equals_torchvision_features(variant, tv_builder):
    enc = MobileNetV3Encoder(variant)
    tv = tv_builder()
    expected = {k: v.shape for k, v in tv.features.state_dict().items()}
    assert {k.removeprefix("features."): v.shape for k, v in enc.state_dict().items()} == expected
    # a full torchvision classification state dict (with classifier) loads strictly
    assert not enc.load_state_dict(tv.state_dict()).missing_keys


@pytest.mark.parametrize("output_stride", [32, 16])
def test_same_features_as_torchvision(output_stride):
    tv = torchvision.models.mobilenet_v3_large(dilated=output_stride == 16).eval()
    enc = MobileNetV3Encoder("large", output_stride=output_stride).eval()
    enc.load_state_dict(tv.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(enc(x)[-1], tv.features(x))


@pytest.mark.parametrize(
    ("variant", "taps", "channels", "indices"),
    [
        ("large", "end", [3, 16, 24, 40, 112, 960], [1, 3, 6, 12, 16]),
        ("large", "start", [3, 16, 24, 40, 80, 960], [0, 2, 4, 7, 16]),
        ("small", "end", [3, 16, 16, 24, 48, 576], [0, 1, 3, 8, 12]),
    ],
)
def test_taps_found_from_strides(variant, taps, channels, indices):
    enc = MobileNetV3Encoder(variant, taps=taps)
    assert enc.out_channels == channels
    assert enc.tap_indices == indices
    feats = enc(torch.zeros(2, 3, 64, 128))
    assert [f.shape[1] for f in feats] == channels
    assert [f.shape[-2:] for f in feats] == [(64 // s, 128 // s) for s in (1, 2, 4, 8, 16, 32)]


@pytest.mark.parametrize(("output_stride", "last_strides"), [(16, (16, 16)), (8, (8, 8))])
def test_dilation_keeps_resolution(output_stride, last_strides):
    enc = MobileNetV3Encoder("large", output_stride=output_stride)
    assert enc.output_stride == output_stride
    feats = enc(torch.zeros(1, 3, 64, 128))
    assert [f.shape[-1] for f in feats[-2:]] == [128 // s for s in last_strides]
    # dilated blocks: the first block past the output stride uses dilation, no stride
    dw = [m for m in enc.features.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert max(m.dilation[0] for m in dw) == 32 // output_stride
    assert all(m.stride == (1, 1) for m in dw if m.dilation[0] > 1)


def test_reduced_tail_and_width_mult():
    full = MobileNetV3Encoder("large")
    rf2 = MobileNetV3Encoder("large", reduced_tail=True)
    assert rf2.out_channels[-1] == full.out_channels[-1] // 2 == 480
    assert rf2.out_channels[:5] == full.out_channels[:5]
    narrow = MobileNetV3Encoder("large", width_mult=0.5)
    assert narrow.out_channels == [3, 8, 16, 24, 56, 480]
    small_rf2 = MobileNetV3Encoder("small", reduced_tail=True)
    assert small_rf2.out_channels[-1] == 288


def test_depth_truncates_layers():
    enc = MobileNetV3Encoder("large", depth=3)
    assert enc.out_channels == [3, 16, 24, 40]
    assert len(enc.features) == 7  # nothing past the last tap: no unused parameters for DDP
    assert len(enc(torch.zeros(1, 3, 32, 32))) == 4


def test_smp_decoders_accept_the_encoder():
    model = smp.Unet("mobilenetv3_large", encoder_weights=None, classes=3).eval()
    assert isinstance(model.encoder, MobileNetV3Encoder)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    deeplab = smp.DeepLabV3Plus(
        "mobilenetv3_small", encoder_weights=None, classes=2, encoder_output_stride=16
    )
    assert deeplab.encoder.output_stride == 16


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="output_stride"):
        MobileNetV3Encoder("large", output_stride=4)
    with pytest.raises(ValueError, match="variant"):
        MobileNetV3Encoder("medium")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="re-dilating"):
        MobileNetV3Encoder("large", output_stride=32).make_dilated(16)
