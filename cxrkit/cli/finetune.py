"""``cxrkit finetune``: train the localizer, write its predictions, draw its CAMs.

Three forms::

    cxrkit finetune --config FILE [key=value ...]     train (cxrkit.finetune.fit)
    cxrkit finetune predict --model DETECTOR ...      detections in original pixels (+ Kaggle CSV)
    cxrkit finetune cam --model DETECTOR ...          CAM overlays per predicted box
"""

from __future__ import annotations

import argparse
from typing import Any

from cxrkit.cli import common

TRAIN_EPILOG = """\
examples:
  # BarlowTwins-CXR detector on VinDr-CXR from stage one's backbone.pth, 224 px
  cxrkit finetune --config configs/finetune/faster_rcnn_vindr.yaml \\
      data.manifest=vindr.parquet data.cache=cache/vindr224 \\
      model.init=checkpoint model.weights=runs/pretrain/backbone.pth output_dir=runs/finetune/bt

  # the ImageNet baseline (torchvision's file), then random initialisation with NMS instead of
  # weighted boxes fusion, 640 px, bf16 GPU
  cxrkit finetune --config configs/finetune/faster_rcnn_vindr.yaml model.init=imagenet \\
      model.weights=weights/resnet50-11ad3fa6.pth output_dir=runs/finetune/imagenet
  cxrkit finetune --config configs/finetune/faster_rcnn_vindr.yaml model.init=random \\
      fusion.method=nms data.preprocess.size=640 trainer.precision=bf16-mixed

  # 8 GPUs: the same command under torchrun (or srun)
  torchrun --nproc-per-node 8 -m cxrkit.cli finetune --config ... trainer.strategy=ddp

  # then
  cxrkit finetune predict --model runs/finetune/bt/detector.pt --split test --out test.csv \\
      --submission submission.csv
  cxrkit finetune cam --model runs/finetune/bt/detector.pt --split test --limit 8 --out cams/

The run resumes from OUTPUT_DIR/checkpoints/last.ckpt when it exists (--resume never to restart;
a resumed run does not read model.weights). Writes OUTPUT_DIR/detector.pt (the best weights).
Options go before the key=value overrides. See `cxrkit finetune predict --help` and
`cxrkit finetune cam --help`.
"""

PREDICT_EPILOG = """\
example:
  cxrkit finetune predict --model runs/finetune/bt/detector.pt --split test \\
      --out runs/finetune/bt/test.csv --submission runs/finetune/bt/submission.csv

The manifest and cache default to the ones the detector was trained on (a missing cache is built
with the detector's preprocessing recipe). Boxes are written in ORIGINAL image pixels:
image_id, finding, score, x1, y1, x2, y2. The Kaggle VinBigData submission has one row per image
(image_id, PredictionString); an image without detections gets "14 1 0 0 1 1".
"""

CAM_EPILOG = """\
example:
  cxrkit finetune cam --model runs/finetune/bt/detector.pt --split test --limit 8 \\
      --method ablation --target-layer backbone.body.layer3 --score-thresh 0.3 --top-k 3 \\
      --out runs/finetune/bt/cams

Writes OUT/<image>_<rank>_<finding>.png (heat map over the cache image, the predicted box white,
the ground-truth boxes magenta) and OUT/cams.csv (one row per CAM: box, score, energy inside the
box and pointing-game hit, against the box and against the ground truth). --limit / --max-cams
choose each class's best box first, then the best-scoring rest. Ablation-CAM runs one forward
pass per batch of ablated channels: on a CPU use --ablation-ratio 0.05 or --method gradcam /
eigencam.
"""

EXAMPLE = "configs/finetune/faster_rcnn_vindr.yaml"
MODEL_HELP = "OUTPUT_DIR/detector.pt or a finetune checkpoint (.ckpt)"


