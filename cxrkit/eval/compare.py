"""The KCR table: Model 1 vs Model 2 on one manifest, from the metrics of this package.

One row per finding and one for the mean over findings, with both models' AUROC on all images, on
AP and on PA films, the difference Model 2 - Model 1 on each with its interval and p-value (DeLong
per finding, patient bootstrap for the mean; :func:`cxrkit.eval.classification.compare`), each
model's gap AP - PA and its p-value, and the change of the gap from Model 1 to Model 2 with its
interval and p-value (:func:`cxrkit.eval.views.evaluate`), the test behind each p and the
bootstrap's p floor. No metric is computed here.

Findings given as groups (``"Nodule/Mass=Nodule|Mass"``, as a training config lists them, or
carried by the predictions' ``members`` column) are scored against a label derived from the
records: 1 if any member is 1, 0 if every labelled member is 0 (:mod:`cxrkit.data.findings`, as the
datasets do).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxrkit.data.records import Record
from cxrkit.io import atomic_write

COLUMNS = (
    "finding",
    "n",
    "n_ap",
    "n_pa",
    "auroc_model1",
    "auroc_model2",
    "auroc_difference",
    "auroc_difference_ci_low",
    "auroc_difference_ci_high",
    "auroc_p_value",
    "auroc_ap_model1",
    "auroc_ap_model2",
    "auroc_ap_difference",
    "auroc_ap_difference_ci_low",
    "auroc_ap_difference_ci_high",
    "auroc_ap_p_value",
    "auroc_pa_model1",
    "auroc_pa_model2",
    "auroc_pa_difference",
    "auroc_pa_difference_ci_low",
    "auroc_pa_difference_ci_high",
    "auroc_pa_p_value",
    "gap_model1",
    "gap_p_value_model1",
    "gap_model2",
    "gap_p_value_model2",
    "gap_change",
    "gap_change_ci_low",
    "gap_change_ci_high",
    "gap_change_p_value",
    "p_method",
    "p_floor",
)
MEAN_ROW = "mean"
NOTES = (
    "auroc_*_difference = Model 2 - Model 1 on all images, on AP and on PA images, with the "
    "patient-bootstrap percentile interval; gap = AUROC(AP) - AUROC(PA) of one model; "
    "gap_change = gap of Model 2 - gap of Model 1 (paired patient bootstrap).",
    "p_method names the test behind each row's auroc_*_p_value and gap_p_value_* (per finding: "
    "DeLong, paired for the model differences and unpaired for the AP-PA gap, with the "
    "distribution named; mean row: the patient bootstrap). gap_change_p_value is always the "
    "bootstrap.",
    "p_floor is the smallest p-value the bootstrap replicates can give (2 / (B + 1), two-sided): "
    "a bootstrap p-value equal to it means 'p <= p_floor'.",
)


def _value(x: Any) -> float:
    if isinstance(x, dict):
        x = x.get("value")
    return math.nan if x is None else float(x)


def _ci(x: Any, i: int) -> float:
    ci = x.get("ci") if isinstance(x, dict) else None
    return math.nan if not ci else float(ci[i])


def _difference_columns(prefix: str, c: dict[str, Any]) -> dict[str, float]:
    return {
        f"{prefix}_model1": _value(c["auroc_a"]),
        f"{prefix}_model2": _value(c["auroc_b"]),
        f"{prefix}_difference": _value(c["difference"]),
        f"{prefix}_difference_ci_low": _ci(c["difference"], 0),
        f"{prefix}_difference_ci_high": _ci(c["difference"], 1),
        f"{prefix}_p_value": _value(c.get("p_value")),
    }


def kcr_table(comparison: dict[str, Any], gaps: dict[str, Any]) -> pd.DataFrame:
    """Merge the results of ``classification.compare`` (with ``views=("AP", "PA")``) and
    ``views.evaluate`` (with model B) into one row per finding plus a ``mean`` row, columns
    :data:`COLUMNS`."""
    rows = []
    names = [*comparison["findings"], MEAN_ROW]
    per_view = comparison.get("per_view", {})
    gap_test = gaps["settings"].get("delong_distribution", "normal z")
    for name in names:
        key = "mean" if name == MEAN_ROW else "per_finding"

        def pick(result: dict[str, Any], key: str = key, name: str = name) -> dict[str, Any]:
            return result["mean"] if key == "mean" else result["per_finding"][name]

        c = pick(comparison)
        g = pick(gaps)
        b = g.get("model_b", {})
        row: dict[str, Any] = {
            "finding": name,
            "n": c.get("n", comparison.get("n_images")),
            **_difference_columns("auroc", c),
        }
        for view in ("AP", "PA"):
            v = view.lower()
            if view in per_view:
                pv = pick(per_view[view])
                row[f"n_{v}"] = pv.get("n")
                row.update(_difference_columns(f"auroc_{v}", pv))
            else:
                row[f"n_{v}"] = g.get(f"n_{v}")
                row[f"auroc_{v}_model1"] = _value(g[f"auroc_{v}"])
                row[f"auroc_{v}_model2"] = _value(b.get(f"auroc_{v}"))
        row.update(
            {
                "gap_model1": _value(g["gap"]),
                "gap_p_value_model1": _value(g.get("p_value")),
                "gap_model2": _value(b.get("gap")),
                "gap_p_value_model2": _value(b.get("p_value")),
                "gap_change": _value(g.get("gap_change")),
                "gap_change_ci_low": _ci(g.get("gap_change"), 0),
                "gap_change_ci_high": _ci(g.get("gap_change"), 1),
                "gap_change_p_value": _value(g.get("p_gap_change")),
                "p_method": "patient bootstrap"
                if name == MEAN_ROW
                else f"DeLong (difference: paired, normal z; gap: unpaired, {gap_test})",
                "p_floor": _value(gaps["settings"].get("p_floor")),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def compare_models(
    predictions_model1: pd.DataFrame,
    predictions_model2: pd.DataFrame,
    records: Sequence[Record],
    *,
    findings: Sequence[str] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    allow_missing: bool = False,
    delong_distribution: str = "normal",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The KCR table of two models' classification predictions on the same ``records``.

    Args:
        predictions_model1, predictions_model2: ``image_id, finding, score`` tables.
        records: the manifest records to score against (one split).
        findings: entries to compare (group syntax allowed); default every finding both predict.
        n_bootstrap, seed, allow_missing: as in :func:`cxrkit.eval.classification.compare`.
        delong_distribution: ``"normal"`` or ``"t"`` (R pROC) for the per-finding unpaired
            DeLong test of the AP-PA gap (:func:`cxrkit.eval.views.evaluate`).

    Returns:
        ``(table, details)``: the table (:func:`kcr_table`) and the two raw eval results.
    """
    from cxrkit.eval import classification, views

    settings = {
        "findings": findings,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "allow_missing": allow_missing,
    }
    comparison = classification.compare(
        predictions_model1, predictions_model2, records, views=("AP", "PA"), **settings
    )
    gaps = views.evaluate(
        predictions_model1,
        records,
        predictions_b=predictions_model2,
        delong_distribution=delong_distribution,
        **settings,
    )
    return kcr_table(comparison, gaps), {"comparison": comparison, "view_gaps": gaps}


def write_table(table: pd.DataFrame, details: dict[str, Any], path: str | Path) -> Path:
    """Write the table as CSV at ``path`` and the raw results beside it (``.json``), atomically."""
    path = Path(path)
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))
    atomic_write(path.with_suffix(".json"), json.dumps(details, indent=2, default=_json_default))
    return path


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
