"""The patient-level bootstrap: resampling weights, percentile intervals and bootstrap p-values.

Resampling patients (not images) keeps a patient's images together, so that the interval reflects
the correlation between images of one patient. A replicate draws ``P`` patients with replacement out
of ``P``; every image then carries the multiplicity of its patient as a weight. A statistic computed
with those integer weights equals the statistic on the resampled image list, and the whole
bootstrap stays a few vectorised numpy operations: each block of replicates is one
``(replicates, images)`` weight matrix shared by every finding, view and model, which makes
comparisons between them paired.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from cxrkit.errors import ConfigError

BLOCK_ELEMENTS = 4_000_000  # weights held at once (32 MB of float64); blocks depend on n only


def check_settings(*, n_bootstrap: int, level: float) -> None:
    """Raise :class:`ConfigError` on a negative replicate count or a level outside (0, 1)."""
    if n_bootstrap < 0:
        raise ConfigError(
            f"n_bootstrap must be >= 0 (0 turns the bootstrap off), got {n_bootstrap}"
        )
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must lie in (0, 1), got {level}")


def iter_patient_weights(
    *, groups: Sequence[str] | np.ndarray, n_bootstrap: int, seed: int
) -> Iterator[np.ndarray]:
    """Yield the bootstrap weights in blocks.

    Args:
        groups: the patient id of each image, ``(n_images,)``.
        n_bootstrap: total number of replicates over all blocks.
        seed: seed of the numpy generator; the same (groups, n_bootstrap, seed) give the same
            weights.

    Yields:
        float64 arrays ``(b, n_images)`` whose rows sum to ``n_images`` on average; images of one
        patient always carry the same weight (a patient is never split).
    """
    codes, uniques = pd.factorize(np.asarray(groups), sort=True)
    n_images, n_patients = len(codes), len(uniques)
    if n_patients == 0 or n_bootstrap == 0:
        return
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_ELEMENTS // max(n_images, 1))
    probabilities = np.full(n_patients, 1.0 / n_patients)
    for start in range(0, n_bootstrap, block):
        size = min(block, n_bootstrap - start)
        counts = rng.multinomial(n_patients, probabilities, size=size)
        yield counts[:, codes].astype(np.float64)


def percentile_interval(replicates: np.ndarray, *, level: float) -> tuple[float, float, int]:
    """Percentile interval of the finite replicates; returns ``(low, high, n_undefined)``.

    Replicates that are NaN (a statistic undefined on that resample, such as an AUROC with one class
    only) are dropped and counted. With fewer than two finite replicates the interval is NaN.
    """
    replicates = np.asarray(replicates, dtype=np.float64)
    finite = replicates[np.isfinite(replicates)]
    n_undefined = int(replicates.size - finite.size)
    if finite.size < 2:
        return math.nan, math.nan, n_undefined
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), n_undefined


def p_value(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "statistic != 0" by inverting the percentile interval.

    It is the smallest ``1 - level`` whose percentile interval excludes 0, with the usual ``+1``
    correction so that a finite number of replicates never gives exactly 0:
    ``p = min(1, 2 * (1 + min(#{d <= 0}, #{d >= 0})) / (B + 1))`` over the finite replicates.
    """
    replicates = np.asarray(replicates, dtype=np.float64)
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return math.nan
    tail = min(int(np.sum(finite <= 0)), int(np.sum(finite >= 0)))
    return float(min(1.0, 2.0 * (tail + 1) / (finite.size + 1)))


def p_floor(n_replicates: int) -> float:
    """The smallest p-value :func:`p_value` can give with ``n_replicates`` finite replicates.

    Every replicate on one side of 0 gives ``2 * (0 + 1) / (B + 1)``: with B = 2,000 the floor is
    0.001, so a p-value of 0.0002 (the KCR abstract's smallest) needs B >= 10,000 to be reachable
    and B >= 20,000 to be resolved with room (floor 0.0001). NaN when there is no replicate.
    """
    if n_replicates <= 0:
        return math.nan
    return float(min(1.0, 2.0 / (n_replicates + 1)))


def p_value_entry(replicates: np.ndarray | None) -> dict[str, float | int]:
    """A bootstrap p-value with its floor: ``{"p_value", "p_floor", "n_replicates"}``.

    ``n_replicates`` counts the finite replicates the p-value used (the floor is theirs); without
    replicates (bootstrap off) every entry is NaN / 0.
    """
    if replicates is None:
        return {"p_value": math.nan, "p_floor": math.nan, "n_replicates": 0}
    finite = int(np.isfinite(np.asarray(replicates, dtype=np.float64)).sum())
    return {
        "p_value": p_value(replicates),
        "p_floor": p_floor(finite),
        "n_replicates": finite,
    }


def estimate(
    value: float, replicates: np.ndarray | None = None, *, level: float = 0.95
) -> dict[str, object]:
    """A reported number: ``{"value", "ci": [low, high] or None, "n_undefined"}``.

    ``replicates`` is None when the bootstrap is off; then ``ci`` is None and ``n_undefined`` 0.
    """
    value = float(value) if value is not None else math.nan
    if replicates is None or np.asarray(replicates).size == 0:
        return {"value": value, "ci": None, "n_undefined": 0}
    low, high, n_undefined = percentile_interval(replicates, level=level)
    return {"value": value, "ci": [low, high], "n_undefined": n_undefined}
