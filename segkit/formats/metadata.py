"""How a :class:`~segkit.formats.description.ModelDescription` is stored inside exported model files.

ONNX keeps it as ``metadata_props`` (string -> string), every value JSON-encoded so lists and numbers
survive the round trip; a TorchScript archive keeps the whole dict as one JSON extra file; an ExecuTorch
program as a constant method returning the JSON string.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segkit.formats.description import EXPORT_FORMAT, ModelFileError

#: ``format`` value marking a graph written by segkit.export (kept under its historical name).
ONNX_FORMAT = EXPORT_FORMAT
#: Name of the JSON file stored inside TorchScript archives (``_extra_files``) with the model's metadata.
TORCHSCRIPT_META_FILE = "segkit.json"
#: Name of the constant method of ExecuTorch programs that returns the model's metadata as JSON.
EXECUTORCH_META_METHOD = "segkit_metadata"


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
        raise ModelFileError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    return decode_metadata({p.key: p.value for p in model.metadata_props})


def read_torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The segkit metadata stored in a TorchScript archive written by ``segkit.export``."""
    import torch

    extra = {TORCHSCRIPT_META_FILE: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError for foreign files
        raise ModelFileError(
            f"{path} is not a loadable TorchScript file ({type(exc).__name__}: {exc})"
        ) from None
    raw = extra[TORCHSCRIPT_META_FILE]
    if not raw:
        raise ModelFileError(f"{path} is TorchScript but holds no segkit metadata ({TORCHSCRIPT_META_FILE})")
    return json.loads(raw)
