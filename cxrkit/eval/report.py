"""Reports: ``report.json`` (every number with its interval), ``report.md``, plots, TensorBoard.

:func:`write_report` takes a result of :func:`cxrkit.eval.classification.evaluate` (optionally with
``view_gaps`` from :func:`cxrkit.eval.views.evaluate` and ``comparison`` from
:func:`cxrkit.eval.classification.compare` added to it), :func:`cxrkit.eval.detection.evaluate` or
:func:`cxrkit.eval.screening.evaluate`, and writes into ``out_dir``:

- ``report.json``: the result without its curve points (NaN written as ``null``);
- ``curves.json``: the curve points (ROC, precision-recall, FROC) behind the plots;
- ``report.md``: tables a person reads, numbers formatted ``0.873 (0.851–0.894)``;
- PNG plots (matplotlib, Agg canvas, no global backend change), their legends giving each
  curve's AUROC or AP; :func:`comparison_figure` puts models side by side (grouped bars);
- TensorBoard scalars of every reported value when ``run_dir`` is given.

All files are written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cxrkit.errors import DataError
from cxrkit.io import atomic_write

EN_DASH = "\u2013"
MINUS = "\u2212"


# --------------------------------------------------------------------------------------------------
# formatting


def fmt_number(value: object, digits: int = 3) -> str:
    """``0.873``; ``n/a`` for None or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value)).replace("-", MINUS)
    text = f"{float(value):.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")  # no "-0.000"
    return text.replace("-", MINUS)


def fmt_estimate(estimate: Mapping[str, object] | None, digits: int = 3) -> str:
    """``0.873 (0.851–0.894)`` for ``{"value", "ci"}``; the value alone without an interval.

    Negative numbers use the minus sign and the interval then reads ``(−0.253 to 0.055)`` so that
    the range dash cannot be mistaken for a sign.
    """
    if estimate is None:
        return "n/a"
    text = fmt_number(estimate.get("value"), digits)
    ci = estimate.get("ci")
    if ci and text != "n/a" and all(c is not None and math.isfinite(c) for c in ci):
        low, high = fmt_number(ci[0], digits), fmt_number(ci[1], digits)
        dash = " to " if MINUS in low + high else EN_DASH
        text += f" ({low}{dash}{high})"
    return text


def fmt_p(p: object) -> str:
    """p-values: ``0.012``, ``0.0089``, ``0.0002``, ``<0.0001``, ``n/a``.

    Four decimals below 0.01, so that a p-value as small as the KCR abstract's (0.0002) shows as
    it is; a bootstrap p-value's resolution is its floor (:func:`cxrkit.eval.bootstrap.p_floor`),
    printed beside it by the report.
    """
    if p is None or not math.isfinite(float(p)):
        return "n/a"
    if p < 0.0001:
        return "<0.0001"
    return f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


# --------------------------------------------------------------------------------------------------
# JSON and TensorBoard


