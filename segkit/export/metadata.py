"""Metadata stored inside exported models, so a model file alone says how to feed and read it.

ONNX keeps it as ``metadata_props`` (string -> string); every value is JSON-encoded so lists and numbers
survive the round trip. TorchScript keeps the same dict as one JSON file among the archive's extra files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: ``format`` value marking a graph written by segkit.export.
ONNX_FORMAT = "segkit-onnx"


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
    """The metadata dict of an exported model (plain JSON-able values only).

    ``input_kind`` is 'uint8' (N x H x W x 3 RGB, normalised in the graph) or 'float' (N x 3 x H x W,
    normalised by the caller); ``output_kind`` is 'mask' (uint8 N x H x W trainIds) or 'logits'.
    ``input_size`` is the export size; with ``dynamic`` the graph also takes other sizes. ``batch`` is
    the graph's fixed batch size, or None when it takes any.
    """
    return {
        "format": ONNX_FORMAT,
        "model_name": str(model_name),
        "num_classes": len(class_names),
        "class_names": [str(n) for n in class_names],
        "palette": np.asarray(palette, dtype=np.int64).reshape(-1, 3).tolist(),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "input_size": [int(input_size[0]), int(input_size[1])],
        "dynamic": bool(dynamic),
        "batch": None if batch is None else int(batch),
        "input_kind": "uint8" if preprocess else "float",
        "input_layout": "NHWC" if preprocess else "NCHW",
        "output_kind": "mask" if argmax else "logits",
        "precision": precision,
        **dict(extra or {}),
    }


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """JSON-encode every value (ONNX metadata_props hold strings only)."""
    return {str(k): json.dumps(v) for k, v in meta.items()}


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`encode_metadata`; values that are not JSON stay plain strings."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def set_onnx_metadata(model: Any, meta: Mapping[str, Any]) -> None:
    """Replace the metadata_props of an ``onnx.ModelProto`` in place with ``meta`` (JSON-encoded)."""
    del model.metadata_props[:]
    for key, value in encode_metadata(meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata_props of an ONNX file (an empty dict for a graph without any)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ValueError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    return decode_metadata({p.key: p.value for p in model.metadata_props})
