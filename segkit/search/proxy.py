"""The proxy task a search scores candidates on: short fine-tunes and validation mIoU, with the engine's
own training step and evaluator, so a search's numbers compare with a training run's ``metrics.jsonl``.

Both searches use it: NetAdapt fine-tunes each shrink proposal, the block-wise (MnasNet) search trains
each sampled architecture for a short schedule. Data is a Cityscapes-format root (real Cityscapes or the
generated sample), read without augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkit.data import CityscapesDataset
from segkit.data.sample import generate_sample
from segkit.engine.evaluate import evaluate
from segkit.engine.losses import SegCrossEntropy
from segkit.engine.step import TrainStep

#: SGD settings of the proxy fine-tunes (momentum and weight decay of the paper recipe)
MOMENTUM, WEIGHT_DECAY = 0.9, 4e-5


def proxy_data(
    data: Mapping[str, Any], out: Path, log: Any = print
) -> tuple[CityscapesDataset, CityscapesDataset]:
    """``(train, val)`` datasets of ``data.root``, or of a sample generated under ``out`` when it is null."""
    root = data.get("root")
    if root is None:
        s = data["sample"]
        root = generate_sample(
            out / "sample",
            train=s["train"],
            val=s["val"],
            height=s["height"],
            width=s["width"],
            seed=s["seed"],
        )
        log(f"generated sample dataset: {root}")
    train = CityscapesDataset(root, data["train_split"], verbose=False)
    val = CityscapesDataset(root, data["val_split"], verbose=False)
    return train, val


def _endless(dataset: torch.utils.data.Dataset, batch_size: int, seed: int) -> Iterator[Any]:
    g = torch.Generator().manual_seed(seed)
    while True:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, generator=g, drop_last=True
        )
        yield from loader


def train_steps(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    steps: int,
    *,
    lr: float,
    batch_size: int,
    seed: int,
) -> float:
    """``steps`` engine steps (SGD momentum 0.9, wd 4e-5, cross-entropy ignoring 255) at a constant
    ``lr``; returns the last loss. The batch order depends on ``seed`` only, so candidates fine-tuned with
    the same seed see the same data."""
    if steps <= 0:
        return float("nan")
    if len(dataset) < batch_size:
        raise ValueError(f"the training split has {len(dataset)} images, fewer than batch_size={batch_size}")
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    step = TrainStep(model=model, criterion=SegCrossEntropy(), optimizer=optimizer, device=device)
    batches = _endless(dataset, batch_size, seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = step([next(batches)])
    model.eval()
    return float(loss)


def miou(model: nn.Module, dataset: torch.utils.data.Dataset, num_classes: int = 19) -> float:
    """Cityscapes mIoU of ``model`` over ``dataset`` (0..1), by the engine's evaluator."""
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False)
    value = evaluate(model, loader, num_classes=num_classes, device=device)["miou"]
    if value != value:  # NaN: no labelled pixel at all
        raise ValueError("the validation split has no labelled pixels: mIoU undefined")
    return float(value)


@dataclass
class ProxyTask:
    """A training split, a validation split and the fine-tune settings, bound together for a search."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    lr: float
    batch_size: int
    seed: int = 0
    num_classes: int = 19

    def fine_tune(
        self, model: nn.Module, steps: int, *, seed_offset: int = 1, lr_scale: float = 1.0
    ) -> float:
        return train_steps(
            model,
            self.train,
            steps,
            lr=self.lr * lr_scale,
            batch_size=self.batch_size,
            seed=self.seed + seed_offset,
        )

    def evaluate(self, model: nn.Module) -> float:
        """Validation mIoU (0..1)."""
        return miou(model, self.val, self.num_classes)
