"""Optimizer factory (``_target_`` in ``conf/optim``) and the poly learning-rate schedule with warm-up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict[str, Any]]:
    """Parameter groups; with ``no_decay_norm_bias`` biases and norm-layer weights get no weight decay.

    Decaying BN scales towards zero hurts small models such as MobileNetV3, which is why many recipes
    exclude them; the default of the published LR-ASPP recipes is to decay everything.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, _NORM_TYPES):
                no_decay.add(id(p))
    decay = [p for p in params if id(p) not in no_decay]
    rest = [p for p in params if id(p) in no_decay]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(optim_cfg: Mapping[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """Instantiate ``optim_cfg.optimizer`` (a ``_target_`` node) over the model's parameter groups."""
    from hydra.utils import instantiate

    if "optimizer" not in optim_cfg or "_target_" not in optim_cfg["optimizer"]:
        raise ValueError("optim.optimizer: expected a node with a '_target_' such as torch.optim.SGD")
    weight_decay = float(optim_cfg["optimizer"].get("weight_decay", 0.0))
    groups = param_groups(model, weight_decay, bool(optim_cfg.get("no_decay_norm_bias", False)))
    return instantiate(optim_cfg["optimizer"], params=groups, _convert_="all")


class WarmupPolyLR(LRScheduler):
    """``lr = base_lr * (1 - t / total) ** power`` after a linear warm-up from ``warmup_start_factor``.

    Defined in closed form by the step count so it is identical after a resume; ``total_iters`` is the
    run's ``train.iters`` (total optimizer steps), never the steps of one process's lifetime.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        power: float = 0.9,
        warmup_iters: int = 0,
        warmup_start_factor: float = 0.1,
        min_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_iters <= 0:
            raise ValueError(f"train.iters must be > 0, got {total_iters}")
        if not 0 <= warmup_iters < total_iters:
            raise ValueError(
                f"optim.scheduler.warmup_iters={warmup_iters} must be in [0, train.iters={total_iters})"
            )
        self.total_iters = int(total_iters)
        self.power = float(power)
        self.warmup_iters = int(warmup_iters)
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr = float(min_lr)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """Multiplier of the base lr at optimizer step ``step`` (0-based)."""
        step = min(max(step, 0), self.total_iters)
        poly = (1.0 - step / self.total_iters) ** self.power
        if step < self.warmup_iters:
            alpha = step / self.warmup_iters
            poly *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * alpha
        return poly

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor(self.last_epoch)
        return [self.min_lr + (base - self.min_lr) * f for base in self.base_lrs]


def build_scheduler(
    optimizer: torch.optim.Optimizer, sched_cfg: Mapping[str, Any], total_iters: int
) -> WarmupPolyLR:
    """The poly/warm-up schedule of ``optim.scheduler`` over ``train.iters`` steps."""
    known = {"power", "warmup_iters", "warmup_start_factor", "min_lr"}
    unknown = set(sched_cfg) - known
    if unknown:
        raise ValueError(f"optim.scheduler: unknown keys {sorted(unknown)}, expected some of {sorted(known)}")
    return WarmupPolyLR(optimizer, total_iters, **{k: sched_cfg[k] for k in sched_cfg})
