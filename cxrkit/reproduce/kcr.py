"""``cxrkit reproduce kcr``: KCR 2025, Model 1 (classifier) vs Model 2 (+ reconstruction decoder).

The abstract's protocol, as far as it states one: an ImageNet-pretrained encoder classifies five
findings (consolidation, pneumothorax, nodule or mass, fibrosis, pleural effusion); Model 2 adds an
image-reconstruction decoder; both are fully fine-tuned and evaluated on external datasets on all,
AP and PA images, with the AP - PA AUROC gap of each model and its change. Everything else
(ResNet-50, 256 px, Adam 1e-4, 30 epochs, lambda 0.8 from the screening thesis, selection of both
models by validation mean AUROC) is cxrkit's choice and is said so in
``configs/multitask/kcr_model{1,2}.yaml``.

Stages::

    data          (tiny scale only) phantoms with AP and PA films: a training set, two externals
    model1        train Model 1 (cxrkit.multitask.fit), or reuse its finished run
    model2        train Model 2 the same way
    predict-NAME  both models score every image of external dataset NAME
    eval-NAME     the KCR table and the abstract's result block for NAME (cxrkit.eval.compare)
    table         one table over every external dataset, report.md and report.json

Outputs in ``OUT``: ``model1/``, ``model2/`` (runs), ``predictions/NAME_model{1,2}.csv``,
``NAME/kcr_table.{md,csv,json}``, ``NAME/result_block.md``, ``NAME/models_by_view.png`` (Model 1
vs Model 2 AUROC per finding on AP and on PA films), ``table.{md,csv}``, ``report.md``,
``report.json``. p-values: paired DeLong per finding for the model differences, unpaired DeLong
(R pROC's Student t with Welch df by default, or the normal z) per finding for each model's AP-PA
gap, the patient bootstrap for means and gap changes, each with its p floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrkit.errors import ConfigError
from cxrkit.reproduce.multitask_runs import load_model_config, synth_manifest, train_model
from cxrkit.reproduce.pipeline import Pipeline, StagePlan, write_json, write_table

NAME = "reproduce kcr"
MODELS = ("model1", "model2")
# p = 0.0002 (the abstract's smallest) needs a floor below it: 2 / (20,000 + 1) = 0.0001
PAPER_BOOTSTRAP = 20_000
DELONG = ("t", "normal")


@dataclass(frozen=True)
class Scale:
    """Sizes of one ``--scale``; the paper scale uses the user's data and the paper configs."""

    config_prefix: str  # "" (kcr_model1.yaml) or "tiny_" (tiny_kcr_model1.yaml)
    n_bootstrap: int
    n_train: int = 0  # tiny: phantoms synthesised for training (0: the user's manifest)
    n_external: int = 0  # tiny: phantoms per synthesised external dataset
    image_size: int = 0  # tiny: phantom side in pixels


SCALES = {
    "paper": Scale(config_prefix="", n_bootstrap=PAPER_BOOTSTRAP),
    "tiny": Scale(config_prefix="tiny_", n_bootstrap=200, n_train=40, n_external=48, image_size=64),
}
TINY_EXTERNALS = ("public", "private")  # the abstract's two external sets, as phantoms


def predict_records(
    model_path: str | Path, *, manifest: Path, cache_dir: Path, split: str = "all"
) -> tuple[Any, list[Any], Any]:
    """Load a model file and score ``split`` of ``manifest`` through a cache built with the
    model's own preprocessing recipe; returns ``(predictions, records, config)``."""
    from dataclasses import replace

    from cxrkit import multitask
    from cxrkit.data import loading

    classifier = multitask.load(model_path)
    model, config = classifier.model, classifier.config
    data = replace(config.data, manifest=str(manifest), cache=str(cache_dir), num_workers=0)
    cache, records = loading.open_records(data, progress=False)
    records = loading.in_split(records, split)
    frame = multitask.predict(model, config, records=records, cache=cache, device="auto")
    return frame, records, config


def parse_externals(items: Sequence[str]) -> dict[str, Path]:
    """``NAME=MANIFEST`` items as ``{name: path}``.

    Raises:
        ConfigError: an item without ``=``, an empty or repeated name, or a name that is not
            file-name safe.
    """
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--external {item!r} is not NAME=MANIFEST")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"--external {item!r}: NAME must be letters, digits, - or _")
        if name in out:
            raise ConfigError(f"--external names {name!r} twice")
        out[name] = Path(path)
    return out


# --------------------------------------------------------------------------------------------------
# the driver


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}"


