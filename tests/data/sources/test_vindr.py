"""VinDr-CXR adapter: hand-written CSVs in both real layouts (PhysioNet, Kaggle), tiny DICOMs
written with pydicom, and the real NIH boxes converted to the VinBigData format. VinDr itself is
not redistributable, so it is not used here."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrkit import cli
from cxrkit.data.records import read_manifest
from cxrkit.data.sources import Issues, vindr
from cxrkit.data.vocab import VINDR, VINDR_GLOBAL, VINDR_KAGGLE_IDS, VINDR_LOCAL
from cxrkit.errors import DataError, ImageReadError, MissingFileError

LABELS_28 = [*VINDR_LOCAL, *VINDR_GLOBAL]
ANN_HEADER = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
KAGGLE_HEADER = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]


def write_dicom(path: Path, *, rows: int, columns: int, view: str | None, patient_id: str = ""):
    """A small valid DX DICOM (12-bit in 16, uncompressed) with the tags the adapter reads."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = patient_id  # VinDr's are de-identified: empty
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PixelData = np.zeros((rows, columns), np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def label_row(image_id, reader, positives, *, columns=LABELS_28):
    row = [image_id] + ([reader] if reader is not None else [])
    return row + [int(c in positives) for c in columns]


@pytest.fixture
def physionet(tmp_path) -> Path:
    """Two training images read by three radiologists, one test image (consensus, no rad_id)."""
    root = tmp_path / "vindr-cxr" / "1.0.0"
    write_dicom(root / "train" / "aaa.dicom", rows=48, columns=64, view="PA")
    write_dicom(root / "train" / "bbb.dicom", rows=40, columns=40, view="AP", patient_id="P42")
    write_dicom(root / "test" / "ccc.dicom", rows=32, columns=32, view=None)
    write_csv(
        root / "annotations" / "annotations_train.csv",
        ANN_HEADER,
        [
            ["aaa", "R1", "Nodule/Mass", 10, 10, 20, 20],
            ["aaa", "R2", "Nodule/Mass", 11.5, 9, 21, 19.25],
            ["aaa", "R3", "No finding", "", "", "", ""],
            ["aaa", "R2", "Aortic enlargement", 30, 5, 40, 15],
            ["bbb", "R1", "No finding", "", "", "", ""],
            ["bbb", "R2", "No finding", "", "", "", ""],
            ["bbb", "R3", "No finding", "", "", "", ""],
        ],
    )
    write_csv(
        root / "annotations" / "image_labels_train.csv",
        ["image_id", "rad_ID", *LABELS_28],
        [
            label_row("aaa", "R1", {"Nodule/Mass", "Lung tumor"}),
            label_row("aaa", "R2", {"Nodule/Mass", "Aortic enlargement"}),
            label_row("aaa", "R3", {"No finding"}),
            *(label_row("bbb", r, {"No finding"}) for r in ("R1", "R2", "R3")),
        ],
    )
    write_csv(
        root / "annotations" / "annotations_test.csv",
        ANN_HEADER[:1] + ANN_HEADER[2:],
        [["ccc", "Pleural effusion", 1, 2, 30, 31]],
    )
    test_columns = [c if c != "Other diseases" else "Other disease" for c in LABELS_28]
    write_csv(
        root / "annotations" / "image_labels_test.csv",
        ["image_id", *test_columns],
        [label_row("ccc", None, {"Pleural effusion", "Other disease"}, columns=test_columns)],
    )
    return root


def test_physionet_layout(physionet):
    records, official = vindr.load_vindr(root=physionet)
    assert official
    by_id = {r.image_id: r for r in records}
    assert set(by_id) == {"aaa", "bbb", "ccc"}
    a, b, c = by_id["aaa"], by_id["bbb"], by_id["ccc"]
    # every reader's box is kept, with its reader
    assert [(x.finding, x.reader, x.xyxy) for x in a.boxes] == [
        ("Nodule/Mass", "R1", (10, 10, 20, 20)),
        ("Nodule/Mass", "R2", (11.5, 9, 21, 19.25)),
        ("Aortic enlargement", "R2", (30, 5, 40, 15)),
    ]
    # a finding is 1 if any reader marked it; all 28 classes are stated
    assert set(a.labels) == set(LABELS_28)
    assert {f for f, v in a.labels.items() if v} == {
        "Nodule/Mass",
        "Aortic enlargement",
        "Lung tumor",
        "No finding",
    }
    assert a.meta["votes"] == {
        "Aortic enlargement": 1,
        "Lung tumor": 1,
        "No finding": 1,
        "Nodule/Mass": 2,
    }
    assert a.meta["readers"] == ["R1", "R2", "R3"]
    # header: size, view, patient (empty PatientID -> image_id)
    assert (a.width, a.height, a.view, a.patient_id) == (64, 48, "PA", "aaa")
    assert a.meta["patient_id_from"] == "image_id"
    assert (b.width, b.height, b.view, b.patient_id) == (40, 40, "AP", "P42")
    assert b.meta["pixel_spacing"] == [0.15, 0.15]
    assert {f for f, v in b.labels.items() if v} == {"No finding"} and b.boxes == []
    # test split: consensus without rad_id; "Other disease" is the test file's spelling
    assert c.split == "test" and a.split == b.split == "train"
    assert c.view == "unknown"
    assert [(x.finding, x.reader) for x in c.boxes] == [("Pleural effusion", "")]
    assert c.labels["Other diseases"] == 1 and c.labels["Pleural effusion"] == 1
    assert c.path.endswith("test/ccc.dicom")


def test_physionet_cli_carves_val_from_train(physionet, tmp_path, prepare):
    out = tmp_path / "v.parquet"
    code, stdout, err = prepare("vindr", "--root", physionet, "--out", out, "--val-fraction", "0.5")
    assert code == 0, err
    splits = {r.image_id: r.split for r in read_manifest(out)}
    assert splits["ccc"] == "test"
    assert sorted([splits["aaa"], splits["bbb"]]) == ["train", "val"]
    assert "wrote 3 records (3 patients, 4 boxes)" in stdout


def test_csvs_directly_in_root_and_labels_only(tmp_path):
    write_dicom(tmp_path / "train" / "x1.dicom", rows=16, columns=16, view="PA")
    write_csv(
        tmp_path / "image_labels_train.csv",
        ["image_id", "rad_id", "COPD", "No finding"],
        [["x1", "R4", 1, 0], ["x1", "R5", 0, 0]],
    )
    (record,), official = vindr.load_vindr(root=tmp_path)
    assert official and record.labels == {"COPD": 1, "No finding": 0}  # only stated columns
    assert record.meta["votes"] == {"COPD": 1}


@pytest.fixture
def kaggle(tmp_path) -> Path:
    root = tmp_path / "vinbigdata"
    write_dicom(root / "train" / "k1.dicom", rows=64, columns=64, view="PA")
    write_dicom(root / "train" / "k2.dicom", rows=64, columns=64, view="PA")
    write_csv(
        root / "train.csv",
        KAGGLE_HEADER,
        [
            ["k1", "Nodule/Mass", 8, "R11", 5, 5, 15, 15],
            ["k1", "Nodule/Mass", 8, "R12", 6, 5, 15, 16],
            ["k1", "Pleural effusion", 10, "R13", 40, 40, 63, 63],
            ["k2", "No finding", 14, "R11", "", "", "", ""],
            ["k2", "No finding", 14, "R12", "", "", "", ""],
            ["k2", "No finding", 14, "R13", "", "", "", ""],
        ],
    )
    return root


def test_kaggle_layout(kaggle):
    records, official = vindr.load_vindr(root=kaggle)
    assert not official
    by_id = {r.image_id: r for r in records}
    k1, k2 = by_id["k1"], by_id["k2"]
    assert [(b.finding, b.reader) for b in k1.boxes] == [
        ("Nodule/Mass", "R11"),
        ("Nodule/Mass", "R12"),
        ("Pleural effusion", "R13"),
    ]
    assert set(k1.labels) == set(VINDR_KAGGLE_IDS.values())  # 14 classes + No finding
    assert {f for f, v in k1.labels.items() if v} == {"Nodule/Mass", "Pleural effusion"}
    assert {f for f, v in k2.labels.items() if v} == {"No finding"}
    assert k2.meta["votes"] == {"No finding": 3}
    assert {r.split for r in records} == {"unassigned"}


def test_kaggle_cli_assigns_fractions(kaggle, tmp_path, prepare):
    out = tmp_path / "k.parquet"
    code, _, err = prepare(
        "vindr", "--root", kaggle, "--out", out, "--split-fractions", "0.5,0,0.5"
    )
    assert code == 0, err
    assert sorted(r.split for r in read_manifest(out)) == ["test", "train"]


NIH_TO_VINBIG = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural effusion",
    "Infiltrate": "Infiltration",
    "Mass": "Nodule/Mass",
    "Nodule": "Nodule/Mass",
    "Pneumothorax": "Pneumothorax",
    "Pneumonia": "Lung Opacity",
}


