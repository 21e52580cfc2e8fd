"""Shared test set-up: no network, small thread counts, deterministic seeds."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory):
    """A tiny procedural Cityscapes dataset (4 train, 2 val, 2 test images at 64x128), made once per session.

    Official layout: ``leftImg8bit/<split>/<city>/...`` and ``gtFine/<split>/<city>/...`` with polygons JSON,
    labelIds, labelTrainIds and color PNGs. Treat it as read-only (it is shared by all tests).
    """
    from segkit.data.sample import generate_sample

    out = tmp_path_factory.mktemp("cityscapes_sample")
    return generate_sample(out, train=4, val=2, test=2, height=64, width=128, seed=0)
