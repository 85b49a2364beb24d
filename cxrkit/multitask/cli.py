"""``cxrkit multitask``: train an experiment, score a manifest, run the screening ensemble, and
compare KCR Model 1 with Model 2."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxrkit.errors import ConfigError

EXAMPLES = """\
train (the config decides: multi-label model, or the screening ensemble when task=screening):
  cxrkit multitask --config configs/multitask/kcr_model2.yaml \\
      data.manifest=nih.parquet data.cache=cache256 encoder.weights=resnet50-11ad3fa6.pth
  cxrkit multitask --config configs/multitask/kcr_model2.yaml encoder.init=barlow_twins \\
      encoder.weights=runs/pretrain/backbone.pth output_dir=runs/kcr_model2_bt
  cxrkit multitask --config configs/multitask/screening_ensemble.yaml \\
      data.manifest=m.parquet data.cache=cache256 encoder.weights=densenet121-a639ec97.pth

score a manifest with a trained model (writes image_id, finding, score):
  cxrkit multitask predict --model runs/multitask/kcr_model2/model.pt \\
      --manifest nih.parquet --cache cache256 --split test --out model2_test.csv

run the screening ensemble (writes image_id, score for `cxrkit eval screening`):
  cxrkit multitask screen --ensemble runs/multitask/screening --manifest m.parquet \\
      --cache cache256 --split test --out screening_test.csv

the KCR table, Model 1 vs Model 2 (mean AUROC, AP and PA AUROC, gap, p-values):
  cxrkit multitask compare --model1 runs/multitask/kcr_model1/predictions_test.csv \\
      --model2 runs/multitask/kcr_model2/predictions_test.csv --manifest nih.parquet \\
      --split test --out kcr_table.csv
