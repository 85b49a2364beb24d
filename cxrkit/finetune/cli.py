"""``cxrkit finetune``: train the localizer, write its predictions, draw its CAMs.

Three forms::

    cxrkit finetune --config FILE [key=value ...]     train (cxrkit.finetune.train.fit)
    cxrkit finetune predict --model DETECTOR ...      detections in original pixels (+ Kaggle CSV)
    cxrkit finetune cam --model DETECTOR ...          CAM overlays per predicted box
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from cxrkit.errors import ConfigError

TRAIN_EPILOG = """\
examples:
  # BarlowTwins-CXR detector on VinDr-CXR from stage one's backbone.pth, 224 px
  cxrkit finetune --config configs/finetune/faster_rcnn_vindr.yaml \\
      data.manifest=vindr.parquet data.cache=cache/vindr224 \\
      model.backbone_weights=runs/pretrain/backbone.pth output_dir=runs/finetune/bt

  # the same from random initialisation, NMS instead of weighted boxes fusion, 640 px, bf16 GPU
  cxrkit finetune --config configs/finetune/faster_rcnn_vindr.yaml model.backbone_weights= \\
      fusion.method=nms data.preprocess.size=640 trainer.precision=bf16-mixed

  # 8 GPUs: the same command under torchrun (or srun)
  torchrun --nproc-per-node 8 -m cxrkit.cli finetune --config ... trainer.strategy=ddp

  # then
  cxrkit finetune predict --model runs/finetune/bt/detector.pt --split test --out test.csv \\
      --submission submission.csv
  cxrkit finetune cam --model runs/finetune/bt/detector.pt --split test --limit 8 --out cams/

The run resumes from OUTPUT_DIR/checkpoints/last.ckpt when it exists (--resume never to restart).
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

