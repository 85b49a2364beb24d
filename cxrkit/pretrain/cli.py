"""``cxrkit pretrain``: Barlow Twins pretraining, its linear evaluation, and the backbone export.

Three forms::

    cxrkit pretrain --config FILE [key=value ...]               pretrain (cxrkit.pretrain.train)
    cxrkit pretrain linear-eval --config FILE [key=value ...]   linear / fine-tune evaluation
    cxrkit pretrain export --checkpoint CKPT --out DIR          backbone.pth + backbone_d2.pkl
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from cxrkit.errors import ConfigError

TRAIN_EPILOG = """\
examples:
  # BarlowTwins-CXR on NIH ChestX-ray14 from ImageNet weights (a file you downloaded once)
  cxrkit pretrain --config configs/pretrain/barlow_twins_nih.yaml \\
      data.manifest=data/nih.parquet model.weights=weights/resnet50-11ad3fa6.pth

  # any folder of PNG/DICOM, the radiograph-specific views, from random weights, on a laptop
  cxrkit prepare csv --root my_cxrs --out my_cxrs.parquet
  cxrkit pretrain --config configs/pretrain/barlow_twins_nih.yaml \\
      --config configs/pretrain/barlow_twins_nih_cxr_views.yaml data.manifest=my_cxrs.parquet \\
      data.cache=cache/my_cxrs model.init=random trainer.accelerator=cpu trainer.precision=32-true

  # 8 GPUs on one node, or several nodes under SLURM (srun starts one task per GPU)
  torchrun --nproc-per-node 8 -m cxrkit.cli pretrain --config configs/pretrain/barlow_twins_nih.yaml
  srun cxrkit pretrain --config configs/pretrain/barlow_twins_nih.yaml trainer.num_nodes=4

  # then: compare with ImageNet and random initialisation
  cxrkit pretrain linear-eval --config configs/pretrain/linear_eval_nih.yaml \\
      weights=runs/pretrain/barlow_twins_nih/backbone.pth

The run resumes from OUTPUT_DIR/checkpoints/last.ckpt when it exists (--resume never restarts,
--resume PATH continues from a given checkpoint). Outputs: OUTPUT_DIR/backbone.pth (torchvision
ResNet-50 names, no fc: stage two's input) and backbone_d2.pkl (detectron2 format, see
configs/detectron2/). Options go before the key=value overrides.
"""

LINEAR_EVAL_EPILOG = """\
examples:
  # frozen Barlow Twins backbone, linear head, 1 %, 10 % and 100 % of the training labels
  cxrkit pretrain linear-eval --config configs/pretrain/linear_eval_nih.yaml \\
      weights=runs/pretrain/barlow_twins_nih/backbone.pth

  # the baselines: ImageNet weights, random weights; and full fine-tuning instead of a linear head
  cxrkit pretrain linear-eval --config configs/pretrain/linear_eval_nih.yaml init=imagenet \\
      weights=weights/resnet50-11ad3fa6.pth output_dir=runs/linear_eval/imagenet
  cxrkit pretrain linear-eval --config configs/pretrain/linear_eval_nih.yaml init=random \\
      output_dir=runs/linear_eval/random
  cxrkit pretrain linear-eval --config configs/pretrain/linear_eval_nih.yaml mode=finetune

Writes OUTPUT_DIR/fraction_<f>/ (run, test predictions, evaluation JSON) and
OUTPUT_DIR/summary.csv (fraction, finding, auroc; finding "mean" is the mean AUROC).
"""

EXPORT_EPILOG = """\
example:
  cxrkit pretrain export --checkpoint runs/pretrain/barlow_twins_nih/checkpoints/last.ckpt \\
      --out runs/pretrain/barlow_twins_nih/step_export

Writes OUT/backbone.pth (loads with strict=True into torchvision.models.resnet50() without fc)
and OUT/backbone_d2.pkl (detectron2; config in configs/detectron2/).
"""

SUBCOMMANDS = ("linear-eval", "export")


def register(subparsers: Any) -> None:
    """Add ``cxrkit pretrain`` (with its ``linear-eval`` and ``export`` forms) to the CLI."""
    parser = subparsers.add_parser(
        "pretrain",
        help="Barlow Twins pretraining of ResNet-50; `pretrain linear-eval`, `pretrain export`",
        description="Pretrain a ResNet-50 with Barlow Twins on unlabeled chest X-rays (stage one), "
        "or run `cxrkit pretrain linear-eval ...` / `cxrkit pretrain export ...`.",
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
        metavar="key=value | linear-eval ... | export ...",
        help="config overrides, or a subcommand with its own options",
    )
    parser.set_defaults(func=_dispatch)


def linear_eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrkit pretrain linear-eval",
        description="Linear evaluation (frozen backbone) or fine-tuning of a backbone on a "
        "labeled manifest at several label fractions; per-finding and mean test AUROC.",
        epilog=LINEAR_EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", action="append", default=[], help="YAML file (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrkit pretrain export",
        description="Export a pretrain checkpoint's backbone as backbone.pth + backbone_d2.pkl.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a pretrain .ckpt (or backbone.pth)")
    parser.add_argument("--out", required=True, help="output directory")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    rest: list[str] = list(args.args)
    if rest and rest[0] in SUBCOMMANDS:
        if args.config:
            raise ConfigError(f"put --config after `pretrain {rest[0]}`; see its --help")
        if rest[0] == "linear-eval":
            sub = linear_eval_parser().parse_args(rest[1:])
            return _linear_eval(sub.config, sub.overrides)
        sub = export_parser().parse_args(rest[1:])
        return _export(sub.checkpoint, sub.out)
    return _train(args.config, rest, resume=args.resume)


def _check_overrides(files: Sequence[str], overrides: Sequence[str], *, form: str) -> None:
    options = [o for o in overrides if o.startswith("-")]
    if options:
        raise ConfigError(
            f"{options[0]!r} after the key=value overrides: put options (--config, --resume) "
            f"first, e.g. `cxrkit {form} --config FILE key=value`"
        )
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(
            f"{bad[0]!r} is neither key=value nor a subcommand ({', '.join(SUBCOMMANDS)})"
        )
    if not files:
        raise ConfigError(f"give --config FILE (see `cxrkit {form} --help`)")


def _train(files: Sequence[str], overrides: Sequence[str], *, resume: str) -> int:
    from cxrkit import config as config_io
    from cxrkit.pretrain.config import PretrainConfig

    _check_overrides(files, overrides, form="pretrain")
    config = config_io.load(PretrainConfig, files=files, overrides=overrides)

    from cxrkit.pretrain.train import run

    backbone = run(config, resume=False if resume == "never" else resume)
    print(f"backbone: {backbone}")
    print(f"detectron2: {backbone.with_name('backbone_d2.pkl')}")
    return 0


def _linear_eval(files: Sequence[str], overrides: Sequence[str]) -> int:
    from cxrkit import config as config_io
    from cxrkit.pretrain.config import LinearEvalConfig

    _check_overrides(files, overrides, form="pretrain linear-eval")
    config = config_io.load(LinearEvalConfig, files=files, overrides=overrides)

    from cxrkit.pretrain import linear_eval

    summary = linear_eval.run(config)
    print(linear_eval.format_summary(summary))
    return 0


def _export(checkpoint: str, out: str) -> int:
    from cxrkit.pretrain.export import export_checkpoint

    pth, d2 = export_checkpoint(checkpoint=checkpoint, out_dir=out)
    print(f"backbone: {pth}\ndetectron2: {d2}")
    return 0
