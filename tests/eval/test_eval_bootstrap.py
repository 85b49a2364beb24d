"""Patient bootstrap: weights never split a patient, are reproducible, and intervals behave."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrkit.eval import bootstrap


def test_patient_is_never_split_and_totals_are_patients():
    groups = np.array(["p1", "p1", "p2", "p3", "p3", "p3", "p4"])
    weights = np.concatenate(
        list(bootstrap.iter_patient_weights(groups=groups, n_bootstrap=500, seed=1))
    )
    assert weights.shape == (500, 7)
    for patient in np.unique(groups):
        cols = weights[:, groups == patient]
        assert (cols == cols[:, :1]).all(), patient
    # each replicate draws 4 patients: their multiplicities sum to 4
    first = weights[:, [0, 2, 3, 6]]
    assert (first.sum(axis=1) == 4).all()
    # every patient is sometimes absent and sometimes drawn twice
    assert (first == 0).any(axis=0).all() and (first >= 2).any(axis=0).all()


def test_weights_are_reproducible_and_seed_dependent():
    groups = [f"p{i // 2}" for i in range(50)]
    a = np.concatenate(list(bootstrap.iter_patient_weights(groups=groups, n_bootstrap=20, seed=3)))
    b = np.concatenate(list(bootstrap.iter_patient_weights(groups=groups, n_bootstrap=20, seed=3)))
    c = np.concatenate(list(bootstrap.iter_patient_weights(groups=groups, n_bootstrap=20, seed=4)))
    assert (a == b).all() and not (a == c).all()


def test_blocks_cover_all_replicates(monkeypatch):
    monkeypatch.setattr(bootstrap, "BLOCK_ELEMENTS", 30)
    blocks = list(bootstrap.iter_patient_weights(groups=list("aabbc"), n_bootstrap=13, seed=0))
    assert [b.shape for b in blocks] == [(6, 5), (6, 5), (1, 5)]


def test_percentile_interval_drops_undefined():
    reps = np.r_[np.arange(101, dtype=float), [np.nan] * 7]
    low, high, undefined = bootstrap.percentile_interval(reps, level=0.9)
    assert (low, high, undefined) == (pytest.approx(5.0), pytest.approx(95.0), 7)
    assert math.isnan(bootstrap.percentile_interval(np.array([np.nan]), level=0.95)[0])


def test_p_value_inverts_the_interval():
    assert bootstrap.p_value(np.zeros(99)) == 1.0
    assert bootstrap.p_value(np.ones(99)) == 2 / 100  # never exactly 0
    reps = np.r_[-np.ones(10), np.ones(89)]  # 10 of 99 at or below 0
    assert bootstrap.p_value(reps) == 2 * 11 / 100


def test_estimate_without_bootstrap():
    assert bootstrap.estimate(0.5) == {"value": 0.5, "ci": None, "n_undefined": 0}