def _p(x: Any, floor: Any) -> str:
    from cxrkit.eval.report import fmt_p

    text = f"p={fmt_p(x)}"
    if floor is not None and isinstance(floor, float) and math.isfinite(floor) and x == floor:
        text = f"p<={fmt_p(floor)} (the bootstrap's floor)"
    return text


def result_block(name: str, rows: Sequence[Mapping[str, Any]], details: Mapping[str, Any]) -> str:
    """The abstract's RESULTS paragraph for one external dataset, from the KCR table rows."""
    by = {r["finding"]: r for r in rows}
    mean = by["mean"]
    counts = details["view_gaps"]["counts"]
    floor = mean["p_floor"]
    lines = [
        f"### {name}",
        "",
        f"Images: {mean['n']} (AP {counts.get('AP', 0)}, PA {counts.get('PA', 0)}, other views "
        f"{counts.get('LL', 0) + counts.get('unknown', 0)}).",
        "",
        f"Model 2 - Model 1 mAUROC: {_fmt(mean['auroc_difference'])} on all images "
        f"({_p(mean['auroc_p_value'], floor)}); AP: {_fmt(mean['auroc_ap_difference'])} "
        f"({_p(mean['auroc_ap_p_value'], floor)}), PA: {_fmt(mean['auroc_pa_difference'])} "
        f"({_p(mean['auroc_pa_p_value'], floor)}).",
        "",
        f"AP-PA mAUROC gap: Model 1 {_fmt(mean['gap_model1'])}, Model 2 "
        f"{_fmt(mean['gap_model2'])}; change {_fmt(mean['gap_change'])} "
        f"({_p(mean['gap_change_p_value'], floor)}).",
        "",
        "Per finding (AP-PA gap, Model 1 -> Model 2, change p, paired bootstrap):",
        "",
    ]
    for finding, r in by.items():
        if finding == "mean":
            continue
        lines.append(
            f"- {finding}: {_fmt(r['gap_model1'])} -> {_fmt(r['gap_model2'])} "
            f"({_p(r['gap_change_p_value'], floor)})"
        )
    return "\n".join(lines) + "\n"


def models_by_view_figure(path: Path, rows: Sequence[Mapping[str, Any]], name: str) -> Path:
    """Model 1 vs Model 2 AUROC per finding, a panel for AP films and one for PA films; the
    legend gives each model's mean AUROC on those films (the KCR table's ``mean`` row)."""
    from cxrkit.eval.report import comparison_figure, fmt_number

    findings = [r for r in rows if r["finding"] != "mean"]
    mean = next(r for r in rows if r["finding"] == "mean")
    panels: dict[str, dict[str, list[float]]] = {}
    legends: dict[str, dict[str, str]] = {}
    for view in ("ap", "pa"):
        panel = f"{view.upper()} films"
        for k, model in enumerate(MODELS, 1):
            key = f"auroc_{view}_{model}"
            title = f"Model {k}"
            panels.setdefault(panel, {})[title] = [
                math.nan if r[key] is None else float(r[key]) for r in findings
            ]
            legends.setdefault(panel, {})[title] = f"{title} (mean AUROC {fmt_number(mean[key])})"
    return comparison_figure(
        path,
        categories=[r["finding"] for r in findings],
        panels=panels,
        legends=legends,
        ylabel="AUROC",
        title=f"{name}: Model 1 (classifier) vs Model 2 (+ reconstruction), by view",
    )


def _stages(scale: str, externals: Sequence[str], *, synthesise: bool) -> list[StagePlan]:
    tiny = scale == "tiny"
    plans = []
    if synthesise:
        plans.append(
            StagePlan("data", "synthesise phantoms: a training set and external sets", 15, "tiny")
        )
    for k, model in enumerate(MODELS, 1):
        what = "classifier" if k == 1 else "classifier + reconstruction decoder"
        plans.append(
            StagePlan(
                model,
                f"train Model {k} ({what}), best by val/mAUROC",
                20 if tiny else None,
                "tiny: measured on a 2-core CPU" if tiny else "",
            )
        )
    for name in externals:
        plans.append(StagePlan(f"predict-{name}", f"both models score {name}", 5 if tiny else None))
        plans.append(
            StagePlan(
                f"eval-{name}",
                f"KCR table of {name}",
                5 if tiny else 210,
                "tiny" if tiny else "measured: 2,216 images x 20,000 replicates, loaded 2-core CPU",
            )
        )
    plans.append(StagePlan("table", "one table over every external dataset, report", 1))
    return plans


