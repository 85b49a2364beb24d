"""Bad input at the command line: each case exits non-zero with ONE error line that names the file,
row or key and the problem, shows no traceback, and leaves earlier outputs as they were.

A corpus (issue 9): one case per kind of bad input a hospital data engineer meets, across every
command. ``CASES`` below is the table: each builds its input in a fresh folder, names the command
line and the words its one error line must hold, and lists the files that exist before the run
(an earlier manifest, a cache, a run folder) and must be byte-identical after it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import lightning  # noqa: F401  (see below)
import numpy as np
import pytest

from cxrkit import cli
from cxrkit.data import cache as cache_layout
from cxrkit.data.records import Record, write_manifest

# Lightning points its log handler at the stderr that exists when it is first imported; imported
# inside a test, that is pytest's capture stream, closed after the test, and a later test's stderr
# then holds a "--- Logging error ---" traceback. Imported here, it logs to the real stderr.
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_named_error(code: int, err: str, *needles: str) -> None:
    """Exit 1, no traceback, exactly one ``cxrkit ...: error:`` line, holding every needle."""
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cxrkit ") and "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``: "no earlier output changed" is this staying equal."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hashes(paths: list[Path]) -> dict[str, str]:
    """sha256 of each file (every file below a folder), keyed by path."""
    out = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return out


@pytest.fixture
def pngs(tmp_path: Path) -> tuple[Path, list[Record]]:
    """Four 64 px PNG records with patients and splits, and their manifest."""
    records = []
    for i in range(4):
        path = tmp_path / "src" / f"i{i}.png"
        path.parent.mkdir(exist_ok=True)
        rng = np.random.default_rng(i)
        cv2.imwrite(str(path), rng.integers(0, 255, (64, 64), dtype=np.uint8))
        records.append(
            Record(
                image_id=f"i{i}",
                source="t",
                path=str(path),
                patient_id=f"p{i}",
                width=64,
                height=64,
                split="train",
            )
        )
    return write_manifest(records, tmp_path / "m.parquet"), records


def test_dicom_window_width_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cr_dicom
) -> None:
    pixels = np.arange(64 * 64).reshape(64, 64)
    dcm = cr_dicom(tmp_path / "ww0.dcm", pixels, WindowCenter=2048, WindowWidth=0)
    record = Record(image_id="d", source="t", path=str(dcm), patient_id="P1", width=64, height=64)
    manifest = write_manifest([record], tmp_path / "d.parquet")
    args = ["preprocess", "--manifest", manifest, "--size", "32", "--workers", "1", "--no-progress"]
    code, err = run(capsys, *args, "--out", tmp_path / "c")
    assert_named_error(code, err, "ww0.dcm", "invalid VOI LUT / window", "--no-voi-lut")
    # the way out the message names works (another recipe, so another cache folder)
    code, err = run(capsys, *args, "--out", tmp_path / "c_full_range", "--no-voi-lut")
    assert code == 0, err


def test_truncated_cache_index(pngs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest, _ = pngs
    cache = tmp_path / "cache"
    code, err = run(
        capsys,
        "preprocess",
        "--manifest",
        manifest,
        "--out",
        cache,
        "--size",
        "64",
        "--workers",
        "1",
        "--no-progress",
    )
    assert code == 0, err
    index = cache / cache_layout.INDEX_FILE
    index.write_bytes(index.read_bytes()[:100])  # a copy cut short
    before = fingerprint(cache)
    code, err = run(
        capsys,
        "pretrain",
        "--config",
        CONFIGS / "pretrain" / "tiny_pretrain.yaml",
        f"data.manifest={manifest}",
        f"data.cache={cache}",
        f"output_dir={tmp_path / 'run'}",
    )
    assert_named_error(code, err, "index.parquet", "unreadable cache index", "cxrkit preprocess")
    assert fingerprint(cache) == before


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("trainer.devices=abc", "trainer.devices must be 'auto'"),
        ("trainer.max_steps=0", "trainer.max_steps must be -1"),
        ("model.init=imagenet", "model.weights"),  # ImageNet init without its file
    ],
)
def test_training_values_that_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, needle: str
) -> None:
    code, err = run(
        capsys,
        "pretrain",
        "--config",
        CONFIGS / "pretrain" / "tiny_pretrain.yaml",
        override,
        f"output_dir={tmp_path / 'run'}",
        "data.manifest=nowhere.parquet",
    )
    assert_named_error(code, err, needle)


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("x.txt", "predictions files are CSV (.csv) or Parquet"),
        ("adir", "is a directory"),
        ("afile/p.csv", "which is a file"),
    ],
)
def test_predict_output_checked_before_the_model_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str, needle: str
) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep me")
    # The model does not exist either: the output is checked first, before any work.
    for command in (
        ["finetune", "predict", "--model", tmp_path / "nope.pt"],
        [
            "multitask",
            "predict",
            "--model",
            tmp_path / "nope.pt",
            "--manifest",
            "m",
            "--cache",
            "c",
        ],
    ):
        code, err = run(capsys, *command, "--out", tmp_path / out)
        assert_named_error(code, err, out.split("/")[0], needle)
    assert (tmp_path / "afile").read_text() == "keep me"


def test_ensemble_with_a_non_zip_svm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    doc = {"members": [{"disease": "x", "checkpoint": "m.pt"}], "threshold": 0.0}
    (ensemble / "ensemble.json").write_text(json.dumps({**doc, "target_sensitivity": 0.9}))
    (ensemble / "svm.skops").write_text("not a zip archive")
    before = fingerprint(ensemble)
    code, err = run(
        capsys,
        "multitask",
        "screen",
        "--ensemble",
        ensemble,
        "--manifest",
        "m",
        "--cache",
        "c",
        "--out",
        tmp_path / "s.csv",
    )
    assert_named_error(code, err, "svm.skops", "not a skops file")
    assert fingerprint(ensemble) == before and not (tmp_path / "s.csv").exists()


def test_empty_last_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    code, err = run(
        capsys,
        "finetune",
        "--config",
        CONFIGS / "finetune" / "tiny_faster_rcnn.yaml",
        f"output_dir={tmp_path / 'run'}",
        "data.manifest=nowhere.parquet",
    )
    assert_named_error(code, err, "last.ckpt", "not a complete checkpoint", "--resume never")
    assert ckpt.read_bytes() == b""


# ------------------------------------------------------------------------------------ the corpus
@dataclass
class Case:
    """A command line that must fail: ``argv``, the words of its error line, and the files that
    exist before it runs and must not change (``keep``)."""

    argv: list[object]
    needles: tuple[str, ...]
    keep: list[Path] = field(default_factory=list)


def png(path: Path, pixels: np.ndarray | None = None, *, side: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = np.random.default_rng(seed).integers(0, 255, (side, side), dtype=np.uint8)
    cv2.imwrite(str(path), pixels)
    return path


def dcm(path: Path, pixels: np.ndarray, **tags: object) -> Path:
    """A CR DICOM of uint16 ``pixels`` ((frames,) rows, cols), 12 bits stored."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.PatientID, ds.ViewPosition = "CR", "P1", "PA"
    ds.set_pixel_data(np.asarray(pixels, dtype=np.uint16), "MONOCHROME2", 12)
    for key, value in tags.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def noise(side: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (side, side))


