"""Evaluation: metrics identical to the official Cityscapes script, IoU tables, benchmark-server PNGs."""

from __future__ import annotations

from segkit.evaluation.benchmark_png import benchmark_name, save_benchmark_pngs
from segkit.evaluation.metrics import SegmentationMetrics
from segkit.evaluation.table import format_iou_table, save_results_json

__all__ = [
    "SegmentationMetrics",
    "benchmark_name",
    "format_iou_table",
    "save_benchmark_pngs",
    "save_results_json",
]
