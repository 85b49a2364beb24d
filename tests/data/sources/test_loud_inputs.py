"""Inputs that used to pass quietly: short or long CSV rows, view strings no table knows."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit.data.records import manifest_warnings, read_manifest
from cxrkit.data.sources.common import read_csv
from cxrkit.data.vocab import VIEW_UNRECOGNISED, unrecognised_view, view_warning
from cxrkit.errors import DataError


@pytest.mark.parametrize(
    ("text", "line", "fields"),
    [
        ("a,b,c\n1,2,3\n4,5\n", 3, 2),  # short: pandas fills the last cell with ""
        ("a,b,c\n1,2,3,4\n5,6,7\n", 2, 4),  # long: pandas makes column a the index
        ('a,b,c\n"x\ny",2,3\n4\n', 4, 1),  # a quoted newline: the line number still holds
    ],
)
def test_rows_with_the_wrong_number_of_fields(tmp_path: Path, text, line, fields) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"t\.csv:line {line}: {fields} fields where the header"):
        read_csv(path, what="test file")


@pytest.mark.parametrize(
    "text",
    [
        "a,b,c,\r\n1,2,3\r\n",  # NIH 2017: the header ends in a comma, the rows do not
        "a,b,c\n1,2,3,\n",  # a trailing empty field
        "a,b,c\n1,2,3\n\n\n",  # blank lines
    ],
)
def test_rows_that_are_fine(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert read_csv(path, required=("a", "b", "c"))["c"].tolist()[0] == "3"


def test_gzipped_short_row_is_found(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="line 3: 1 fields"):
        read_csv(path)


def test_unrecognised_view_and_its_warning() -> None:
    assert [unrecognised_view(v) for v in ("PA", "ap supine", "", None, " OBL ")] == [
        None,
        None,
        None,
        None,
        "OBL",
    ]
    assert view_warning([]) is None
    warning = view_warning(["OBL", "LLD", "OBL"])
    assert warning.startswith("3 images have a view cxrkit does not read as PA, AP or LL")
    assert "'OBL' 2, 'LLD' 1" in warning


def test_prepare_counts_unrecognised_views(tmp_path: Path, prepare) -> None:
    root = tmp_path / "h"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,patient_id,view"]
    for i, view in enumerate(["PA", "OBLIQUE", "AP", "oblique", "", "Swimmer"]):
        cv2.imwrite(str(root / f"i{i}.png"), rng.integers(0, 255, (32, 32), dtype=np.uint8))
        rows.append(f"i{i}.png,P{i},{view}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "m.parquet"
    code, stdout, err = prepare("csv", "--root", root, "--csv", "labels.csv", "--out", out)
    assert code == 0, err
    by_id = {r.image_id: r for r in read_manifest(out)}
    assert {i: r.view for i, r in by_id.items()} == {
        "i0": "PA",
        "i1": "unknown",
        "i2": "AP",
        "i3": "unknown",
        "i4": "unknown",
        "i5": "unknown",
    }
    raw = {i: r.meta.get(VIEW_UNRECOGNISED) for i, r in by_id.items()}
    # an empty view is not a misspelt one: only the three strings are counted
    assert raw == {"i0": None, "i1": "OBLIQUE", "i2": None, "i3": "oblique", "i4": None,
                   "i5": "Swimmer"}  # fmt: skip
    line = "3 images have a view cxrkit does not read as PA, AP or LL"
    assert f"warning: {line}" in stdout
    assert any(w.startswith(line) for w in manifest_warnings(out))


def test_strict_views_refuses_them(tmp_path: Path, prepare) -> None:
    root = tmp_path / "h"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8))
    (root / "labels.csv").write_text("path,patient_id,view\na.png,P1,OBLIQUE\n")
    out = tmp_path / "m.parquet"
    argv = ("csv", "--root", root, "--csv", "labels.csv", "--out", out)
    code, _, err = prepare(*argv, "--strict-views")
    assert code == 1 and "a.png: image 'a' has view 'OBLIQUE'" in err and not out.exists()
    code, _, err = prepare(*argv)
    assert code == 0, err
