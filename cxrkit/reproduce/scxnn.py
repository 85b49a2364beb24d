"""``cxrkit reproduce scxnn``: the screening thesis (SCXNN) as its author ran it, and its tables.

The chain (each a resumable stage of :class:`cxrkit.reproduce.pipeline.Pipeline`)::

    synth          (--scale tiny only) phantoms for the internal and one external dataset
    split          hard-label and normal images 8:1:1 by patient, weak-label images all train
    train-3class   13 members (hard stage, FC-only weak stage) + the SVM: configs/scxnn/scxnn.yaml
    train-2class   (with two_class) the same with 2-class members, for Tables 7-8
    screen         per dataset: SVM decisions and every member's probabilities
    tables         per dataset: Tables 1, 2, 3, (7, 8), 9 as OUT/tables/<dataset>/table<k>.{md,csv}
    gradcam        Grad-CAM panels of the members (thesis Fig. 5): OUT/figures/gradcam.png

Datasets: ``internal`` is the test split of the split manifest; each ``external`` manifest is
scored whole. The table layouts are the thesis'; how an image is counted where the thesis does not
say is written under each table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrkit.data.findings import parse as parse_finding
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError
from cxrkit.reproduce.pipeline import Pipeline, StagePlan, write_json, write_table

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "scxnn"
PROTOCOL = REPO_CONFIGS / "scxnn.yaml"
TINY = REPO_CONFIGS / "tiny.yaml"
INTERNAL = "internal"
ROWS3 = ("Normal", "Target", "Others")

# Thesis Table 1 (hard / weak label counts), for the reference column of our Table 1
THESIS_TABLE_1: dict[str, tuple[int, int]] = {
    "Pneumothorax": (331, 1669),
    "Pneumoperitoneum": (100, 3959),
    "Mediastinal Widening": (98, 223),
    "Pleural Effusion": (1364, 636),
    "Nodule": (914, 1546),
    "Consolidation": (1540, 0),
    "Active Tuberculosis": (582, 0),
    "Advanced Tuberculosis": (324, 0),
    "Atelectasis": (98, 4175),
    "Support Device": (585, 0),
    "Pleural Calcification": (100, 4146),
    "Interstitial Opacity": (280, 1732),
    "Cardiomegaly": (312, 0),
}
THESIS_NORMAL = 10137


def _load_config(files: Sequence[Path], overrides: Sequence[str]) -> Any:
    from cxrkit import load_config
    from cxrkit.multitask import Config

    return load_config(Config, [str(f) for f in files], overrides=list(overrides))


def run(
    *,
    out_dir: str | Path,
    manifest: str | Path | None = None,
    cache: str | Path | None = None,
    external: Mapping[str, str | Path] | None = None,
    scale: str = "paper",
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    two_class: bool = False,
    seed: int = 0,
    only: Sequence[str] | None = None,
    plan_only: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run the thesis chain in ``out_dir`` and return the report (``OUT/report.md``).

    Args:
        out_dir: the run folder; rerunning skips finished stages.
        manifest, cache: the data (hard-label images carry lesion masks in ``mask_paths``);
            required at ``scale="paper"``, synthetic phantoms at ``"tiny"``.
        external: dataset name -> manifest of an external test set (scored whole).
        scale: ``paper`` (configs/scxnn/scxnn.yaml) or ``tiny`` (plus configs/scxnn/tiny.yaml).
        config_files: YAML files layered over those (e.g. configs/scxnn/public_approximate.yaml).
        overrides: ``key=value`` for the member config (e.g. ``encoder.weights=PATH``).
        two_class: also train 2-class members (Tables 7-8).
        seed: the split's and the phantoms' seed.
        only, plan_only: as :class:`Pipeline` (``--stage``, ``--plan``).
    """
    if scale not in ("paper", "tiny"):
        raise ConfigError(f"scale {scale!r} is not 'paper' or 'tiny'")
    if scale == "paper" and not (manifest and cache):
        raise ConfigError(
            "reproduce scxnn --scale paper needs --manifest M (lesion masks in mask_paths for the "
            "hard labels) and --cache C; --scale tiny runs on synthetic phantoms"
        )
    external = {str(k): str(v) for k, v in (external or {}).items()}
    if INTERNAL in external:
        raise ConfigError(f"--external {INTERNAL}=...: {INTERNAL!r} names the test split")
    out = Path(out_dir)
    files = [PROTOCOL, TINY] if scale == "tiny" else [PROTOCOL]
    files += [Path(f) for f in config_files]
    base = _load_config(files, overrides)  # fails on a bad key before any work
    variants = [3, 2] if two_class else [3]
    tiny_estimate = 15.0 if scale == "tiny" else None
    stages = []
    if scale == "tiny":
        stages.append(StagePlan("synth", "phantoms: internal + one external set", 5.0, "measured"))
    stages += [
        StagePlan("split", "hard labels + normals 8:1:1 by patient, weak labels all train", 1.0),
        *(
            StagePlan(
                f"train-{k}class",
                f"{len(base.screening.diseases)} {k}-class members (hard, weak FC-only) + SVM",
                tiny_estimate,
                "measured on 2 CPU cores" if tiny_estimate else "",
            )
            for k in variants
        ),
        StagePlan("screen", "SVM decisions + member probabilities per dataset", tiny_estimate),
        StagePlan("tables", "Tables 1, 2, 3, 7-8, 9 per dataset", 2.0),
        StagePlan("gradcam", "Grad-CAM panels of the members (Fig. 5)", 5.0),
    ]
    pipe = Pipeline(out, name="reproduce scxnn", stages=stages, only=only, log=log)
    pipe.print_plan()
    if plan_only:
        return out / "report.md"

    def stage(name: str, fn: Callable[[], Mapping[str, Any]], **settings: Any) -> dict[str, Any]:
        result = pipe.stage(name, fn, settings=settings)
        if result is None:
            raise _NotSelected(name)
        return result

    try:
        if scale == "tiny":
            made = stage("synth", lambda: _synthesise(out / "synth", seed=seed), seed=seed)
            manifest, cache = made["manifest"], str(out / "data" / "cache")
            external = {"external": made["external"], **external}
        split = stage(
            "split",
            lambda: _split(
                Path(str(manifest)), out / "data" / "scxnn_manifest.parquet", base, seed=seed
            ),
            manifest=str(manifest),
            seed=seed,
            diseases=base.screening.diseases,
        )
        data_overrides = [f"data.manifest={split['manifest']}", f"data.cache={cache}", *overrides]
        ensembles: dict[int, str] = {}
        for k in variants:
            config_overrides = [*data_overrides, f"screening.classes={k}"]
            config_overrides.append(f"output_dir={out / f'ensemble-{k}class'}")
            config = _load_config(files, config_overrides)
            done = stage(
                f"train-{k}class",
                lambda config=config: _train(config),
                files=[str(f) for f in files],
                overrides=config_overrides,
            )
            ensembles[k] = done["ensemble"]
        datasets = {INTERNAL: split["manifest"], **external}
        screened = stage(
            "screen",
            lambda: _screen(ensembles, datasets, out=out, internal_cache=str(cache)),
            ensembles=ensembles,
            datasets=datasets,
        )
        tables = stage(
            "tables", lambda: _tables(screened, base=base, out=out / "tables"), screened=screened
        )
        figures = stage(
            "gradcam",
            lambda: _gradcam(ensembles[3], screened, out=out / "figures"),
            ensemble=ensembles[3],
        )
    except _NotSelected as stop:
        (log or print)(f"reproduce scxnn: stopped before {stop}: not selected (--stage), not done")
        return out / "report.md"
    return _report(out, scale=scale, tables=tables, figures=figures, base=base)


