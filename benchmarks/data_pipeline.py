"""Throughput of ``cxrkit preprocess`` (``build_cache``) against two named peers, interleaved.

Peers, on the same images in the same run (A B A B, ``--pairs`` rounds, medians, per core):

* **lean**: a hand-written OpenCV/numpy implementation of the IDENTICAL recipe (percentile clip
  from the grey-level histogram, min-max by lookup table, pad, CLAHE, area resize, PNG encode and
  write), with none of cxrkit's bookkeeping (no sidecar, hash, index, resume, checks). It is the
  physical anchor on a CPU: the recipe cannot cost less than decode + histogram + CLAHE + resize +
  encode. The benchmark checks that its pixels equal ours, image by image.
* **naive**: the loop a first script writes: PIL (pydicom for DICOM) open, grey, min-max, resize,
  save, one image at a time. Less work than the recipe (no clip, pad or CLAHE).

Inputs (made in a temporary folder): 1024 px 8-bit PNGs, the real NIH PNGs when ``../shared/data``
is present, and 2048 px 16-bit DICOMs with and without a VOI window; all cached at ``--size``.
Ours runs with 1 and 2 workers (``--workers``); the 1 -> 2 figure is the ratio of whole rates.
OpenCV runs one thread in every contender, so "per core" means per process.

Besides wall time, every repeat records its CPU time: this process's and its children's
(``resource.getrusage``; the lean pool's forked workers are children), plus, for ours with a pool,
the CPU time its pool processes report (:attr:`CacheSummary.pool_cpu_seconds`: they are forkserver
children, which ``RUSAGE_CHILDREN`` never sees). On a machine that other people load, wall-time
ratios move with their load; CPU time per image barely does, so the CPU ratios are the figures to
compare across runs. For scaling, CPU per image at N workers against 1 is the per-core efficiency
(1.00: the pool adds no work), and the serial share (the main process's CPU not spent on items:
ours' bookkeeping, the lean pool's dispatch) is the part that caps the speed-up.

    python benchmarks/data_pipeline.py                   # 32 PNGs, 16 DICOMs, 256 px, 5 rounds
    python benchmarks/data_pipeline.py --n 117 --pairs 7 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

try:
    from benchmarks._interleave import Contender, Result, interleave
except ImportError:  # run as a script: benchmarks/ is on sys.path, the repository may not be
    from _interleave import Contender, Result, interleave

from cxrkit.config import PreprocessConfig
from cxrkit.data import cache
from cxrkit.data.preprocess import CacheSummary, build_cache
from cxrkit.data.records import Record

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


# --- inputs --------------------------------------------------------------------------------------


def _phantom(side: int, *, seed: int, peak: float) -> np.ndarray:
    """A smooth random field plus noise: compresses like a radiograph, not like a flat image."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0.2, 1.0, (max(2, side // 64),) * 2).astype(np.float32)
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


def make_dicoms(folder: Path, n: int, *, side: int = 2048, window: bool) -> list[Record]:
    """16-bit MONOCHROME2 uncompressed DICOMs; ``window`` adds a VOI window to the header."""
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
        if window:
            ds.WindowCenter, ds.WindowWidth = 30000, 40000
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"dcm{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        records.append(_record(f"dcm{i:04d}", path, side, side))
    return records


def nih_records(limit: int | None = None) -> list[Record]:
    folder = SHARED_DATA / "nih" / "images"
    paths = sorted(folder.glob("*.png"))[:limit] if folder.is_dir() else []
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


# --- the peers -----------------------------------------------------------------------------------


