"""segkit's encoders, and their entries in segmentation-models-pytorch's encoder registry.

Registering makes ``smp.Unet("mobilenetv3_large")`` (and every other smp decoder) build segkit's
MobileNetV3. smp builds a registered encoder from a fixed parameter dict plus ``depth`` and
``output_stride``, so each other combination of ``encoder_params`` gets its own, deterministic key.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from segkit.models.encoders.mobilenetv3 import MobileNetV3Encoder

#: segkit encoder name -> (class, fixed constructor arguments)
SEGKIT_ENCODERS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "mobilenetv3_large": (MobileNetV3Encoder, {"variant": "large"}),
    "mobilenetv3_small": (MobileNetV3Encoder, {"variant": "small"}),
}


def is_segkit_encoder(name: str) -> bool:
    """True for segkit's own encoders, False for smp/timm names."""
    return name in SEGKIT_ENCODERS


def register_smp_encoder(name: str, params: dict[str, Any] | None = None) -> str:
    """Put segkit encoder ``name`` with ``params`` into smp's registry and return its key there."""
    cls, fixed = SEGKIT_ENCODERS[name]
    params = {k: v for k, v in (params or {}).items() if k not in ("depth", "output_stride")}
    key = name
    if params:
        key += "[" + ",".join(f"{k}={params[k]!r}" for k in sorted(params)) + "]"
    smp.encoders.encoders[key] = {
        "encoder": cls,
        "pretrained_settings": {},  # segkit loads the weights itself: segkit.models.weights
        "params": {**fixed, **params},
    }
    return key


def build_encoder(
    name: str, *, depth: int = 5, output_stride: int = 32, smp_weights: Any = None, **params: Any
) -> nn.Module:
    """An smp-interface encoder: segkit's by name (random init), else smp's/timm's (``tu-...``).

    ``smp_weights`` is passed on to smp's ``get_encoder`` (``"imagenet"``/``True`` download there).
    """
    if is_segkit_encoder(name):
        cls, fixed = SEGKIT_ENCODERS[name]
        return cls(**fixed, depth=depth, output_stride=output_stride, **params)
    try:
        return smp.encoders.get_encoder(
            name, depth=depth, output_stride=output_stride, weights=smp_weights, **params
        )
    except KeyError as exc:
        raise ValueError(
            f"unknown encoder {name!r}: use one of {sorted(SEGKIT_ENCODERS)}, an smp encoder "
            f"(e.g. resnet18) or a timm one as 'tu-<timm name>' ({exc.args[0][:200]}...)"
        ) from None


for _name in SEGKIT_ENCODERS:
    register_smp_encoder(_name)

__all__ = [
    "SEGKIT_ENCODERS",
    "MobileNetV3Encoder",
    "build_encoder",
    "is_segkit_encoder",
    "register_smp_encoder",
]
