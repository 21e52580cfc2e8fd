"""Checkpoint names under their historical home (kept so existing imports keep working).

The format lives in the base layer, :mod:`segkit.formats.checkpoint`; rebuilding the model a checkpoint
describes in :mod:`segkit.models.from_checkpoint`. New code imports from there.
"""

from __future__ import annotations

from segkit.formats.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    model_metadata,
    save_checkpoint,
)
from segkit.formats.description import IMAGENET_MEAN, IMAGENET_STD
from segkit.models.from_checkpoint import build_model_from_checkpoint

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "build_model_from_checkpoint",
    "load_checkpoint",
    "model_metadata",
    "save_checkpoint",
]
