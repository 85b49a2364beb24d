"""ChestX-Det adapter on the real annotation JSON (3,025 train / 553 test records, no images)."""

from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest

from cxrkit import cli
from cxrkit.data.records import read_manifest
from cxrkit.data.sources import Issues, chestxdet
from cxrkit.data.vocab import CHESTXDET_FINDINGS
from cxrkit.errors import DataError, ImageReadError, MissingFileError


@pytest.fixture(scope="module")
def real(shared_data):
    return chestxdet.load_chestxdet(root=shared_data / "chestx-det", metadata_only=True)


def shoelace(points) -> float:
    p = np.asarray(points, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_real_json_counts(real):
    split = Counter(r.split for r in real)
    assert split == {"train": 3025, "test": 553}
    assert sum(r.labels["No Finding"] for r in real) == 611  # 547 train + 64 test
    assert sum(len(r.boxes) for r in real) == 9639
    boxes = Counter(b.finding for r in real for b in r.boxes)
    assert set(boxes) == set(CHESTXDET_FINDINGS)  # all 13 classes, none dropped
    assert boxes["Consolidation"] == 2110 + 453 and boxes["Mass"] == 133 + 34
    assert all((r.width, r.height) == (1024, 1024) and r.meta["size_assumed"] for r in real)
    assert all(r.patient_id == r.image_id and r.view == "unknown" for r in real)
    assert all(r.mask_paths == {} for r in real)  # masks_dir=None: boxes only


def test_real_record_matches_json(shared_data, real):
    entries = json.loads((shared_data / "chestx-det" / "ChestX_Det_train.json").read_text())
    entry = next(e for e in entries if len(e["syms"]) >= 2)
    record = next(r for r in real if r.image_id == entry["file_name"][:-4])
    assert [b.finding for b in record.boxes] == entry["syms"]
    assert [list(b.xyxy) for b in record.boxes] == [list(map(float, b)) for b in entry["boxes"]]
    assert {f for f, v in record.labels.items() if v} == set(entry["syms"])
    assert record.labels["No Finding"] == 0 and len(record.labels) == 14


def _subset(shared_data, tmp_path, n=12, name="ChestX_Det_train.json"):
    """The first n real records with polygons, as a JSON file in tmp_path."""
    entries = json.loads((shared_data / "chestx-det" / name).read_text())
    chosen = [e for e in entries if e["polygons"]][:n]
    (tmp_path / name).write_text(json.dumps(chosen))
    return chosen


def test_masks_match_polygon_area(shared_data, tmp_path):
    chosen = _subset(shared_data, tmp_path)
    masks = tmp_path / "out" / "m_masks"
    records = chestxdet.load_chestxdet(root=tmp_path, masks_dir=masks, metadata_only=True)
    assert len(records) == len(chosen)
    checked = 0
    for entry, record in zip(chosen, records, strict=True):
        assert set(record.mask_paths) == set(entry["syms"])
        for finding, path in record.mask_paths.items():
            assert path == str(masks / chestxdet.mask_file_name(record.image_id, finding))
            mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            assert mask.shape == (1024, 1024) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            polygons = [p for s, p in zip(entry["syms"], entry["polygons"], strict=True)
                        if s == finding]  # fmt: skip
            if len(polygons) == 1 and shoelace(polygons[0]) > 5000:
                # rasterising adds about half a pixel along the outline: a few % on large areas
                area = np.count_nonzero(mask)
                assert area == pytest.approx(shoelace(polygons[0]), rel=0.05)
                checked += 1
    assert checked >= 3


def test_mask_file_names_are_filename_safe():
    assert chestxdet.mask_file_name("36204", "Pleural Thickening") == "36204.Pleural_Thickening.png"
    assert chestxdet.mask_file_name("1", "Nodule/Mass") == "1.Nodule_Mass.png"


def test_polygons_of_one_finding_are_united_without_holes():
    square_a = [[10, 10], [50, 10], [50, 50], [10, 50]]
    square_b = [[30, 30], [70, 30], [70, 70], [30, 70]]  # overlaps a in a 21x21 region
    mask = chestxdet.polygon_mask([square_a, square_b], width=100, height=100, scale=(1, 1))
    assert mask[40, 40] == 255  # inside both: must not be a hole (even-odd filling would be)
    assert np.count_nonzero(mask) == 41 * 41 * 2 - 21 * 21
    half = chestxdet.polygon_mask([square_a], width=50, height=50, scale=(0.5, 0.5))
    assert np.count_nonzero(half) == 21 * 21


def test_images_found_and_boxes_scaled(tmp_path):
    entries = [
        {
            "file_name": "1.png",
            "syms": ["Effusion"],
            "boxes": [[100, 200, 300, 400]],
            "polygons": [[[100, 200], [300, 200], [300, 400], [100, 400]]],
        },
        {"file_name": "2.png", "syms": [], "boxes": [], "polygons": []},
    ]
    (tmp_path / "ChestX_Det_test.json").write_text(json.dumps(entries))
    (tmp_path / "test").mkdir()
    cv2.imwrite(str(tmp_path / "test" / "1.png"), np.zeros((512, 512), np.uint8))
    cv2.imwrite(str(tmp_path / "2.png"), np.zeros((256, 256), np.uint8))  # flat layout
    views = tmp_path / "views.csv"
    views.write_text("file_name,view\n1.png,AP supine\n")
    records = chestxdet.load_chestxdet(root=tmp_path, masks_dir=tmp_path / "masks", views=views)
    one, two = records
    assert one.path == str(tmp_path / "test" / "1.png") and two.path == str(tmp_path / "2.png")
    assert (one.width, one.height, one.view, one.split) == (512, 512, "AP", "test")
    assert one.boxes[0].xyxy == (50, 100, 150, 200)  # 1024 space -> 512 pixels
    mask = cv2.imread(one.mask_paths["Effusion"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == (512, 512) and np.count_nonzero(mask) == 101 * 101
    assert two.labels["No Finding"] == 1 and two.mask_paths == {} and two.view == "unknown"


def test_cli_writes_masks_beside_manifest(shared_data, tmp_path, prepare):
    _subset(shared_data, tmp_path, n=5)
    _subset(shared_data, tmp_path, n=3, name="ChestX_Det_test.json")
    out = tmp_path / "out" / "cd.parquet"
    code, stdout, err = prepare("chestxdet", "--root", tmp_path, "--metadata-only", "--out", out)
    assert code == 0, err
    records = read_manifest(out)
    assert Counter(r.split for r in records)["test"] == 3
    paths = [p for r in records for p in r.mask_paths.values()]
    assert paths and all(p.startswith(str(tmp_path / "out" / "cd_masks")) for p in paths)
    assert len(list((tmp_path / "out" / "cd_masks").glob("*.png"))) == len(paths)


# ------------------------------------------------------------------------------- bad inputs
def _json(tmp_path, entries):
    (tmp_path / "ChestX_Det_train.json").write_text(json.dumps(entries))


GOOD = {"file_name": "1.png", "syms": ["Mass"], "boxes": [[1, 1, 9, 9]], "polygons": []}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**GOOD, "syms": ["Tumor"]}, "record 2 (2.png): unknown ChestX-Det class 'Tumor'"),
        ({**GOOD, "boxes": []}, "record 2 (2.png): 1 syms but 0 boxes"),
        ({**GOOD, "boxes": [[5, 5, 1, 9]]}, "empty or inverted"),
        ({**GOOD, "boxes": [[5, 5, 1025, 9]]}, "outside the 1024x1024 image"),
        ({**GOOD, "boxes": [[5, 5, 9]]}, "is not a list of 4 numbers"),
        ({**GOOD, "polygons": [[[1, 1], [2, 2]]]}, "polygon needs at least 3 points"),
        ({"syms": [], "boxes": []}, "record 2: missing key 'file_name'"),
    ],
)
def test_bad_records_name_file_and_record(tmp_path, entry, message):
    entry = {**entry, "file_name": "2.png"} if "file_name" in entry else entry
    _json(tmp_path, [GOOD, entry])
    with pytest.raises(DataError, match="ChestX_Det_train.json: record 2") as info:
        chestxdet.load_chestxdet(root=tmp_path, metadata_only=True)
    assert message in str(info.value)


