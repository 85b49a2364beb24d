"""A data order and item randomness that depend only on (seed, epoch, position): exact resume.

Lightning restores weights, optimizer and loop counters, but a plain DataLoader restarts its epoch
from the first batch and its augmentations from whatever RNG state the process (or an
albumentations ``Compose``, which keeps its own generators and ignores the global seed) has.
Every training loader of cxrkit is built from the two parts below instead:

- :class:`ResumableSampler` draws each epoch's permutation from ``seed + epoch``, shards it over
  ranks like ``DistributedSampler`` (it is one, so Lightning leaves it alone under DDP and calls
  its ``set_epoch``), can start an epoch part-way (``skip``), and yields ``(index, item_seed)``
  where ``item_seed`` (:func:`item_seed`) is a function of the seed, the epoch and the position in
  the *global* permutation.
- :class:`SeededItems` loads item ``index`` of a dataset with torch, numpy and ``random`` seeded
  from ``item_seed`` (the caller's RNG state is restored afterwards), and first hands the seed to
  the dataset's own ``set_random_seed(seed)`` when it has one (the datasets of
  :mod:`cxrkit.data.datasets` reseed their albumentations ``Compose`` there), so an augmented item
  is the same whatever the number of workers, ranks or restarts.

Together: a run killed at step k and resumed sees exactly the batches and augmentations of an
uninterrupted run, once the sampler is told where the run stands (``epoch``, ``skip``):
:mod:`cxrkit.engine` does that for the finetune and multitask loaders, the pretraining data
module for its own (tests/pretrain, tests/finetune/test_resume*.py,
tests/multitask/test_resume*.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def item_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the randomness of the item at ``position`` of epoch ``epoch``."""
    # numpy's SeedSequence mixes the three integers into well-separated streams.
    state = np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)
    return int(state[0]) % 2**63


class ResumableSampler(DistributedSampler):
    """Shuffled, rank-sharded ``(index, item_seed)`` pairs with a resumable start.

    Args:
        dataset: anything with ``len``.
        num_replicas: number of ranks (1 without DDP); :meth:`shard` changes it later (the
            engine does once the trainer knows its world).
        rank: this rank.
        seed: the run's seed; epoch ``e`` uses permutation ``seed + e``.
        epoch: the epoch the first iteration belongs to.
        skip: items of this rank's share of ``epoch`` already consumed (batches x batch size);
            cleared when :meth:`set_epoch` moves to another epoch. ``len()`` stays the whole
            share (Lightning counts an epoch's batches from it; a resumed epoch yields fewer).

    Every rank gets ``len(dataset) // num_replicas`` items per epoch (the tail is dropped, as
    DDP needs equal batch counts; with one rank nothing is dropped).
    """

    def __init__(
        self,
        dataset: Any,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch: int = 0,
        skip: int = 0,
    ) -> None:
        _check_shares(len(dataset), num_replicas)
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.epoch = epoch
        self.skip = skip

    def shard(self, *, num_replicas: int, rank: int) -> None:
        """Share each epoch over ``num_replicas`` ranks; this sampler yields ``rank``'s part."""
        n = len(self.dataset)  # type: ignore[arg-type]
        _check_shares(n, num_replicas)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of {num_replicas} ranks")
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = n // num_replicas
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        # read once: a set_epoch while this epoch is being consumed must not change its items
        seed, epoch, skip = self.seed, self.epoch, self.skip
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        positions = range(self.rank, self.total_size, self.num_replicas)
        for position in list(positions)[skip:]:
            yield order[position], item_seed(seed, epoch, position)


def _check_shares(n: int, num_replicas: int) -> None:
    if n < num_replicas:
        raise ValueError(f"{n} items cannot be shared by {num_replicas} ranks")


class SeededItems(Dataset):
    """``dataset[index]`` computed under RNGs seeded from ``item_seed`` (keys from the sampler).

    torch, numpy and Python's ``random`` are seeded (lightly's blur and solarisation use numpy,
    torchvision's transforms torch), and so is the dataset's own generator through its
    ``set_random_seed(seed)`` when it has one (albumentations 2 draws from a generator per
    ``Compose``, not from the global ones). The previous global RNG states are restored
    afterwards, so loading in the main process (``num_workers=0``) leaves the training RNG
    untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        reseed = getattr(self.dataset, "set_random_seed", None)
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            if reseed is not None:
                reseed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)
