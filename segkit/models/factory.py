"""The one model factory: ``build_model`` (arguments) and ``create_model`` (a ``conf/model`` name)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from segkit.config import load_group
from segkit.models.decoders.lraspp import LRASPP
from segkit.models.encoders import build_encoder, check_encoder, is_segkit_encoder, register_smp_encoder
from segkit.models.smp_archs import SMP_ARCHITECTURES
from segkit.models.weights import (
    TORCHVISION_WEIGHTS,
    is_upstream_imagenet,
    load_encoder_weights,
    smp_download_errors,
)

#: every ``arch`` build_model knows: segkit's LR-ASPP and smp's architectures
ARCHITECTURES = ["lraspp", *sorted(SMP_ARCHITECTURES)]


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def build_model(
    *,
    arch: str,
    encoder: str,
    num_classes: int = 19,
    encoder_weights: str | None = None,
    encoder_params: Mapping[str, Any] | None = None,
    decoder_params: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> nn.Module:
    """Build a segmentation model whose ``forward(x)`` returns N x num_classes x H x W logits.

    Args:
        arch: ``lraspp`` (segkit) or an smp architecture (``deeplabv3plus``, ``deeplabv3``, ``fpn``,
            ``unet``, ``pan``, ...).
        encoder: ``mobilenetv3_large``/``mobilenetv3_small`` (segkit), an smp encoder (``resnet18``) or
            a timm one (``tu-mobilenetv3_large_100``).
        encoder_weights: ``None``, ``"imagenet"`` or a path to a torchvision/timm/smp weight file.
        encoder_params: ``depth``, ``output_stride`` (LR-ASPP default 16) and encoder arguments
            (segkit MobileNetV3: ``width_mult``, ``reduced_tail``, ``taps``; timm: its kwargs).
        decoder_params: keyword arguments of the architecture (LR-ASPP: ``inter_channels``,
            ``low_level_stage``, ``pooling``, ``pool_kernel``, ``pool_stride``; smp: its ``decoder_*``).
        name: the config's name, kept in ``model.model_config``.
    """
    encoder_params = check_encoder(encoder, dict(_plain(encoder_params) or {}))
    decoder_params = dict(_plain(decoder_params) or {})
    arch_key = arch.lower()
    if arch_key == "lraspp":
        encoder_params.setdefault("output_stride", 16)
        upstream = is_upstream_imagenet(encoder, encoder_weights)
        with smp_download_errors(encoder) if upstream else nullcontext():
            enc = build_encoder(
                encoder, smp_weights=_smp_weights(encoder) if upstream else None, **encoder_params
            )
        model: nn.Module = LRASPP(enc, num_classes, **decoder_params)
        if not upstream:
            load_encoder_weights(model.encoder, encoder, encoder_weights)
    elif arch_key in SMP_ARCHITECTURES:
        model = _build_smp(arch_key, encoder, num_classes, encoder_weights, encoder_params, decoder_params)
    else:
        raise ValueError(f"unknown arch {arch!r}: expected one of {ARCHITECTURES}")
    model.model_config = {  # type: ignore[assignment]
        "name": name,
        "arch": arch,
        "encoder": encoder,
        "encoder_weights": None if encoder_weights is None else str(encoder_weights),
        "encoder_params": encoder_params,
        "decoder_params": decoder_params,
        "num_classes": num_classes,
    }
    return model


def _build_smp(
    arch: str,
    encoder: str,
    num_classes: int,
    encoder_weights: str | None,
    encoder_params: dict[str, Any],
    decoder_params: dict[str, Any],
) -> nn.Module:
    cls = SMP_ARCHITECTURES[arch]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = dict(decoder_params)
    params = dict(encoder_params)
    if "depth" in params:
        kwargs["encoder_depth"] = params.pop("depth")
    output_stride = params.pop("output_stride", None)
    if output_stride is not None:
        if "encoder_output_stride" in accepted:
            kwargs["encoder_output_stride"] = output_stride
        elif output_stride != 32:
            raise ValueError(
                f"arch {arch!r} has a fixed encoder output stride 32, got output_stride={output_stride}"
            )
    smp_weights: Any = None
    if is_segkit_encoder(encoder):
        encoder_key = register_smp_encoder(encoder, params)
    else:
        encoder_key = encoder
        kwargs.update(params)  # smp passes these to timm encoders
        if is_upstream_imagenet(encoder, encoder_weights):
            smp_weights = _smp_weights(encoder)
    with smp_download_errors(encoder) if smp_weights is not None else nullcontext():
        model = cls(encoder_name=encoder_key, encoder_weights=smp_weights, classes=num_classes, **kwargs)
    if smp_weights is None:
        load_encoder_weights(model.encoder, encoder, encoder_weights)
    model.pad_multiple = 2 ** (len(model.encoder.out_channels) - 1)
    if arch == "pan":  # its feature pyramid attention halves the deepest map three more times
        model.pad_multiple = max(model.pad_multiple, 8 * model.encoder.output_stride)
    return model


def _smp_weights(encoder: str) -> Any:
    """smp's spelling of "ImageNet weights": ``True`` for timm-universal encoders, else ``"imagenet"``."""
    return True if encoder.startswith("tu-") else "imagenet"


def create_model(name: str, num_classes: int = 19, **overrides: Any) -> nn.Module:
    """Build the model of ``conf/model/<name>.yaml`` with ``overrides`` merged in (nested dicts merge).

    ``create_model("lraspp_mobilenetv3_large", encoder_params={"width_mult": 0.75})`` changes one key
    of the encoder's parameters and keeps the rest of the file's.
    """
    cfg = load_group("model", name)
    cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides), {"num_classes": num_classes})
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    target = config.pop("_target_", "segkit.models.build_model")
    if target not in ("segkit.models.build_model", "segkit.models.factory.build_model"):
        raise ValueError(
            f"conf/model/{name}.yaml: _target_ must be segkit.models.build_model, got {target!r}"
        )
    config.setdefault("name", name)
    return build_model(**config)


__all__ = ["ARCHITECTURES", "TORCHVISION_WEIGHTS", "build_model", "create_model"]
