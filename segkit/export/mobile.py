"""Mobile-native formats beside ONNX: ExecuTorch (.pte, XNNPACK-delegated) and TorchScript (.ts).

ExecuTorch is PyTorch's on-device runtime (Android/iOS/embedded); the program carries segkit's metadata
as a constant method ``segkit_metadata`` returning the JSON string, so the .pte file alone describes its
input and output. TorchScript (``torch.jit.trace``) is the fallback for environments without ExecuTorch;
its metadata is an extra file inside the archive. Both have a fixed input size (batch 1 for ExecuTorch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from segkit.export.onnx import ExportWrapper, example_input
from segkit.formats.atomic import atomic_write
from segkit.formats.metadata import EXECUTORCH_META_METHOD, TORCHSCRIPT_META_FILE

#: Mobile formats ``python -m segkit.export mobile=...`` can write, with their file suffix.
MOBILE_FORMATS = {"executorch": ".pte", "torchscript": ".ts"}


def executorch_available() -> bool:
    """True when the ``executorch`` package (an optional dependency, extra ``mobile``) is importable."""
    try:
        import executorch.exir  # noqa: F401
    except ImportError:
        return False
    return True


def export_executorch(
    wrapper: ExportWrapper,
    output: str | os.PathLike,
    *,
    input_size: Sequence[int],
    metadata: Mapping[str, Any],
) -> Path:
    """Lower ``wrapper`` with ``torch.export`` + the XNNPACK partitioner to an ExecuTorch .pte file."""
    if not executorch_available():
        raise RuntimeError(
            "mobile=executorch needs the executorch package (pip install 'segkit[mobile]'); "
            "use mobile=torchscript otherwise"
        )
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    meta = {**metadata, "dynamic": False, "batch": 1, "runtime": "executorch"}
    with torch.no_grad():
        program = torch.export.export(wrapper.eval(), (example_input(input_size, wrapper.preprocess),))
    lowered = to_edge_transform_and_lower(
        program,
        partitioner=[XnnpackPartitioner()],
        constant_methods={EXECUTORCH_META_METHOD: json.dumps(meta)},
    ).to_executorch()
    return atomic_write(output, lambda tmp: tmp.write_bytes(lowered.buffer))


def export_torchscript(
    wrapper: ExportWrapper,
    output: str | os.PathLike,
    *,
    input_size: Sequence[int],
    metadata: Mapping[str, Any],
) -> Path:
    """Trace ``wrapper`` at ``input_size`` to a TorchScript archive with the metadata as an extra file."""
    meta = {**metadata, "dynamic": False, "runtime": "torchscript"}
    with torch.no_grad():
        traced = torch.jit.trace(
            wrapper.eval(), (example_input(input_size, wrapper.preprocess),), check_trace=False
        )
    extra = {TORCHSCRIPT_META_FILE: json.dumps(meta)}
    return atomic_write(output, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
