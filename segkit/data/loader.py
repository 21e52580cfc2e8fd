"""Reproducible, resumable data loading.

Training samples are addressed as ``(epoch, index)``. :class:`ResumableSampler` produces them, endless
and sharded per rank; :class:`SeededSamples` seeds every random generator the transform uses from
``(seed, epoch, index)`` before loading, so a sample's augmentation is the same whatever the number of
workers, their order or a resume in the middle of an epoch.

Resuming: the sampler runs ahead of training (workers prefetch), so its own cursor is not what a checkpoint
should hold. Save ``sampler.state_at(samples_consumed)`` where ``samples_consumed`` is the number of
samples this rank has taken from the loader since the very start of training, i.e. ``step * batch_size``
with ``batch_size`` per rank (the batch sampler drops no samples mid-stream, every batch is full), and
pass it back as ``build_train_loader(..., state=...)`` or ``sampler.load_state_dict(...)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Endless ``(epoch, index)`` stream for one rank, resumable at any sample.

    Each epoch is a permutation of ``range(length)`` drawn from ``(seed, epoch)`` (identical on all ranks),
    split like ``DistributedSampler``: rank ``r`` takes every ``world_size``-th index starting at ``r``, so
    every rank gets the same number of samples per epoch (``drop_last`` drops the remainder, otherwise the
    permutation is padded by repeating its start).

    ``state_dict()`` is ``{"epoch", "position"}``: ``position`` = samples this rank already yielded in
    ``epoch``. Iterating continues from the current state and advances it.
    """

    def __init__(
        self,
        length: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if length < 1 or (drop_last and length < world_size):
            raise ValueError(f"dataset of {length} samples is too small for world_size={world_size}")
        self.length, self.shuffle, self.seed = int(length), bool(shuffle), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        self.position = 0

    @property
    def samples_per_epoch(self) -> int:
        """Samples each rank sees per epoch."""
        if self.drop_last:
            return self.length // self.world_size
        return math.ceil(self.length / self.world_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The dataset indices of ``epoch`` for this rank, in order."""
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.length)
            if self.shuffle
            else np.arange(self.length)
        )
        total = self.samples_per_epoch * self.world_size
        if total > self.length:
            order = np.concatenate([order, np.resize(order, total - self.length)])
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        while True:
            indices = self.epoch_indices(self.epoch)
            while self.position < len(indices):
                index = int(indices[self.position])
                self.position += 1
                yield self.epoch, index
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        if self.position >= self.samples_per_epoch:  # an epoch just ended: same as the next one's start
            return {"epoch": self.epoch + 1, "position": 0}
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.samples_per_epoch:
            raise ValueError(f"invalid sampler state {dict(state)} ({self.samples_per_epoch} per epoch)")
        self.epoch, self.position = epoch, position

    def state_at(self, samples_consumed: int) -> dict[str, int]:
        """State after ``samples_consumed`` samples of this rank counted from epoch 0, position 0.

        For a checkpoint at optimizer step ``step``: ``state_at(step * batch_size_per_rank)``
        (add the skipped count if training itself started from a non-zero state).
        """
        if samples_consumed < 0:
            raise ValueError(f"samples_consumed must be >= 0, got {samples_consumed}")
        epoch, position = divmod(int(samples_consumed), self.samples_per_epoch)
        return {"epoch": epoch, "position": position}

    def skip(self, n_samples: int) -> None:
        """Advance the state by ``n_samples`` without loading them."""
        done = self.epoch * self.samples_per_epoch + self.position + int(n_samples)
        self.load_state_dict(self.state_at(done))


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(epoch, index)`` is augmented from its own seed.

    Before ``dataset[index]`` it seeds Python's ``random``, NumPy's global generator, torch's CPU generator
    and, when the dataset's ``transform`` has ``set_random_seed`` (albumentations ``Compose``, which keeps
    its own generators), the transform, all from ``(seed, epoch, index)``. The caller's global generator
    states are restored afterwards, so loading in the main process does not disturb training randomness.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        assert isinstance(self.dataset, Sized)
        return len(self.dataset)

    def sample_seed(self, epoch: int, index: int) -> int:
        """A 32-bit seed mixing ``(seed, epoch, index)`` (no collisions between nearby tuples)."""
        return int(np.random.SeedSequence([self.seed, int(epoch), int(index)]).generate_state(1)[0])

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = self.sample_seed(epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            transform = getattr(self.dataset, "transform", None)
            if transform is not None and hasattr(transform, "set_random_seed"):
                transform.set_random_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: every sample on exactly one rank, none repeated.

    Unlike ``DistributedSampler`` it never pads, so summed validation metrics count each image once.
    """

    def __init__(self, length: int, *, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.length, self.rank, self.world_size = int(length), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def _worker_init(_: int) -> None:
    # One thread per worker: parallelism comes from the workers. (torch does this too; OpenCV's thread
    # count must not be changed here: cv2.setNumThreads in a forked child deadlocks once the parent has
    # used OpenCV's thread pool, so OpenCV calls inside workers simply run on the pool they inherited.)
    torch.set_num_threads(1)


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    state: Mapping[str, Any] | None = None,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """Endless training loader of full batches (``batch_size`` per rank); iterate it once for the whole run.

    The sampler is ``loader.batch_sampler.sampler`` (a :class:`ResumableSampler`); ``state`` resumes it
    (see the module docstring). Batches are identical for any ``num_workers``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    assert isinstance(dataset, Sized)
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    if sampler.samples_per_epoch < batch_size:
        raise ValueError(
            f"{sampler.samples_per_epoch} samples per rank and epoch is fewer than batch_size={batch_size}"
        )
    if state is not None:
        sampler.load_state_dict(state)
    return DataLoader(
        SeededSamples(dataset, seed),
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=True),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=(num_workers > 0) if persistent_workers is None else persistent_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        # each iterator draws a base seed from this generator; a private one keeps the global torch RNG
        # (part of the training state) untouched by starting to load
        generator=torch.Generator().manual_seed(int(seed)),
    )


def build_val_loader(
    dataset: Dataset,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Validation loader over this rank's shard (:class:`ShardSampler`), in order, last batch kept."""
    assert isinstance(dataset, Sized)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank=rank, world_size=world_size),
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(0),  # evaluating must not advance the global torch RNG
    )
