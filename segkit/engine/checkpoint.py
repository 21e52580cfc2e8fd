"""Self-describing, atomically written checkpoints.

A segkit checkpoint holds everything inference and export need (model config, class names, palette,
normalisation) next to the training state, and loads with ``torch.load(weights_only=True)``: only
tensors, plain containers, strings and numbers are stored.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segkit import labels

CHECKPOINT_FORMAT = "segkit-checkpoint"
CHECKPOINT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A file is not a usable segkit checkpoint; the message names the file and the problem."""


def model_metadata(
    model_config: Mapping[str, Any],
    *,
    class_names: tuple[str, ...] | list[str] = labels.CLASS_NAMES,
    palette: Any = labels.PALETTE,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    input_size: tuple[int, int] | list[int] | None = None,
    ignore_index: int = labels.IGNORE_INDEX,
) -> dict[str, Any]:
    """The part of a checkpoint that describes the model to inference and export."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": _plain(model_config),
        "class_names": list(class_names),
        "palette": [[int(c) for c in rgb] for rgb in palette],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "input_size": list(input_size) if input_size is not None else None,
        "ignore_index": int(ignore_index),
    }


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a temp file in the same folder, fsync, then rename.

    A crash mid-write leaves the previous file untouched, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a segkit checkpoint with ``weights_only=True``, with clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or damaged file
        reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{path} is not a readable segkit checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a segkit checkpoint (no 'format: {CHECKPOINT_FORMAT}' entry)")
    for key in ("model_config", "model", "class_names"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks the '{key}' entry of a segkit checkpoint")
    return ckpt


def build_model_from_checkpoint(
    ckpt: Mapping[str, Any] | str | os.PathLike, *, use_ema: bool = False
) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (EMA weights if asked and present).

    Checkpoints of models shrunk by ``segkit.search`` (``search.expanded_channels`` beside the config)
    are rebuilt with their per-block widths.
    """
    from segkit.models import build_model
    from segkit.search.arch import SEARCH_KEY, build_adapted_model

    if not isinstance(ckpt, Mapping):
        ckpt = load_checkpoint(ckpt)

    search = ckpt.get(SEARCH_KEY)
    if isinstance(search, Mapping) and "expanded_channels" in search:
        widths = search["expanded_channels"], search.get("out_channels")
        model = build_adapted_model(ckpt["model_config"], *widths)
    else:
        config = {k: v for k, v in ckpt["model_config"].items() if k != "_target_"}
        # The state dict below overwrites every weight: never fetch pretrained encoder weights again.
        config["encoder_weights"] = None
        model = build_model(**config)
    state = ckpt.get("ema") if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state)
    return model.eval()


def _plain(value: Any) -> Any:
    """Turn OmegaConf containers and tuples into plain dicts/lists so weights_only loading accepts them."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core, a dependency
        pass
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