def test_real_nih_boxes_in_vinbigdata_format(shared_data, tmp_path):
    """The 115 real NIH boxes written as a Kaggle train.csv over the real NIH PNGs: every box is
    kept with its coordinates, class and reader, and the 22 box-less images become No finding."""
    nih_dir = shared_data / "nih"
    with open(nih_dir / "BBox_List_2017_subset.csv", newline="") as f:
        nih_rows = list(csv.reader(f))[1:]
    names = {v: k for k, v in VINDR_KAGGLE_IDS.items()}
    rows, expected = [], Counter()
    for k, (name, finding, x, y, w, h, *_) in enumerate(nih_rows):
        cls = NIH_TO_VINBIG[finding]
        x, y, w, h = map(float, (x, y, w, h))
        rows.append([name[:-4], cls, names[cls], f"R{k % 3 + 1}", x, y, x + w, y + h])
        expected[(name[:-4], cls, round(x, 6), round(y + h, 6))] += 1
    boxed = {r[0] for r in rows}
    all_images = sorted(p.stem for p in (nih_dir / "images").glob("*.png"))
    rows += [[i, "No finding", 14, "R1", "", "", "", ""] for i in all_images if i not in boxed]
    root = tmp_path / "vinbig"
    write_csv(root / "train.csv", KAGGLE_HEADER, rows)
    (root / "train").mkdir()
    for image_id in all_images:
        (root / "train" / f"{image_id}.png").symlink_to(nih_dir / "images" / f"{image_id}.png")

    records, _ = vindr.load_vindr(root=root, layout="kaggle")
    assert len(records) == 117
    got = Counter(
        (r.image_id, b.finding, round(b.x1, 6), round(b.y2, 6)) for r in records for b in r.boxes
    )
    assert got == expected and sum(got.values()) == 115
    assert {b.reader for r in records for b in r.boxes} == {"R1", "R2", "R3"}
    assert sum(r.labels["No finding"] for r in records) == 22
    assert all(r.view == "unknown" and (r.width, r.height) == (1024, 1024) for r in records)


