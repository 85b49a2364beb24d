"""``cxrkit predict``: a trained model on a few image files, no manifest or cache
(:func:`cxrkit.predict.predict_files`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command

ON_ERROR = ("fail", "skip")  # cxrkit.data.preprocess.ON_ERROR, not imported: --help stays quick

EPILOG = """\
examples:
  # a detector on one DICOM and one PNG: boxes in the original pixels of each file
  cxrkit predict --model runs/finetune/bt/detector.pt a.dcm b.png --out predictions/
  # a multi-task model (one probability per finding) and the screening ensemble, on the GPU
  cxrkit predict --model runs/multitask/kcr_model2/model.pt scans/*.dcm --out kcr/ --device cuda
  cxrkit predict --model runs/multitask/screening scans/*.dcm --out screening/ --on-error skip

The model's kind is read from --model: a detector (detector.pt or a finetune .ckpt), a multi-task
model file (model.pt, or a screening member's member.pt) or a screening ensemble directory
(ensemble.json). Each file is read with the model's own preprocessing recipe (as its cache was
built: DICOM window and MONOCHROME1 inversion included). Writes OUT/predictions.csv (detector: one
row per box, x1 y1 x2 y2 in original pixels; otherwise one row per image), OUT/predictions.json
(the same per image, with its size) and OUT/overlays/<image_id>.png at each file's original size.

exit status: 0 done (with --on-error skip, skipped files are listed in predictions.json);
  1 an error stopped it: a file missing, unreadable or not a model, an unwritable --out, a bad
    --device (one line on stderr names it), as every cxrkit command.
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit predict`` to the CLI."""
    parser = add_command(
        subparsers,
        "predict",
        help="run a trained model on image files (PNG, JPEG, DICOM): predictions + overlays",
        description="Run a detector, a multi-task model or the screening ensemble on image files "
        "given by path, each read with the model's own preprocessing recipe.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="detector.pt / finetune .ckpt, multi-task model.pt / member.pt, or an ensemble dir",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, TIFF or DICOM files")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="detectors: keep boxes scoring at least this (default: the detector's own)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="fail",
        help="fail on the first unreadable file, or skip it (listed in predictions.json)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict and write; a missing or unreadable input is a named error (exit 1, one line)."""
    from cxrkit.predict import predict_files

    result = predict_files(
        args.model,
        args.files,
        out_dir=args.out,
        score_threshold=args.score_threshold,
        device=args.device,
        on_error=args.on_error,
    )
    n = len(result.overlays)
    what = f"{len(result.frame)} boxes" if result.kind == "detector" else f"{n} rows"
    print(
        f"cxrkit predict: {result.kind} on {n} images, {what} -> {result.csv}, {result.json}, "
        f"overlays in {result.csv.parent / 'overlays'}"
    )
    for failed in result.failed:
        print(f"skipped: {failed.reason}")
    return 0
