"""Private data: CSV manifests (both label styles, masks, boxes, column mapping), bare folders."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrkit import cli
from cxrkit.data.records import manifest_warnings, read_manifest
from cxrkit.data.sources import Issues, folder
from cxrkit.data.vocab import normalize_view
from cxrkit.errors import ConfigError, DataError, ImageReadError, MissingFileError


def png(path: Path, width=64, height=48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((height, width), np.uint8))
    return path


def dicom(path: Path, *, rows=40, columns=30, view="AP", patient_id="PAT-9") -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.PatientID, ds.ViewPosition = "DX", patient_id, view
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((rows, columns), np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_csv(path: Path, header, rows) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def hospital(tmp_path) -> Path:
    png(tmp_path / "img" / "a.png")
    png(tmp_path / "img" / "b.png", width=32, height=32)
    dicom(tmp_path / "img" / "c.dcm")
    png(tmp_path / "masks" / "a_lung.png")
    return tmp_path


def test_pipe_labels_masks_and_views(hospital):
    write_csv(
        hospital / "labels.csv",
        ["path", "patient_id", "view", "labels", "mask:Left lung"],
        [
            ["img/a.png", "p1", "pa", "Effusion|Nodule", "masks/a_lung.png"],
            ["img/b.png", "p1", "AP supine", "No Finding", ""],
            [str(hospital / "img" / "c.dcm"), "", "", "", ""],  # absolute path, unlabeled
        ],
    )
    records = folder.load_csv(root=hospital, csv_path="labels.csv")
    a, b, c = records
    assert a.image_id == "img/a" and a.path == str(hospital / "img" / "a.png")
    assert (a.width, a.height, a.view, a.patient_id) == (64, 48, "PA", "p1")
    # every labeled image states every class seen in the column
    assert a.labels == {"Effusion": 1, "No Finding": 0, "Nodule": 1}
    assert b.labels == {"Effusion": 0, "No Finding": 1, "Nodule": 0} and b.view == "AP"
    assert a.mask_paths == {"Left lung": str(hospital / "masks" / "a_lung.png")}
    assert b.mask_paths == {}
    # empty label cell: not labeled; DICOM header supplies size, view and patient
    assert c.labels == {}
    assert (c.width, c.height, c.view, c.patient_id) == (30, 40, "AP", "PAT-9")
    assert {r.split for r in records} == {"unassigned"} and {r.source for r in records} == {"csv"}


def test_label_columns_and_column_mapping(hospital):
    write_csv(
        hospital / "h2.csv",
        ["file", "PID", "Projection", "Effusion", "Mass", "fold"],
        [
            ["img/a.png", "x1", "LATERAL", "1", "0", "train"],
            ["img/b.png", "x2", "POSTERO_ANTERIOR", "0.0", "", "validation"],
        ],
    )
    records = folder.load_csv(
        root=hospital,
        csv_path=hospital / "h2.csv",
        columns=folder.parse_columns(["path=file,patient_id=PID", "view=Projection,split=fold"]),
        label_columns=["Effusion", "Mass"],
    )
    a, b = records
    assert a.labels == {"Effusion": 1, "Mass": 0} and a.view == "LL" and a.split == "train"
    assert b.labels == {"Effusion": 0} and b.view == "PA" and b.split == "val"  # "" = unknown
    assert (a.patient_id, b.patient_id) == ("x1", "x2")


def test_boxes_csv(hospital):
    write_csv(hospital / "l.csv", ["path", "labels"], [["img/a.png", "Nodule"], ["img/b.png", ""]])
    write_csv(
        hospital / "boxes.csv",
        ["image_id", "finding", "x1", "y1", "x2", "y2", "reader"],
        [
            ["img/a.png".removesuffix(".png"), "Nodule", 1, 2, 10, 20, "dr_a"],
            ["img/a", "Nodule", 2, 2, 11, 21, "dr_b"],
            ["img/b", "Mass", 0, 0, 32, 32, ""],
        ],
    )
    a, b = folder.load_csv(root=hospital, csv_path="l.csv", boxes_path="boxes.csv")
    assert [(x.finding, x.reader, x.xyxy) for x in a.boxes] == [
        ("Nodule", "dr_a", (1, 2, 10, 20)),
        ("Nodule", "dr_b", (2, 2, 11, 21)),
    ]
    # the box file's classes join the vocabulary: a is labeled, so Mass is stated 0 for it
    assert a.labels == {"Mass": 0, "Nodule": 1}
    assert b.labels == {"Mass": 1} and b.boxes[0].xyxy == (0, 0, 32, 32)


def test_fixed_class_list(hospital):
    write_csv(hospital / "l.csv", ["path", "labels"], [["img/a.png", "effusion"]])
    (a,) = folder.load_csv(root=hospital, csv_path="l.csv", classes=["Effusion", "Mass"])
    assert a.labels == {"Effusion": 1, "Mass": 0}


def test_bare_folder_with_png_and_dicom(hospital, prepare):
    shutil.rmtree(hospital / "masks")
    records = folder.load_folder(root=hospital)
    by_id = {r.image_id: r for r in records}
    assert set(by_id) == {"img/a", "img/b", "img/c"}
    assert by_id["img/a"].patient_id == "img/a" and by_id["img/a"].view == "unknown"
    assert by_id["img/c"].patient_id == "PAT-9" and by_id["img/c"].view == "AP"
    assert all(r.labels == {} and r.source == "folder" for r in records)
    assert by_id["img/a"].meta["patient_id_from"] == "image_id"  # a guess, and flagged as one
    assert "patient_id_from" not in by_id["img/c"].meta
    out = hospital / "out" / "u.parquet"
    # PNGs carry no patient id: one patient per image must be asked for, not assumed
    code, _, err = prepare("csv", "--root", hospital, "--out", out)
    assert code == 1 and "Traceback" not in err and not out.exists()
    assert "2 of 3 images have no patient id" in err and "--column patient_id=COLUMN" in err
    assert "--no-patient-ids" in err
    code, stdout, err = prepare("csv", "--root", hospital, "--out", out, "--no-patient-ids")
    assert code == 0, err
    assert "wrote 3 records" in stdout
    assert "warning: 2 of 3 images have no patient id" in stdout and "splits are by image" in stdout
    assert {r.split for r in read_manifest(out)} <= {"train", "val", "test"}
    (warning,) = manifest_warnings(out)
    assert warning.startswith("2 of 3 images have no patient id")


def test_csv_without_a_patient_column_needs_it_mapped(hospital, prepare):
    (hospital / "np.csv").write_text("path,labels\nimg/a.png,Effusion\nimg/b.png,No Finding\n")
    out = hospital / "np.parquet"
    code, _, err = prepare("csv", "--root", hospital, "--csv", "np.csv", "--out", out)
    assert code == 1 and "no patient_id column mapped" in err
    code, stdout, _ = prepare(
        "csv", "--root", hospital, "--csv", "np.csv", "--out", out, "--no-patient-ids"
    )
    assert code == 0 and "warning: 2 of 2 images" in stdout


def test_real_dicoms_as_a_bare_folder(shared_data):
    records = folder.load_folder(root=shared_data / "dicom")
    by_id = {r.image_id: r for r in records}
    assert (by_id["RG1_J2KI"].width, by_id["RG1_J2KI"].height) == (1841, 1955)
    assert by_id["RG1_J2KI"].view == "PA"
    # NIH image 00000002_000 as DICOM has no ViewPosition tag
    nih = next(r for i, r in by_id.items() if i.startswith("1.3.6.1.4.1.11129"))
    assert nih.view == "unknown" and (nih.width, nih.height) == (1024, 1024)


@pytest.mark.parametrize(
    ("text", "view"),
    [
        ("PA", "PA"),
        ("pa", "PA"),
        (" PA ", "PA"),
        ("POSTERO_ANTERIOR", "PA"),
        ("Postero-anterior", "PA"),
        ("AP", "AP"),
        ("ap", "AP"),
        ("AP supine", "AP"),
        ("AP_SUPINE", "AP"),
        ("AP erect", "AP"),
        ("LATERAL", "LL"),
        ("LL", "LL"),
        ("LAT", "LL"),
        ("RL", "LL"),
        ("lateral", "LL"),
        ("", "unknown"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        ("OBLIQUE", "unknown"),
        ("LLD", "unknown"),
        ("PAP", "unknown"),
    ],
)
def test_view_normalisation_table(text, view):
    assert normalize_view(text) == view


# ------------------------------------------------------------------------------- bad inputs
def test_missing_column_is_named(hospital, prepare):
    write_csv(hospital / "l.csv", ["file", "labels"], [["img/a.png", "Nodule"]])
    with pytest.raises(DataError, match="l.csv: missing column 'path'") as info:
        folder.load_csv(root=hospital, csv_path="l.csv")
    assert "'file'" in str(info.value) and "'labels'" in str(info.value)
    code, _, err = prepare("csv", "--root", hospital, "--csv", "l.csv", "--out", hospital / "x")
    assert code == 1 and "missing column 'path'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_mapped_column_must_exist(hospital):
    write_csv(hospital / "l.csv", ["path"], [["img/a.png"]])
    with pytest.raises(DataError, match="missing column 'PatientID'"):
        folder.load_csv(root=hospital, csv_path="l.csv", columns={"patient_id": "PatientID"})


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([["img/a.png", "Tumour"]], {"classes": ["Nodule"]}, "line 2: image img/a: unknown"),
        ([["img/zz.png", "Nodule"]], {}, "line 2: image .*img/zz.png not found"),
        ([["img/a.png", "Nodule"], ["img/a.png", "Nodule"]], {}, "line 3: .*listed twice"),
        ([["", "Nodule"]], {}, "line 2: empty 'path'"),
    ],
)
def test_bad_rows(hospital, rows, kwargs, message):
    write_csv(hospital / "l.csv", ["path", "labels"], rows)
    with pytest.raises(DataError, match=message):
        folder.load_csv(root=hospital, csv_path="l.csv", **kwargs)


def test_label_column_value_must_be_binary(hospital):
    write_csv(hospital / "l.csv", ["path", "Effusion"], [["img/a.png", "-1"]])
    with pytest.raises(DataError, match="line 2: image img/a: column 'Effusion' = '-1'"):
        folder.load_csv(root=hospital, csv_path="l.csv", label_columns=["Effusion"])


def test_bad_split_value(hospital):
    write_csv(hospital / "l.csv", ["path", "split"], [["img/a.png", "holdout"]])
    with pytest.raises(DataError, match="line 2: image img/a: split 'holdout'"):
        folder.load_csv(root=hospital, csv_path="l.csv")


def test_missing_mask_file(hospital):
    write_csv(hospital / "l.csv", ["path", "mask:Heart"], [["img/a.png", "masks/none.png"]])
    with pytest.raises(ImageReadError, match="line 2: image img/a: mask .*none.png"):
        folder.load_csv(root=hospital, csv_path="l.csv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["img/a", "Nodule", 1, 2, 65, 20], "outside the 64x48 image"),
        (["img/a", "Nodule", 10, 2, 1, 20], "empty or inverted"),
        (["img/q", "Nodule", 1, 2, 10, 20], "image_id 'img/q' is not in the CSV manifest"),
        (["img/a", "Effusion", 1, 2, 10, 20], "box of 'Effusion' but its label in the CSV is 0"),
        (["img/a", "Nodule", "", 2, 10, 20], "column 'x1' = '' is not a number"),
    ],
)
def test_bad_boxes_name_file_and_line(hospital, row, message):
    write_csv(
        hospital / "l.csv", ["path", "labels"], [["img/a.png", "Nodule"], ["img/b.png", "Effusion"]]
    )
    write_csv(hospital / "b.csv", ["image_id", "finding", "x1", "y1", "x2", "y2"],
              [["img/a", "Nodule", 1, 1, 2, 2], row])  # fmt: skip
    with pytest.raises(DataError, match="b.csv:line 3") as info:
        folder.load_csv(root=hospital, csv_path="l.csv", boxes_path="b.csv")
    assert message in str(info.value)


def test_unknown_box_class_with_fixed_classes(hospital):
    write_csv(hospital / "l.csv", ["path"], [["img/a.png"]])
    write_csv(hospital / "b.csv", ["image_id", "finding", "x1", "y1", "x2", "y2"],
              [["img/a", "Tumour", 1, 1, 2, 2]])  # fmt: skip
    with pytest.raises(DataError, match="b.csv:line 2: image img/a: unknown csv class 'Tumour'"):
        folder.load_csv(root=hospital, csv_path="l.csv", boxes_path="b.csv", classes=["Mass"])


def test_skip_reports_bad_rows(hospital, prepare):
    write_csv(
        hospital / "l.csv",
        ["path", "labels"],
        [["img/a.png", "Nodule"], ["img/missing.png", "Nodule"], ["img/b.png", "No Finding"]],
    )
    issues = Issues(on_error="skip")
    records = folder.load_csv(root=hospital, csv_path="l.csv", issues=issues)
    assert [r.image_id for r in records] == ["img/a", "img/b"]
    assert "line 3" in issues.items[0].reason
    out = hospital / "m.parquet"
    # this CSV has no patient column: --no-patient-ids accepts one patient per image
    code, stdout, err = prepare(
        "csv",
        "--root",
        hospital,
        "--csv",
        "l.csv",
        "--out",
        out,
        "--on-error",
        "skip",
        "--no-patient-ids",
    )
    assert code == 0, err
    assert "skipped 1 images; reasons in" in stdout
    assert "missing.png" in (hospital / "m_errors.csv").read_text()
    # a clean rerun removes the stale error list
    write_csv(hospital / "l.csv", ["path", "labels"], [["img/a.png", "Nodule"]])
    code, _, err = prepare(
        "csv", "--root", hospital, "--csv", "l.csv", "--out", out, "--no-patient-ids"
    )
    assert code == 0, err
    assert not (hospital / "m_errors.csv").exists()


def test_unreadable_image(hospital):
    (hospital / "img" / "bad.png").write_bytes(b"not a png at all")
    write_csv(hospital / "l.csv", ["path"], [["img/bad.png"]])
    with pytest.raises(ImageReadError, match="l.csv:line 2: .*bad.png"):
        folder.load_csv(root=hospital, csv_path="l.csv")


def test_empty_or_missing_folder(tmp_path, prepare):
    with pytest.raises(DataError, match="no .png, .jpg, .jpeg, .dcm, .dicom files found"):
        folder.load_folder(root=tmp_path)
    with pytest.raises(MissingFileError, match="folder not found"):
        folder.load_folder(root=tmp_path / "nope")
    code, _, err = prepare("csv", "--root", tmp_path, "--out", tmp_path / "x.parquet")
    assert code == 1 and "Traceback" not in err


def test_column_option_errors():
    with pytest.raises(ConfigError, match="unknown key 'paths'"):
        folder.parse_columns(["paths=file"])
    with pytest.raises(ConfigError, match="expected KEY=COLUMN"):
        folder.parse_columns(["path"])


def test_options_needing_csv(tmp_path, prepare):
    code, _, err = prepare(
        "csv", "--root", tmp_path, "--boxes", "b.csv", "--out", tmp_path / "x.parquet"
    )
    assert code == 1 and "need --csv" in err


def test_help_shows_worked_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["prepare", "csv", "--help"])
    text = capsys.readouterr().out
    assert "cxrkit prepare csv --root" in text and "--label-columns" in text
