"""Training-loader throughput: the preprocessed cache against decoding the original PNGs.

Both pipelines feed the same DataLoader (random sampling with replacement, same batch size, same
albumentations augmentation at the same output size) for 0, 1 and 2 workers, measured in one run
on the same synthetic 1024 x 1024 chest-X-ray-like PNGs:

* cache:    ``ClassificationDataset`` over a cache built once at ``--size`` px by
            ``cxrkit.data.preprocess.build_cache`` (its one-time cost is printed too);
* baseline: a Dataset that opens each original PNG with PIL and resizes it to ``--size`` px in
            the loop, then applies the same augmentation.

Example (about a minute on a 2-core laptop):

    python benchmarks/loader_throughput.py
    python benchmarks/loader_throughput.py --workers 0 2 4 8 --images 256 --items 2048
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network at run time

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

from cxrkit.config import PreprocessConfig  # noqa: E402
from cxrkit.data import (
    augmentation,
    datasets,  # noqa: E402
)
from cxrkit.data.cache import Cache  # noqa: E402
from cxrkit.data.preprocess import build_cache  # noqa: E402
from cxrkit.data.records import Record  # noqa: E402


def make_originals(out: Path, *, n: int, side: int, seed: int = 0) -> list[Record]:
    """Smooth chest-like PNGs (two dark lungs, mild noise): they compress like real radiographs,
    which matters because PNG decoding is most of the baseline's cost."""
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


class PngResizeDataset(Dataset):
    """The baseline: decode the original with PIL and resize it every time an item is read."""

    def __init__(self, records: list[Record], *, size: int, augment) -> None:
        self.paths = [r.path for r in records]
        self.size = size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        with Image.open(self.paths[index]) as im:
            image = np.asarray(im.convert("L").resize((self.size, self.size), Image.BILINEAR))
        image = self.augment(image=image, bboxes=np.zeros((0, 4)), box_labels=np.zeros(0))["image"]
        scaled = np.multiply(image, np.float32(1 / 255), dtype=np.float32)  # as the datasets do
        return {"image": torch.from_numpy(scaled)[None]}


def images_per_second(dataset: Dataset, *, workers: int, items: int, batch_size: int) -> float:
    """Steady-state rate: the clock starts when the first batch arrives, so worker start-up (a
    one-off per epoch) does not count against either pipeline."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=items)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=datasets.collate,
    )
    batches = iter(loader)
    next(batches)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch["image"])
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=48, help="original PNGs to generate")
    parser.add_argument("--orig-size", type=int, default=1024, help="side of the originals")
    parser.add_argument("--size", type=int, default=224, help="training / cache side")
    parser.add_argument("--items", type=int, default=448, help="images loaded per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, help="keep originals and cache here")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of this process (default 1, as in DataLoader workers)",
    )
    args = parser.parse_args()
    # With num_workers=0 the main process converts and stacks the batch; torch's intra-op thread
    # pool turns a 2 ms stack into tens of ms on a busy CPU, which would measure the machine's
    # load rather than the pipelines. Workers always run torch with one thread.
    torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        records = make_originals(work / "originals", n=args.images, side=args.orig_size)
        summary = build_cache(
            records=records,
            out_dir=work / f"cache-{args.size}",
            recipe=PreprocessConfig(size=args.size),
            workers=min(2, os.cpu_count() or 1),
            progress=False,
        )
        cache = Cache(work / f"cache-{args.size}")
        augment = augmentation.default_augment(kind="classification", size=args.size)
        cached = datasets.ClassificationDataset(
            records=records, cache=cache, findings=["Nodule"], augment=augment
        )
        baseline = PngResizeDataset(records, size=args.size, augment=augment)

        print(
            f"loader throughput: {args.images} originals {args.orig_size}x{args.orig_size} PNG, "
            f"{args.size} px, batch {args.batch_size}, {args.items} images per run, "
            f"classification augmentation; {os.cpu_count()} CPUs, {args.torch_threads} torch "
            f"thread(s) in the main process, torch {torch.__version__}, "
            f"{platform.python_implementation()} {platform.python_version()}"
        )
        print(
            f"one-time cache build: {summary.done} images in {summary.seconds:.1f} s "
            f"({summary.images_per_second:.0f} images/s)"
        )
        print(f"{'workers':>7} | {'cache img/s':>11} | {'PIL+resize img/s':>16} | {'ratio':>6}")
        print(f"{'-' * 7}-+-{'-' * 11}-+-{'-' * 16}-+-{'-' * 6}")
        for workers in args.workers:
            kw = {"workers": workers, "items": args.items, "batch_size": args.batch_size}
            fast = images_per_second(cached, **kw)
            slow = images_per_second(baseline, **kw)
            print(f"{workers:>7} | {fast:>11.0f} | {slow:>16.0f} | {fast / slow:>5.1f}x")


if __name__ == "__main__":
    main()