def test_malformed_json(tmp_path):
    (tmp_path / "ChestX_Det_train.json").write_text('[{"file_name": "1.png",\n "syms": [}]')
    with pytest.raises(DataError, match="malformed JSON at line 2"):
        chestxdet.load_chestxdet(root=tmp_path, metadata_only=True)


def test_no_json(tmp_path):
    with pytest.raises(MissingFileError, match="ChestX_Det_train.json or ChestX_Det_test.json"):
        chestxdet.load_chestxdet(root=tmp_path)


def test_missing_images(tmp_path, prepare):
    _json(tmp_path, [GOOD, {**GOOD, "file_name": "2.png"}])
    with pytest.raises(MissingFileError, match="pass --metadata-only"):
        chestxdet.load_chestxdet(root=tmp_path)
    (tmp_path / "train").mkdir()
    cv2.imwrite(str(tmp_path / "train" / "1.png"), np.zeros((64, 64), np.uint8))
    with pytest.raises(ImageReadError, match="record 2: image 2.png is listed but not found"):
        chestxdet.load_chestxdet(root=tmp_path)
    issues = Issues(on_error="skip")
    (record,) = chestxdet.load_chestxdet(root=tmp_path, issues=issues)
    assert record.image_id == "1" and record.boxes[0].xyxy == (1 / 16, 1 / 16, 9 / 16, 9 / 16)
    assert [i.image_id for i in issues.items] == ["2"]
    code, _, err = prepare("chestxdet", "--root", tmp_path, "--out", tmp_path / "x.parquet")
    assert code == 1 and "Traceback" not in err and "2.png" in err


def test_help_shows_worked_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["prepare", "chestxdet", "--help"])
    assert "cxrkit prepare chestxdet --root" in capsys.readouterr().out
