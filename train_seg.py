"""Train a segmentation model: ``python train_seg.py [experiment=demo] [key=value ...]``.

A thin Hydra entry point; the loop is :func:`segkit.engine.train`. Multi-GPU / multi-node:
``torchrun --nproc_per_node=K train_seg.py ...``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from segkit.config import CONF_DIR


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from segkit.engine import train

    summary = train(cfg)
    # The return value is what Hydra sweepers optimise: the best validation mIoU.
    return summary["best_miou"]


if __name__ == "__main__":
    main()
