"""Human-readable and JSON reports of ``SegmentationMetrics.compute()`` results."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["format_iou_table", "save_results_json"]


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100.0 * value:.2f}"


def _section(title: str, scores: dict[str, float], mean_label: str, mean: float) -> list[str]:
    width = max([len(title), len(mean_label), *(len(name) for name in scores)])
    rule = "-" * (width + 10)
    lines = [f"{title:<{width}}  {'IoU %':>8}", rule]
    lines += [f"{name:<{width}}  {_pct(value):>8}" for name, value in scores.items()]
    lines += [rule, f"{mean_label:<{width}}  {_pct(mean):>8}"]
    return lines


def format_iou_table(results: dict[str, Any]) -> str:
    """Per-class and per-category IoU in percent with the mean rows, in aligned columns.

    ``n/a`` marks classes the official script reports as NaN (absent from ground truth and predictions);
    they are left out of the means.
    """
    for key in ("iou", "miou"):
        if key not in results:
            raise KeyError(f"results lack {key!r}; pass the dict returned by SegmentationMetrics.compute()")
    lines = _section("class", results["iou"], "mean (mIoU)", results["miou"])
    if results.get("category_iou"):
        lines += [""] + _section("category", results["category_iou"], "mean", results["mean_category_iou"])
    extras = [(key, results[key]) for key in ("pixel_acc", "mean_acc") if key in results]
    if extras:
        lines.append("")
        lines += [f"{key}: {_pct(value)} %" for key, value in extras]
    if "num_pixels" in results:
        lines.append(f"evaluated pixels: {results['num_pixels']}")
    return "\n".join(lines)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def save_results_json(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write results as strict JSON (NaN -> null, so any JSON reader accepts it); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(results), indent=2, allow_nan=False) + "\n")
    return path
