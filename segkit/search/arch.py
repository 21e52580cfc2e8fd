"""MobileNetV3 blocks with searched expansion sizes: describe, shrink (weight transplant), rebuild, save.

segkit's ``MobileNetV3Encoder`` builds its blocks from the fixed tables of the paper (times
``width_mult``); it takes no per-block configuration. The search therefore works on a built model: it
swaps single ``features[i]`` blocks for torchvision ``InvertedResidual`` blocks built from an
``InvertedResidualConfig`` with smaller widths. Module names stay the same, so an
adapted model is fully described by its base ``model_config`` plus per-block expansion and output widths
(:func:`build_adapted_model`), and it saves, loads and exports like any other segkit model.

Two kinds of change, as in the paper's NetAdapt: a block's expansion (inner) width, which touches no
other layer, and the bottleneck width of a residual group (:func:`shrink_group`), cut by the same
channels in every member so residual sums stay aligned. Blocks without an expansion conv
(``expanded == input``, e.g. the first block) are not shrinkable, and no width is allowed to make
torchvision drop an expansion conv or change whether a block is residual.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig
from torchvision.ops.misc import SqueezeExcitation

#: a search result's key in a segkit checkpoint (next to the usual ``model_config``/``model``)
SEARCH_KEY = "search"


@dataclass(frozen=True)
class BlockSpec:
    """The shape-defining fields of one inverted-residual block (Tables 1-2 of the paper).

    ``stride`` is the nominal one of the config (2 for a dilated block that no longer downsamples).
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
        """Whether the block has an expansion conv whose width can be searched."""
        return self.expanded_channels != self.input_channels


@dataclass
class _Parts:
    expand: nn.Sequential | None
    depthwise: nn.Sequential
    se: SqueezeExcitation | None
    project: nn.Sequential


def _parts(block: InvertedResidual) -> _Parts:
    layers = list(block.block)
    se = next((m for m in layers if isinstance(m, SqueezeExcitation)), None)
    convs = [m for m in layers if not isinstance(m, SqueezeExcitation)]
    if len(convs) == 3:
        return _Parts(convs[0], convs[1], se, convs[2])
    if len(convs) == 2:
        return _Parts(None, convs[0], se, convs[1])
    raise ValueError(f"not a torchvision InvertedResidual layout: {len(convs)} conv layers")


def block_spec(block: InvertedResidual) -> BlockSpec:
    """Read a block's :class:`BlockSpec` back from its layers."""
    if not isinstance(block, InvertedResidual):
        raise TypeError(f"expected a torchvision InvertedResidual, got {type(block).__name__}")
    p = _parts(block)
    dw: nn.Conv2d = p.depthwise[0]
    act = p.depthwise[2] if len(p.depthwise) > 2 else None
    return BlockSpec(
        input_channels=p.expand[0].in_channels if p.expand is not None else dw.in_channels,
        expanded_channels=dw.out_channels,
        out_channels=p.project[0].out_channels,
        kernel=dw.kernel_size[0],
        stride=2 if block._is_cn else 1,
        dilation=dw.dilation[0],
        use_se=p.se is not None,
        activation="HS" if isinstance(act, nn.Hardswish) else "RE",
    )


def _norm_layer(block: InvertedResidual) -> Any:
    bn: nn.BatchNorm2d = _parts(block).depthwise[1]
    return partial(nn.BatchNorm2d, eps=bn.eps, momentum=bn.momentum)


def new_block(spec: BlockSpec, like: InvertedResidual | None = None) -> InvertedResidual:
    """A fresh (untrained) block of ``spec``, with ``like``'s BatchNorm settings when given."""
    norm = _norm_layer(like) if like is not None else partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    return InvertedResidual(spec.config(), norm)


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
    out = new_block(replace(spec, expanded_channels=expanded), like=block).to(next(block.parameters()).device)
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
    return out, keep


def _plain_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(model_config, DictConfig):
        return OmegaConf.to_container(model_config, resolve=True)  # type: ignore[return-value]
    return copy.deepcopy(dict(model_config))


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
        features[index] = new_block(target, like=block)
    final = _final_conv(model)
    if final is not None and prev_out is not None and final[1][0].in_channels != prev_out:
        features[final[0]] = _sliced_final_conv(final[1], torch.arange(prev_out))
    return model


