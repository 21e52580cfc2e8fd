"""Shrink a MobileNetV3 model's blocks with exact weight transplant (NetAdapt's proposals).

A model's architecture is its block table (``encoder_params.blocks``, see
:mod:`segkit.models.encoders.mobilenetv3`), so a shrunk model needs no special class or file: every
function here returns a model whose ``model_config`` is the table of its new layers
(:func:`segkit.models.architecture_config`), which saves, loads, exports and trains like any other.

Two kinds of change, as in the paper's NetAdapt: a block's expansion (inner) width, which touches no
other layer, and the bottleneck width of a residual group (:func:`shrink_group`), cut by the same
channels in every member so residual sums stay aligned. Blocks without an expansion conv
(``expanded == input``, e.g. the first block) are not shrinkable, and no width is allowed to make
torchvision drop an expansion conv or change whether a block is residual.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from segkit.models import architecture_config, build_model_from_checkpoint
from segkit.models.encoders.mobilenetv3 import BlockSpec, block_layers, block_spec, new_block


def _parts(block: InvertedResidual) -> SimpleNamespace:
    """The ``expand``, ``depthwise``, ``se`` and ``project`` layers of a block (expand/SE may be None)."""
    expand, depthwise, se, project = block_layers(block)
    return SimpleNamespace(expand=expand, depthwise=depthwise, se=se, project=project)


def _norm_layer(block: InvertedResidual) -> Any:
    bn: nn.BatchNorm2d = _parts(block).depthwise[1]
    return partial(nn.BatchNorm2d, eps=bn.eps, momentum=bn.momentum)


def _new_block_like(spec: BlockSpec, like: InvertedResidual) -> InvertedResidual:
    """A fresh block of ``spec`` with ``like``'s BatchNorm settings, on ``like``'s device."""
    return new_block(spec, _norm_layer(like)).to(next(like.parameters()).device)


def _with_config(model: nn.Module) -> nn.Module:
    """``model`` with its ``model_config`` describing its current layers (the new block table)."""
    if getattr(model, "model_config", None) is not None:
        model.model_config = architecture_config(model)
    return model


def encoder_blocks(model: nn.Module) -> list[tuple[int, InvertedResidual]]:
    """``(index in encoder.features, block)`` for every inverted-residual block of a MobileNetV3 model."""
    features = getattr(getattr(model, "encoder", model), "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError(
            "the search needs a segkit MobileNetV3 model (model.encoder.features); "
            f"got {type(model).__name__}"
        )
    blocks = [(i, m) for i, m in enumerate(features) if isinstance(m, InvertedResidual)]
    if not blocks:
        raise ValueError("model.encoder.features has no InvertedResidual blocks")
    return blocks


def expanded_channels(model: nn.Module) -> list[int]:
    """The expansion size of every block, in order (the searched quantity)."""
    return [block_spec(b).expanded_channels for _, b in encoder_blocks(model)]


def _features(model: nn.Module) -> nn.Sequential:
    return getattr(model, "encoder", model).features


def channel_importance(block: InvertedResidual, norm: Literal["l1", "l2"] = "l1") -> torch.Tensor:
    """Importance of each expanded channel: the L1/L2 norm of its expansion filter (NetAdapt's choice)."""
    p = _parts(block)
    if p.expand is None:
        raise ValueError("block has no expansion conv: its expanded channels are its inputs")
    return _row_norm(p.expand[0].weight, norm)


def _row_norm(w: torch.Tensor, norm: str) -> torch.Tensor:
    flat = w.detach().reshape(w.shape[0], -1)
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l2":
        return flat.pow(2).sum(1).sqrt()
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending index order (ties: lower index first)."""
    order = torch.sort(-scores, stable=True).indices[:k]
    return torch.sort(order).values


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx: torch.Tensor | None) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        s = getattr(src, name)
        getattr(dst, name).copy_(s if idx is None else s[idx])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _copy_conv(dst: nn.Conv2d, w: torch.Tensor, b: torch.Tensor | None = None) -> None:
    dst.weight.copy_(w)
    if b is not None:
        dst.bias.copy_(b)


@torch.no_grad()
def shrink_block(
    block: InvertedResidual, expanded: int, norm: Literal["l1", "l2"] = "l1"
) -> tuple[InvertedResidual, dict[str, torch.Tensor]]:
    """A copy of ``block`` with ``expanded`` expansion channels, keeping the largest-norm filters.

    Every kept channel keeps its weights exactly: expansion conv rows, depthwise filters, both
    BatchNorms' affine parameters *and running statistics*, squeeze-excite columns/rows and projection
    columns. torchvision sizes the squeeze-excite bottleneck from the expansion
    (``make_divisible(expanded // 4, 8)``); when that shrinks too, its channels with the largest
    ``fc1`` norm (over the kept inputs) are kept.

    Returns the new block and the kept indices: ``{"expanded": ..., "squeeze": ...}`` (``squeeze`` is
    empty without squeeze-excite).
    """
    spec = block_spec(block)
    if not spec.shrinkable:
        raise ValueError("block has no expansion conv (expanded == input channels): nothing to shrink")
    if expanded == spec.input_channels:
        raise ValueError(
            f"expanded={expanded} equals the block's input channels: torchvision would drop the "
            "expansion conv"
        )
    if not 8 <= expanded <= spec.expanded_channels:
        raise ValueError(f"expanded must be in 8..{spec.expanded_channels}, got {expanded}")
    keep = _top(channel_importance(block, norm), expanded)
    out = _new_block_like(replace(spec, expanded_channels=expanded), block)
    old, new = _parts(block), _parts(out)
    assert old.expand is not None and new.expand is not None
    _copy_conv(new.expand[0], old.expand[0].weight[keep])
    _copy_bn(new.expand[1], old.expand[1], keep)
    _copy_conv(new.depthwise[0], old.depthwise[0].weight[keep])
    _copy_bn(new.depthwise[1], old.depthwise[1], keep)
    keep_sq = torch.zeros(0, dtype=torch.long)
    if old.se is not None and new.se is not None:
        fc1_w = old.se.fc1.weight[:, keep]
        keep_sq = _top(_row_norm(fc1_w, norm), new.se.fc1.out_channels)
        _copy_conv(new.se.fc1, fc1_w[keep_sq], old.se.fc1.bias[keep_sq])
        _copy_conv(new.se.fc2, old.se.fc2.weight[keep][:, keep_sq], old.se.fc2.bias[keep])
    _copy_conv(new.project[0], old.project[0].weight[:, keep])
    _copy_bn(new.project[1], old.project[1], None)
    out.train(block.training)
    return out, {"expanded": keep, "squeeze": keep_sq}


def shrink_model(
    model: nn.Module, block: int, expanded: int, norm: Literal["l1", "l2"] = "l1"
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A deep copy of ``model`` whose ``block``-th inverted residual has ``expanded`` channels."""
    blocks = encoder_blocks(model)
    if not 0 <= block < len(blocks):
        raise ValueError(f"block must be in 0..{len(blocks) - 1}, got {block}")
    index, old = blocks[block]
    shrunk, keep = shrink_block(old, expanded, norm)
    out = copy.deepcopy(model)
    _features(out)[index] = shrunk
    return _with_config(out), keep


def apply_expansions(
    model: nn.Module, expansions: Sequence[int], outs: Sequence[int] | None = None
) -> nn.Module:
    """Replace (in place) every block whose widths differ from ``expansions`` (and ``outs``) by a fresh one.

    ``outs`` are the blocks' output (bottleneck) widths; a block's input is the previous block's output.
    The final 1x1 conv follows the last block's width. Widths that would change a block's layout (add or
    drop its expansion conv or residual connection) or a width the decoder reads are refused.
    """
    blocks = encoder_blocks(model)
    for name, values in (("expanded_channels", expansions), ("out_channels", outs)):
        if values is not None and len(values) != len(blocks):
            raise ValueError(f"{name} has {len(values)} entries, the model has {len(blocks)} blocks")
    features = _features(model)
    taps = set(getattr(getattr(model, "encoder", model), "tap_indices", []))
    prev_out: int | None = None
    for k, (index, block) in enumerate(blocks):
        spec = block_spec(block)
        target = replace(
            spec,
            input_channels=spec.input_channels if prev_out is None else prev_out,
            expanded_channels=int(expansions[k]),
            out_channels=spec.out_channels if outs is None else int(outs[k]),
        )
        prev_out = target.out_channels
        if target == spec:
            continue
        residual = spec.stride == 1 and spec.input_channels == spec.out_channels
        keeps_residual = residual == (target.stride == 1 and target.input_channels == target.out_channels)
        if target.shrinkable != spec.shrinkable or not keeps_residual:
            t, o = target, spec
            raise ValueError(
                f"block {k}: widths {t.input_channels}->{t.expanded_channels}->{t.out_channels} would change "
                f"its layout (was {o.input_channels}->{o.expanded_channels}->{o.out_channels})"
            )
        if target.out_channels != spec.out_channels and index in taps:
            raise ValueError(f"out_channels[{k}]: block {k}'s output is a decoder input; its width is fixed")
        features[index] = _new_block_like(target, block)
    final = _final_conv(model)
    if final is not None and prev_out is not None and final[1][0].in_channels != prev_out:
        features[final[0]] = _sliced_final_conv(final[1], torch.arange(prev_out))
    return _with_config(model)


# --- bottleneck (residual group) width --------------------------------------------------------------
#
# The paper's second kind of NetAdapt proposal: shrink the bottleneck width shared by a residual group
# (the block that produces it and the residual blocks that add to it), the same channels removed in all
# of them so the residual sums stay aligned; the layer after the group loses the same input channels.


@dataclass(frozen=True)
class ResidualGroup:
    """Blocks (positions) sharing one bottleneck width: a producer, then residual blocks; and its consumer.

    ``consumer`` is the ``encoder.features`` index of the layer reading the group's output (the next
    block or the final 1x1 conv).
    """

    blocks: tuple[int, ...]
    channels: int
    consumer: int


def _final_conv(model: nn.Module) -> tuple[int, nn.Module] | None:
    features = _features(model)
    last = len(features) - 1
    m = features[last]
    if isinstance(m, InvertedResidual) or not isinstance(m[0], nn.Conv2d) or m[0].kernel_size != (1, 1):
        return None
    return last, m


def residual_groups(model: nn.Module) -> list[ResidualGroup]:
    """The residual groups whose width can be searched.

    A group qualifies when its producer is a block (not the stem), every member and the consumer have an
    expansion conv (whose inputs can be sliced), and none of its outputs is an encoder feature tap
    (a tapped width feeds the decoder, whose layers this module does not resize).
    """
    blocks = encoder_blocks(model)
    taps = set(getattr(getattr(model, "encoder", model), "tap_indices", []))
    final = _final_conv(model)
    groups = []
    k = 0
    while k < len(blocks):
        members = [k]
        while k + 1 < len(blocks) and blocks[k + 1][1].use_res_connect:
            k += 1
            members.append(k)
        k += 1
        specs = [block_spec(blocks[m][1]) for m in members]
        if len(members) < 2 or blocks[members[0]][1].use_res_connect:
            continue  # no residual block, or the producer is the stem (the group starts with a residual)
        if not all(s.shrinkable for s in specs):
            continue
        if any(blocks[m][0] in taps for m in members):
            continue
        last = members[-1]
        if last + 1 < len(blocks):
            consumer = blocks[last + 1][0]
            if not block_spec(blocks[last + 1][1]).shrinkable:
                continue
        elif final is not None:
            consumer = final[0]
        else:
            continue
        groups.append(ResidualGroup(tuple(members), specs[0].out_channels, consumer))
    return groups


def group_importance(
    model: nn.Module, group: ResidualGroup, norm: Literal["l1", "l2"] = "l1"
) -> torch.Tensor:
    """Importance of each bottleneck channel: summed norms of the rows writing it (every projection)."""
    blocks = encoder_blocks(model)
    return sum(_row_norm(_parts(blocks[b][1]).project[0].weight, norm) for b in group.blocks)  # type: ignore[return-value]


def _sliced_block(
    block: InvertedResidual, in_keep: torch.Tensor | None, out_keep: torch.Tensor | None
) -> InvertedResidual:
    """A copy of ``block`` reading only ``in_keep`` input channels and writing only ``out_keep`` outputs."""
    spec = block_spec(block)
    new_spec = replace(
        spec,
        input_channels=spec.input_channels if in_keep is None else len(in_keep),
        out_channels=spec.out_channels if out_keep is None else len(out_keep),
    )
    out = _new_block_like(new_spec, block)
    old_p, new_p = _parts(block), _parts(out)
    if (old_p.expand is None) != (new_p.expand is None):
        raise ValueError(f"new width would change the block's layout ({spec} -> {new_spec})")
    state = {}
    expand_prefix = "block.0.0." if old_p.expand is not None else None
    project_prefix = f"block.{len(block.block) - 1}."
    for name, value in block.state_dict().items():
        if expand_prefix and name == expand_prefix + "weight" and in_keep is not None:
            value = value[:, in_keep]
        elif name.startswith(project_prefix) and out_keep is not None and value.ndim > 0:
            value = value[out_keep]
        state[name] = value
    out.load_state_dict(state)
    out.train(block.training)
    return out


def _sliced_final_conv(conv: nn.Module, in_keep: torch.Tensor) -> nn.Module:
    c, bn = conv[0], conv[1]
    act = type(conv[2]) if len(conv) > 2 else None
    new = Conv2dNormActivation(
        len(in_keep), c.out_channels, kernel_size=1,
        norm_layer=partial(nn.BatchNorm2d, eps=bn.eps, momentum=bn.momentum), activation_layer=act,
    ).to(c.weight.device)  # fmt: skip
    state = conv.state_dict()
    state["0.weight"] = state["0.weight"][:, in_keep]
    new.load_state_dict(state)
    new.train(conv.training)
    return new


def group_forbidden_widths(model: nn.Module, group: ResidualGroup) -> set[int]:
    """Widths the group cannot take: the expansion sizes of the blocks whose input it is."""
    blocks = encoder_blocks(model)
    readers = [blocks[b][1] for b in group.blocks[1:]]
    consumer = _features(model)[group.consumer]
    if isinstance(consumer, InvertedResidual):
        readers.append(consumer)
    return {block_spec(b).expanded_channels for b in readers}


@torch.no_grad()
def shrink_group(
    model: nn.Module, group: ResidualGroup, channels: int, norm: Literal["l1", "l2"] = "l1"
) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` whose residual ``group`` is ``channels`` wide, and the kept channel indices.

    The same channels (largest summed projection norms) are kept in every member, so the residual
    additions stay aligned; kept weights and BatchNorm statistics are copied exactly.
    """
    blocks = encoder_blocks(model)
    if not 8 <= channels < group.channels or channels % 8:
        raise ValueError(f"group width must be a multiple of 8 in 8..{group.channels - 8}, got {channels}")
    if channels in group_forbidden_widths(model, group):
        raise ValueError(
            f"group width {channels} equals the expansion of a block reading it: torchvision would drop "
            "that block's expansion conv"
        )
    keep = _top(group_importance(model, group, norm), channels)
    out = copy.deepcopy(model)
    features = _features(out)
    for n, b in enumerate(group.blocks):
        index = blocks[b][0]
        features[index] = _sliced_block(features[index], None if n == 0 else keep, keep)
    consumer = features[group.consumer]
    if isinstance(consumer, InvertedResidual):
        features[group.consumer] = _sliced_block(consumer, keep, None)
    else:
        features[group.consumer] = _sliced_final_conv(consumer, keep)
    return _with_config(out), keep


def out_channels(model: nn.Module) -> list[int]:
    """The output (bottleneck) width of every block, in order."""
    return [block_spec(b).out_channels for _, b in encoder_blocks(model)]


def load_adapted(path: str | os.PathLike) -> nn.Module:
    """The model of a checkpoint written by a search, in eval mode.

    Kept for existing callers: an adapted model is an ordinary checkpoint (its block table is in its
    ``model_config``), so this is :func:`segkit.models.build_model_from_checkpoint`.
    """
    return build_model_from_checkpoint(path)
