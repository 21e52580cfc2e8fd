"""Predictions as Cityscapes benchmark-server PNGs.

The server (and ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling.getPrediction``) matches a
prediction to ``<city>_<seq>_<frame>_gtFine_labelIds.png`` by searching every folder of the upload for
``<city>_<seq>_<frame>*.png``, and expects exactly one match holding official label ids (not trainIds)
at full resolution. Colour previews therefore go to ``color/`` with a ``color_`` prefix: a name that
does not start with the city, so the matcher never sees two candidates.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from segkit.labels import IGNORE_INDEX, NUM_CLASSES, colorize, train_ids_to_label_ids

__all__ = ["benchmark_name", "save_benchmark_pngs"]

# <city>_<seq>_<frame>_...: six-digit sequence and frame numbers (demoVideo cities contain '_', e.g.
# 'stuttgart_00', hence the lazy city group).
_CS_NAME = re.compile(r"^(?P<city>.+?)_(?P<seq>\d{6})_(?P<frame>\d{6})(?:_|\.|$)")


def benchmark_name(image_path: str | os.PathLike[str]) -> str:
    """File name the benchmark expects for the prediction of ``image_path``.

    ``frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt_000000_000294_leftImg8bit.png`` (also for
    ``.jpg`` inputs, which become ``.png``).
    """
    name = Path(image_path).name
    match = _CS_NAME.match(name)
    if match is None:
        raise ValueError(
            f"{image_path}: not a Cityscapes file name (<city>_<seq:6 digits>_<frame:6 digits>_...); "
            "the benchmark server cannot match its prediction to a ground-truth file"
        )
    return f"{match['city']}_{match['seq']}_{match['frame']}_leftImg8bit.png"


def save_benchmark_pngs(
    train_ids: np.ndarray,
    image_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    color: bool = False,
) -> list[Path]:
    """Write one full-resolution prediction as an official label-id PNG (and optionally a colour preview).

    ``train_ids``: H x W trainIds (0..18, 255 = no prediction, stored as label id 0 'unlabeled', which
    the evaluation counts as a miss). Returns the written paths: ``out_dir/<name>`` first, then
    ``out_dir/color/color_<name>`` when ``color`` is set. Upload only the top-level PNGs.
    """
    if hasattr(train_ids, "detach"):  # a torch tensor
        train_ids = train_ids.detach().cpu().numpy()
    train_ids = np.asarray(train_ids)
    if train_ids.ndim != 2:
        raise ValueError(f"{image_path}: expected an H x W trainId map, got shape {train_ids.shape}")
    if not np.issubdtype(train_ids.dtype, np.integer):
        raise TypeError(f"{image_path}: trainIds must be integers, got dtype {train_ids.dtype}")
    bad = ((train_ids < 0) | (train_ids >= NUM_CLASSES)) & (train_ids != IGNORE_INDEX)
    if bad.any():
        raise ValueError(
            f"{image_path}: prediction holds value {train_ids[bad][0]}, not a trainId (0..{NUM_CLASSES - 1}) "
            f"or {IGNORE_INDEX}"
        )
    name = benchmark_name(image_path)
    if Path(image_path).is_file():
        with Image.open(image_path) as image:  # reads the header only
            width, height = image.size
        if train_ids.shape != (height, width):
            raise ValueError(
                f"{image_path}: prediction is {train_ids.shape[0]}x{train_ids.shape[1]} but the image is "
                f"{height}x{width}; the benchmark evaluates at full resolution, resize the prediction first"
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_path = out_dir / name
    Image.fromarray(train_ids_to_label_ids(train_ids)).save(label_path)
    written = [label_path]
    if color:
        color_path = out_dir / "color" / f"color_{name}"
        color_path.parent.mkdir(exist_ok=True)
        Image.fromarray(colorize(train_ids)).save(color_path)
        written.append(color_path)
    return written
