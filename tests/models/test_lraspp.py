"""LR-ASPP decoder/model: structure, paper pooling and its fallback, torchvision checkpoint import."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from segkit.models import LRASPP, MobileNetV3Encoder, from_torchvision_lraspp
from segkit.models.decoders.lraspp import LRASPPDecoder, PaperAvgPool
from segkit.models.summary import count_params


def test_paper_pool_grid_and_fallback():
    pool = PaperAvgPool((49, 49), (16, 20))
    x = torch.arange(64 * 128, dtype=torch.float32).reshape(1, 1, 64, 128)
    out = pool(x)  # the paper's setting: 1024x2048 input -> 64x128 features -> 1x4 grid
    assert out.shape == (1, 1, 1, 4)
    assert torch.allclose(out[0, 0, 0, 1], x[0, 0, :49, 20:69].mean())
    small = torch.rand(1, 1, 8, 16)  # smaller than the kernel: pooled over the whole map
    assert torch.allclose(pool(small), small.mean(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize("pooling", ["global", "paper"])
def test_decoder_gates_high_features_and_resizes_to_low(pooling):
    channels = [3, 16, 24, 40, 112, 960]
    dec = LRASPPDecoder(
        channels, inter_channels=8, pooling=pooling, pool_kernel=(4, 4), pool_stride=(4, 4)
    ).eval()
    assert dec.low_channels == 40
    feats = [torch.rand(1, c, 128 // s, 128 // s) for c, s in zip(channels, [1, 2, 4, 8, 16, 16])]
    high_in = feats[-1]
    with torch.no_grad():
        low, high = dec(feats)
        conv = dec.scale[1]
        if pooling == "global":
            gate = torch.sigmoid(conv(high_in.mean(dim=(2, 3), keepdim=True)))
        else:  # 8x8 map, 4x4 windows: a 2x2 grid of gates, resized back to the map
            gate = torch.sigmoid(conv(F.avg_pool2d(high_in, 4, 4)))
            assert gate.shape[-2:] == (2, 2)
            gate = F.interpolate(gate, size=(8, 8), mode="bilinear", align_corners=False)
        expected = F.interpolate(dec.cbr(high_in) * gate, size=(16, 16), mode="bilinear", align_corners=False)
    assert low is feats[3]
    assert high.shape == (1, 8, 16, 16)
    assert torch.allclose(high, expected, atol=1e-6)


def test_decoder_rejects_bad_settings():
    with pytest.raises(ValueError, match="pooling"):
        LRASPPDecoder([3, 16, 24, 40, 112, 960], pooling="max")
    with pytest.raises(ValueError, match="low_level_stage"):
        LRASPPDecoder([3, 16, 24, 40, 112, 960], low_level_stage=5)


@pytest.mark.parametrize("size", [(64, 128), (250, 333)])
def test_model_any_input_size(size):
    model = LRASPP(
        MobileNetV3Encoder("small", output_stride=16, reduced_tail=True), 19, pooling="paper"
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 19, *size)
    assert torch.isfinite(out).all()


def _randomized_torchvision_lraspp(num_classes: int) -> torch.nn.Module:
    tv = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        num_classes=num_classes, weights_backbone=None
    )
    g = torch.Generator().manual_seed(1)
    for m in tv.modules():  # non-trivial BN statistics, so a wrong mapping cannot hide
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    return tv.eval()


def test_from_torchvision_lraspp_matches_outputs(tmp_path):
    tv = _randomized_torchvision_lraspp(21)  # COCO-with-VOC-labels head
    path = tmp_path / "lraspp_tv.pth"
    torch.save(tv.state_dict(), path)
    model = from_torchvision_lraspp(torch.load(path, weights_only=True)).eval()
    assert model.segmentation_head.low_classifier.out_channels == 21
    assert count_params(model) == count_params(tv) == 3_221_538
    for size in [(96, 128), (75, 101)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            diff = (tv(x)["out"] - model(x)).abs().max()
        assert float(diff) <= 1e-5
    # a path works too
    assert count_params(from_torchvision_lraspp(path)) == 3_221_538


def test_from_torchvision_lraspp_rejects_other_state_dicts():
    with pytest.raises(ValueError, match="not a torchvision lraspp"):
        from_torchvision_lraspp(torchvision.models.mobilenet_v3_small().state_dict())
