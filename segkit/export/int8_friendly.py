"""Export-time rewrites that give onnxruntime's int8 kernels the graph they run fastest, same function.

* Hard-swish / hard-sigmoid: onnxruntime has no int8 kernel for ``HardSigmoid`` (and splits
  ``HardSwish`` into ``HardSigmoid`` + ``Mul``), so in a QDQ graph every MobileNetV3 activation becomes
  DequantizeLinear -> fp32 HardSigmoid -> QuantizeLinear: about half of the int8 model's time. Written
  with Mul/Add/Clip instead (mathematically the same function), the quantizer wraps them in QDQ and
  onnxruntime fuses them into QLinearMul / QLinearAdd, with the Clip folded into the requantization.
* Depthwise channel counts: onnxruntime's fast int8 depthwise kernel on x86 takes channel counts that
  are multiples of 16; MobileNetV3's 72, 120, 184 and 200 fall back to a generic kernel that is 2-4x
  slower than the fp32 one. :func:`pad_depthwise_channels` adds channels that stay exactly zero.
* Fixed-size graphs: a space-to-depth stem (:func:`~segkit.export.int8_graph.space_to_depth_stem`).

Only the exported graph changes: the module rewrites work on a deep copy that shares no parameters
with the original model, whose state dict stays as it was.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.ops.misc import SqueezeExcitation

from segkit.export.int8_graph import space_to_depth_stem
from segkit.export.onnx import export_onnx

#: onnxruntime's x86 int8 depthwise kernel (MLAS ConvSym) needs channel counts that are multiples of this
DEPTHWISE_CHANNEL_MULTIPLE = 16


class DecomposedHardsigmoid(nn.Module):
    """``hardsigmoid(x) = clip(x / 6 + 1/2, 0, 1)`` as Mul, Add and Clip nodes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


