"""Progress of a long loop that shows in a terminal and in a batch job's log alike.

On a terminal, :class:`Progress` is a tqdm bar. Anywhere else (SLURM and nohup logs, pipes, CI)
a bar redraws with carriage returns that such logs keep as one endless line, or, as tqdm does by
default there, prints nothing at all; so there it writes one flushed line when it starts, one every
``every_s`` seconds, and one at the end, each with the count, the rate and the time left::

    preprocess: 0/112120 img
    preprocess: 4210/112120 img (3.8 %), 140.3 img/s, ETA 12.8 min
    preprocess: 112120/112120 img done in 13.1 min (142.6 img/s)

    with Progress(total=len(records), desc="preprocess", unit="img") as bar:
        for record in records:
            ...
            bar.update()

    for batch in track(loader, desc="predict", unit="batch"):
        ...
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from cxrkit.errors import ConfigError

T = TypeVar("T")

# cxrkit's choice: a line every 30 s tells a job's log the run is alive without flooding it
# (a 13-minute NIH preprocess writes 27 lines); CXRKIT_PROGRESS_S=SECONDS sets another interval.
EVERY_S = 30.0
EVERY_ENV = "CXRKIT_PROGRESS_S"


def line_interval_s() -> float:
    """Seconds between two progress lines in a log: ``$CXRKIT_PROGRESS_S``, else :data:`EVERY_S`.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{EVERY_ENV}={raw!r} is not a positive number of seconds")
    return value


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.2 h"``: durations as a plan or an ETA gives them."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _rate(done: float, seconds: float, unit: str) -> str:
    if seconds <= 0 or done <= 0:
        return f"? {unit}/s"
    per_s = done / seconds
    return f"{per_s:.1f} {unit}/s" if per_s >= 1 else f"{seconds / done:.1f} s/{unit}"


class Progress:
    """A progress bar on a terminal, progress lines (count, rate, ETA) elsewhere.

    Args:
        total: items expected (None: unknown; the lines then carry no percentage or ETA).
        desc: what is being done, the start of every line (``"preprocess"``).
        unit: the item's name (``"img"``, ``"batch"``).
        enabled: False shows nothing (``--no-progress``).
        every_s: seconds between two lines when not on a terminal (default :func:`line_interval_s`).
        stream: where to write (default ``sys.stderr``, as tqdm, so stdout keeps the results).
        tty: force the terminal (True) or log (False) form; default ``stream.isatty()``.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        every_s: float | None = None,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        every_s = line_interval_s() if every_s is None else every_s
        if every_s <= 0:
            raise ValueError(f"every_s must be positive, got {every_s}")
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = self._last = clock()
        self._closed = not enabled
        self._bar: Any = None
        if not enabled:
            return
        if tty is None:
            isatty = getattr(self._stream, "isatty", None)
            tty = bool(isatty and isatty())
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self._stream)
        else:
            self._line(self._count())

    def _count(self) -> str:
        total = "" if self.total is None else f"/{self.total}"
        return f"{self.desc}: {self.done}{total} {self.unit}"

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done; in a log, write a line when ``every_s`` has passed."""
        if self._closed:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last >= self.every_s:
            self._last = now
            self._line(self.status(now))

    def status(self, now: float | None = None) -> str:
        """The progress line: count, percentage, rate and ETA (when the total is known)."""
        elapsed = (self._clock() if now is None else now) - self._start
        count = self._count()
        if self.total:
            count += f" ({100 * self.done / self.total:.1f} %)"
        text = f"{count}, {_rate(self.done, elapsed, self.unit)}"
        if self.total and self.done > 0:
            left = elapsed / self.done * max(self.total - self.done, 0)
            text += f", ETA {format_duration(left)}"
        return text

    def close(self) -> None:
        """End the bar, or write the final line (count, time taken, rate)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = self._clock() - self._start
        self._line(
            f"{self._count()} done in {format_duration(elapsed)} "
            f"({_rate(self.done, elapsed, self.unit)})"
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    items: Iterable[T],
    *,
    desc: str,
    unit: str = "it",
    total: int | None = None,
    enabled: bool = True,
    **options: Any,
) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress` (``total`` defaults to ``len(items)``);
    ``options`` go to :class:`Progress`."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc=desc, unit=unit, enabled=enabled, **options) as bar:
        for item in items:
            yield item
            bar.update()
