"""Joint image/mask augmentation built from ``conf/augment/*.yaml`` with Hydra ``_target_`` nodes.

An augment config has a ``train`` and a ``val`` node, each an ``albumentations.Compose`` whose
``transforms`` list names albumentations classes by ``_target_``; adding a transform is a YAML edit.
albumentations applies geometric transforms to image and mask together (mask with nearest-neighbour
interpolation and its own fill value, 255 = ignore) and pixel-level transforms to the image only, so
labels are never blended or colour-jittered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from segkit.config import load_group  # noqa: E402

Transform = Callable[..., dict[str, Any]]


class RandomScaleCrop(A.DualTransform):
    """Random scale, pad and crop in one warp: ``RandomScale`` + ``RandomCrop(pad_if_needed, top_left)``.

    Draws a factor ``s`` uniformly from ``scale`` (of the input size), conceptually resizes the input to
    ``round(H*s) x round(W*s)``, pads it bottom/right to at least ``height x width`` (image ``fill``,
    mask ``fill_mask``) and takes a uniformly random ``height x width`` window. Only that window is
    computed (one ``cv2.warpAffine``), so the cost is that of the output crop, not of the up-to-4x larger
    scaled image: the same distribution of crops as the three-step recipe, 2-3x cheaper on 1024x2048.
    Image: ``interpolation`` (linear); mask: ``mask_interpolation`` (nearest), never blended.
    """

    def __init__(
        self,
        height: int,
        width: int,
        scale: tuple[float, float] = (0.5, 2.0),
        interpolation: int = cv2.INTER_LINEAR,
        mask_interpolation: int = cv2.INTER_NEAREST,
        fill: float = 0,
        fill_mask: float = 255,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomScaleCrop scale must be 0 < low <= high, got {scale}")
        self.height, self.width = int(height), int(width)
        self.scale = (float(scale[0]), float(scale[1]))
        self.interpolation, self.mask_interpolation = interpolation, mask_interpolation
        self.fill, self.fill_mask = fill, fill_mask

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        s = self.py_random.uniform(*self.scale)
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        y0 = self.py_random.randint(0, max(sh, self.height) - self.height)
        x0 = self.py_random.randint(0, max(sw, self.width) - self.width)
        # source -> output pixel map with cv2.resize's pixel-centre convention, shifted by the crop offset
        fx, fy = sw / w, sh / h
        matrix = np.array([[fx, 0.0, 0.5 * fx - 0.5 - x0], [0.0, fy, 0.5 * fy - 0.5 - y0]])
        return {"matrix": matrix, "valid": (sh - y0, sw - x0)}

    def _warp(
        self, img: np.ndarray, matrix: np.ndarray, valid: tuple[int, int], interp: int, fill: float
    ) -> np.ndarray:
        out = cv2.warpAffine(
            img, matrix, (self.width, self.height), flags=interp, borderMode=cv2.BORDER_REPLICATE
        )
        vh, vw = valid  # rows/cols beyond the scaled image are padding, exactly as after a constant pad
        out[max(vh, 0) :] = fill
        out[:, max(vw, 0) :] = fill
        return out

    def apply(self, img: np.ndarray, matrix: np.ndarray, valid: tuple[int, int], **params: Any) -> np.ndarray:
        return self._warp(img, matrix, valid, self.interpolation, self.fill)

    def apply_to_mask(
        self, mask: np.ndarray, matrix: np.ndarray, valid: tuple[int, int], **params: Any
    ) -> np.ndarray:
        return self._warp(mask, matrix, valid, self.mask_interpolation, self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "scale", "interpolation", "mask_interpolation", "fill", "fill_mask")


class FastNormalize(A.ImageOnlyTransform):
    """``albumentations.Normalize`` (``(img / max_pixel_value - mean) / std``, float32) via one table lookup.

    For uint8 images every output value is one of 256 per channel, so a float32 ``cv2.LUT`` gives the same
    numbers as ``Normalize`` about 7x faster (0.7 vs 4.8 ms on a 512x1024 crop); other dtypes are computed.
    """

    def __init__(
        self,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
        max_pixel_value: float = 255.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.mean, self.std, self.max_pixel_value = tuple(mean), tuple(std), float(max_pixel_value)
        m = np.asarray(self.mean, np.float64) * self.max_pixel_value
        d = np.asarray(self.std, np.float64) * self.max_pixel_value
        self._lut = ((np.arange(256, dtype=np.float64)[:, None] - m) / d).astype(np.float32)[None]  # 1x256xC

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == self._lut.shape[2]:
            return cv2.LUT(img, self._lut)
        m = np.asarray(self.mean, np.float32) * self.max_pixel_value
        d = np.asarray(self.std, np.float32) * self.max_pixel_value
        return ((img.astype(np.float32) - m) / d).astype(np.float32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "std", "max_pixel_value")


def build_transform(node: Mapping[str, Any] | DictConfig) -> Transform:
    """Instantiate one pipeline node (``_target_: albumentations.Compose`` with a ``transforms`` list)."""
    if "_target_" not in node:
        raise ValueError(
            f"augment pipeline needs a _target_ (e.g. albumentations.Compose), got keys {list(node)}"
        )
    return instantiate(node, _convert_="all")


#: transforms that normalise the image; their mean/std must be the augment config's ``mean``/``std``
NORMALIZE_TARGETS = ("segkit.data.transforms.FastNormalize", "albumentations.Normalize")


def normalization(cfg: Mapping[str, Any] | DictConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The augment config's ``(mean, std)``: the one normalisation value of a run.

    The pipelines' normalise steps read it (``mean: ${....mean}``), every checkpoint records it and the
    Predictor applies it, so what inference feeds the model is what training fed it.
    """
    missing = [k for k in ("mean", "std") if cfg.get(k) is None]
    if missing:
        raise ValueError(
            f"augment config lacks {missing}: it states the normalisation once, e.g. mean: [0.485, 0.456, "
            "0.406] and std: [0.229, 0.224, 0.225] (ImageNet's)"
        )
    mean = tuple(float(m) for m in cfg["mean"])
    std = tuple(float(s) for s in cfg["std"])
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"augment.mean and augment.std must be 3 values each (std > 0), got {mean}, {std}")
    return mean, std


