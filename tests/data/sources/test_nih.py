"""NIH ChestX-ray14 adapter on the real sample (117 images, real CSV rows) and the full metadata."""

from __future__ import annotations

import csv
import time
from collections import Counter

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from cxrkit import cli
from cxrkit.data.records import read_manifest
from cxrkit.data.sources import Issues, nih
from cxrkit.data.vocab import NIH, NIH_FINDINGS
from cxrkit.errors import DataError, ImageReadError, MissingFileError

SUBSET = "Data_Entry_2017_subset.csv"
BBOX = "BBox_List_2017_subset.csv"
HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


@pytest.fixture(scope="module")
def sample(shared_data):
    return {
        r.image_id: r
        for r in nih.load_nih(root=shared_data / "nih", data_entry=SUBSET, bbox_list=BBOX)
    }


def test_sample_counts_views_and_sizes(sample):
    assert len(sample) == 117
    assert Counter(r.view for r in sample.values()) == {"PA": 62, "AP": 55}
    assert len({r.patient_id for r in sample.values()}) == 106
    # width/height are the PNG on disk (1024), the CSV's original size goes into meta
    assert {(r.width, r.height) for r in sample.values()} == {(1024, 1024)}
    assert all(r.split == "unassigned" and r.source == "nih" for r in sample.values())


def test_sample_hand_checked_rows(sample):
    r = sample["00000032_037"]  # "Cardiomegaly|Edema|Infiltration,37,32,55,F,AP,2500,2048,..."
    positives = {f for f, v in r.labels.items() if v}
    assert positives == {"Cardiomegaly", "Edema", "Infiltration"}
    assert set(r.labels) == {*NIH_FINDINGS, "No Finding"}  # complete: 15 labels, each 0/1
    assert r.patient_id == "32" and r.view == "AP"
    assert r.meta["age"] == 55 and r.meta["sex"] == "F" and r.meta["follow_up"] == 37
    assert (r.meta["original_width"], r.meta["original_height"]) == (2500, 2048)
    assert r.meta["original_pixel_spacing"] == [0.168, 0.168]
    assert r.path.endswith("nih/images/00000032_037.png")

    r = sample["00000211_041"]
    assert {f for f, v in r.labels.items() if v} == {
        "Cardiomegaly",
        "Effusion",
        "Pleural_Thickening",
    }
    assert sample["00000072_000"].view == "PA"
    no_finding = [r for r in sample.values() if r.labels["No Finding"] == 1]
    assert all(sum(r.labels.values()) == 1 for r in no_finding)


def test_sample_boxes(sample):
    boxes = [b for r in sample.values() for b in r.boxes]
    assert len(boxes) == 115
    assert sum(len(r.boxes) > 0 for r in sample.values()) == 95
    assert sum(len(r.boxes) >= 2 for r in sample.values()) == 18
    # 14 "Infiltrate" rows in the box list become Infiltration, no other spelling survives
    assert Counter(b.finding for b in boxes)["Infiltration"] == 14
    assert {b.finding for b in boxes} <= set(NIH_FINDINGS)
    # line 2: 00000149_006.png,Atelectasis,603.661016949153,460.239555746822,249.49...,90.03...
    (box,) = sample["00000149_006"].boxes
    assert box.finding == "Atelectasis" and box.reader == ""
    assert box.xyxy == pytest.approx(
        (
            603.661016949153,
            460.239555746822,
            603.661016949153 + 249.491525423729,
            460.239555746822 + 90.0338983050847,
        )
    )
    # every box's finding is a positive label of its image
    assert all(r.labels[b.finding] == 1 for r in sample.values() for b in r.boxes)


