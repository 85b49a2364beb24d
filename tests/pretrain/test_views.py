"""View recipes, and the sampler + seeding that make data order and views reproducible."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

from cxrkit.data.sampling import ResumableSampler, SeededItems, item_seed
from cxrkit.pretrain.config import ViewsConfig
from cxrkit.pretrain.transforms import build_view_transform, to_float_views


def _image() -> np.ndarray:
    yy, xx = np.mgrid[0:80, 0:96]
    return ((xx * 2 + yy) % 256).astype(np.uint8)  # non-square, asymmetric, uint8 (H, W)


def test_byol_views_are_grey_uint8_unnormalised_and_asymmetric():
    transform = build_view_transform(views=ViewsConfig(recipe="byol", size=48))
    view_a, view_b = transform(_image())
    # uint8 grey on the wire; float in [0, 1] only on the device (InputAdapter normalises)
    assert view_a.shape == view_b.shape == (1, 48, 48)
    assert view_a.dtype == view_b.dtype == torch.uint8
    a = transform.view_a.transforms
    b = transform.view_b.transforms
    blur = [t for t in a if type(t).__name__ == "GaussianBlur"][0].prob
    blur_b = [t for t in b if type(t).__name__ == "GaussianBlur"][0].prob
    solar_a = [t for t in a if type(t).__name__ == "RandomSolarization"][0].prob
    solar_b = [t for t in b if type(t).__name__ == "RandomSolarization"][0].prob
    assert (blur, blur_b, solar_a, solar_b) == (1.0, 0.1, 0.0, 0.2)  # BYOL's asymmetric pair
    flips = [t.p for t in a if type(t).__name__ == "RandomHorizontalFlip"]
    assert flips == [0.5]
    assert type(a[-1]).__name__ == "PILToTensor"


def _seeded(fn, seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return fn()


def test_byol_grey_uint8_views_equal_lightlys_rgb_float_views():
    # The reference: lightly's BYOL views as shipped (RGB PIL image, ToTensor, float in [0, 1]).
    # On R = G = B colour jitter cannot tint, so the grey uint8 views / 255 must equal every
    # channel of the reference exactly, under the same random draws.
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform
    from PIL import Image

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (90, 70), dtype=np.uint8), (0, 0), 1.5)
    ours = build_view_transform(views=ViewsConfig(recipe="byol", size=40))
    kw = dict(input_size=40, min_scale=0.08, hf_prob=0.5, normalize=None)
    ref_a, ref_b = BYOLView1Transform(**kw), BYOLView2Transform(**kw)
    rgb = Image.fromarray(image, mode="L").convert("RGB")
    for seed in range(12):
        got = to_float_views([v[None] for v in _seeded(lambda: ours(image), seed)])
        want = _seeded(lambda: [ref_a(rgb), ref_b(rgb)], seed)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == torch.float32 and w.shape == (3, 40, 40)
            for channel in range(3):
                assert torch.equal(g[0, 0], w[channel]), (seed, channel)


def test_to_float_views_is_lightlys_to_tensor_on_uint8_and_identity_on_float():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    f = torch.rand(1, 3, 4, 4)
    got_u8, got_f = to_float_views([u8, f])
    from lightly.transforms.torchvision_v2_compatibility import ToTensor
    from PIL import Image

    assert torch.equal(got_u8[0], ToTensor()(Image.fromarray(u8[0, 0].numpy(), mode="L")))
    assert got_f is f


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

    views = SeededItems(Lazy())
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
    assert single[0][1] == item_seed(3, 2, 0) != item_seed(3, 3, 0)
    with pytest.raises(ValueError, match="cannot be shared by 4 ranks"):
        ResumableSampler([1, 2], num_replicas=4)
