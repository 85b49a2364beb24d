"""AP/PA view gaps of AUROC: the KCR question, "does the model work as well on AP as on PA films?".

For each finding and for the mean over findings: AUROC on AP images, AUROC on PA images, the gap
``AP - PA`` with its patient-bootstrap interval and a p-value for "gap != 0", and, given a second
model scored on the same images, the change of the gap (``gap_B - gap_A``) with a paired bootstrap
p-value (the KCR abstract's table: "Model 1 gap, Model 2 gap, p").

The per-finding p-value of a gap is DeLong's unpaired test (AP and PA images are disjoint sets); the
mean's gap and every gap change use the bootstrap, because they combine correlated AUROCs. DeLong
assumes the two sets independent; when patients have both AP and PA films, ``p_bootstrap`` (which
resamples patients, keeping their AP and PA films together) is the one to trust. Images
whose view is ``LL`` or ``unknown`` are not in either group and are reported as counts. Views come
from the manifest or from a separate mapping file (:func:`read_view_map`, :func:`apply_view_map`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.data.records import VIEWS, Record
from cxrkit.errors import ConfigError, DataError, MissingFileError
from cxrkit.eval import bootstrap, classification
from cxrkit.eval.predictions import Issues

GAP_VIEWS = ("AP", "PA")  # gap = AUROC(AP) - AUROC(PA)


def read_view_map(path: str | Path) -> dict[str, str]:
    """Read a CSV (or Parquet) with columns ``image_id, view`` (view in PA / AP / LL / unknown).

    Raises:
        MissingFileError: no such file.
        DataError: a missing column, an invalid view or an image listed twice with different views.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: view mapping file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the view mapping ({exc})") from exc
    missing = [c for c in ("image_id", "view") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: view mapping needs columns image_id, view; missing {missing}")
    df = df.astype({"image_id": str, "view": str})
    bad = ~df["view"].isin(VIEWS)
    if bad.any():
        rows = [f"line {i + 2}: {v!r}" for i, v in df.loc[bad, "view"].items()][:5]
        raise DataError(f"{path}: views must be one of {VIEWS}; found {rows}")
    conflicting = df.groupby("image_id")["view"].nunique()
    conflicting = conflicting[conflicting > 1]
    if len(conflicting):
        raise DataError(
            f"{path}: images listed with different views: {list(conflicting.index[:5])}"
        )
    return dict(zip(df["image_id"], df["view"], strict=True))


def apply_view_map(
    records: Sequence[Record], mapping: Mapping[str, str]
) -> tuple[list[Record], dict[str, int]]:
    """Records with the view taken from ``mapping`` where it names the image, else kept.

    Returns the new records and counts: ``mapped`` (records whose view came from the mapping),
    ``not_in_mapping`` (records kept as in the manifest) and ``mapping_ids_not_in_manifest``.
    """
    ids = {r.image_id for r in records}
    out = [
        dataclasses.replace(r, view=mapping[r.image_id]) if r.image_id in mapping else r
        for r in records
    ]
    mapped = sum(r.image_id in mapping for r in records)
    return out, {
        "mapped": mapped,
        "not_in_mapping": len(records) - mapped,
        "mapping_ids_not_in_manifest": len(set(mapping) - ids),
    }


def _gap_row(
    table: classification.ScoreTable,
    scores: np.ndarray,
    f: int,
    usable: np.ndarray,
    *,
    distribution: str,
) -> dict[str, object]:
    """Point AUROCs on AP and PA images for finding ``f`` and DeLong's unpaired test of the gap."""
    row: dict[str, object] = {}
    groups = {}
    for view in GAP_VIEWS:
        m = usable[:, f] & (table.views == view)
        y, s = table.labels[m, f], scores[m, f]
        groups[view] = (y, s)
        row[f"n_{view.lower()}"] = int(m.sum())
        row[f"n_{view.lower()}_positive"] = int((y == 1).sum())
        row[f"auroc_{view.lower()}"] = classification.auroc(y_true=y, y_score=s)
    (y_ap, s_ap), (y_pa, s_pa) = groups["AP"], groups["PA"]
    enough = all(min((y == 1).sum(), (y == 0).sum()) >= 2 for y in (y_ap, y_pa))
    if enough:
        # difference = AP - PA: "a" is PA, "b" is AP
        test = classification.delong_test_unpaired(
            y_true_a=y_pa, score_a=s_pa, y_true_b=y_ap, score_b=s_ap, distribution=distribution
        )
        row["z"], row["p_value"], row["df"] = test["z"], test["p_value"], test["df"]
    else:
        row["z"], row["p_value"], row["df"] = math.nan, math.nan, math.nan
    row["p_value_test"] = "DeLong unpaired, " + classification.DISTRIBUTION_NAMES[distribution]
    return row


def evaluate(
    predictions: pd.DataFrame,
    records: Sequence[Record],
    *,
    predictions_b: pd.DataFrame | None = None,
    findings: Sequence[str] | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    allow_missing: bool = False,
    delong_distribution: str = "normal",
) -> dict[str, object]:
    """AP and PA AUROCs, their gap per finding and for the mean, and (with model B) the gap change.

    Args:
        predictions: model A, ``image_id, finding, score``.
        records: manifest records; their ``view`` decides the group (apply a mapping first).
        predictions_b: optional model B scored on the same images.
        findings, n_bootstrap, seed, level, allow_missing: as in
            :func:`cxrkit.eval.classification.evaluate`.
        delong_distribution: reference distribution of the per-finding unpaired DeLong test:
            ``"normal"`` (z) or ``"t"`` (R pROC's Student t with Welch df;
            :func:`cxrkit.eval.classification.delong_test_unpaired`). Each row names it under
            ``p_value_test``.

    Returns:
        ``kind: "view_gaps"``, ``counts`` (images per view, among them ``unknown`` and ``LL`` which
        are in neither group), ``per_finding`` and ``mean``. Each row has ``auroc_ap``,
        ``auroc_pa``, ``gap`` (``{"value", "ci", "n_undefined"}``), ``p_value`` (DeLong unpaired
        per finding, bootstrap for the mean) and ``p_bootstrap``; with model B also ``model_b`` (the
        same fields), ``gap_change`` (B - A, with interval) and ``p_gap_change``. Every
        bootstrap p-value comes with ``p_floor`` (``p_floor_gap_change``), the smallest p its
        replicates can give (:func:`cxrkit.eval.bootstrap.p_floor`).
    """
    bootstrap.check_settings(n_bootstrap=n_bootstrap, level=level)
    if delong_distribution not in classification.DELONG_DISTRIBUTIONS:
        raise ConfigError(
            f"delong_distribution {delong_distribution!r} is not one of "
            f"{classification.DELONG_DISTRIBUTIONS}"
        )
    tables = classification.model_tables(
        predictions,
        records,
        predictions_b=predictions_b,
        findings=findings,
        allow_missing=allow_missing,
    )
    t0 = tables[0]
    usable = ~np.isnan(t0.labels)
    for t in tables:
        usable &= ~np.isnan(t.scores)
    subsets = {view: t0.views == view for view in GAP_VIEWS}
    reps = None
    if n_bootstrap:
        reps = classification.bootstrap_aurocs(
            labels=t0.labels,
            scores=[t.scores for t in tables],
            groups=t0.patient_ids,
            subsets=subsets,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )

    def gap_reps(k: int) -> np.ndarray | None:
        return None if reps is None else reps[(k, "AP")] - reps[(k, "PA")]

    per_finding: dict[str, object] = {}
    for f, finding in enumerate(t0.findings):
        rows = []
        for k, t in enumerate(tables):
            row = _gap_row(t0, t.scores, f, usable, distribution=delong_distribution)
            g = gap_reps(k)
            row["gap"] = bootstrap.estimate(
                row["auroc_ap"] - row["auroc_pa"], None if g is None else g[:, f], level=level
            )
            boot = bootstrap.p_value_entry(None if g is None else g[:, f])
            row["p_bootstrap"], row["p_floor"] = boot["p_value"], boot["p_floor"]
            rows.append(row)
        entry = rows[0]
        if len(rows) == 2:
            entry["model_b"] = rows[1]
            change = rows[1]["gap"]["value"] - rows[0]["gap"]["value"]
            change_reps = None if reps is None else gap_reps(1)[:, f] - gap_reps(0)[:, f]
            entry["gap_change"] = bootstrap.estimate(change, change_reps, level=level)
            boot = bootstrap.p_value_entry(change_reps)
            entry["p_gap_change"] = boot["p_value"]
            entry["p_floor_gap_change"] = boot["p_floor"]
        per_finding[finding] = entry

    # mean over the findings whose AP and PA AUROCs are defined (the same for both models: they
    # are scored on the same images)
    included = np.array(
        [
            math.isfinite(per_finding[f]["auroc_ap"]) and math.isfinite(per_finding[f]["auroc_pa"])
            for f in t0.findings
        ],
        dtype=bool,
    )
    mean_rows, mean_reps = [], []
    for k in range(len(tables)):
        key_rows = [
            per_finding[f] if k == 0 else per_finding[f]["model_b"]
            for f, ok in zip(t0.findings, included, strict=True)
            if ok
        ]
        ap = float(np.mean([r["auroc_ap"] for r in key_rows])) if key_rows else math.nan
        pa = float(np.mean([r["auroc_pa"] for r in key_rows])) if key_rows else math.nan
        g = None
        if reps is not None:
            g = classification.mean_over_findings(
                reps[(k, "AP")], included
            ) - classification.mean_over_findings(reps[(k, "PA")], included)
        boot = bootstrap.p_value_entry(g)
        p = boot["p_value"]
        mean_rows.append(
            {
                "auroc_ap": ap,
                "auroc_pa": pa,
                "gap": bootstrap.estimate(ap - pa, g, level=level),
                "p_value": p,
                "p_bootstrap": p,
                "p_floor": boot["p_floor"],
                "p_value_test": "patient bootstrap",
            }
        )
        mean_reps.append(g)
    mean = mean_rows[0]
    if len(mean_rows) == 2:
        mean["model_b"] = mean_rows[1]
        change = mean_rows[1]["gap"]["value"] - mean_rows[0]["gap"]["value"]
        change_reps = None if reps is None else mean_reps[1] - mean_reps[0]
        mean["gap_change"] = bootstrap.estimate(change, change_reps, level=level)
        boot = bootstrap.p_value_entry(change_reps)
        mean["p_gap_change"] = boot["p_value"]
        mean["p_floor_gap_change"] = boot["p_floor"]
    mean["findings_included"] = [f for f, ok in zip(t0.findings, included, strict=True) if ok]

    issues = Issues()
    for t in tables:
        issues.merge(t.issues)
    return {
        "kind": "view_gaps",
        "settings": {
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "level": level,
            "gap": "AUROC(AP) - AUROC(PA)",
            "models": len(tables),
            "delong_distribution": classification.DISTRIBUTION_NAMES[delong_distribution],
            "p_floor": bootstrap.p_floor(n_bootstrap),
        },
        "counts": {view: int(np.sum(t0.views == view)) for view in VIEWS},
        "findings": t0.findings,
        "per_finding": per_finding,
        "mean": mean,
        "issues": issues.to_dict(),
    }
