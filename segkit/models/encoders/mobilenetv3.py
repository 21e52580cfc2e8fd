"""MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3") as a segmentation encoder, built from a
block table.

An architecture is data: a stem width, one row per inverted-residual block (kernel, expanded width,
output width, squeeze-and-excite, activation, stride: Tables 1-2 of the paper, the fields of torchvision's
``InvertedResidualConfig``) and the width of the final 1x1 convolution. Without a table the encoder
builds the paper's Large or Small one (torchvision's ``_mobilenet_v3_conf``); a searched or shrunk
architecture is just another table in ``encoder_params.blocks``, so it needs no special class or file.

The layers are torchvision's own (``InvertedResidual``, ``Conv2dNormActivation``), kept in a
``features`` ``nn.Sequential`` with torchvision's indices, so the default tables' state dicts equal
``torchvision.models.mobilenet_v3_large/small().features`` and torchvision's ImageNet weights load as
they are. On top the class speaks segmentation-models-pytorch's encoder interface (``out_channels``,
``output_stride``, ``forward -> [x, f1/2, f1/4, f1/8, f1/16, f1/32]``), so every smp decoder accepts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig, _mobilenet_v3_conf
from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

VARIANTS = {"large": "mobilenet_v3_large", "small": "mobilenet_v3_small"}
#: the columns of a block-table row in ``encoder_params.blocks``
ROW_FIELDS = ("kernel", "expanded_channels", "out_channels", "use_se", "activation", "stride")
#: BatchNorm settings of torchvision's MobileNetV3
NORM_LAYER = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block, resolved: the fields of torchvision's ``InvertedResidualConfig``.

    ``stride`` is the nominal one (2 for a dilated block that no longer downsamples); ``dilation`` follows
    from the encoder's output stride. The latency table keys its entries by this record plus the input
    size.
    """

    input_channels: int
    expanded_channels: int
    out_channels: int
    kernel: int
    stride: int
    dilation: int
    use_se: bool
    activation: Literal["HS", "RE"]

    def config(self) -> InvertedResidualConfig:
        """torchvision's config for this block (``width_mult=1``: channels are already final)."""
        for name in ("input_channels", "expanded_channels", "out_channels"):
            c = getattr(self, name)
            if c < 8 or c % 8:
                raise ValueError(f"{name}={c}: MobileNetV3 channel counts must be multiples of 8 (>= 8)")
        return InvertedResidualConfig(
            self.input_channels,
            self.kernel,
            self.expanded_channels,
            self.out_channels,
            self.use_se,
            self.activation,
            self.stride,
            self.dilation,
            width_mult=1.0,
        )

    @property
    def shrinkable(self) -> bool:
        """Whether the block has an expansion conv (torchvision drops it when expanded == input)."""
        return self.expanded_channels != self.input_channels

    @property
    def residual(self) -> bool:
        """Whether torchvision adds the block's input to its output."""
        return self.stride == 1 and self.input_channels == self.out_channels

    def row(self) -> list[Any]:
        """The block's row in a block table: ``[kernel, expanded, out, use_se, activation, stride]``."""
        return [
            self.kernel,
            self.expanded_channels,
            self.out_channels,
            self.use_se,
            self.activation,
            self.stride,
        ]


def new_block(spec: BlockSpec, norm_layer: Any = NORM_LAYER) -> InvertedResidual:
    """A freshly initialised torchvision block of ``spec``."""
    return InvertedResidual(spec.config(), norm_layer)


def block_layers(block: InvertedResidual) -> tuple[nn.Module | None, nn.Module, nn.Module | None, nn.Module]:
    """(expand, depthwise, squeeze-excite, project) of a torchvision block (expand/SE may be None)."""
    layers = list(block.block)
    se = next((m for m in layers if isinstance(m, SqueezeExcitation)), None)
    convs = [m for m in layers if not isinstance(m, SqueezeExcitation)]
    if len(convs) == 3:
        return convs[0], convs[1], se, convs[2]
    if len(convs) == 2:
        return None, convs[0], se, convs[1]
    raise ValueError(f"not a torchvision InvertedResidual layout: {len(convs)} conv layers")


