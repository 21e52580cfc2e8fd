"""Benchmark-server PNGs: names the official matcher finds, label-id values, and official mIoU parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapes_oracle import official_args, official_module
from PIL import Image

from segkit.evaluation import SegmentationMetrics, save_benchmark_pngs
from segkit.evaluation.benchmark_png import benchmark_name
from segkit.labels import CLASS_NAMES, ID_TO_TRAIN_ID, TRAIN_ID_TO_ID, VALID_IDS, colorize

H, W = 64, 128
FRAMES = (("frankfurt", 0, 294), ("lindau", 0, 19), ("munster", 1, 2))


def write_dataset(root: Path, rng: np.random.Generator) -> list[tuple[Path, Path, np.ndarray, np.ndarray]]:
    """(image path, GT labelIds path, GT label ids, predicted trainIds) in the official layout."""
    ids = np.array(sorted(VALID_IDS), dtype=np.uint8)
    items = []
    for city, seq, frame in FRAMES:
        stem = f"{city}_{seq:06d}_{frame:06d}"
        image = root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"
        gt_path = root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"
        for path in (image, gt_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)).save(image)
        gt = rng.choice(ids, size=(H, W)).astype(np.uint8)
        Image.fromarray(gt).save(gt_path)
        pred = ID_TO_TRAIN_ID[gt].copy()
        noise = rng.random((H, W)) < 0.4
        pred[noise] = rng.choice(np.array([*range(19), 255], dtype=np.uint8), size=int(noise.sum()))
        items.append((image, gt_path, gt, pred))
    return items


def test_names_values_and_colour_round_trip(tmp_path: Path) -> None:
    image, _, _, pred = write_dataset(tmp_path / "cs", np.random.default_rng(0))[0]
    out = tmp_path / "results"
    written = save_benchmark_pngs(torch.from_numpy(pred), image, out, color=True)
    assert [p.relative_to(out).as_posix() for p in written] == [
        "frankfurt_000000_000294_leftImg8bit.png",
        "color/color_frankfurt_000000_000294_leftImg8bit.png",
    ]
    with Image.open(written[0]) as png:
        assert png.mode == "L" and png.size == (W, H)
        label_ids = np.array(png)
    assert set(np.unique(label_ids)) <= {0, *TRAIN_ID_TO_ID.tolist()}
    assert np.array_equal(ID_TO_TRAIN_ID[label_ids], pred)  # trainIds -> label ids -> trainIds is lossless
    assert np.all(label_ids[pred == 13] == 26) and (pred == 13).any()  # car: trainId 13, label id 26
    assert np.all(label_ids[pred == 255] == 0)
    with Image.open(written[1]) as png:
        assert png.mode == "RGB"
        assert np.array_equal(np.array(png), colorize(pred))


def test_official_matcher_finds_exactly_the_label_png(tmp_path: Path) -> None:
    official = official_module()
    items = write_dataset(tmp_path / "cs", np.random.default_rng(1))
    out = tmp_path / "results"
    expected = [save_benchmark_pngs(pred, image, out, color=True)[0] for image, _, _, pred in items]
    args = official_args(official, out)
    # getPrediction exits the process on zero or several matches, so returning means exactly one.
    found = [official.getPrediction(args, str(gt_path)) for _, gt_path, _, _ in items]
    assert [Path(p) for p in found] == expected


def test_official_evaluation_of_written_folder_equals_metrics(tmp_path: Path) -> None:
    official = official_module()
    items = write_dataset(tmp_path / "cs", np.random.default_rng(2))
    out = tmp_path / "results"
    metrics = SegmentationMetrics()
    for image, _, gt, pred in items:
        save_benchmark_pngs(pred, image, out, color=True)
        metrics.update(pred, ID_TO_TRAIN_ID[gt])
    ours = metrics.compute()
    args = official_args(official, out)
    gt_paths = [str(gt_path) for _, gt_path, _, _ in items]
    predictions = [official.getPrediction(args, gt) for gt in gt_paths]
    theirs = official.evaluateImgLists(predictions, gt_paths, args)
    assert abs(ours["miou"] - theirs["averageScoreClasses"]) <= 1e-6
    assert abs(ours["mean_category_iou"] - theirs["averageScoreCategories"]) <= 1e-6
    for name in CLASS_NAMES:
        assert abs(ours["iou"][name] - theirs["classScores"][name]) <= 1e-6, name
    assert not math.isnan(ours["miou"]) and 0.2 < ours["miou"] < 0.9


def test_names_for_other_inputs() -> None:
    assert benchmark_name("a/berlin_000123_000019_leftImg8bit.jpg") == "berlin_000123_000019_leftImg8bit.png"
    assert benchmark_name("stuttgart_00_000000_000042_leftImg8bit.png") == (
        "stuttgart_00_000000_000042_leftImg8bit.png"
    )


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    image, _, _, pred = write_dataset(tmp_path / "cs", np.random.default_rng(3))[0]
    with pytest.raises(ValueError, match="holiday.png.*not a Cityscapes file name"):
        save_benchmark_pngs(pred, tmp_path / "holiday.png", tmp_path / "out")
    with pytest.raises(ValueError, match="full resolution"):
        save_benchmark_pngs(pred[::2, ::2], image, tmp_path / "out")
    bad = pred.astype(np.int64)
    bad[0, 0] = 26  # a label id, not a trainId
    with pytest.raises(ValueError, match="value 26"):
        save_benchmark_pngs(bad, image, tmp_path / "out")
    with pytest.raises(ValueError, match="H x W"):
        save_benchmark_pngs(pred[None], image, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written on error
