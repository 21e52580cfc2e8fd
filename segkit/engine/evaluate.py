"""Validation loop: predictions at label resolution, counted with ``SegmentationMetrics`` on every rank
and summed over ranks, so each validation image is counted exactly once per evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from segkit.evaluation import SegmentationMetrics
from segkit.labels import IGNORE_INDEX


def model_logits(output: Any) -> torch.Tensor:
    """Logits from a model's output (a tensor, or torchvision's ``{"out": ...}`` dict)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "out" in output:
        return output["out"]
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``'s type, or a no-op context for full precision."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    device: torch.device,
    ignore_index: int = IGNORE_INDEX,
    class_names: list[str] | tuple[str, ...] | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Scores of ``model`` on ``loader`` (this rank's shard), reduced over all ranks.

    Returns ``SegmentationMetrics.compute()`` plus ``num_images``, the number of images evaluated by
    all ranks together. The model is left in eval mode; callers switch it back to train mode.
    """
    model.eval()
    metrics = SegmentationMetrics(num_classes, ignore_index, class_names=class_names, device=device)
    num_images = torch.zeros((), dtype=torch.int64, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, targets in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model_logits(model(images))
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = F.interpolate(
                logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False
            )
        metrics.update(logits.argmax(1), targets)
        num_images += images.shape[0]
    metrics.all_reduce()
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl" and num_images.device.type != "cuda":
            num_images = num_images.cuda()
        dist.all_reduce(num_images, op=dist.ReduceOp.SUM)
    results = metrics.compute()
    results["num_images"] = int(num_images)
    return results
