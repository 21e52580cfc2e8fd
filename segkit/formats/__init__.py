"""The base layer's file formats: what a segkit model file says about itself, and how it is written.

* :mod:`segkit.formats.description`: :class:`ModelDescription`, the one record of class names, palette,
  normalisation, input size and input/output kinds that checkpoints and every exported file carry.
* :mod:`segkit.formats.metadata`: that record as ONNX ``metadata_props``, a TorchScript extra file or an
  ExecuTorch constant method.
* :mod:`segkit.formats.checkpoint`: segkit checkpoints (``torch.load(weights_only=True)``).
* :mod:`segkit.formats.atomic`: write a file whole or not at all.

Nothing here imports another segkit package except :mod:`segkit.labels`.
"""

from __future__ import annotations

from segkit.formats.atomic import atomic_write
from segkit.formats.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    model_metadata,
    save_checkpoint,
)
from segkit.formats.description import IMAGENET_MEAN, IMAGENET_STD, ModelDescription, ModelFileError
from segkit.formats.metadata import decode_metadata, encode_metadata, read_onnx_metadata

__all__ = [
    "CHECKPOINT_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "ModelDescription",
    "ModelFileError",
    "atomic_write",
    "decode_metadata",
    "encode_metadata",
    "load_checkpoint",
    "model_metadata",
    "read_onnx_metadata",
    "save_checkpoint",
]
