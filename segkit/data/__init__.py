"""Cityscapes reading, the procedural sample dataset, augmentation and resumable data loading."""

from __future__ import annotations

from segkit.data.build import build_datasets
from segkit.data.cityscapes import CityscapesDataset, CityscapesError

__all__ = ["CityscapesDataset", "CityscapesError", "build_datasets"]
