"""`cxrkit reproduce scxnn`: the table writers against hand counts, the thesis split, and the whole
chain at tiny scale on phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrkit import cli
from cxrkit.config import load
from cxrkit.data.records import Record, read_manifest
from cxrkit.multitask.config import MultiTaskConfig
from cxrkit.multitask.ensemble import member_frame
from cxrkit.multitask.screening import thesis_splits
from cxrkit.reproduce import scxnn

DISEASES = ["Pneumothorax", "Pleural Effusion=Pleural Effusion|Effusion", "Nodule", "Cardiomegaly"]
GROUPS = {
    "critical": ["Pneumothorax"],
    "urgent": ["Pleural Effusion", "Nodule"],
    "cardiomegaly": ["Cardiomegaly"],
}


def _record(image_id: str, labels: dict[str, int], *, masks=(), patient: str = "") -> Record:
    return Record(
        image_id=image_id,
        source="t",
        path=f"{image_id}.png",
        patient_id=patient or image_id,
        split="test",
        labels=labels,
        mask_paths={m: f"{image_id}.{m}.png" for m in masks},
        width=64,
        height=64,
    )


def _members(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(image_id, member, prediction) rows; probabilities follow the prediction."""
    columns = {"normal": 0, "target": 1, "other": 2}
    out = []
    for image_id, member, prediction in rows:
        p = np.full(3, 0.1)
        p[columns[prediction]] = 0.8
        out.append((image_id, member, *p, prediction))
    return pd.DataFrame(
        out, columns=["image_id", "member", "p_normal", "p_target", "p_other", "prediction"]
    )


def test_table2_writer_gives_the_thesis_rates() -> None:
    # thesis Table 2, internal: AI normal 109 / 4, AI abnormal 53 / 1325 (ref normal / abnormal)
    records, called = [], {}
    for count, abnormal_ref, abnormal_ai in ((109, 0, 0), (4, 1, 0), (53, 0, 1), (1325, 1, 1)):
        for _ in range(count):
            image_id = f"{len(records):05d}"
            labels = {"Nodule": 1} if abnormal_ref else {"No Finding": 1}
            records.append(_record(image_id, labels))
            called[image_id] = bool(abnormal_ai)
    ds = scxnn._Dataset(records=records, called_abnormal=called, members=_members([]))
    rows, rates = scxnn.table2_rows(ds, name="internal")
    assert [(r["AI"], r["ref normal"], r["ref abnormal"]) for r in rows] == [
        ("normal", 109, 4),
        ("abnormal", 53, 1325),
    ]
    assert rows[0]["sensitivity"] == "1325/1329" and rows[0]["specificity"] == "109/162"
    assert rates["sensitivity"]["value"] == 1325 / 1329
    assert rates["specificity"]["value"] == 109 / 162
    assert rows[1]["sensitivity"].startswith("0.997 [")


def test_table3_counts_each_abnormal_image_once_by_its_most_severe_group() -> None:
    records = [
        _record("a", {"Pneumothorax": 1, "Nodule": 1}),  # critical (most severe), target
        _record("b", {"Effusion": 1}),  # urgent, its member says "other"
        _record("c", {"Nodule": 1}),  # urgent, called normal
        _record("d", {"Cardiomegaly": 1}),  # cardiomegaly, target
        _record("e", {"Fibrosis": 1}),  # no screening disease: left out
        _record("f", {"No Finding": 1}),  # normal: left out
    ]
    called = {"a": True, "b": True, "c": False, "d": True, "e": True, "f": False}
    members = _members(
        [
            ("a", "Pneumothorax", "target"),
            ("a", "Nodule", "other"),
            ("b", "Pleural Effusion", "other"),
            ("c", "Nodule", "normal"),
            ("d", "Cardiomegaly", "target"),
        ]
    )
    ds = scxnn._Dataset(records=records, called_abnormal=called, members=members)
    counts = scxnn.table3_counts(ds, diseases=DISEASES, groups=GROUPS)
    assert counts == {
        "Normal": {"critical": 0, "urgent": 1, "cardiomegaly": 0},
        "Target": {"critical": 1, "urgent": 0, "cardiomegaly": 1},
        "Others": {"critical": 0, "urgent": 1, "cardiomegaly": 0},
    }


