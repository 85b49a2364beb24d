"""Throughput of the data pipeline: ``build_cache`` against a naive single-process loop.

Each measurement is one function returning :class:`Row`s; ``main()`` prints them as one table.
Inputs are generated in a temporary folder (synthetic 1024 px 8-bit PNGs and 2048 px 16-bit
uncompressed MONOCHROME2 DICOMs), plus the real NIH PNGs when ``../shared/data`` is present.
The baseline is what a first script usually does: read with PIL (pydicom for DICOM), min-max with
numpy, resize with PIL, save a PNG with PIL, one image at a time. It does less work than the full
recipe (no percentile clip, no padding, no CLAHE, no sidecar or hash); the "baseline's steps" row
runs build_cache with clipping and CLAHE off, so that ratio compares equal work.

    python benchmarks/data_pipeline.py                  # defaults: --n 64 --size 224
    python benchmarks/data_pipeline.py --n 256 --workers 8 --size 512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrkit.config import PreprocessConfig
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Record

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    measurement: str
    images: int
    images_per_second: float
    baseline_per_second: float | None = None  # the naive loop on the same images, same run

    @property
    def ratio(self) -> float | None:
        if not self.baseline_per_second:
            return None
        return self.images_per_second / self.baseline_per_second


# --- inputs --------------------------------------------------------------------------------------


def _phantom(side: int, *, seed: int, peak: float) -> np.ndarray:
    """A smooth random field plus noise: compresses like a radiograph, not like a flat image."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0.2, 1.0, (side // 64, side // 64)).astype(np.float32)
    field = cv2.resize(low, (side, side), interpolation=cv2.INTER_CUBIC)
    field += rng.normal(0, 0.02, (side, side)).astype(np.float32)
    return np.clip(field, 0, 1) * peak


def make_pngs(folder: Path, n: int, *, side: int = 1024) -> list[Record]:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = folder / f"png{i:04d}.png"
        cv2.imwrite(str(path), _phantom(side, seed=i, peak=255).astype(np.uint8))
        records.append(_record(f"png{i:04d}", path, side, side))
    return records


def make_dicoms(folder: Path, n: int, *, side: int = 2048) -> list[Record]:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
        ds.SOPInstanceUID = generate_uid()
        ds.Modality, ds.PatientID, ds.ViewPosition = "DX", f"P{i}", "PA"
        ds.set_pixel_data(
            _phantom(side, seed=1000 + i, peak=65535).astype(np.uint16), "MONOCHROME2", 16
        )
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"dcm{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        records.append(_record(f"dcm{i:04d}", path, side, side))
    return records


def nih_records() -> list[Record]:
    folder = SHARED_DATA / "nih" / "images"
    paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    records = []
    for path in paths:
        with Image.open(path) as im:
            width, height = im.size
        records.append(_record(path.stem, path, width, height))
    return records


def _record(image_id: str, path: Path, width: int, height: int) -> Record:
    return Record(
        image_id=image_id, source="bench", path=str(path), patient_id=image_id, width=width,
        height=height,
    )  # fmt: skip


# --- the two contenders --------------------------------------------------------------------------


def naive_loop(records: Sequence[Record], *, out_dir: Path, size: int) -> float:
    """Images/s of the one-at-a-time baseline (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for record in records:
        if record.path.endswith(".dcm"):
            pixels = pydicom.dcmread(record.path).pixel_array.astype(np.float32)
        else:
            with Image.open(record.path) as im:
                pixels = np.asarray(im.convert("L") if im.mode not in ("L", "I;16") else im)
            pixels = pixels.astype(np.float32)
        low, high = pixels.min(), pixels.max()
        scaled = ((pixels - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
        Image.fromarray(scaled).resize((size, size), Image.BILINEAR).save(
            out_dir / f"{record.image_id}.png"
        )
    return len(records) / (time.perf_counter() - start)


def cache_rate(
    records: Sequence[Record], *, out_dir: Path, recipe: PreprocessConfig, workers: int
) -> float:
    """Images/s of ``build_cache`` (recipe, sidecars, hashes, index) into an empty directory."""
    summary = build_cache(
        records=records,
        out_dir=out_dir,
        recipe=recipe,
        workers=workers,
        on_error="fail",
        progress=False,
    )
    return summary.images_per_second


# --- measurements --------------------------------------------------------------------------------


def bench_preprocess(
    *, tmp: Path, n: int, workers: int, size: int, log: Callable[[str], None]
) -> list[Row]:
    """build_cache vs the naive loop on synthetic PNGs, real NIH PNGs and synthetic DICOMs."""
    full = PreprocessConfig(size=size)
    # The baseline's own steps (min-max, resize): what the cache writer costs on equal work.
    same_steps = PreprocessConfig(size=size, clip_percentiles=False, clahe=False)
    pngs = make_pngs(tmp / "png", n)
    inputs = [
        (f"1024px 8-bit PNG -> {size}px, full recipe", lambda: pngs, full),
        (f"1024px 8-bit PNG -> {size}px, baseline's steps", lambda: pngs, same_steps),
        ("NIH ChestX-ray14 PNG, full recipe", nih_records, full),
        (
            f"2048px 16-bit DICOM -> {size}px, full recipe",
            lambda: make_dicoms(tmp / "dicom", max(1, n // 2)),
            full,
        ),
    ]
    # Warm-up: the first pool in a process starts the forkserver (imports cv2, pydicom, pyarrow)
    # and the first index write imports pandas; a real run pays that once, so keep it out of rates.
    cache_rate(pngs[:2], out_dir=tmp / "warmup", recipe=full, workers=workers)
    rows = []
    for label, make, recipe in inputs:
        log(f"{label}: preparing inputs")
        records = make()
        if not records:
            log(f"{label}: no inputs (no {SHARED_DATA}), skipped")
            continue
        key = str(len(rows))
        log(f"{label}: naive loop on {len(records)} images")
        baseline = naive_loop(records, out_dir=tmp / f"naive{key}", size=size)
        log(f"{label}: build_cache with {workers} workers")
        rate = cache_rate(records, out_dir=tmp / f"cache{key}", recipe=recipe, workers=workers)
        rows.append(Row(label, len(records), rate, baseline))
    return rows


# --- report --------------------------------------------------------------------------------------


def format_table(rows: Sequence[Row]) -> str:
    header = f"{'measurement':<46} {'images':>6} {'images/s':>9} {'baseline/s':>10} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    for row in rows:
        baseline = f"{row.baseline_per_second:10.1f}" if row.baseline_per_second else f"{'-':>10}"
        ratio = f"{row.ratio:5.2f}x" if row.ratio else f"{'-':>6}"
        lines.append(
            f"{row.measurement:<46} {row.images:>6} {row.images_per_second:9.1f} {baseline} {ratio}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="synthetic PNGs (DICOMs: n // 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--size", type=int, default=224, help="cache side in pixels")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"# {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="cxrkit-bench-") as tmp:
        rows = bench_preprocess(
            tmp=Path(tmp), n=args.n, workers=args.workers, size=args.size, log=log
        )
    print(f"cpus {os.cpu_count()}, workers {args.workers}, size {args.size}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