def earlier(path: Path, text: str = "an earlier output") -> Path:
    """A file an earlier run wrote, that a failing command must leave as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def manifest_of(tmp: Path, *paths: Path, labels: dict[str, int] | None = None) -> Path:
    splits = ["train", "train", "val", "test"]
    records = [
        Record(
            image_id=p.stem,
            source="t",
            path=str(p),
            patient_id=f"p{i}",
            width=64,
            height=64,
            split=splits[i % 4],
            labels=dict(labels or {}),
        )
        for i, p in enumerate(paths)
    ]
    return write_manifest(records, tmp / "m.parquet")


def preprocess(manifest: Path, out: Path, *extra: object) -> list[object]:
    return ["preprocess", "--manifest", manifest, "--out", out, "--size", "32", "--workers", "1",
            "--no-progress", *extra]  # fmt: skip


NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
NIH_HEADER += "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
KAGGLE_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"


def nih(tmp: Path, rows: str) -> Case:
    root = tmp / "nih"
    png(root / "images" / "00000001_000.png", side=64)
    (root / "Data_Entry_2017.csv").write_text(NIH_HEADER + rows)
    out = earlier(tmp / "nih.parquet")
    return Case(["prepare", "nih", "--root", root, "--out", out], (), keep=[out])


def vindr_kaggle(tmp: Path, rows: str, *, dicoms: dict[str, np.ndarray] | None = None) -> Case:
    root = tmp / "vinbig"
    root.mkdir()
    (root / "train.csv").write_text(KAGGLE_HEADER + rows)
    for image_id, pixels in (dicoms if dicoms is not None else {"k1": noise()}).items():
        dcm(root / "train" / f"{image_id}.dicom", pixels)
    out = earlier(tmp / "vindr.parquet")
    return Case(["prepare", "vindr", "--root", root, "--out", out], (), keep=[out])


def own_csv(tmp: Path, text: str, *, images: dict[str, np.ndarray | None]) -> Case:
    root = tmp / "hospital"
    root.mkdir()
    for name, pixels in images.items():
        png(root / name, pixels)
    (root / "labels.csv").write_text(text)
    out = earlier(tmp / "own.parquet")
    return Case(
        ["prepare", "csv", "--root", root, "--csv", "labels.csv", "--out", out], (), keep=[out]
    )


def with_needles(case: Case, *needles: str) -> Case:
    case.needles = needles
    return case


def png_bomb(path: Path) -> Path:
    """A valid PNG whose IHDR claims 20000 x 20000 pixels (only a few bytes of data follow)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 100)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