def naive_loop(records: Sequence[Record], *, out_dir: Path, size: int) -> None:
    """The one-at-a-time baseline (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
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


def _lean_levels(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(levels uint8/uint16, float32 display value per level): the file's pixels as a table."""
    if path.endswith(".dcm"):
        ds = pydicom.dcmread(path)
        # This benchmark's DICOMs are uncompressed unsigned 16-bit with every bit stored: the
        # pixels are the PixelData bytes, and the stored values are the levels.
        rows, columns = int(ds.Rows), int(ds.Columns)
        stored = np.frombuffer(ds.PixelData, "<u2", count=rows * columns).reshape(rows, columns)
        domain = np.arange(int(stored.max()) + 1).astype(stored.dtype)
        values = apply_modality_lut(domain, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        return stored, np.asarray(values, dtype=np.float32)
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:  # the NIH RGBA quirk
        image = cv2.cvtColor(
            image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        )
    return image, np.arange(256 if image.dtype == np.uint8 else 65536, dtype=np.float32)


def _lean_percentile(values: np.ndarray, counts: np.ndarray, p: float) -> float:
    """The recipe's percentile (numpy's "linear" method) from per-level values and counts."""
    present = counts > 0
    order = np.argsort(values[present], kind="stable")
    v, cumulative = values[present][order], np.cumsum(counts[present][order])
    n = int(cumulative[-1])
    rank = p / 100.0 * (n - 1)
    k = int(rank)
    a = v[np.searchsorted(cumulative, k, side="right")]
    b = v[np.searchsorted(cumulative, min(k + 1, n - 1), side="right")]
    t = rank - k
    if float(v[-1]) - float(v[0]) < 1 << 20 and np.array_equal(np.trunc(v), v):
        return float(a) + t * (float(b) - float(a))  # integer levels: the histogram formula
    d = np.float64(b - a)  # numpy's _lerp, float32 difference, float64 weight
    return float(np.float64(b) - d * (1 - t)) if t >= 0.5 else float(np.float64(a) + d * t)


def lean_item(path: str, out: Path, recipe: PreprocessConfig) -> None:
    """The recipe on one file, hand-written with OpenCV and numpy, written as ``out`` (PNG)."""
    levels, values = _lean_levels(path)
    counts = cv2.calcHist([levels], [0], None, [len(values)], [0, len(values)]).ravel()
    low = _lean_percentile(values, counts, recipe.clip_low)
    high = _lean_percentile(values, counts, recipe.clip_high)
    x = np.clip(values, low, high)
    lo, hi = float(x[counts > 0].min()), float(x[counts > 0].max())
    table = np.rint((x - np.float32(lo)) * np.float32(255.0 / (hi - lo)))
    table = np.clip(table, 0, 255).astype(np.uint8)
    image = cv2.LUT(levels, table) if levels.dtype == np.uint8 else table[levels]
    h, w = image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    image = cv2.copyMakeBorder(
        image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0
    )
    grid = (recipe.clahe_tile_grid, recipe.clahe_tile_grid)
    image = cv2.createCLAHE(clipLimit=recipe.clahe_clip_limit, tileGridSize=grid).apply(image)
    image = cv2.resize(image, (recipe.size, recipe.size), interpolation=cv2.INTER_AREA)
    out.write_bytes(cv2.imencode(".png", image)[1].tobytes())


def lean_loop(
    records: Sequence[Record], *, out_dir: Path, recipe: PreprocessConfig, processes: int = 1
) -> None:
    """The lean recipe on every record; ``processes > 1`` maps it over a fresh process pool (one
    OpenCV thread each), which shows how far this machine lets two processes scale right now."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(record.path, out_dir / f"{record.image_id}.png", recipe) for record in records]
    if processes <= 1:
        for job in jobs:
            lean_item(*job)
        return
    # fork: the children need this module's functions, which a script's __main__ cannot ship.
    context = multiprocessing.get_context("fork")
    with context.Pool(processes, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        pool.starmap(lean_item, jobs, chunksize=4)


def ours(
    records: Sequence[Record], *, out_dir: Path, recipe: PreprocessConfig, workers: int
) -> CacheSummary:
    return build_cache(
        records=records, out_dir=out_dir, recipe=recipe, workers=workers, on_error="fail",
        progress=False,
    )  # fmt: skip


def check_identical(records: Sequence[Record], *, ours_dir: Path, lean_dir: Path) -> int:
    """Number of images whose cached pixels differ between ours and the lean peer."""
    differ = 0
    for record in records:
        a = cv2.imread(str(cache.image_path(ours_dir, record.image_id)), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(lean_dir / f"{record.image_id}.png"), cv2.IMREAD_UNCHANGED)
        differ += not np.array_equal(a, b)
    return differ


# --- measurement ---------------------------------------------------------------------------------


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuClock:
    """CPU seconds of every repeat, per contender: ``total`` (this process, its reaped children,
    and the pool processes a :class:`CacheSummary` reports) and ``serial`` (the part of this
    process's CPU not spent on items, which no added core speeds up)."""

    def __init__(self) -> None:
        self.total: dict[str, list[float]] = {}
        self.serial: dict[str, list[float]] = {}

    def wrap(
        self, name: str, run: Callable[[], object], *, dispatches: bool = False
    ) -> Callable[[], object]:
        """``run`` with its CPU time recorded. When it returns a :class:`CacheSummary` (ours),
        the summary says which CPU went to items, here and in the pool; ``dispatches``: this
        process only hands items to forked children (the lean pool), so all of its CPU is
        serial; otherwise (a plain loop) none of it is."""
        self.total[name], self.serial[name] = [], []

        def timed() -> object:
            own, children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
            result = run()
            own = _cpu(resource.RUSAGE_SELF) - own
            children = _cpu(resource.RUSAGE_CHILDREN) - children
            if isinstance(result, CacheSummary):
                items_here = result.worker_cpu_seconds - result.pool_cpu_seconds
                self.total[name].append(own + children + result.pool_cpu_seconds)
                self.serial[name].append(max(0.0, own - items_here))
            else:
                self.total[name].append(own + children)
                self.serial[name].append(own if dispatches else 0.0)
            return result

        return timed

    def timed(self, name: str, rounds: int) -> tuple[list[float], list[float]]:
        """The last ``rounds`` repeats (the warm-up rounds come first): total and serial CPU."""
        return self.total[name][-rounds:], self.serial[name][-rounds:]


def cpu_figures(clock: CpuClock, result: Result, *, pairs: int) -> dict[str, dict[str, float]]:
    """Per contender: median CPU ms per image, and the serial part's median share of it."""
    out = {}
    for c in result.contenders:
        total, serial = clock.timed(c.name, pairs)
        out[c.name] = {
            "cpu_ms_per_image": 1000 * statistics.median(total) / c.items,
            "serial_share": statistics.median(p / t for p, t in zip(serial, total, strict=True)),
            "cpu_s": total,
        }
    return out


def cpu_ratio(clock: CpuClock, name: str, reference: str, *, pairs: int) -> float:
    """Median over rounds of reference CPU / name CPU per image (> 1: ``name`` needs less CPU)."""
    a, _ = clock.timed(name, pairs)
    b, _ = clock.timed(reference, pairs)
    return statistics.median(y / x for x, y in zip(a, b, strict=True))


def bench_set(
    records: Sequence[Record],
    *,
    tmp: Path,
    size: int,
    workers: Sequence[int],
    pairs: int,
    naive: bool,
    log: Callable[[str], None],
) -> tuple[Result, int, CpuClock]:
    """Interleave ours (each worker count), lean and naive on ``records``."""
    recipe = PreprocessConfig(size=size)
    clock = CpuClock()

    def fresh(folder: Path) -> Callable[[], None]:
        return lambda: shutil.rmtree(folder, ignore_errors=True)

    n = len(records)
    contenders = [
        Contender(f"ours, {w} worker{'s' if w > 1 else ''}", items=n, cores=w,
                  setup=fresh(tmp / f"ours{w}"),
                  run=clock.wrap(f"ours, {w} worker{'s' if w > 1 else ''}",
                                 lambda w=w: ours(records, out_dir=tmp / f"ours{w}",
                                                  recipe=recipe, workers=w)))
        for w in workers
    ]  # fmt: skip
    lean = "lean OpenCV/numpy (same recipe)"
    contenders.append(
        Contender(lean, items=n, setup=fresh(tmp / "lean"),
                  run=clock.wrap(lean, lambda: lean_loop(records, out_dir=tmp / "lean",
                                                         recipe=recipe)))
    )  # fmt: skip
    for w in workers[1:]:  # the machine's own scaling, for ours' N-worker figure
        contenders.append(
            Contender(f"lean, {w} processes", items=n, cores=w, setup=fresh(tmp / f"lean{w}"),
                      run=clock.wrap(f"lean, {w} processes",
                                     lambda w=w: lean_loop(records, out_dir=tmp / f"lean{w}",
                                                           recipe=recipe, processes=w),
                                     dispatches=True))
        )  # fmt: skip
    if naive:
        name = "naive PIL loop (less work)"
        contenders.append(
            Contender(name, items=n, setup=fresh(tmp / "naive"),
                      run=clock.wrap(name, lambda: naive_loop(records, out_dir=tmp / "naive",
                                                              size=size)))
        )  # fmt: skip
    result = interleave(contenders, pairs=pairs, log=log)
    differ = check_identical(records, ours_dir=tmp / f"ours{workers[0]}", lean_dir=tmp / "lean")
    return result, differ, clock


def cpu_table(clock: CpuClock, result: Result, *, pairs: int, reference: str) -> str:
    """CPU ms per image, the serial share, and the CPU ratio against ``reference``."""
    figures = cpu_figures(clock, result, pairs=pairs)
    rows = [f"{'contender':<36} {'CPU ms/img':>10} {'serial':>7} {'CPU ratio':>9}"]
    rows.append("-" * len(rows[0]))
    for c in result.contenders:
        f = figures[c.name]
        ratio = cpu_ratio(clock, c.name, reference, pairs=pairs)
        rows.append(
            f"{c.name:<36} {f['cpu_ms_per_image']:10.2f} {f['serial_share']:7.0%} {ratio:8.2f}x"
        )
    rows.append(
        f"CPU: this process + children (+ ours' pool workers), median of {pairs} rounds; ratio: "
        f"median per-round {reference!r} CPU / contender CPU (> 1: less CPU than it)"
    )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="synthetic PNGs (DICOMs: n // 2)")
    parser.add_argument("--nih", type=int, default=117, help="real NIH PNGs, when present")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=256, help="cache side in pixels")
    parser.add_argument("--png-side", type=int, default=1024)
    parser.add_argument("--dicom-side", type=int, default=2048)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved rounds (>= 5)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # one thread per process in every contender: per-core figures

    def log(message: str) -> None:
        print(f"# {message}", file=sys.stderr, flush=True)

    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cxrkit-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        sets = {
            f"{args.png_side} px 8-bit PNG -> {args.size} px": (
                lambda: make_pngs(tmp / "png", args.n, side=args.png_side), True),
            f"NIH ChestX-ray14 PNG -> {args.size} px": (lambda: nih_records(args.nih), True),
            f"{args.dicom_side} px 16-bit DICOM, VOI window -> {args.size} px": (
                lambda: make_dicoms(tmp / "dcmw", max(1, args.n // 2), side=args.dicom_side,
                                    window=True), True),
            f"{args.dicom_side} px 16-bit DICOM, no window -> {args.size} px": (
                lambda: make_dicoms(tmp / "dcm", max(1, args.n // 2), side=args.dicom_side,
                                    window=False), True),
        }  # fmt: skip
        for label, (make, naive) in sets.items():
            records = make()
            if not records:
                log(f"{label}: no inputs (no {SHARED_DATA}), skipped")
                continue
            log(f"{label}: {len(records)} images")
            work = tmp / f"set{len(report)}"
            result, differ, clock = bench_set(
                records, tmp=work, size=args.size, workers=args.workers, pairs=args.pairs,
                naive=naive, log=log,
            )  # fmt: skip
            shutil.rmtree(work, ignore_errors=True)
            cpu = cpu_figures(clock, result, pairs=args.pairs)
            report[label] = {"images": len(records), "differ": differ, **result.as_dict(),
                             "cpu": cpu}  # fmt: skip
            print(f"\n## {label}: {len(records)} images; pixels differing from lean: {differ}")
            lean = result.contenders[len(args.workers)].name
            print(result.table(reference=lean, unit="img"))
            print(cpu_table(clock, result, pairs=args.pairs, reference=lean))
            first = result.contenders[0].name
            naive_name = result.contenders[-1].name
            if naive_name.startswith("naive"):
                print(
                    f"{first} / naive, per core: {result.ratio(first, naive_name):.2f}x wall, "
                    f"{cpu_ratio(clock, first, naive_name, pairs=args.pairs):.2f}x CPU"
                )
            print(
                f"{first} / lean: {result.ratio(first, lean):.2f}x wall, "
                f"{cpu_ratio(clock, first, lean, pairs=args.pairs):.2f}x CPU"
            )
            for w, c in zip(
                args.workers[1:], result.contenders[1 : len(args.workers)], strict=True
            ):
                lean_w = f"lean, {w} processes"
                # per-core efficiency: CPU per image at 1 worker / at w (1.00: no added work)
                efficiency = cpu[first]["cpu_ms_per_image"] / cpu[c.name]["cpu_ms_per_image"]
                lean_efficiency = cpu[lean]["cpu_ms_per_image"] / cpu[lean_w]["cpu_ms_per_image"]
                print(
                    f"{c.name} / {first}, whole rates: {result.ratio_total(c.name, first):.2f}x "
                    f"(lean {w} processes / lean 1: "
                    f"{result.ratio_total(lean_w, lean):.2f}x on this machine now)"
                )
                print(
                    f"{c.name}: per-core efficiency (CPU/img at 1 / at {w}) {efficiency:.2f}, "
                    f"serial share {cpu[c.name]['serial_share']:.1%} of the CPU; lean "
                    f"{lean_efficiency:.2f}; CPU-bound speed-up with {w} free cores "
                    f"{w * efficiency:.2f}x (lean {w * lean_efficiency:.2f}x)"
                )
    print(f"\ncpus {os.cpu_count()}; load average at the end {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