class _NotSelected(Exception):
    """A stage that later ones need was neither selected (``--stage``) nor finished earlier."""


# --------------------------------------------------------------------------------------------------
# stages


def _synthesise(root: Path, *, seed: int) -> dict[str, str]:
    """Internal phantoms (half the abnormal ones keep their lesion masks: hard labels; the rest
    are weak labels) and an external set, as manifests."""
    from cxrkit import synth
    from cxrkit.data.records import write_manifest
    from cxrkit.data.sources.folder import load_csv

    paths = {}
    for name, n, s in (("internal", 96, seed), ("external", 32, seed + 1)):
        synth.generate(
            out_dir=root / name,
            n=n,
            size=64,
            seed=s,
            abnormal_fraction=0.7,
            datasets=("nih",),
            progress=False,
        )
        records = load_csv(root=root / name / "nih", csv_path="phantoms.csv", source=name)
        if name == "internal":  # every other abnormal image loses its lesion masks
            organs = ("lung", "heart")
            kept = []
            for k, r in enumerate(records):
                if k % 2 and any(v == 1 for f, v in r.labels.items() if f != "No Finding"):
                    r = dataclasses.replace(
                        r, mask_paths={m: p for m, p in r.mask_paths.items() if m in organs}
                    )
                kept.append(r)
            records = kept
        else:
            records = [dataclasses.replace(r, split="test") for r in records]
        paths[name] = str(write_manifest(records, root / f"{name}.parquet"))
    return {"manifest": paths["internal"], "external": paths["external"]}