TINY = {
    "pretrain": CONFIGS / "pretrain" / "tiny_pretrain.yaml",
    "finetune": CONFIGS / "finetune" / "tiny_faster_rcnn.yaml",
    "multitask": CONFIGS / "multitask" / "tiny_kcr_model1.yaml",
    "screening": CONFIGS / "multitask" / "tiny_screening.yaml",
}


def training(tmp: Path, stage: str, *overrides: str, labels: dict[str, int] | None = None) -> Case:
    """A stage run on four 64 px PNGs (manifest and cache made before: both must not change)."""
    images = [png(tmp / "src" / f"i{i}.png", seed=i) for i in range(4)]
    manifest = manifest_of(tmp, *images, labels=labels)
    command = "multitask" if stage == "screening" else stage
    argv = [command, "--config", TINY[stage], f"data.manifest={manifest}",
            f"data.cache={tmp / 'cache'}", f"output_dir={tmp / 'run'}", *overrides]  # fmt: skip
    return Case(argv, (), keep=[manifest, *images])


# Cases that differ only in the rows of one file: (builder, file text, needles of the error line).
A_PNG = {"a.png": None}
ROW_CASES: dict[str, tuple[Callable[..., Case], str, dict[str, Any], tuple[str, ...]]] = {
    "nih_short_row": (nih, "00000001_000.png,No Finding,0,1,50,M,PA\n", {},
                      ("Data_Entry_2017.csv:line 2", "7 fields where the header has 11")),
    "nih_image_missing": (nih, "00000002_000.png,No Finding,0,2,50,M,PA,2500,2048,0.14,0.14\n",
                          {}, ("line 2", "00000002_000.png is listed but not found")),
    "nih_unknown_finding": (nih, "00000001_000.png,Efusion,0,1,50,M,PA,2500,2048,0.14,0.14\n",
                            {}, ("line 2", "Efusion")),
    "nih_empty_patient": (nih, "00000001_000.png,No Finding,0,,50,M,PA,2500,2048,0.14,0.14\n",
                          {}, ("line 2", "empty 'Patient ID'")),
    "vindr_short_row": (vindr_kaggle, "k1,No finding,14,R1\n", {},
                        ("train.csv:line 2", "4 fields where the header has 8")),
    "vindr_class_id_mismatch": (vindr_kaggle, "k1,Nodule/Mass,3,R1,1,1,20,20\n", {},
                                ("train.csv:line 2", "class_id 3")),
    "vindr_box_off_image": (vindr_kaggle, "k1,Nodule/Mass,8,R1,10,10,90,20\n", {},
                            ("line 2", "outside the 64x64 image")),
    "csv_short_row": (own_csv, "path,patient_id,view\na.png,P1,PA\nb.png,P2\n",
                      {"images": A_PNG}, ("labels.csv:line 3", "2 fields where the header has 3")),
    "csv_long_row": (own_csv, "path,patient_id\na.png,P1,PA\n", {"images": A_PNG},
                     ("labels.csv:line 2", "3 fields where the header has 2", "long row")),
    "csv_missing_path_column": (own_csv, "file,patient_id\na.png,P1\n", {"images": A_PNG},
                                ("labels.csv", "'path'")),
    "csv_image_missing": (own_csv, "path,patient_id\nnope.png,P1\n", {"images": {}},
                          ("labels.csv:line 2", "nope.png")),
    "csv_no_patient_id": (own_csv, "path,view\na.png,PA\n", {"images": A_PNG},
                          ("patient", "--no-patient-ids")),
    "csv_unknown_split": (own_csv, "path,patient_id,split\na.png,P1,holdout\n",
                          {"images": A_PNG}, ("labels.csv:line 2", "holdout")),
}  # fmt: skip


