"""A data order and view randomness that depend only on (seed, epoch, position): exact resume.

Lightning restores weights, optimizer and loop counters, but a plain DataLoader restarts its epoch
from the first batch and its augmentations from whatever RNG state the process has. Here:

- :class:`ResumableSampler` draws each epoch's permutation from ``seed + epoch``, shards it over
  ranks like ``DistributedSampler`` (it is one, so Lightning leaves it alone under DDP and calls
  its ``set_epoch``), can start an epoch part-way (``skip``), and yields ``(index, view_seed)``
  where ``view_seed`` is a function of the seed, the epoch and the position in the *global*
  permutation.
- :class:`SeededViews` loads item ``index`` of a dataset with torch, numpy and ``random`` seeded
  from ``view_seed`` (the caller's RNG state is restored afterwards), so a view is the same
  whatever the number of workers, ranks or restarts.

Together: a run killed at step k and resumed sees exactly the batches and views of an
uninterrupted run (tested in tests/pretrain/test_module.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def view_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the views of the item at ``position`` of epoch ``epoch``."""
    # numpy's SeedSequence mixes the three integers into well-separated streams.
    state = np.random.SeedSequence([seed, epoch, position]).generate_state(1, np.uint64)
    return int(state[0]) % 2**63


class ResumableSampler(DistributedSampler):
    """Shuffled, rank-sharded ``(index, view_seed)`` pairs with a resumable start.

    Args:
        dataset: anything with ``len``.
        num_replicas: number of ranks (1 without DDP).
        rank: this rank.
        seed: the run's seed; epoch ``e`` uses permutation ``seed + e``.
        epoch: the epoch the first iteration belongs to.
        skip: items of this rank's share of ``epoch`` already consumed (batches x batch size);
            cleared when :meth:`set_epoch` moves to another epoch.

    Every rank gets ``len(dataset) // num_replicas`` items per epoch (the tail is dropped, as
    DDP needs equal batch counts).
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
        if len(dataset) < num_replicas:
            raise ValueError(f"{len(dataset)} items cannot be shared by {num_replicas} ranks")
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.epoch = epoch
        self.skip = skip

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        positions = range(self.rank, self.total_size, self.num_replicas)
        for position in list(positions)[self.skip :]:
            yield order[position], view_seed(self.seed, self.epoch, position)


class SeededViews(Dataset):
    """``dataset[index]`` computed under RNGs seeded from ``view_seed`` (keys from the sampler).

    torch, numpy and Python's ``random`` are seeded (lightly's blur and solarisation use numpy,
    torchvision's transforms torch); the previous RNG states are restored afterwards, so loading
    in the main process (``num_workers=0``) leaves the training RNG untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)
