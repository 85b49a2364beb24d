"""``cxrkit match`` through the real command line: outputs, --on-error, errors without traceback."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np

from cxrkit import cli
from cxrkit.synth import render_phantom


def _phantom(seed: int) -> np.ndarray:
    drawn = render_phantom(rng=np.random.default_rng(seed), size=128, view="PA", findings=[])
    return np.round(drawn.image * 255).astype(np.uint8)


def test_match_command(tmp_path, capsys):
    ref, query = tmp_path / "ref", tmp_path / "query"
    ref.mkdir()
    query.mkdir()
    for seed in range(4):
        cv2.imwrite(str(ref / f"r{seed}.png"), _phantom(seed))
    cv2.imwrite(str(query / "a.jpg"), _phantom(1), [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(query / "b.png"), _phantom(50))
    (query / "c.png").write_bytes(b"")  # unreadable
    out = tmp_path / "m.csv"
    argv = ["match", "--query", str(query), "--reference", str(ref), "--out", str(out)]

    assert cli.main(argv) == 1  # fail at the unreadable image, one line, no traceback
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("cxrkit match: error:") and "c.png" in err
    assert "Traceback" not in err

    assert cli.main([*argv, "--on-error", "skip", "--index", str(tmp_path / "i.npz")]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "3 queries, 0 exact, 1 by fingerprint, 1 unmatched, 0 ambiguous" in printed
    assert "fingerprinted 4/4 reference images" in captured.err
    assert "fingerprinted 3/3 query images" in captured.err
    rows = list(csv.DictReader(out.open()))
    assert [(r["query"], r["reference_image_id"], r["method"], r["status"]) for r in rows] == [
        ("a", "r1", "fingerprint", "matched"),
        ("b", "", "", "unmatched"),
    ]
    assert list(rows[0]) == [
        "query",
        "reference_image_id",
        "method",
        "score",
        "status",
        "candidates",
    ]
    report = json.loads((tmp_path / "m_report.json").read_text())
    assert report["counts"]["skipped"] == 1 and report["unmatched"] == ["b"]
    errors = list(csv.DictReader((tmp_path / "m_errors.csv").open()))
    assert [e["image_id"] for e in errors] == ["c"]

    # a bad threshold is a configuration error, not a traceback
    assert cli.main([*argv, "--min-correlation", "2"]) == 1
    assert "min_correlation" in capsys.readouterr().err


def test_match_missing_reference(tmp_path, capsys):
    (tmp_path / "q").mkdir()
    code = cli.main(
        [
            "match",
            "--query",
            str(tmp_path / "q"),
            "--reference",
            str(tmp_path / "none.parquet"),
            "--out",
            str(tmp_path / "m.csv"),
        ]
    )
    assert code == 1 and "none.parquet" in capsys.readouterr().err