def row_case(name: str, tmp: Path) -> Case:
    builder, text, options, needles = ROW_CASES[name]
    return with_needles(builder(tmp, text, **options), *needles)


def case_vindr_multiframe(tmp: Path) -> Case:
    frames = np.stack([noise(), noise(seed=1)])
    c = vindr_kaggle(tmp, "k1,No finding,14,R1,,,,\n", dicoms={"k1": frames})
    return with_needles(c, "k1.dicom", "multi-frame DICOM (2 frames")


def case_vindr_tiny_dicom(tmp: Path) -> Case:
    c = vindr_kaggle(tmp, "k1,No finding,14,R1,,,,\n", dicoms={"k1": noise(side=8)})
    return with_needles(c, "k1.dicom", "8x8 pixels, smaller than 16 px")


def case_vindr_csv_without_images(tmp: Path) -> Case:
    c = vindr_kaggle(tmp, "k1,No finding,14,R1,,,,\n", dicoms={})
    return with_needles(c, "no images in train/ or test/", "--metadata-only")


def case_csv_one_pixel_image(tmp: Path) -> Case:
    c = own_csv(tmp, "path,patient_id\na.png,P1\n", images={"a.png": np.zeros((1, 1), np.uint8)})
    return with_needles(c, "a.png", "1x1 pixels, smaller than 16 px")


def case_csv_decompression_bomb(tmp: Path) -> Case:
    c = own_csv(tmp, "path,patient_id\nbomb.png,P1\n", images={})
    png_bomb(tmp / "hospital" / "bomb.png")
    return with_needles(c, "bomb.png", "20000x20000", "decompression bomb")


def case_folder_empty(tmp: Path) -> Case:
    (tmp / "empty").mkdir()
    out = earlier(tmp / "f.parquet")
    argv = ["prepare", "csv", "--root", tmp / "empty", "--out", out, "--no-patient-ids"]
    return Case(argv, ("empty", "no .png"), keep=[out])


def case_folder_tiny_image(tmp: Path) -> Case:
    png(tmp / "folder" / "ok.png")
    png(tmp / "folder" / "icon.png", np.zeros((10, 12), np.uint8))
    out = earlier(tmp / "f.parquet")
    argv = ["prepare", "csv", "--root", tmp / "folder", "--out", out, "--no-patient-ids"]
    return Case(argv, ("icon.png", "12x10 pixels"), keep=[out])


def case_prepare_out_under_a_file(tmp: Path) -> Case:
    png(tmp / "folder" / "ok.png")
    blocker = earlier(tmp / "afile")
    argv = ["prepare", "csv", "--root", tmp / "folder", "--out", blocker / "m.parquet",
            "--no-patient-ids"]  # fmt: skip
    return Case(argv, ("afile", "which is a file"), keep=[blocker])


def case_chestxdet_bad_json(tmp: Path) -> Case:
    root = tmp / "det"
    root.mkdir()
    (root / "ChestX_Det_train.json").write_text('[{"file_name": "1.png", "syms": ["Effusion"]')
    out = earlier(tmp / "det.parquet")
    argv = ["prepare", "chestxdet", "--root", root, "--out", out, "--metadata-only"]
    return Case(argv, ("ChestX_Det_train.json",), keep=[out])