def test_v2020_form_gives_same_labels_and_views(shared_data, sample):
    v2020 = nih.load_nih(
        root=shared_data / "nih", data_entry="Data_Entry_2017_v2020_subset.csv", bbox_list=BBOX
    )
    assert len(v2020) == 117
    for r in v2020:
        old = sample[r.image_id]
        assert (r.labels, r.view, r.patient_id, r.boxes) == (
            old.labels,
            old.view,
            old.patient_id,
            old.boxes,
        )
    ages = Counter(r.meta["age"] != sample[r.image_id].meta["age"] for r in v2020)
    assert ages[True] > 0  # the 2020 re-release corrected ages


def test_full_metadata_only_is_fast(shared_data):
    # CPU time, not wall time: the assertion is about this code, not about a busy test machine.
    start = time.process_time()
    records = nih.load_nih(
        root=shared_data / "nih" / "full",
        data_entry="Data_Entry_2017.csv.gz",
        metadata_only=True,
    )
    elapsed = time.process_time() - start
    assert len(records) == 112_120
    assert Counter(r.view for r in records) == {"PA": 67_310, "AP": 44_810}
    assert len({r.patient_id for r in records}) == 30_805
    assert sum(len(r.boxes) for r in records) == 984  # full/BBox_List_2017.csv found by default
    assert all(r.meta["size_assumed"] for r in records[:100])
    assert sum(r.labels["Hernia"] for r in records) == 227
    assert elapsed < 10, f"parsing the full Data_Entry took {elapsed:.1f} s"


@pytest.mark.slow  # ~6 s of CPU (the manifest write validates 112k records); the parse is above
def test_cli_full_metadata_only(shared_data, tmp_path, prepare):
    out = tmp_path / "full.parquet"
    code, stdout, err = prepare(
        "nih", "--root", shared_data / "nih" / "full", "--data-entry",
        "Data_Entry_2017.csv.gz", "--metadata-only", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "wrote 112120 records" in stdout and "PA 67310, AP 44810" in stdout
    table = pq.read_table(out, columns=["patient_id", "split", "view"]).to_pydict()
    assert len(table["patient_id"]) == 112_120
    assert Counter(table["view"]) == {"PA": 67_310, "AP": 44_810}
    seen = {}
    for patient, split in zip(table["patient_id"], table["split"], strict=True):
        assert seen.setdefault(patient, split) == split


def test_cli_sample_writes_manifest_with_patient_split(shared_data, tmp_path, prepare):
    out = tmp_path / "nih.parquet"
    code, stdout, err = prepare(
        "nih", "--root", shared_data / "nih", "--data-entry", SUBSET, "--bbox-list", BBOX,
        "--out", out, "--seed", "4",
    )  # fmt: skip
    assert code == 0, err
    assert "wrote 117 records (106 patients, 115 boxes)" in stdout
    records = read_manifest(out)
    assert Counter(r.view for r in records) == {"PA": 62, "AP": 55}
    for patient in ("211", "4344", "1529", "12094", "19750"):
        assert len({r.split for r in records if r.patient_id == patient}) == 1
    assert {r.split for r in records} == {"train", "val", "test"}
    assert not (tmp_path / "nih_errors.csv").exists()


def _tiny_png(path, size=64, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size, size), value, np.uint8))


def _write(path, lines):
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())  # NIH's CRLF line ends


def test_release_layout_nested_folders_and_scaled_boxes(tmp_path):
    # images_001/images/..., images_002/images/... as unpacked from NIH's archives; the PNGs are
    # 64 px here, so boxes given in 1024 space are scaled by 1/16.
    _tiny_png(tmp_path / "images_001" / "images" / "00000001_000.png")
    _tiny_png(tmp_path / "images_002" / "images" / "00000002_000.png")
    _write(
        tmp_path / "Data_Entry_2017.csv",
        [
            HEADER_2017,
            "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143",
            "00000002_000.png,No Finding,0,2,81,M,AP,2500,2048,0.171,0.171",
        ],
    )
    _write(
        tmp_path / "BBox_List_2017.csv",
        [BBOX_HEADER, "00000001_000.png,Cardiomegaly,160,320,512,480"],
    )
    records = {r.image_id: r for r in nih.load_nih(root=tmp_path)}
    assert records["00000001_000"].path == str(
        tmp_path / "images_001" / "images" / "00000001_000.png"
    )
    assert (records["00000001_000"].width, records["00000001_000"].height) == (64, 64)
    assert records["00000001_000"].boxes[0].xyxy == pytest.approx((10, 20, 42, 50))
    assert records["00000002_000"].labels["No Finding"] == 1
    assert records["00000002_000"].view == "AP"


