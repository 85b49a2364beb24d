"""``cxrkit eval {classification,detection,screening}``: score predictions against a manifest.

Each subcommand reads the manifest (optionally one split of it and a view mapping), reads and checks
the predictions, runs the matching ``evaluate`` function of :mod:`cxrkit.eval` and writes
``report.json``, ``curves.json``, ``report.md`` and plots into ``--out`` (TensorBoard scalars too
with ``--run-dir``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrkit.cli.common import add_command, options
from cxrkit.data.records import SPLITS, Record, read_manifest
from cxrkit.errors import DataError

if TYPE_CHECKING:  # numpy and pandas load in the handlers, so that `cxrkit --help` stays quick
    import pandas as pd

    from cxrkit.eval.predictions import Issues

EXAMPLES = """\
examples:
  # per-finding AUROC with patient-bootstrap intervals, AP/PA view gaps, operating points
  cxrkit eval classification --predictions runs/m1/test_predictions.csv \\
      --manifest data/nih.parquet --split test --out reports/m1

  # KCR table: model 1 vs model 2 (paired DeLong per finding, change of the AP-PA gap)
  cxrkit eval classification --predictions runs/m1/test.csv --predictions-b runs/m2/test.csv \\
      --manifest data/nih.parquet --split test --out reports/m1_vs_m2

  # detection: COCO AP@0.5, AP@[.5:.95], VinBigData VOC mAP@0.4, FROC, mAP@0.5 by view
  cxrkit eval detection --predictions runs/det/test_boxes.parquet --manifest data/vindr.parquet \\
      --split test --gt-reader fused --out reports/det

  # screening ("definite normal"): confusion matrix at 99 % sensitivity, misses by risk group
  cxrkit eval screening --predictions runs/screen/test.csv --manifest data/hospital.parquet \\
      --split test --risk-groups runs/multitask/screening/risk_groups.yaml --out reports/screen

predictions files (CSV or Parquet):
  classification  image_id, finding, score
  detection       image_id, finding, score, x1, y1, x2, y2   (original pixels)
  screening       image_id, score   (score = probability of abnormal)