def case_chestxdet_boxes_and_syms_disagree(tmp: Path) -> Case:
    root = tmp / "det"
    root.mkdir()
    entry = {"file_name": "1.png", "syms": ["Effusion", "Mass"], "boxes": [[1, 2, 30, 40]]}
    (root / "ChestX_Det_train.json").write_text(json.dumps([entry]))
    out = earlier(tmp / "det.parquet")
    argv = ["prepare", "chestxdet", "--root", root, "--out", out, "--metadata-only"]
    return Case(argv, ("1.png", "2 syms but 1 boxes"), keep=[out])


def case_chestxdet_views_short_row(tmp: Path) -> Case:
    root = tmp / "det"
    root.mkdir()
    entry = {"file_name": "1.png", "syms": [], "boxes": []}
    (root / "ChestX_Det_train.json").write_text(json.dumps([entry]))
    (tmp / "views.csv").write_text("file_name,view\n1.png\n")
    out = earlier(tmp / "det.parquet")
    argv = ["prepare", "chestxdet", "--root", root, "--out", out, "--metadata-only",
            "--views", tmp / "views.csv"]  # fmt: skip
    return Case(argv, ("views.csv:line 2", "1 fields where the header has 2"), keep=[out])


def dicom_preprocess(tmp: Path, pixels: np.ndarray, *needles: str, **tags: object) -> Case:
    path = dcm(tmp / "src" / "x.dcm", pixels, **tags)
    manifest = manifest_of(tmp, path)
    earlier_cache = earlier(tmp / "cache" / "README.txt", "an earlier cache")
    return Case(preprocess(manifest, tmp / "cache"), ("x.dcm", *needles), [manifest, earlier_cache])


def case_preprocess_blank_dicom(tmp: Path) -> Case:
    return dicom_preprocess(tmp, np.full((64, 64), 100), "blank DICOM")


def case_preprocess_multiframe(tmp: Path) -> Case:
    frames = np.stack([noise(), noise(seed=1), noise(seed=2)])
    return dicom_preprocess(tmp, frames, "multi-frame DICOM (3 frames")


def case_preprocess_tiny_dicom(tmp: Path) -> Case:
    return dicom_preprocess(tmp, noise(side=64)[:4], "64x4 pixels")


def case_preprocess_window_width_zero(tmp: Path) -> Case:
    return dicom_preprocess(tmp, noise(), "--no-voi-lut", WindowCenter=2048, WindowWidth=0)


def case_preprocess_corrupt_pixel_data(tmp: Path) -> Case:
    case = dicom_preprocess(tmp, noise(), "pixel data")
    path = tmp / "src" / "x.dcm"
    path.write_bytes(path.read_bytes()[:-3000])  # the last frame bytes cut off
    return case


def case_preprocess_truncated_png(tmp: Path) -> Case:
    path = png(tmp / "src" / "t.png")
    path.write_bytes(path.read_bytes()[:200])
    manifest = manifest_of(tmp, path)
    return Case(preprocess(manifest, tmp / "cache"), ("t.png",), keep=[manifest])


def case_preprocess_size_disagrees(tmp: Path) -> Case:
    path = png(tmp / "src" / "s.png", side=80)
    manifest = manifest_of(tmp, path)  # the manifest says 64 x 64
    needles = ("s.png", "80x80 pixels but the manifest says 64x64")
    return Case(preprocess(manifest, tmp / "cache"), needles, keep=[manifest])


def case_preprocess_missing_manifest(tmp: Path) -> Case:
    return Case(preprocess(tmp / "nowhere.parquet", tmp / "cache"), ("nowhere.parquet",))


def case_preprocess_manifest_not_parquet(tmp: Path) -> Case:
    manifest = earlier(tmp / "m.parquet", "image_id,path\n")
    return Case(preprocess(manifest, tmp / "cache"), ("m.parquet",), keep=[manifest])


def case_pretrain_unknown_key(tmp: Path) -> Case:
    c = training(tmp, "pretrain", "trainer.max_stepz=3")
    return with_needles(c, "trainer.max_stepz")


def case_pretrain_devices_abc(tmp: Path) -> Case:
    return with_needles(training(tmp, "pretrain", "trainer.devices=abc"), "trainer.devices")