def run(
    *,
    out_dir: str | Path,
    scale: str = "paper",
    train_manifest: str | Path | None = None,
    cache: str | Path | None = None,
    externals: Mapping[str, str | Path] | None = None,
    overrides: Sequence[str] = (),
    config_dir: str | Path | None = None,
    n_bootstrap: int | None = None,
    delong: str = "t",
    seed: int = 0,
    only: Sequence[str] | None = None,
    plan_only: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path | None:
    """Train (or reuse) both KCR models and write the KCR tables; returns ``OUT/report.md``.

    Args:
        out_dir: the run's folder.
        scale: ``paper`` (the user's data, ``configs/multitask/kcr_model{1,2}.yaml``) or ``tiny``
            (phantoms synthesised when ``train_manifest`` is not given; the tiny configs).
        train_manifest: manifest with ``train`` and ``val`` splits (required at paper scale).
        cache: the training cache folder (built on first use with the config's recipe); default
            ``OUT/cache_train``.
        externals: ``{name: manifest}`` scored on every image (default at tiny scale: two
            synthesised sets, ``public`` and ``private``).
        overrides: ``key=value`` applied to both models' configs (``encoder.weights=...``).
        config_dir: folder of the multitask protocol configs (default: the checkout's).
        n_bootstrap: patient-bootstrap replicates (default 20,000 at paper scale, 200 tiny).
        delong: ``t`` (R pROC's unpaired DeLong: Student t, Welch df) or ``normal``.
        seed: bootstrap and phantom seed.
        only: run just these stages (``Pipeline(only=...)``).
        plan_only: print the plan and return None.

    Raises:
        ConfigError: a missing input at paper scale, or a bad setting.
    """
    if scale not in SCALES:
        raise ConfigError(f"scale {scale!r} is not one of {list(SCALES)}")
    if delong not in DELONG:
        raise ConfigError(f"delong {delong!r} is not one of {DELONG}")
    sizes = SCALES[scale]
    n_bootstrap = sizes.n_bootstrap if n_bootstrap is None else int(n_bootstrap)
    out = Path(out_dir)
    synthesise = scale == "tiny" and train_manifest is None
    if not synthesise and train_manifest is None:
        raise ConfigError(f"{NAME}: --train MANIFEST is required at --scale {scale}")
    ext = {k: Path(v) for k, v in (externals or {}).items()}
    if synthesise and not ext:
        ext = {name: out / "data" / name / "manifest.parquet" for name in TINY_EXTERNALS}
    if not ext:
        raise ConfigError(f"{NAME}: give at least one --external NAME=MANIFEST")
    pipeline = Pipeline(
        out, name=NAME, stages=_stages(scale, list(ext), synthesise=synthesise), only=only, log=log
    )
    pipeline.print_plan()
    if plan_only:
        return None
    from cxrkit import engine

    engine.lightning_warnings_only()
    emit = log or (lambda line: print(line, flush=True))

    if synthesise:
        train_manifest = out / "data" / "train" / "manifest.parquet"

        def make_data() -> dict[str, Any]:
            made = {
                "train": synth_manifest(
                    out / "data" / "train",
                    n=sizes.n_train,
                    size=sizes.image_size,
                    seed=seed,
                    fractions="0.7,0.3,0",
                )
            }
            for k, name in enumerate(TINY_EXTERNALS, 1):
                made[name] = synth_manifest(
                    out / "data" / name,
                    n=sizes.n_external,
                    size=sizes.image_size,
                    seed=seed + 100 * k,
                    fractions="0,0,1",
                )
            return {k: str(v) for k, v in made.items()}

        pipeline.stage(
            "data",
            make_data,
            settings={"n_train": sizes.n_train, "n_external": sizes.n_external, "seed": seed},
        )
    train_manifest = Path(train_manifest)
    cache_dir = Path(cache) if cache else out / "cache_train"

    # ---- both models, same data and same selection criterion
    for k, model in enumerate(MODELS, 1):
        config = load_model_config(
            f"{sizes.config_prefix}kcr_model{k}",
            config_dir=Path(config_dir) if config_dir else None,
            overrides=[
                f"output_dir={out / model}",
                f"data.manifest={train_manifest}",
                f"data.cache={cache_dir}",
                *overrides,
            ],
        )
        if config.selection != "val/mAUROC":
            emit(f"note: {model} selects by {config.selection}, not val/mAUROC (overridden)")
        from cxrkit.config import to_dict

        pipeline.stage(model, lambda c=config: train_model(c), settings={"config": to_dict(config)})

    # ---- every external dataset
    from cxrkit.eval import compare
    from cxrkit.eval.predictions import read_predictions, write_predictions

    settings = {"n_bootstrap": n_bootstrap, "delong": delong, "seed": seed}
    for name, manifest in ext.items():

        def predict(name: str = name, manifest: Path = manifest) -> dict[str, Any]:
            paths: dict[str, str] = {}
            recipes = []
            for model in MODELS:
                model_path = pipeline.result(model)["model"]
                frame, records, config = predict_records(
                    model_path, manifest=manifest, cache_dir=out / "caches" / name
                )
                recipes.append(config.data.preprocess)
                path = out / "predictions" / f"{name}_{model}.csv"
                paths[model] = str(write_predictions(frame, path, kind="classification"))
                paths["n_images"] = len(records)
            if recipes[0] != recipes[1]:
                raise ConfigError(
                    f"{NAME}: the two models use different preprocessing ({recipes}); the KCR "
                    "comparison needs the same images"
                )
            return paths

        pipeline.stage(f"predict-{name}", predict, settings={"manifest": str(manifest)})

        def evaluate(name: str = name, manifest: Path = manifest) -> dict[str, Any]:
            from cxrkit.data.records import read_manifest

            preds = pipeline.result(f"predict-{name}")
            frames = [read_predictions(preds[m], kind="classification")[0] for m in MODELS]
            model_config = load_model_config(
                f"{sizes.config_prefix}kcr_model1",
                config_dir=Path(config_dir) if config_dir else None,
                overrides=list(overrides),
            )
            table, details = compare.compare_models(
                frames[0],
                frames[1],
                read_manifest(manifest),
                findings=model_config.findings,
                n_bootstrap=n_bootstrap,
                seed=seed,
                delong_distribution=delong,
            )
            rows = table.to_dict(orient="records")
            folder = out / name
            write_table(
                folder / "kcr_table",
                rows,
                compare.COLUMNS,
                title=f"KCR: Model 2 vs Model 1 on {name}",
                notes=compare.NOTES,
                digits=4,
            )
            write_json(folder / "kcr_table.json", details)
            block = result_block(name, rows, details)
            from cxrkit.io import atomic_write

            atomic_write(folder / "result_block.md", block)
            return {"rows": rows, "block": block}

        pipeline.stage(f"eval-{name}", evaluate, settings={"manifest": str(manifest), **settings})

    # ---- one table over every dataset
    def combine() -> dict[str, Any]:
        rows, blocks = [], []
        for name in ext:
            result = pipeline.result(f"eval-{name}")
            rows += [{"dataset": name, **r} for r in result["rows"]]
            blocks.append(result["block"])
        columns = ["dataset", *compare.COLUMNS]
        md, csv_path = write_table(
            out / "table",
            rows,
            columns,
            title="KCR: Model 1 vs Model 2 on every external dataset",
            notes=[
                *compare.NOTES,
                f"Bootstrap: {n_bootstrap} patient resamples (p floor 2/(B+1) = "
                f"{2 / (n_bootstrap + 1):.5f}); per-finding AP-PA gap test: DeLong unpaired, "
                + ("Student t with Welch df (R pROC)" if delong == "t" else "normal z")
                + " (cxrkit's choice: the abstract does not name its test).",
                "Both models were selected by validation mean AUROC; lambda 0.8 of Model 2's "
                "reconstruction loss is the screening thesis' value, the KCR abstract gives none.",
            ],
            digits=4,
        )
        figures = [
            models_by_view_figure(
                out / name / "models_by_view.png", pipeline.result(f"eval-{name}")["rows"], name
            )
            for name in ext
        ]
        links = "".join(
            f"![{name}: Model 1 vs Model 2 by view]({f.relative_to(out).as_posix()})\n\n"
            for name, f in zip(ext, figures, strict=True)
        )
        text = (
            "# KCR reproduction\n\n"
            + "\n".join(blocks)
            + "\n## AUROC per finding, Model 1 vs Model 2, on AP and on PA films\n\n"
            + links
            + md.read_text()
        )
        from cxrkit.io import atomic_write

        report = atomic_write(out / "report.md", text)
        write_json(
            out / "report.json",
            {"scale": scale, "datasets": list(ext), "settings": settings, "rows": rows},
        )
        return {
            "report": str(report),
            "table": str(md),
            "csv": str(csv_path),
            "figures": [str(f) for f in figures],
        }

    done = pipeline.stage(
        "table", combine, settings={**settings, "datasets": {k: str(v) for k, v in ext.items()}}
    )
    if done is None:
        return None
    return Path(done["report"])
