"""The Lite Reduced Atrous Spatial Pyramid Pooling decoder of "Searching for MobileNetV3" (Sec. 6.3).

High-level (1/16) features go through a 1x1 conv-BN-ReLU and are gated, channel-wise, by a pooled
branch (average pool -> 1x1 conv -> sigmoid); the result is bilinearly upsampled to the low-level (1/8)
features. The decoder knows nothing about classes: the classifiers live in ``LRASPPHead`` so a model can
be re-headed for another label set without touching the decoder.

Module names (``cbr.*``, ``scale.*``) match torchvision's ``LRASPPHead`` so its checkpoints map 1:1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class PaperAvgPool(nn.AvgPool2d):
    """The paper's large-kernel average pooling (49x49, stride (16, 20), no padding).

    The kernel and stride are clamped to the feature map, so a map smaller than the kernel is pooled
    over its whole extent in that direction (the global pooling the big kernel approximates) instead of
    failing. The clamp uses the static shape, so an ONNX export is a fixed-size ``AveragePool`` node.
    """

    def __init__(self, kernel_size: Sequence[int] = (49, 49), stride: Sequence[int] = (16, 20)) -> None:
        kernel_size, stride = tuple(int(k) for k in kernel_size), tuple(int(s) for s in stride)
        if len(kernel_size) != 2 or len(stride) != 2 or min(kernel_size + stride) < 1:
            raise ValueError(
                f"pool_kernel/pool_stride must be two positive ints, got {kernel_size}, {stride}"
            )
        super().__init__(kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = min(self.kernel_size[0], h), min(self.kernel_size[1], w)
        sh, sw = min(self.stride[0], h), min(self.stride[1], w)
        return F.avg_pool2d(x, (kh, kw), (sh, sw))


class LRASPPDecoder(nn.Module):
    """LR-ASPP decoder: returns ``[low, high]`` at the low-level resolution for ``LRASPPHead``.

    Args:
        encoder_channels: the encoder's ``out_channels`` (smp convention, input first).
        low_level_stage: index into the encoder features of the low-level skip (3 = stride 8).
        inter_channels: channels of the high-level branch (the paper's 128 filters).
        pooling: ``"global"`` (torchvision: gate from a global average) or ``"paper"`` (``PaperAvgPool``).
        pool_kernel, pool_stride: the ``"paper"`` pooling's kernel and stride.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        *,
        low_level_stage: int = 3,
        inter_channels: int = 128,
        pooling: Literal["global", "paper"] = "global",
        pool_kernel: Sequence[int] = (49, 49),
        pool_stride: Sequence[int] = (16, 20),
    ) -> None:
        super().__init__()
        n = len(encoder_channels)
        if not 1 <= low_level_stage < n - 1:
            raise ValueError(
                f"low_level_stage must index an encoder feature between the input and the last one "
                f"(1..{n - 2}), got {low_level_stage}"
            )
        if pooling == "global":
            pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        elif pooling == "paper":
            pool = PaperAvgPool(pool_kernel, pool_stride)
        else:
            raise ValueError(f"LR-ASPP pooling must be 'global' or 'paper', got {pooling!r}")
        high_channels = encoder_channels[-1]
        self.low_level_stage = low_level_stage
        self.low_channels = encoder_channels[low_level_stage]
        self.out_channels = inter_channels
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            pool, nn.Conv2d(high_channels, inter_channels, 1, bias=False), nn.Sigmoid()
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        low, high = features[self.low_level_stage], features[-1]
        gate = self.scale(high)
        if gate.shape[-2:] != (1, 1):  # a pooled grid, not one value: bring it back to the map's size
            gate = F.interpolate(gate, size=high.shape[-2:], mode="bilinear", align_corners=False)
        x = self.cbr(high) * gate
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return [low, x]


class LRASPPHead(nn.Module):
    """Per-pixel logits of LR-ASPP: a 1x1 classifier on each branch, summed (at 1/8 resolution)."""

    def __init__(self, low_channels: int, inter_channels: int, num_classes: int) -> None:
        super().__init__()
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, decoded: list[torch.Tensor]) -> torch.Tensor:
        low, high = decoded
        return self.low_classifier(low) + self.high_classifier(high)
