"""A tiny VinDr-like dataset for the detector tests: non-square PNGs with bright square lesions
boxed by three readers, "No finding" images, AP and PA views, train/val/test splits, and its
128-pixel cache built by the real preprocessing step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxrkit.config import PreprocessConfig
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Box, Record, write_manifest

WIDTH, HEIGHT, SIZE = 256, 192, 128  # padded to 256 x 256 (pad_top 32), then halved
SPLITS = ["train"] * 8 + ["val"] * 4 + ["test"] * 2


@dataclass
class ToyData:
    manifest: Path
    cache: Path
    records: list[Record]
    recipe: PreprocessConfig


def lesion_box(i: int) -> tuple[int, int, int, int]:
    """An even-aligned square, so its edges fall on whole cache pixels."""
    x1, y1 = 16 + 16 * (i % 8), 20 + 12 * (i % 6)
    side = 32 + 8 * (i % 3)
    return x1, y1, x1 + side, y1 + side


def make_toy(root: Path) -> ToyData:
    rng = np.random.default_rng(0)
    records = []
    for i, split in enumerate(SPLITS):
        image = rng.normal(70, 6, (HEIGHT, WIDTH)).clip(0, 255).astype(np.uint8)
        image[:, :8] = 0  # a dark border keeps the percentile window stable
        boxes = []
        if i % 4 != 3:  # every fourth image is "No finding"
            x1, y1, x2, y2 = lesion_box(i)
            image[y1:y2, x1:x2] = 230
            for reader, jitter in (("R8", 0), ("R9", 2), ("R10", -2)):
                boxes.append(
                    Box(
                        finding="Nodule/Mass",
                        x1=x1 + jitter + 2,
                        y1=y1,
                        x2=x2 + jitter - 2,
                        y2=y2,
                        reader=reader,
                    )
                )
        path = root / "images" / f"toy{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        records.append(
            Record(
                image_id=f"toy{i:02d}",
                source="toy",
                path=str(path),
                patient_id=f"p{i // 2}",
                width=WIDTH,
                height=HEIGHT,
                view="AP" if i % 2 else "PA",
                split=split,
                labels={"Nodule/Mass": int(bool(boxes))},
                boxes=boxes,
            )
        )
    manifest = write_manifest(records, root / "toy.parquet")
    recipe = PreprocessConfig(size=SIZE)
    build_cache(records=records, out_dir=root / "cache", recipe=recipe, progress=False)
    return ToyData(manifest=manifest, cache=root / "cache", records=records, recipe=recipe)


def tiny_overrides(toy: ToyData, out: Path) -> list[str]:
    """key=value overrides pointing configs/finetune/tiny_faster_rcnn.yaml at the toy data."""
    return [
        f"output_dir={out}",
        f"data.manifest={toy.manifest}",
        f"data.cache={toy.cache}",
        "classes=[Nodule/Mass]",
    ]