def test_table9_fractions_per_member_on_unseen_findings() -> None:
    records = [
        _record("p1", {"Pneumonia": 1}),
        _record("p2", {"Pneumonia": 1}),
        _record("p3", {"Pneumonia": 1, "Nodule": 1}),  # has a member's disease: not unseen
        _record("n", {"No Finding": 1}),
    ]
    rows = [(i, m, "other") for i in ("p1", "p2", "p3") for m in ("Pneumothorax", "Nodule")]
    rows[0] = ("p1", "Pneumothorax", "normal")
    ds = scxnn._Dataset(
        records=records,
        called_abnormal=dict.fromkeys(["p1", "p2", "p3", "n"], True),
        members=_members(rows),
    )
    (row,) = scxnn.table9_rows(ds, diseases=["Pneumothorax", "Nodule"])
    assert row["finding"] == "Pneumonia" and row["n"] == 2
    assert (row["Pneumothorax: Normal"], row["Pneumothorax: Others"]) == (0.5, 0.5)
    assert (row["Nodule: Target"], row["Nodule: Others"]) == (0.0, 1.0)


def test_table1_counts_hard_and_weak_labels() -> None:
    records = [
        _record("a", {"Effusion": 1}, masks=["Effusion"]),
        _record("b", {"Pleural Effusion": 1}),
        _record("c", {"Nodule": 1, "Effusion": 1}, masks=["Nodule"]),
        _record("n", {"No Finding": 1}),
    ]
    rows = scxnn.table1_rows(records, diseases=DISEASES, groups=GROUPS)
    by_class = {r["class"]: r for r in rows}
    assert (by_class["Pleural Effusion"]["hard"], by_class["Pleural Effusion"]["weak"]) == (1, 2)
    assert (by_class["Nodule"]["hard"], by_class["Nodule"]["total"]) == (1, 1)
    assert by_class["Pleural Effusion"]["thesis_hard"] == 1364
    assert by_class["Normal"]["total"] == 1 and by_class["Normal"]["thesis_total"] == 10137


def test_thesis_split_keeps_weak_labels_in_training() -> None:
    config = load(
        MultiTaskConfig,
        overrides=["task=screening", "screening.diseases=[Nodule,Pneumothorax]"],
    )
    records = []
    for i in range(200):
        kind = i % 4
        patient = f"p{i // 2}"  # two images per patient
        if kind == 0:
            records.append(_record(f"h{i}", {"Nodule": 1}, masks=["Nodule"], patient=patient))
        elif kind == 1:
            records.append(_record(f"n{i}", {"No Finding": 1}, patient=patient))
        else:
            records.append(_record(f"w{i}", {"Pneumothorax": 1}, patient=patient))
    out = thesis_splits(records, config=config, seed=0)
    assert [r.image_id for r in out] == [r.image_id for r in records]
    hard = [r for r in out if not r.image_id.startswith("w")]
    share = {s: sum(r.split == s for r in hard) / len(hard) for s in ("train", "val", "test")}
    assert share == pytest.approx({"train": 0.8, "val": 0.1, "test": 0.1}, abs=0.03)
    by_patient: dict[str, set[str]] = {}
    for r in out:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())  # no patient in two splits
    # a weak image is in training unless its patient's hard / normal image went elsewhere
    hard_split = {r.patient_id: r.split for r in hard}
    for r in out:
        if r.image_id.startswith("w"):
            assert r.split == hard_split.get(r.patient_id, "train")