def build_adapted_model(
    model_config: Mapping[str, Any], expansions: Sequence[int], outs: Sequence[int] | None = None
) -> nn.Module:
    """Build ``model_config`` (``segkit.models.build_model`` keys) with per-block widths.

    ``expansions``: every block's expansion size; ``outs``: every block's output width (None: the
    config's). Random initial weights (the base config's ``encoder_weights`` are not loaded: their
    shapes differ); load a searched state dict into it.
    """
    from segkit.models import build_model

    cfg = _plain_config(model_config)
    cfg.pop("_target_", None)
    cfg["encoder_weights"] = None
    return apply_expansions(build_model(**cfg), expansions, outs)


def adapted_config(model: nn.Module) -> dict[str, Any]:
    """``{"model_config", "expanded_channels", "out_channels", "blocks"}``: what rebuilds ``model``."""
    base = getattr(model, "model_config", None)
    if base is None:
        raise ValueError("model has no model_config: build it with segkit.models.build_model/create_model")
    return {
        "model_config": _plain_config(base),
        "expanded_channels": expanded_channels(model),
        "out_channels": out_channels(model),
        "blocks": [asdict(block_spec(b)) for _, b in encoder_blocks(model)],
    }


def save_adapted(
    path: str | os.PathLike, model: nn.Module, *, input_size: Sequence[int] | None = None, **extra: Any
) -> Path:
    """Write a segkit checkpoint of an adapted model (``search.expanded_channels`` beside the usual keys).

    It loads like any segkit checkpoint (``Predictor.from_file``, ``python -m segkit.export``,
    ``build_model_from_checkpoint``) or with :func:`load_adapted`.
    """
    from segkit.engine.checkpoint import model_metadata, save_checkpoint

    cfg = adapted_config(model)
    meta = model_metadata(cfg["model_config"], input_size=list(input_size) if input_size else None)
    search = {"expanded_channels": cfg["expanded_channels"], "out_channels": cfg["out_channels"]}
    payload = {**meta, "model": model.state_dict(), SEARCH_KEY: search}
    payload.update(extra)
    return save_checkpoint(path, payload)


def load_adapted(path: str | os.PathLike) -> nn.Module:
    """Rebuild and load a model written by :func:`save_adapted` (eval mode).

    The same as ``build_model_from_checkpoint`` (which ``Predictor.from_file`` and the export command
    use), but refuses a checkpoint that is not a searched model.
    """
    from segkit.engine.checkpoint import build_model_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(path)
    search = ckpt.get(SEARCH_KEY)
    if not isinstance(search, Mapping) or "expanded_channels" not in search:
        raise ValueError(f"{path}: not a searched model (no '{SEARCH_KEY}.expanded_channels' entry)")
    return build_model_from_checkpoint(ckpt)


def export_adapted_onnx(
    model: nn.Module, path: str | os.PathLike, *, input_size: Sequence[int], name: str | None = None
) -> Path:
    """Export an adapted model as a segkit ONNX file (float NCHW input, logits) the Predictor can load.

    The metadata carries the usual keys plus ``expanded_channels``.
    """
    from segkit.data.cityscapes import IMAGENET_MEAN, IMAGENET_STD
    from segkit.export.metadata import build_metadata
    from segkit.export.onnx import ExportWrapper, export_onnx
    from segkit.labels import CLASS_NAMES, PALETTE

    cfg = adapted_config(model)
    num_classes = int(cfg["model_config"].get("num_classes", len(CLASS_NAMES)))
    class_names = (
        list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [f"class_{i}" for i in range(num_classes)]
    )
    palette = PALETTE if num_classes == len(CLASS_NAMES) else [[0, 0, 0]] * num_classes
    meta = build_metadata(
        model_name=name or cfg["model_config"].get("name") or "adapted",
        class_names=class_names,
        palette=palette,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=input_size,
        dynamic=False,
        preprocess=False,
        argmax=False,
        extra={"expanded_channels": cfg["expanded_channels"], "out_channels": cfg["out_channels"]},
    )
    wrapper = ExportWrapper(model, IMAGENET_MEAN, IMAGENET_STD)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return export_onnx(wrapper, path, input_size=input_size, metadata=meta)


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
    out = new_block(new_spec, like=block).to(next(block.parameters()).device)
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
    from torchvision.ops.misc import Conv2dNormActivation

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
    return out, keep


def out_channels(model: nn.Module) -> list[int]:
    """The output (bottleneck) width of every block, in order."""
    return [block_spec(b).out_channels for _, b in encoder_blocks(model)]
