"""ONNX export of a segkit model: one self-contained file, optional in-graph preprocessing and argmax.

The exported graph wraps the network in :class:`ExportWrapper`, so the same module runs in PyTorch for
the verification and in onnxruntime afterwards. The TorchScript-based exporter (``dynamo=False``) writes
the weights inside the .onnx file (no external-data side file) and maps ``nn.Hardswish`` to a single
``HardSwish`` node.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkit.export.upsampling import classify_before_upsampling, static_resize_scales, upsample_by_phases
from segkit.formats.atomic import atomic_write
from segkit.formats.metadata import set_onnx_metadata

#: Lowest opset written (HardSwish needs 14; 17 is the oldest onnxruntime-mobile target we support).
MIN_OPSET = 17


class ExportWrapper(nn.Module):
    """The network plus the optional in-graph steps of an export.

    ``preprocess``: input is uint8 N x H x W x 3 RGB, converted and normalised inside the graph.
    ``argmax``: output is the uint8 N x H x W trainId mask instead of float32 N x C x H x W logits.
    Logits smaller than the input (a model that does not upsample itself) are upsampled bilinearly.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        preprocess: bool = False,
        argmax: bool = False,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.preprocess = preprocess
        self.argmax = argmax
        scale = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("offset", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_scale", 1.0 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess:
            x = (x.permute(0, 3, 1, 2).float() - self.offset) * self.inv_scale
        out: Any = self.model(x)
        if isinstance(out, Mapping):
            out = out["out"]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if out.shape[-2:] != x.shape[-2:]:
            out = nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.argmax:
            return out.argmax(1).to(torch.uint8)
        return out


def check_batch(batch: Any) -> int | None:
    """``batch`` as given to ``export_onnx`` (None: a free batch axis), or a ValueError naming it."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch={batch!r} must be a positive whole number of images, or null for any batch")
    return batch


def example_input(input_size: Sequence[int], preprocess: bool, batch: int = 1) -> torch.Tensor:
    """A tensor of the wrapper's input kind and ``input_size`` for tracing."""
    h, w = int(input_size[0]), int(input_size[1])
    if preprocess:
        return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, h, w)


def export_onnx(
    wrapper: ExportWrapper,
    output: str | os.PathLike,
    *,
    input_size: Sequence[int],
    metadata: Mapping[str, Any],
    dynamic: bool = False,
    opset: int = MIN_OPSET,
    batch: int | None = None,
    final_upsampling: bool = True,
) -> Path:
    """Export ``wrapper`` to one .onnx file at ``output`` with ``metadata`` in its metadata_props.

    The batch axis is free unless ``batch`` fixes it (device runtimes take fixed shapes, and some int8
    rewrites need a batch of 1); height and width are fixed to ``input_size`` unless ``dynamic``.
    A fixed-size graph gets constant Resize scales (:func:`~segkit.export.upsampling.static_resize_scales`:
    no run-time size arithmetic), its classifier moved before the decoder's upsampling
    (:func:`~segkit.export.upsampling.classify_before_upsampling`) and, with ``final_upsampling``, the
    upsampling to the input size as Gather + MatMul (:func:`~segkit.export.upsampling.upsample_by_phases`);
    all three compute the same function. The file is written atomically and checked with ``onnx.checker``.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset={opset} is below the minimum supported opset {MIN_OPSET}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    in_name, out_name = ("image", "mask" if wrapper.argmax else "logits")
    h_ax, w_ax = (1, 2) if wrapper.preprocess else (2, 3)
    batch = check_batch(batch)
    in_axes: dict[int, str] = {} if batch else {0: "batch"}
    out_axes: dict[int, str] = {} if batch else {0: "batch"}
    if dynamic:
        in_axes.update({h_ax: "height", w_ax: "width"})
        o_h = 1 if wrapper.argmax else 2
        out_axes.update({o_h: "height", o_h + 1: "width"})
    example = example_input(input_size, wrapper.preprocess, batch=int(batch or 1))
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad():
            torch.onnx.export(
                wrapper.eval(),
                (example,),
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=[in_name],
                output_names=[out_name],
                dynamic_axes={
                    name: axes for name, axes in ((in_name, in_axes), (out_name, out_axes)) if axes
                },
                do_constant_folding=True,
            )
        model = onnx.load(str(raw))
        if not dynamic:
            static_resize_scales(model)
            classify_before_upsampling(model)
            if final_upsampling:
                upsample_by_phases(model)
        set_onnx_metadata(model, metadata)
        model.doc_string = f"segkit {metadata.get('model_name', '')}: semantic segmentation"
        onnx.checker.check_model(model)
    return atomic_write(output, lambda tmp: onnx.save_model(model, str(tmp), save_as_external_data=False))