def case_pretrain_max_steps_zero(tmp: Path) -> Case:
    return with_needles(training(tmp, "pretrain", "trainer.max_steps=0"), "trainer.max_steps")


def case_finetune_class_no_record_has(tmp: Path) -> Case:
    c = training(tmp, "finetune", "classes=[Foo]")
    return with_needles(c, "m.parquet", "classes names 'Foo'", "no record has")


def case_multitask_finding_no_record_has(tmp: Path) -> Case:
    labels = {"Effusion": 1, "Pneumothorax": 0}
    c = training(tmp, "multitask", "findings=[Effusion,Foo]", labels=labels)
    return with_needles(c, "findings names 'Foo'", "'Effusion', 'Pneumothorax'")


def case_screening_risk_group_no_record_has(tmp: Path) -> Case:
    labels = {"Effusion": 1, "Pneumothorax": 0}
    c = training(
        tmp,
        "screening",
        "screening.diseases=[Pneumothorax,Effusion,Foo]",
        "screening.risk_groups=[critical=Pneumothorax,urgent=Foo|Effusion]",
        labels=labels,
    )
    return with_needles(c, "risk_groups group 'urgent' names 'Foo'")


def case_multitask_predict_model_is_text(tmp: Path) -> Case:
    model = earlier(tmp / "model.pt", "not a model")
    argv = ["multitask", "predict", "--model", model, "--manifest", "m", "--cache", "c",
            "--out", tmp / "p.csv"]  # fmt: skip
    return Case(argv, ("model.pt",), keep=[model])


def eval_case(tmp: Path, predictions_text: str, *needles: str) -> Case:
    manifest = manifest_of(tmp, png(tmp / "src" / "a.png"), labels={"Effusion": 1})
    predictions = earlier(tmp / "p.csv", predictions_text)
    argv = ["eval", "classification", "--predictions", predictions, "--manifest", manifest,
            "--out", tmp / "report"]  # fmt: skip
    return Case(argv, ("p.csv", *needles), keep=[manifest, predictions])


def case_eval_predictions_missing_column(tmp: Path) -> Case:
    return eval_case(tmp, "image_id,finding\na,Effusion\n", "missing ['score']")


def case_eval_predictions_short_row(tmp: Path) -> Case:
    return eval_case(tmp, "image_id,finding,score\na,Effusion\n", "line 2")


def case_export_predictions_not_torch(tmp: Path) -> Case:
    coco = earlier(tmp / "val.json", json.dumps({"images": [], "annotations": []}))
    source = earlier(tmp / "instances_predictions.pth", "not a torch file")
    argv = ["export", "predictions", "--results", source, "--coco", coco, "--out", tmp / "p.csv"]
    return Case(argv, ("instances_predictions.pth",), keep=[coco, source])


def case_match_missing_reference(tmp: Path) -> Case:
    manifest = manifest_of(tmp, png(tmp / "src" / "a.png"))
    argv = ["match", "--query", manifest, "--reference", tmp / "nope.parquet",
            "--out", tmp / "matches.csv"]  # fmt: skip
    return Case(argv, ("nope.parquet",), keep=[manifest])


def case_reproduce_unknown_key(tmp: Path) -> Case:
    argv = ["reproduce", "kcr", "--out", tmp / "kcr", "--scale", "tiny", "trainer.max_stepz=1"]
    return Case(argv, ("max_stepz",))


def case_demo_out_is_a_file(tmp: Path) -> Case:
    out = earlier(tmp / "demo")
    return Case(["demo", "--out", out, "--quick"], ("demo", "below a file"), keep=[out])


def case_synth_out_is_a_file(tmp: Path) -> Case:
    out = earlier(tmp / "synth")
    return Case(["synth", "--out", out, "--n", "2"], ("synth", "not a folder"), keep=[out])


CASES: dict[str, Callable[[Path], Case]] = {
    **{n.removeprefix("case_"): f for n, f in globals().items() if n.startswith("case_")},
    **{name: functools.partial(row_case, name) for name in ROW_CASES},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name](tmp_path)
    before = hashes(case.keep)
    code, err = run(capsys, *case.argv)
    assert_named_error(code, err, *case.needles)
    assert hashes(case.keep) == before
