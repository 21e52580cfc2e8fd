"""Joint image/mask augmentation built from ``conf/augment/*.yaml`` with Hydra ``_target_`` nodes.

An augment config has a ``train`` and a ``val`` node, each an ``albumentations.Compose`` whose
``transforms`` list names albumentations classes by ``_target_``; adding a transform is a YAML edit.
albumentations applies geometric transforms to image and mask together (mask with nearest-neighbour
interpolation and its own fill value, 255 = ignore) and pixel-level transforms to the image only, so
labels are never blended or colour-jittered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from segkit.config import load_group  # noqa: E402

Transform = Callable[..., dict[str, Any]]


def build_transform(node: Mapping[str, Any] | DictConfig) -> Transform:
    """Instantiate one pipeline node (``_target_: albumentations.Compose`` with a ``transforms`` list)."""
    if "_target_" not in node:
        raise ValueError(
            f"augment pipeline needs a _target_ (e.g. albumentations.Compose), got keys {list(node)}"
        )
    return instantiate(node, _convert_="all")


def build_transforms(cfg: str | Mapping[str, Any] | DictConfig) -> tuple[Transform, Transform]:
    """``(train_transform, val_transform)`` from an augment config or the name of one in ``conf/augment``.

    Example: ``train_tf, val_tf = build_transforms("demo")``; then
    ``CityscapesDataset(root, "train", transform=train_tf)``.
    """
    if isinstance(cfg, str):
        cfg = load_group("augment", cfg)
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    missing = [k for k in ("train", "val") if k not in cfg]
    if missing:
        raise KeyError(f"augment config lacks {missing}: it needs a 'train' and a 'val' pipeline")
    return build_transform(cfg.train), build_transform(cfg.val)
