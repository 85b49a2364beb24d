"""``cxrkit reproduce guendel``: Guendel et al. 2019, the auxiliary-task ablation.

The paper trains abnormality classification together with lung and heart segmentation and the
classification of the regions where an abnormality lies, and shows that the auxiliary tasks raise
the classification AUC. This driver trains the same configuration twice, with the auxiliary heads
(``configs/multitask/guendel.yaml``) and without them (``segmentation.enabled=false
location.enabled=false``, everything else equal), and writes per-abnormality AUC of both on the
test split in one table.

What does not come from the paper (the abstract is the only text here; see ``guendel.yaml``): the
findings are NIH ChestX-ray14's 14, not the paper's 12, which the abstract does not list; the
location labels are cxrkit's 6-region grid derived from boxes; the loss weights are 1.0. Records
without organ masks or boxes train only the heads they have targets for: the report counts the
training images of each head.

Stages::

    data            (tiny scale only) phantoms with lung/heart masks and boxes; a third of the
                    training images lose their organ masks, so the counts differ per head
    multitask       train with segmentation + location heads (cxrkit.multitask.fit)
    classification  train the classification-only ablation
    table           per-abnormality AUC of both, their difference (paired DeLong / bootstrap)

Outputs in ``OUT``: ``multitask/``, ``classification/`` (runs, ``predictions_test.csv``),
``table.{md,csv}``, ``heads.{md,csv}`` (images per head), ``report.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cxrkit.errors import ConfigError, DataError
from cxrkit.reproduce.multitask_runs import load_model_config, synth_manifest, train_model
from cxrkit.reproduce.pipeline import Pipeline, StagePlan, write_json, write_table

NAME = "reproduce guendel"
VARIANTS = {
    "multitask": (),  # the paper's model: classification + segmentation + location
    "classification": ("segmentation.enabled=false", "location.enabled=false"),  # the ablation
}
COLUMNS = (
    "finding",
    "n",
    "n_positive",
    "auc_classification_only",
    "auc_classification_only_ci_low",
    "auc_classification_only_ci_high",
    "auc_multitask",
    "auc_multitask_ci_low",
    "auc_multitask_ci_high",
    "auc_difference",
    "auc_difference_ci_low",
    "auc_difference_ci_high",
    "p_value",
    "p_method",
    "p_floor",
)
FINDINGS_NOTE = {
    "paper": "Findings: NIH ChestX-ray14's 14 labels; the Guendel abstract does not list the "
    "paper's 12 abnormalities, so this is not the paper's list.",
    "tiny": "Findings: the five the phantoms simulate (tiny scale; the paper scale uses NIH "
    "ChestX-ray14's 14, not the paper's 12, which the abstract does not list).",
}
HEAD_COLUMNS = ("variant", "head", "train_images", "of_images")
SCALES = {"paper": ("", 2000), "tiny": ("tiny_", 200)}  # config prefix, bootstrap replicates
TINY_IMAGES, TINY_SIZE = 60, 64
NOTES = (
    "auc_classification_only: the same model without the segmentation and location heads "
    "(segmentation.enabled=false, location.enabled=false), everything else equal; "
    "auc_difference = multitask - classification only, with the patient-bootstrap interval.",
    "p_method: DeLong paired (normal z) per abnormality; the mean row uses the patient bootstrap, "
    "whose smallest possible p is p_floor = 2 / (B + 1).",
    "Location labels: cxrkit's 6-region grid (patient's right/left x upper/middle/lower of the "
    "lung-mask bounding box, else of the image), derived from the records' boxes; an image "
    "without boxes trains the location head only when labelled normal.",
    "Both variants are selected by validation mean AUROC (cxrkit's choice).",
)


def _auc(entry: dict[str, Any], prefix: str) -> dict[str, float]:
    ci = entry.get("ci") or [float("nan"), float("nan")]
    return {prefix: entry["value"], f"{prefix}_ci_low": ci[0], f"{prefix}_ci_high": ci[1]}


def ablation_rows(comparison: dict[str, Any], single: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows from ``classification.compare(classification_only, multitask)`` and the
    multitask model's ``classification.evaluate`` (for ``n_positive``)."""
    rows = []
    floor = comparison["settings"]["p_floor"]
    for finding in [*comparison["findings"], "mean"]:
        c = comparison["mean"] if finding == "mean" else comparison["per_finding"][finding]
        diff = c["difference"]
        ci = diff.get("ci") or [float("nan"), float("nan")]
        e = single["per_finding"].get(finding, {})
        rows.append(
            {
                "finding": finding,
                "n": c.get("n"),
                "n_positive": e.get("n_positive"),
                "auc_classification_only": c["auroc_a"],
                "auc_multitask": c["auroc_b"],
                "auc_difference": diff["value"],
                "auc_difference_ci_low": ci[0],
                "auc_difference_ci_high": ci[1],
                "p_value": c["p_value"],
                "p_method": "patient bootstrap" if finding == "mean" else "DeLong paired, normal z",
                "p_floor": floor,
            }
        )
    return rows


