"""Cityscapes semantic segmentation in its official folder layout, read unchanged.

``<root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` pairs with
``<root>/<annotation>/<split>/<city>/<city>_<seq>_<frame>_<annotation>_labelIds.png`` (annotation ``gtFine``,
or ``gtCoarse`` for ``train_extra``). Label ids are mapped to the 19 trainIds (255 = ignore) with
:data:`segkit.labels.ID_TO_TRAIN_ID`; a ``_labelTrainIds.png`` made by cityscapesscripts is used instead
when present (same values, one lookup less).

Pairing is checked when the dataset opens (cheap: file names only); sizes, PNG integrity and label values
are checked when a sample is loaded, so opening the 3475 fine images stays fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from segkit import labels
from segkit.formats.description import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IMAGE_DIR = "leftImg8bit"
IMAGE_SUFFIX = "_leftImg8bit.png"
SPLITS = ("train", "val", "test", "train_extra")

_INVALID = 254  # marks a value outside the table: neither a trainId (0..18, 255) nor reachable otherwise


def _lut(mapping: np.ndarray, valid: list[int]) -> np.ndarray:
    """256-entry uint8 lookup: valid values mapped, every other value -> _INVALID (for cv2.LUT)."""
    lut = np.full(256, _INVALID, dtype=np.uint8)
    lut[valid] = mapping[valid]
    return lut


_ID_LUT = _lut(labels.ID_TO_TRAIN_ID, sorted(i for i in labels.VALID_IDS if 0 <= i < 256))
_TRAIN_ID_LUT = _lut(np.arange(256, dtype=np.uint8), [*range(labels.NUM_CLASSES), labels.IGNORE_INDEX])


class CityscapesError(ValueError):
    """A Cityscapes file is missing, unreadable or inconsistent; the message names the file."""


def read_png(path: str | os.PathLike, *, color: bool) -> np.ndarray:
    """Decode a PNG with OpenCV (RGB HxWx3 or single-channel HxW); failures raise :class:`CityscapesError`.

    OpenCV returns None (with a libpng warning) for truncated or corrupt files; that becomes an error that
    names the file instead of a crash later in the transform.
    """
    flag = cv2.IMREAD_COLOR_RGB if color else cv2.IMREAD_UNCHANGED
    img = cv2.imread(os.fspath(path), flag)
    if img is None:
        if not Path(path).is_file():
            raise CityscapesError(f"file not found: {path}")
        raise CityscapesError(f"cannot decode PNG (unreadable, truncated or not a PNG): {path}")
    return img


def list_split(root: Path, split: str) -> list[Path]:
    """Sorted image paths of one split (empty if its folder is missing)."""
    folder = root / IMAGE_DIR / split
    return sorted(folder.glob(f"*/*{IMAGE_SUFFIX}")) if folder.is_dir() else []


class CityscapesDataset(torch.utils.data.Dataset):
    """Cityscapes images and trainId masks of one split.

    ``load(i)`` returns the untransformed ``(rgb uint8 HxWx3, train_ids uint8 HxW)``. ``ds[i]`` applies
    ``transform`` (an albumentations-style callable ``transform(image=, mask=) -> dict``, see
    :func:`segkit.data.transforms.build_transforms`) and returns ``(image float32 3xHxW, target int64 HxW)``;
    with ``transform=None`` the image is only ImageNet-normalised (mean/std of
    :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` on 0..1 values) at full resolution.

    Args:
        root: dataset root holding ``leftImg8bit/`` and ``gtFine/`` (and optionally ``gtCoarse/``).
        split: ``train``, ``val``, ``test`` or ``train_extra``.
        transform: joint image/mask transform, or None.
        annotation: ``gtFine`` or ``gtCoarse``; None picks ``gtCoarse`` for ``train_extra``, else ``gtFine``.
        skip_missing_labels: drop images without a label file (logged) instead of raising.
        use_train_id_files: read ``_labelTrainIds.png`` when it exists instead of mapping ``_labelIds.png``.
        check_values: verify every label value is an official id (or trainId) at load time.
        verbose: log a summary of the dataset when it opens.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        annotation: str | None = None,
        skip_missing_labels: bool = False,
        use_train_id_files: bool = True,
        check_values: bool = True,
        verbose: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.annotation = annotation or ("gtCoarse" if split == "train_extra" else "gtFine")
        if self.annotation not in ("gtFine", "gtCoarse"):
            raise ValueError(f"annotation must be 'gtFine' or 'gtCoarse', got {self.annotation!r}")
        self.use_train_id_files = use_train_id_files
        self.check_values = check_values
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Cityscapes root not found: {self.root} (see datasets/README.md, or make a sample with "
                "`python -m segkit.data.sample --out datasets/cityscapes_sample`)"
            )
        image_dir = self.root / IMAGE_DIR / split
        if not image_dir.is_dir():
            present = (
                sorted(p.name for p in (self.root / IMAGE_DIR).iterdir())
                if (self.root / IMAGE_DIR).is_dir()
                else []
            )
            raise FileNotFoundError(
                f"split folder not found: {image_dir} (splits present: {present or 'none'})"
            )
        files = list_split(self.root, split)
        if not files:
            raise FileNotFoundError(f"no *{IMAGE_SUFFIX} images in {image_dir}/<city>/")

        self.files: list[Path] = []
        self.label_files: list[Path] = []
        self.train_id_files: list[Path | None] = []
        missing: list[Path] = []
        for f in files:
            label = self.label_path(f)
            if not label.is_file():
                missing.append(label)
                continue
            tid = label.with_name(label.name.replace("_labelIds.png", "_labelTrainIds.png"))
            self.files.append(f)
            self.label_files.append(label)
            self.train_id_files.append(tid if use_train_id_files and tid.is_file() else None)
        if missing and not skip_missing_labels:
            raise CityscapesError(
                f"{len(missing)} image(s) in {image_dir} have no label file, first: {missing[0]} "
                "(pass skip_missing_labels=True to drop them)"
            )
        if missing:
            log.warning(
                "skipping %d image(s) of %s without a label file, first: %s", len(missing), split, missing[0]
            )
        if not self.files:
            raise CityscapesError(f"no image of {image_dir} has a label file")
        self.cities = sorted({f.parent.name for f in self.files})
        if verbose:
            log.info(self.summary())

    def label_path(self, image: Path) -> Path:
        """The ``_labelIds.png`` path that belongs to an image path."""
        stem = image.name[: -len(IMAGE_SUFFIX)]
        return (
            self.root
            / self.annotation
            / self.split
            / image.parent.name
            / f"{stem}_{self.annotation}_labelIds.png"
        )

    def summary(self) -> str:
        """One line per split: images and cities, so a wrong root or a half-extracted zip shows at once."""
        lines = [
            f"Cityscapes at {self.root}: using split '{self.split}' ({self.annotation}), "
            f"{len(self.files)} images from {len(self.cities)} cities"
        ]
        for split in SPLITS:
            files = list_split(self.root, split)
            if files:
                lines.append(f"  {split}: {len(files)} images, {len({f.parent.name for f in files})} cities")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed sample: RGB uint8 HxWx3 and trainIds uint8 HxW (255 = ignore)."""
        image_path = self.files[index]
        rgb = read_png(image_path, color=True)
        tid_path = self.train_id_files[index]
        label_path = tid_path or self.label_files[index]
        raw = read_png(label_path, color=False)
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise CityscapesError(
                f"label must be a single-channel 8-bit PNG, got {raw.shape} {raw.dtype}: {label_path}"
            )
        if raw.shape != rgb.shape[:2]:
            raise CityscapesError(
                f"image/label size mismatch: {image_path} is {rgb.shape[1]}x{rgb.shape[0]} but "
                f"{label_path} is {raw.shape[1]}x{raw.shape[0]} (width x height)"
            )
        # one cv2.LUT both maps ids -> trainIds and flags values outside the table (much cheaper than numpy)
        mapped = cv2.LUT(raw, _TRAIN_ID_LUT if tid_path else _ID_LUT)
        if (mapped == _INVALID).any():
            if self.check_values:
                bad = np.unique(raw[mapped == _INVALID])
                kind = "trainIds" if tid_path else "Cityscapes label ids"
                raise CityscapesError(f"label values {bad.tolist()} are not {kind}: {label_path}")
            mapped[mapped == _INVALID] = labels.IGNORE_INDEX
        return rgb, mapped

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, mask = self.load(index)
        if self.transform is None:
            return to_tensors(rgb, mask, normalize=True)
        out = self.transform(image=rgb, mask=mask)
        return to_tensors(out["image"], out["mask"], normalize=False)

    def __repr__(self) -> str:
        return f"CityscapesDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


def to_tensors(image: Any, mask: Any, *, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 3xHxW, int64 HxW) from numpy or tensor outputs of a transform.

    An HxWx3 uint8 array is scaled to 0..1 (and ImageNet-normalised when ``normalize``); an array that is
    already float (e.g. after ``albumentations.Normalize``) is only transposed.
    """
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
            if normalize:
                mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
                std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
                x = x.sub_(mean).div_(std)
        else:
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    else:
        x = image.float() if image.dtype != torch.uint8 else image.float().div_(255.0)
    y = torch.from_numpy(np.ascontiguousarray(mask)) if isinstance(mask, np.ndarray) else mask
    return x, y.long()
