"""The BarlowTwins-CXR detector from the command line: abnormal-only VinDr manifest, the authors'
kind of split file, the protocol's flip-only augmentation, one training step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrkit import cli
from cxrkit.config import load
from cxrkit.data.cache import Cache
from cxrkit.data.records import read_manifest
from cxrkit.finetune.config import FinetuneConfig
from cxrkit.finetune.data import detection_records
from cxrkit.finetune.train import detection_dataset

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = REPO / "configs" / "barlowtwins_cxr"
TINY = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "trainer.max_epochs=1",
    "trainer.max_steps=1",
    "trainer.progress_bar=false",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.preprocess.size=64",
    "model.anchor_sizes=[8, 16, 32, 64, 128]",
    "model.rpn_pre_nms_train=50",
    "model.rpn_proposals_train=50",
    "model.rpn_proposals_test=25",
    "model.roi_batch_size=32",
    "optim.warmup_steps=1",
]


@pytest.fixture(scope="module")
def abnormal(tmp_path_factory) -> dict[str, Path]:
    """``cxrkit synth`` VinDr phantoms -> ``cxrkit prepare vindr --abnormal-only --split-from``."""
    root = tmp_path_factory.mktemp("protocol")
    synth = ["synth", "--out", str(root / "synth"), "--n", "20", "--size", "96"]
    assert cli.main([*synth, "--datasets", "vindr", "--abnormal-fraction", "0.6"]) == 0
    everything = root / "all.parquet"
    assert cli.main(["prepare", "vindr", "--root", str(root / "synth" / "vindr"),
                     "--out", str(everything)]) == 0  # fmt: skip
    with_boxes = sorted(r.image_id for r in read_manifest(everything) if r.boxes)
    # a COCO file as the authors wrote theirs (file_name = <image_id>.jpeg) and a plain id list
    coco = {"images": [{"id": k, "file_name": f"{i}.jpeg"} for k, i in enumerate(with_boxes[:3])]}
    (root / "valid_annotations.json").write_text(json.dumps(coco))
    (root / "test_ids.txt").write_text("\n".join(with_boxes[3:5]) + "\n")
    manifest = root / "abnormal.parquet"
    assert cli.main(["prepare", "vindr", "--root", str(root / "synth" / "vindr"),
                     "--out", str(manifest), "--abnormal-only",
                     "--split-from", f"val={root / 'valid_annotations.json'}",
                     "--split-from", f"test={root / 'test_ids.txt'}"]) == 0  # fmt: skip
    return {"root": root, "manifest": manifest, "all": everything}


def test_abnormal_only_manifest_follows_the_split_files(abnormal) -> None:
    records = read_manifest(abnormal["manifest"])
    everything = read_manifest(abnormal["all"])
    assert all(r.boxes for r in records)
    assert len(records) == sum(1 for r in everything if r.boxes) < len(everything)
    by_split: dict[str, list[str]] = {}
    for r in records:
        by_split.setdefault(r.split, []).append(r.image_id)
    with_boxes = sorted(r.image_id for r in records)
    assert sorted(by_split["val"]) == with_boxes[:3]
    assert sorted(by_split["test"]) == with_boxes[3:5]
    assert sorted(by_split["train"]) == with_boxes[5:]  # PhysioNet's official split replaced


def test_protocol_detector_trains_from_the_cli(abnormal, capsys) -> None:
    out = abnormal["root"] / "run"
    args = [
        "finetune",
        "--config", str(PROTOCOL / "detector.yaml"),
        "--config", str(PROTOCOL / "random.yaml"),
        "--resume", "never",
        f"output_dir={out}",
        f"data.manifest={abnormal['manifest']}",
        f"data.cache={abnormal['root'] / 'cache64'}",
        *TINY,
    ]  # fmt: skip
    assert cli.main(args) == 0
    assert "detector.pt" in capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["augment"]["transforms"] == ["hflip"]
    assert saved["negatives_fraction"] == 0.0 and saved["optim"]["min_lr"] == 1e-4
    assert (out / "detector.pt").is_file()


def test_the_protocol_augmentation_is_a_horizontal_flip_and_nothing_else(abnormal) -> None:
    config = load(
        FinetuneConfig,
        files=[PROTOCOL / "detector.yaml"],
        overrides=[f"data.manifest={abnormal['manifest']}", "data.preprocess.size=64"],
    )
    cache_dir = abnormal["root"] / "cache64"
    assert (cache_dir / "index.parquet").is_file()  # built by the CLI test
    train = [r for r in read_manifest(abnormal["manifest"]) if r.split == "train"]
    records = detection_records(train, config=config, train=True)
    plain = detection_dataset(records, cache=Cache(cache_dir), classes=config.classes, size=64)
    flipped = detection_dataset(
        records, cache=Cache(cache_dir), classes=config.classes, size=64, augment=config.augment
    )
    seen = set()
    for _ in range(12):  # all 12 draws alike: p = 2 ** -11 for a fair flip
        a, b = plain[0], flipped[0]
        image_a, image_b = a["image"].numpy(), b["image"].numpy()
        boxes_a, boxes_b = a["boxes"].numpy(), b["boxes"].numpy()
        if np.array_equal(image_a, image_b):
            seen.add("same")
            np.testing.assert_allclose(boxes_a, boxes_b)
        else:  # the mirror image, pixel for pixel, and its boxes mirrored
            seen.add("flipped")
            np.testing.assert_array_equal(image_b, image_a[..., ::-1])
            mirrored = boxes_a.copy()
            mirrored[:, [0, 2]] = 64 - boxes_a[:, [2, 0]]
            np.testing.assert_allclose(boxes_b, mirrored, atol=1e-4)
    assert seen == {"same", "flipped"}
