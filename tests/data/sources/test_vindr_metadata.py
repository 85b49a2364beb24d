"""VinDr metadata-only mode: headers read without pixels where the DICOMs are, the CSV alone where
they are not (the 67,914-row Kaggle train.csv without its 200 GB of images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from cxrkit import synth
from cxrkit.data import dicom
from cxrkit.data.records import manifest_warnings, read_manifest
from cxrkit.data.sources import vindr
from cxrkit.errors import MissingFileError


@pytest.fixture(scope="module")
def synth_vindr(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out_dir=out, n=12, size=64, seed=3, datasets=("vindr",), progress=False)
    return out / "vindr"


def test_metadata_only_reads_headers_without_pixels(synth_vindr, monkeypatch) -> None:
    full, _ = vindr.load_vindr(root=synth_vindr)
    calls: list[bool] = []
    real = pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(bool(kwargs.get("stop_before_pixels")))
        return real(*args, **kwargs)

    monkeypatch.setattr(dicom.pydicom, "dcmread", spy)
    meta_only, _ = vindr.load_vindr(root=synth_vindr, metadata_only=True)
    assert len(calls) == len(full) and all(calls)  # one header read per image, no pixels
    # with every DICOM present, metadata only changes nothing: sizes, views, patients are read
    assert meta_only == full
    assert not any(r.meta.get("size_assumed") for r in meta_only)


def test_absent_dicoms_are_kept_with_sizes_assumed(synth_vindr, tmp_path, prepare) -> None:
    root = tmp_path / "vindr"
    shutil.copytree(synth_vindr, root)
    full = {r.image_id: r for r in vindr.load_vindr(root=root)[0]}
    removed = sorted(full)[::2]
    for image_id in removed:
        next(root.glob(f"*/{image_id}.dicom")).unlink()
    out = tmp_path / "m.parquet"
    code, stdout, err = prepare("vindr", "--root", root, "--out", out)
    assert code == 1 and "pass --metadata-only to keep it" in err  # refused without the flag
    code, stdout, err = prepare("vindr", "--root", root, "--out", out, "--metadata-only")
    assert code == 0, err
    records = {r.image_id: r for r in read_manifest(out)}
    assert set(records) == set(full)
    for image_id, record in records.items():
        original = full[image_id]
        assert record.labels == original.labels and record.boxes == original.boxes
        if image_id in removed:
            assert record.meta["size_assumed"] is True and record.view == "unknown"
            assert record.patient_id == image_id
            # the smallest size holding every box (1x1 without boxes): never a real size
            assert record.width == max([1, *(int(-(-b.x2 // 1)) for b in record.boxes)])
            assert record.height == max([1, *(int(-(-b.y2 // 1)) for b in record.boxes)])
        else:
            assert "size_assumed" not in record.meta
            assert (record.width, record.height, record.view) == (
                original.width,
                original.height,
                original.view,
            )
    warning = f"metadata only: {len(removed)} of {len(full)} images are absent"
    assert warning in stdout
    assert any(w.startswith(warning) for w in manifest_warnings(out))


def test_kaggle_csv_without_any_image(tmp_path, prepare) -> None:
    root = tmp_path / "vinbig"
    root.mkdir()
    (root / "train.csv").write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "k1,Nodule/Mass,8,R11,100,120,180,200.5\n"
        "k1,Aortic enlargement,0,R12,300,90,380,160\n"
        "k2,No finding,14,R9,,,,\n"
    )
    with pytest.raises(MissingFileError, match="pass --metadata-only"):
        vindr.load_vindr(root=root)
    out = tmp_path / "k.parquet"
    code, _, err = prepare("vindr", "--root", root, "--out", out, "--metadata-only")
    assert code == 0, err
    by_id = {r.image_id: r for r in read_manifest(out)}
    assert (by_id["k1"].width, by_id["k1"].height) == (380, 201)
    assert (by_id["k2"].width, by_id["k2"].height) == (1, 1)
    assert by_id["k1"].path == str(root / "train" / "k1.dicom")
    assert {f for f, v in by_id["k1"].labels.items() if v} == {"Nodule/Mass", "Aortic enlargement"}
    assert all(r.meta["size_assumed"] for r in by_id.values())