def test_official_lists_are_used(tmp_path, prepare):
    _tiny_png(tmp_path / "images" / "00000001_000.png")
    rows = [HEADER_2017] + [
        f"{p:08d}_000.png,No Finding,0,{p},50,F,PA,2500,2048,0.1,0.1" for p in range(1, 11)
    ]
    _write(tmp_path / "Data_Entry_2017.csv", rows)
    (tmp_path / "train_val_list.txt").write_text(
        "\n".join(f"{p:08d}_000.png" for p in range(1, 9)) + "\n"
    )
    (tmp_path / "test_list.txt").write_text("00000009_000.png\n00000010_000.png\n")
    out = tmp_path / "m.parquet"
    code, stdout, err = prepare(
        "nih", "--root", tmp_path, "--metadata-only", "--val-fraction", "0.25", "--out", out
    )
    assert code == 0, err
    assert "official split: train_val_list.txt, test_list.txt" in stdout
    split = {r.image_id: r.split for r in read_manifest(out)}
    assert split["00000009_000"] == split["00000010_000"] == "test"
    assert Counter(split.values()) == {"train": 6, "val": 2, "test": 2}


def test_one_split_list_without_the_other_is_an_error(tmp_path):
    (tmp_path / "test_list.txt").write_text("a.png\n")
    with pytest.raises(MissingFileError, match="train_val_list.txt"):
        nih.find_split_lists(tmp_path)


def test_class_table_alias_and_unknown():
    assert NIH.canonical("Infiltrate", where="x") == "Infiltration"
    assert NIH.canonical("no finding", where="x") == "No Finding"
    with pytest.raises(DataError, match="f.csv:line 3: unknown NIH ChestX-ray14 class 'Lung'"):
        NIH.canonical("Lung", where="f.csv:line 3")


# ------------------------------------------------------------------------------- bad inputs
def _entry(tmp_path, rows, header=HEADER_2017):
    _tiny_png(tmp_path / "images" / "00000001_000.png")
    _tiny_png(tmp_path / "images" / "00000002_000.png")
    _write(tmp_path / "Data_Entry_2017.csv", [header, *rows])


GOOD_1 = "00000001_000.png,Effusion,0,1,58,M,PA,2682,2749,0.143,0.143"
GOOD_2 = "00000002_000.png,No Finding,0,2,81,M,AP,2500,2048,0.171,0.171"


def test_no_images_fails_with_hint(shared_data, tmp_path, prepare):
    code, _, err = prepare(
        "nih", "--root", shared_data / "nih" / "full", "--data-entry", "Data_Entry_2017.csv.gz",
        "--out", tmp_path / "m.parquet",
    )  # fmt: skip
    assert code == 1
    assert "no NIH images found" in err and "--metadata-only" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_class_names_file_and_line(tmp_path):
    _entry(tmp_path, [GOOD_1, "00000002_000.png,Effusion|Lung Cancer,0,2,81,M,AP,1,1,0.1,0.1"])
    with pytest.raises(DataError, match=r"Data_Entry_2017.csv:line 3: image 00000002_000.png: "
                       r"unknown NIH ChestX-ray14 class 'Lung Cancer'"):  # fmt: skip
        nih.load_nih(root=tmp_path)


