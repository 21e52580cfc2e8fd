"""Segmentation losses: cross-entropy with an ignore label, optional class weights, and OHEM.

OHEM follows PaddleSeg's ``OhemCrossEntropyLoss`` semantics, which the published MobileNetV3/LR-ASPP
recipes of PaddleSeg use: for each pixel take the softmax probability of its true class; pixels whose
probability is below ``thresh`` are "hard" and kept, but if fewer than ``min_kept`` pixels of the whole
batch (per process) would survive, the threshold is raised to the ``min_kept``-th smallest probability.
The loss is the mean cross-entropy over the kept pixels. As in PaddleSeg, ``min_kept=0`` disables mining.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segkit.labels import IGNORE_INDEX


def _resize_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Upsample logits to the label size when a model predicts at a lower resolution."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits


class SegCrossEntropy(nn.Module):
    """Pixel-wise cross-entropy ignoring ``ignore_index``; mean over labelled pixels (class-weighted)."""

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, class_weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        weight = (
            torch.as_tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        )
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _resize_logits(logits, target)
        weight = self.weight.to(logits.dtype) if self.weight is not None else None
        loss = F.cross_entropy(logits, target.long(), weight=weight, ignore_index=self.ignore_index)
        # A batch with no labelled pixel gives NaN in torch; a zero loss (no gradient) is the useful answer.
        return torch.nan_to_num(loss, nan=0.0)


class OhemCrossEntropy(SegCrossEntropy):
    """Online hard example mining cross-entropy (PaddleSeg semantics, see the module docstring)."""

    def __init__(
        self,
        thresh: float = 0.7,
        min_kept: int = 10000,
        ignore_index: int = IGNORE_INDEX,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(ignore_index=ignore_index, class_weights=class_weights)
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"OHEM thresh must be a probability in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"OHEM min_kept must be >= 0, got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)

    def kept_mask(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Boolean N x H x W mask of the pixels the loss is computed on."""
        logits = _resize_logits(logits, target)
        target = target.long()
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        if num_valid == 0 or self.min_kept >= num_valid or self.min_kept == 0:
            # PaddleSeg keeps every labelled pixel when min_kept cannot be satisfied, and mines only
            # when min_kept > 0
            return valid
        with torch.no_grad():
            prob = logits.detach().float().softmax(dim=1)
            safe_target = torch.where(valid, target, torch.zeros_like(target))
            true_prob = prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
            true_prob = torch.where(valid, true_prob, torch.ones_like(true_prob) + 1.0)  # ignored never kept
            threshold = torch.tensor(self.thresh, device=true_prob.device)
            kth = true_prob.flatten().kthvalue(min(self.min_kept, true_prob.numel())).values
            threshold = torch.maximum(threshold, kth)
            return valid & (true_prob < threshold)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _resize_logits(logits, target)
        kept = self.kept_mask(logits, target)
        hard_target = torch.where(kept, target.long(), torch.full_like(target.long(), self.ignore_index))
        return super().forward(logits, hard_target)


def build_loss(
    name: str = "ce",
    *,
    ignore_index: int = IGNORE_INDEX,
    class_weights: Sequence[float] | None = None,
    ohem_thresh: float = 0.7,
    ohem_min_kept: int = 10000,
) -> nn.Module:
    """The training loss named in ``train.loss`` (``ce`` or ``ohem``)."""
    if class_weights is not None:
        class_weights = [float(w) for w in class_weights]
    if name == "ce":
        return SegCrossEntropy(ignore_index=ignore_index, class_weights=class_weights)
    if name == "ohem":
        return OhemCrossEntropy(
            thresh=ohem_thresh, min_kept=ohem_min_kept, ignore_index=ignore_index, class_weights=class_weights
        )
    raise ValueError(f"train.loss.name: unknown loss '{name}', expected 'ce' or 'ohem'")
