"""Screening: the thesis' confusion matrix, reference rules, risk groups."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrkit.errors import ConfigError, DataError
from cxrkit.eval import screening


def thesis_case(record):
    """The thesis' internal test set: AI-normal/ref-normal 109, AI-normal/ref-abnormal 4,
    AI-abnormal/ref-normal 53, AI-abnormal/ref-abnormal 1325; the 4 misses get findings."""
    records, scores = [], []
    missed_findings = [
        {"Pneumothorax": 1},
        {"Consolidation": 1},
        {"Pleural_Effusion": 1, "Consolidation": 1},
        {"Cardiomegaly": 1, "Atelectasis": 1},
    ]
    cells = [
        (109, "normal", 0.2),
        (4, "abnormal", 0.3),
        (53, "normal", 0.7),
        (1325, "abnormal", 0.9),
    ]
    n = 0
    for count, reference, score in cells:
        for k in range(count):
            if reference == "normal":
                labels = {"No Finding": 1}
            elif score < 0.5:
                labels = missed_findings[k]
            else:
                labels = {"Nodule": 1, "Aortic enlargement": int(k % 2)}
            records.append(record(f"{n:05d}", labels=labels))
            scores.append(score)
            n += 1
    preds = pd.DataFrame({"image_id": [r.image_id for r in records], "score": scores})
    return records, preds


def test_thesis_confusion_matrix(record):
    records, preds = thesis_case(record)
    result = screening.evaluate(preds, records, threshold=0.5, n_bootstrap=0)
    point = result["operating_points"]["at_threshold"]
    assert point["ai_normal_ref_normal"] == 109
    assert point["ai_normal_ref_abnormal"] == 4
    assert point["ai_abnormal_ref_normal"] == 53
    assert point["ai_abnormal_ref_abnormal"] == 1325
    assert point["sensitivity"]["value"] == 1325 / 1329
    assert point["specificity"]["value"] == 109 / 162
    lo, hi = point["sensitivity"]["ci"]
    assert lo < 1325 / 1329 < hi <= 1
    assert point["ai_normal_fraction"] == pytest.approx(113 / 1491)
    groups = point["risk_groups"]
    assert (groups["critical"]["n_missed"], groups["urgent"]["n_missed"]) == (1, 2)
    assert groups["non-urgent"]["n_missed"] == 1 and groups["cardiomegaly"]["n_missed"] == 1
    assert groups["critical"]["missed_examples"] == ["00109"]
    # each miss once, by its most severe group: the cardiomegaly + atelectasis image is non-urgent
    assert point["misses_by_most_severe_group"] == {
        "critical": 1,
        "urgent": 2,
        "non-urgent": 1,
        "cardiomegaly": 0,
        "other": 0,
    }
    assert groups["urgent"]["n_abnormal"] == 2 + 1325  # nodules are urgent
    assert groups["other"]["n_abnormal"] == 662  # "Aortic enlargement" is in no group
    assert result["settings"]["findings_in_other_group"] == ["Aortic enlargement"]


def test_target_sensitivity_operating_point(record):
    records, preds = thesis_case(record)
    result = screening.evaluate(preds, records, n_bootstrap=50)
    point = result["operating_points"]["at_target_sensitivity"]
    # 0.9 already reaches 1325/1329 = 0.997 >= 0.99, and it is the highest such threshold
    assert point["threshold"] == 0.9
    assert point["ai_abnormal_ref_normal"] == 0 and point["ai_normal_ref_abnormal"] == 4
    assert "at_threshold" not in result["operating_points"]
    lo, hi = result["auroc"]["ci"]
    assert lo <= result["auroc"]["value"] <= hi


def test_reference_rules(record):
    assert screening.reference_abnormal(record("a", labels={"No Finding": 1})) is False
    assert screening.reference_abnormal(record("b", labels={"No finding": 1})) is False
    assert screening.reference_abnormal(record("c", labels={"Mass": 0, "Effusion": 0})) is False
    assert screening.reference_abnormal(record("d", labels={"Mass": 1, "No Finding": 0})) is True
    assert screening.reference_abnormal(record("e", labels={})) is None
    assert screening.reference_abnormal(record("f", labels={"Mass": 0})) is False


def test_unlabelled_images_are_counted(record):
    records = [record("a", labels={"Mass": 1}), record("b", labels={"No Finding": 1}), record("c")]
    preds = pd.DataFrame({"image_id": ["a", "b", "c"], "score": [0.9, 0.1, 0.5]})
    result = screening.evaluate(preds, records, threshold=0.5, n_bootstrap=0)
    assert result["counts"]["n_unlabelled"] == 1 and result["counts"]["n_images"] == 2
    assert result["issues"]["images_without_labels"]["examples"] == ["c"]
    assert result["auroc"]["value"] == 1.0


def test_thesis_table_2_rates():
    """Thesis Table 2, internal set: 109 / 4 / 53 / 1325 (AI normal/abnormal x reference)."""
    rates = screening.confusion_summary(
        ai_normal_ref_normal=109,
        ai_normal_ref_abnormal=4,
        ai_abnormal_ref_normal=53,
        ai_abnormal_ref_abnormal=1325,
    )
    sens, spec, acc = rates["sensitivity"], rates["specificity"], rates["accuracy"]
    assert (sens["hits"], sens["total"], sens["value"]) == (1325, 1329, 1325 / 1329)
    assert (spec["hits"], spec["total"], spec["value"]) == (109, 162, 109 / 162)
    assert (acc["hits"], acc["total"]) == (1434, 1491)
    # exact interval: 0 misses of n gives the closed-form upper end 1 - (alpha / 2) ** (1 / n)
    none_missed = screening.confusion_summary(
        ai_normal_ref_normal=0,
        ai_normal_ref_abnormal=0,
        ai_abnormal_ref_normal=0,
        ai_abnormal_ref_abnormal=20,
    )["sensitivity"]["ci"]
    assert none_missed[1] == 1.0 and none_missed[0] == pytest.approx(0.025 ** (1 / 20))
    lo, hi = sens["ci"]
    assert lo < 1325 / 1329 < hi < 1
    empty = screening.confusion_summary(
        ai_normal_ref_normal=0,
        ai_normal_ref_abnormal=0,
        ai_abnormal_ref_normal=0,
        ai_abnormal_ref_abnormal=3,
    )["specificity"]
    assert empty["ci"] is None and empty["value"] != empty["value"]
    with pytest.raises(ValueError, match="non-negative"):
        screening.confusion_summary(
            ai_normal_ref_normal=-1,
            ai_normal_ref_abnormal=0,
            ai_abnormal_ref_normal=0,
            ai_abnormal_ref_abnormal=0,
        )


def test_risk_groups_from_yaml(tmp_path, record):
    path = tmp_path / "groups.yaml"
    path.write_text("critical: [Mass]\nroutine: [Nodule, Cardiomegaly]\n")
    groups = screening.load_risk_groups(path)
    assert groups == {"critical": ("Mass",), "routine": ("Nodule", "Cardiomegaly")}
    records = [
        record("a", labels={"Mass": 1}),
        record("b", labels={"nodule": 1}),
        record("c", labels={"No Finding": 1}),
    ]
    preds = pd.DataFrame({"image_id": ["a", "b", "c"], "score": [0.1, 0.1, 0.1]})
    result = screening.evaluate(preds, records, threshold=0.5, risk_groups=groups, n_bootstrap=0)
    worst = result["operating_points"]["at_threshold"]["misses_by_most_severe_group"]
    assert worst == {"critical": 1, "routine": 1, "other": 0}
    # a spelling no image has (Cardiomegaly) is listed; the group still matches by Nodule
    assert result["issues"]["risk_group_findings_not_in_labels"] == {
        "count": 1, "examples": ["Cardiomegaly"],
    }  # fmt: skip
    # a group none of whose findings any image has a label for (a misspelling, another dataset's
    # names) would stay empty: refused, naming the file and the group
    typo = {"critical": ("Mas", "Masses"), "routine": ("Nodule",)}
    with pytest.raises(DataError, match=r"groups.yaml: no evaluated image has a label for any "
                       r"finding of group 'critical': Mas, Masses"):  # fmt: skip
        screening.evaluate(
            preds, records, threshold=0.5, risk_groups=typo, risk_groups_source=str(path),
            n_bootstrap=0,
        )  # fmt: skip
    # the default table names findings of several datasets: not checked
    default = screening.evaluate(preds, records, threshold=0.5, n_bootstrap=0)
    assert "risk_group_findings_not_in_labels" not in default["issues"]
    path.write_text("critical: [Mass]\nurgent: [mass]\n")
    with pytest.raises(ConfigError, match="'mass' is in both 'critical' and 'urgent'"):
        screening.load_risk_groups(path)
    path.write_text("critical: Mass\n")
    with pytest.raises(ConfigError, match="must list findings"):
        screening.load_risk_groups(path)
