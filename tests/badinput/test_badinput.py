"""Bad input at the command line: each case exits non-zero with ONE error line that names the file,
row or key and the problem, shows no traceback, and leaves earlier outputs as they were.

A corpus to grow (issue 9): one case per kind of bad input a hospital data engineer meets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
