"""The KCR table: Model 1 vs Model 2 on one manifest, from the metrics of this package.

One row per finding and one for the mean over findings, with both models' AUROC, the difference and
its p-value (DeLong per finding, patient bootstrap for the mean;
:func:`cxrkit.eval.classification.compare`), each model's AUROC on AP and on PA films, the gap
AP - PA and its p-value, and the change of the gap from Model 1 to Model 2 with its p-value
(:func:`cxrkit.eval.views.evaluate`). No metric is computed here.

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
    "auroc_model1",
    "auroc_model2",
    "auroc_difference",
    "auroc_difference_ci_low",
    "auroc_difference_ci_high",
    "auroc_p_value",
    "auroc_ap_model1",
    "auroc_pa_model1",
    "gap_model1",
    "gap_p_value_model1",
    "auroc_ap_model2",
    "auroc_pa_model2",
    "gap_model2",
    "gap_p_value_model2",
    "gap_change",
    "gap_change_p_value",
)
MEAN_ROW = "mean"


def _value(x: Any) -> float:
    if isinstance(x, dict):
        x = x.get("value")
    return math.nan if x is None else float(x)


def _ci(x: Any, i: int) -> float:
    ci = x.get("ci") if isinstance(x, dict) else None
    return math.nan if not ci else float(ci[i])


def kcr_table(comparison: dict[str, Any], gaps: dict[str, Any]) -> pd.DataFrame:
    """Merge the results of ``classification.compare`` and ``views.evaluate`` (with model B) into
    one row per finding plus a ``mean`` row, columns :data:`COLUMNS`."""
    rows = []
    names = [*comparison["findings"], MEAN_ROW]
    for name in names:
        c = comparison["mean"] if name == MEAN_ROW else comparison["per_finding"][name]
        g = gaps["mean"] if name == MEAN_ROW else gaps["per_finding"][name]
        b = g.get("model_b", {})
        rows.append(
            {
                "finding": name,
                "n": c.get("n", comparison.get("n_images")),
                "auroc_model1": _value(c["auroc_a"]),
                "auroc_model2": _value(c["auroc_b"]),
                "auroc_difference": _value(c["difference"]),
                "auroc_difference_ci_low": _ci(c["difference"], 0),
                "auroc_difference_ci_high": _ci(c["difference"], 1),
                "auroc_p_value": _value(c.get("p_value")),
                "auroc_ap_model1": _value(g["auroc_ap"]),
                "auroc_pa_model1": _value(g["auroc_pa"]),
                "gap_model1": _value(g["gap"]),
                "gap_p_value_model1": _value(g.get("p_value")),
                "auroc_ap_model2": _value(b.get("auroc_ap")),
                "auroc_pa_model2": _value(b.get("auroc_pa")),
                "gap_model2": _value(b.get("gap")),
                "gap_p_value_model2": _value(b.get("p_value")),
                "gap_change": _value(g.get("gap_change")),
                "gap_change_p_value": _value(g.get("p_gap_change")),
            }
        )
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
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The KCR table of two models' classification predictions on the same ``records``.

    Args:
        predictions_model1, predictions_model2: ``image_id, finding, score`` tables.
        records: the manifest records to score against (one split).
        findings: entries to compare (group syntax allowed); default every finding both predict.
        n_bootstrap, seed, allow_missing: as in :func:`cxrkit.eval.classification.compare`.

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
    comparison = classification.compare(predictions_model1, predictions_model2, records, **settings)
    gaps = views.evaluate(predictions_model1, records, predictions_b=predictions_model2, **settings)
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
