"""SegmentationMetrics against the official Cityscapes pixel-level evaluation, plus its edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapes_oracle import official_args, official_module
from PIL import Image

from segkit.evaluation import SegmentationMetrics, format_iou_table, save_results_json
from segkit.labels import CATEGORY_NAMES, CLASS_NAMES, ID_TO_TRAIN_ID, VALID_IDS, train_ids_to_label_ids

CITIES = ("frankfurt", "lindau", "munster")
H, W = 64, 128


def make_pairs(rng: np.random.Generator, absent: tuple[int, ...] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    """(GT label ids, predicted trainIds) pairs: GT from every official id, noisy predictions incl. void.

    ``absent`` trainIds occur nowhere: not in GT, and not in predictions on evaluated pixels.
    """
    ids = np.array(sorted(i for i in VALID_IDS if ID_TO_TRAIN_ID[i] not in absent), dtype=np.uint8)
    pairs = []
    for _ in CITIES:
        gt = rng.choice(ids, size=(H, W)).astype(np.uint8)
        gt_train = ID_TO_TRAIN_ID[gt]
        pred = gt_train.copy()
        noise = rng.random((H, W)) < 0.35
        choices = np.array([t for t in [*range(19), 255] if t not in absent], dtype=np.uint8)
        pred[noise] = rng.choice(choices, size=int(noise.sum()))
        pred[gt_train == 255] = rng.integers(0, 19, size=int((gt_train == 255).sum()))  # any class on void GT
        pairs.append((gt, pred))
    return pairs


def write_gt(root: Path, pairs) -> list[str]:
    paths = []
    for i, (city, (gt, _)) in enumerate(zip(CITIES, pairs)):
        path = root / "gtFine" / "val" / city / f"{city}_000000_{i:06d}_gtFine_labelIds.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(path)
        paths.append(str(path))
    return paths


def run_official(tmp_path: Path, pairs) -> dict:
    official = official_module()
    gt_paths = write_gt(tmp_path, pairs)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    pred_paths = []
    for i, (city, (_, pred)) in enumerate(zip(CITIES, pairs)):
        path = pred_dir / f"{city}_000000_{i:06d}_pred.png"
        Image.fromarray(train_ids_to_label_ids(pred)).save(path)
        pred_paths.append(str(path))
    return official.evaluateImgLists(pred_paths, gt_paths, official_args(official))


def ours(pairs) -> dict:
    metrics = SegmentationMetrics()
    for gt, pred in pairs:
        metrics.update(torch.from_numpy(pred), torch.from_numpy(ID_TO_TRAIN_ID[gt]))
    return metrics.compute()


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6


def assert_matches_official(result: dict, official: dict) -> None:
    for name in CLASS_NAMES:
        assert same(result["iou"][name], official["classScores"][name]), name
    assert same(result["miou"], official["averageScoreClasses"])
    for name in CATEGORY_NAMES:
        assert same(result["category_iou"][name], official["categoryScores"][name]), name
    assert same(result["mean_category_iou"], official["averageScoreCategories"])
    assert math.isnan(official["categoryScores"]["void"])  # the official 'void' category is never scored


def test_matches_official_script_on_all_label_ids(tmp_path: Path) -> None:
    pairs = make_pairs(np.random.default_rng(0))
    result, official = ours(pairs), run_official(tmp_path, pairs)
    assert_matches_official(result, official)
    assert 0.3 < result["miou"] < 0.9  # noisy but not degenerate, so the comparison means something
    assert not any(math.isnan(v) for v in result["iou"].values())
    # the official matrix's evaluated pixels (GT not ignoreInEval) are exactly ours
    conf = np.array(official["confMatrix"])
    evaluated = [i for i in VALID_IDS if ID_TO_TRAIN_ID[i] != 255]
    assert result["num_pixels"] == int(conf[evaluated].sum())


def test_absent_classes_are_nan_like_official(tmp_path: Path) -> None:
    # 'train' (16) and 'rider' (12) occur nowhere; 'human' then has only 'person' left.
    pairs = make_pairs(np.random.default_rng(1), absent=(16, 12))
    # 'bus' (15) only predicted on void ground truth: no tp/fp/fn -> NaN officially as well.
    for gt, pred in pairs:
        gt[ID_TO_TRAIN_ID[gt] == 15] = 0
        pred[pred == 15] = 0
        pred[:2][ID_TO_TRAIN_ID[gt[:2]] == 255] = 15
    result, official = ours(pairs), run_official(tmp_path, pairs)
    assert_matches_official(result, official)
    for name in ("train", "rider", "bus"):
        assert math.isnan(result["iou"][name])
    assert result["miou"] == pytest.approx(np.mean([v for v in result["iou"].values() if not math.isnan(v)]))


def test_hand_computed_values_and_void_predictions() -> None:
    m = SegmentationMetrics(num_classes=3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 255], [2, 0, 1, 2]])
    m.update(pred, target)
    assert m.confusion.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m.void_predictions.tolist() == [0, 1, 0]  # GT 1 predicted void: a false negative of class 1
    r = m.compute()
    assert r["iou"] == {"class_0": 1 / 3, "class_1": 1 / 3, "class_2": 1 / 2}
    assert r["miou"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)
    assert r["pixel_acc"] == 3 / 6 and r["num_pixels"] == 6
    assert r["acc"] == {"class_0": 1 / 2, "class_1": 1 / 2, "class_2": 1 / 2}
    assert r["category_iou"] == {} and math.isnan(r["mean_category_iou"])


def test_ignore_pixels_do_not_count() -> None:
    rng = np.random.default_rng(2)
    target = rng.integers(0, 19, size=(2, H, W)).astype(np.uint8)
    pred = rng.integers(0, 19, size=(2, H, W)).astype(np.uint8)
    base = SegmentationMetrics()
    base.update(pred, target)
    ignored = target.copy()
    ignored[:, :, : W // 2] = 255
    with_ignore, cropped = SegmentationMetrics(), SegmentationMetrics()
    with_ignore.update(pred, ignored)
    cropped.update(pred[:, :, W // 2 :], target[:, :, W // 2 :])
    assert torch.equal(with_ignore.counts, cropped.counts)
    assert with_ignore.compute()["num_pixels"] == 2 * H * (W // 2)
    assert not torch.equal(with_ignore.counts, base.counts)


def test_batched_unbatched_torch_numpy_agree() -> None:
    rng = np.random.default_rng(3)
    target = rng.integers(0, 20, size=(3, H, W)).astype(np.uint8)
    target[target == 19] = 255
    pred = rng.integers(0, 19, size=(3, H, W)).astype(np.int64)
    batched, single, numpy_in = SegmentationMetrics(), SegmentationMetrics(), SegmentationMetrics()
    batched.update(torch.from_numpy(pred), torch.from_numpy(target))
    for p, t in zip(pred, target):
        single.update(torch.from_numpy(p), torch.from_numpy(t).long())
        numpy_in.update(p, t)
    assert torch.equal(batched.counts, single.counts) and torch.equal(batched.counts, numpy_in.counts)
    assert int(batched.confusion.sum()) == int((target != 255).sum())
    assert batched.confusion.dtype == torch.int64 and batched.confusion.shape == (19, 19)
    assert batched.compute() == single.compute()
    batched.reset()
    assert int(batched.counts.sum()) == 0 and math.isnan(batched.compute()["miou"])


def test_bad_input_is_rejected_with_a_clear_message() -> None:
    m = SegmentationMetrics()
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="value 33"):
        m.update(torch.full((4, 4), 33), torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target holds value 19"):
        m.update(torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), 19))
    with pytest.raises(TypeError, match="integer"):
        m.update(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="argmax"):
        m.update(torch.zeros(1, 19, 4, 4, dtype=torch.long), torch.zeros(1, 19, 4, 4, dtype=torch.long))
    assert int(m.counts.sum()) == 0  # nothing half-counted


def _all_reduce_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        m = SegmentationMetrics()
        if rank == 0:  # rank 1 sees no data at all and must still contribute zeros
            m.update(torch.tensor([[0, 1], [255, 2]]), torch.tensor([[0, 1], [1, 2]]))
            m.update(torch.tensor([[3, 3]]), torch.tensor([[3, 4]]))
        m.all_reduce()
        torch.save(m.counts, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    # fork, not spawn: the children reuse this process's imports instead of importing torch and segkit again
    args = (2, str(tmp_path / "init"), str(tmp_path))
    mp.start_processes(_all_reduce_worker, args=args, nprocs=2, join=True, start_method="fork")
    expected = SegmentationMetrics()
    expected.update(torch.tensor([[0, 1], [255, 2]]), torch.tensor([[0, 1], [1, 2]]))
    expected.update(torch.tensor([[3, 3]]), torch.tensor([[3, 4]]))
    for rank in range(2):
        counts = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(counts, expected.counts), rank
    assert int(expected.void_predictions[1]) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_stay_on_the_gpu() -> None:
    rng = np.random.default_rng(5)
    target = rng.integers(0, 19, size=(2, H, W))
    pred = rng.integers(0, 20, size=(2, H, W))
    pred[pred == 19] = 255
    gpu, cpu = SegmentationMetrics(), SegmentationMetrics()
    gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda())
    cpu.update(pred, target)
    assert gpu.confusion.device.type == "cuda"
    assert torch.equal(gpu.counts.cpu(), cpu.counts)
    assert gpu.compute() == cpu.compute()


def test_all_reduce_is_a_noop_without_distributed() -> None:
    m = SegmentationMetrics()
    m.update(np.ones((4, 4), np.uint8), np.ones((4, 4), np.uint8))
    m.all_reduce()
    assert int(m.confusion[1, 1]) == 16 and int(m.counts.sum()) == 16


def test_iou_table_and_json(tmp_path: Path) -> None:
    result = ours(make_pairs(np.random.default_rng(4), absent=(16,)))
    table = format_iou_table(result)
    for name in (*CLASS_NAMES, *CATEGORY_NAMES):
        assert name in table
    assert f"{100 * result['miou']:.2f}" in table
    assert f"{100 * result['mean_category_iou']:.2f}" in table
    assert f"{100 * result['iou']['road']:.2f}" in table
    train_row = next(line for line in table.splitlines() if line.strip().startswith("train "))
    assert "nan" in train_row or "n/a" in train_row
    rows = [line for line in table.splitlines() if line.strip().startswith(("road ", "sidewalk "))]
    assert len({len(r) for r in rows}) == 1  # aligned columns

    path = tmp_path / "out" / "metrics.json"
    save_results_json(result, path)
    loaded = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert loaded["miou"] == pytest.approx(result["miou"])
    assert loaded["iou"]["train"] is None
    assert loaded["iou"]["road"] == pytest.approx(result["iou"]["road"])