"""


def register(subparsers: Any) -> None:
    """Add ``cxrkit multitask`` to the top-level subcommands."""
    parser = subparsers.add_parser(
        "multitask",
        help="multi-task models: KCR Model 1/2, Guendel, the screening ensemble",
        description="Train a multi-task experiment from a config (key=value overrides follow it), "
        "or run one of the actions predict, screen, compare (each has its own --help).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="experiment YAML (repeatable; later files override earlier ones)",
    )
    parser.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="key=value | ACTION ...",
        help="dotted config overrides, or an action (predict, screen, compare) and its options",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if rest and rest[0] in ACTIONS:
        return ACTIONS[rest[0]](rest[1:])
    if rest and rest[0] == "train":
        rest = rest[1:]
    return _train([*(x for c in args.config for x in ("--config", c)), *rest])


# --------------------------------------------------------------------------------------------------
def _train(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="cxrkit multitask")
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("overrides", nargs="*")
    ns = parser.parse_intermixed_args(list(argv))
    if not ns.config:
        raise ConfigError(
            "give an experiment: cxrkit multitask --config configs/multitask/kcr_model1.yaml "
            "[key=value ...] (see cxrkit multitask --help)"
        )
    bad = [o for o in ns.overrides if "=" not in o]
    if bad:
        raise ConfigError(
            f"{bad[0]!r} is neither key=value nor an action (predict, screen, compare)"
        )
    from cxrkit.config import load
    from cxrkit.multitask.config import MultiTaskConfig

    config = load(MultiTaskConfig, files=ns.config, overrides=ns.overrides)
    if config.task == "screening":
        from cxrkit.multitask.screening import train_ensemble

        out = train_ensemble(config)
    else:
        from cxrkit.multitask.train import fit

        out = fit(config)
    print(f"cxrkit multitask: done; outputs in {out}")
    return 0


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="Parquet manifest (cxrkit prepare)")
    parser.add_argument(
        "--cache",
        required=True,
        help="cache directory with the model's preprocessing recipe (built if missing)",
    )
    parser.add_argument("--split", default="test", help="split to score; 'all' for every record")
    parser.add_argument("--out", required=True, help="predictions file (.csv or .parquet)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def _for_inference(config: Any, ns: argparse.Namespace) -> Any:
    data = dataclasses.replace(
        config.data,
        manifest=ns.manifest,
        cache=ns.cache,
        batch_size=ns.batch_size or config.data.batch_size,
        num_workers=config.data.num_workers if ns.num_workers is None else ns.num_workers,
    )
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[ns.device]
    trainer = dataclasses.replace(config.trainer, accelerator=accelerator)
    return dataclasses.replace(config, data=data, trainer=trainer)


def _records(config: Any, split: str) -> tuple[Any, list]:
    from cxrkit.data import loading
    from cxrkit.errors import DataError

    cache = loading.open_cache(config.data)
    records = loading.load_records(
        config.data, split=None if split == "all" else split, cache=cache
    )
    if not records:
        raise DataError(f"{config.data.manifest}: no record in split {split!r}")
    return cache, records


def _predict(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cxrkit multitask predict",
        description="Score a manifest split with a trained multi-label model (model.pt).",
        epilog="example:\n  cxrkit multitask predict --model runs/multitask/kcr_model2/model.pt "
        "\\\n      --manifest nih.parquet --cache cache256 --split test --out model2_test.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model.pt written by training")
    _data_options(parser)
    ns = parser.parse_args(list(argv))
    from cxrkit.multitask.train import load_model, write_split_predictions

    model, config, _ = load_model(ns.model)
    if config.task != "multilabel":
        raise ConfigError(f"{ns.model}: a screening member; use `cxrkit multitask screen`")
    config = _for_inference(config, ns)
    cache, records = _records(config, ns.split)
    path = write_split_predictions(model, config, records=records, cache=cache, path=Path(ns.out))
    print(f"cxrkit multitask predict: {len(records)} images scored -> {path}")
    return 0


def _screen(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cxrkit multitask screen",
        description="Run the screening ensemble (members + SVM) on a manifest split; writes "
        "image_id, score (SVM decision value; abnormal when score >= the ensemble's threshold).",
        epilog="example:\n  cxrkit multitask screen --ensemble runs/multitask/screening "
        "--manifest m.parquet \\\n      --cache cache256 --split test --out screening_test.csv\n"
        "  cxrkit eval screening --predictions screening_test.csv --manifest m.parquet \\\n"
        "      --split test --risk-groups runs/multitask/screening/risk_groups.yaml \\\n"
        "      --threshold THRESHOLD_FROM_ensemble.json --out reports/screening",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ensemble", required=True, help="ensemble directory (ensemble.json)")
    _data_options(parser)
    ns = parser.parse_args(list(argv))
    from cxrkit.multitask.screening import Ensemble, screen_records

    ensemble = Ensemble.load(ns.ensemble)
    config = _for_inference(ensemble.config, ns)
    cache, records = _records(config, ns.split)
    path = screen_records(ensemble, config=config, records=records, cache=cache, path=Path(ns.out))
    print(
        f"cxrkit multitask screen: {len(records)} images scored -> {path} "
        f"(threshold {ensemble.threshold:.4f} for sensitivity {ensemble.target_sensitivity})"
    )
    return 0


def _compare(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="cxrkit multitask compare",
        description="The KCR table: Model 1 vs Model 2 on one manifest split - per-finding and "
        "mean AUROC with DeLong / bootstrap p-values, AP and PA AUROC, the AP-PA gap of each "
        "model and the change of the gap (computed by cxrkit.eval).",
        epilog="example:\n  cxrkit multitask compare --model1 runs/multitask/kcr_model1/"
        "predictions_test.csv \\\n      --model2 runs/multitask/kcr_model2/predictions_test.csv "
        "--manifest nih.parquet \\\n      --split test --out kcr_table.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    from cxrkit.eval.predictions import read_predictions
    from cxrkit.multitask.compare import compare_models, write_table

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
