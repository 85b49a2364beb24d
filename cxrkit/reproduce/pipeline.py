"""What every reproduction driver shares: stages that run once, a plan, and tables.

A driver declares its stages (:class:`StagePlan`: name, what it does, an estimate), prints the plan,
then runs each stage through :meth:`Pipeline.stage`. A finished stage leaves
``OUT/stages/<name>.json`` (written atomically, last) with the settings it ran with and what it
returned, so a rerun skips it and a killed run continues with the first unfinished stage. A stage
whose settings changed since it finished is refused with a message rather than silently reused:
its outputs belong to the old settings.

Tables are written as Markdown (for people) and CSV (for programs) from the same rows.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrkit.errors import ConfigError
from cxrkit.io import atomic_write, check_output_dir
from cxrkit.progress import format_duration

SCALES = ("paper", "tiny")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a driver, as the plan lists it.

    Attributes:
        name: a file-name-safe identifier (``pretrain``, ``finetune-bt-seed0``).
        description: one line on what it does.
        estimate_s: expected seconds on the target machine (None: not estimated); the plan says
            where the estimate comes from in ``basis``.
        basis: where ``estimate_s`` comes from (``"measured step time x steps"``), or empty.
    """

    name: str
    description: str
    estimate_s: float | None = None
    basis: str = ""