class DecomposedHardswish(nn.Module):
    """``hardswish(x) = x * hardsigmoid(x)`` as Mul, Add, Clip and Mul nodes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


def int8_friendly(model: nn.Module, *, pad_depthwise: bool = True) -> nn.Module:
    """A deep copy of ``model`` with decomposed hard activations and 16-aligned depthwise channels.

    ``nn.Hardswish``/``nn.Hardsigmoid`` modules become :class:`DecomposedHardswish` /
    :class:`DecomposedHardsigmoid`, and :func:`pad_depthwise_channels` runs on the copy (unless
    ``pad_depthwise`` is false). Returns ``model`` itself (not a copy) when neither applies. Functional
    calls (``F.hardswish`` inside a ``forward``) are not rewritten; segkit's and torchvision's
    MobileNetV3 use modules only.
    """
    hard = any(isinstance(m, (nn.Hardswish, nn.Hardsigmoid)) for m in model.modules())
    pad = pad_depthwise and any(_depthwise_padding(m) for m in model.modules())
    if not hard and not pad:
        return model
    out = copy.deepcopy(model)
    for module in list(out.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Hardswish):
                setattr(module, name, DecomposedHardswish())
            elif isinstance(child, nn.Hardsigmoid):
                setattr(module, name, DecomposedHardsigmoid())
    if pad:
        pad_depthwise_channels(out)
    return out.train(model.training)


def _depthwise_padding(block: nn.Module, multiple: int = DEPTHWISE_CHANNEL_MULTIPLE) -> int:
    """How many channels :func:`pad_depthwise_channels` would add to ``block`` (0: not a candidate)."""
    if not isinstance(block, InvertedResidual) or len(block.block) < 3:
        return 0
    expand, depthwise = block.block[0], block.block[1]
    if expand[0].groups != 1 or depthwise[0].groups != depthwise[0].in_channels:
        return 0  # no expansion conv to widen (the block's input is the depthwise input)
    return -depthwise[0].in_channels % multiple


def pad_depthwise_channels(model: nn.Module, multiple: int = DEPTHWISE_CHANNEL_MULTIPLE) -> int:
    """Widen the expanded (depthwise) channels of every MobileNetV3 block to a multiple of ``multiple``.

    The added channels are exactly zero all the way: the expansion conv gets zero filters and its
    BatchNorm zero scale and shift (so the activation sees 0 and gives 0), the depthwise conv zero
    filters, squeeze-and-excitation zero input weights (its pooled mean is unchanged) and gates that only
    ever multiply zeros, and the projection conv zero input weights. The block computes the same function
    with a channel count onnxruntime's fast int8 depthwise kernel accepts. Works in place on torchvision
    ``InvertedResidual`` blocks in eval mode (BatchNorm running statistics); returns how many changed.
    """
    changed = 0
    for block in model.modules():
        extra = _depthwise_padding(block, multiple)
        if not extra:
            continue
        layers = list(block.block)
        expand, depthwise, project = layers[0], layers[1], layers[-1]
        _grow_conv(expand[0], extra_out=extra)
        _grow_batchnorm(expand[1], extra)
        _grow_conv(depthwise[0], extra_out=extra)
        _grow_batchnorm(depthwise[1], extra)
        for se in layers[2:-1]:
            if isinstance(se, SqueezeExcitation):
                _grow_conv(se.fc1, extra_in=extra)
                _grow_conv(se.fc2, extra_out=extra)
        _grow_conv(project[0], extra_in=extra)
        changed += 1
    return changed


def _grow_conv(conv: nn.Conv2d, *, extra_out: int = 0, extra_in: int = 0) -> None:
    """Append zero output filters / zero input channels to ``conv`` in place (depthwise: both at once)."""
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    w = conv.weight.data
    if extra_out:
        w = torch.cat([w, w.new_zeros((extra_out, *w.shape[1:]))])
        if conv.bias is not None:
            conv.bias = nn.Parameter(torch.cat([conv.bias.data, conv.bias.data.new_zeros(extra_out)]))
        conv.out_channels += extra_out
        if depthwise:
            conv.in_channels += extra_out
            conv.groups += extra_out
    if extra_in:
        w = torch.cat([w, w.new_zeros((w.shape[0], extra_in, *w.shape[2:]))], dim=1)
        conv.in_channels += extra_in
    conv.weight = nn.Parameter(w)


def _grow_batchnorm(bn: nn.BatchNorm2d, extra: int) -> None:
    """Append channels that map anything to 0 (scale 0, shift 0, mean 0, variance 1)."""
    bn.weight = nn.Parameter(torch.cat([bn.weight.data, bn.weight.data.new_zeros(extra)]))
    bn.bias = nn.Parameter(torch.cat([bn.bias.data, bn.bias.data.new_zeros(extra)]))
    bn.running_mean = torch.cat([bn.running_mean, bn.running_mean.new_zeros(extra)])
    bn.running_var = torch.cat([bn.running_var, bn.running_var.new_ones(extra)])
    bn.num_features += extra


def export_quantization_source(
    wrapper: nn.Module,
    output: str | os.PathLike,
    *,
    input_size: Sequence[int],
    metadata: Mapping[str, Any],
    dynamic: bool = False,
    opset: int = 17,
    pad_depthwise: bool = True,
    batch: int | None = None,
) -> Path:
    """Export ``wrapper`` (an :class:`~segkit.export.onnx.ExportWrapper`) as the fp32 graph to quantize.

    The same function as the regular export, written for int8: hard-swish/hard-sigmoid decomposed and
    depthwise widths padded to multiples of 16 (:func:`int8_friendly`) and, for a fixed input size, a
    space-to-depth stem (:func:`space_to_depth_stem`; constant Resize scales come with every fixed-size
    export). The regular fp32 file keeps the fused ``HardSwish`` and the original widths, which is what
    onnxruntime runs fastest in fp32. The final upsampling stays a Resize here, so the quantizer can
    leave it in fp32; :func:`~segkit.export.quantize.quantize_int8` rewrites it afterwards.
    """
    import onnx

    path = export_onnx(
        int8_friendly(wrapper, pad_depthwise=pad_depthwise),
        output,
        input_size=input_size,
        metadata=metadata,
        dynamic=dynamic,
        opset=opset,
        batch=batch,
        final_upsampling=False,
    )
    if not dynamic:
        model = onnx.load(str(path))
        if space_to_depth_stem(model):
            onnx.checker.check_model(model)
            onnx.save_model(model, str(path), save_as_external_data=False)
    return Path(path)
