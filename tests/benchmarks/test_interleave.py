"""The A B A B harness: order of runs, medians, per-core figures and ratios."""

import pytest

from benchmarks._interleave import Contender, interleave


def test_runs_alternate_after_warmup_and_setup_precedes_each_run():
    calls = []
    a = Contender("a", run=lambda: calls.append("a"), items=10, setup=lambda: calls.append("sa"))
    b = Contender("b", run=lambda: calls.append("b"), items=10)
    result = interleave([a, b], pairs=5, warmup=1)
    assert calls == ["sa", "a", "b"] * 6
    assert [len(result.seconds[n]) for n in ("a", "b")] == [5, 5]


def test_medians_per_core_and_ratio_from_recorded_seconds():
    a = Contender("ours", run=lambda: None, items=100, cores=2)
    b = Contender("peer", run=lambda: None, items=100)
    result = interleave([a, b], pairs=5, warmup=0)
    # Replace the measured times with known ones: rates ours 100,50,200,100,25 /s; peer 50 /s.
    result.seconds["ours"] = [1.0, 2.0, 0.5, 1.0, 4.0]
    result.seconds["peer"] = [2.0] * 5
    assert result.rate("ours") == pytest.approx(100.0)
    assert result.per_core("ours") == pytest.approx(50.0)
    # per-round per-core ratios 1, 0.5, 2, 1, 0.25 -> median 1; whole rates 2, 1, 4, 2, 0.5 -> 2
    assert result.ratio("ours", "peer") == pytest.approx(1.0)
    assert result.ratio_total("ours", "peer") == pytest.approx(2.0)
    table = result.table(reference="peer")
    assert "ours" in table and "peer" in table and "1.00x" in table
    assert result.as_dict()["contenders"]["ours"]["median_per_s_per_core"] == pytest.approx(50.0)


@pytest.mark.parametrize("pairs, names", [(4, ["a", "b"]), (5, ["a"]), (5, ["a", "a"])])
def test_rejects_too_few_pairs_or_contenders(pairs, names):
    contenders = [Contender(n, run=lambda: None, items=1) for n in names]
    with pytest.raises(ValueError):
        interleave(contenders, pairs=pairs)
