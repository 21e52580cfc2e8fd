"""One optimizer step of the engine: forward, loss, backward, clip, step, schedule, EMA.

The training loop, the search's proxy fine-tunes and ``benchmarks/train_throughput.py`` all run this
step, so every way of training a segkit model updates its weights the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segkit.engine.ema import ModelEMA
from segkit.engine.evaluate import autocast, model_logits


@dataclass
class TrainStep:
    """One optimizer step over a list of micro-batches: forward, loss, backward, clip, step, EMA.

    This is the engine's step function; ``benchmarks/train_throughput.py`` times it directly.
    """

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    grad_clip: float | None = None
    ema: ModelEMA | None = None
    step: int = 0

    def to_device(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        return images, targets.to(self.device, non_blocking=True)

    def __call__(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Run the step; returns the mean loss over the micro-batches (a detached scalar tensor)."""
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for i, (images, targets) in enumerate(micro_batches):
            images, targets = self.to_device(images, targets)
            # DDP: all-reduce gradients only on the last micro-batch of the step.
            sync = i == n - 1 or not isinstance(self.model, DistributedDataParallel)
            with self.model.no_sync() if not sync else nullcontext():
                with autocast(self.device, self.amp_dtype):
                    logits = model_logits(self.model(images))
                loss = self.criterion(logits.float(), targets) / n
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total += loss.detach()
        if self.grad_clip:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return total
