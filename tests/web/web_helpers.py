"""Helpers of the web app's tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

import segkit
from segkit.config import load_group
from segkit.engine.checkpoint import IMAGENET_MEAN, IMAGENET_STD, model_metadata, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
#: Small enough for quick browser runs, and not the size of any test picture (the resize path runs).
SIZE = (128, 256)
MODEL = "lraspp_mobilenetv3_small"


def random_checkpoint(
    path: Path, images: list[np.ndarray], size: tuple[int, int] = SIZE, name: str = MODEL
) -> Path:
    """A random-init checkpoint with BatchNorm statistics measured on ``images`` (uint8 RGB): every layer's
    output then varies over the picture at unit scale, so the masks hold many classes with clear margins
    (agreement on a one- or two-class mask, or on near-ties everywhere, would prove little)."""
    torch.manual_seed(0)
    model = segkit.create_model(name, num_classes=19)
    x = torch.from_numpy(
        np.stack([cv2.resize(im, size[::-1], interpolation=cv2.INTER_LINEAR) for im in images])
    )
    x = (x.float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the batch
        model.train()(x.permute(0, 3, 1, 2).contiguous())
    model.eval()
    meta = model_metadata(load_group("model", name), input_size=list(size))
    return save_checkpoint(path, {"model": model.state_dict(), **meta})
