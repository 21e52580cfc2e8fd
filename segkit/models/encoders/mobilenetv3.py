"""MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3") as a segmentation encoder.

The layers are torchvision's own (``InvertedResidualConfig``/``InvertedResidual`` from
``_mobilenet_v3_conf``), kept in a ``features`` ``nn.Sequential`` with torchvision's indices, so the
state dict is the same as ``torchvision.models.mobilenet_v3_large/small().features`` and torchvision's
ImageNet weight files load as they are. On top the class speaks segmentation-models-pytorch's encoder
interface (``out_channels``, ``output_stride``, ``forward -> [x, f1/2, f1/4, f1/8, f1/16, f1/32]``), so
every smp decoder accepts it.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig, _mobilenet_v3_conf
from torchvision.ops.misc import Conv2dNormActivation

VARIANTS = {"large": "mobilenet_v3_large", "small": "mobilenet_v3_small"}


def _dilate(configs: list[InvertedResidualConfig], output_stride: int) -> None:
    """Trade the strides that would go past ``output_stride`` for dilation, in place.

    Follows torchvision's convention for ``dilated=True``: the block that would downsample keeps its
    nominal ``stride=2`` in the config (``InvertedResidual`` then runs its depthwise conv at stride 1)
    and already uses the doubled dilation, as do all later blocks. The stem conv has stride 2.
    """
    stride, dilation = 2, 1
    for cnf in configs:
        if cnf.stride > 1:
            if stride * cnf.stride > output_stride:
                dilation *= cnf.stride
            else:
                stride *= cnf.stride
        cnf.dilation = dilation


class MobileNetV3Encoder(nn.Module, EncoderMixin):
    """MobileNetV3-Large/Small feature extractor with torchvision-compatible weights.

    Args:
        variant: ``"large"`` or ``"small"``.
        width_mult: channel multiplier of the paper (channels rounded to multiples of 8).
        reduced_tail: the paper's RF2 for segmentation: the last stage (and the final 1x1 conv) has half
            the channels.
        output_stride: 32 (plain), 16 (last stage dilated, the paper's segmentation setting) or 8.
        depth: how many downsampling stages the encoder returns features of (smp's ``depth``, 1..5).
        taps: where a resolution's feature is taken: ``"end"`` = output of the last block at that
            resolution (smp/timm convention), ``"start"`` = output of the block that changes the
            resolution (torchvision's LR-ASPP low-level tap). The deepest feature is always the output of
            the final 1x1 conv.
        in_channels: input channels (the first conv is patched for anything but 3).
    """

    def __init__(
        self,
        variant: Literal["large", "small"] = "large",
        *,
        width_mult: float = 1.0,
        reduced_tail: bool = False,
        output_stride: int = 32,
        depth: int = 5,
        taps: Literal["end", "start"] = "end",
        in_channels: int = 3,
    ) -> None:
        nn.Module.__init__(self)
        EncoderMixin.__init__(self)
        if variant not in VARIANTS:
            raise ValueError(f"MobileNetV3 variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"MobileNetV3 output_stride must be 8, 16 or 32, got {output_stride}")
        if not 1 <= depth <= 5:
            raise ValueError(f"MobileNetV3 encoder depth must be in 1..5, got {depth}")
        if taps not in ("end", "start"):
            raise ValueError(f"MobileNetV3 taps must be 'end' or 'start', got {taps!r}")
        self.variant = variant
        self.width_mult = width_mult
        self.reduced_tail = reduced_tail
        self.taps = taps

        configs, _ = _mobilenet_v3_conf(VARIANTS[variant], width_mult=width_mult, reduced_tail=reduced_tail)
        _dilate(configs, output_stride)
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # as torchvision's MobileNetV3
        stem_channels = configs[0].input_channels
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3,
                stem_channels,
                kernel_size=3,
                stride=2,
                norm_layer=norm_layer,
                activation_layer=nn.Hardswish,
            )
        ]
        layers += [InvertedResidual(cnf, norm_layer) for cnf in configs]
        last_in = configs[-1].out_channels
        layers.append(
            Conv2dNormActivation(
                last_in, 6 * last_in, kernel_size=1, norm_layer=norm_layer, activation_layer=nn.Hardswish
            )
        )

        # Structural taps: the nominal stride after each layer (stem = 2, then every stride-2 block).
        strides = [2]
        for cnf in configs:
            strides.append(strides[-1] * cnf.stride)
        strides.append(strides[-1])
        channels = [stem_channels] + [c.out_channels for c in configs] + [6 * last_in]
        levels = [2**k for k in range(1, 6)]
        if taps == "end":
            tap_index = [max(i for i, s in enumerate(strides) if s == level) for level in levels]
        else:
            tap_index = [min(i for i, s in enumerate(strides) if s == level) for level in levels]
        tap_index[-1] = len(layers) - 1  # the deepest feature is the whole stack's output
        tap_index = tap_index[:depth]

        self.features = nn.Sequential(*layers[: tap_index[-1] + 1])
        self._tap_index = tap_index
        #: index into ``features`` where the last (1/32) stage starts: the part ``reduced_tail`` changes
        self.tail_start = strides.index(32)
        self._depth = depth
        self._output_stride = output_stride
        self._out_channels = [3] + [channels[i] for i in tap_index]
        self._in_channels = 3
        self._init_weights()
        self.set_in_channels(in_channels, pretrained=False)

    def _init_weights(self) -> None:
        """torchvision's MobileNetV3 initialisation, so a random encoder starts where torchvision's does."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def tap_indices(self) -> list[int]:
        """Indices into ``features`` whose outputs the encoder returns (after the input itself)."""
        return list(self._tap_index)

    def make_dilated(self, output_stride: int) -> None:
        """smp calls this after construction; the dilation is already built in, so only check it."""
        if output_stride != self._output_stride:
            raise ValueError(
                f"MobileNetV3Encoder was built for output_stride={self._output_stride}; set it via "
                f"encoder_params.output_stride instead of re-dilating to {output_stride}"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[x, f1, ..., f_depth]`` at nominal strides 1, 2, 4, 8, 16, 32 (dilated ones repeat)."""
        features = [x]
        taps = self._tap_index
        k = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if k < len(taps) and i == taps[k]:
                features.append(x)
                k += 1
        return features

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Accept a full torchvision MobileNetV3 state dict too (``features.*`` plus a classifier)."""
        state_dict = _features_only(state_dict, self)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _features_only(state_dict, encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Keep the ``features.*`` entries this (possibly truncated) encoder has; drop classifier & co."""
    own = encoder.state_dict().keys()
    return {k: v for k, v in state_dict.items() if k in own}
