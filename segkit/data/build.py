"""Datasets from the ``dataset`` and ``augment`` config groups, so the training engine needs one call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segkit.data.cityscapes import CityscapesDataset
from segkit.data.transforms import build_transforms


def build_datasets(
    dataset: Mapping[str, Any], augment: str | Mapping[str, Any]
) -> tuple[CityscapesDataset, CityscapesDataset]:
    """``(train_dataset, val_dataset)`` from a ``conf/dataset`` node and an ``augment`` node (or its name).

    The val split keeps its official annotation (gtFine) even when training on ``train_extra``/gtCoarse.
    """
    train_tf, val_tf = build_transforms(augment)
    common = {
        "skip_missing_labels": bool(dataset.get("skip_missing_labels", False)),
        "use_train_id_files": bool(dataset.get("use_train_id_files", True)),
    }
    train_split = dataset.get("train_split", "train")
    train = CityscapesDataset(
        dataset["root"], train_split, train_tf, annotation=dataset.get("annotation"), **common
    )
    val_split = dataset.get("val_split", "val")
    val = CityscapesDataset(dataset["root"], val_split, val_tf, annotation=None, **common)
    return train, val