def _with_model_cis(rows: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> None:
    for row in rows:
        for variant, column in (
            ("classification", "auc_classification_only"),
            ("multitask", "auc_multitask"),
        ):
            r = results[variant]
            entry = (
                r["mean"]["auroc"]
                if row["finding"] == "mean"
                else (r["per_finding"][row["finding"]]["auroc"])
            )
            ci = entry.get("ci") or [float("nan"), float("nan")]
            row[f"{column}_ci_low"], row[f"{column}_ci_high"] = ci[0], ci[1]


def _drop_organ_masks(manifest: Path, *, every: int) -> Path:
    """Remove the organ masks of every ``every``-th training record (tiny scale: records without
    masks, as NIH images without a JSRT/Montgomery/Shenzhen mask are)."""
    from cxrkit.data.records import read_manifest, write_manifest

    records = read_manifest(manifest)
    train = 0
    out = []
    for r in records:
        if r.split == "train":
            if train % every == 0:
                r = dataclasses.replace(
                    r,
                    mask_paths={
                        k: v for k, v in r.mask_paths.items() if k not in ("lung", "heart")
                    },
                )
            train += 1
        out.append(r)
    return write_manifest(out, manifest)


def run(
    *,
    out_dir: str | Path,
    scale: str = "paper",
    manifest: str | Path | None = None,
    cache: str | Path | None = None,
    overrides: Sequence[str] = (),
    config_dir: str | Path | None = None,
    n_bootstrap: int | None = None,
    seed: int = 0,
    only: Sequence[str] | None = None,
    plan_only: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path | None:
    """Train Guendel's model with and without its auxiliary heads; returns ``OUT/table.md``.

    Args:
        out_dir: the run's folder.
        scale: ``paper`` (``configs/multitask/guendel.yaml``, the user's manifest) or ``tiny``
            (phantoms when ``manifest`` is not given; ``tiny_guendel.yaml``).
        manifest: records with ``train``, ``val`` and ``test`` splits; organ masks under
            ``mask_paths["lung"]`` / ``["heart"]`` where available, boxes where available.
        cache: training cache folder (default ``OUT/cache``).
        overrides: ``key=value`` applied to both variants (``encoder.weights=...``).
        config_dir: folder of the multitask protocol configs.
        n_bootstrap: patient-bootstrap replicates of the intervals (default 2000; tiny 200).
        seed, only, plan_only, log: as in :func:`cxrkit.reproduce.kcr.run`.
    """
    if scale not in SCALES:
        raise ConfigError(f"scale {scale!r} is not one of {list(SCALES)}")
    prefix, default_bootstrap = SCALES[scale]
    n_bootstrap = default_bootstrap if n_bootstrap is None else int(n_bootstrap)
    out = Path(out_dir)
    synthesise = scale == "tiny" and manifest is None
    if manifest is None and not synthesise:
        raise ConfigError(f"{NAME}: --manifest MANIFEST is required at --scale {scale}")
    tiny = scale == "tiny"
    plans = []
    if synthesise:
        plans.append(StagePlan("data", "synthesise phantoms with organ masks and boxes", 8, "tiny"))
    plans += [
        StagePlan(
            "multitask",
            "train classification + lung/heart segmentation + location",
            25 if tiny else None,
            "tiny: measured on a 2-core CPU" if tiny else "",
        ),
        StagePlan(
            "classification",
            "train the classification-only ablation",
            20 if tiny else None,
            "tiny: measured on a 2-core CPU" if tiny else "",
        ),
        StagePlan("table", "per-abnormality AUC with and without the auxiliary heads", 3),
    ]
    pipeline = Pipeline(out, name=NAME, stages=plans, only=only, log=log)
    pipeline.print_plan()
    if plan_only:
        return None
    from cxrkit import engine

    engine.lightning_warnings_only()
    if synthesise:
        manifest = out / "data" / "manifest.parquet"

        def make_data() -> dict[str, Any]:
            path = synth_manifest(
                out / "data", n=TINY_IMAGES, size=TINY_SIZE, seed=seed, fractions="0.6,0.2,0.2"
            )
            return {"manifest": str(_drop_organ_masks(path, every=3))}

        pipeline.stage("data", make_data, settings={"n": TINY_IMAGES, "seed": seed})
    manifest = Path(manifest)
    cache_dir = Path(cache) if cache else out / "cache"
    from cxrkit.config import to_dict

    configs = {}
    for variant, extra in VARIANTS.items():
        configs[variant] = load_model_config(
            f"{prefix}guendel",
            config_dir=Path(config_dir) if config_dir else None,
            overrides=[
                f"output_dir={out / variant}",
                f"data.manifest={manifest}",
                f"data.cache={cache_dir}",
                *overrides,
                *extra,
            ],
        )
        cfg = configs[variant]
        if cfg.predict_split != "test":
            raise ConfigError(f"{NAME}: predict_split must be test (is {cfg.predict_split!r})")

        def train(cfg: Any = cfg) -> dict[str, Any]:
            from cxrkit.data.records import read_manifest
            from cxrkit.multitask.dataset import head_counts

            result = train_model(cfg)
            if not result["predictions"]:
                raise DataError(f"{manifest}: no record in split 'test' to score")
            train_records = [r for r in read_manifest(manifest) if r.split == cfg.data.train_split]
            result["heads"] = head_counts(cfg, train_records)
            return result

        pipeline.stage(variant, train, settings={"config": to_dict(cfg)})

    def table() -> dict[str, Any]:
        from cxrkit.data.records import read_manifest
        from cxrkit.eval import classification
        from cxrkit.eval.predictions import read_predictions

        test = [r for r in read_manifest(manifest) if r.split == "test"]
        frames = {}
        for variant in VARIANTS:
            path = pipeline.result(variant)["predictions"]
            frames[variant] = read_predictions(path, kind="classification")[0]
        findings = configs["multitask"].findings
        stats = {"n_bootstrap": n_bootstrap, "seed": seed, "findings": findings}
        comparison = classification.compare(
            frames["classification"], frames["multitask"], test, **stats
        )
        single = {
            v: classification.evaluate(frames[v], test, curves=False, threshold=None, **stats)
            for v in VARIANTS
        }
        rows = ablation_rows(comparison, single["multitask"])
        _with_model_cis(rows, single)
        md, csv_path = write_table(
            out / "table",
            rows,
            COLUMNS,
            title="Guendel et al.: per-abnormality AUC with and without the auxiliary heads",
            notes=[
                *NOTES,
                FINDINGS_NOTE[scale],
                f"Test images: {len(test)}; bootstrap: {n_bootstrap} replicates.",
            ],
        )
        head_rows = []
        for variant in VARIANTS:
            counts = pipeline.result(variant)["heads"]
            head_rows += [
                {"variant": variant, "head": h, "train_images": n, "of_images": counts["images"]}
                for h, n in counts.items()
                if h != "images"
            ]
        write_table(
            out / "heads",
            head_rows,
            HEAD_COLUMNS,
            title="Training images per head (records without masks or boxes train fewer heads)",
            notes=[
                "segmentation: images with a lung or heart mask (per organ below it); location: "
                "images with boxes or labelled normal; classification: images with a label.",
            ],
        )
        write_json(
            out / "report.json",
            {"scale": scale, "rows": rows, "heads": head_rows, "comparison": comparison},
        )
        return {"table": str(md), "csv": str(csv_path), "heads": head_rows}

    done = pipeline.stage(
        "table",
        table,
        settings={"n_bootstrap": n_bootstrap, "seed": seed, "manifest": str(manifest)},
    )
    return None if done is None else Path(done["table"])
