"""Training engine: loop, evaluation, losses, optimizers, EMA, checkpoints, distributed helpers.

``train`` is imported lazily so that ``segkit.engine.checkpoint`` stays light for inference and export.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from segkit.engine.trainer import train

        return train
    raise AttributeError(f"module 'segkit.engine' has no attribute {name!r}")