"""


def _common(parser: argparse.ArgumentParser, *, n_bootstrap: int) -> None:
    parser.add_argument("--predictions", required=True, type=Path, help="CSV or Parquet file")
    parser.add_argument("--manifest", required=True, type=Path, help="Parquet manifest")
    parser.add_argument("--out", required=True, type=Path, help="report directory")
    parser.add_argument(
        "--split", choices=SPLITS, help="evaluate only the manifest records of this split"
    )
    parser.add_argument(
        "--views",
        type=Path,
        help="CSV with image_id, view (PA/AP/LL/unknown) overriding the manifest's views",
    )
    parser.add_argument(
        "--n-bootstrap",
        type=int,
        default=n_bootstrap,
        help=f"patient bootstrap resamples, 0 = no intervals (default {n_bootstrap})",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score what can be scored and report missing ids, unknown findings, NaN scores",
    )
    parser.add_argument("--run-dir", type=Path, help="also write TensorBoard scalars here")
    parser.add_argument("--step", type=int, default=0, help="TensorBoard step (default 0)")


def _statistics(args: argparse.Namespace) -> dict[str, Any]:
    """The interval and input-checking settings :func:`_common` declares, for ``evaluate``."""
    return options(args, "n_bootstrap", "seed", "level", "allow_missing")


def _csv_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _kind(kinds: argparse._SubParsersAction, name: str, *, help: str) -> argparse.ArgumentParser:
    return kinds.add_parser(
        name, help=help, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` and its three subcommands to the ``cxrkit`` parser."""
    parser = add_command(
        subparsers,
        "eval",
        help="score predictions against a manifest (AUROC, mAP, view gaps, screening)",
        description="Score a predictions file against a manifest and write a report.",
        epilog=EXAMPLES,
    )
    kinds = parser.add_subparsers(dest="eval_kind", metavar="KIND", required=True)

    cls = _kind(kinds, "classification", help="per-finding AUROC, view gaps, model comparison")
    _common(cls, n_bootstrap=2000)
    cls.add_argument(
        "--predictions-b", type=Path, help="second model's predictions on the same images"
    )
    cls.add_argument(
        "--findings",
        help="comma-separated findings, groups as 'Nodule/Mass=Nodule|Mass' (default: all "
        "predicted; a group scored from the members the predictions file names)",
    )
    cls.add_argument(
        "--threshold", type=float, default=0.5, help="operating point threshold (default 0.5)"
    )
    cls.add_argument(
        "--target-sensitivity",
        type=float,
        help="also report the operating point reaching this sensitivity (e.g. 0.95)",
    )
    cls.add_argument(
        "--delong",
        choices=("normal", "t"),
        default="normal",
        help="distribution of the unpaired DeLong test of each finding's AP-PA gap: normal (z, "
        "the default) or t (R pROC's roc.test: Student t with Welch degrees of freedom)",
    )
    cls.set_defaults(func=run_classification)

    det = _kind(
        kinds, "detection", help="COCO AP@0.5, AP@[.5:.95], VOC mAP@0.4, FROC, mAP@0.5 by view"
    )
    _common(det, n_bootstrap=1000)
    det.add_argument("--classes", help="comma-separated classes (default: classes with boxes)")
    det.add_argument(
        "--gt-reader",
        default="auto",
        help="ground truth: auto (fused when an image has several readers' boxes, else the boxes "
        "as given; the default), 'all' readers' boxes, 'fused' (weighted boxes fusion) or a "
        "reader id",
    )
    det.add_argument("--fusion-iou", type=float, default=0.5, help="IoU of reader fusion")
    det.add_argument("--voc-iou", type=float, default=0.4, help="IoU of the VOC mAP (default 0.4)")
    det.add_argument("--froc-iou", type=float, default=0.5, help="IoU of a FROC hit (default 0.5)")
    det.add_argument(
        "--max-dets", type=int, default=100, help="detections per image and class (default 100)"
    )
    det.set_defaults(func=run_detection)

    scr = _kind(
        kinds,
        "screening",
        help="normal vs abnormal: confusion matrix, sensitivity, specificity, risk groups",
    )
    _common(scr, n_bootstrap=2000)
    scr.add_argument("--threshold", type=float, help="operating point threshold")
    scr.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.99,
        help="operating point reaching this sensitivity (default 0.99; the thesis' setting)",
    )
    scr.add_argument(
        "--risk-groups", type=Path, help="YAML: group -> [findings], most severe group first"
    )
    scr.set_defaults(func=run_screening)


def _records(args: argparse.Namespace) -> tuple[list[Record], set[str]]:
    """The manifest records to evaluate, and the ids of the records left out by ``--split``."""
    from cxrkit.eval import views

    records = read_manifest(args.manifest)
    other_splits: set[str] = set()
    if args.split:
        other_splits = {r.image_id for r in records if r.split != args.split}
        records = [r for r in records if r.split == args.split]
        if not records:
            raise DataError(f"{args.manifest}: no record in split {args.split!r}")
    if args.views:
        records, counts = views.apply_view_map(records, views.read_view_map(args.views))
        print(
            f"views from {args.views}: {counts['mapped']} images mapped, "
            f"{counts['not_in_mapping']} kept from the manifest",
            file=sys.stderr,
        )
    return records, other_splits


def _inputs(
    args: argparse.Namespace, *, kind: str
) -> tuple[list[Record], pd.DataFrame, set[str], Issues]:
    """Records, ``--predictions`` (other splits set aside), those splits' ids, the read issues."""
    from cxrkit.eval.predictions import Issues

    records, other_splits = _records(args)
    read_issues = Issues()
    df = _read(
        args.predictions, kind=kind, args=args, other_splits=other_splits, issues=read_issues
    )
    return records, df, other_splits, read_issues


def _read(
    path: Path, *, kind: str, args: argparse.Namespace, other_splits: set[str], issues: Issues
) -> pd.DataFrame:
    """Read predictions; rows of images in other splits of the manifest are set aside, counted."""
    from cxrkit.eval import predictions

    df, read_issues = predictions.read_predictions(
        path, kind=kind, allow_missing=args.allow_missing
    )
    issues.merge(read_issues)
    outside = df["image_id"].isin(other_splits).to_numpy()
    issues.add("predictions_for_other_splits_ignored", df.loc[outside, "image_id"].unique())
    return df.loc[~outside].reset_index(drop=True)


