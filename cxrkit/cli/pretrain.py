"""``cxrkit pretrain``: Barlow Twins pretraining, its linear evaluation, and the backbone export.

Three forms::

    cxrkit pretrain --config FILE [key=value ...]               pretrain (cxrkit.pretrain.fit)
    cxrkit pretrain linear-eval --config FILE [key=value ...]   cxrkit.pretrain.linear_eval
    cxrkit pretrain export --checkpoint CKPT --out DIR          backbone.pth + backbone_d2.pkl
"""

from __future__ import annotations

import argparse
from typing import Any

from cxrkit.cli import common

TRAIN_EPILOG = """\
examples:
  # BarlowTwins-CXR on NIH ChestX-ray14 from ImageNet weights (a file you downloaded once)
  cxrkit pretrain --config configs/pretrain/barlow_twins_nih.yaml \\
      data.manifest=data/nih.parquet model.weights=weights/resnet50-11ad3fa6.pth

  # any folder of PNG/DICOM, the radiograph-specific views, from random weights, on a laptop
  cxrkit prepare csv --root my_cxrs --out my_cxrs.parquet --no-patient-ids
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

  # BarlowTwins-CXR's own protocol, to compare with their numbers (LEAKY: an image-level 80/20
  # split of the official test list, best epoch on the test set; the table says how many test
  # images have their patient in training)
  cxrkit pretrain linear-eval --config configs/pretrain/linear_eval_nih_authors.yaml \\
      weights=runs/pretrain/barlow_twins_nih/backbone.pth

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

EXAMPLE = "configs/pretrain/barlow_twins_nih.yaml"


def register(subparsers: Any) -> None:
    """Add ``cxrkit pretrain`` (with its ``linear-eval`` and ``export`` forms) to the CLI."""
    common.add_training_command(
        subparsers,
        "pretrain",
        help="Barlow Twins pretraining of ResNet-50; `pretrain linear-eval`, `pretrain export`",
        description="Pretrain a ResNet-50 with Barlow Twins on unlabeled chest X-rays (stage one), "
        "or run `cxrkit pretrain linear-eval ...` / `cxrkit pretrain export ...`.",
        epilog=TRAIN_EPILOG,
        words="key=value | linear-eval ... | export ...",
        train=_train,
        subcommands=SUBCOMMANDS,
        misplaced_config="put --config after `pretrain {name}`; see its --help",
    )


def linear_eval_parser() -> argparse.ArgumentParser:
    parser = common.sub_parser(
        "cxrkit pretrain linear-eval",
        description="Linear evaluation (frozen backbone) or fine-tuning of a backbone on a "
        "labeled manifest at several label fractions; per-finding and mean test AUROC.",
        epilog=LINEAR_EVAL_EPILOG,
    )
    common.add_run_arguments(parser, words="key=value")
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = common.sub_parser(
        "cxrkit pretrain export",
        description="Export a pretrain checkpoint's backbone as backbone.pth + backbone_d2.pkl.",
        epilog=EXPORT_EPILOG,
    )
    parser.add_argument("--checkpoint", required=True, help="a pretrain .ckpt (or backbone.pth)")
    parser.add_argument("--out", required=True, help="output directory")
    return parser


def _train(args: argparse.Namespace) -> int:
    from cxrkit import pretrain

    run = common.run_args(args, form="pretrain", example=EXAMPLE, subcommands=tuple(SUBCOMMANDS))
    result = pretrain.fit(common.load_config(pretrain.Config, run), resume=run.resume)
    print(f"backbone: {result.artifacts['backbone']}")
    print(f"detectron2: {result.artifacts['detectron2']}")
    return 0


def _linear_eval(args: argparse.Namespace) -> int:
    from cxrkit import pretrain
    from cxrkit.pretrain.linear_probe import format_summary

    run = common.run_args(
        args, form="pretrain linear-eval", example="configs/pretrain/linear_eval_nih.yaml"
    )
    summary = pretrain.linear_eval(
        common.load_config(pretrain.LinearEvalConfig, run), resume=run.resume
    )
    print(format_summary(summary))
    return 0


def _export(args: argparse.Namespace) -> int:
    from cxrkit import pretrain

    pth, d2 = pretrain.export(checkpoint=args.checkpoint, out_dir=args.out)
    print(f"backbone: {pth}\ndetectron2: {d2}")
    return 0


SUBCOMMANDS = {
    "linear-eval": (linear_eval_parser, _linear_eval),
    "export": (export_parser, _export),
}