def _split(manifest: Path, path: Path, config: Any, *, seed: int) -> dict[str, Any]:
    from collections import Counter

    from cxrkit.data.records import read_manifest, write_manifest
    from cxrkit.multitask.screening import thesis_splits

    records = thesis_splits(read_manifest(manifest), config=config, seed=seed)
    write_manifest(records, path)
    return {"manifest": str(path), "counts": dict(Counter(r.split for r in records))}


def _train(config: Any) -> dict[str, Any]:
    from cxrkit import multitask

    result = multitask.fit(config, resume="auto")
    return {"ensemble": str(result.artifacts["ensemble"]), "metrics": result.metrics}


def _screen(
    ensembles: Mapping[int, str], datasets: Mapping[str, str], *, out: Path, internal_cache: str
) -> dict[str, Any]:
    from cxrkit.data import loading
    from cxrkit.multitask import Ensemble
    from cxrkit.multitask.screening import screen_records

    result: dict[str, Any] = {}
    for k, directory in ensembles.items():
        ensemble = Ensemble.load(directory)
        for name, manifest in datasets.items():
            cache = internal_cache if name == INTERNAL else str(out / "data" / f"cache_{name}")
            data = dataclasses.replace(ensemble.config.data, manifest=manifest, cache=cache)
            config = dataclasses.replace(ensemble.config, data=data)
            ensemble.config = config
            cache_obj, records = loading.open_records(data, progress=False)
            if name == INTERNAL:
                records = loading.in_split(records, data.test_split)
            folder = out / "predictions" / f"{k}class"
            path = screen_records(
                ensemble,
                records=records,
                cache=cache_obj,
                path=folder / f"{name}.csv",
                members_path=folder / f"{name}_members.csv",
                device=config.trainer.accelerator,
            )
            result.setdefault(name, {"manifest": manifest})[f"{k}class"] = {
                "predictions": str(path),
                "members": str(folder / f"{name}_members.csv"),
                "threshold": ensemble.threshold,
                "operating_point": ensemble.operating_point,
                "diseases": list(ensemble.diseases),
            }
    return result


# --------------------------------------------------------------------------------------------------
# tables


@dataclasses.dataclass
class _Dataset:
    """One dataset's records (the scored ones) and a variant's outputs."""

    records: list[Record]
    called_abnormal: dict[str, bool]  # image_id -> the ensemble called it abnormal
    members: pd.DataFrame  # image_id, member, p_normal, p_target[, p_other], prediction


def _load_variant(entry: Mapping[str, Any], records: Sequence[Record]) -> _Dataset:
    preds = pd.read_csv(entry["predictions"])
    called = {
        str(i): bool(s >= entry["threshold"])
        for i, s in zip(preds["image_id"], preds["score"], strict=True)
    }
    kept = [r for r in records if r.image_id in called]
    return _Dataset(records=kept, called_abnormal=called, members=pd.read_csv(entry["members"]))


def _disease_spellings(diseases: Sequence[str]) -> dict[str, list[str]]:
    return {parse_finding(d).name: list(parse_finding(d)[1]) for d in diseases}


def _positive(record: Record, spellings: Sequence[str]) -> bool:
    return any(record.labels.get(s) == 1 for s in spellings)


