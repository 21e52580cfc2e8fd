"""LR-ASPP segmentation model: any smp-style encoder + ``LRASPPDecoder`` + ``LRASPPHead``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationModel
from torch import nn

from segkit.models.decoders.lraspp.decoder import LRASPPDecoder, LRASPPHead


class LRASPP(SegmentationModel):
    """Encoder -> LR-ASPP decoder -> classifiers -> bilinear upsampling to the input size.

    Works at any input size without padding: the high-level branch is resized to the low-level map and
    the logits to the input, both by explicit sizes. Subclasses smp's ``SegmentationModel`` so
    ``freeze_encoder``/``predict`` behave as for the smp architectures.

    Args:
        encoder: an smp-interface encoder (``out_channels``; ``forward`` returns ``[x, f1, ...]``),
            normally dilated to output stride 16.
        num_classes: output channels.
        low_level_stage, inter_channels, pooling, pool_kernel, pool_stride: see ``LRASPPDecoder``.
    """

    requires_divisible_input_shape = False

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 19,
        *,
        low_level_stage: int = 3,
        inter_channels: int = 128,
        pooling: Literal["global", "paper"] = "global",
        pool_kernel: Sequence[int] = (49, 49),
        pool_stride: Sequence[int] = (16, 20),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = LRASPPDecoder(
            encoder.out_channels,
            low_level_stage=low_level_stage,
            inter_channels=inter_channels,
            pooling=pooling,
            pool_kernel=pool_kernel,
            pool_stride=pool_stride,
        )
        self.segmentation_head = LRASPPHead(self.decoder.low_channels, inter_channels, num_classes)
        self.classification_head = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.segmentation_head(self.decoder(self.encoder(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
