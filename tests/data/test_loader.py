"""Resumable sampling, per-sample seeding and loaders: same batches for any worker count, exact resume."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from segkit.data import CityscapesDataset
from segkit.data.loader import (
    ResumableSampler,
    SeededSamples,
    ShardSampler,
    build_train_loader,
    build_val_loader,
)
from segkit.data.transforms import build_transforms


def _take(sampler: ResumableSampler, n: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), n))


@pytest.fixture(scope="module")
def train_ds(sample_root) -> CityscapesDataset:
    train_tf, _ = build_transforms("smoke")
    return CityscapesDataset(sample_root, "train", transform=train_tf, verbose=False)


def test_epochs_are_permutations_seeded_by_epoch() -> None:
    s = ResumableSampler(7, shuffle=True, seed=3)
    out = _take(s, 21)
    assert [e for e, _ in out] == [0] * 7 + [1] * 7 + [2] * 7
    epochs = [[i for e, i in out if e == k] for k in range(3)]
    assert all(sorted(ep) == list(range(7)) for ep in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert _take(ResumableSampler(7, shuffle=True, seed=3), 21) == out
    assert _take(ResumableSampler(7, shuffle=True, seed=4), 7) != out[:7]
    assert [i for _, i in _take(ResumableSampler(7, shuffle=False, seed=3), 9)] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


@pytest.mark.parametrize("drop_last,per_rank", [(True, 3), (False, 4)])
def test_rank_sharding_like_distributed_sampler(drop_last: bool, per_rank: int) -> None:
    shards = [
        ResumableSampler(10, shuffle=True, seed=1, rank=r, world_size=3, drop_last=drop_last)
        for r in range(3)
    ]
    epoch0 = [[i for _, i in _take(s, s.samples_per_epoch)] for s in shards]
    assert [len(e) for e in epoch0] == [per_rank] * 3 and all(s.samples_per_epoch == per_rank for s in shards)
    flat = sum(epoch0, [])
    if drop_last:  # disjoint, one sample of the permutation dropped
        assert len(set(flat)) == 9
    else:  # everything covered, padded by repeating
        assert set(flat) == set(range(10)) and len(flat) == 12
    # same epoch permutation on every rank: rank r holds positions r, r + 3, ...
    perm = np.random.default_rng([1, 0]).permutation(10)
    padded = np.concatenate([perm, perm[:2]])
    assert epoch0[1] == (perm[1:9:3] if drop_last else padded[1:12:3]).tolist()


def test_resume_from_state_equals_uninterrupted() -> None:
    full = _take(ResumableSampler(5, shuffle=True, seed=9), 23)
    for k in (0, 3, 5, 7, 15):
        first = ResumableSampler(5, shuffle=True, seed=9)
        assert _take(first, k) == full[:k]
        state = first.state_dict()
        assert state == first.state_at(k) == {"epoch": k // 5, "position": k % 5}
        resumed = ResumableSampler(5, shuffle=True, seed=9)
        resumed.load_state_dict(state)
        assert _take(resumed, 23 - k) == full[k:]
        skipped = ResumableSampler(5, shuffle=True, seed=9)
        skipped.skip(k)
        assert _take(skipped, 4) == full[k : k + 4]
    with pytest.raises(ValueError, match="position"):
        ResumableSampler(5, shuffle=True, seed=9).load_state_dict({"epoch": 0, "position": 6})
    with pytest.raises(ValueError, match="world_size"):
        ResumableSampler(5, shuffle=True, seed=9, rank=2, world_size=2)


def test_seeded_samples_repeatable_and_restore_global_rng(train_ds: CityscapesDataset) -> None:
    seeded = SeededSamples(train_ds, seed=11)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    a = seeded[(0, 2)]
    after = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    assert after == (random.random(), np.random.rand(), torch.rand(1).item())
    b = seeded[(0, 2)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = seeded[(1, 2)]
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], SeededSamples(train_ds, seed=12)[(0, 2)][0])
    assert seeded.sample_seed(0, 1) != seeded.sample_seed(1, 0)


def _batches(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(iter(loader), n))


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_same_batches_with_0_and_2_workers_and_exact_resume(train_ds: CityscapesDataset) -> None:
    serial = _batches(build_train_loader(train_ds, batch_size=2, num_workers=0, seed=5), 5)  # 2.5 epochs
    parallel = _batches(build_train_loader(train_ds, batch_size=2, num_workers=2, seed=5), 5)
    assert serial[0][0].shape == (2, 3, 64, 64) and serial[0][1].dtype == torch.int64
    assert _same(serial, parallel)
    assert not torch.equal(serial[0][0], serial[2][0])  # epoch 1 differs from epoch 0
    # resume after 3 batches of 2 (crossing an epoch boundary) with the state the engine would store
    loader = build_train_loader(train_ds, batch_size=2, num_workers=0, seed=5)
    state = loader.batch_sampler.sampler.state_at(3 * 2)
    assert state == {"epoch": 1, "position": 2}
    resumed = build_train_loader(train_ds, batch_size=2, num_workers=2, seed=5, state=state)
    assert _same(_batches(resumed, 2), serial[3:5])
    other_seed = _batches(build_train_loader(train_ds, batch_size=2, num_workers=0, seed=6), 1)
    assert not torch.equal(other_seed[0][0], serial[0][0])


def test_train_loader_shards_ranks(train_ds: CityscapesDataset) -> None:
    loaders = [
        build_train_loader(train_ds, batch_size=1, num_workers=0, seed=2, rank=r, world_size=2)
        for r in range(2)
    ]
    picked = [[i for _, i in _take(ld.batch_sampler.sampler, 2)] for ld in loaders]
    assert sorted(picked[0] + picked[1]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="batch_size"):
        build_train_loader(train_ds, batch_size=3, num_workers=0, seed=2, world_size=2)


def test_loaders_leave_global_torch_rng_alone(train_ds: CityscapesDataset, sample_root) -> None:
    _, val_tf = build_transforms("smoke")
    val = CityscapesDataset(sample_root, "val", transform=val_tf, verbose=False)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _batches(build_train_loader(train_ds, batch_size=2, num_workers=0, seed=1), 2)
    list(build_val_loader(val, num_workers=0))
    assert torch.equal(torch.rand(3), expected)


def test_val_loader_every_image_exactly_once(sample_root) -> None:
    for length, ws in [(7, 3), (2, 4), (4, 2)]:
        seen = sorted(i for r in range(ws) for i in ShardSampler(length, rank=r, world_size=ws))
        assert seen == list(range(length))
    _, val_tf = build_transforms("smoke")
    val = CityscapesDataset(sample_root, "val", transform=val_tf, verbose=False)
    got = []
    for r in range(2):
        batches = list(build_val_loader(val, batch_size=1, num_workers=0, rank=r, world_size=2))
        assert len(batches) == 1 and batches[0][0].shape == (1, 3, 64, 128)
        got.append(batches[0][1][0])
    assert torch.equal(got[0], val[0][1]) and torch.equal(got[1], val[1][1])