def table1_rows(
    records: Sequence[Record], *, diseases: Sequence[str], groups: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """Thesis Table 1: per disease by risk group, images with a lesion mask (hard label) and
    positive without one (weak label), their total, and the thesis' own counts beside them."""
    spellings = _disease_spellings(diseases)
    rows = []
    for group, names in groups.items():
        for name in names:
            positive = [r for r in records if _positive(r, spellings[name])]
            hard = sum(any(s in r.mask_paths for s in spellings[name]) for r in positive)
            thesis = THESIS_TABLE_1.get(name)
            rows.append(
                {
                    "group": group,
                    "class": name,
                    "hard": hard,
                    "weak": len(positive) - hard,
                    "total": len(positive),
                    "thesis_hard": thesis[0] if thesis else None,
                    "thesis_weak": thesis[1] if thesis else None,
                    "thesis_total": sum(thesis) if thesis else None,
                }
            )
    from cxrkit.multitask.targets import is_abnormal

    normal = sum(is_abnormal(r) == 0 for r in records)
    rows.append({"group": "", "class": "Normal", "total": normal, "thesis_total": THESIS_NORMAL})
    return rows


def table2_rows(ds: _Dataset, *, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Thesis Table 2: AI normal / abnormal x reference normal / abnormal, with sensitivity,
    specificity and accuracy and their exact (Clopper-Pearson) 95% intervals."""
    from cxrkit.eval.screening import confusion_summary, reference_abnormal

    cells = {(a, r): 0 for a in (False, True) for r in (False, True)}
    for record in ds.records:
        reference = reference_abnormal(record)
        if reference is not None:
            cells[(ds.called_abnormal[record.image_id], reference)] += 1
    rates = confusion_summary(
        ai_normal_ref_normal=cells[(False, False)],
        ai_normal_ref_abnormal=cells[(False, True)],
        ai_abnormal_ref_normal=cells[(True, False)],
        ai_abnormal_ref_abnormal=cells[(True, True)],
    )
    rows = [
        {"dataset": name, "AI": "normal", "ref normal": cells[(False, False)]}
        | {"ref abnormal": cells[(False, True)]},
        {"dataset": name, "AI": "abnormal", "ref normal": cells[(True, False)]}
        | {"ref abnormal": cells[(True, True)]},
    ]
    for rate, entry in rates.items():
        ci = entry["ci"] or [float("nan"), float("nan")]
        rows[0][rate] = f"{entry['hits']}/{entry['total']}"
        rows[1][rate] = f"{entry['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return rows, rates


def table3_counts(
    ds: _Dataset, *, diseases: Sequence[str], groups: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, int]]:
    """Thesis Table 3: ``{row: {group: n}}`` for rows Normal / Target / Others.

    Each abnormal image counts once, in the most severe group among its screening diseases
    (images with none of them are left out: Table 9 covers them). ``Normal``: the ensemble called
    it normal; ``Target``: called abnormal and a member of one of its diseases in that group
    predicts its target (argmax); ``Others``: called abnormal otherwise. (cxrkit's reading; the
    thesis' sums match it: its Normal row is its Table 2's missed abnormal images.)
    """
    spellings = _disease_spellings(diseases)
    by_member = {
        (str(i), str(m)): str(p)
        for i, m, p in zip(
            ds.members["image_id"], ds.members["member"], ds.members["prediction"], strict=True
        )
    }
    counts = {row: dict.fromkeys(groups, 0) for row in ROWS3}
    for record in ds.records:
        group = next(
            (
                g
                for g, names in groups.items()
                if any(_positive(record, spellings[n]) for n in names)
            ),
            None,
        )
        if group is None:
            continue
        if not ds.called_abnormal[record.image_id]:
            row = "Normal"
        else:
            mine = [n for n in groups[group] if _positive(record, spellings[n])]
            hit = any(by_member.get((record.image_id, n)) == "target" for n in mine)
            row = "Target" if hit else "Others"
        counts[row][group] += 1
    return counts


def table9_rows(ds: _Dataset, *, diseases: Sequence[str]) -> list[dict[str, Any]]:
    """Thesis Table 9: per finding outside the members (images positive for it and for no
    member's disease), each member's fractions of Normal / Target / Others predictions."""
    from cxrkit.eval.screening import NO_FINDING, normalise

    spellings = _disease_spellings(diseases)
    known = {s for names in spellings.values() for s in names}
    unseen: dict[str, list[str]] = {}
    for r in ds.records:
        positives = [f for f, v in r.labels.items() if v == 1 and normalise(f) != NO_FINDING]
        if positives and not any(f in known for f in positives):
            for f in positives:
                unseen.setdefault(f, []).append(r.image_id)
    members = ds.members.set_index(["image_id", "member"])["prediction"]
    rows = []
    for finding in sorted(unseen):
        ids = unseen[finding]
        row: dict[str, Any] = {"finding": finding, "n": len(ids)}
        for name in spellings:
            preds = [members.get((i, name)) for i in ids]
            for label, value in zip(ROWS3, ("normal", "target", "other"), strict=True):
                row[f"{name}: {label}"] = sum(p == value for p in preds) / len(preds)
        rows.append(row)
    return rows


def _tables(screened: Mapping[str, Any], *, base: Any, out: Path) -> dict[str, Any]:
    from cxrkit.data.records import read_manifest

    groups = base.screening.groups()
    result: dict[str, Any] = {}
    for name, entry in screened.items():
        folder = out / name
        every = read_manifest(entry["manifest"])
        diseases = entry["3class"]["diseases"]
        variant_groups = {
            g: [n for n in ns if n in _disease_spellings(diseases)] for g, ns in groups.items()
        }
        variant_groups = {g: ns for g, ns in variant_groups.items() if ns}
        written = []
        if name == INTERNAL:
            rows1 = table1_rows(
                [r for r in every if r.split in ("train", "val", "test")],
                diseases=diseases,
                groups=variant_groups,
            )
            title1 = "Table 1: hard / weak labels per disease (train + val + test)"
        else:
            rows1 = table1_rows(every, diseases=diseases, groups=variant_groups)
            title1 = f"Table 1: hard / weak labels per disease ({name})"
        written += write_table(
            folder / "table1",
            rows1,
            [
                "group",
                "class",
                "hard",
                "weak",
                "total",
                "thesis_hard",
                "thesis_weak",
                "thesis_total",
            ],
            title=title1,
            notes=[
                "hard: positive with a lesion mask; weak: positive without one",
                "thesis_*: the thesis' Table 1 counts (Asan Medical Center), for reference",
            ],
        )
        ds3 = _load_variant(entry["3class"], every)
        rows2, rates = table2_rows(ds3, name=name)
        op = entry["3class"]["operating_point"]
        written += write_table(
            folder / "table2",
            rows2,
            [
                "dataset",
                "AI",
                "ref normal",
                "ref abnormal",
                "sensitivity",
                "specificity",
                "accuracy",
            ],
            title=f"Table 2: AI normal / abnormal x reference ({name})",
            notes=[
                "first row: hits/total; second row: value [exact Clopper-Pearson 95% interval]",
                f"operating point: {op} "
                + ("(the SVM's decision, thesis)" if op == "svm" else "(cxrkit's option)"),
                "reference abnormal: any finding labelled 1 (cxrkit.eval.screening)",
            ],
        )
        counts3 = table3_counts(ds3, diseases=diseases, groups=variant_groups)
        written += write_table(
            folder / "table3",
            [{"AI": row, **counts3[row]} for row in ROWS3],
            ["AI", *variant_groups],
            title=f"Table 3: predictions by risk group ({name})",
            notes=[table3_counts.__doc__.split("\n\n")[1].replace("\n    ", " ").strip()],
        )
        rows9 = table9_rows(ds3, diseases=diseases)
        columns9 = [
            "finding",
            "n",
            *[f"{parse_finding(d).name}: {r}" for d in diseases for r in ROWS3],
        ]
        written += write_table(
            folder / "table9",
            rows9,
            columns9,
            title=f"Table 9: members on findings outside their diseases ({name})",
            notes=[
                "fraction of images (positive for the finding, for no member's disease) each "
                "member predicts Normal / Target / Others",
                "no row: the dataset has no image whose findings all lie outside the members",
            ],
        )
        summary: dict[str, Any] = {"table2": rates, "table3": counts3}
        if "2class" in entry:
            ds2 = _load_variant(entry["2class"], every)
            rows7_2, rates2 = table2_rows(ds2, name=name)
            rows7 = [
                {
                    "AI": a["AI"],
                    "2 class: normal": a["ref normal"],
                    "2 class: abnormal": a["ref abnormal"],
                }
                | {"3 class: normal": b["ref normal"], "3 class: abnormal": b["ref abnormal"]}
                for a, b in zip(rows7_2, rows2, strict=True)
            ]
            written += write_table(
                folder / "table7",
                rows7,
                [
                    "AI",
                    "2 class: normal",
                    "2 class: abnormal",
                    "3 class: normal",
                    "3 class: abnormal",
                ],
                title=f"Table 7: 2-class vs 3-class members, AI x reference ({name})",
            )
            counts2 = table3_counts(ds2, diseases=diseases, groups=variant_groups)
            rows8 = []
            for row in ROWS3:
                line: dict[str, Any] = {"AI": row}
                for g in variant_groups:
                    # a 2-class member has no "other" output: its images are Normal or Target
                    line[f"2 class: {g}"] = (
                        None
                        if row == "Others"
                        else counts2[row][g] + (counts2["Others"][g] if row == "Target" else 0)
                    )
                    line[f"3 class: {g}"] = counts3[row][g]
                rows8.append(line)
            written += write_table(
                folder / "table8",
                rows8,
                ["AI", *[f"{k} class: {g}" for k in (2, 3) for g in variant_groups]],
                title=f"Table 8: 2-class vs 3-class members by risk group ({name})",
                notes=["2 class: Target = called abnormal (its members have no Others output)"],
            )
            summary["table7"] = {"2class": rates2, "3class": rates}
        write_json(folder / "summary.json", summary)
        result[name] = {"files": [str(p) for p in written], "summary": summary}
    return result


# --------------------------------------------------------------------------------------------------
# Grad-CAM (thesis Fig. 5)


class _LastLevelLogits(torch.nn.Module):
    """A member as Grad-CAM needs it: image -> logits, with the encoder's last pyramid level
    (stride 32, what the classifier pools) passing through ``last_level`` for the hooks."""

    def __init__(self, member: torch.nn.Module) -> None:
        super().__init__()
        self.member = member
        self.last_level = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = self.last_level(self.member.encoder(x)[-1])
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(level, 1), 1)
        return self.member.classifier(pooled)


def _gradcam(ensemble_dir: str, screened: Mapping[str, Any], *, out: Path) -> dict[str, Any]:
    """For each member, Grad-CAM (pytorch-grad-cam) of its target class on the internal test
    image it scores highest for its target: image and overlay side by side, one row per member."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxrkit.data import loading
    from cxrkit.io import atomic_write
    from cxrkit.multitask import Ensemble
    from cxrkit.multitask.train import build_dataset

    ensemble = Ensemble.load(ensemble_dir)
    entry = screened[INTERNAL]["3class"]
    members = pd.read_csv(entry["members"])
    data = dataclasses.replace(ensemble.config.data, manifest=screened[INTERNAL]["manifest"])
    cache, records = loading.open_records(data, progress=False)
    by_id = {r.image_id: r for r in records}
    panels = []
    for disease, model in zip(ensemble.diseases, ensemble.members, strict=True):
        name = parse_finding(disease).name
        rows = members[members["member"] == name]
        image_id = str(rows.loc[rows["p_target"].idxmax(), "image_id"])
        dataset = build_dataset(
            config=ensemble.config, records=[by_id[image_id]], cache=cache, inference=True
        )
        image = dataset[0]["image"].unsqueeze(0).float()
        wrapper = _LastLevelLogits(model.eval().cpu())
        with GradCAM(model=wrapper, target_layers=[wrapper.last_level]) as cam:
            heat = cam(input_tensor=image, targets=[ClassifierOutputTarget(1)])[0]
        grey = image[0, 0].numpy()
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        overlay = show_cam_on_image(rgb, heat, use_rgb=False)
        base = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        row = np.concatenate([base, overlay], axis=1)
        cv2.putText(row, name[:18], (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255), 1)
        panels.append(row)
        model.zero_grad(set_to_none=True)
    figure = np.concatenate(panels, axis=0)
    ok, png = cv2.imencode(".png", figure)
    if not ok:
        raise RuntimeError("OpenCV could not encode the Grad-CAM figure")
    path = atomic_write(out / "gradcam.png", png.tobytes())
    return {"figure": str(path), "members": [parse_finding(d).name for d in ensemble.diseases]}


def _report(
    out: Path, *, scale: str, tables: Mapping[str, Any], figures: Mapping[str, Any], base: Any
) -> Path:
    from cxrkit.io import atomic_write

    lines = [
        "# SCXNN (screening thesis) reproduction",
        "",
        f"scale: {scale}; members: "
        + ", ".join(parse_finding(d).name for d in base.screening.diseases),
        "",
    ]
    if scale == "tiny":
        lines += [
            "TINY SCALE: synthetic phantoms, 4 of the 13 members (the phantoms draw only 4 thesis "
            "diseases; their Fibrosis and Mass stand in for the unseen diseases of Table 9), a "
            "random ResNet-18 at 64 px trained for a few steps. The numbers test the chain, not "
            "the thesis.",
            "",
        ]
    for name, entry in sorted(tables.items(), key=lambda kv: (kv[0] != INTERNAL, kv[0])):
        lines.append(f"## {name}")
        lines += [f"- {Path(p).relative_to(out)}" for p in entry["files"] if p.endswith(".md")]
        lines.append("")
    lines += ["## Figure 5", f"- {Path(figures['figure']).relative_to(out)}", ""]
    return atomic_write(out / "report.md", "\n".join(lines))