def to_jsonable(obj: object) -> object:
    """Plain JSON types: numpy scalars and arrays converted, NaN and infinities as None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json(data: object, path: str | Path) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text + "\n"))


def scalars(result: Mapping[str, object], prefix: str = "eval") -> dict[str, float]:
    """Every reported value of a result as ``{"eval/mean/auroc": 0.87, ...}`` (finite values only).

    A value is a number under the key ``value`` of an estimate, a p-value (``p_value``,
    ``p_bootstrap``, ``p_gap_change``) or a rate of an operating point.
    """
    out: dict[str, float] = {}
    rates = {"sensitivity", "specificity", "ppv", "npv", "miss_rate"}

    def walk(node: object, path: list[str]) -> None:
        if not isinstance(node, Mapping):
            return
        for key, value in node.items():
            key = str(key)
            if key in ("curves", "settings", "issues", "counts"):
                continue
            here = [*path, key]
            if isinstance(value, Mapping) and "value" in value:
                number = value["value"]
                if isinstance(number, (int, float)) and math.isfinite(number):
                    out["/".join(here)] = float(number)
                continue
            if key.startswith("p_") or key in rates or key.startswith("auroc_"):
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out["/".join(here)] = float(value)
                continue
            walk(value, here)

    walk(result, [prefix, str(result.get("kind", "result"))])
    return {k.replace(" ", "_"): v for k, v in out.items()}


def write_tensorboard(
    result: Mapping[str, object], run_dir: str | Path, *, step: int = 0, prefix: str = "eval"
) -> int:
    """Write :func:`scalars` of ``result`` to a TensorBoard run directory; returns their number."""
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only when asked for

    values = scalars(result, prefix=prefix)
    writer = SummaryWriter(log_dir=str(run_dir))
    try:
        for tag, value in values.items():
            writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()
    return len(values)


# --------------------------------------------------------------------------------------------------
# markdown


def _issues_lines(issues: Mapping[str, Mapping[str, object]]) -> list[str]:
    if not issues:
        return []
    lines = ["## Input problems (tolerated with --allow-missing or informational)", ""]
    for name, info in issues.items():
        examples = ", ".join(str(e) for e in info.get("examples", []))
        lines.append(f"- {name.replace('_', ' ')}: {info['count']} (e.g. {examples})")
    return lines + [""]


def _bootstrap_line(settings: Mapping[str, object]) -> str:
    n = settings.get("n_bootstrap", 0)
    level = float(settings.get("level", 0.95))
    if not n:
        return "No bootstrap (intervals off)."
    return (
        f"Intervals: {100 * level:g} % percentile bootstrap, {n} resamples of patients "
        f"(seed {settings.get('seed')}); resamples where a metric is undefined are dropped."
    )


def _classification_md(result: Mapping[str, object]) -> list[str]:
    counts = result["counts"]
    views = counts.get("views", {})
    view_text = ", ".join(f"{k} {v}" for k, v in views.items())
    lines = [
        "# Classification report",
        "",
        f"Images: {counts['n_images']} from {counts['n_patients']} patients (views: {view_text}).",
        _bootstrap_line(result["settings"]),
        "",
        "## AUROC per finding",
        "",
    ]
    rows = []
    for finding, e in result["per_finding"].items():
        rows.append(
            [
                finding,
                str(e["n"]),
                str(e["n_positive"]),
                str(e["n_unlabelled"]),
                fmt_estimate(e["auroc"]),
                str(e["auroc"].get("n_undefined", 0)),
            ]
        )
    mean = result["mean"]
    rows.append(["**Mean**", "", "", "", fmt_estimate(mean["auroc"]), ""])
    lines += _table(
        ["Finding", "n", "positive", "unlabelled", "AUROC (CI)", "undefined resamples"], rows
    )
    for key, title in (
        ("at_threshold", "Operating point at threshold {threshold}"),
        ("at_target_sensitivity", "Operating point at target sensitivity {target}"),
    ):
        rows = []
        for finding, e in result["per_finding"].items():
            if key not in e:
                continue
            m = e[key]
            rows.append(
                [finding, fmt_number(m["threshold"])]
                + [fmt_number(m[r]) for r in ("sensitivity", "specificity", "ppv", "npv")]
                + [f"{m['tp']}/{m['fp']}/{m['tn']}/{m['fn']}"]
            )
        if rows:
            settings = result["settings"]
            lines += [
                "## "
                + title.format(
                    threshold=settings.get("threshold"), target=settings.get("target_sensitivity")
                ),
                "",
            ]
            lines += _table(
                ["Finding", "threshold", "sensitivity", "specificity", "PPV", "NPV", "TP/FP/TN/FN"],
                rows,
            )
    if "view_gaps" in result:
        lines += _view_gaps_md(result["view_gaps"])
    if "comparison" in result:
        lines += _comparison_md(result["comparison"])
    lines += _issues_lines(result.get("issues", {}))
    return lines


def _view_gaps_md(gaps: Mapping[str, object]) -> list[str]:
    counts = gaps["counts"]
    lines = [
        f"## View gaps: AUROC(AP) {MINUS} AUROC(PA)",
        "",
        f"Images: AP {counts.get('AP', 0)}, PA {counts.get('PA', 0)}; not in either group: "
        f"unknown view {counts.get('unknown', 0)}, LL {counts.get('LL', 0)}. "
        f"p: DeLong (unpaired, {gaps['settings'].get('delong_distribution', 'normal z')}) per "
        "finding, patient bootstrap for the mean and for the change of gap"
        + _floor_text(gaps["settings"]),
        "",
    ]
    two = gaps["settings"].get("models", 1) == 2
    rows = []
    items = list(gaps["per_finding"].items()) + [("**Mean**", gaps["mean"])]
    for finding, e in items:
        row = [
            finding,
            str(e.get("n_ap", "")),
            str(e.get("n_pa", "")),
            fmt_number(e["auroc_ap"]),
            fmt_number(e["auroc_pa"]),
            fmt_estimate(e["gap"]),
            fmt_p(e["p_value"]),
        ]
        if two:
            b = e["model_b"]
            row += [fmt_estimate(b["gap"]), fmt_estimate(e["gap_change"]), fmt_p(e["p_gap_change"])]
        rows.append(row)
    header = ["Finding", "n AP", "n PA", "AUROC AP", "AUROC PA", "Gap (CI)", "p"]
    if two:
        header = ["Finding", "n AP", "n PA", "AUROC AP", "AUROC PA", "Model 1 gap (CI)", "p"]
        header += ["Model 2 gap (CI)", "Change of gap (CI)", "p (change, paired bootstrap)"]
    return lines + _table(header, rows)


def _floor_text(settings: Mapping[str, object]) -> str:
    floor = settings.get("p_floor")
    if floor is None or not math.isfinite(float(floor)):
        return "."
    return (
        f" (B = {settings.get('n_bootstrap')} replicates: a bootstrap p-value cannot fall below "
        f"{fmt_p(floor)})."
    )


def _comparison_md(comparison: Mapping[str, object]) -> list[str]:
    lines = [
        f"## Model comparison (model B {MINUS} model A, same images)",
        "",
        "p: DeLong (paired, normal z) per finding, paired bootstrap for the mean"
        + _floor_text(comparison["settings"]),
        "",
    ]
    rows = [
        [
            finding,
            str(e["n"]),
            fmt_number(e["auroc_a"]),
            fmt_number(e["auroc_b"]),
            fmt_estimate(e["difference"]),
            fmt_p(e["p_value"]),
        ]
        for finding, e in comparison["per_finding"].items()
    ]
    m = comparison["mean"]
    rows.append(
        [
            "**Mean**",
            "",
            fmt_number(m["auroc_a"]),
            fmt_number(m["auroc_b"]),
            fmt_estimate(m["difference"]),
            fmt_p(m["p_value"]),
        ]
    )
    return lines + _table(["Finding", "n", "AUROC A", "AUROC B", "Difference (CI)", "p"], rows)


def _ground_truth_words(gt_reader: str) -> str:
    """What ``settings.gt_reader`` means, in the report's words."""
    if gt_reader == "fused":
        return "ground truth: the readers' boxes fused by weighted boxes fusion"
    if gt_reader == "all":
        return "ground truth: every reader's boxes as given"
    return f"ground truth: reader {gt_reader}'s boxes only"


