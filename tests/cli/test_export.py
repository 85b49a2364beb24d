"""`cxrkit export coco` -> detectron2-style predictions built from the ground truth ->
`cxrkit export predictions` -> `cxrkit eval detection` scores mAP 1.0."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit import cli
from cxrkit.config import PreprocessConfig
from cxrkit.data.cache import Cache
from cxrkit.data.fusion import fuse_boxes
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Box, Record, write_manifest
from cxrkit.finetune.config import VINDR_CLASSES

WIDTH, HEIGHT, SIZE = 256, 192, 128  # padded to 256 x 256 (pad_top 32), then halved
FINDINGS = ("Nodule/Mass", "Aortic enlargement")


@dataclass
class Toy:
    manifest: Path
    cache: Path
    records: list[Record]


def _lesion(i: int) -> tuple[int, int, int, int]:
    x1, y1 = 20 + 14 * (i % 8), 24 + 10 * (i % 6)
    side = 30 + 6 * (i % 3)
    return x1, y1, x1 + side, y1 + side


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Toy:
    root = tmp_path_factory.mktemp("export_toy")
    rng = np.random.default_rng(0)
    records = []
    for i in range(8):
        image = rng.normal(70, 6, (HEIGHT, WIDTH)).clip(0, 255).astype(np.uint8)
        boxes = []
        if i % 4 != 3:  # every fourth image is "No finding"
            x1, y1, x2, y2 = _lesion(i)
            image[y1:y2, x1:x2] = 230
            for reader, jitter in (("R8", 0), ("R9", 3), ("R10", -2)):
                boxes.append(
                    Box(
                        finding=FINDINGS[i % 2],
                        x1=x1 + jitter,
                        y1=y1,
                        x2=x2 + jitter,
                        y2=y2 - jitter,
                        reader=reader,
                    )
                )
        path = root / "images" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)
        records.append(
            Record(
                image_id=f"img{i}",
                source="toy",
                path=str(path),
                patient_id=f"p{i}",
                width=WIDTH,
                height=HEIGHT,
                view="PA",
                split="val" if i < 6 else "train",
                boxes=boxes,
            )
        )
    manifest = write_manifest(records, root / "toy.parquet")
    build_cache(
        records=records, out_dir=root / "cache", recipe=PreprocessConfig(size=SIZE), progress=False
    )
    return Toy(manifest=manifest, cache=root / "cache", records=records)


def _export(toy: Toy, out: Path) -> dict:
    argv = ["export", "coco", "--manifest", str(toy.manifest), "--cache", str(toy.cache)]
    assert cli.main([*argv, "--split", "val", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_coco_file_is_the_fused_boxes_in_cache_pixels(toy, tmp_path):
    coco = _export(toy, tmp_path / "val.json")
    # categories: the detector config's classes (default: the 14 VinDr classes) in order
    assert [c["name"] for c in coco["categories"]] == list(VINDR_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 15))
    assert coco["info"]["coordinates"] == "cache pixels"
    val = [r for r in toy.records if r.split == "val"]
    assert [e["cxrkit_image_id"] for e in coco["images"]] == [r.image_id for r in val]
    cache = Cache(coco["info"]["image_root"])
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for entry, record in zip(coco["images"], val, strict=True):
        assert (entry["width"], entry["height"]) == (SIZE, SIZE)
        # the geometry by hand: 256 x 192 padded by 32 rows on top, then halved
        assert (entry["pad_left"], entry["pad_top"]) == (0, 32)
        assert (entry["scale_x"], entry["scale_y"]) == (0.5, 0.5)
        assert (Path(coco["info"]["image_root"]) / entry["file_name"]).is_file()
        assert cache.load(record.image_id).shape == (SIZE, SIZE)
        fused = fuse_boxes(record.boxes, width=WIDTH, height=HEIGHT, method="wbf")
        got = by_image.get(entry["id"], [])
        assert len(got) == len(fused) == (1 if record.boxes else 0)
        for a, box in zip(got, fused, strict=True):
            x, y, w, h = a["bbox"]
            expected = [box.x1 / 2, (box.y1 + 32) / 2, (box.x2 - box.x1) / 2, (box.y2 - box.y1) / 2]
            np.testing.assert_allclose([x, y, w, h], expected, atol=1e-4)
            assert coco["categories"][a["category_id"] - 1]["name"] == box.finding
            assert a["area"] == pytest.approx(w * h)


def _eval_map50(toy: Toy, predictions: Path, out: Path) -> float:
    argv = ["eval", "detection", "--predictions", str(predictions), "--manifest", str(toy.manifest)]
    argv += ["--split", "val", "--gt-reader", "fused", "--n-bootstrap", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    return report["mean"]["map50"]["value"]


def test_round_trip_through_detectron2_predictions_scores_map_1(toy, tmp_path, capsys):
    coco = _export(toy, tmp_path / "val.json")
    by_image: dict[int, list[dict]] = {e["id"]: [] for e in coco["images"]}
    for a in coco["annotations"]:
        # what detectron2's COCOEvaluator stores: contiguous category ids 0..K-1, XYWH boxes
        instance = {"image_id": a["image_id"], "category_id": a["category_id"] - 1}
        by_image[a["image_id"]].append({**instance, "bbox": a["bbox"], "score": 0.9})
    d2 = [{"image_id": i, "instances": inst} for i, inst in by_image.items()]
    torch.save(d2, tmp_path / "instances_predictions.pth")
    out = tmp_path / "boxes.csv"
    argv = ["export", "predictions", "--results", str(tmp_path / "instances_predictions.pth")]
    assert cli.main([*argv, "--coco", str(tmp_path / "val.json"), "--out", str(out)]) == 0
    assert "boxes in original pixels" in capsys.readouterr().out
    assert _eval_map50(toy, out, tmp_path / "report_d2") == pytest.approx(1.0)

    # the same detections as a COCO results JSON (dataset category ids) give the same file
    results = [{**r, "category_id": r["category_id"] + 1} for p in d2 for r in p["instances"]]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out_json = tmp_path / "boxes_json.csv"
    argv = ["export", "predictions", "--results", str(tmp_path / "results.json")]
    assert cli.main([*argv, "--coco", str(tmp_path / "val.json"), "--out", str(out_json)]) == 0
    assert out_json.read_text() == out.read_text()


def test_category_ids_are_read_in_the_format_given(toy, tmp_path):
    # COCO ids (1..K) stored as if they were detectron2's contiguous ones (0..K-1) name the next
    # class: the converter really maps ids per format rather than passing them through
    coco = _export(toy, tmp_path / "val.json")
    instances = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in coco["annotations"]
    ]
    torch.save([{"image_id": 1, "instances": instances}], tmp_path / "shifted.pth")
    out = tmp_path / "boxes.csv"
    argv = ["export", "predictions", "--results", str(tmp_path / "shifted.pth")]
    assert cli.main([*argv, "--coco", str(tmp_path / "val.json"), "--out", str(out)]) == 0
    found = set(pd.read_csv(out)["finding"])
    names = list(VINDR_CLASSES)
    assert found == {names[names.index(f) + 1] for f in FINDINGS}


def test_errors_are_one_line(toy, tmp_path, capsys):
    argv = ["export", "coco", "--manifest", str(toy.manifest), "--cache", str(tmp_path / "none")]
    assert cli.main([*argv, "--split", "val", "--out", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert "not a finished cache" in err and "Traceback" not in err
    argv = ["export", "predictions", "--results", str(tmp_path / "missing.pth")]
    assert cli.main([*argv, "--coco", str(tmp_path / "x.json"), "--out", "o.csv"]) == 1
    assert "not found" in capsys.readouterr().err
