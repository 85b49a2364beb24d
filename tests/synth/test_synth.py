"""Tests of the synthetic phantom generator: determinism, ground truth, AP/PA appearance and the
real NIH / VinDr on-disk formats."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrkit import cli
from cxrkit import synth as synthetic

SEED = 3
N = 10
SIZE = 96


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    synthetic.generate(out_dir=out, n=N, size=SIZE, seed=SEED, workers=1, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


# ---- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_with_any_number_of_workers(synth, tmp_path):
    synthetic.generate(out_dir=tmp_path, n=N, size=SIZE, seed=SEED, workers=2, progress=False)
    first, second = _files(synth), _files(tmp_path)
    assert sorted(first) == sorted(second)
    assert any(name.endswith(".png") for name in first)
    assert any(name.endswith(".dicom") for name in first)
    for name in first:
        assert first[name] == second[name], name


def test_different_seed_gives_different_files(synth, tmp_path):
    synthetic.generate(
        out_dir=tmp_path, n=N, size=SIZE, seed=SEED + 1, datasets=("nih",), progress=False
    )
    for name in ("nih/images/00000001_000.png", "nih/Data_Entry_2017.csv"):
        assert (synth / name).read_bytes() != (tmp_path / name).read_bytes(), name
    assert not (tmp_path / "vindr").exists()


def test_render_phantom_is_a_function_of_the_generator_state():
    a = synthetic.render_phantom(
        rng=np.random.default_rng(5), size=64, view="PA", findings=["nodule_mass"]
    )
    b = synthetic.render_phantom(
        rng=np.random.default_rng(5), size=64, view="PA", findings=["nodule_mass"]
    )
    c = synthetic.render_phantom(
        rng=np.random.default_rng(6), size=64, view="PA", findings=["nodule_mass"]
    )
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes
    assert not np.array_equal(a.image, c.image)


# ---- ground truth ------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_boxes_are_tight_boxes_of_masks_inside_the_lungs(view):
    for i in range(4):
        findings = synthetic.FINDINGS if i % 2 == 0 else synthetic.FINDINGS[i % 5 : i % 5 + 2]
        p = synthetic.render_phantom(
            rng=np.random.default_rng([11, i]), size=128, view=view, findings=findings
        )
        assert p.image.dtype == np.float32 and p.image.shape == (128, 128)
        assert p.image.min() >= 0.0 and p.image.max() <= 1.0
        assert [b[0] for b in p.boxes] == list(findings)
        for finding, x1, y1, x2, y2 in p.boxes:
            mask = p.masks[finding]
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
            ys, xs = np.nonzero(mask)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # every lesion lies in a lung field
            assert not (mask & ~p.masks["lung"]).any(), finding
        assert not (p.masks["lung"] & p.masks["heart"]).any()
        assert p.nih_names.get("nodule_mass", "Nodule") in ("Nodule", "Mass")


def test_nodule_or_mass_follows_the_3_cm_rule():
    names = set()
    for i in range(12):
        p = synthetic.render_phantom(
            rng=np.random.default_rng([12, i]), size=96, view="PA", findings=["nodule_mass"]
        )
        expected = "Mass" if p.meta["nodule_mm"] > synthetic.MASS_MIN_MM else "Nodule"
        assert p.nih_names["nodule_mass"] == expected
        names.add(expected)
    assert names == {"Nodule", "Mass"}


def test_findings_are_visible_in_the_lesion_mask():
    # same anatomy and noise stream, with and without the lesion: the box region must change
    for finding in synthetic.FINDINGS:
        anatomy = synthetic.sample_anatomy(np.random.default_rng(1))
        with_lesion = synthetic.render_phantom(
            rng=np.random.default_rng(2), size=128, view="PA", findings=[finding], anatomy=anatomy
        )
        mask = with_lesion.masks[finding]
        normal = synthetic.render_phantom(
            rng=np.random.default_rng(2), size=128, view="PA", findings=[], anatomy=anatomy
        )
        change = np.abs(with_lesion.image - normal.image)[mask].mean()
        assert change > 0.02, (finding, change)


def test_ap_films_have_bigger_hearts_and_more_noise_than_pa():
    ratio = {"AP": [], "PA": []}
    noise = {"AP": [], "PA": []}
    for i in range(10):
        anatomy = synthetic.sample_anatomy(np.random.default_rng([21, i]))
        for view in ("AP", "PA"):
            p = synthetic.render_phantom(
                rng=np.random.default_rng([22, i]),
                size=128,
                view=view,
                findings=[],
                anatomy=anatomy,
            )
            heart, lung = p.masks["heart"].sum(), p.masks["lung"].sum()
            ratio[view].append(heart / (heart + lung))
            # noise: high-pass residual inside the (flat, dense) cardiac shadow
            residual = p.image - cv2.GaussianBlur(p.image, (0, 0), 1.5)
            inner = cv2.erode(p.masks["heart"].astype(np.uint8), np.ones((5, 5), np.uint8))
            noise[view].append(residual[inner.astype(bool)].std())
    assert np.mean(ratio["AP"]) > np.mean(ratio["PA"]) * 1.15
    assert np.mean(noise["AP"]) > np.mean(noise["PA"]) * 1.3
    assert sum(a > p for a, p in zip(noise["AP"], noise["PA"], strict=True)) >= 9


def test_render_phantom_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="view"):
        synthetic.render_phantom(rng=rng, size=64, view="LL", findings=[])
    with pytest.raises(ValueError, match="unknown findings"):
        synthetic.render_phantom(rng=rng, size=64, view="PA", findings=["Cardiomegaly"])
    with pytest.raises(ValueError, match="size"):
        synthetic.render_phantom(rng=rng, size=32, view="PA", findings=[])


# ---- NIH files ---------------------------------------------------------------------------------


def test_nih_data_entry_is_in_the_real_2017_format(synth):
    raw = (synth / "nih" / "Data_Entry_2017.csv").read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"" and b"\n" not in raw.replace(b"\r\n", b"")
    assert lines[0].decode() == synthetic.NIH_DATA_ENTRY_HEADER
    assert lines[0].endswith(b",")
    assert all(len(line.split(b",")) == 11 for line in lines[1:-1])
    df = pd.read_csv(synth / "nih" / "Data_Entry_2017.csv")
    assert len(df) == N and df.shape[1] == 12  # the header's trailing comma: an empty 12th column
    assert df["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert set(df["View Position"]) <= {"AP", "PA"}
    # exactly round(n * 0.4) abnormal images
    assert (df["Finding Labels"] != "No Finding").sum() == round(N * 0.4)
    names = {n for labels in df["Finding Labels"] for n in labels.split("|")}
    assert names <= {*synthetic.NIH_FINDING_NAMES, "No Finding"}
    for row in df.itertuples():
        patient, follow_up = row[1][:-4].split("_")
        assert int(patient) == row[4] and int(follow_up) == row[3]
    assert df["Patient ID"].duplicated().any()  # some patients have follow-up films


def test_nih_headers_match_the_real_files(synth, shared_data):
    for ours, real in (
        ("Data_Entry_2017.csv", "Data_Entry_2017_subset.csv"),
        ("BBox_List_2017.csv", "BBox_List_2017_subset.csv"),
    ):
        real_first = (shared_data / "nih" / real).read_bytes().splitlines(keepends=True)[0]
        ours_first = (synth / "nih" / ours).read_bytes().splitlines(keepends=True)[0]
        assert ours_first == real_first, ours


def test_nih_boxes_and_masks_agree(synth):
    root = synth / "nih"
    bbox = pd.read_csv(root / "BBox_List_2017.csv")
    # as with NIH's file, the header's "Bbox [x,y,w,h],,," splits into x, y, w, h] + 3 empty names
    assert list(bbox.columns[:6]) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    assert bbox.shape[1] == 9 and bbox.iloc[:, 6:].isna().all().all()
    boxes = pd.read_csv(root / "phantom_boxes.csv", keep_default_na=False)
    assert list(boxes.columns) == ["image_id", "finding", "x1", "y1", "x2", "y2", "reader"]
    assert len(boxes) == len(bbox) > 0 and (boxes["reader"] == "").all()
    np.testing.assert_array_equal(bbox.iloc[:, 2], boxes["x1"])
    np.testing.assert_array_equal(bbox.iloc[:, 4], boxes["x2"] - boxes["x1"])
    for row in boxes.itertuples():
        mask = cv2.imread(str(root / "masks" / f"{row.image_id}.{row.finding}.png"), 0)
        assert set(np.unique(mask)) <= {0, 255}
        ys, xs = np.nonzero(mask)
        assert (row.x1, row.y1, row.x2, row.y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        image = cv2.imread(str(root / "images" / f"{row.image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)


def test_phantoms_csv_lists_images_and_masks(synth):
    root = synth / "nih"
    df = pd.read_csv(root / "phantoms.csv", keep_default_na=False, dtype=str)
    assert tuple(df.columns) == synthetic.PHANTOMS_COLUMNS
    entry = pd.read_csv(root / "Data_Entry_2017.csv")
    assert list(df["labels"]) == list(entry["Finding Labels"])
    for row in df.to_dict("records"):
        assert (root / row["path"]).is_file()
        present = set(row["labels"].split("|")) - {"No Finding"}
        for name in synthetic.NIH_FINDING_NAMES:
            assert bool(row[f"mask:{name}"]) == (name in present)
        for key in ("mask:lung", "mask:heart", *(f"mask:{n}" for n in present)):
            assert (root / row[key]).is_file()


# ---- VinDr files -------------------------------------------------------------------------------


def _dicoms(synth: Path) -> list[Path]:
    return sorted((synth / "vindr").glob("*/*.dicom"))


def test_vindr_dicoms_read_back_to_the_intended_display(synth):
    plan = synthetic.plan_dataset("vindr", n=N, seed=SEED, abnormal_fraction=0.4, ap_fraction=0.45)
    by_id = {item.image_id: item for item in plan}
    kinds = set()
    files = _dicoms(synth)
    assert len(files) == N and len(by_id) == N
    for path in files:
        ds = pydicom.dcmread(path)
        item = by_id[path.stem]
        assert path.parent.name == item.split
        assert len(path.stem) == 32 and int(path.stem, 16) >= 0
        assert ds.ViewPosition == item.view and ds.PatientID == item.patient_id
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE)
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 14)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        stored = ds.pixel_array.astype(np.float64)
        assert stored.max() < 2**ds.BitsStored
        value = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        display = (value - (c - w / 2)) / w
        kinds.add(ds.PhotometricInterpretation)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            display = 1.0 - display
        expected = synthetic.render_planned(item, seed=SEED, size=SIZE).image
        np.testing.assert_allclose(display, expected, atol=1e-3)  # 12-bit quantisation
    assert kinds == {"MONOCHROME1", "MONOCHROME2"}


def test_vindr_patients_do_not_cross_splits(synth):
    split_of: dict[str, set[str]] = {}
    for path in _dicoms(synth):
        pid = pydicom.dcmread(path, stop_before_pixels=True).PatientID
        split_of.setdefault(pid, set()).add(path.parent.name)
    assert all(len(s) == 1 for s in split_of.values())
    assert {s for v in split_of.values() for s in v} == {"train", "test"}


def _annotations(synth: Path) -> pd.DataFrame:
    root = synth / "vindr" / "annotations"
    frames = []
    for split in ("train", "test"):
        df = pd.read_csv(root / f"annotations_{split}.csv")
        assert tuple(df.columns) == synthetic.VINDR_ANNOTATION_COLUMNS
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def test_vindr_three_readers_overlap_but_differ(synth):
    df = _annotations(synth)
    assert set(df["rad_id"]) == set(synthetic.VINDR_READERS)
    boxed = df[df["class_name"] != "No finding"]
    assert set(boxed["class_name"]) <= set(synthetic.VINDR_NAMES.values())
    assert len(boxed) > 0
    groups = list(boxed.groupby(["image_id", "class_name"]))
    assert sum(len(g) == 3 for _, g in groups) >= len(groups) / 2
    differing = 0
    for _, group in groups:
        assert group["rad_id"].is_unique
        coords = group[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
        assert (coords[:, 0] < coords[:, 2]).all() and (coords[:, 1] < coords[:, 3]).all()
        assert coords.min() >= 0 and coords.max() <= SIZE
        for a, b in itertools.combinations(coords, 2):
            assert _iou(a, b) > 0.5
            differing += not np.array_equal(a, b)
    assert differing > 0


def test_vindr_normal_images_have_empty_no_finding_rows(synth):
    df = _annotations(synth)
    plan = synthetic.plan_dataset("vindr", n=N, seed=SEED, abnormal_fraction=0.4, ap_fraction=0.45)
    normal = {item.image_id for item in plan if not item.findings}
    assert normal
    rows = df[df["image_id"].isin(normal)]
    assert len(rows) == 3 * len(normal)
    assert (rows["class_name"] == "No finding").all()
    assert rows[["x_min", "y_min", "x_max", "y_max"]].isna().all().all()


def test_vindr_image_labels_have_all_28_columns(synth):
    ann = _annotations(synth)
    for split in ("train", "test"):
        df = pd.read_csv(synth / "vindr" / "annotations" / f"image_labels_{split}.csv")
        assert list(df.columns) == ["image_id", "rad_id", *synthetic.VINDR_LABELS]
        assert len(synthetic.VINDR_LABELS) == 28
        assert df[list(synthetic.VINDR_LABELS)].isin([0, 1]).all().all()
        for row in df.to_dict("records"):
            mine = ann[(ann["image_id"] == row["image_id"]) & (ann["rad_id"] == row["rad_id"])]
            flagged = {name for name in synthetic.VINDR_LABELS if row[name] == 1}
            assert flagged == set(mine["class_name"])


# ---- scale and CLI -----------------------------------------------------------------------------


def test_two_hundred_images_at_128_px(tmp_path):
    summary = synthetic.generate(out_dir=tmp_path, n=200, size=128, seed=0, progress=False)
    assert summary.counts["nih"]["images"] == summary.counts["vindr"]["images"] == 200
    assert summary.counts["nih"]["abnormal"] == 80
    assert 140 <= summary.counts["vindr"]["train"] <= 180
    assert len(list((tmp_path / "nih" / "images").glob("*.png"))) == 200
    assert len(list((tmp_path / "vindr").glob("*/*.dicom"))) == 200
    assert "seed: 0" in (tmp_path / "README.txt").read_text()


def test_cli_synth(tmp_path, capsys):
    rc = cli.main(
        [
            "synth",
            "--out",
            str(tmp_path),
            "--n",
            "3",
            "--size",
            "64",
            "--workers",
            "1",
            "--seed",
            "2",
            "--datasets",
            "nih",
        ]
    )
    assert rc == 0
    assert len(list((tmp_path / "nih" / "images").glob("*.png"))) == 3
    assert "nih: 3 images" in capsys.readouterr().out
    assert cli.main(["synth", "--out", str(tmp_path), "--n", "0"]) == 1
    assert "--n must be at least 1" in capsys.readouterr().err
    assert cli.main(["synth", "--out", str(tmp_path), "--ap-fraction", "1.5"]) == 1
    assert "--ap-fraction" in capsys.readouterr().err


def test_cli_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["synth", "--help"])
    assert "example:" in capsys.readouterr().out