def _jsonable(value: Any) -> Any:
    """``value`` as JSON would read it back (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


class Pipeline:
    """The stages of one driver run in ``out_dir``.

    Args:
        out_dir: the run's folder (created; checked writable before any work).
        name: the driver's name, for messages (``"reproduce barlowtwins-cxr"``).
        stages: every stage in order (the plan).
        only: run just these stages (names or name prefixes); the others must have finished
            already when a later stage needs their results (:meth:`result` says so).
        log: where progress lines go (default ``print``).
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        name: str,
        stages: Sequence[StagePlan],
        only: Sequence[str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.out_dir = check_output_dir(out_dir)
        self.name = name
        self.stages = list(stages)
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names in {names}")
        self.only = list(only) if only else None
        if self.only:
            unknown = [o for o in self.only if not any(n.startswith(o) for n in names)]
            if unknown:
                raise ConfigError(
                    f"{name}: --stage {unknown[0]!r} matches no stage; the stages are: "
                    + ", ".join(names)
                )
        self._log = log or (lambda line: print(line, flush=True))
        self._start = time.perf_counter()
        self._done_count = 0
        # seconds taken and estimated by the stages run so far (with an estimate): the ETA scales
        # the remaining estimates by their ratio, so a slower machine than estimated shows
        self._taken_s = 0.0
        self._estimated_s = 0.0

    # ----------------------------------------------------------------------------------------
    def marker(self, stage: str) -> Path:
        """The file that records a finished ``stage``."""
        return self.out_dir / "stages" / f"{stage}.json"

    def finished(self, stage: str) -> bool:
        return self.marker(stage).is_file()

    def plan_text(self) -> str:
        """The plan: one line per stage (done / to run / skipped by --stage) and the total."""
        lines = [f"{self.name}: {len(self.stages)} stages in {self.out_dir}"]
        remaining = 0.0
        unknown = 0
        for k, s in enumerate(self.stages, 1):
            if self.finished(s.name):
                state = "done"
            elif not self._selected(s.name):
                state = "not selected"
            else:
                state = "to run"
                if s.estimate_s is None:
                    unknown += 1
                else:
                    remaining += s.estimate_s
            estimate = "" if s.estimate_s is None else f" ~{format_duration(s.estimate_s)}"
            basis = f" ({s.basis})" if s.basis and s.estimate_s is not None else ""
            lines.append(f"  {k:>2}. {s.name:<28} {state:<12} {s.description}{estimate}{basis}")
        total = f"estimated time to run: {format_duration(remaining)}"
        if unknown:
            total += f" (+{unknown} stage(s) without an estimate)"
        lines.append(total)
        return "\n".join(lines)

    def print_plan(self) -> None:
        self._log(self.plan_text())

    def _selected(self, stage: str) -> bool:
        return self.only is None or any(stage.startswith(o) for o in self.only)

    def _plan(self, stage: str) -> StagePlan:
        for s in self.stages:
            if s.name == stage:
                return s
        raise ValueError(f"stage {stage!r} is not in the plan")

    # ----------------------------------------------------------------------------------------
    def stage(
        self, stage: str, fn: Callable[[], Mapping[str, Any]], *, settings: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Run ``fn`` once for ``stage``; returns what it returned (JSON-able), or None when the
        stage is not selected by ``only`` and has not finished.

        Args:
            stage: a name from the plan.
            fn: does the work and returns a JSON-able mapping (paths, metrics); it must itself
                write its outputs atomically, and may resume from its own partial outputs (a
                training stage resumes from its checkpoint).
            settings: what the stage's outputs depend on (config values, input paths). A
                finished stage with other settings is refused.

        Raises:
            ConfigError: the stage finished before with different settings.
        """
        plan = self._plan(stage)
        k = self.stages.index(plan) + 1
        settings = _jsonable(dict(settings))
        marker = self.marker(stage)
        if marker.is_file():
            record = json.loads(marker.read_text())
            if record.get("settings") != settings:
                changed = sorted(
                    key
                    for key in set(settings) | set(record.get("settings", {}))
                    if settings.get(key) != record.get("settings", {}).get(key)
                )
                raise ConfigError(
                    f"{self.name}: stage {stage!r} finished earlier with other settings "
                    f"({', '.join(changed)} changed; see {marker}). Use a new --out, or delete "
                    f"{marker} and that stage's outputs to rerun it"
                )
            self._log(f"[{k}/{len(self.stages)}] {stage}: done earlier, skipped")
            return record["result"]
        if not self._selected(stage):
            self._log(f"[{k}/{len(self.stages)}] {stage}: not selected (--stage)")
            return None
        self._log(
            f"[{k}/{len(self.stages)}] {stage}: {plan.description} "
            f"(t={time.perf_counter() - self._start:.0f}s{self._eta(k)})"
        )
        began = time.perf_counter()
        result = _jsonable(dict(fn()))
        seconds = time.perf_counter() - began
        estimated = ""
        if plan.estimate_s is not None:
            self._taken_s += seconds
            self._estimated_s += plan.estimate_s
            estimated = f", estimated {format_duration(plan.estimate_s)}"
        self._log(
            f"[{k}/{len(self.stages)}] {stage}: finished in {format_duration(seconds)}{estimated}"
        )
        atomic_write(
            marker,
            json.dumps(
                {"stage": stage, "settings": settings, "result": result, "seconds": seconds},
                indent=2,
                sort_keys=True,
            ),
        )
        self._done_count += 1
        return result

    def _eta(self, k: int) -> str:
        """``", about 2 h left"``: the estimates of this and the later stages to run, scaled by
        how the stages run so far compared with their estimates."""
        rest = [
            s.estimate_s
            for s in self.stages[k - 1 :]
            if s.estimate_s is not None and not self.finished(s.name) and self._selected(s.name)
        ]
        if not rest:
            return ""
        left = sum(rest)
        if self._estimated_s > 0 and self._taken_s > 0:
            speed = self._taken_s / self._estimated_s
            return (
                f", about {format_duration(left * speed)} left "
                f"(estimates x{speed:.2g}, as the stages so far ran)"
            )
        return f", about {format_duration(left)} left"

    def result(self, stage: str) -> dict[str, Any]:
        """What a finished ``stage`` returned.

        Raises:
            ConfigError: the stage has not finished (e.g. ``--stage`` skipped a stage it needs).
        """
        marker = self.marker(stage)
        if not marker.is_file():
            raise ConfigError(
                f"{self.name}: stage {stage!r} has not run yet in {self.out_dir}; run it first "
                f"(without --stage, or with --stage {stage})"
            )
        return json.loads(marker.read_text())["result"]


# --------------------------------------------------------------------------------------------------
# tables


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, digits: int = 3
) -> str:
    """``rows`` as a GitHub Markdown table with ``columns`` (floats to ``digits`` places)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(c), digits).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    title: str = "",
    notes: Sequence[str] = (),
    digits: int = 3,
) -> tuple[Path, Path]:
    """Write ``path`` with ``.md`` and ``.csv`` suffixes from the same rows; returns both paths.

    The Markdown file has ``title`` as a heading, the table, then ``notes`` (what the columns mean,
    which protocol values are cxrkit's). The CSV keeps full precision.
    """
    path = Path(path)
    text = f"## {title}\n\n" if title else ""
    text += markdown_table(rows, columns, digits=digits)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    md = atomic_write(path.with_name(path.name + ".md"), text)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    csv_path = atomic_write(path.with_name(path.name + ".csv"), buffer.getvalue())
    return md, csv_path


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON (numpy scalars, paths as text), atomically."""

    def default(value: Any) -> Any:
        if hasattr(value, "item"):
            return value.item()
        if hasattr(value, "tolist"):
            return value.tolist()
        return str(value)

    return atomic_write(path, json.dumps(obj, indent=2, default=default) + "\n")
