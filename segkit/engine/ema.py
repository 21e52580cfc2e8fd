"""Exponential moving average of the weights, evaluated alongside the trained model.

Built on ``timm.utils.ModelEmaV3``: its decay warm-up (``1 - (1 + step) ** -2/3`` capped at ``decay``)
makes the average useful in short runs too, where a fixed 0.9999 would still hold the random init.
The decay depends only on the optimizer step, so the EMA state is its weights (saved as ``ema`` in
checkpoints, a plain model state dict that ``build_model_from_checkpoint(use_ema=True)`` loads).
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


class ModelEMA(ModelEmaV3):
    """EMA copy of a model, updated after every optimizer step with the step number."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema.decay must be in (0, 1), got {decay}")
        super().__init__(unwrap(model), decay=decay, use_warmup=warmup)
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:  # type: ignore[override]
        super().update(unwrap(model), step=step)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict, as stored under ``ema`` in a checkpoint."""
        return self.module.state_dict()

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
