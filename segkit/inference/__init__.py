"""Inference: one :class:`Predictor` for checkpoints, ONNX and TorchScript files; video on top of it."""

from __future__ import annotations

from segkit.inference.backends import ModelFileError, ModelInfo
from segkit.inference.predictor import Predictor

__all__ = ["ModelFileError", "ModelInfo", "Predictor"]
