"""The shared resumable sampler and seeded items (cxrkit.data.sampling): torch's DistributedSampler
as the reference for the shards, and the per-item seeding an albumentations Compose needs."""

from __future__ import annotations

import random

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from cxrkit.data.sampling import ResumableSampler, SeededItems, item_seed


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (9, 3), (7, 2)])
def test_shards_are_distributed_samplers_with_drop_last(n, world):
    data = list(range(n))
    for rank in range(world):
        ours = ResumableSampler(data, seed=4, epoch=0)
        ours.shard(num_replicas=world, rank=rank)
        ours.set_epoch(2)
        reference = DistributedSampler(
            data, num_replicas=world, rank=rank, shuffle=True, seed=4, drop_last=True
        )
        reference.set_epoch(2)
        assert [i for i, _ in ours] == list(reference)
        assert len(ours) == len(reference) == n // world
    with pytest.raises(ValueError, match="rank 2 is not one of 2 ranks"):
        ResumableSampler(data).shard(num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="2 items cannot be shared by 3 ranks"):
        ResumableSampler([1, 2]).shard(num_replicas=3, rank=0)


def test_an_epoch_in_progress_keeps_its_items_when_the_epoch_changes():
    sampler = ResumableSampler(list(range(8)), seed=1, epoch=3)
    expected = list(sampler)
    running = iter(sampler)
    first = [next(running) for _ in range(3)]
    sampler.set_epoch(4)  # Lightning sets the next epoch; this iterator is still epoch 3's
    assert first + list(running) == expected
    assert expected[0][1] == item_seed(1, 3, 0)
    assert [k for k, _ in sampler] != [k for k, _ in expected]  # epoch 4: another permutation


class _Augmented:
    """Items drawn from an albumentations Compose's own generator (which ignores global seeds)."""

    def __init__(self) -> None:
        self.compose = A.Compose([A.GaussNoise(std_range=(0.1, 0.2), p=1.0)])
        self.seeds: list[int] = []

    def __len__(self) -> int:
        return 4

    def set_random_seed(self, seed: int) -> None:
        self.seeds.append(seed)
        self.compose.set_random_seed(seed)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.compose(image=np.full((8, 8), 100, np.uint8))["image"]


def test_seeded_items_reseed_the_datasets_own_generator_and_restore_the_global_ones():
    dataset = _Augmented()
    items = SeededItems(dataset)
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a = items[(0, 11)]
    dataset[0]  # the Compose moves on: its generator is not the global one
    b = items[(0, 11)]
    assert np.array_equal(a, b) and dataset.seeds == [11, 11]
    assert not np.array_equal(a, items[(0, 12)])
    assert torch.equal(torch.get_rng_state(), state[0])
    assert np.array_equal(np.random.get_state()[1], state[1]) and random.getstate() == state[2]
