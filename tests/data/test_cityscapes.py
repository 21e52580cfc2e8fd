"""CityscapesDataset: trainId mapping, API shapes and dtypes, and a file-naming error for each bad input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from cityscapesscripts.helpers.labels import labels as official_labels
from PIL import Image

from segkit import labels
from segkit.data import CityscapesDataset, CityscapesError
from segkit.data.cityscapes import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture
def root(sample_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the sample, for tests that break files."""
    return Path(shutil.copytree(sample_root, tmp_path / "cs"))


def _label_of(ds: CityscapesDataset, i: int, kind: str = "labelIds") -> Path:
    return ds.label_files[i].with_name(ds.label_files[i].name.replace("labelIds", kind))


def test_train_id_mapping_for_every_official_id() -> None:
    ids = [lab.id for lab in official_labels if lab.id >= 0]
    assert len(ids) == 34
    for i in ids:
        lab = id2label[i]
        expected = 255 if lab.ignoreInEval or lab.trainId in (-1, 255) else lab.trainId
        assert labels.ID_TO_TRAIN_ID[i] == expected, lab.name
    unused = np.setdiff1d(np.arange(256), ids)
    assert (labels.ID_TO_TRAIN_ID[unused] == 255).all()
    assert sorted(set(labels.ID_TO_TRAIN_ID[ids].tolist()) - {255}) == list(range(19))


def test_api_shapes_dtypes_and_default_normalisation(sample_root: Path) -> None:
    ds = CityscapesDataset(sample_root, split="train")
    assert len(ds) == 4 and len(ds.files) == 4
    assert all(f.name.endswith("_leftImg8bit.png") and f.is_file() for f in ds.files)
    assert ds.files[0].parent.parent == sample_root / "leftImg8bit" / "train"
    rgb, tid = ds.load(0)
    assert rgb.shape == (64, 128, 3) and rgb.dtype == np.uint8
    assert tid.shape == (64, 128) and tid.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(ds.files[0]).convert("RGB")))
    assert set(np.unique(tid).tolist()) <= set(range(19)) | {255}
    assert (tid == 255).any() and (tid < 19).sum() > tid.size // 2  # bonnet is void, the scene is labelled

    image, target = ds[0]
    assert image.shape == (3, 64, 128) and image.dtype == torch.float32
    assert target.shape == (64, 128) and target.dtype == torch.int64
    expected = (rgb.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(target.numpy(), tid)


def test_transform_output_is_converted(sample_root: Path) -> None:
    def flip(image: np.ndarray, mask: np.ndarray) -> dict:
        return {"image": image[:, ::-1], "mask": mask[:, ::-1]}

    ds = CityscapesDataset(sample_root, "val", transform=flip)
    rgb, tid = ds.load(1)
    image, target = ds[1]
    assert image.dtype == torch.float32 and target.dtype == torch.int64
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy() * 255.0, rgb[:, ::-1], atol=1e-3)
    np.testing.assert_array_equal(target.numpy(), tid[:, ::-1])


def test_label_train_ids_preferred_and_equal_to_mapping(root: Path) -> None:
    with_files = CityscapesDataset(root, "train")
    mapped = CityscapesDataset(root, "train", use_train_id_files=False)
    assert all(p is not None for p in with_files.train_id_files)
    assert all(p is None for p in mapped.train_id_files)
    for i in range(len(mapped)):
        ids = np.asarray(Image.open(mapped.label_files[i]))
        np.testing.assert_array_equal(mapped.load(i)[1], labels.ID_TO_TRAIN_ID[ids])
        np.testing.assert_array_equal(with_files.load(i)[1], mapped.load(i)[1])
    # preferred: a changed labelTrainIds file is what load() returns
    Image.fromarray(np.full((64, 128), 5, np.uint8)).save(_label_of(with_files, 0, "labelTrainIds"))
    assert (CityscapesDataset(root, "train").load(0)[1] == 5).all()
    assert not (CityscapesDataset(root, "train", use_train_id_files=False).load(0)[1] == 5).all()


def test_test_split_void_only_and_summary(sample_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="segkit.data.cityscapes"):
        ds = CityscapesDataset(sample_root, "test")
    assert len(ds) == 2
    assert all((ds.load(i)[1] == 255).all() for i in range(2))
    text = caplog.text
    assert "split 'test' (gtFine), 2 images from 2 cities" in text
    assert "train: 4 images, 3 cities" in text and "val: 2 images, 2 cities" in text
    assert len([r for r in caplog.records if "Cityscapes at" in r.getMessage()]) == 1


def test_gt_coarse_train_extra(root: Path) -> None:
    for f in (root / "leftImg8bit" / "train").glob("*/*.png"):
        dst = root / "leftImg8bit" / "train_extra" / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    for f in (root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"):
        dst = root / "gtCoarse" / "train_extra" / f.parent.name / f.name.replace("gtFine", "gtCoarse")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    ds = CityscapesDataset(root, "train_extra")
    fine = CityscapesDataset(root, "train")
    assert ds.annotation == "gtCoarse" and len(ds) == 4
    assert ds.label_files[0].name.endswith("_gtCoarse_labelIds.png")
    np.testing.assert_array_equal(ds.load(2)[1], fine.load(2)[1])


def test_missing_root_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CityscapesDataset(tmp_path / "nowhere")


def test_missing_split_names_folder(sample_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit[/\\]train_extra"):
        CityscapesDataset(sample_root, "train_extra")


def test_missing_label_names_file_or_is_skipped_on_request(root: Path) -> None:
    ds = CityscapesDataset(root, "train")
    victim = ds.label_files[1]
    victim.unlink()
    with pytest.raises(CityscapesError, match=victim.name):
        CityscapesDataset(root, "train")
    kept = CityscapesDataset(root, "train", skip_missing_labels=True)
    assert len(kept) == 3 and ds.files[1] not in kept.files


def test_size_mismatch_names_both_files(root: Path) -> None:
    ds = CityscapesDataset(root, "train", use_train_id_files=False)
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(ds.label_files[2])
    ds.load(1)  # others still load
    with pytest.raises(CityscapesError, match="size mismatch") as err:
        ds.load(2)
    assert ds.label_files[2].name in str(err.value) and ds.files[2].name in str(err.value)


@pytest.mark.parametrize("which", ["image", "label"])
def test_truncated_png_names_file(root: Path, which: str) -> None:
    ds = CityscapesDataset(root, "train")
    path = ds.files[0] if which == "image" else ds.train_id_files[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CityscapesError, match=path.name):
        ds.load(0)


@pytest.mark.parametrize("kind,value", [("labelIds", 200), ("labelIds", 34), ("labelTrainIds", 19)])
def test_invalid_label_value_names_file_and_value(root: Path, kind: str, value: int) -> None:
    ds = CityscapesDataset(root, "val", use_train_id_files=kind == "labelTrainIds")
    path = _label_of(ds, 0, kind)
    arr = np.asarray(Image.open(path)).copy()
    arr[10, 20] = value
    Image.fromarray(arr).save(path)
    with pytest.raises(CityscapesError, match=rf"\[{value}\].*{path.name}"):
        ds.load(0)
    ds.load(1)


def test_rgb_label_png_rejected(root: Path) -> None:
    ds = CityscapesDataset(root, "val", use_train_id_files=False)
    Image.new("RGB", (128, 64)).save(ds.label_files[0])
    with pytest.raises(CityscapesError, match=ds.label_files[0].name):
        ds.load(0)