def register(subparsers: Any) -> None:
    """Add ``cxrkit finetune`` (with its ``predict`` and ``cam`` forms) to the CLI."""
    common.add_training_command(
        subparsers,
        "finetune",
        help="train the Faster R-CNN localizer; `finetune predict`, `finetune cam`",
        description="Train the Faster R-CNN + FPN abnormality localizer (stage two), or run "
        "`cxrkit finetune predict ...` / `cxrkit finetune cam ...` with a trained detector.",
        epilog=TRAIN_EPILOG,
        words="key=value | predict ... | cam ...",
        train=_train,
        subcommands=SUBCOMMANDS,
        misplaced_config="`finetune {name}` takes no --config; see its --help",
    )


def predict_parser() -> argparse.ArgumentParser:
    parser = common.inference_parser(
        "cxrkit finetune predict",
        description="Run a trained detector over a split; write detections in original pixels.",
        epilog=PREDICT_EPILOG,
        model_help=MODEL_HELP,
        out_help="predictions file (.csv or .parquet)",
        batch_size=8,
    )
    parser.add_argument("--submission", help="also write the Kaggle VinBigData submission CSV")
    parser.add_argument(
        "--score-thresh", type=float, default=None, help="drop detections below (default: model's)"
    )
    return parser


def cam_parser() -> argparse.ArgumentParser:
    from cxrkit.finetune.cam import DEFAULT_LAYER, METHODS

    parser = common.inference_parser(
        "cxrkit finetune cam",
        description="Class activation maps (pytorch-grad-cam) for each predicted box.",
        epilog=CAM_EPILOG,
        model_help=MODEL_HELP,
        out_help="output folder for the PNG overlays",
        batch_size=8,
    )
    parser.add_argument("--image-ids", help="comma-separated image ids (default: the split)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--max-cams", type=int, default=None, help="at most this many CAMs")
    parser.add_argument("--method", choices=METHODS, default="ablation")
    parser.add_argument("--target-layer", default=DEFAULT_LAYER, help="dotted module path")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("--top-k", type=int, default=3, help="boxes per image")
    parser.add_argument(
        "--ablation-ratio", type=float, default=1.0, help="fraction of channels to ablate"
    )
    return parser


def _train(args: argparse.Namespace) -> int:
    from cxrkit import finetune

    run = common.run_args(args, form="finetune", example=EXAMPLE, subcommands=tuple(SUBCOMMANDS))
    result = finetune.fit(common.load_config(finetune.Config, run), resume=run.resume)
    print(f"detector: {result.artifacts['detector']}")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    if "val/mAP50" in result.metrics:
        print(f"best val/mAP50: {result.metrics['val/mAP50']:.4f}")
    if "predictions" in result.artifacts:
        print(f"validation detections: {result.artifacts['predictions']}")
    return 0


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "manifest": args.manifest,
        "cache": args.cache,
        "root": args.root,
        "split": args.split,
        "batch_size": args.batch_size,
        "device": args.device,
        "progress": not args.no_progress,
    }


def _predict(args: argparse.Namespace) -> int:
    from cxrkit.finetune.inference import predict_split

    done = predict_split(
        args.model,
        out=args.out,
        submission=args.submission,
        score_thresh=args.score_thresh,
        num_workers=args.num_workers or 0,
        **_inputs(args),
    )
    print(
        f"{len(done.frame)} detections on {done.n_images} images (original pixels): "
        f"{done.predictions}"
    )
    if done.submission is not None:
        print(f"Kaggle submission: {done.submission}")
    return 0


def _cam(args: argparse.Namespace) -> int:
    from cxrkit.finetune.inference import explain_split

    wanted = [i.strip() for i in (args.image_ids or "").split(",") if i.strip()]
    index = explain_split(
        args.model,
        out_dir=args.out,
        image_ids=wanted,
        limit=args.limit,
        max_cams=args.max_cams,
        method=args.method,
        target_layer=args.target_layer,
        score_thresh=args.score_thresh,
        top_k=args.top_k,
        ablation_ratio=args.ablation_ratio,
        **_inputs(args),
    )
    print(f"{len(index)} CAM overlays for {index['image_id'].nunique()} images in {args.out}")
    return 0


SUBCOMMANDS = {"predict": (predict_parser, _predict), "cam": (cam_parser, _cam)}
