"""The official Cityscapes pixel-level evaluation, set up as the oracle that segkit's tests compare with."""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType
from typing import Any

from segkit._compat import patch_cityscapesscripts


def official_module() -> ModuleType:
    """The official script, runnable on this numpy (cityscapesscripts 2.3 still calls np.in1d)."""
    patch_cityscapesscripts()
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    return official


def official_args(official: ModuleType, prediction_root: Path | None = None) -> Any:
    """A quiet copy of the script's arguments: pixel-level class/category scores only, no JSON output."""
    args = copy.copy(official.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    args.bold = args.nocol = ""
    args.evalLabels = []
    args.predictionPath = str(prediction_root) if prediction_root is not None else None
    args.predictionWalk = None
    return args
