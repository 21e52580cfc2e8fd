"""Export: ONNX fp32 (+int8) and a mobile-native file, each verified against PyTorch on dataset images.

Command line: ``python -m segkit.export checkpoint=<last.pt> output=<model.onnx> [key=value ...]``.
"""

from __future__ import annotations

from segkit.export.api import export_checkpoint, int8_path, report_path
from segkit.export.metadata import build_metadata, read_onnx_metadata
from segkit.export.onnx import ExportWrapper, export_onnx
from segkit.export.verify import VerificationError

__all__ = [
    "ExportWrapper",
    "VerificationError",
    "build_metadata",
    "export_checkpoint",
    "export_onnx",
    "int8_path",
    "read_onnx_metadata",
    "report_path",
]
