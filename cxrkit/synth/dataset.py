"""``generate``: plan, render and write whole datasets, in parallel worker processes; the result
does not depend on the number of workers (see :mod:`cxrkit.synth.plan`)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from cxrkit.errors import ConfigError
from cxrkit.io import atomic_write
from cxrkit.synth import formats
from cxrkit.synth.anatomy import FIELD_OF_VIEW_MM
from cxrkit.synth.plan import DATASETS, PlannedImage, plan_dataset, render_planned

_TQDM_MIN_ITEMS = 200


@dataclass(kw_only=True)
class SynthSummary:
    """What :func:`generate` wrote. ``counts[dataset]`` holds images, normal, abnormal, AP, PA,
    train/test (VinDr), patients, and one count per finding name of that dataset."""

    out_dir: Path
    n: int
    size: int
    seed: int
    datasets: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    seconds: float


def _work(job: tuple[PlannedImage, int, int, str]) -> dict[str, Any]:
    """Render and write one image (runs in a worker process); returns what the CSVs need."""
    item, seed, size, out_dir = job
    phantom = render_planned(item, seed=seed, size=size)
    root = Path(out_dir) / item.dataset
    if item.dataset == "nih":
        result = formats.write_nih_item(item, phantom, root)
    else:
        result = formats.write_vindr_item(item, phantom, root, seed=seed)
    result["view"] = phantom.view
    result["nih_names"] = phantom.nih_names
    return result


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def _validate(
    *,
    n: int,
    size: int,
    abnormal_fraction: float,
    ap_fraction: float,
    workers: int,
    datasets: Sequence[str],
) -> None:
    if n < 1:
        raise ConfigError(f"--n must be at least 1 image, got {n}")
    if not 64 <= size <= 4096:
        raise ConfigError(f"--size must be between 64 and 4096 pixels, got {size}")
    for name, value in (("--abnormal-fraction", abnormal_fraction), ("--ap-fraction", ap_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {value}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        raise ConfigError(
            f"--datasets must be a non-empty subset of {DATASETS}, got {list(datasets)}"
        )


def _results(
    jobs: list[tuple[PlannedImage, int, int, str]], *, workers: int, progress: bool
) -> Iterator[dict[str, Any]]:
    from cxrkit.progress import Progress

    bar = Progress(
        total=len(jobs),
        desc="cxrkit synth",
        unit="img",
        enabled=progress and len(jobs) >= _TQDM_MIN_ITEMS,
    )
    try:
        if workers == 1:
            for job in jobs:
                yield _work(job)
                bar.update()
        else:
            import multiprocessing

            # spawn, not fork: callers (the demo, tests) may already run torch/OpenMP threads
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
                chunk = max(1, min(32, len(jobs) // (8 * workers)))
                for result in pool.map(_work, jobs, chunksize=chunk):
                    yield result
                    bar.update()
    finally:
        bar.close()


def generate(
    *,
    out_dir: Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    abnormal_fraction: float = 0.4,
    ap_fraction: float = 0.45,
    workers: int = 1,
    datasets: Sequence[str] = DATASETS,
    progress: bool = True,
) -> SynthSummary:
    """Write ``n`` phantoms per dataset under ``out_dir`` (layout: :mod:`cxrkit.synth.formats`).

    Args:
        out_dir: output root; created if needed. Files of an earlier run are overwritten, never
            deleted.
        n: images per dataset (VinDr splits them ~80/20 train/test by patient).
        size: image side in pixels.
        seed: same seed -> byte-identical files, whatever ``workers`` is.
        abnormal_fraction: exact share of images with at least one finding.
        ap_fraction: probability of an AP film.
        workers: processes rendering in parallel.
        datasets: any of "nih", "vindr".
        progress: show progress (a bar, or rate and ETA lines in a log; 200 images or more).

    Raises:
        ConfigError: an argument out of range.
    """
    datasets = tuple(dict.fromkeys(datasets))
    _validate(
        n=n,
        size=size,
        abnormal_fraction=abnormal_fraction,
        ap_fraction=ap_fraction,
        workers=workers,
        datasets=datasets,
    )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")
    start = time.perf_counter()
    plans = {
        d: plan_dataset(
            d, n=n, seed=seed, abnormal_fraction=abnormal_fraction, ap_fraction=ap_fraction
        )
        for d in datasets
    }
    for d in datasets:
        sub = ["images", "masks"] if d == "nih" else ["train", "test", "annotations"]
        for name in sub:
            (out_dir / d / name).mkdir(parents=True, exist_ok=True)
    jobs = [(item, seed, size, str(out_dir)) for d in datasets for item in plans[d]]
    results = list(_results(jobs, workers=min(workers, len(jobs)), progress=progress))
    for result in results:
        result["size"] = size
    counts: dict[str, dict[str, int]] = {}
    offset = 0
    for d in datasets:
        items, res = plans[d], results[offset : offset + len(plans[d])]
        offset += len(items)
        if d == "nih":
            formats.write_nih_tables(out_dir / "nih", items, res)
        else:
            formats.write_vindr_tables(out_dir / "vindr", items, res)
        counts[d] = _count(d, items, res)
    summary = SynthSummary(
        out_dir=out_dir,
        n=n,
        size=size,
        seed=seed,
        datasets=datasets,
        counts=counts,
        seconds=time.perf_counter() - start,
    )
    atomic_write(out_dir / "README.txt", _readme(summary, abnormal_fraction, ap_fraction))
    return summary


def _count(
    dataset: str, items: Sequence[PlannedImage], results: Sequence[dict[str, Any]]
) -> dict[str, int]:
    c: Counter[str] = Counter()
    c["images"] = len(items)
    c["patients"] = len({i.patient_number for i in items})
    for item, res in zip(items, results, strict=True):
        c["abnormal" if item.findings else "normal"] += 1
        c[item.view] += 1
        if item.split:
            c[item.split] += 1
        if dataset == "nih":
            c.update(res["labels"])
        else:
            c.update(formats.VINDR_NAMES[f] for f in item.findings)
    return dict(c)


def _readme(summary: SynthSummary, abnormal_fraction: float, ap_fraction: float) -> str:
    lines = [
        "Synthetic chest-radiograph phantoms written by `cxrkit synth` (cxrkit.synth).",
        "Not patient data: every image is drawn from geometry and noise.",
        "",
        f"seed: {summary.seed}",
        f"images per dataset: {summary.n}",
        f"image size: {summary.size} x {summary.size} px "
        f"({FIELD_OF_VIEW_MM / summary.size:.3f} mm per pixel)",
        f"abnormal fraction: {abnormal_fraction}",
        f"AP fraction: {ap_fraction}",
        "Same seed and arguments -> byte-identical files.",
        "",
    ]
    for d in summary.datasets:
        lines.append(f"[{d}]")
        lines.extend(f"  {k}: {v}" for k, v in sorted(summary.counts[d].items()))
        lines.append("")
    lines += [
        "Layout:",
        "  nih/images/<image_id>.png, nih/masks/<image_id>.<name>.png (lung, heart, findings)",
        "  nih/Data_Entry_2017.csv, nih/BBox_List_2017.csv (NIH 2017 formats)",
        "  nih/phantoms.csv, nih/phantom_boxes.csv (generic CSV adapter)",
        "  vindr/{train,test}/<image_id>.dicom, vindr/annotations/*.csv (VinDr-CXR PhysioNet",
        f"  layout; readers {', '.join(formats.VINDR_READERS)})",
        "",
    ]
    return "\n".join(lines)
