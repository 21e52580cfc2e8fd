"""Where segkit's Hydra configs live, and how library code loads one group file without Hydra's app.

The configs are package data (``segkit/conf/``, also reachable as ``conf/`` at the repository root), so
an installed wheel has them and ``segkit.create_model(...)`` works from any folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: segkit's config folder, shipped inside the package (SEGKIT_CONF_DIR points elsewhere, e.g. a copy a
#: user edits).
CONF_DIR = Path(os.environ.get("SEGKIT_CONF_DIR") or Path(__file__).resolve().parent / "conf")


def group_options(group: str) -> list[str]:
    """The option names of a config group, e.g. ``group_options("model")``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_group(group: str, name: str) -> DictConfig:
    """Load ``conf/<group>/<name>.yaml``; an unknown name gets an error listing the valid ones."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        options = group_options(group)
        raise ValueError(f"unknown {group} '{name}': expected one of {options} in {CONF_DIR / group}")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    cfg.pop("defaults", None)
    return cfg