def _with_read_issues(result: dict[str, object], read_issues: Issues) -> dict[str, object]:
    """Add the problems found while reading the files (rows dropped there) to the result's."""
    from cxrkit.eval.predictions import Issues

    merged = Issues()
    merged.merge(read_issues)
    for name, info in (result.get("issues") or {}).items():
        merged.counts[name] = merged.counts.get(name, 0) + int(info["count"])
        merged.examples.setdefault(name, []).extend(info.get("examples", []))
    return {**result, "issues": merged.to_dict()}


def _finish(result: dict[str, object], args: argparse.Namespace, summary: Sequence[str]) -> int:
    from cxrkit.eval import report

    files = report.write_report(result, args.out, run_dir=args.run_dir, step=args.step)
    for line in summary:
        print(line)
    if result.get("issues"):
        print(f"input problems: {', '.join(result['issues'])} (see report.md)")
    print(f"report: {files['markdown']}")
    return 0


def run_classification(args: argparse.Namespace) -> int:
    from cxrkit.eval import classification, report, views

    records, df, other_splits, read_issues = _inputs(args, kind="classification")
    df_b = None
    if args.predictions_b:
        df_b = _read(
            args.predictions_b,
            kind="classification",
            args=args,
            other_splits=other_splits,
            issues=read_issues,
        )
    settings = {"findings": _csv_list(args.findings), **_statistics(args)}
    result = classification.evaluate(
        df,
        records,
        threshold=args.threshold,
        target_sensitivity=args.target_sensitivity,
        **settings,
    )
    result["view_gaps"] = views.evaluate(
        df, records, predictions_b=df_b, delong_distribution=args.delong, **settings
    )
    summary = [f"mean AUROC {report.fmt_estimate(result['mean']['auroc'])}"]
    gap = result["view_gaps"]["mean"]["gap"]
    summary.append(f"mean AP-PA gap {report.fmt_estimate(gap)}")
    if df_b is not None:
        result["comparison"] = classification.compare(
            df, df_b, records, views=("AP", "PA"), **settings
        )
        diff = result["comparison"]["mean"]["difference"]
        summary.append(f"mean AUROC B-A {report.fmt_estimate(diff)}")
    return _finish(_with_read_issues(result, read_issues), args, summary)


def run_detection(args: argparse.Namespace) -> int:
    from cxrkit.eval import detection, report

    records, df, _, read_issues = _inputs(args, kind="detection")
    result = detection.evaluate(
        df,
        records,
        classes=_csv_list(args.classes),
        **options(args, "voc_iou", "froc_iou", "max_dets", "gt_reader", "fusion_iou"),
        **_statistics(args),
    )
    mean = result["mean"]
    summary = [
        f"mAP@0.5 {report.fmt_estimate(mean['map50'])}",
        f"VOC mAP@{args.voc_iou:g} {report.fmt_estimate(mean['voc_map'])}",
        f"Kaggle mAP@{args.voc_iou:g} (15 classes, 'No finding' one of them) "
        f"{report.fmt_estimate(result['kaggle']['map'])}",
        f"ground truth: {result['settings']['gt_reader']}",
    ]
    return _finish(_with_read_issues(result, read_issues), args, summary)


def run_screening(args: argparse.Namespace) -> int:
    from cxrkit.eval import report, screening

    records, df, _, read_issues = _inputs(args, kind="screening")
    groups = screening.load_risk_groups(args.risk_groups) if args.risk_groups else None
    result = screening.evaluate(
        df,
        records,
        threshold=args.threshold,
        target_sensitivity=args.target_sensitivity,
        risk_groups=groups,
        **_statistics(args),
    )
    summary = [f"AUROC {report.fmt_estimate(result['auroc'])}"]
    for key, point in result["operating_points"].items():
        summary.append(
            f"{key.replace('_', ' ')}: sensitivity {report.fmt_estimate(point['sensitivity'])}, "
            f"specificity {report.fmt_estimate(point['specificity'])}"
        )
    return _finish(_with_read_issues(result, read_issues), args, summary)
