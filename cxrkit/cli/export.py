"""``cxrkit export {coco,predictions}``: the bridge to detectron2 and other COCO tools.

``coco`` writes a cache's images and their boxes (class names mapped and readers fused exactly as
``cxrkit finetune`` does, from the detector config) as a COCO JSON file in cache pixels;
``predictions`` turns detectron2's ``instances_predictions.pth`` or a COCO results JSON over that
file into cxrkit's detection predictions file (original pixels) for ``cxrkit eval detection``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command
from cxrkit.data.records import SPLITS

EXAMPLES = """\
examples:
  # the training and validation images of a 224-px VinDr cache, classes and reader fusion of the
  # detector config (default: the 14 VinDr classes, weighted boxes fusion)
  cxrkit export coco --manifest data/vindr.parquet --cache data/cache/vindr_224 --split train \\
      --config configs/finetune/faster_rcnn_vindr.yaml --out coco/vindr_train.json
  cxrkit export coco --manifest data/vindr.parquet --cache data/cache/vindr_224 --split val \\
      --config configs/finetune/faster_rcnn_vindr.yaml --out coco/vindr_val.json

  # detectron2's predictions on vindr_val -> cxrkit predictions in original pixels -> mAP
  cxrkit export predictions --results d2_out/inference/instances_predictions.pth \\
      --coco coco/vindr_val.json --out runs/d2/val_boxes.csv
  cxrkit eval detection --predictions runs/d2/val_boxes.csv --manifest data/vindr.parquet \\
      --split val --gt-reader fused --out reports/d2_val

The COCO file is in cache pixels; each image entry carries cxrkit_image_id and the geometry
(orig_width, orig_height, pad_left, pad_top, scale_x, scale_y) that maps it back.
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit export`` and its two forms."""
    parser = add_command(
        subparsers,
        "export",
        help="COCO files for detectron2; detectron2/COCO results to cxrkit predictions",
        description="Write a cache with its boxes as COCO JSON, or convert detectron2 / COCO "
        "detection results back to a cxrkit predictions file.",
        epilog=EXAMPLES,
    )
    forms = parser.add_subparsers(dest="export_kind", metavar="KIND", required=True)
    coco = forms.add_parser(
        "coco",
        help="cache images + fused boxes as COCO JSON (cache pixels)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    coco.add_argument("--manifest", required=True, type=Path, help="Parquet manifest")
    coco.add_argument("--cache", required=True, type=Path, help="a finished cache folder")
    coco.add_argument(
        "--split", required=True, choices=[*SPLITS, "all"], help="the manifest records to export"
    )
    coco.add_argument("--out", required=True, type=Path, help="the COCO JSON file to write")
    coco.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        help="detector config (cxrkit finetune YAML): classes, class_map, ignore, fusion",
    )
    coco.set_defaults(func=_coco)
    predictions = forms.add_parser(
        "predictions",
        help="detectron2 instances_predictions.pth / COCO results JSON -> predictions CSV",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predictions.add_argument(
        "--results", required=True, type=Path, help="instances_predictions.pth or results .json"
    )
    predictions.add_argument(
        "--coco", required=True, type=Path, help="the `cxrkit export coco` file the model ran on"
    )
    predictions.add_argument("--out", required=True, type=Path, help="CSV or Parquet to write")
    predictions.add_argument(
        "--format",
        choices=["detectron2", "coco"],
        help="results format (default: by suffix, .pth detectron2, .json COCO)",
    )
    predictions.set_defaults(func=_predictions)


def _coco(args: argparse.Namespace) -> int:
    import cxrkit
    from cxrkit import io
    from cxrkit.data import coco, loading
    from cxrkit.data.cache import Cache
    from cxrkit.data.records import read_manifest
    from cxrkit.finetune.config import FinetuneConfig
    from cxrkit.finetune.data import detection_records

    io.check_output_file(args.out)
    config = cxrkit.load_config(FinetuneConfig, args.config)
    cache = Cache(args.cache)
    records = loading.in_split(read_manifest(args.manifest), args.split)
    # the boxes finetune trains on: classes mapped, readers fused; every image kept (no sampling
    # of negatives: "No finding" images are listed without annotations)
    records = detection_records(records, config=config, train=False)
    path = coco.write_coco(records, args.out, cache=cache, classes=config.classes)
    n_boxes = sum(len(r.boxes) for r in records)
    print(f"wrote {path}: {len(records)} images, {n_boxes} boxes, {len(config.classes)} classes")
    return 0


def _predictions(args: argparse.Namespace) -> int:
    from cxrkit.eval import coco_results

    converted = coco_results.convert(args.results, coco=args.coco, out=args.out, format=args.format)
    dropped = (
        f" ({converted.dropped} boxes wholly in the padding dropped)" if converted.dropped else ""
    )
    print(f"wrote {args.out}: {len(converted.predictions)} boxes in original pixels{dropped}")
    return 0
