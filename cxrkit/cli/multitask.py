"""``cxrkit multitask``: train an experiment, score a manifest, run the screening ensemble, and
compare KCR Model 1 with Model 2."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxrkit.cli.common import (
    add_training_command,
    inference_parser,
    load_config,
    run_args,
    sub_parser,
    subcommand,
)
from cxrkit.errors import ConfigError

EXAMPLES = """\
train (the config decides: multi-label model, or the screening ensemble when task=screening;
options first, then key=value overrides; --resume auto|never|PATH, default auto):
  cxrkit multitask --config configs/multitask/kcr_model2.yaml \\
      data.manifest=nih.parquet data.cache=cache256 encoder.weights=resnet50-11ad3fa6.pth
  cxrkit multitask --config configs/multitask/kcr_model2.yaml encoder.init=checkpoint \\
      encoder.weights=runs/pretrain/backbone.pth output_dir=runs/kcr_model2_bt
  cxrkit multitask --config configs/multitask/screening_ensemble.yaml \\
      data.manifest=m.parquet data.cache=cache256 encoder.weights=densenet121-a639ec97.pth

score a manifest with a trained model (writes image_id, finding, score):
  cxrkit multitask predict --model runs/multitask/kcr_model2/model.pt \\
      --manifest nih.parquet --cache cache256 --split test --out model2_test.csv

