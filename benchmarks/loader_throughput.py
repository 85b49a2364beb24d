"""Training-loader throughput per core: cxrkit's cache loaders against their peers, interleaved.

Three measurements, each ours vs a named peer, A B A B for ``--pairs`` rounds (medians):

1. **load**: one cache image at 224 / 256 / 512 px, the packed store (memory-mapped raw uint8,
   crc32 checked on first read) vs decoding the cache PNG (OpenCV, sha256 checked as the cache
   does) - microseconds per image per core.
2. **pairs**: the Barlow Twins two-view loader (BYOL views at 224 from the 256-px cache, the real
   transforms) - ours: ``UnlabeledDataset`` + ``build_view_transform`` (grey uint8 views) over
   the store; peer: a pre-resized 256-px PNG folder through lightly's
   ``BYOLView1/2Transform`` as shipped (PIL decode, RGB, ``ToTensor`` float32). Pairs/s per core
   and bytes per pair on the wire (what a worker hands the trainer through /dev/shm).
3. **classification**: ``ClassificationDataset`` with ``default_augment`` over the 224-px store vs
   torchvision v2 on a pre-resized 224-px PNG folder (``decode_png`` + the same affine /
   brightness-contrast jitter + ``ToDtype``). Images/s per core.

"Per core" is items per CPU second of the loading process (``time.process_time``), each loader
run in this process the way one DataLoader worker runs it: on a shared machine wall time measures
the neighbours, CPU time the work. ``--workers N`` adds the same loaders through a DataLoader
with N workers (wall clock, per worker). Originals are synthetic 1024-px chest-like PNGs.

    python benchmarks/loader_throughput.py                      # ~2 min on 2 cores
    python benchmarks/loader_throughput.py --images 8 --items 16 --pairs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network at run time

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._interleave import turns  # noqa: E402
from cxrkit.config import PreprocessConfig  # noqa: E402
from cxrkit.data import augmentation, datasets  # noqa: E402
from cxrkit.data.cache import Cache, read_png  # noqa: E402
from cxrkit.data.preprocess import build_cache  # noqa: E402
from cxrkit.data.records import Record  # noqa: E402
from cxrkit.pretrain.config import ViewsConfig  # noqa: E402
from cxrkit.pretrain.transforms import build_view_transform  # noqa: E402

LOAD_SIZES = (224, 256, 512)


def make_originals(out: Path, *, n: int, side: int, seed: int = 0) -> list[Record]:
    """Smooth chest-like PNGs (two dark lungs, mild noise): they compress like real radiographs,
    which matters because PNG decoding is most of a PNG loader's cost."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    records = []
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = 170 - 60 * yy + rng.normal(0, 3, (side, side))
        for cx in (0.3 + rng.uniform(-0.02, 0.02), 0.7 + rng.uniform(-0.02, 0.02)):
            lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
            image[lung] -= 90
        image = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (0, 0), 2)
        path = out / f"img{i:04d}.png"
        cv2.imwrite(str(path), image)
        records.append(
            Record(
                image_id=f"img{i:04d}",
                source="bench",
                path=str(path),
                patient_id=str(i),
                width=side,
                height=side,
                labels={"Nodule": int(i % 2)},
            )
        )
    return records