def block_spec(block: nn.Module) -> BlockSpec:
    """Read a block's :class:`BlockSpec` back from its layers (what a shrunk block now is)."""
    if not isinstance(block, InvertedResidual):
        raise TypeError(f"expected a torchvision InvertedResidual, got {type(block).__name__}")
    expand, depthwise, se, project = block_layers(block)
    dw: nn.Conv2d = depthwise[0]
    act = depthwise[2] if len(depthwise) > 2 else None
    return BlockSpec(
        input_channels=expand[0].in_channels if expand is not None else dw.in_channels,
        expanded_channels=dw.out_channels,
        out_channels=project[0].out_channels,
        kernel=dw.kernel_size[0],
        stride=2 if block._is_cn else 1,
        dilation=dw.dilation[0],
        use_se=se is not None,
        activation="HS" if isinstance(act, nn.Hardswish) else "RE",
    )


def paper_table(
    variant: str, *, width_mult: float = 1.0, reduced_tail: bool = False
) -> tuple[int, list[list[Any]], int]:
    """``(stem_channels, rows, last_channels)`` of the paper's Large or Small network (RF2 if
    ``reduced_tail``), with ``width_mult`` applied: the default of :class:`MobileNetV3Encoder`."""
    if variant not in VARIANTS:
        raise ValueError(f"MobileNetV3 variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    configs, _ = _mobilenet_v3_conf(VARIANTS[variant], width_mult=width_mult, reduced_tail=reduced_tail)
    rows = [
        [c.kernel, c.expanded_channels, c.out_channels, c.use_se, "HS" if c.use_hs else "RE", c.stride]
        for c in configs
    ]
    return configs[0].input_channels, rows, 6 * configs[-1].out_channels


def _parse_row(row: Any, index: int) -> dict[str, Any]:
    if isinstance(row, Mapping):
        unknown = sorted(set(row) - set(ROW_FIELDS))
        missing = [f for f in ROW_FIELDS if f not in row]
        if unknown or missing:
            raise ValueError(
                f"encoder_params.blocks[{index}]: a row has the keys {list(ROW_FIELDS)}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        values = [row[f] for f in ROW_FIELDS]
    elif isinstance(row, Sequence) and not isinstance(row, str) and len(row) == len(ROW_FIELDS):
        values = list(row)
    else:
        raise ValueError(
            f"encoder_params.blocks[{index}]: expected [kernel, expanded, out, use_se, activation, stride], "
            f"got {row!r}"
        )
    kernel, expanded, out, use_se, activation, stride = values
    if activation not in ("HS", "RE"):
        raise ValueError(
            f"encoder_params.blocks[{index}]: activation must be 'HS' or 'RE', got {activation!r}"
        )
    if int(stride) not in (1, 2) or int(kernel) not in (3, 5, 7) or not isinstance(use_se, bool):
        raise ValueError(
            f"encoder_params.blocks[{index}]: stride must be 1 or 2, kernel 3, 5 or 7 and use_se a bool, "
            f"got {row!r}"
        )
    return {
        "kernel": int(kernel),
        "expanded_channels": int(expanded),
        "out_channels": int(out),
        "use_se": use_se,
        "activation": activation,
        "stride": int(stride),
    }


def resolve_blocks(
    rows: Sequence[Any], *, stem_channels: int, output_stride: int, width_mult: float = 1.0
) -> list[BlockSpec]:
    """Block specs of a table: input widths chained from the stem, ``width_mult`` applied to every width,
    and the strides that would go past ``output_stride`` traded for dilation.

    Follows torchvision's convention for ``dilated=True``: the block that would downsample keeps its
    nominal ``stride=2`` (``InvertedResidual`` then runs its depthwise conv at stride 1) and already uses
    the doubled dilation, as do all later blocks. The stem conv has stride 2.
    """
    if not rows:
        raise ValueError("encoder_params.blocks is empty: a MobileNetV3 needs at least one block")
    adjust = InvertedResidualConfig.adjust_channels
    specs = []
    channels = adjust(stem_channels, width_mult)
    stride, dilation = 2, 1
    for i, row in enumerate(rows):
        r = _parse_row(row, i)
        if r["stride"] > 1:
            if stride * r["stride"] > output_stride:
                dilation *= r["stride"]
            else:
                stride *= r["stride"]
        spec = BlockSpec(
            input_channels=channels,
            expanded_channels=adjust(r["expanded_channels"], width_mult),
            out_channels=adjust(r["out_channels"], width_mult),
            kernel=r["kernel"],
            stride=r["stride"],
            dilation=dilation,
            use_se=r["use_se"],
            activation=r["activation"],
        )
        spec.config()  # validates the widths
        specs.append(spec)
        channels = spec.out_channels
    downsampling = sum(s.stride > 1 for s in specs)
    if downsampling != 4:
        raise ValueError(
            "encoder_params.blocks: a MobileNetV3 table needs exactly four stride-2 blocks (the stem is the "
            f"fifth downsampling), got {downsampling}"
        )
    return specs


class MobileNetV3Encoder(nn.Module, EncoderMixin):
    """MobileNetV3 feature extractor built from a block table (default: the paper's Large/Small).

    Args:
        variant: ``"large"`` or ``"small"``: the default table (and the torchvision ImageNet weights).
        blocks: the block table, one row ``[kernel, expanded, out, use_se, activation, stride]`` per
            inverted residual (or a mapping with those keys); ``None``: the variant's paper table.
        stem_channels: width of the stem conv (default: the table's 16).
        last_channels: width of the final 1x1 conv (default: 6 x the last block's output width).
        width_mult: channel multiplier of the paper (channels rounded to multiples of 8); applies to an
            explicit table too.
        reduced_tail: the paper's RF2 for segmentation: the default table's last stage (and the final 1x1
            conv) at half width. Only for the default table: an explicit table states its tail's widths.
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
        blocks: Sequence[Any] | None = None,
        stem_channels: int | None = None,
        last_channels: int | None = None,
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
        if not width_mult > 0:
            raise ValueError(f"MobileNetV3 width_mult must be positive, got {width_mult}")
        self.variant = variant
        self.width_mult = width_mult
        self.reduced_tail = reduced_tail
        self.taps = taps

        if blocks is None:
            stem, rows, last = paper_table(variant, width_mult=width_mult, reduced_tail=reduced_tail)
            scale = 1.0  # the paper table already has width_mult applied
        else:
            if reduced_tail:
                raise ValueError(
                    "encoder_params.reduced_tail halves the paper table's last stage; with "
                    "encoder_params.blocks the table states its own widths: set reduced_tail=false"
                )
            stem, rows, last, scale = 16, list(blocks), None, width_mult
        adjust = InvertedResidualConfig.adjust_channels
        stem = adjust(stem, scale) if stem_channels is None else adjust(int(stem_channels), width_mult)
        specs = resolve_blocks(rows, stem_channels=stem, output_stride=output_stride)
        if last_channels is not None:
            last = adjust(int(last_channels), width_mult)
        elif last is None:
            last = 6 * specs[-1].out_channels
        layers: list[nn.Module] = [
            Conv2dNormActivation(
                3, stem, kernel_size=3, stride=2, norm_layer=NORM_LAYER, activation_layer=nn.Hardswish
            )
        ]
        layers += [new_block(spec) for spec in specs]
        layers.append(
            Conv2dNormActivation(
                specs[-1].out_channels,
                last,
                kernel_size=1,
                norm_layer=NORM_LAYER,
                activation_layer=nn.Hardswish,
            )
        )

        # Structural taps: the nominal stride after each layer (stem = 2, then every stride-2 block).
        strides = [2]
        for spec in specs:
            strides.append(strides[-1] * spec.stride)
        strides.append(strides[-1])
        channels = [stem] + [s.out_channels for s in specs] + [last]
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
        self._table = (stem, [s.row() for s in specs], last)
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

    def block_specs(self) -> list[BlockSpec]:
        """The :class:`BlockSpec` of every inverted residual, read from the live layers."""
        return [block_spec(m) for m in self.features if isinstance(m, InvertedResidual)]

    def architecture(self) -> dict[str, Any]:
        """``{"stem_channels", "blocks", "last_channels"}`` of the live layers (after any shrinking): with
        ``width_mult=1`` and ``reduced_tail=false`` these ``encoder_params`` rebuild this encoder."""
        stem, rows, last = self._table
        features = list(self.features)
        stem = features[0][0].out_channels
        live = [block_spec(m).row() for m in features if isinstance(m, InvertedResidual)]
        rows = live + rows[len(live) :]  # blocks past a shallow ``depth`` keep their table rows
        tail = features[-1]
        if not isinstance(tail, InvertedResidual) and len(features) == len(rows) + 2:
            last = tail[0].out_channels
        return {"stem_channels": int(stem), "blocks": rows, "last_channels": int(last)}

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


__all__ = [
    "ROW_FIELDS",
    "VARIANTS",
    "BlockSpec",
    "MobileNetV3Encoder",
    "block_layers",
    "block_spec",
    "new_block",
    "paper_table",
    "resolve_blocks",
]
