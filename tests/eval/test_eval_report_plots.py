"""Plots: legends carry each curve's AUROC / AP; models side by side in one figure."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cxrkit.data.records import Box
from cxrkit.eval import classification, detection, report


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_roc_legend_gives_the_auroc_of_each_curve(record) -> None:
    # MONAI's hand-checkable case on AP films (0.875) and a perfect ranking on PA films
    records = [record(f"a{i}", labels={"Mass": y}, view="AP") for i, y in enumerate([0, 1, 0, 1])]
    records += [record(f"p{i}", labels={"Mass": y}, view="PA") for i, y in enumerate([0, 1])]
    scores = [0.5, 0.5, 0.2, 8.3, 0.1, 0.9]
    preds = pd.DataFrame(
        {"image_id": [r.image_id for r in records], "finding": "Mass", "score": scores}
    )
    result = classification.evaluate(preds, records, n_bootstrap=0)
    labels = _legend(report.roc_figure(result).axes[0])
    auroc_all = result["per_finding"]["Mass"]["auroc"]["value"]
    assert labels == [
        f"all: AUROC {auroc_all:.3f}",
        "AP: AUROC 0.875",
        "PA: AUROC 1.000",
    ]


def test_pr_legend_gives_the_class_ap(record) -> None:
    box = Box(finding="Nodule", x1=10, y1=10, x2=30, y2=30, reader="R1")
    records = [record("a", boxes=[box]), record("b")]
    preds = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "finding": ["Nodule", "Nodule"],
            "score": [0.9, 0.8],
            "x1": [10.0, 10.0],
            "y1": [10.0, 10.0],
            "x2": [30.0, 30.0],
            "y2": [30.0, 30.0],
        }
    )
    result = detection.evaluate(preds, records, classes=["Nodule"])
    assert result["per_class"]["Nodule"]["ap50"]["value"] == pytest.approx(1.0)
    assert _legend(report.pr_figure(result).axes[0]) == ["AP@0.5 1.000"]


def test_comparison_bars_put_models_side_by_side(tmp_path) -> None:
    panels = {
        "AP films": {"Model 1": [0.6, 0.7], "Model 2": [0.65, math.nan]},
        "PA films": {"Model 1": [0.8, 0.9], "Model 2": [0.85, 0.95]},
    }
    legends = {"AP films": {"Model 1": "Model 1 (mean AUROC 0.650)"}}
    fig = report.comparison_bars(
        categories=["Mass", "Effusion"],
        panels=panels,
        legends=legends,
        ylabel="AUROC",
        title="KCR",
    )
    ap, pa = fig.axes
    assert _legend(ap) == ["Model 1 (mean AUROC 0.650)", "Model 2"]
    assert _legend(pa) == ["Model 1", "Model 2"]
    heights = sorted(round(p.get_height(), 3) for p in pa.patches)
    assert heights == [0.8, 0.85, 0.9, 0.95]
    assert any(t.get_text() == "n/a" for t in ap.texts)  # the missing value is said, not drawn
    path = report.comparison_figure(
        tmp_path / "cmp.png",
        categories=["Mass", "Effusion"],
        panels=panels,
        ylabel="AUROC",
        title="KCR",
    )
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="3 values for 2 categories"):
        report.comparison_bars(
            categories=["Mass", "Effusion"],
            panels={"x": {"m": [0.1, 0.2, 0.3]}},
            ylabel="AUROC",
            title="t",
        )
