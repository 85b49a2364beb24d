"""head_counts: how many records give each head a target, by the dataset's own rules."""

from __future__ import annotations

import torch

from cxrkit.config import load
from cxrkit.data.records import Box, Record
from cxrkit.multitask import Config
from cxrkit.multitask.dataset import head_counts

from .conftest import CONFIGS, Phantoms


def _record(i: int, **kw: object) -> Record:
    base = {"image_id": f"r{i}", "source": "s", "path": "p", "patient_id": str(i), "width": 8}
    return Record(height=8, **base, **kw)  # type: ignore[arg-type]


def test_counts_by_hand() -> None:
    config = load(
        Config,
        files=[CONFIGS / "tiny_guendel.yaml"],
        overrides=["findings=[Effusion, Nodule/Mass=Nodule|Mass]"],
    )
    records = [
        # labelled, both masks, a box
        _record(
            0,
            labels={"Effusion": 1},
            mask_paths={"lung": "l", "heart": "h"},
            boxes=[Box(finding="Effusion", x1=1, y1=1, x2=3, y2=3)],
        ),
        # labelled normal (an empty location target), lung only
        _record(1, labels={"Effusion": 0, "Nodule": 0, "No Finding": 1}, mask_paths={"lung": "l"}),
        # abnormal without boxes: no location target; only a member of the group is labelled
        _record(2, labels={"Mass": 1}),
        # no label for any finding
        _record(3, labels={"Cardiomegaly": 1}),
    ]
    counts = head_counts(config, records)
    assert counts == {
        "images": 4,
        "classification": 3,
        "segmentation": 2,
        "segmentation:lung": 2,
        "segmentation:heart": 1,
        "location": 2,
    }


def test_counts_match_the_dataset_targets(phantoms: Phantoms) -> None:
    from cxrkit.data.cache import Cache
    from cxrkit.multitask.train import build_dataset

    config = load(Config, files=[CONFIGS / "tiny_guendel.yaml"], overrides=phantoms.overrides("x"))
    train = [r for r in phantoms.records if r.split == "train"]
    dataset = build_dataset(config=config, records=train, cache=Cache(phantoms.cache))
    items = [dataset[i] for i in range(len(dataset))]
    counts = head_counts(config, train)
    assert counts["location"] == sum(float(it["regions_known"]) > 0 for it in items)
    organs = [dataset.base.masks.index(o) for o in config.segmentation.organs]
    known = torch.stack([it["mask_known"][organs] for it in items])
    assert counts["segmentation"] == int((known.amax(dim=1) > 0).sum())
    assert counts["classification"] == sum(float(it["label_known"].amax()) > 0 for it in items)
