"""The one Cityscapes label table of segkit, derived from ``cityscapesscripts.helpers.labels``.

Nothing here is retyped: class names, colours, id<->trainId maps and categories all come from the
official table, so segkit's numbers and colours are the benchmark's.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _OFFICIAL_LABELS

IGNORE_INDEX = 255

_TRAIN_LABELS = sorted(
    (lab for lab in _OFFICIAL_LABELS if 0 <= lab.trainId < IGNORE_INDEX and not lab.ignoreInEval),
    key=lambda lab: lab.trainId,
)

#: The 19 evaluated classes, in trainId order.
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)
NUM_CLASSES: int = len(CLASS_NAMES)

#: RGB colour of each trainId (19 x 3, uint8), the official Cityscapes palette.
PALETTE: np.ndarray = np.array([lab.color for lab in _TRAIN_LABELS], dtype=np.uint8)

#: Official label id of each trainId (for benchmark-server PNGs).
TRAIN_ID_TO_ID: np.ndarray = np.array([lab.id for lab in _TRAIN_LABELS], dtype=np.uint8)

#: Every official label id (ids 0..33, and -1 for 'license plate' excluded) -> its name.
ID_TO_NAME: dict[int, str] = {lab.id: lab.name for lab in _OFFICIAL_LABELS if lab.id >= 0}
VALID_IDS: frozenset[int] = frozenset(ID_TO_NAME)


def _id_to_train_id_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lab in _OFFICIAL_LABELS:
        if 0 <= lab.id < 256:
            tid = lab.trainId
            lut[lab.id] = tid if 0 <= tid < IGNORE_INDEX and not lab.ignoreInEval else IGNORE_INDEX
    return lut


#: Lookup table: official label id (0..255) -> trainId (0..18, or 255 = ignore).
ID_TO_TRAIN_ID: np.ndarray = _id_to_train_id_lut()

#: The 7 evaluated categories, in official order, and the category index of each trainId.
CATEGORY_NAMES: tuple[str, ...] = tuple(dict.fromkeys(lab.category for lab in _TRAIN_LABELS))
TRAIN_ID_TO_CATEGORY: np.ndarray = np.array(
    [CATEGORY_NAMES.index(lab.category) for lab in _TRAIN_LABELS], dtype=np.int64
)


def colorize(train_ids: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Map an HxW class-id array to an HxWx3 RGB image in ``palette`` (default: the Cityscapes one);
    ids without a colour (255 = ignore) become black. The one colouring function of segkit."""
    palette = PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) > 255:
        raise ValueError(f"palette must be C x 3 uint8 with C < 256, got shape {palette.shape}")
    ids = np.ascontiguousarray(train_ids, dtype=np.uint8)
    lut = np.zeros((256, 1, 3), dtype=np.uint8)
    lut[: len(palette), 0] = palette
    if ids.ndim == 2 and ids.size:
        import cv2  # OpenCV's LUT is ~5x faster than numpy indexing on a full frame; loaded on first use

        return cv2.LUT(cv2.merge([ids, ids, ids]), lut)
    return lut[:, 0][ids]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds to official label ids, as the benchmark server expects (ignore -> 0 'unlabeled')."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:NUM_CLASSES] = TRAIN_ID_TO_ID
    return lut[np.asarray(train_ids, dtype=np.uint8)]
