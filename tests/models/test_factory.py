"""The model factory: every conf/model file builds and maps any H x W to N x 19 x H x W logits."""

from __future__ import annotations

import pytest
import torch

import segkit
from segkit.config import group_options, load_group
from segkit.models import ARCHITECTURES, LRASPP, MobileNetV3Encoder, build_model, create_model

MODEL_NAMES = group_options("model")
# heavy decoders are checked at a smaller odd size to keep the suite fast
ODD_SIZE = {"lraspp": (250, 333)}


def test_expected_configs_exist():
    for name in [
        "lraspp_mobilenetv3_large",
        "lraspp_mobilenetv3_small",
        "deeplabv3plus_mobilenetv3_large",
        "deeplabv3_mobilenetv3_large",
        "fpn_mobilenetv3_large",
        "unet_mobilenetv3_large",
        "pan_mobilenetv3_large",
        "lraspp_resnet18",
    ]:
        assert name in MODEL_NAMES
        cfg = load_group("model", name)
        assert cfg["_target_"] == "segkit.models.build_model"
        assert cfg["name"] == name
        assert cfg["arch"] in ARCHITECTURES


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_builds_and_keeps_input_size(name):
    model = segkit.create_model(name).eval()
    arch = load_group("model", name)["arch"]
    odd = ODD_SIZE.get(arch, (97, 131))
    with torch.no_grad():
        for size in [(64, 128), odd]:
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 19, *size)
            assert torch.isfinite(out).all()
    assert model.model_config["name"] == name


def test_mobilenetv3_configs_share_the_encoder():
    for name in ["deeplabv3plus_mobilenetv3_large", "unet_mobilenetv3_large", "lraspp_mobilenetv3_large"]:
        enc = create_model(name).encoder
        assert isinstance(enc, MobileNetV3Encoder)
        assert enc.variant == "large"


def test_paper_lraspp_configs():
    for name, tail in [("lraspp_mobilenetv3_large", 480), ("lraspp_mobilenetv3_small", 288)]:
        model = create_model(name)
        assert isinstance(model, LRASPP)
        assert model.encoder.output_stride == 16
        assert model.encoder.out_channels[-1] == tail  # reduced tail (RF2)
        assert model.decoder.out_channels == 128
        assert type(model.decoder.scale[0]).__name__ == "PaperAvgPool"


def test_overrides_merge_into_the_file():
    model = create_model("lraspp_mobilenetv3_large", num_classes=7, encoder_params={"reduced_tail": False})
    assert model.encoder.out_channels[-1] == 960
    assert model.encoder.output_stride == 16  # kept from the file
    assert model.segmentation_head.low_classifier.out_channels == 7
    swapped = create_model("lraspp_mobilenetv3_large", encoder="mobilenetv3_small", num_classes=3)
    assert swapped.encoder.variant == "small"


def test_switching_to_another_encoder_drops_mobilenetv3_params():
    with pytest.warns(
        UserWarning, match=r"\['reduced_tail', 'taps', 'width_mult'\] apply to segkit's MobileNetV3"
    ):
        model = create_model("lraspp_mobilenetv3_large", encoder="tu-mobilenetv3_small_100", num_classes=2)
    assert model.encoder.output_stride == 16
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 48, 64)).shape == (1, 2, 48, 64)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as info:
        create_model("lraspp_mobilenetv4")
    assert "lraspp_mobilenetv3_large" in str(info.value)
    assert "unet_mobilenetv3_large" in str(info.value)
    with pytest.raises(ValueError, match="deeplabv3plus"):
        build_model(arch="segnet", encoder="mobilenetv3_large")
    with pytest.raises(ValueError, match="unknown encoder 'mobilenetv9'"):
        build_model(arch="lraspp", encoder="mobilenetv9")
    with pytest.raises(ValueError, match="output stride 32"):
        build_model(arch="unet", encoder="mobilenetv3_large", encoder_params={"output_stride": 16})


@pytest.mark.parametrize(
    ("arch", "encoder", "params"),
    [
        ("deeplabv3plus", "resnet18", {"output_stride": 16}),
        ("fpn", "tu-mobilenetv3_large_100", {}),
        ("deeplabv3", "mobilenetv3_small", {"output_stride": 8, "width_mult": 0.75}),
    ],
)
def test_build_model_with_smp_and_timm_encoders(arch, encoder, params):
    model = build_model(arch=arch, encoder=encoder, num_classes=4, encoder_params=params).eval()
    if "output_stride" in params:
        assert model.encoder.output_stride == params["output_stride"]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 90)).shape == (1, 4, 70, 90)


def test_state_dict_round_trip_through_build_model():
    model = create_model("deeplabv3plus_mobilenetv3_large", num_classes=5)
    again = build_model(**{k: v for k, v in model.model_config.items()})
    again.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_hydra_instantiate_builds_the_same_model():
    from hydra.utils import instantiate

    cfg = load_group("model", "lraspp_mobilenetv3_small")
    cfg.encoder_params.width_mult = 0.75  # as `model.encoder_params.width_mult=0.75` on the command line
    model = instantiate(cfg)
    assert isinstance(model, LRASPP)
    assert model.encoder.width_mult == 0.75
    assert model.decoder.scale[0].kernel_size == (49, 49)
    assert model.model_config["decoder_params"]["pool_stride"] == [16, 20]


@pytest.mark.slow
def test_import_segkit_is_light_and_create_model_stays_at_the_top_level():
    import subprocess
    import sys

    code = (
        "import sys, segkit\n"
        "assert 'segmentation_models_pytorch' not in sys.modules and 'timm' not in sys.modules\n"
        "from segkit import create_model\n"
        "assert create_model is segkit.create_model\n"
        "print(create_model.__module__, 'segmentation_models_pytorch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["segkit.models.factory", "True"]
    with pytest.raises(AttributeError, match="no attribute 'make_model'"):
        segkit.make_model  # noqa: B018
