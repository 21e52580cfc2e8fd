"""segkit's encoders, and their entries in segmentation-models-pytorch's encoder registry.

Registering makes ``smp.Unet("mobilenetv3_large")`` (and every other smp decoder) build segkit's
MobileNetV3. smp builds a registered encoder from a fixed parameter dict plus ``depth`` and
``output_stride``, so each other combination of ``encoder_params`` gets its own, deterministic key.
"""

from __future__ import annotations

import warnings
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from segkit.models.encoders.mobilenetv3 import (
    BlockSpec,
    MobileNetV3Encoder,
    block_spec,
    new_block,
    paper_table,
)

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


#: encoder_params that only segkit's MobileNetV3 understands
MOBILENETV3_ONLY_PARAMS = ("width_mult", "reduced_tail", "taps", "blocks", "stem_channels", "last_channels")


def check_encoder(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate an encoder name; return ``params`` without MobileNetV3-only keys for other encoders.

    Switching ``model.encoder=resnet18`` on a MobileNetV3 config leaves ``width_mult`` & co. behind; they
    are dropped with a warning instead of reaching smp/timm as unknown arguments.
    """
    if is_segkit_encoder(name):
        return params
    if not name.startswith("tu-") and name not in smp.encoders.encoders:
        raise ValueError(
            f"unknown encoder {name!r}: use one of {sorted(SEGKIT_ENCODERS)}, an smp encoder "
            f"(e.g. resnet18, efficientnet-b0) or a timm one as 'tu-<timm name>'"
        )
    dropped = sorted(k for k in params if k in MOBILENETV3_ONLY_PARAMS)
    if dropped:
        warnings.warn(
            f"encoder_params {dropped} apply to segkit's MobileNetV3 only; ignored for encoder {name!r}",
            stacklevel=3,
        )
    return {k: v for k, v in params.items() if k not in MOBILENETV3_ONLY_PARAMS}


def build_encoder(
    name: str, *, depth: int = 5, output_stride: int = 32, smp_weights: Any = None, **params: Any
) -> nn.Module:
    """An smp-interface encoder: segkit's by name (random init), else smp's/timm's (``tu-...``).

    ``smp_weights`` is passed on to smp's ``get_encoder`` (``"imagenet"``/``True`` download there).
    """
    if is_segkit_encoder(name):
        cls, fixed = SEGKIT_ENCODERS[name]
        return cls(**fixed, depth=depth, output_stride=output_stride, **params)
    params = check_encoder(name, params)
    return smp.encoders.get_encoder(
        name, depth=depth, output_stride=output_stride, weights=smp_weights, **params
    )


for _name in SEGKIT_ENCODERS:
    register_smp_encoder(_name)

__all__ = [
    "SEGKIT_ENCODERS",
    "BlockSpec",
    "MobileNetV3Encoder",
    "block_spec",
    "new_block",
    "paper_table",
    "build_encoder",
    "check_encoder",
    "is_segkit_encoder",
    "register_smp_encoder",
]
