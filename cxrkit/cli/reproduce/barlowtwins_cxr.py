"""``cxrkit reproduce barlowtwins-cxr``: the BarlowTwins-CXR protocol in one command
(:mod:`cxrkit.reproduce.barlowtwins_cxr`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command
from cxrkit.cli.reproduce import add_driver_arguments

EPILOG = """\
examples:
  cxrkit reproduce barlowtwins-cxr --plan --out runs/btcxr     # the stages and a GPU-time estimate
  cxrkit reproduce barlowtwins-cxr --nih data/nih --vindr data/vinbigdata --out runs/btcxr \\
      --imagenet-v1 weights/resnet50-0676ba61.pth --imagenet-v2 weights/resnet50-11ad3fa6.pth
  cxrkit reproduce barlowtwins-cxr --scale tiny --seeds 2 --out runs/btcxr_tiny  # CPU, phantoms

The authors' own VinDr split: --split-from val=valid_annotations.json --split-from
test=test_annotations.json (their preprocessing/*_annotations.json). ImageNet files:
https://download.pytorch.org/models/resnet50-0676ba61.pth (V1, the ImageNet arm) and
https://download.pytorch.org/models/resnet50-11ad3fa6.pth (V2, where pretraining starts).
Every protocol value is in configs/barlowtwins_cxr/, commented with its source.
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit reproduce barlowtwins-cxr``."""
    parser = add_command(
        subparsers,
        "barlowtwins-cxr",
        help="BarlowTwins-CXR: Barlow Twins on NIH -> Faster R-CNN on VinDr, three arms",
        description="Pretrain Barlow Twins on NIH ChestX-ray14, fine-tune Faster R-CNN on "
        "VinDr-CXR's abnormal images from Barlow Twins, ImageNet V1 and random weights over "
        "seeds and image sizes, and write the mAP50 tables (paired BT - ImageNet test, per class, "
        "per view, Kaggle metric), the linear-evaluation AUROCs and an Ablation-CAM panel.",
        epilog=EPILOG,
    )
    add_driver_arguments(parser, out_default="runs/barlowtwins_cxr")
    parser.add_argument("--nih", type=Path, help="NIH ChestX-ray14 folder (tiny: optional)")
    parser.add_argument("--vindr", type=Path, help="VinBigData / VinDr-CXR folder (tiny: optional)")
    parser.add_argument("--imagenet-v1", type=Path, help="torchvision resnet50-0676ba61.pth")
    parser.add_argument("--imagenet-v2", type=Path, help="torchvision resnet50-11ad3fa6.pth")
    parser.add_argument("--seeds", type=int, default=3, help="detector seeds per arm (default 3)")
    parser.add_argument(
        "--split-from",
        action="append",
        default=[],
        metavar="SPLIT=FILE",
        help="VinDr images a COCO JSON or id list puts in SPLIT (repeatable); default 70/15/15",
    )
    parser.add_argument(
        "--protocol", type=Path, help="protocol folder (default: configs/barlowtwins_cxr)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cxrkit.data.splits import parse_split_from
    from cxrkit.reproduce.barlowtwins_cxr import run

    table = run(
        out_dir=args.out,
        nih=args.nih,
        vindr=args.vindr,
        imagenet_v1=args.imagenet_v1,
        imagenet_v2=args.imagenet_v2,
        seeds=args.seeds,
        scale=args.scale,
        stages=args.stage,
        plan_only=args.plan,
        split_from=parse_split_from(args.split_from),
        protocol=args.protocol,
    )
    if table is not None:
        print(f"tables: {table} (and table.csv, report.json beside it)")
    return 0