run the screening ensemble (writes image_id, score for `cxrkit eval screening`; --members also
writes every member's class probabilities, one row per image x member):
  cxrkit multitask screen --ensemble runs/multitask/screening --manifest m.parquet \\
      --cache cache256 --split test --out screening_test.csv --members members_test.csv

one screening member alone (image_id, member, p_normal, p_target, p_other, prediction):
  cxrkit multitask predict --model runs/multitask/screening/members/Nodule/member.pt \\
      --manifest m.parquet --cache cache256 --split test --out nodule_member_test.csv

the KCR table, Model 1 vs Model 2 (mean AUROC, AP and PA AUROC, gap, p-values):
  cxrkit multitask compare --model1 runs/multitask/kcr_model1/predictions_test.csv \\
      --model2 runs/multitask/kcr_model2/predictions_test.csv --manifest nih.parquet \\
      --split test --out kcr_table.csv
"""


EXAMPLE_CONFIG = "configs/multitask/kcr_model1.yaml"


def register(subparsers: Any) -> None:
    """Add ``cxrkit multitask`` to the top-level subcommands."""
    add_training_command(
        subparsers,
        "multitask",
        help="multi-task models: KCR Model 1/2, Guendel, the screening ensemble",
        description="Train a multi-task experiment from a config (key=value overrides follow it), "
        "or run one of the actions predict, screen, compare (each has its own --help).",
        epilog=EXAMPLES,
        words="key=value | ACTION ...",
        train=main,
    )


def main(args: argparse.Namespace) -> int:
    action = subcommand(args, [*ACTIONS, "train"])
    if action is not None and action[0] in ACTIONS:
        return ACTIONS[action[0]](action[1])
    if action is not None:  # `train` is the default action, written out
        args = argparse.Namespace(**{**vars(args), "args": action[1]})
    return _train(args)


def _train(args: argparse.Namespace) -> int:
    run = run_args(
        args,
        form="multitask",
        example=EXAMPLE_CONFIG,
        subcommands=tuple(ACTIONS),
        second_form="an action",
    )
    from cxrkit import multitask

    result = multitask.fit(load_config(multitask.Config, run), resume=run.resume)
    print(f"cxrkit multitask: done; outputs in {result.output_dir}")
    return 0


PREDICTIONS_HELP = "predictions file (.csv or .parquet)"


def _for_inference(config: Any, ns: argparse.Namespace) -> Any:
    """The model's config with this command's data, batch size and workers."""
    data = dataclasses.replace(
        config.data,
        manifest=ns.manifest,
        cache=ns.cache,
        root=ns.root or config.data.root,
        batch_size=ns.batch_size or config.data.batch_size,
        num_workers=config.data.num_workers if ns.num_workers is None else ns.num_workers,
    )
    return dataclasses.replace(config, data=data)


def _records(config: Any, ns: argparse.Namespace) -> tuple[Any, list]:
    split = ns.split
    from cxrkit.data import loading
    from cxrkit.errors import DataError

    loading.check_split(split)  # a misspelt split fails before the cache is opened or built
    cache, every = loading.open_records(config.data, progress=not ns.no_progress)
    records = loading.in_split(every, split)
    if not records:
        raise DataError(f"{config.data.manifest}: no record in split {split!r}")
    return cache, records


def _predict(argv: Sequence[str]) -> int:
    parser = inference_parser(
        "cxrkit multitask predict",
        description="Score a manifest split with a trained multi-label model (model.pt; writes "
        "image_id, finding, score) or one screening member (member.pt; writes image_id, member, "
        "p_normal, p_target[, p_other], prediction).",
        epilog="example:\n  cxrkit multitask predict --model runs/multitask/kcr_model2/model.pt "
        "\\\n      --manifest nih.parquet --cache cache256 --split test --out model2_test.csv",
        model_help="model.pt written by training, or a screening member's member.pt",
        out_help=PREDICTIONS_HELP,
        data_required=True,
    )
    ns = parser.parse_args(list(argv))
    from cxrkit.eval.predictions import check_output
    from cxrkit.multitask import train

    check_output(ns.out)  # before the cache is opened (or built) and the model runs
    classifier = train.load(ns.model)
    model, config, blob = classifier.model, classifier.config, classifier.extra
    config = _for_inference(config, ns)
    cache, records = _records(config, ns)
    if config.task == "screening":
        from cxrkit.multitask.screening import predict_member, write_members

        disease = blob.get("disease")
        if not disease:
            raise ConfigError(f"{ns.model}: a screening model file without its member's disease")
        frame = predict_member(
            model, config, disease=disease, records=records, cache=cache, device=ns.device
        )
        path = write_members(frame, Path(ns.out))
    else:
        path = train.write_split_predictions(
            model, config, records=records, cache=cache, path=Path(ns.out), device=ns.device
        )
    print(f"cxrkit multitask predict: {len(records)} images scored -> {path}")
    return 0


def _screen(argv: Sequence[str]) -> int:
    parser = inference_parser(
        "cxrkit multitask screen",
        description="Run the screening ensemble (members + SVM) on a manifest split; writes "
        "image_id, score (SVM decision value; abnormal when score >= the ensemble's threshold: "
        "0, the SVM's own decision, unless it was trained with operating_point=sensitivity).",
        epilog="example:\n  cxrkit multitask screen --ensemble runs/multitask/screening "
        "--manifest m.parquet \\\n      --cache cache256 --split test --out screening_test.csv\n"
        "  cxrkit eval screening --predictions screening_test.csv --manifest m.parquet \\\n"
        "      --split test --risk-groups runs/multitask/screening/risk_groups.yaml \\\n"
        "      --ensemble runs/multitask/screening --out reports/screening",
        model_help="ensemble directory (ensemble.json)",
        out_help=PREDICTIONS_HELP,
        model_flag="--ensemble",
        data_required=True,
    )
    parser.add_argument(
        "--members",
        default=None,
        metavar="PATH",
        help="also write every member's class probabilities here (.csv or .parquet): image_id, "
        "member, p_normal, p_target, p_other, prediction; one row per image x member",
    )
    ns = parser.parse_args(list(argv))
    from cxrkit.eval.predictions import check_output
    from cxrkit.multitask import Ensemble
    from cxrkit.multitask.screening import screen_records

    check_output(ns.out)  # before the cache is opened (or built) and the members run
    if ns.members:
        check_output(ns.members)
    ensemble = Ensemble.load(ns.ensemble)
    ensemble.config = _for_inference(ensemble.config, ns)
    cache, records = _records(ensemble.config, ns)
    path = screen_records(
        ensemble,
        records=records,
        cache=cache,
        path=Path(ns.out),
        members_path=Path(ns.members) if ns.members else None,
        device=ns.device,
    )
    point = (
        "the SVM's decision"
        if ensemble.operating_point == "svm"
        else f"for sensitivity {ensemble.target_sensitivity}"
    )
    extra = f"; member probabilities -> {ns.members}" if ns.members else ""
    print(
        f"cxrkit multitask screen: {len(records)} images scored -> {path} "
        f"(threshold {ensemble.threshold:.4f}, {point}){extra}"
    )
    return 0


def _compare(argv: Sequence[str]) -> int:
    parser = sub_parser(
        "cxrkit multitask compare",
        description="The KCR table: Model 1 vs Model 2 on one manifest split - per-finding and "
        "mean AUROC with DeLong / bootstrap p-values, AP and PA AUROC, the AP-PA gap of each "
        "model and the change of the gap (computed by cxrkit.eval).",
        epilog="example:\n  cxrkit multitask compare --model1 runs/multitask/kcr_model1/"
        "predictions_test.csv \\\n      --model2 runs/multitask/kcr_model2/predictions_test.csv "
        "--manifest nih.parquet \\\n      --split test --out kcr_table.csv",
    )
    parser.add_argument(
        "--model1", required=True, help="Model 1 predictions (image_id, finding, score)"
    )
    parser.add_argument("--model2", required=True, help="Model 2 predictions")
    parser.add_argument("--manifest", required=True)
    parser.add_argument(
        "--split", default="test", help="split of the manifest; 'all' for every record"
    )
    parser.add_argument(
        "--findings",
        default=None,
        help="comma-separated entries, groups as 'Nodule/Mass=Nodule|Mass'; default: the findings "
        "of the config.yaml beside --model1, else the predicted names",
    )
    parser.add_argument(
        "--view-map", default=None, help="CSV image_id, view overriding the manifest's views"
    )
    parser.add_argument("--n-bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-missing", action="store_true")
    parser.add_argument(
        "--out", required=True, help="table CSV; the raw results go beside it (.json)"
    )
    ns = parser.parse_args(list(argv))

    from cxrkit.data.records import read_manifest
    from cxrkit.eval import views
    from cxrkit.eval.compare import compare_models, write_table
    from cxrkit.eval.predictions import read_predictions

    pred1, _ = read_predictions(ns.model1, kind="classification", allow_missing=ns.allow_missing)
    pred2, _ = read_predictions(ns.model2, kind="classification", allow_missing=ns.allow_missing)
    records = read_manifest(ns.manifest)
    if ns.split != "all":
        records = [r for r in records if r.split == ns.split]
    if not records:
        raise ConfigError(f"{ns.manifest}: no record in split {ns.split!r}")
    if ns.view_map:
        records, _ = views.apply_view_map(records, views.read_view_map(ns.view_map))
    findings = _findings_for(ns.findings, Path(ns.model1))
    table, details = compare_models(
        pred1,
        pred2,
        records,
        findings=findings,
        n_bootstrap=ns.n_bootstrap,
        seed=ns.seed,
        allow_missing=ns.allow_missing,
    )
    path = write_table(table, details, ns.out)
    with_columns = [
        "finding",
        "auroc_model1",
        "auroc_model2",
        "auroc_p_value",
        "gap_model1",
        "gap_model2",
        "gap_change_p_value",
    ]
    print(table[with_columns].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"cxrkit multitask compare: table -> {path} (raw results {path.with_suffix('.json')})")
    return 0


def _findings_for(option: str | None, predictions: Path) -> list[str] | None:
    if option:
        return [f.strip() for f in option.split(",") if f.strip()]
    run_config = predictions.parent / "config.yaml"
    if run_config.is_file():
        from cxrkit.config import load
        from cxrkit.multitask.config import MultiTaskConfig

        config = load(MultiTaskConfig, files=[run_config])
        if config.task == "multilabel":
            return list(config.findings)
    return None


ACTIONS: dict[str, Callable[[Sequence[str]], int]] = {
    "predict": _predict,
    "screen": _screen,
    "compare": _compare,
}
