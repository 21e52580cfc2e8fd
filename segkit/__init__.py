"""segkit: MobileNetV3 + LR-ASPP semantic segmentation for Cityscapes, from training to the device."""

from __future__ import annotations

import os

# albumentations asks PyPI for a newer version on import; segkit never touches the network by itself.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["create_model"]
__version__ = "0.1.0"


def __getattr__(name: str):  # PEP 562: the model stack (smp, timm) loads on first use, not on import
    if name == "create_model":
        from segkit.models import create_model

        return create_model
    raise AttributeError(f"module 'segkit' has no attribute {name!r}")
