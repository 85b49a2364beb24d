"""The grey-level path of the recipe against the per-pixel path: the same numbers, exactly.

:func:`level_percentiles` must equal :func:`percentiles` (and so ``np.percentile``) on the expanded
image, and :func:`apply_recipe` on :class:`GreyLevels` the same uint8 pixels as on the float image,
for integer tables (8/16-bit files) and float tables (a VOI window, an inversion, a LUT that is not
monotone).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cxrkit.config import PreprocessConfig
from cxrkit.data.images import GreyLevels
from cxrkit.data.preprocess import apply_recipe, level_percentiles, percentiles
from cxrkit.errors import DataError

QS = [(0.5, 99.5), (0, 100), (2.0, 97.5), (12.3, 50), (99.99, 100)]


def tables(rng: np.random.Generator) -> dict[str, np.ndarray]:
    ramp = np.arange(4096, dtype=np.float64)
    window = np.clip((ramp - 1499.5) / 1799 + 0.5, 0, 1) * 65535  # pydicom's linear window
    return {
        "identity": ramp.astype(np.float32),
        "window": window.astype(np.float32),
        "inverted window": (np.float32(65535) - window.astype(np.float32)),
        "rescaled": (ramp * 0.37 - 1024.25).astype(np.float32),
        "not monotone": rng.normal(0, 300, 4096).astype(np.float32),
        "few values": (ramp // 1000 * 7).astype(np.float32),
        "wide integers": (ramp * 100_000).astype(np.float32),  # past the histogram's range
    }


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 50_000])
def test_level_percentiles_equal_the_per_pixel_ones(n: int) -> None:
    rng = np.random.default_rng(n)
    for name, values in tables(rng).items():
        levels = rng.integers(0, 4096 if n > 3 else 5, size=(1, n)).astype(np.uint16)
        image = GreyLevels(levels=levels, values=values)
        expanded = image.to_image()
        for q in QS:
            got = level_percentiles(image, q)
            assert got == percentiles(expanded, q), (name, q)
            np.testing.assert_allclose(got, np.percentile(expanded, list(q)), rtol=1e-6)


RECIPES = [
    PreprocessConfig(size=32),
    PreprocessConfig(size=32, clip_percentiles=False),
    PreprocessConfig(size=40, clip_low=5.0, clip_high=60.0, clahe=False, pad_square=False),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=["full", "no clip", "narrow clip"])
def test_recipe_on_levels_equals_recipe_on_pixels(recipe: PreprocessConfig) -> None:
    rng = np.random.default_rng(7)
    for name, values in tables(rng).items():
        for dtype, top in ((np.uint8, 256), (np.uint16, 4096)):
            levels = rng.integers(0, top, size=(48, 70)).astype(dtype)
            image = GreyLevels(levels=levels, values=values[:top].copy())
            fast, fast_geometry = apply_recipe(image, recipe=recipe)
            slow, slow_geometry = apply_recipe(image.to_image(), recipe=recipe)
            np.testing.assert_array_equal(fast, slow, err_msg=f"{name} {dtype.__name__}")
            assert fast_geometry == slow_geometry


def test_constant_levels_are_black_and_non_finite_values_are_refused() -> None:
    constant = GreyLevels(levels=np.full((8, 8), 3, np.uint8), values=np.arange(256, dtype="f4"))
    out, _ = apply_recipe(constant, recipe=dataclasses.replace(RECIPES[0], clahe=False))
    assert not out.any()
    values = np.arange(256, dtype=np.float32)
    values[200] = np.nan  # no pixel has level 200: harmless
    levels = np.zeros((8, 8), np.uint8)
    levels[0, 0] = 5
    apply_recipe(GreyLevels(levels=levels, values=values), recipe=RECIPES[0])
    levels[1, 1] = 200
    with pytest.raises(DataError, match="NaN or infinite"):
        apply_recipe(GreyLevels(levels=levels, values=values), recipe=RECIPES[0])


def test_levels_past_the_table_are_refused() -> None:
    image = GreyLevels(levels=np.full((4, 4), 9, np.uint8), values=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="past the 4 values"):
        image.counts()
