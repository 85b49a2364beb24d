"""``cxrkit eval {classification,detection,screening}``: score predictions against a manifest.

Each subcommand reads the manifest (optionally one split of it and a view mapping), reads and checks
the predictions, runs the matching ``evaluate`` function of :mod:`cxrkit.eval` and writes
``report.json``, ``curves.json``, ``report.md`` and plots into ``--out`` (TensorBoard scalars too
with ``--run-dir``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrkit.cli.common import add_command, options
from cxrkit.data.records import SPLITS, Record, read_manifest
from cxrkit.errors import DataError, MissingFileError

USAGE_ERROR = 2  # the exit status of a wrong command line (cxrkit --help lists the statuses)

if TYPE_CHECKING:  # numpy and pandas load in the handlers, so that `cxrkit --help` stays quick
    import pandas as pd

    from cxrkit.eval.predictions import Issues
    from cxrkit.eval.screening import SavedThreshold

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

  # screening ("definite normal"): confusion matrix at the ensemble's saved threshold (chosen on
  # its calibration split, read from ensemble.json) and at 99 % sensitivity chosen on the test
  # split (labelled optimistic), misses by risk group
  cxrkit eval screening --predictions runs/multitask/screening/predictions_test.csv \\
      --manifest data/hospital.parquet --split test --out reports/screen \\
      --risk-groups runs/multitask/screening/risk_groups.yaml --ensemble runs/multitask/screening

predictions of another split: when fewer than half of the predicted image ids are in --split,
the command stops with exit status 2 and names the split they are in ("pass --split val"); ids
of other splits among a majority in --split are set aside and counted in the report.

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


def _exit_2_on_wrong_split(handler: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """``handler`` with :class:`WrongSplitError` printed as a command-line mistake (exit 2): the
    fix is another ``--split``."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from cxrkit.eval.predictions import WrongSplitError

        try:
            return handler(args)
        except WrongSplitError as exc:
            print(f"cxrkit eval: error: {exc}", file=sys.stderr)
            return USAGE_ERROR

    return run


TEST_OPTIMAL = "test-optimal"


def _screening_threshold(text: str) -> float | str:
    if text.strip().lower() == TEST_OPTIMAL:
        return TEST_OPTIMAL
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or {TEST_OPTIMAL!r}, got {text!r}"
        ) from None


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
    cls.set_defaults(func=_exit_2_on_wrong_split(run_classification))

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
    det.set_defaults(func=_exit_2_on_wrong_split(run_detection))

    scr = _kind(
        kinds,
        "screening",
        help="normal vs abnormal: confusion matrix, sensitivity, specificity, risk groups",
    )
    _common(scr, n_bootstrap=2000)
    scr.add_argument(
        "--threshold",
        type=_screening_threshold,
        help="operating point threshold: a number, or 'test-optimal' to choose it on the "
        "evaluated split (optimistic). Default: the threshold the ensemble saved in "
        "ensemble.json (chosen on its calibration split); without one, test-optimal",
    )
    scr.add_argument(
        "--ensemble",
        type=Path,
        help="ensemble directory whose ensemble.json holds the saved threshold (default: the "
        "folder of --predictions, else of --risk-groups, when it has an ensemble.json)",
    )
    scr.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.99,
        help="operating point reaching this sensitivity (default 0.99; the thesis' setting)",
    )
    scr.add_argument(
        "--risk-groups", type=Path, help="YAML: group -> [findings], most severe group first"
    )
    scr.set_defaults(func=_exit_2_on_wrong_split(run_screening))


def _records(args: argparse.Namespace) -> tuple[list[Record], dict[str, str]]:
    """The manifest records to evaluate, and the split of every record of the manifest."""
    from cxrkit.eval import views

    records = read_manifest(args.manifest)
    split_of = {r.image_id: r.split for r in records}
    if args.split:
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
    return records, split_of


def _inputs(
    args: argparse.Namespace, *, kind: str
) -> tuple[list[Record], pd.DataFrame, dict[str, str], Issues]:
    """Records, ``--predictions`` (other splits set aside), every record's split, the issues."""
    from cxrkit.eval.predictions import Issues

    records, split_of = _records(args)
    read_issues = Issues()
    df = _read(args.predictions, kind=kind, args=args, split_of=split_of, issues=read_issues)
    return records, df, split_of, read_issues