def test_member_frame_is_each_members_softmax() -> None:
    logits = np.array([[0.0, 1.0, 2.0, 3.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    frame = member_frame(["x", "y"], logits, diseases=["Nodule", "Effusion"])
    assert list(frame["image_id"]) == ["x", "x", "y", "y"]
    assert list(frame["member"]) == ["Nodule", "Effusion"] * 2
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(
        frame.iloc[0][["p_normal", "p_target", "p_other"]].to_numpy(float), e / e.sum()
    )
    np.testing.assert_allclose(frame[["p_normal", "p_target", "p_other"]].sum(axis=1), 1.0)
    assert list(frame["prediction"]) == ["other", "normal", "normal", "other"]
    two = member_frame(["x"], np.array([[0.0, 1.0, 1.0, 0.0]]), diseases=["A", "B"], classes=2)
    assert "p_other" not in two and list(two["prediction"]) == ["target", "normal"]


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process contend and run
    tiny convolutions several times slower; the results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_run_writes_the_thesis_tables(tmp_path: Path, one_thread: None) -> None:
    """The whole chain on phantoms (default test)."""
    out = tmp_path / "scxnn"
    assert cli.main(["reproduce", "scxnn", "--scale", "tiny", "--out", str(out)]) == 0
    for dataset in ("internal", "external"):
        for k in (1, 2, 3, 9):
            assert (out / "tables" / dataset / f"table{k}.md").is_file(), (dataset, k)
    t2 = pd.read_csv(out / "tables" / "internal" / "table2.csv")
    assert list(t2.columns) == [
        "dataset",
        "AI",
        "ref normal",
        "ref abnormal",
        "sensitivity",
        "specificity",
        "accuracy",
    ]
    split = read_manifest(out / "data" / "scxnn_manifest.parquet")
    test = [r for r in split if r.split == "test"]
    assert int(t2[["ref normal", "ref abnormal"]].to_numpy().sum()) == len(test)
    summary = json.loads((out / "tables" / "internal" / "summary.json").read_text())
    # Table 3 counts each test image with a screening disease once; its Normal row is those the
    # ensemble called normal (SVM decision < 0)
    scores = pd.read_csv(out / "predictions" / "3class" / "internal.csv")
    score = dict(zip(scores["image_id"], scores["score"], strict=True))
    listed = [
        r
        for r in test
        if any(
            r.labels.get(n) == 1 for n in ("Pneumothorax", "Effusion", "Nodule", "Consolidation")
        )
    ]
    assert sum(sum(row.values()) for row in summary["table3"].values()) == len(listed)
    assert sum(summary["table3"]["Normal"].values()) == sum(score[r.image_id] < 0 for r in listed)
    t3 = pd.read_csv(out / "tables" / "internal" / "table3.csv")
    assert list(t3["AI"]) == ["Normal", "Target", "Others"]
    assert list(t3.columns) == ["AI", "critical", "urgent"]
    members = pd.read_csv(out / "predictions" / "3class" / "internal_members.csv")
    assert len(members) == 4 * len(test)  # one row per image x member
    assert set(members["member"]) == {"Pneumothorax", "Pleural Effusion", "Nodule", "Consolidation"}
    np.testing.assert_allclose(members[["p_normal", "p_target", "p_other"]].sum(axis=1), 1.0)
    t9 = pd.read_csv(out / "tables" / "external" / "table9.csv")
    assert set(t9["finding"]) <= {"Fibrosis", "Mass"}
    assert (out / "figures" / "gradcam.png").stat().st_size > 0
    ensemble = json.loads((out / "ensemble-3class" / "ensemble.json").read_text())
    assert ensemble["operating_point"] == "svm" and ensemble["threshold"] == 0.0
    # rerun: every stage is reused
    assert cli.main(["reproduce", "scxnn", "--scale", "tiny", "--out", str(out)]) == 0
    assert "report.md" in {p.name for p in out.iterdir()}


def test_paper_scale_needs_data(tmp_path: Path) -> None:
    from cxrkit.errors import ConfigError

    with pytest.raises(ConfigError, match="--manifest"):
        scxnn.run(out_dir=tmp_path / "x", scale="paper")
    with pytest.raises(ConfigError, match="NAME=MANIFEST"):
        from cxrkit.cli.reproduce.scxnn import _external

        _external(["nonsense"])