def _detection_md(result: Mapping[str, object]) -> list[str]:
    counts, settings = result["counts"], result["settings"]
    lines = [
        "# Detection report",
        "",
        f"Images: {counts['n_images']} ({counts['n_images_without_gt']} without any box, "
        f"{counts['n_images_without_predictions']} without any detection); ground-truth boxes: "
        f"{counts['n_gt_boxes']} ({_ground_truth_words(settings['gt_reader'])}); detections: "
        f"{counts['n_predictions']}.",
        _bootstrap_line(settings),
        "Classes without a ground-truth box have no AP (n/a) and are left out of the means.",
        "",
        "## Average precision per class",
        "",
    ]
    rows = []
    for c, e in result["per_class"].items():
        rows.append(
            [
                c,
                str(e["n_gt"]),
                str(e["n_predictions"]),
                fmt_estimate(e["ap50"]),
                fmt_estimate(e["ap50_95"]) if e.get("ap50_95") else "n/a",
                fmt_estimate(e["voc_ap"]),
            ]
        )
    m = result["mean"]
    rows.append(
        [
            "**Mean**",
            "",
            "",
            fmt_estimate(m["map50"]),
            fmt_estimate(m["map50_95"]) if m.get("map50_95") else "n/a",
            fmt_estimate(m["voc_map"]),
        ]
    )
    voc = f"VOC AP@{settings['voc_iou']:g}"
    lines += _table(["Class", "boxes", "detections", "AP@0.5 (COCO)", "AP@[.5:.95]", voc], rows)
    lines += [f"## FROC (IoU >= {settings['froc_iou']:g}, all classes pooled)", ""]
    froc = m["froc"]
    lines += _table(
        ["FP per image", *froc.keys(), "average"],
        [
            [
                "sensitivity",
                *(fmt_estimate(v) for v in froc.values()),
                fmt_estimate(m["froc_average"]),
            ]
        ],
    )
    v = result["views"]
    lines += [
        f"## mAP@0.5 by view (classes with boxes in both views: {len(v['classes_compared'])})",
        "",
        f"Images: AP {v['counts']['AP']}, PA {v['counts']['PA']}; not in either group: unknown "
        f"{v['counts']['unknown']}, LL {v['counts']['LL']}.",
        "",
    ]
    lines += _table(
        ["mAP@0.5 AP", "mAP@0.5 PA", f"Gap AP {MINUS} PA (CI)", "p (bootstrap)"],
        [
            [
                fmt_estimate(v["map50"]["AP"]),
                fmt_estimate(v["map50"]["PA"]),
                fmt_estimate(v["gap"]),
                fmt_p(v["p_value"]),
            ]
        ],
    )
    return lines + _issues_lines(result.get("issues", {}))


