"""The one model factory: ``build_model`` (arguments) and ``create_model`` (a ``conf/model`` name)."""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from segkit.config import load_group
from segkit.models.decoders.lraspp import LRASPP
from segkit.models.decoders.lraspp.decoder import LRASPPDecoder
from segkit.models.encoders import (
    MobileNetV3Encoder,
    build_encoder,
    check_encoder,
    is_segkit_encoder,
    register_smp_encoder,
)
from segkit.models.smp_archs import SMP_ARCHITECTURES
from segkit.models.weights import (
    TORCHVISION_WEIGHTS,
    is_upstream_imagenet,
    load_encoder_weights,
    smp_download_errors,
)

#: every ``arch`` build_model knows: segkit's LR-ASPP and smp's architectures
ARCHITECTURES = ["lraspp", *sorted(SMP_ARCHITECTURES)]
#: the keys of a model config (``conf/model/*.yaml``) besides ``_target_``
MODEL_KEYS = ("name", "arch", "encoder", "num_classes", "encoder_weights", "encoder_params", "decoder_params")


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


def load_model_config(name_or_path: str | os.PathLike) -> DictConfig:
    """A model config: ``conf/model/<name>.yaml``, or any model YAML file (e.g. a searched architecture)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or os.sep in str(name_or_path) or "/" in str(name_or_path):
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {path}")
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            raise ValueError(f"{path}: a model config is a mapping with arch/encoder keys")
        cfg.pop("defaults", None)
        cfg.setdefault("name", path.stem)
        return cfg
    return load_group("model", str(name_or_path))


def create_model(name: str | os.PathLike, num_classes: int = 19, **overrides: Any) -> nn.Module:
    """Build ``conf/model/<name>.yaml`` (or the model YAML file at ``name``) with ``overrides`` merged in.

    ``create_model("lraspp_mobilenetv3_large", encoder_params={"width_mult": 0.75})`` changes one key
    of the encoder's parameters and keeps the rest of the file's (nested dicts merge; lists, such as a
    block table, are replaced).
    """
    cfg = load_model_config(name)
    source = str(name)
    cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides), {"num_classes": num_classes})
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    target = config.pop("_target_", "segkit.models.build_model")
    if target not in ("segkit.models.build_model", "segkit.models.factory.build_model"):
        raise ValueError(f"{source}: _target_ must be segkit.models.build_model, got {target!r}")
    config.setdefault("name", Path(source).stem)
    unknown = sorted(set(config) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown model config keys {unknown} (expected {sorted(MODEL_KEYS)})")
    return build_model(**config)


def architecture_config(model: nn.Module) -> dict[str, Any]:
    """The model config that rebuilds ``model`` as it is now, after layers were shrunk or replaced.

    A segkit MobileNetV3 encoder's ``encoder_params`` get its live block table (``blocks``,
    ``stem_channels``, ``last_channels``, with ``width_mult=1`` and ``reduced_tail=false`` since the
    table holds final widths); an LR-ASPP decoder's ``inter_channels`` is read from its layers. Any table
    is an ordinary model config: ``build_model(**architecture_config(m))`` builds the same shapes.
    """
    base = getattr(model, "model_config", None)
    if base is None:
        raise ValueError("model has no model_config: build it with segkit.models.build_model/create_model")
    config = copy.deepcopy(_plain(dict(base)))
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, MobileNetV3Encoder):
        params = dict(config.get("encoder_params") or {})
        params.update(encoder.architecture(), width_mult=1.0, reduced_tail=False)
        config["encoder_params"] = params
    decoder = getattr(model, "decoder", None)
    if isinstance(decoder, LRASPPDecoder):
        decoder_params = dict(config.get("decoder_params") or {})
        decoder_params["inter_channels"] = int(decoder.cbr[0].out_channels)
        config["decoder_params"] = decoder_params
    return config


__all__ = [
    "ARCHITECTURES",
    "MODEL_KEYS",
    "TORCHVISION_WEIGHTS",
    "architecture_config",
    "build_model",
    "create_model",
    "load_model_config",
]
