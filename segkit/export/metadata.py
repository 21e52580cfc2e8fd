"""Metadata of exported models, under its historical home (kept so existing imports keep working).

The record is :class:`segkit.formats.description.ModelDescription`; its encoding lives in
:mod:`segkit.formats.metadata`. ``build_metadata`` is that record's dict for one exported file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from segkit.formats.description import ModelDescription
from segkit.formats.metadata import (
    ONNX_FORMAT,
    decode_metadata,
    encode_metadata,
    read_onnx_metadata,
    set_onnx_metadata,
)


def build_metadata(
    *,
    model_name: str,
    class_names: Sequence[str],
    palette: Any,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: Sequence[int],
    dynamic: bool,
    preprocess: bool,
    argmax: bool,
    precision: str = "fp32",
    batch: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata dict of an exported model: a :class:`ModelDescription`'s ``to_dict()`` plus ``extra``."""
    desc = ModelDescription.for_classes(
        class_names,
        mean=tuple(mean),
        std=tuple(std),
        input_size=(int(input_size[0]), int(input_size[1])),
        model_name=model_name,
        input_kind="uint8" if preprocess else "float",
        output_kind="mask" if argmax else "logits",
        dynamic=dynamic,
        batch=batch,
        precision=precision,
    ).replace(palette=palette)
    return {**desc.to_dict(), **dict(extra or {})}


__all__ = [
    "ONNX_FORMAT",
    "build_metadata",
    "decode_metadata",
    "encode_metadata",
    "read_onnx_metadata",
    "set_onnx_metadata",
]