def pre_resized_folder(records: list[Record], out: Path, *, size: int) -> list[Path]:
    """The peers' input: every original resized once to ``size`` px and saved as a PNG."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in records:
        image = cv2.imread(r.path, cv2.IMREAD_GRAYSCALE)
        path = out / Path(r.path).name
        cv2.imwrite(str(path), cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        paths.append(path)
    return paths


class ByolFolder(Dataset):
    """Peer of the pairs loader: PIL decode of a pre-resized PNG, lightly's BYOL views as shipped
    (RGB, ``ToTensor`` float32)."""

    def __init__(self, paths: list[Path], *, size: int) -> None:
        from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

        self.paths = paths
        kw = {"input_size": size, "normalize": None}
        self.view_a, self.view_b = BYOLView1Transform(**kw), BYOLView2Transform(**kw)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        with Image.open(self.paths[index]) as im:
            rgb = im.convert("RGB")
        return {"image": [self.view_a(rgb), self.view_b(rgb)]}


class TvFolder(Dataset):
    """Peer of the classification loader: torchvision v2 on a pre-resized PNG folder, the same
    jitter as ``default_augment(kind="classification")`` (affine and brightness/contrast, p=0.5)."""

    def __init__(self, paths: list[Path], *, size: int) -> None:
        from torchvision.io import decode_png, read_file
        from torchvision.transforms import v2

        self.paths, self._read, self._decode = paths, read_file, decode_png
        self.transform = v2.Compose(
            [
                v2.RandomApply(
                    [v2.RandomAffine(degrees=5, translate=(0.03, 0.03), scale=(0.95, 1.05))], p=0.5
                ),
                v2.RandomApply([v2.ColorJitter(brightness=0.1, contrast=0.1)], p=0.5),
                v2.Resize((size, size), antialias=True),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = self._decode(self._read(str(self.paths[index])))  # uint8 [1, H, W]
        return {"image": self.transform(image), "labels": torch.zeros(1)}


def wire_bytes(sample: dict) -> int:
    """Bytes of a sample's image tensors: what a worker passes through shared memory."""
    image = sample["image"]
    views = image if isinstance(image, list) else [image]
    return sum(v.element_size() * v.nelement() for v in views)


def sweep(dataset: Dataset, items: int) -> Callable[[], None]:
    """One repeat: ``items`` random items loaded in this process, as a worker would."""
    order = np.random.default_rng(0).integers(0, len(dataset), items)  # type: ignore[arg-type]

    def run() -> None:
        for i in order:
            dataset[int(i)]

    return run