def _screening_md(result: Mapping[str, object]) -> list[str]:
    counts, settings = result["counts"], result["settings"]
    lines = [
        "# Screening report (normal vs abnormal)",
        "",
        f"Images: {counts['n_images']} ({counts['n_abnormal']} abnormal, {counts['n_normal']} "
        f"normal by the reference; {counts['n_unlabelled']} without labels left out).",
        f"AUROC: {fmt_estimate(result['auroc'])}. {_bootstrap_line(settings)}",
        "Sensitivity, specificity, PPV, NPV: exact (Clopper-Pearson) intervals.",
        "",
    ]
    for key, point in result["operating_points"].items():
        title = f"threshold {fmt_number(point['threshold'], 4)}"
        if point.get("chosen_on"):  # where the threshold came from; test-chosen: optimistic
            title = f"{title} ({point['chosen_on']})"
        if key == "at_target_sensitivity":
            title = f"target sensitivity {point['target']}, {title}"
        lines += [f"## Operating point: {title}", ""]
        lines += _table(
            ["", "reference normal", "reference abnormal"],
            [
                [
                    "AI normal",
                    str(point["ai_normal_ref_normal"]),
                    str(point["ai_normal_ref_abnormal"]),
                ],
                [
                    "AI abnormal",
                    str(point["ai_abnormal_ref_normal"]),
                    str(point["ai_abnormal_ref_abnormal"]),
                ],
            ],
        )
        lines += _table(
            ["sensitivity", "specificity", "PPV", "NPV", "called normal"],
            [
                [
                    fmt_estimate(point["sensitivity"]),
                    fmt_estimate(point["specificity"]),
                    fmt_estimate(point["ppv"]),
                    fmt_estimate(point["npv"]),
                    f"{100 * point['ai_normal_fraction']:.1f} %",
                ]
            ],
        )
        rows = [
            [
                g,
                str(e["n_abnormal"]),
                str(e["n_missed"]),
                fmt_number(e["miss_rate"]),
                str(point["misses_by_most_severe_group"][g]),
                ", ".join(e["missed_examples"][:5]),
            ]
            for g, e in point["risk_groups"].items()
        ]
        lines += ["Misses by risk group:", ""]
        lines += _table(
            ["group", "abnormal", "missed", "miss rate", "missed (most severe group)", "examples"],
            rows,
        )
    other = settings.get("findings_in_other_group") or []
    if other:
        lines += [f"Findings in no risk group (counted as 'other'): {', '.join(other)}.", ""]
    return lines + _issues_lines(result.get("issues", {}))


def markdown(result: Mapping[str, object]) -> str:
    """The human-readable report of a result."""
    kind = result.get("kind")
    writers = {
        "classification": _classification_md,
        "detection": _detection_md,
        "screening": _screening_md,
    }
    if kind not in writers:
        raise DataError(f"cannot write a report for a result of kind {kind!r}")
    return "\n".join(writers[kind](result)).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------
# plots


