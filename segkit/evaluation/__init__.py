"""Evaluation: metrics identical to the official Cityscapes script, IoU tables, benchmark-server PNGs."""

from __future__ import annotations

from segkit.evaluation.metrics import SegmentationMetrics
from segkit.evaluation.table import format_iou_table, save_results_json

__all__ = ["SegmentationMetrics", "format_iou_table", "save_results_json"]
