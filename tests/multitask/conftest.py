"""A tiny synthetic-phantom dataset (64 px) with masks and boxes, cached once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit import synth
from cxrkit.config import PreprocessConfig
from cxrkit.data.records import Box, Record, write_manifest

SIZE = 64
NIH = list(synth.NIH_FINDING_NAMES)  # Consolidation, Pneumothorax, Nodule, Mass, ...
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "multitask"


@dataclass
class Phantoms:
    manifest: Path
    cache: Path
    records: list[Record]

    def overrides(self, output_dir: Path) -> list[str]:
        return [
            f"data.manifest={self.manifest}",
            f"data.cache={self.cache}",
            f"output_dir={output_dir}",
        ]


def _findings(rng: np.random.Generator, keys: tuple[str, ...]) -> list[str]:
    if rng.random() < 0.4:
        return []
    return list(rng.choice(list(keys), size=int(rng.integers(1, 3)), replace=False))


def make_phantoms(
    root: Path,
    *,
    n: int,
    seed: int = 0,
    masks_every: int = 2,
    keys: tuple[str, ...] = synth.FINDINGS,
    fractions: tuple[float, float] = (0.6, 0.2),
) -> list[Record]:
    """Render ``n`` phantoms with findings from ``keys``, the first ``fractions[0]`` for training,
    the next ``fractions[1]`` for validation, the rest for test; every ``masks_every``-th abnormal
    train image keeps its lesion masks."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        rng = np.random.default_rng((seed, i))
        view = "PA" if i % 2 else "AP"
        findings = _findings(rng, keys)
        ph = synth.render_phantom(rng=rng, size=SIZE, view=view, findings=findings)
        image_id = f"img{i:03d}"
        path = images / f"{image_id}.png"
        cv2.imwrite(str(path), ph.to_uint8())
        first, second = n * fractions[0], n * (fractions[0] + fractions[1])
        split = "train" if i < first else ("val" if i < second else "test")
        present = {ph.nih_names[k] for k in findings}
        labels = {name: int(name in present) for name in NIH}
        labels[synth.NIH_NO_FINDING] = int(not present)
        keep_lesion_masks = split != "train" or not findings or i % masks_every == 0
        mask_paths = {}
        for key, mask in ph.masks.items():
            name = ph.nih_names.get(key, key)  # lung, heart keep their names
            if key in ph.nih_names and not keep_lesion_masks:
                continue
            mpath = images / f"{image_id}.{name}.png"
            cv2.imwrite(str(mpath), mask.astype(np.uint8) * 255)
            mask_paths[name] = str(mpath)
        boxes = [
            Box(finding=ph.nih_names[k], x1=x1, y1=y1, x2=x2, y2=y2)
            for k, x1, y1, x2, y2 in ph.boxes
        ]
        records.append(
            Record(
                image_id=image_id,
                source="phantom",
                path=str(path),
                patient_id=f"p{i:03d}",
                width=SIZE,
                height=SIZE,
                view=view,
                split=split,
                labels=labels,
                boxes=boxes,
                mask_paths=mask_paths,
            )
        )
    return records


def build(
    root: Path,
    *,
    n: int,
    seed: int = 0,
    keys: tuple[str, ...] = synth.FINDINGS,
    fractions: tuple[float, float] = (0.6, 0.2),
) -> Phantoms:
    """Phantoms (see :func:`make_phantoms`), their manifest and a 64 px cache under ``root``."""
    from cxrkit.data.preprocess import build_cache

    records = make_phantoms(root, n=n, seed=seed, keys=keys, fractions=fractions)
    manifest = write_manifest(records, root / "manifest.parquet")
    recipe = PreprocessConfig(size=SIZE)
    build_cache(records=records, out_dir=root / "cache", recipe=recipe, workers=1, progress=False)
    return Phantoms(manifest=manifest, cache=root / "cache", records=records)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Phantoms:
    """40 phantoms: 24 train (half the abnormal ones without lesion masks), 8 val, 8 test."""
    return build(tmp_path_factory.mktemp("phantoms"), n=40)