def _figure(n_panels: int, *, ncols: int = 4, size: float = 3.2) -> tuple[object, list[object]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: object, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _auc(c: Mapping[str, list[float]]) -> float:
    # trapezoid area under the ROC points: scikit-learn's AUROC unless the curve was thinned
    if not c or len(c.get("fpr", [])) < 2:
        return math.nan
    fpr, tpr = np.asarray(c["fpr"], dtype=np.float64), np.asarray(c["tpr"], dtype=np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _roc_aurocs(result: Mapping[str, object], finding: str) -> dict[str, float]:
    """The AUROC of each curve of a finding, from the result where it has them."""
    curves = result["curves"]["roc"][finding]
    out = {view: _auc(curves.get(view)) for view in ("all", "AP", "PA")}
    entry = result.get("per_finding", {}).get(finding, {})
    if isinstance(entry.get("auroc"), Mapping):
        out["all"] = entry["auroc"].get("value", out["all"])
    gaps = (result.get("view_gaps") or {}).get("per_finding", {}).get(finding, {})
    for view in ("AP", "PA"):
        value = gaps.get(f"auroc_{view.lower()}")
        if isinstance(value, (int, float)):
            out[view] = float(value)
    return out


def _plot_roc(result: Mapping[str, object], path: Path) -> Path:
    return _save(roc_figure(result), path)


def roc_figure(result: Mapping[str, object]) -> object:
    """The ROC curves of a classification result, a panel per finding, the legend giving the
    AUROC of each curve (all images, AP, PA)."""
    curves = result["curves"]["roc"]
    fig, axes = _figure(len(curves))
    for ax, (finding, by_view) in zip(axes, curves.items(), strict=True):
        aurocs = _roc_aurocs(result, finding)
        for view, style in (("all", "-"), ("AP", "--"), ("PA", ":")):
            c = by_view.get(view)
            if c and c["fpr"]:
                ax.plot(
                    c["fpr"], c["tpr"], style, label=f"{view}: AUROC {fmt_number(aurocs[view])}"
                )
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        ax.set(
            title=finding, xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1)
        )
        ax.legend(loc="lower right", fontsize=7)
    return fig


def _plot_view_gaps(gaps: Mapping[str, object], path: Path) -> Path:
    rows = list(gaps["per_finding"].items()) + [("Mean", gaps["mean"])]
    two = gaps["settings"].get("models", 1) == 2
    fig, (ax,) = _figure(1, size=max(3.0, 0.45 * len(rows) + 1.5))
    for offset, label, getter in (
        (-0.15 if two else 0.0, "model 1" if two else "gap", lambda e: e["gap"]),
        *([(0.15, "model 2", lambda e: e["model_b"]["gap"])] if two else []),
    ):
        ys, xs, lo, hi = [], [], [], []
        for i, (_, e) in enumerate(rows):
            est = getter(e)
            value = est.get("value")
            if value is None or not math.isfinite(value):
                continue
            ci = est.get("ci") or [value, value]
            ci = [value if c is None or not math.isfinite(c) else c for c in ci]
            ys.append(i + offset)
            xs.append(value)
            lo.append(value - ci[0])
            hi.append(ci[1] - value)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", capsize=3, label=label)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set(xlabel=f"AUROC(AP) {MINUS} AUROC(PA)", title="View gap with interval")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _plot_pr(result: Mapping[str, object], path: Path) -> Path:
    return _save(pr_figure(result), path)


def pr_figure(result: Mapping[str, object]) -> object:
    """The precision-recall curves (IoU 0.5) of a detection result, a panel per class, the
    legend giving its AP@0.5 with interval."""
    curves = result["curves"]["pr"]
    fig, axes = _figure(max(1, len(curves)))
    for ax, (name, c) in zip(axes, curves.items(), strict=False):
        precision = [math.nan if p is None else p for p in c["precision"]]
        ap = result.get("per_class", {}).get(name, {}).get("ap50")
        ax.plot(c["recall"], precision, label=f"AP@0.5 {fmt_estimate(ap)}")
        ax.set(title=name, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower left", fontsize=7)
    return fig


def _plot_froc(curve: Mapping[str, list[float]], rates: list[float], path: Path) -> Path:
    fig, (ax,) = _figure(1, size=4.0)
    ax.plot(curve["fppi"], curve["sensitivity"], drawstyle="steps-post")
    for rate in rates:
        ax.axvline(rate, color="0.85", lw=0.6)
    ax.set_xscale("log")
    ax.set(xlabel="false positives per image", ylabel="sensitivity", ylim=(0, 1), title="FROC")
    return _save(fig, path)


def _plot_screening_roc(result: Mapping[str, object], path: Path) -> Path:
    fig, (ax,) = _figure(1, size=4.0)
    c = result["curves"]["roc"]
    ax.plot(c["fpr"], c["tpr"], label=f"AUROC {fmt_estimate(result['auroc'])}")
    for key, point in result["operating_points"].items():
        ax.plot(
            1 - point["specificity"]["value"],
            point["sensitivity"]["value"],
            "o",
            label=key.replace("_", " "),
        )
    ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Normal vs abnormal")
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plots(result: Mapping[str, object], out_dir: Path) -> list[Path]:
    """Draw the plots of a result into ``out_dir``; returns the files written."""
    written = []
    curves = result.get("curves") or {}
    kind = result.get("kind")
    if kind == "classification":
        if curves.get("roc"):
            written.append(_plot_roc(result, out_dir / "roc_curves.png"))
        if "view_gaps" in result:
            written.append(_plot_view_gaps(result["view_gaps"], out_dir / "view_gaps.png"))
    elif kind == "detection":
        if curves.get("pr"):
            written.append(_plot_pr(result, out_dir / "pr_curves.png"))
        if curves.get("froc"):
            written.append(
                _plot_froc(curves["froc"], result["settings"]["froc_rates"], out_dir / "froc.png")
            )
    elif kind == "screening" and (curves.get("roc") or {}).get("fpr"):
        written.append(_plot_screening_roc(result, out_dir / "roc.png"))
    return written


def comparison_figure(
    path: str | Path,
    *,
    categories: Sequence[str],
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    legends: Mapping[str, Mapping[str, str]] | None = None,
    ylabel: str,
    title: str,
) -> Path:
    """Write :func:`comparison_bars` to ``path`` (PNG, atomically); returns ``path``."""
    fig = comparison_bars(
        categories=categories, panels=panels, legends=legends, ylabel=ylabel, title=title
    )
    return _save(fig, Path(path))


def comparison_bars(
    *,
    categories: Sequence[str],
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    legends: Mapping[str, Mapping[str, str]] | None = None,
    ylabel: str,
    title: str,
) -> object:
    """Models side by side: one grouped bar chart per panel, a bar per model and category.

    Args:
        categories: the x axis (findings, classes), in order.
        panels: panel title -> model name -> one value per category (NaN: no bar, "n/a" written).
        legends: panel title -> model name -> its legend text (e.g. with the model's mean);
            default the model name.
        ylabel, title: the y axis of every panel, the figure's title.

    Returns:
        The matplotlib figure (Agg canvas).
    """
    fig, axes = _figure(len(panels), ncols=len(panels), size=max(3.6, 0.9 * len(categories) + 1.5))
    x = np.arange(len(categories))
    for ax, (panel, series) in zip(axes, panels.items(), strict=True):
        width = 0.8 / max(1, len(series))
        for k, (model, values) in enumerate(series.items()):
            heights = np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)
            if heights.shape != (len(categories),):
                raise ValueError(
                    f"panel {panel!r}, model {model!r}: {heights.size} values for "
                    f"{len(categories)} categories"
                )
            offset = (k - (len(series) - 1) / 2) * width
            label = ((legends or {}).get(panel) or {}).get(model, model)
            ax.bar(x + offset, np.nan_to_num(heights, nan=0.0), width, label=label)
            for xi, h in zip(x + offset, heights, strict=True):
                if not math.isfinite(h):
                    ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(x, list(categories), rotation=30, ha="right", fontsize=7)
        ax.set(title=panel, ylabel=ylabel, ylim=(0, 1.05))
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title)
    return fig


def _without_curves(result: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if k != "curves"}


def write_report(
    result: Mapping[str, object],
    out_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    step: int = 0,
) -> dict[str, Path]:
    """Write report.json, curves.json, report.md and the plots of ``result`` into ``out_dir``.

    Returns the written files by name (``json``, ``curves``, ``markdown``, ``plot:<file>``); with
    ``run_dir``, also writes TensorBoard scalars there.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    files = {"json": write_json(_without_curves(result), out_dir / "report.json")}
    if result.get("curves"):
        files["curves"] = write_json(result["curves"], out_dir / "curves.json")
    files["markdown"] = atomic_write(out_dir / "report.md", lambda tmp: tmp.write_text(text))
    for path in plots(result, out_dir):
        files[f"plot:{path.name}"] = path
    if run_dir is not None:
        write_tensorboard(result, run_dir, step=step)
    return files
