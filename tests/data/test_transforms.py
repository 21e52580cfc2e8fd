"""Augmentation from conf/augment: recipe parameters, joint image/mask alignment, untouched mask values."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from segkit.config import group_options, load_group
from segkit.data import CityscapesDataset
from segkit.data.transforms import FastNormalize, RandomScaleCrop, build_transforms


def _label_image(seed: int, h: int = 64, w: int = 128, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A mask of 16x16 blocks of classes 0..18 and an image whose colour encodes the class."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 19, (h // block, w // block)), np.ones((block, block), int)).astype(
        np.uint8
    )
    colours = np.stack([np.arange(19) * 13 + 5, 250 - np.arange(19) * 11, (np.arange(19) * 97) % 200 + 30], 1)
    return colours.astype(np.uint8)[mask], mask


def _geometric_only(pipeline: A.Compose) -> A.Compose:
    """The pipeline without pixel-level transforms, Normalize and ToTensorV2 (image keeps uint8 colours)."""
    return A.Compose([t for t in pipeline.transforms if isinstance(t, A.DualTransform)])


def test_every_config_has_train_and_val_pipelines() -> None:
    names = group_options("augment")
    assert {"cityscapes", "demo", "smoke"} <= set(names)
    for name in names:
        train, val = build_transforms(name)
        assert isinstance(train, A.Compose) and isinstance(val, A.Compose)
        assert type(val.transforms[-1]).__name__ == "ToTensorV2"
        assert not any(isinstance(t, A.DualTransform) for t in val.transforms), (
            f"{name}: val must not resize/crop"
        )


@pytest.mark.parametrize(
    "name,crop", [("cityscapes", (512, 1024)), ("demo", (256, 256)), ("smoke", (64, 64))]
)
def test_recipe_parameters(name: str, crop: tuple[int, int]) -> None:
    train, _ = build_transforms(name)
    kinds = {type(t).__name__: t for t in train.transforms}
    sc = kinds["RandomScaleCrop"]
    low, high = (0.5, 2.0) if name != "smoke" else (0.75, 1.25)
    assert sc.scale == (low, high) and (sc.height, sc.width) == crop
    assert sc.mask_interpolation == cv2.INTER_NEAREST and sc.interpolation == cv2.INTER_LINEAR
    assert (sc.fill, sc.fill_mask, sc.p) == (0, 255, 1.0)
    factors = []
    for s in range(60):  # the factor actually drawn (x scale of the warp matrix)
        sc.set_random_seed(s)
        factors.append(sc.get_params_dependent_on_data({"shape": (1000, 2000, 3)}, {})["matrix"][0, 0])
    assert low <= min(factors) < low + 0.2 and high - 0.2 < max(factors) <= high
    assert kinds["HorizontalFlip"].p == 0.5
    assert isinstance(kinds["ColorJitter"], A.ImageOnlyTransform)
    norm = kinds["FastNormalize"]
    np.testing.assert_allclose(np.ravel(norm.mean), [0.485, 0.456, 0.406])
    np.testing.assert_allclose(np.ravel(norm.std), [0.229, 0.224, 0.225])


@pytest.mark.parametrize("scale,y0,x0", [(0.5, 0, 0), (0.8, 0, 0), (1.37, 10, 33), (2.0, 60, 190)])
def test_random_scale_crop_equals_resize_pad_crop(sample_root, scale: float, y0: int, x0: int) -> None:
    """The one-warp crop matches cv2.resize + constant pad (0 / 255) + crop: image within 1 grey level."""
    rgb, mask = CityscapesDataset(sample_root, "train", verbose=False).load(1)
    h, w = mask.shape
    sh, sw = round(h * scale), round(w * scale)
    ch, cw = 48, 96
    img = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_LINEAR)
    ph, pw = max(sh, ch), max(sw, cw)
    img = cv2.copyMakeBorder(img, 0, ph - sh, 0, pw - sw, cv2.BORDER_CONSTANT, value=0)
    y0, x0 = min(y0, ph - ch), min(x0, pw - cw)
    ref_img = img[y0 : y0 + ch, x0 : x0 + cw]
    ref_msks = []  # OpenCV's two nearest-neighbour conventions differ only in rounding at ties
    for flag in (cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT):
        msk = cv2.resize(mask, (sw, sh), interpolation=flag)
        msk = cv2.copyMakeBorder(msk, 0, ph - sh, 0, pw - sw, cv2.BORDER_CONSTANT, value=255)
        ref_msks.append(msk[y0 : y0 + ch, x0 : x0 + cw])

    t = RandomScaleCrop(ch, cw, scale=(scale, scale))
    fx, fy = sw / w, sh / h
    matrix = np.array([[fx, 0.0, 0.5 * fx - 0.5 - x0], [0.0, fy, 0.5 * fy - 0.5 - y0]])
    out_img = t.apply(rgb, matrix, (sh - y0, sw - x0))
    out_msk = t.apply_to_mask(mask, matrix, (sh - y0, sw - x0))
    assert out_img.shape == (ch, cw, 3) and out_msk.shape == (ch, cw) and out_msk.dtype == np.uint8
    assert np.abs(out_img.astype(int) - ref_img.astype(int)).max() <= 1
    pad = np.zeros((ch, cw), bool)  # the padded area: beyond the scaled image
    pad[max(sh - y0, 0) :] = True
    pad[:, max(sw - x0, 0) :] = True
    assert (out_msk[pad] == 255).all() and (out_img[pad] == 0).all()
    assert pad.any() == (sh - y0 < ch or sw - x0 < cw)
    assert max((out_msk == ref).mean() for ref in ref_msks) > 0.97
    assert set(np.unique(out_msk).tolist()) <= set(np.unique(mask).tolist()) | {255}


def test_fast_normalize_equals_albumentations_normalize() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
    ref = A.Normalize(mean=mean, std=std)(image=img)["image"]
    out = FastNormalize(mean=mean, std=std)(image=img)["image"]
    assert out.dtype == np.float32 and out.shape == (40, 50, 3)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    as_float = FastNormalize(mean=mean, std=std)(image=img.astype(np.float32))["image"]
    np.testing.assert_allclose(as_float, ref, atol=1e-5)


def test_random_scale_crop_offsets_cover_the_scaled_image() -> None:
    t = RandomScaleCrop(64, 64, scale=(1.0, 1.0))
    offsets = set()
    for s in range(300):
        t.set_random_seed(s)
        m = t.get_params_dependent_on_data({"shape": (80, 160)}, {})["matrix"]
        offsets.add((round(-m[1, 2]), round(-m[0, 2])))
    ys, xs = zip(*offsets)
    assert set(ys) == set(range(17))  # every vertical offset 0..16 drawn
    assert min(xs) >= 0 and max(xs) <= 96 and len(set(xs)) > 80
    with pytest.raises(ValueError, match="scale"):
        RandomScaleCrop(8, 8, scale=(2.0, 1.0))


@pytest.mark.parametrize("seed", range(12))
def test_geometric_augmentation_keeps_image_and_mask_aligned(seed: int) -> None:
    train, _ = build_transforms("demo")  # scale 0.5-2 with 256x256 crops: exercises both padding and cropping
    geo = _geometric_only(train)
    image, mask = _label_image(seed)
    colours = {int(c): image[mask == c][0] for c in np.unique(mask)}
    geo.set_random_seed(seed)
    out = geo(image=image, mask=mask)
    img, msk = out["image"], out["mask"]
    assert img.shape == (256, 256, 3) and msk.shape == (256, 256) and msk.dtype == np.uint8
    assert set(np.unique(msk).tolist()) <= set(np.unique(mask).tolist()) | {255}
    # padding: mask 255 exactly where the image is padded with 0
    pad = msk == 255
    assert (img[pad] == 0).all()
    # away from class borders (a 5x5 window of one class) the image colour is the colour of the mask's class
    uniform = cv2.erode(msk, np.ones((5, 5), np.uint8)) == cv2.dilate(msk, np.ones((5, 5), np.uint8))
    checked = 0
    for c, colour in colours.items():
        sel = uniform & (msk == c)
        if sel.any():
            assert np.abs(img[sel].astype(int) - colour.astype(int)).max() <= 2, f"class {c} misaligned"
            checked += int(sel.sum())
    assert checked > 0.3 * (~pad).sum()


def test_flip_happens_for_some_seeds_and_moves_mask_with_image() -> None:
    image, mask = _label_image(0)
    flip = A.Compose([A.HorizontalFlip(p=0.5)])
    flipped = 0
    for s in range(10):
        flip.set_random_seed(s)
        out = flip(image=image, mask=mask)
        if not np.array_equal(out["mask"], mask):
            flipped += 1
            np.testing.assert_array_equal(out["mask"], mask[:, ::-1])
            np.testing.assert_array_equal(out["image"], image[:, ::-1])
    assert 0 < flipped < 10


def test_full_train_pipeline_never_changes_mask_values(sample_root) -> None:
    train, _ = build_transforms("smoke")
    geo = _geometric_only(train)
    ds = CityscapesDataset(sample_root, "train", verbose=False)
    for i in range(len(ds)):
        rgb, tid = ds.load(i)
        for seed in range(3):
            train.set_random_seed(seed)
            full = train(image=rgb, mask=tid)
            geo.set_random_seed(seed)  # geometric parameters are drawn first, so they match the full pipeline
            ref = geo(image=rgb, mask=tid)
            assert isinstance(full["image"], torch.Tensor) and full["image"].dtype == torch.float32
            assert full["image"].shape == (3, 64, 64)
            np.testing.assert_array_equal(full["mask"].numpy(), ref["mask"])
            assert set(np.unique(ref["mask"]).tolist()) <= set(np.unique(tid).tolist()) | {255}


def test_val_pipeline_is_normalisation_only(sample_root) -> None:
    _, val = build_transforms("cityscapes")
    ds = CityscapesDataset(sample_root, "val", transform=val, verbose=False)
    raw = CityscapesDataset(sample_root, "val", verbose=False)
    image, target = ds[0]
    ref_image, ref_target = raw[0]  # transform=None: the same ImageNet normalisation at full size
    assert image.shape == (3, 64, 128)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=0)
    assert torch.equal(target, ref_target) and target.dtype == torch.int64


def test_users_add_a_transform_in_yaml_and_bad_configs_fail() -> None:
    cfg = load_group("augment", "smoke")
    cfg.train.transforms.insert(0, OmegaConf.create({"_target_": "albumentations.VerticalFlip", "p": 1.0}))
    train, _ = build_transforms(cfg)
    assert type(train.transforms[0]).__name__ == "VerticalFlip"
    _, mask = _label_image(1)
    out = A.Compose([train.transforms[0]])(image=np.zeros((64, 128, 3), np.uint8), mask=mask)
    np.testing.assert_array_equal(out["mask"], mask[::-1])
    with pytest.raises(KeyError, match="val"):
        build_transforms({"train": cfg.train})
    with pytest.raises(ValueError, match="unknown augment 'nope'"):
        build_transforms("nope")