def _check_normalization(pipeline: Any, where: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """A normalise step with its own numbers would train on one normalisation and record another."""
    for i, step in enumerate(pipeline.get("transforms") or []):
        if isinstance(step, Mapping) and step.get("_target_") in NORMALIZE_TARGETS:
            got = tuple(float(m) for m in step.get("mean", ())), tuple(float(s) for s in step.get("std", ()))
            if not (np.allclose(got[0], mean) and np.allclose(got[1], std)):
                raise ValueError(
                    f"augment.{where}.transforms[{i}] normalises with mean={list(got[0])} std={list(got[1])} "
                    f"but augment.mean/std are {list(mean)}/{list(std)}: write mean: ${{....mean}} and "
                    "std: ${....std} so the pipeline uses the one normalisation the checkpoint records"
                )


def build_transforms(cfg: str | Mapping[str, Any] | DictConfig) -> tuple[Transform, Transform]:
    """``(train_transform, val_transform)`` from an augment config or the name of one in ``conf/augment``.

    Example: ``train_tf, val_tf = build_transforms("demo")``; then
    ``CityscapesDataset(root, "train", transform=train_tf)``.
    """
    if isinstance(cfg, str):
        cfg = load_group("augment", cfg)
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    missing = [k for k in ("train", "val") if k not in cfg]
    if missing:
        raise KeyError(f"augment config lacks {missing}: it needs a 'train' and a 'val' pipeline")
    mean, std = normalization(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True)
    for where in ("train", "val"):
        _check_normalization(plain[where], where, mean, std)
    return build_transform(cfg.train), build_transform(cfg.val)