def test_missing_column_is_named_and_present_ones_listed(tmp_path):
    header = HEADER_2017.replace("View Position", "Projection")
    _entry(tmp_path, [GOOD_1], header=header)
    with pytest.raises(DataError, match="missing column 'View Position'") as info:
        nih.load_nih(root=tmp_path)
    assert "Data_Entry_2017.csv" in str(info.value) and "'Projection'" in str(info.value)


def test_malformed_csv(tmp_path):
    _entry(tmp_path, [GOOD_1, GOOD_2 + ",extra,fields,here"])
    with pytest.raises(DataError, match="Data_Entry_2017.csv: malformed NIH Data_Entry CSV"):
        nih.load_nih(root=tmp_path)


def test_missing_data_entry(tmp_path):
    with pytest.raises(MissingFileError, match="looked for Data_Entry_2017_v2020.csv"):
        nih.load_nih(root=tmp_path)


def test_duplicate_row(tmp_path):
    _entry(tmp_path, [GOOD_1, GOOD_1])
    with pytest.raises(DataError, match="line 3: image '00000001_000.png' is listed twice"):
        nih.load_nih(root=tmp_path)


def test_listed_image_missing_then_skipped_and_reported(tmp_path, prepare):
    _entry(tmp_path, [GOOD_1, GOOD_2, "00000003_000.png,Mass,0,3,40,F,PA,1,1,0.1,0.1"])
    with pytest.raises(ImageReadError, match="line 4: image 00000003_000.png is listed but not"):
        nih.load_nih(root=tmp_path)
    out = tmp_path / "out" / "m.parquet"
    code, _, err = prepare("nih", "--root", tmp_path, "--out", out)
    assert code == 1 and "00000003_000.png" in err and "Traceback" not in err
    assert not out.exists()

    code, stdout, err = prepare("nih", "--root", tmp_path, "--out", out, "--on-error", "skip")
    assert code == 0, err
    assert "skipped 1 images" in stdout
    assert len(read_manifest(out)) == 2
    with open(tmp_path / "out" / "m_errors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == ["00000003_000"]
    assert "line 4" in rows[0]["reason"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("00000001_000.png,Effusion,900,100,200,50", "outside the 64x64 image"),
        ("00000001_000.png,Effusion,100,100,-20,50", "empty or inverted"),
        ("00000001_000.png,Tumour,100,100,20,50", "unknown NIH ChestX-ray14 class 'Tumour'"),
        ("00000009_000.png,Effusion,100,100,20,50", "'00000009_000.png' is not in the Data_Entry"),
        ("00000001_000.png,Effusion,abc,100,20,50", "column 'Bbox [x' = 'abc' is not a number"),
        ("00000002_000.png,Effusion,100,100,20,50", "Data_Entry does not list 'Effusion'"),
    ],
)
def test_bad_box_rows_name_file_and_line(tmp_path, row, message):
    _entry(tmp_path, [GOOD_1, GOOD_2])
    _write(tmp_path / "BBox_List_2017.csv", [BBOX_HEADER, "00000001_000.png,Effusion,1,1,2,2", row])
    with pytest.raises(DataError, match="BBox_List_2017.csv:line 3") as info:
        nih.load_nih(root=tmp_path)
    assert message in str(info.value)


def test_bad_box_skips_its_whole_image(tmp_path):
    _entry(tmp_path, [GOOD_1, GOOD_2])
    _write(
        tmp_path / "BBox_List_2017.csv",
        [BBOX_HEADER, "00000001_000.png,Effusion,1,1,2,2", "00000001_000.png,Effusion,1,1,-2,2"],
    )
    issues = Issues(on_error="skip")
    records = nih.load_nih(root=tmp_path, issues=issues)
    assert [r.image_id for r in records] == ["00000002_000"]
    assert [i.image_id for i in issues.items] == ["00000001_000"]


def test_help_shows_worked_example(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["prepare", "nih", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "cxrkit prepare nih --root" in text and "--metadata-only" in text