def test_class_tables():
    assert VINDR.canonical("Other disease", where="x") == "Other diseases"
    assert VINDR.canonical("nodule/mass", where="x") == "Nodule/Mass"
    assert len(VINDR_LOCAL) == 22 and len(VINDR_GLOBAL) == 6
    assert VINDR_KAGGLE_IDS[8] == "Nodule/Mass" and VINDR_KAGGLE_IDS[14] == "No finding"
    with pytest.raises(DataError, match="unknown VinDr-CXR class 'Nodule Mass'"):
        VINDR.canonical("Nodule Mass", where="x")


# ------------------------------------------------------------------------------- bad inputs
def _one_image(tmp_path, rows, header=ANN_HEADER):
    write_dicom(tmp_path / "train" / "aaa.dicom", rows=48, columns=64, view="PA")
    return write_csv(tmp_path / "annotations" / "annotations_train.csv", header, rows)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["aaa", "R1", "Lung nodule", 1, 1, 5, 5], "unknown VinDr-CXR class 'Lung nodule'"),
        (["aaa", "R1", "Nodule/Mass", 1, 1, 65, 5], "outside the 64x48 image"),
        (["aaa", "R1", "Nodule/Mass", 20, 1, 10, 5], "empty or inverted"),
        (["aaa", "R1", "Nodule/Mass", "", "", "", ""], "'Nodule/Mass' has no box coordinates"),
        (["aaa", "R1", "Nodule/Mass", 1, 1, "", 5], "some of x_min"),
        (["aaa", "R1", "No finding", 1, 1, 5, 5], "image-level label but the row has a box"),
        (["aaa", "R1", "Nodule/Mass", 1, "one", 5, 5], "column 'y_min' = 'one' is not a number"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    _one_image(tmp_path, [["aaa", "R1", "Atelectasis", 1, 1, 5, 5], row])
    with pytest.raises(DataError, match="annotations_train.csv:line 3: image aaa") as info:
        vindr.load_vindr(root=tmp_path)
    assert message in str(info.value)


def test_missing_column_lists_present_ones(tmp_path):
    header = ["image_id", "rad_id", "label", "x_min", "y_min", "x_max", "y_max"]
    _one_image(tmp_path, [["aaa", "R1", "Atelectasis", 1, 1, 5, 5]], header=header)
    with pytest.raises(DataError, match="annotations_train.csv: missing column 'class_name'") as e:
        vindr.load_vindr(root=tmp_path)
    assert "'label'" in str(e.value)


def test_kaggle_class_id_must_match_name(kaggle):
    with open(kaggle / "train.csv", "a", newline="") as f:
        csv.writer(f).writerow(["k2", "Cardiomegaly", 8, "R9", 1, 1, 5, 5])
    with pytest.raises(DataError, match="line 8: image k2: class_id 8 is 'Nodule/Mass'"):
        vindr.load_vindr(root=kaggle)


def test_image_label_value_must_be_0_or_1(tmp_path):
    write_dicom(tmp_path / "train" / "x1.dicom", rows=16, columns=16, view="PA")
    write_csv(
        tmp_path / "image_labels_train.csv", ["image_id", "rad_id", "COPD"], [["x1", "R1", 2]]
    )
    with pytest.raises(DataError, match="image_labels_train.csv:line 2: image x1: column 'COPD'"):
        vindr.load_vindr(root=tmp_path)


def test_unknown_label_column(tmp_path):
    write_csv(
        tmp_path / "image_labels_train.csv", ["image_id", "rad_id", "Asthma"], [["x", "R", 1]]
    )
    with pytest.raises(DataError, match="column 'Asthma': unknown VinDr-CXR class 'Asthma'"):
        vindr.load_vindr(root=tmp_path)


def test_image_in_train_and_test(tmp_path):
    write_dicom(tmp_path / "train" / "x1.dicom", rows=16, columns=16, view="PA")
    for split in ("train", "test"):
        write_csv(tmp_path / f"image_labels_{split}.csv", ["image_id", "COPD"], [["x1", 0]])
    with pytest.raises(DataError, match="image x1 is in both the train and the test files"):
        vindr.load_vindr(root=tmp_path)


def test_missing_image_error_then_skip(physionet, tmp_path, prepare):
    (physionet / "train" / "bbb.dicom").unlink()
    with pytest.raises(ImageReadError, match="image bbb is listed but .*train/bbb.dicom"):
        vindr.load_vindr(root=physionet)
    issues = Issues(on_error="skip")
    records, _ = vindr.load_vindr(root=physionet, issues=issues)
    assert sorted(r.image_id for r in records) == ["aaa", "ccc"]
    out = tmp_path / "v.parquet"
    code, stdout, err = prepare("vindr", "--root", physionet, "--out", out)
    assert code == 1 and "bbb" in err and "Traceback" not in err
    code, stdout, err = prepare("vindr", "--root", physionet, "--out", out, "--on-error", "skip")
    assert code == 0, err
    assert "skipped 1 images" in stdout
    assert "bbb" in (tmp_path / "v_errors.csv").read_text()


def test_bad_box_skips_the_image(tmp_path):
    _one_image(tmp_path, [["aaa", "R1", "Nodule/Mass", 1, 1, 500, 5]])
    write_dicom(tmp_path / "train" / "bbb.dicom", rows=48, columns=64, view="PA")
    with open(tmp_path / "annotations" / "annotations_train.csv", "a", newline="") as f:
        csv.writer(f).writerow(["bbb", "R1", "No finding", "", "", "", ""])
    issues = Issues(on_error="skip")
    records, _ = vindr.load_vindr(root=tmp_path, issues=issues)
    assert [r.image_id for r in records] == ["bbb"]
    assert "outside the 64x48 image" in issues.items[0].reason


def test_no_vindr_files(tmp_path, prepare):
    with pytest.raises(MissingFileError, match="no VinDr-CXR files found"):
        vindr.load_vindr(root=tmp_path)
    code, _, err = prepare("vindr", "--root", tmp_path, "--out", tmp_path / "x.parquet")
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_no_image_folder(tmp_path):
    write_csv(
        tmp_path / "train.csv", KAGGLE_HEADER, [["k", "No finding", 14, "R1", "", "", "", ""]]
    )
    with pytest.raises(MissingFileError, match="no images in train/ or test/"):
        vindr.load_vindr(root=tmp_path)


def test_help_shows_worked_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["prepare", "vindr", "--help"])
    text = capsys.readouterr().out
    assert "cxrkit prepare vindr --root" in text and "ANY reader" in text