Writes OUT/<image>_<rank>_<finding>.png (heat map over the cache image, box drawn) and
OUT/cams.csv. Ablation-CAM runs one forward pass per batch of ablated channels: on a CPU use
--ablation-ratio 0.05 or --method gradcam / eigencam.
"""

SUBCOMMANDS = ("predict", "cam")


def register(subparsers: Any) -> None:
    """Add ``cxrkit finetune`` (with its ``predict`` and ``cam`` forms) to the CLI."""
    parser = subparsers.add_parser(
        "finetune",
        help="train the Faster R-CNN localizer; `finetune predict`, `finetune cam`",
        description="Train the Faster R-CNN + FPN abnormality localizer (stage two), or run "
        "`cxrkit finetune predict ...` / `cxrkit finetune cam ...` with a trained detector.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", action="append", default=[], help="YAML file (repeatable)")
    parser.add_argument(
        "--resume",
        default="auto",
        help="auto (continue from OUTPUT_DIR/checkpoints/last.ckpt if present), never, or a .ckpt",
    )
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="key=value | predict ... | cam ...",
        help="config overrides, or a subcommand with its own options",
    )
    parser.set_defaults(func=_dispatch)


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrkit finetune predict",
        description="Run a trained detector over a split; write detections in original pixels.",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_inputs(parser)
    parser.add_argument("--out", required=True, help="predictions file (.csv or .parquet)")
    parser.add_argument("--submission", help="also write the Kaggle VinBigData submission CSV")
    parser.add_argument(
        "--score-thresh", type=float, default=None, help="drop detections below (default: model's)"
    )
    return parser


def cam_parser() -> argparse.ArgumentParser:
    from cxrkit.finetune.cam import DEFAULT_LAYER, METHODS

    parser = argparse.ArgumentParser(
        prog="cxrkit finetune cam",
        description="Class activation maps (pytorch-grad-cam) for each predicted box.",
        epilog=CAM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_inputs(parser)
    parser.add_argument("--out", required=True, help="output folder for the PNG overlays")
    parser.add_argument("--image-ids", help="comma-separated image ids (default: the split)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--method", choices=METHODS, default="ablation")
    parser.add_argument("--target-layer", default=DEFAULT_LAYER, help="dotted module path")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("--top-k", type=int, default=3, help="boxes per image")
    parser.add_argument(
        "--ablation-ratio", type=float, default=1.0, help="fraction of channels to ablate"
    )
    return parser


def _common_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="OUTPUT_DIR/detector.pt or a finetune checkpoint (.ckpt)"
    )
    parser.add_argument("--manifest", help="manifest (default: the one the detector trained on)")
    parser.add_argument("--cache", help="cache directory (default: the detector's)")
    parser.add_argument("--split", default="test", help="split to run on; 'all' for every image")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _dispatch(args: argparse.Namespace) -> int:
    rest: list[str] = list(args.args)
    if rest and rest[0] in SUBCOMMANDS:
        if args.config:
            raise ConfigError(f"`finetune {rest[0]}` takes no --config; see its --help")
        if rest[0] == "predict":
            return _predict(predict_parser().parse_args(rest[1:]))
        return _cam(cam_parser().parse_args(rest[1:]))
    return _train(args.config, rest, resume=args.resume)


def _train(files: Sequence[str], overrides: Sequence[str], *, resume: str) -> int:
    from cxrkit import config as config_io
    from cxrkit.finetune.config import FinetuneConfig

    options = [o for o in overrides if o.startswith("-")]
    if options:
        raise ConfigError(
            f"{options[0]!r} after the key=value overrides: put options (--config, --resume) "
            "first, e.g. `cxrkit finetune --config FILE key=value`"
        )
    if not files:
        raise ConfigError("give --config FILE (e.g. configs/finetune/faster_rcnn_vindr.yaml)")
    config = config_io.load(FinetuneConfig, files=files, overrides=overrides)

    from cxrkit.finetune.train import fit

    result = fit(config, resume=False if resume == "never" else resume)
    print(f"detector: {result.detector}")
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    if result.val_map50 is not None:
        print(f"best val/mAP50: {result.val_map50:.4f}")
    if result.predictions is not None:
        print(f"validation detections: {result.predictions}")
    return 0


def _inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, list[Any], Any]:
    """The model, its config, the cache, the records of ``--split`` and the device."""
    import dataclasses

    import torch

    from cxrkit.data import loading
    from cxrkit.finetune.train import load_detector

    model, config = load_detector(args.model)
    data = dataclasses.replace(
        config.data,
        manifest=args.manifest or config.data.manifest,
        cache=args.cache or config.data.cache,
    )
    if not data.manifest or not data.cache:
        raise ConfigError(f"{args.model}: the detector names no manifest/cache; give them")
    split = None if args.split == "all" else args.split
    cache = loading.open_cache(data, progress=not args.no_progress)
    records = loading.load_records(data, split=split, cache=cache)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    return model, config, cache, records, device


def _predict(args: argparse.Namespace) -> int:
    from cxrkit.eval.predictions import write_predictions
    from cxrkit.finetune.predict import kaggle_submission, predict, write_csv

    model, config, cache, records, device = _inputs(args)
    if args.score_thresh is not None:
        if not 0 <= args.score_thresh < 1:
            raise ConfigError(f"--score-thresh must be in [0, 1), got {args.score_thresh}")
        model.roi_heads.score_thresh = args.score_thresh
    frame = predict(
        model,
        records=records,
        cache=cache,
        classes=config.classes,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
    )
    out = write_predictions(frame, args.out, kind="detection")
    print(f"{len(frame)} detections on {len(records)} images (original pixels): {out}")
    if args.submission:
        sub = kaggle_submission(
            frame, image_ids=[r.image_id for r in records], classes=config.classes
        )
        print(f"Kaggle submission: {write_csv(sub, args.submission)}")
    return 0


def _cam(args: argparse.Namespace) -> int:
    from cxrkit.finetune.cam import explain

    model, config, cache, records, device = _inputs(args)
    if args.image_ids:
        wanted = [i.strip() for i in args.image_ids.split(",") if i.strip()]
        by_id = {r.image_id: r for r in records}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise ConfigError(f"--image-ids {missing[:5]} are not in split {args.split!r}")
        records = [by_id[i] for i in wanted]
    if args.limit is not None:
        records = records[: max(0, args.limit)]
    index = explain(
        model,
        records=records,
        cache=cache,
        classes=config.classes,
        out_dir=args.out,
        method=args.method,
        target_layer=args.target_layer,
        score_thresh=args.score_thresh,
        top_k=args.top_k,
        ablation_ratio=args.ablation_ratio,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
    )
    print(f"{len(index)} CAM overlays for {index['image_id'].nunique()} images in {args.out}")
    return 0
