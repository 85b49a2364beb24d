"""A B A B: run contenders in turns so that a busy machine slows each of them alike.

A benchmark names its contenders (ours and each peer), says how many items one repeat handles
and how many cores it may use, and :func:`interleave` runs them round-robin for ``pairs`` rounds
after ``warmup`` untimed rounds. The figures are medians over rounds; a ratio is the median of
the per-round ratios (each round's contenders ran back to back, under the same load), and the
machine's load average is recorded before and after so a reader can judge the noise.

    from benchmarks._interleave import Contender, interleave

    result = interleave(
        [Contender("ours", run=lambda: ours(items), items=len(items)),
         Contender("naive PIL loop", run=lambda: naive(items), items=len(items))],
        pairs=5,
    )
    print(result.table(reference="naive PIL loop"))

:func:`turns` is the same A B A B for contenders given as name -> callable, recording wall and this
process's CPU seconds per repeat and calling ``sync`` around each clock read
(``torch.cuda.synchronize`` on a GPU): the loader and GPU benchmarks use it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

MIN_PAIRS = 5
"""Timed rounds at least, so that a median of interleaved repeats means something."""


@dataclass(frozen=True)
class Contender:
    """One side of the comparison.

    Attributes:
        name: how the table names it ("ours", "lean OpenCV/numpy", "pandas.read_parquet").
        run: one timed repeat.
        items: how many items one repeat handles (images, records, pairs).
        cores: processes it keeps busy, for the per-core figure (workers, not the machine's CPUs).
        setup: untimed work before each repeat (emptying an output folder, say).
    """

    name: str
    run: Callable[[], object]
    items: int
    cores: int = 1
    setup: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        if self.items < 1 or self.cores < 1:
            raise ValueError(f"{self.name}: items and cores must be >= 1")


@dataclass
class Result:
    """Seconds of every timed repeat, per contender, in the order they ran."""

    contenders: list[Contender]
    seconds: dict[str, list[float]] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _contender(self, name: str) -> Contender:
        for contender in self.contenders:
            if contender.name == name:
                return contender
        raise KeyError(f"no contender named {name!r}: {[c.name for c in self.contenders]}")

    def rates(self, name: str) -> list[float]:
        """Items/s of every repeat of ``name``."""
        items = self._contender(name).items
        return [items / s for s in self.seconds[name]]

    def rate(self, name: str) -> float:
        """Median items/s."""
        return statistics.median(self.rates(name))

    def per_core(self, name: str) -> float:
        """Median items/s divided by the cores the contender used."""
        return self.rate(name) / self._contender(name).cores

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of rate(name) / rate(reference), per-core figures."""
        cores_a, cores_b = self._contender(name).cores, self._contender(reference).cores
        return statistics.median(
            (a / cores_a) / (b / cores_b)
            for a, b in zip(self.rates(name), self.rates(reference), strict=True)
        )

    def ratio_total(self, name: str, reference: str) -> float:
        """Median over rounds of rate(name) / rate(reference), whole rates (for scaling)."""
        return statistics.median(
            a / b for a, b in zip(self.rates(name), self.rates(reference), strict=True)
        )

    def as_dict(self) -> dict:
        return {
            "load_before": list(self.load_before),
            "load_after": list(self.load_after),
            "contenders": {
                c.name: {
                    "items": c.items,
                    "cores": c.cores,
                    "seconds": self.seconds[c.name],
                    "median_per_s": self.rate(c.name),
                    "median_per_s_per_core": self.per_core(c.name),
                }
                for c in self.contenders
            },
        }

    def table(self, *, reference: str | None = None, unit: str = "items") -> str:
        """Fixed-width table: median rate, per-core rate, spread, ratio to ``reference``."""
        rows = [
            f"{'contender':<36} {'cores':>5} {unit + '/s':>10} {'per core':>9} "
            f"{'min-max /s':>17} {'ratio':>6}"
        ]
        rows.append("-" * len(rows[0]))
        for c in self.contenders:
            rates = self.rates(c.name)
            spread = f"{min(rates):.1f}-{max(rates):.1f}"
            ratio = f"{self.ratio(c.name, reference):5.2f}x" if reference else ""
            rows.append(
                f"{c.name:<36} {c.cores:>5} {self.rate(c.name):10.1f} "
                f"{self.per_core(c.name):9.1f} {spread:>17} {ratio:>6}"
            )
        before = "/".join(f"{x:.2f}" for x in self.load_before)
        after = "/".join(f"{x:.2f}" for x in self.load_after)
        rounds = len(self.seconds[self.contenders[0].name])
        rows.append(
            f"{rounds} interleaved rounds, medians; load average (1/5/15 min) "
            f"before {before}, after {after}"
        )
        if reference:
            rows.append(f"ratio: median per-round per-core rate against {reference!r}")
        return "\n".join(rows)


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not every platform has it
        return (float("nan"),) * 3


def interleave(
    contenders: Sequence[Contender],
    *,
    pairs: int = 5,
    warmup: int = 1,
    log: Callable[[str], object] | None = None,
) -> Result:
    """Run ``contenders`` round-robin (A B A B ...) and time each repeat.

    Args:
        contenders: at least two, with distinct names.
        pairs: timed rounds; at least 5, so that a median means something.
        warmup: untimed rounds first (imports, page cache, a pool's first start).
        log: called with a line after every timed repeat.

    Returns:
        The seconds of every timed repeat and the load average around the run.
    """
    names = [c.name for c in contenders]
    if len(contenders) < 2 or len(set(names)) != len(names):
        raise ValueError(f"need at least two contenders with distinct names, got {names}")
    if pairs < MIN_PAIRS:
        raise ValueError(
            f"pairs must be >= {MIN_PAIRS} for a median of interleaved repeats, got {pairs}"
        )
    result = Result(contenders=list(contenders), seconds={name: [] for name in names})
    for _ in range(warmup):
        for c in contenders:
            if c.setup is not None:
                c.setup()
            c.run()
    result.load_before = _loadavg()
    for round_ in range(pairs):
        for c in contenders:
            if c.setup is not None:
                c.setup()
            start = time.perf_counter()
            c.run()
            elapsed = time.perf_counter() - start
            result.seconds[c.name].append(elapsed)
            if log is not None:
                log(f"round {round_ + 1}/{pairs} {c.name}: {c.items / elapsed:.1f}/s")
    result.load_after = _loadavg()
    return result


# --------------------------------------------------------------------------------------------------
# turns: name -> callable, wall and CPU clocks, an optional device sync


@dataclass
class Turns:
    """Seconds of each timed repeat per contender, in the order they ran."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    load_before: tuple[float, ...] = ()
    load_after: tuple[float, ...] = ()

    def median(self, name: str) -> float:
        """Median wall seconds of ``name``."""
        return statistics.median(self.wall[name])

    def rate(self, name: str, items: float) -> float:
        """Median items per wall second."""
        return statistics.median(items / s for s in self.wall[name])

    def cpu_rate(self, name: str, items: float) -> float:
        """Median items per CPU second of this process (per core, for single-process work)."""
        return statistics.median(items / max(s, 1e-9) for s in self.cpu[name])

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of reference seconds / name seconds (> 1: ``name`` is faster)."""
        return statistics.median(
            b / a for a, b in zip(self.wall[name], self.wall[reference], strict=True)
        )

    def as_dict(self) -> dict:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "load_before": list(self.load_before),
            "load_after": list(self.load_after),
        }


def turns(
    contenders: Mapping[str, Callable[[], object]],
    *,
    pairs: int = MIN_PAIRS,
    warmup: int = 1,
    sync: Callable[[], object] | None = None,
) -> Turns:
    """Run ``contenders`` round-robin, ``warmup`` untimed rounds then ``pairs`` timed ones.

    Args:
        contenders: name -> one repeat (at least two).
        pairs: timed rounds, at least 5 so that a median means something.
        sync: called before each clock read (``torch.cuda.synchronize`` on a GPU).
    """
    if len(contenders) < 2:
        raise ValueError(f"need at least two contenders, got {list(contenders)}")
    if pairs < MIN_PAIRS:
        raise ValueError(f"pairs must be >= {MIN_PAIRS}, got {pairs}")
    result = Turns(wall={n: [] for n in contenders}, cpu={n: [] for n in contenders})
    for _ in range(warmup):
        for run in contenders.values():
            run()
    result.load_before = _loadavg()
    for _ in range(pairs):
        for name, run in contenders.items():
            if sync is not None:
                sync()
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            if sync is not None:
                sync()
            result.wall[name].append(time.perf_counter() - wall)
            result.cpu[name].append(time.process_time() - cpu)
    result.load_after = _loadavg()
    return result