def loader_rate(dataset: Dataset, *, workers: int, items: int, batch_size: int) -> float:
    """Items/s through a DataLoader with ``workers`` workers, clock started at the first batch."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RandomSampler(dataset, replacement=True, num_samples=items + batch_size),
        num_workers=workers,
        collate_fn=datasets.collate,
    )
    batches = iter(loader)
    next(batches)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch["image"][0]) if isinstance(batch["image"], list) else len(batch["image"])
    return seen / (time.perf_counter() - start)


def build_caches(
    records: list[Record], work: Path, sizes: tuple[int, ...], *, workers: int
) -> dict[int, Cache]:
    caches = {}
    for size in sizes:
        out = work / f"cache-{size}"
        build_cache(
            records=records,
            out_dir=out,
            recipe=PreprocessConfig(size=size),
            workers=workers,
            progress=False,
        )
        caches[size] = Cache(out)
    return caches


def measure_load(caches: dict[int, Cache], *, pairs: int) -> dict:
    results = {}
    for size, cache in caches.items():
        ids = cache.ids
        rows = [cache._row(i) for i in ids]
        assert cache.store is not None, "the store is packed for sizes <= 512"

        def store_run(cache: Cache = cache, ids: list[str] = ids) -> None:
            for image_id in ids:
                cache.load(image_id)

        def png_run(cache: Cache = cache, rows: list[dict] = rows) -> None:
            for row in rows:
                read_png(cache.root / row["file"], sha256=row["sha256"])

        t = turns({"store": store_run, "png": png_run}, pairs=pairs)
        results[size] = {
            "store_us_per_image": 1e6 / t.cpu_rate("store", len(ids)),
            "png_us_per_image": 1e6 / t.cpu_rate("png", len(ids)),
            "store_vs_png": t.ratio("store", "png"),
            "turns": t.as_dict(),
        }
    return results


def measure(ours: Dataset, peer: Dataset, *, items: int, pairs: int, workers: list[int]) -> dict:
    t = turns({"ours": sweep(ours, items), "peer": sweep(peer, items)}, pairs=pairs)
    entry = {
        "ours_per_core": t.cpu_rate("ours", items),
        "peer_per_core": t.cpu_rate("peer", items),
        "ours_vs_peer_cpu": t.cpu_rate("ours", items) / t.cpu_rate("peer", items),
        "ours_vs_peer_wall": t.ratio("ours", "peer"),
        "ours_bytes_per_item": wire_bytes(ours[0]),
        "peer_bytes_per_item": wire_bytes(peer[0]),
        "turns": t.as_dict(),
        "loader": {},
    }
    for n in workers:
        kw = {"workers": n, "items": items, "batch_size": 16}
        a, b = loader_rate(ours, **kw), loader_rate(peer, **kw)
        entry["loader"][n] = {"ours": a, "peer": b, "ours_per_worker": a / max(n, 1)}
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=48, help="original PNGs to generate")
    parser.add_argument("--orig-size", type=int, default=1024, help="side of the originals")
    parser.add_argument("--items", type=int, default=200, help="items per timed repeat")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved rounds (>= 5)")
    parser.add_argument("--load-sizes", type=int, nargs="+", default=list(LOAD_SIZES))
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="DataLoader runs too")
    parser.add_argument("--workdir", type=Path, help="keep originals and caches here")
    parser.add_argument("--build-workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        records = make_originals(work / "originals", n=args.images, side=args.orig_size)
        sizes = tuple(sorted({*args.load_sizes, 224, 256}))
        caches = build_caches(records, work, sizes, workers=args.build_workers)
        report: dict = {
            "machine": {
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "load_average": list(os.getloadavg()),
            },
            "load": measure_load({s: caches[s] for s in args.load_sizes}, pairs=args.pairs),
        }
        byol = build_view_transform(views=ViewsConfig(recipe="byol", size=224))
        ours_pairs = datasets.UnlabeledDataset(records=records, cache=caches[256], transform=byol)
        peer_pairs = ByolFolder(
            pre_resized_folder(records, work / "folder-256", size=256), size=224
        )
        report["pairs"] = measure(
            ours_pairs, peer_pairs, items=args.items, pairs=args.pairs,
            workers=args.workers,
        )  # fmt: skip
        augment = augmentation.default_augment(kind="classification", size=224)
        ours_cls = datasets.ClassificationDataset(
            records=records, cache=caches[224], findings=["Nodule"], augment=augment
        )
        peer_cls = TvFolder(pre_resized_folder(records, work / "folder-224", size=224), size=224)
        report["classification"] = measure(
            ours_cls, peer_cls, items=args.items, pairs=args.pairs,
            workers=args.workers,
        )  # fmt: skip

    print(
        f"loader throughput, {args.pairs} interleaved rounds, medians; per core = items per CPU "
        f"second of the loading process; {os.cpu_count()} CPUs, load average "
        f"{report['machine']['load_average'][0]:.2f}"
    )
    print(f"{'load (one image)':<22} {'store us':>9} {'PNG us':>9} {'store vs PNG':>13}")
    for size, r in report["load"].items():
        print(
            f"{f'{size} px':<22} {r['store_us_per_image']:9.1f} {r['png_us_per_image']:9.1f} "
            f"{r['store_vs_png']:12.1f}x"
        )
    for name, peer in (
        ("pairs", "256-px PNG folder + lightly BYOL (RGB float)"),
        ("classification", "224-px PNG folder + torchvision v2"),
    ):
        r = report[name]
        print(
            f"{name}: ours {r['ours_per_core']:.0f}/s per core "
            f"({r['ours_bytes_per_item'] / 1024:.0f} kB on the wire), "
            f"peer [{peer}] {r['peer_per_core']:.0f}/s per core "
            f"({r['peer_bytes_per_item'] / 1024:.0f} kB); ours {r['ours_vs_peer_cpu']:.2f}x "
            f"(wall {r['ours_vs_peer_wall']:.2f}x)"
        )
        for n, lr in r["loader"].items():
            print(f"  DataLoader {n} workers: ours {lr['ours']:.0f}/s, peer {lr['peer']:.0f}/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
