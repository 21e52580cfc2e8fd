"""Encoder weights: local torchvision/timm/smp files, the torchvision ImageNet cache, offline errors."""

from __future__ import annotations

import socket

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision

from segkit.models import WeightsUnavailableError, build_model, create_model
from segkit.models.weights import TORCHVISION_WEIGHTS


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every connection attempt fails at once (and is recorded): no test may wait on the network."""
    attempts: list[tuple] = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_torchvision_file_by_path(tmp_path):
    tv = torchvision.models.mobilenet_v3_large()
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(tv.state_dict(), path)
    model = create_model(
        "deeplabv3plus_mobilenetv3_large", encoder_weights=str(path), encoder_params={"reduced_tail": False}
    )
    own = model.encoder.state_dict()
    for key, value in tv.features.state_dict().items():
        assert torch.equal(own[f"features.{key}"], value), key


def test_reduced_tail_keeps_random_tail_with_warning(tmp_path):
    tv = torchvision.models.mobilenet_v3_large()
    path = tmp_path / "mnv3.pth"
    torch.save(tv.state_dict(), path)
    with pytest.warns(UserWarning, match="reduced tail keep their random init"):
        model = create_model("lraspp_mobilenetv3_large", encoder_weights=str(path))
    enc = model.encoder
    assert torch.equal(enc.features[5].block[0][0].weight, tv.features[5].block[0][0].weight)
    # last stage (index 13 on) is half width: not from the file
    assert enc.features[14].block[0][0].weight.shape[0] == 480


def test_wrong_file_is_refused(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(ValueError, match="do not fit encoder MobileNetV3Encoder"):
        build_model(arch="lraspp", encoder="mobilenetv3_large", encoder_weights=str(path))
    with pytest.raises(FileNotFoundError, match="neither one of"):
        build_model(arch="lraspp", encoder="mobilenetv3_large", encoder_weights=str(tmp_path / "missing.pth"))


def test_smp_and_timm_files_by_path(tmp_path):
    resnet = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = create_model("lraspp_resnet18", encoder_weights=str(path))
    assert torch.equal(model.encoder.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)

    net = timm.create_model("mobilenetv3_large_100", pretrained=False)
    path = tmp_path / "timm_mnv3.pth"
    torch.save(net.state_dict(), path)
    model = create_model("lraspp_timm_mobilenetv3_large_100", encoder_weights=str(path))
    assert torch.equal(model.encoder.model.conv_stem.weight, net.conv_stem.weight)


def test_imagenet_uses_torch_hub_cache_without_network(tmp_path, monkeypatch):
    attempts = _no_network(monkeypatch)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = TORCHVISION_WEIGHTS["mobilenetv3_small"]["imagenet"].url
    tv = torchvision.models.mobilenet_v3_small()
    (tmp_path / "checkpoints").mkdir()
    torch.save(tv.state_dict(), tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    model = build_model(arch="lraspp", encoder="mobilenetv3_small", encoder_weights="imagenet")
    assert torch.equal(model.encoder.features[3].block[0][0].weight, tv.features[3].block[0][0].weight)
    assert attempts == []


def test_imagenet_offline_fails_fast_with_url(tmp_path, monkeypatch):
    attempts = _no_network(monkeypatch)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("lraspp_mobilenetv3_large", encoder_weights="imagenet")
    message = str(info.value)
    assert "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth" in message
    assert "encoder_weights=/path/to/mobilenet_v3_large-8738ca79.pth" in message
    assert attempts == [("download.pytorch.org", 443)]


def test_smp_imagenet_offline_names_the_hub(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("offline mode is enabled (test)")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    for arch in ["fpn", "lraspp"]:
        with pytest.raises(WeightsUnavailableError, match="huggingface.co.*local path"):
            build_model(arch=arch, encoder="resnet18", encoder_weights="imagenet")
