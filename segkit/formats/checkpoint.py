"""Segkit checkpoints: self-describing, atomically written, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds what inference and export need (the model config, the
:class:`~segkit.formats.description.ModelDescription` fields) next to whatever training state the
engine adds. Only tensors, plain containers, strings and numbers are stored, so loading never runs code.
Building the model a checkpoint describes is :func:`segkit.models.build_model_from_checkpoint`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segkit.formats.atomic import atomic_write
from segkit.formats.description import ModelDescription, ModelFileError

CHECKPOINT_FORMAT = "segkit-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ModelFileError):
    """A file is not a usable segkit checkpoint; the message names the file and the problem."""


def plain(value: Any) -> Any:
    """OmegaConf containers and tuples as plain dicts/lists, so weights_only loading accepts them."""
    if hasattr(value, "_metadata") and hasattr(value, "_get_node"):  # an OmegaConf container
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def model_metadata(
    model_config: Mapping[str, Any], description: ModelDescription | None = None, **fields: Any
) -> dict[str, Any]:
    """The descriptive part of a checkpoint: format, the model config and the description's fields.

    ``fields`` (``class_names``, ``palette``, ``mean``, ``std``, ``input_size``, ``ignore_index``) are
    shorthand for a description with those values.
    """
    if description is None:
        names = fields.pop("class_names", None)
        palette = fields.pop("palette", None)
        if names is None:
            description = ModelDescription(**fields)
        else:
            description = ModelDescription.for_classes(names, **fields)
        if palette is not None:
            description = description.replace(palette=palette)
    elif fields:
        raise TypeError("pass either a ModelDescription or its fields, not both")
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": plain(model_config),
        **description.checkpoint_fields(),
    }


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a crash or a full disk leaves the previous file.

    A full disk raises ``OSError(ENOSPC)`` whose message names the path and says the previous checkpoint
    is kept.
    """
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(dict(payload), f)

    try:
        return atomic_write(path, write)
    except (OSError, RuntimeError) as exc:
        if _no_space(exc):
            kept = "; the previous checkpoint is kept" if path.is_file() else ""
            raise OSError(errno.ENOSPC, f"no space left writing {path}{kept}") from None
        raise


def _no_space(exc: BaseException) -> bool:
    """True for a full disk, whether Python (ENOSPC) or torch's C++ writer ('file write failed') says so."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left" in text or "file write failed" in text or "unexpected pos" in text


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a segkit checkpoint with ``weights_only=True``, with one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign, damaged or malicious file
        raise CheckpointError(f"{path} is not a readable segkit checkpoint ({_short_reason(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a segkit checkpoint (no 'format: {CHECKPOINT_FORMAT}' entry)")
    for key in ("model_config", "model", "class_names"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks the '{key}' entry of a segkit checkpoint")
    return ckpt


def _short_reason(exc: BaseException) -> str:
    """torch's error without its advice to retry with ``weights_only=False`` (the unsafe path)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error" in line or "Unsupported global" in line:
            first = line.strip()
            break
    first = first.split(" Check the documentation")[0].split("(1) ")[0].strip().rstrip(".")
    if "weights_only" in first.lower() and "unsupported" not in first.lower():
        first = "it is not a plain-data checkpoint: loading it would run code"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def description_of(ckpt: Mapping[str, Any], source: str | os.PathLike = "") -> ModelDescription:
    """The :class:`ModelDescription` a loaded checkpoint carries (any size, float input, logits)."""
    fields = {
        k: ckpt[k]
        for k in ("class_names", "palette", "mean", "std", "input_size", "ignore_index")
        if k in ckpt
    }
    fields["model_config"] = ckpt.get("model_config") or {}
    return ModelDescription.from_dict({**fields, "dynamic": True}, source=source)
