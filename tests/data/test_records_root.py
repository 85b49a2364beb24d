"""Manifests store paths relative to a recorded root, so that they move with their data (issue 14).

Before, ``write_manifest`` stored the absolute paths it was given: a manifest copied to a cluster
with its images pointed at the old machine's folders.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxrkit import cli
from cxrkit.config import DataConfig
from cxrkit.data import loading
from cxrkit.data.records import (
    ROOT_KEY,
    SCHEMA,
    Record,
    manifest_root,
    manifest_warnings,
    read_manifest,
    write_manifest,
)
from cxrkit.errors import DataError


def _images(root: Path, n: int = 4) -> list[Record]:
    """``n`` 32x24 grey PNGs in two sub-folders of ``root``, with a lung mask each."""
    records = []
    for i in range(n):
        image = root / f"part{i % 2}" / f"img{i}.png"
        mask = root / "masks" / f"img{i}_lung.png"
        for path, value in ((image, 40 + i), (mask, 255)):
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((24, 32), value, dtype=np.uint8))
        records.append(
            Record(
                image_id=f"img{i}",
                source="folder",
                path=str(image),
                patient_id=f"p{i}",
                width=32,
                height=24,
                split=("train", "test")[i % 2],
                mask_paths={"lung": str(mask)},
            )
        )
    return records


def _stored_paths(manifest: Path) -> list[str]:
    table = pq.read_table(manifest)
    masks = [v for row in table.column("mask_paths").to_pylist() for _, v in row]
    return table.column("path").to_pylist() + masks


def test_paths_are_stored_relative_to_the_deepest_common_folder(tmp_path):
    data = tmp_path / "data"
    records = _images(data)
    manifest = write_manifest(records, tmp_path / "m.parquet")
    assert manifest_root(manifest) == data
    stored = _stored_paths(manifest)
    assert stored[:2] == ["part0/img0.png", "part1/img1.png"]
    assert stored[-1] == "masks/img3_lung.png"
    assert not any(Path(p).is_absolute() for p in stored)
    assert read_manifest(manifest) == records  # absolute again on reading


def test_a_manifest_moved_with_its_images_works_with_root_and_by_itself(tmp_path, caplog):
    data = tmp_path / "old" / "data"
    records = _images(data)
    write_manifest(records, data / "m.parquet")  # the manifest lives in the dataset folder
    new = tmp_path / "cluster" / "data"
    shutil.copytree(data, new)
    shutil.rmtree(tmp_path / "old")

    rebased = read_manifest(new / "m.parquet", root=new)
    assert [r.path for r in rebased] == [str(new / Path(r.path).relative_to(data)) for r in records]
    assert all(Path(r.path).is_file() and Path(r.mask_paths["lung"]).is_file() for r in rebased)
    # without --root: the recorded root is gone, the manifest's folder holds the images: used,
    # and said
    with caplog.at_level(logging.WARNING, logger="cxrkit.data.records"):
        assert read_manifest(new / "m.parquet") == rebased
    assert f"recorded root {data} does not exist" in caplog.text and str(new) in caplog.text


def test_the_manifest_beside_its_data_folder_follows_a_move_of_both(tmp_path, caplog):
    old = tmp_path / "old"
    records = _images(old / "images")
    write_manifest(records, old / "manifests" / "m.parquet")
    shutil.move(old, tmp_path / "new")
    with caplog.at_level(logging.WARNING, logger="cxrkit.data.records"):
        moved = read_manifest(tmp_path / "new" / "manifests" / "m.parquet")
    assert all(Path(r.path).is_file() for r in moved)
    assert moved[0].path == str(tmp_path / "new" / "images" / "part0" / "img0.png")
    assert "used instead" in caplog.text


def test_a_root_found_nowhere_says_to_pass_root(tmp_path, caplog):
    records = _images(tmp_path / "data")
    manifest = write_manifest(records, tmp_path / "m.parquet")
    shutil.move(manifest, tmp_path / "elsewhere.parquet")
    shutil.rmtree(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="cxrkit.data.records"):
        kept = read_manifest(tmp_path / "elsewhere.parquet")
    assert [r.path for r in kept] == [r.path for r in records]  # labels still readable
    assert "pass --root DIR (data.root=DIR)" in caplog.text


def test_no_common_folder_keeps_absolute_paths_and_says_so(tmp_path):
    records = _images(tmp_path / "a", n=1) + _images(tmp_path / "b", n=2)[1:]
    records[1].path = "/elsewhere/img1.png"  # shares only "/" with the others
    manifest = write_manifest(records, tmp_path / "m.parquet")
    assert manifest_root(manifest) is None
    assert _stored_paths(manifest)[:2] == [records[0].path, "/elsewhere/img1.png"]
    (warning,) = manifest_warnings(manifest)
    assert "share no folder below the filesystem root" in warning
    assert read_manifest(manifest) == records


def test_an_explicit_root_keeps_paths_outside_it_absolute(tmp_path):
    records = _images(tmp_path / "data")
    outside = tmp_path / "other_masks" / "m.png"
    records[0].mask_paths = {"lung": str(outside)}
    manifest = write_manifest(records, tmp_path / "m.parquet", root=tmp_path / "data")
    stored = _stored_paths(manifest)
    assert stored[0] == "part0/img0.png" and str(outside) in stored
    assert read_manifest(manifest) == records


def test_old_manifests_of_absolute_paths_read_as_before_and_rebase(tmp_path):
    records = _images(tmp_path / "data")
    # a manifest written before roots were recorded: absolute paths, no root in the metadata
    rows = pq.read_table(write_manifest(records, tmp_path / "new.parquet")).to_pylist()
    for row, record in zip(rows, records, strict=True):
        row["path"] = record.path
        row["mask_paths"] = list(record.mask_paths.items())
    old = tmp_path / "old.parquet"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table.replace_schema_metadata({"cxrkit_manifest_version": "1"}), old)
    assert ROOT_KEY.encode() not in (pq.read_schema(old).metadata or {})
    assert read_manifest(old) == records
    moved = read_manifest(old, root="/cluster/data")
    assert moved[0].path == "/cluster/data/part0/img0.png"
    assert moved[0].mask_paths["lung"] == "/cluster/data/masks/img0_lung.png"


def test_relative_paths_given_are_kept_and_mixed_ones_refuse_a_rebase(tmp_path):
    records = _images(tmp_path / "data", n=2)
    records[0].path, records[0].mask_paths = "img0.png", {}
    manifest = write_manifest(records, tmp_path / "m.parquet")
    assert manifest_root(manifest) is None  # relative to the working directory: as given
    assert read_manifest(manifest) == records
    with pytest.raises(DataError, match="partly relative, partly absolute"):
        read_manifest(manifest, root=tmp_path)


def test_data_root_reaches_every_stage_through_load_records(tmp_path):
    records = _images(tmp_path / "data")
    write_manifest(records, tmp_path / "data" / "m.parquet")
    shutil.move(tmp_path / "data", tmp_path / "moved")
    data = DataConfig(manifest=str(tmp_path / "moved" / "m.parquet"), root=str(tmp_path / "moved"))
    got = loading.load_records(data, split="test")
    assert [r.path for r in got] == [
        str(tmp_path / "moved" / "part1" / f"img{i}.png") for i in (1, 3)
    ]


def test_prepare_records_root_and_preprocess_reads_a_moved_manifest_with_root(tmp_path, capsys):
    data = tmp_path / "site" / "hospital"
    _images(data)
    shutil.rmtree(data / "masks")  # a bare folder of images
    manifest = tmp_path / "site" / "hospital.parquet"
    code = cli.main(
        ["prepare", "csv", "--root", str(data), "--out", str(manifest), "--no-patient-ids"]
    )
    assert code == 0
    assert f"paths relative to {data}" in capsys.readouterr().out
    assert manifest_root(manifest) == data
    assert sorted(_stored_paths(manifest)) == [f"part{i % 2}/img{i}.png" for i in (0, 2, 1, 3)]

    # the cluster: another layout, the manifest not beside the images
    cluster = tmp_path / "cluster"
    shutil.copytree(data, cluster / "images")
    shutil.copy(manifest, cluster / "hospital.parquet")
    shutil.rmtree(tmp_path / "site")
    argv = ["preprocess", "--manifest", str(cluster / "hospital.parquet"), "--size", "32"]
    argv += ["--out", str(cluster / "cache"), "--workers", "1", "--no-progress"]
    assert cli.main([*argv, "--root", str(cluster / "images")]) == 0
    assert "done 4" in capsys.readouterr().out
