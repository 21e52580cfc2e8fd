"""Check an exported model against the PyTorch model it came from, on real dataset images.

Both sides get exactly the tensor the :class:`~segkit.inference.Predictor` would feed (same resize,
padding and normalisation); the comparison covers the image area only, not the padding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.inference.predictor import normalize_batch, prepare_image

#: Export fails when fewer than this fraction of pixels get the same class as in PyTorch.
MIN_AGREEMENT = 0.999


class VerificationError(RuntimeError):
    """The exported model does not reproduce the PyTorch model closely enough."""


def load_images(
    root: str | os.PathLike, split: str, limit: int | None = None, *, with_labels: bool = False
) -> list[Any]:
    """The first ``limit`` images (``with_labels``: ``(rgb, train_ids)`` pairs) of a Cityscapes split."""
    from segkit.data import CityscapesDataset

    dataset = CityscapesDataset(root, split, verbose=False)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n == 0:
        raise ValueError(f"no images in split '{split}' of the Cityscapes root {Path(root)}")
    items = [dataset.load(i) for i in range(n)]
    return items if with_labels else [rgb for rgb, _ in items]


def model_input(
    rgb: np.ndarray,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    preprocess: bool,
) -> tuple[np.ndarray, tuple[int, int]]:
    """The batch-of-one a graph of this input kind gets for ``rgb``, and the image's valid (h, w)."""
    canvas, valid = prepare_image(rgb, (int(input_size[0]), int(input_size[1])), mean)
    batch = canvas[None] if preprocess else normalize_batch(canvas[None], mean, std)
    return batch, valid


def compare(
    reference: torch.nn.Module,
    run: Callable[[np.ndarray], np.ndarray],
    images: Sequence[np.ndarray],
    *,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    preprocess: bool,
    output_kind: str,
) -> dict[str, Any]:
    """Max abs logit difference and argmax agreement of ``run`` vs ``reference`` over ``images``.

    ``reference`` is the PyTorch :class:`~segkit.export.onnx.ExportWrapper` the file was made from; for a
    mask-output graph only the agreement is measured (``max_abs_logit_diff`` is None).
    """
    max_diff = 0.0
    agree = total = 0
    per_image = []
    for rgb in images:
        batch, (vh, vw) = model_input(rgb, input_size, mean, std, preprocess)
        with torch.inference_mode():
            ref = reference(torch.from_numpy(batch)).numpy()[0, ..., :vh, :vw]
        got = np.asarray(run(batch))[0, ..., :vh, :vw]
        if output_kind == "logits":
            diff = float(np.abs(ref.astype(np.float64) - got).max())
            max_diff = max(max_diff, diff)
            same = int((ref.argmax(0) == got.argmax(0)).sum())
        else:
            diff = None
            same = int((ref == got).sum())
        agree += same
        total += vh * vw
        per_image.append({"max_abs_logit_diff": diff, "agreement": same / (vh * vw)})
    return {
        "images": len(images),
        "pixels": total,
        "max_abs_logit_diff": max_diff if output_kind == "logits" else None,
        "argmax_agreement": agree / total if total else float("nan"),
        "per_image": per_image,
    }


def check_agreement(result: dict[str, Any], what: str, threshold: float = MIN_AGREEMENT) -> None:
    """Raise :class:`VerificationError` when ``result``'s agreement is below ``threshold``."""
    agreement = result["argmax_agreement"]
    if not agreement >= threshold:
        raise VerificationError(
            f"{what}: argmax agreement with PyTorch is {agreement:.5%} on {result['images']} images, "
            f"below the required {threshold:.3%} (max abs logit diff {result['max_abs_logit_diff']})"
        )


def evaluate_miou(
    predict: Callable[[np.ndarray], np.ndarray], samples: Sequence[Any], class_names: Sequence[str]
) -> dict:
    """Cityscapes scores of ``predict`` (rgb -> trainId mask) over ``(rgb, train_ids)`` samples."""
    from segkit.evaluation import SegmentationMetrics

    metrics = SegmentationMetrics(num_classes=len(class_names))
    for rgb, target in samples:
        metrics.update(predict(rgb), target)
    return metrics.compute()
