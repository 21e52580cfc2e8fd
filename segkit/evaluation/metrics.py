"""Confusion-matrix metrics that reproduce the official Cityscapes pixel-level evaluation.

The official script (``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``) counts on label
ids; this class counts on trainIds, which carries the same information for every pixel that matters:

* pixels whose ground truth is ``ignore_index`` (the official ``ignoreInEval`` labels) count nowhere;
* a prediction of ``ignore_index`` (a "void" prediction, which the benchmark PNG stores as label id 0)
  on a valid pixel is a false negative of the ground-truth class and a false positive of nothing, as in
  the official row sums. Those pixels are kept in a separate ``void_predictions`` vector so that
  ``confusion`` stays the plain C x C matrix.

Class IoU = tp / (tp + fp + fn), NaN when the class occurs neither in the ground truth nor in the
predictions of valid pixels; means skip NaN (NaN only if everything is NaN), exactly as
``getIouScoreForLabel``/``getScoreAverage`` do. Category IoU merges the classes of a category before
counting, as ``getIouScoreForCategory`` does on the label-level matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from segkit.labels import CATEGORY_NAMES, CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, TRAIN_ID_TO_CATEGORY

__all__ = ["SegmentationMetrics"]


def _as_tensor(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray of trainIds, got {type(x).__name__}")


def _nanmean(values: Sequence[float]) -> float:
    """Mean over the non-NaN entries in order (NaN if none), the official ``getScoreAverage``."""
    valid = [v for v in values if not math.isnan(v)]
    return sum(valid) / len(valid) if valid else float("nan")


class SegmentationMetrics:
    """Accumulates a trainId confusion matrix on the inputs' device and computes Cityscapes scores.

    ``update`` may be called with batched (N x H x W) or single (H x W) label maps, torch or numpy.
    The counts live in one flat int64 buffer (``counts``): the first C*C entries are ``confusion``
    (rows = ground truth, columns = prediction), the last C are ``void_predictions``. ``all_reduce``
    sums that buffer over a torch.distributed group, so every rank then computes the global scores.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        *,
        class_names: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a class id (num_classes={num_classes})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        if class_names is None:
            generic = [f"class_{i}" for i in range(num_classes)]
            class_names = CLASS_NAMES if num_classes == NUM_CLASSES else generic
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.class_names: tuple[str, ...] = tuple(class_names)
        # Categories are a Cityscapes notion: only defined for the 19 trainIds.
        self._with_categories = num_classes == NUM_CLASSES
        self._device = torch.device(device) if device is not None else None
        self.counts: torch.Tensor | None = None
        self._empty = True
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Zero all counts (keeps the device the buffer lives on)."""
        device = self.counts.device if self.counts is not None else (self._device or torch.device("cpu"))
        c = self.num_classes
        self.counts = torch.zeros(c * c + c, dtype=torch.int64, device=device)
        self._empty = True

    @property
    def confusion(self) -> torch.Tensor:
        """C x C int64 matrix, rows = ground truth, columns = prediction (trainIds; a view of ``counts``)."""
        c = self.num_classes
        return self.counts[: c * c].view(c, c)

    @property
    def void_predictions(self) -> torch.Tensor:
        """Per ground-truth class, the pixels predicted as ``ignore_index`` (false negatives officially)."""
        return self.counts[self.num_classes * self.num_classes :]

    def to(self, device: torch.device | str) -> SegmentationMetrics:
        """Move the counts to ``device`` (e.g. before ``all_reduce`` with NCCL)."""
        self._device = torch.device(device)
        self.counts = self.counts.to(self._device)
        return self

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch of predicted and ground-truth trainId maps (N x H x W or H x W, same shape).

        Values must be in [0, num_classes) or ``ignore_index``; anything else is an error, not silently
        ignored, because it means the caller passed label ids or logits instead of trainIds.
        """
        pred_t = _as_tensor(pred, "pred")
        target_t = _as_tensor(target, "target")
        if pred_t.shape != target_t.shape:
            raise ValueError(f"pred shape {tuple(pred_t.shape)} != target shape {tuple(target_t.shape)}")
        if pred_t.dim() not in (2, 3):
            raise ValueError(
                f"expected H x W or N x H x W trainId maps, got shape {tuple(pred_t.shape)} "
                "(for logits pass logits.argmax(1))"
            )
        for name, t in (("pred", pred_t), ("target", target_t)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer trainIds, got dtype {t.dtype}")
        if self._empty and self._device is None and self.counts.device != pred_t.device:
            # Without an explicit device, the first data decides where counting happens (GPU batches
            # are counted on the GPU, numpy arrays on the CPU).
            self.counts = self.counts.to(pred_t.device)
        device = self.counts.device
        c = self.num_classes
        p = pred_t.to(device=device, dtype=torch.int64).reshape(-1)
        t = target_t.to(device=device, dtype=torch.int64).reshape(-1)
        for name, v in (("pred", p), ("target", t)):
            bad = ((v < 0) | (v >= c)) & (v != self.ignore_index)
            if bool(bad.any()):
                raise ValueError(
                    f"{name} holds value {int(v[bad][0])}, outside trainIds 0..{c - 1} and "
                    f"ignore_index={self.ignore_index}"
                )
        valid = t != self.ignore_index
        p, t = p[valid], t[valid]
        # Void predictions go to slot C*C + gt, the rest to gt*C + pred: one bincount for both.
        index = torch.where(p == self.ignore_index, c * c + t, t * c + p)
        self.counts += torch.bincount(index, minlength=c * c + c)
        self._empty = False

    def all_reduce(self) -> None:
        """Sum the counts over all processes when torch.distributed is initialised (no-op otherwise)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend() == "nccl" and self.counts.device.type != "cuda":
            self.counts = self.counts.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)

    # ---------------------------------------------------------------- compute
    def compute(self) -> dict:
        """Scores as plain Python floats (NaN where the official script reports NaN).

        Keys: ``miou``, ``iou`` (name -> IoU), ``pixel_acc``, ``mean_acc``, ``acc`` (name -> recall),
        ``category_iou``, ``mean_category_iou``, ``num_pixels`` (evaluated, i.e. non-ignored, pixels).
        """
        c = self.num_classes
        conf = self.confusion.detach().cpu().numpy().astype(np.int64)
        void = self.void_predictions.detach().cpu().numpy().astype(np.int64)
        tp = np.diag(conf)
        gt_total = conf.sum(axis=1) + void  # official row sum: includes void predictions
        pred_total = conf.sum(axis=0)  # official column sum over non-ignored rows
        iou_values = _ratios(tp, gt_total + pred_total - tp)
        acc_values = _ratios(tp, gt_total)
        num_pixels = int(gt_total.sum())
        results: dict = {
            "miou": _nanmean(iou_values),
            "iou": dict(zip(self.class_names, iou_values)),
            "pixel_acc": float(tp.sum()) / num_pixels if num_pixels else float("nan"),
            "mean_acc": _nanmean(acc_values),
            "acc": dict(zip(self.class_names, acc_values)),
            "num_pixels": num_pixels,
        }
        if self._with_categories:
            k = len(CATEGORY_NAMES)
            onehot = np.zeros((c, k), dtype=np.int64)
            onehot[np.arange(c), TRAIN_ID_TO_CATEGORY] = 1
            cat_conf = onehot.T @ conf @ onehot  # merge classes of a category, as the official script does
            cat_tp = np.diag(cat_conf)
            cat_gt = cat_conf.sum(axis=1) + onehot.T @ void
            cat_iou = _ratios(cat_tp, cat_gt + cat_conf.sum(axis=0) - cat_tp)
            results["category_iou"] = dict(zip(CATEGORY_NAMES, cat_iou))
            results["mean_category_iou"] = _nanmean(cat_iou)
        else:
            results["category_iou"] = {}
            results["mean_category_iou"] = float("nan")
        return results

    def __repr__(self) -> str:
        return (
            f"SegmentationMetrics(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.counts.sum())}, device={self.counts.device})"
        )


def _ratios(num: np.ndarray, den: np.ndarray) -> list[float]:
    """Elementwise num/den as Python floats, NaN where den == 0 (the official 'denom == 0' rule)."""
    return [float(n) / float(d) if d else float("nan") for n, d in zip(num.tolist(), den.tolist())]
