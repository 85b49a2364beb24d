"""View recipes, and the sampler + seeding that make data order and views reproducible."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cxrkit.pretrain.config import ViewsConfig
from cxrkit.pretrain.sampling import ResumableSampler, SeededViews, view_seed
from cxrkit.pretrain.transforms import build_view_transform


def _image() -> np.ndarray:
    yy, xx = np.mgrid[0:80, 0:96]
    return ((xx * 2 + yy) % 256).astype(np.uint8)  # non-square, asymmetric, uint8 (H, W)


def test_byol_views_are_rgb_unnormalised_and_asymmetric():
    transform = build_view_transform(views=ViewsConfig(recipe="byol", size=48))
    view_a, view_b = transform(_image())
    assert view_a.shape == view_b.shape == (3, 48, 48)
    for v in (view_a, view_b):
        assert v.dtype == torch.float32 and v.min() >= 0 and v.max() <= 1  # InputAdapter normalises
    a = transform.view_a.transform.transforms
    b = transform.view_b.transform.transforms
    blur = [t for t in a if type(t).__name__ == "GaussianBlur"][0].prob
    blur_b = [t for t in b if type(t).__name__ == "GaussianBlur"][0].prob
    solar_a = [t for t in a if type(t).__name__ == "RandomSolarization"][0].prob
    solar_b = [t for t in b if type(t).__name__ == "RandomSolarization"][0].prob
    assert (blur, blur_b, solar_a, solar_b) == (1.0, 0.1, 0.0, 0.2)  # BYOL's asymmetric pair
    flips = [t.p for t in a if type(t).__name__ == "RandomHorizontalFlip"]
    assert flips == [0.5]


def test_cxr_views_are_grey_without_flips_by_default():
    transform = build_view_transform(views=ViewsConfig(recipe="cxr", size=40, min_scale=0.5))
    view_a, view_b = transform(_image())
    assert view_a.shape == view_b.shape == (1, 40, 40)
    names = [type(t).__name__ for t in transform.view_a.transforms]
    assert "RandomAffine" in names and "RandomSolarization" not in names
    flips = [t.p for t in transform.view_a.transforms if type(t).__name__ == "RandomHorizontalFlip"]
    assert flips == [0.0]
    jitter = [t for t in transform.view_a.transforms if type(t).__name__ == "RandomApply"][0]
    assert jitter.transforms[0].saturation is None and jitter.transforms[0].hue is None
    on = build_view_transform(views=ViewsConfig(recipe="cxr", hflip_prob=0.5))
    assert [t.p for t in on.view_b.transforms if type(t).__name__ == "RandomHorizontalFlip"] == [
        0.5
    ]


def test_transform_rejects_non_cache_images():
    transform = build_view_transform(views=ViewsConfig(size=32))
    with pytest.raises(ValueError, match="uint8"):
        transform(np.zeros((32, 32), np.float32))


def test_seeded_views_are_reproducible_and_leave_the_rng_alone():
    transform = build_view_transform(views=ViewsConfig(size=32))

    class Lazy:  # draws its views when an item is asked for
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return transform(_image())

    views = SeededViews(Lazy())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    first, again, other = views[(0, 11)], views[(0, 11)], views[(0, 12)]
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert len(views) == 1


def test_sampler_shards_resumes_and_seeds_by_global_position():
    data = list(range(11))
    single = list(ResumableSampler(data, seed=3, epoch=2))
    shards = [
        list(ResumableSampler(data, num_replicas=2, rank=r, seed=3, epoch=2)) for r in range(2)
    ]
    assert len(single) == 11 and sorted(i for i, _ in single) == data
    assert len(shards[0]) == len(shards[1]) == 5  # equal shares, tail dropped
    # the same (image, view seed) pairs whatever the number of ranks
    assert set(shards[0]) | set(shards[1]) <= set(single)
    assert shards[0] == single[0:10:2] and shards[1] == single[1:10:2]
    # resuming 2 items into the epoch yields exactly the rest
    assert (
        list(ResumableSampler(data, num_replicas=2, rank=1, seed=3, epoch=2, skip=2))
        == (shards[1][2:])
    )
    # another epoch: another order and other views; set_epoch clears the skip
    sampler = ResumableSampler(data, seed=3, epoch=2, skip=4)
    sampler.set_epoch(2)
    assert len(list(sampler)) == 7
    sampler.set_epoch(3)
    nxt = list(sampler)
    assert len(nxt) == 11 and nxt != single
    assert single[0][1] == view_seed(3, 2, 0) != view_seed(3, 3, 0)
    with pytest.raises(ValueError, match="cannot be shared by 4 ranks"):
        ResumableSampler([1, 2], num_replicas=4)