@pytest.fixture
def kaggle_six(tmp_path) -> Path:
    """Kaggle layout with four abnormal images (a1..a4) and two normal ones (n1, n2)."""
    root = tmp_path / "vinbigdata6"
    rows = []
    for name in ("a1", "a2", "a3", "a4", "n1", "n2"):
        write_dicom(root / "train" / f"{name}.dicom", rows=64, columns=64, view="PA")
        if name.startswith("a"):
            rows.append([name, "Nodule/Mass", 8, "R11", 5, 5, 15, 15])
        else:
            rows.append([name, "No finding", 14, "R11", "", "", "", ""])
    write_csv(root / "train.csv", KAGGLE_HEADER, rows)
    return root


def test_abnormal_only_with_the_authors_coco_split_files(kaggle_six, tmp_path, prepare):
    # the authors' files (BarlowTwins-CXR preprocessing/*_annotations.json) are COCO with
    # file_name "<image_id>.jpeg"; one of them names an image this copy does not have
    coco = {"images": [{"id": 0, "file_name": "a2.jpeg"}, {"id": 1, "file_name": "gone.jpeg"}]}
    val = tmp_path / "valid_annotations.json"
    val.write_text(json.dumps(coco))
    test = tmp_path / "test_ids.txt"
    test.write_text("# image ids\na3.png\n")
    out = tmp_path / "abnormal.parquet"
    code, stdout, err = prepare(
        "vindr", "--root", kaggle_six, "--out", out, "--abnormal-only",
        "--split-from", f"val={val}", "--split-from", f"test={test}",
    )  # fmt: skip
    assert code == 0, err
    split = {r.image_id: r.split for r in read_manifest(out)}
    assert split == {"a1": "train", "a2": "val", "a3": "test", "a4": "train"}
    assert "1 of 2 ids are not in the manifest" in stdout


def test_split_from_a_file_of_another_dataset_fails(kaggle_six, tmp_path, prepare):
    wrong = tmp_path / "other.txt"
    wrong.write_text("x1\nx2\n")
    code, _, err = prepare(
        "vindr", "--root", kaggle_six, "--out", tmp_path / "o.parquet",
        "--split-from", f"test={wrong}",
    )  # fmt: skip
    assert code != 0 and "none of its 2 image ids is in the manifest" in err
