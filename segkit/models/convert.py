"""Import torchvision's ``lraspp_mobilenet_v3_large`` checkpoints as segkit models."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from segkit.models.factory import build_model

#: torchvision LRASPP key prefix -> segkit LRASPP key prefix
_PREFIXES = {
    "backbone.": "encoder.features.",
    "classifier.cbr.": "decoder.cbr.",
    "classifier.scale.": "decoder.scale.",
    "classifier.low_classifier.": "segmentation_head.low_classifier.",
    "classifier.high_classifier.": "segmentation_head.high_classifier.",
}


def _rename(key: str) -> str:
    for old, new in _PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    raise ValueError(
        f"unexpected key {key!r} in a torchvision LR-ASPP state dict (expected prefixes {list(_PREFIXES)})"
    )


def from_torchvision_lraspp(state_dict: Mapping[str, torch.Tensor] | str | os.PathLike) -> nn.Module:
    """Build the segkit model equal to torchvision's ``lraspp_mobilenet_v3_large`` and load its weights.

    torchvision's model is MobileNetV3-Large with the full tail, dilated to output stride 16, global
    pooling, 128 (or the checkpoint's) inter channels, and the low-level skip taken at the output of the
    block that enters stride 8 (40 channels) - segkit's ``taps="start"``. The number of classes comes
    from the state dict. ``state_dict`` may also be a path to a ``.pth`` file.
    """
    if not isinstance(state_dict, Mapping):
        path = Path(state_dict)
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state_dict, Mapping):
            raise ValueError(
                f"{path}: expected a torchvision LR-ASPP state dict, got {type(state_dict).__name__}"
            )
    for key in ("classifier.low_classifier.weight", "classifier.cbr.0.weight"):
        if key not in state_dict:
            raise ValueError(f"not a torchvision lraspp_mobilenet_v3_large state dict: no {key!r}")
    num_classes, low_channels = state_dict["classifier.low_classifier.weight"].shape[:2]
    inter_channels = state_dict["classifier.cbr.0.weight"].shape[0]
    model = build_model(
        arch="lraspp",
        encoder="mobilenetv3_large",
        num_classes=int(num_classes),
        encoder_params={"output_stride": 16, "reduced_tail": False, "taps": "start"},
        decoder_params={"low_level_stage": 3, "inter_channels": int(inter_channels), "pooling": "global"},
        name="lraspp_mobilenetv3_large_torchvision",
    )
    if model.encoder.out_channels[3] != low_channels:
        raise ValueError(
            f"low-level features have {low_channels} channels, expected {model.encoder.out_channels[3]}"
        )
    model.load_state_dict({_rename(k): v for k, v in state_dict.items()})
    return model