def _read(
    path: Path, *, kind: str, args: argparse.Namespace, split_of: dict[str, str], issues: Issues
) -> pd.DataFrame:
    """Read predictions; refuse a file made for another split (:class:`WrongSplitError`); rows of
    images in other splits of the manifest are set aside, counted."""
    from cxrkit.eval import predictions

    df, read_issues = predictions.read_predictions(
        path, kind=kind, allow_missing=args.allow_missing
    )
    issues.merge(read_issues)
    if not args.split:
        where = {split_of.get(i) for i in df["image_id"].unique()} - {None}
        if len(where) == 1 and len(set(split_of.values())) > 1:
            (only,) = where
            issues.add(
                "predictions_cover_one_split_only",
                [f"every predicted id of {path.name} is in split {only!r}: pass --split {only}"],
            )
        return df
    predictions.check_split(df["image_id"], split_of, split=args.split, source=str(path))
    split = df["image_id"].map(split_of)
    outside = (split.notna() & (split != args.split)).to_numpy()
    issues.add("predictions_for_other_splits_ignored", df.loc[outside, "image_id"].unique())
    return df.loc[~outside].reset_index(drop=True)


def _without_rows(records: Sequence[Record], df: pd.DataFrame) -> list[str]:
    """Ids of ``records`` that no row of ``df`` names."""
    named = set(df["image_id"])
    return [r.image_id for r in records if r.image_id not in named]


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

    records, df, split_of, read_issues = _inputs(args, kind="classification")
    df_b = None
    if args.predictions_b:
        df_b = _read(
            args.predictions_b,
            kind="classification",
            args=args,
            split_of=split_of,
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
    # an image without a row had no detection (the predictions format); say how many there are,
    # since a file covering part of the split scores the rest as images without findings
    read_issues.add(
        "images_without_prediction_rows_scored_as_no_detections", _without_rows(records, df)
    )
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


def _saved_threshold(args: argparse.Namespace) -> SavedThreshold | None:
    """The ensemble's saved threshold: from ``--ensemble``, else an ``ensemble.json`` beside the
    predictions or the risk-group file."""
    from cxrkit.eval import screening

    if args.ensemble is not None:
        saved = screening.saved_threshold(args.ensemble)
        if saved is None:
            raise MissingFileError(
                f"{args.ensemble / screening.ENSEMBLE_FILE}: no ensemble file (--ensemble names "
                "the directory `cxrkit multitask` trained the screening ensemble into)"
            )
        return saved
    folders = [args.predictions.parent]
    if args.risk_groups is not None:
        folders.append(args.risk_groups.parent)
    for folder in folders:
        saved = screening.saved_threshold(folder)
        if saved is not None:
            return saved
    return None


def run_screening(args: argparse.Namespace) -> int:
    from cxrkit.eval import report, screening

    records, df, _, read_issues = _inputs(args, kind="screening")
    groups = screening.load_risk_groups(args.risk_groups) if args.risk_groups else None
    threshold, source, optimistic = args.threshold, "given with --threshold", False
    if threshold is None:
        saved = _saved_threshold(args)
        if saved is None:
            print(
                "no ensemble.json with a saved threshold (pass --ensemble DIR or --threshold): "
                f"the operating point is {screening.optimistic_label(args.split)}",
                file=sys.stderr,
            )
        else:
            threshold, source = saved.threshold, saved.label()
            optimistic = args.split is not None and saved.split == args.split
    elif threshold == TEST_OPTIMAL:
        threshold = None
    result = screening.evaluate(
        df,
        records,
        threshold=threshold,
        target_sensitivity=args.target_sensitivity,
        risk_groups=groups,
        risk_groups_source=str(args.risk_groups),
        threshold_source=source,
        threshold_optimistic=optimistic,
        split=args.split,
        **_statistics(args),
    )
    summary = [f"AUROC {report.fmt_estimate(result['auroc'])}"]
    for point in result["operating_points"].values():
        summary.append(
            f"threshold {report.fmt_number(point['threshold'], 4)} ({point['chosen_on']}): "
            f"sensitivity {report.fmt_estimate(point['sensitivity'])}, "
            f"specificity {report.fmt_estimate(point['specificity'])}"
        )
    return _finish(_with_read_issues(result, read_issues), args, summary)
