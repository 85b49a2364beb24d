"""``cxrkit prepare chestxdet --nih-manifest``: ChestX-Det records take view, patient and NIH labels
from their NIH originals, found by pixels. The ChestX-Det images are stood in for by real NIH
images under ChestX-Det's own names, with real ChestX-Det annotations."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from cxrkit import cli
from cxrkit.data import sources
from cxrkit.data.records import read_manifest, write_manifest
from cxrkit.errors import DataError
from cxrkit.synth import render_phantom


@pytest.fixture
def chestxdet_of_nih(shared_data, tmp_path):
    """(ChestX-Det root, NIH manifest, {chestxdet id: nih id}, unmatched ids)."""
    nih = sorted(
        sources.load_nih(root=shared_data / "nih", data_entry="Data_Entry_2017_subset.csv"),
        key=lambda r: r.image_id,
    )[:24]
    manifest = write_manifest(nih, tmp_path / "nih.parquet")
    root = tmp_path / "chestxdet"
    entries = {}
    for split in ("train", "test"):
        data = json.loads((shared_data / "chestx-det" / f"ChestX_Det_{split}.json").read_text())
        entries[split] = data[:6] if split == "train" else data[:3]
        (root / split).mkdir(parents=True)
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(entries[split]))
    truth, strangers = {}, []
    names = [(s, e["file_name"]) for s in ("train", "test") for e in entries[s]]
    for k, (split, name) in enumerate(names):
        target = root / split / name
        if k in (2, 7):  # not an NIH image: a phantom at the same size
            drawn = render_phantom(rng=np.random.default_rng(k), size=1024, view="PA", findings=[])
            cv2.imwrite(str(target), np.round(drawn.image * 255).astype(np.uint8))
            strangers.append(target.stem)
            continue
        original = nih[(5 * k) % len(nih)]
        grey = cv2.imread(original.path, cv2.IMREAD_GRAYSCALE)
        if k % 2:  # re-encoded once as JPEG, then saved as ChestX-Det's PNG
            ok, jpeg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 90])
            grey = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(target), grey)
        truth[target.stem] = original
    return root, manifest, truth, strangers


def test_prepare_chestxdet_takes_views_and_patients_from_nih(chestxdet_of_nih, tmp_path, capsys):
    root, nih_manifest, truth, strangers = chestxdet_of_nih
    out = tmp_path / "det.parquet"
    code = cli.main(
        [
            "prepare",
            "chestxdet",
            "--root",
            str(root),
            "--nih-manifest",
            str(nih_manifest),
            "--nih-index",
            str(tmp_path / "nih.npz"),
            "--no-masks",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    records = {r.image_id: r for r in read_manifest(out)}
    assert set(records) == set(truth) | set(strangers)
    for image_id, original in truth.items():
        r = records[image_id]
        assert (r.view, r.patient_id) == (original.view, original.patient_id)
        assert r.meta["nih_image_id"] == original.image_id
        assert r.meta["nih_labels"] == original.labels  # NIH's labels, apart from ChestX-Det's
        assert r.meta["nih_match"]["method"] in ("exact", "fingerprint")
        assert "Diffuse Nodule" in r.labels  # ChestX-Det's own labels are untouched
    for image_id in strangers:
        r = records[image_id]
        assert (r.view, r.patient_id) == ("unknown", image_id)
        assert r.meta["nih_match"]["status"] == "unmatched" and "nih_image_id" not in r.meta
    assert {records[i].meta["nih_match"]["method"] for i in truth} == {"exact", "fingerprint"}
    n = len(truth)
    assert f"NIH originals: {n} of {n + 2} matched" in printed and "2 unmatched" in printed
    assert "2 of 9 ChestX-Det images have no NIH original" in printed
    rows = list(csv.DictReader((tmp_path / "det_nih_matches.csv").open()))
    assert {r["query"]: r["reference_image_id"] for r in rows if r["reference_image_id"]} == {
        k: v.image_id for k, v in truth.items()
    }
    assert (tmp_path / "det_nih_matches_report.json").is_file()
    assert (tmp_path / "nih.npz").is_file()
    # the unknown views are counted in the summary line
    assert "unknown 2" in printed


def test_nih_manifest_needs_the_images(tmp_path):
    with pytest.raises(DataError, match="needs the images"):  # refused before any file is read
        sources.prepare_chestxdet(
            root=tmp_path, metadata_only=True, nih_manifest=tmp_path / "nih.parquet"
        )
