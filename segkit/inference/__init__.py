"""Inference: one :class:`Predictor` for checkpoints, ONNX, ExecuTorch and TorchScript files; video on top."""

from __future__ import annotations

from segkit.inference.backends import ModelFileError, ModelInfo
from segkit.inference.pipeline import process_frames
from segkit.inference.predictor import Predictor
from segkit.inference.sinks import SinkError
from segkit.inference.sources import SourceError, open_source
from segkit.inference.video import prepare_inference, run_inference

__all__ = [
    "ModelFileError",
    "ModelInfo",
    "Predictor",
    "SinkError",
    "SourceError",
    "open_source",
    "prepare_inference",
    "process_frames",
    "run_inference",
]
