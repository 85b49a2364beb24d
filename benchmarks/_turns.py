"""Take turns: time contenders A B A B ... so that a busy machine slows each of them alike.

A stand-in for ``benchmarks/_interleave.py`` (h6-prep's harness, not yet in this branch): the
loader and GPU benchmarks call :func:`turns` only, so switching is a change of this one module.
Each repeat records wall seconds and this process's CPU seconds (``time.process_time``): on a
shared machine CPU seconds give the per-core figure of work done in this process.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

MIN_PAIRS = 5


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


def _load() -> tuple[float, ...]:
    try:
        return os.getloadavg()
    except OSError:
        return ()


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
    result.load_before = _load()
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
    result.load_after = _load()
    return result
