"""``cxrkit demo``: the whole BarlowTwins-CXR pipeline on synthetic phantoms, on a laptop CPU.

Steps (each prints a progress line), all through the package's own stages::

    1 synth       VinDr-style DICOMs (three readers' boxes), NIH-style PNGs (cxrkit.synth)
    2 prepare     the VinDr and NIH adapters -> manifests (validation carved from VinDr train)
    3 preprocess  both caches (cxrkit.data.preprocess.build_cache)
    4 pretrain    a short Barlow Twins run on the NIH images -> backbone.pth (cxrkit.pretrain)
    5 finetune    Faster R-CNN from those weights, and from random initialisation (cxrkit.finetune)
    6 predict     both detectors on the VinDr test split, boxes in original pixels
    7 eval        mAP@0.5 per class and per view, the AP - PA gap, plots (cxrkit.eval)
    8 cam         Ablation-CAM overlays of both detectors' top boxes on the same test images,
                  scored: CAM energy inside the box, pointing game (cxrkit.eval.cam_scores)

``OUT/report.md`` compares the two initialisations and links everything else. The quick mode
(``--quick``) shrinks every step so that the demo finishes in about two minutes on two CPU
cores; its numbers only show that the pipeline runs (a few dozen steps teach a detector little).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# The five findings the phantoms simulate, in VinDr-CXR's spelling.
DEMO_CLASSES = (
    "Consolidation",
    "Pneumothorax",
    "Nodule/Mass",
    "Pulmonary fibrosis",
    "Pleural effusion",
)
INITS = ("barlow_twins", "random")
INIT_TITLES = {"barlow_twins": "Barlow Twins init", "random": "random init"}
CAM_TOP_K = 2  # CAMs per explained image, its best boxes (cxrkit's choice)
# bootstrap of the CAM scores' means: a few numbers per image, so cheap even in --quick
CAM_BOOTSTRAP = 1000


@dataclass(frozen=True)
class Plan:
    """How big each step is."""

    n_vindr: int  # phantoms (VinDr: ~80 % train, 20 % test by patient)
    n_nih: int  # unlabeled pretraining phantoms
    image_size: int  # phantom side in original pixels
    cache_size: int  # training resolution
    pretrain_steps: int
    pretrain_batch: int
    view_size: int  # Barlow Twins view side
    projector_dim: int
    detector_steps: int
    detector_batch: int
    proposals: int  # RPN proposals per image in training (half at inference)
    n_bootstrap: int  # patient bootstrap replicates of the eval intervals
    cam_images: int
    ablation_ratio: float  # fraction of layer3's channels Ablation-CAM ablates


QUICK = Plan(
    n_vindr=80,
    n_nih=32,
    image_size=256,
    cache_size=128,
    pretrain_steps=3,
    pretrain_batch=8,
    view_size=96,
    projector_dim=64,
    detector_steps=30,
    detector_batch=4,
    proposals=150,
    n_bootstrap=0,
    cam_images=2,
    ablation_ratio=0.02,
)
# The full mode keeps the quick mode's training resolution and detector batch.
FULL = replace(
    QUICK,
    n_vindr=400,
    n_nih=300,
    image_size=384,
    pretrain_steps=50,
    pretrain_batch=24,
    view_size=112,
    projector_dim=1024,
    detector_steps=200,
    proposals=300,
    n_bootstrap=200,
    cam_images=4,
    ablation_ratio=0.05,
)


class _Progress:
    """``[k/N] step ...`` lines with the elapsed time and an ETA; the plan first.

    The ETA is the mean time of the steps finished so far times the steps left (the steps differ in
    length, so it is rough: training is the long part).
    """

    STEPS = ("synth", "prepare", "preprocess", "pretrain", "finetune", "predict", "eval", "cam")

    def __init__(self, total: int) -> None:
        self.total, self.k, self.start = total, 0, time.perf_counter()

    def step(self, text: str) -> None:
        from cxrkit.progress import format_duration

        if self.k == 0:
            steps = ", ".join(self.STEPS[: self.total])
            print(f"demo plan: {self.total} steps ({steps})", flush=True)
        elapsed = time.perf_counter() - self.start
        eta = ""
        if self.k:
            eta = f", ETA {format_duration(elapsed / self.k * (self.total - self.k))}"
        self.k += 1
        print(f"[{self.k}/{self.total}] {text} (t={elapsed:.0f}s{eta})", flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)


def run_demo(
    *, out_dir: Path, quick: bool = False, seed: int = 0, plan: Plan | None = None
) -> Path:
    """Run every step into ``out_dir``; returns the path of ``report.md``.

    ``plan`` replaces the sizes of the chosen mode (:data:`QUICK` or :data:`FULL`).

    Layout: ``synth/`` (phantoms), ``data/`` (manifests, caches), ``runs/pretrain``,
    ``runs/finetune_<init>`` (TensorBoard, checkpoints, detector.pt), ``predictions/``,
    ``eval/<init>/`` (each model's report and plots), ``cams/<init>/`` (overlays, ``cams.csv``),
    ``report.md``.
    """
    import lightning as L

    from cxrkit import engine

    engine.lightning_warnings_only()  # its banners and tips would drown the step lines
    plan = plan or (QUICK if quick else FULL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(8)
    L.seed_everything(seed, verbose=False)

    progress.step(f"synth: {plan.n_vindr} VinDr-style DICOMs, {plan.n_nih} NIH-style PNGs")
    synth = _synthesise(out / "synth", plan=plan, seed=seed)

    progress.step("prepare: VinDr and NIH adapters -> manifests")
    vindr_manifest, nih_manifest, n_train = _prepare(
        synth, out / "data", seed=seed, progress=progress
    )

    progress.step(f"preprocess: caches at {plan.cache_size} px")
    vindr_data, nih_data = _preprocess(vindr_manifest, nih_manifest, out / "data", plan=plan)

    progress.step(f"pretrain: Barlow Twins, {plan.pretrain_steps} steps on the NIH phantoms")
    backbone = _pretrain(nih_data, out / "runs" / "pretrain", plan=plan, seed=seed)
    progress.note(f"backbone: {backbone}")

    progress.step(f"finetune: Faster R-CNN x 2 ({plan.detector_steps} steps each)")
    detectors = {}
    for init in INITS:
        weights = backbone if init == "barlow_twins" else None
        result = _finetune(
            vindr_data,
            out / "runs" / f"finetune_{init}",
            weights=weights,
            plan=plan,
            seed=seed,
            n_train=n_train,
        )
        detectors[init] = result.artifacts["detector"]
        best = result.metrics.get("val/mAP50")
        best = "n/a" if best is None else f"{best:.3f}"
        progress.note(f"{INIT_TITLES[init]}: best val mAP50 {best}, {detectors[init]}")

    progress.step("predict: both detectors on the test split (original pixels)")
    predictions = _predict(detectors, vindr_data, out / "predictions")

    progress.step("eval: mAP@0.5 per class and per view")
    results = _evaluate(predictions, vindr_data, out / "eval", plan=plan, seed=seed)

    progress.step(f"cam: Ablation-CAM on {plan.cam_images} test images (both detectors)")
    cams = _cams(detectors, vindr_data, out / "cams", plan=plan, seed=seed)

    report = _write_report(
        out,
        results=results,
        cams=cams,
        plan=plan,
        quick=quick,
        seconds=time.perf_counter() - progress.start,
    )
    print(f"done in {time.perf_counter() - progress.start:.0f}s", flush=True)
    return report


# --------------------------------------------------------------------------------------------------
# the steps


def _synthesise(root: Path, *, plan: Plan, seed: int) -> Path:
    from cxrkit import synth

    # the detector needs lesions to learn from: most VinDr phantoms are abnormal here
    synth.generate(
        out_dir=root,
        n=plan.n_vindr,
        size=plan.image_size,
        seed=seed,
        abnormal_fraction=0.75,
        datasets=("vindr",),
        workers=2,
        progress=True,
    )
    synth.generate(
        out_dir=root,
        n=plan.n_nih,
        size=plan.image_size,
        seed=seed + 1,
        datasets=("nih",),
        workers=2,
        progress=True,
    )
    return root


def _prepare(synth: Path, data: Path, *, seed: int, progress: _Progress) -> tuple[Path, Path, int]:
    from collections import Counter

    from cxrkit.data import splits
    from cxrkit.data.records import write_manifest
    from cxrkit.data.sources.nih import load_nih
    from cxrkit.data.sources.vindr import load_vindr

    vindr, official = load_vindr(root=synth / "vindr")
    if official:  # PhysioNet layout: official train/test, validation carved by patient
        vindr = splits.carve_validation(vindr, val_fraction=0.15, seed=seed)
    else:
        vindr = splits.assign_splits(vindr, seed=seed)
    nih = load_nih(root=synth / "nih")
    vindr_manifest = write_manifest(vindr, data / "vindr.parquet")
    nih_manifest = write_manifest(nih, data / "nih.parquet")
    counts = Counter(r.split for r in vindr)
    progress.note(
        f"VinDr: {len(vindr)} images ({counts['train']} train, {counts['val']} val, "
        f"{counts['test']} test), {sum(len(r.boxes) for r in vindr)} reader boxes; "
        f"NIH: {len(nih)} images"
    )
    return vindr_manifest, nih_manifest, counts["train"]


def _preprocess(vindr: Path, nih: Path, data: Path, *, plan: Plan) -> tuple[Any, Any]:
    from cxrkit.config import DataConfig, PreprocessConfig
    from cxrkit.data import loading

    configs = []
    for manifest, name in ((vindr, "vindr"), (nih, "nih")):
        config = DataConfig(
            manifest=str(manifest),
            cache=str(data / f"cache_{name}_{plan.cache_size}"),
            preprocess=PreprocessConfig(size=plan.cache_size),
            num_workers=0,
        )
        loading.open_cache(config, progress=True)  # builds it (resumable, atomic)
        configs.append(config)
    return configs[0], configs[1]


def _pretrain(data: Any, out: Path, *, plan: Plan, seed: int) -> Path:
    from cxrkit import pretrain
    from cxrkit.config import load

    config = load(
        pretrain.Config,
        overrides=[
            f"output_dir={out}",
            f"data.manifest={data.manifest}",
            f"data.cache={data.cache}",
            f"data.preprocess.size={data.preprocess.size}",
            "data.train_split=all",
            f"data.batch_size={plan.pretrain_batch}",
            "data.num_workers=0",
            "model.init=random",
            f"model.projector_hidden_dim={plan.projector_dim}",
            f"model.projector_output_dim={plan.projector_dim}",
            f"views.size={plan.view_size}",
            "optim.warmup_epochs=0",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.precision=32-true",
            "trainer.max_epochs=1000",
            f"trainer.max_steps={plan.pretrain_steps}",
            "trainer.log_every_n_steps=1",
            f"trainer.checkpoint_every_n_steps={plan.pretrain_steps}",
            "trainer.progress_bar=true",
            f"trainer.seed={seed}",
        ],
    )
    return pretrain.fit(config, resume=False).artifacts["backbone"]


def _finetune(
    data: Any, out: Path, *, weights: Path | None, plan: Plan, seed: int, n_train: int
) -> Any:
    from cxrkit import finetune
    from cxrkit.config import load

    # validate about twice per run (at least once inside the first epoch), keeping the best
    per_epoch = math.ceil(n_train / plan.detector_batch)
    val_every = max(2, min(plan.detector_steps // 2, per_epoch)) if per_epoch >= 2 else 1
    config = load(
        finetune.Config,
        overrides=[
            f"output_dir={out}",
            f"data.manifest={data.manifest}",
            f"data.cache={data.cache}",
            f"data.preprocess.size={data.preprocess.size}",
            f"data.batch_size={plan.detector_batch}",
            "data.num_workers=0",
            f"classes=[{', '.join(DEMO_CLASSES)}]",
            *(["model.init=checkpoint", f"model.weights={weights}"] if weights else []),
            # small images: anchors a quarter of the defaults, fewer proposals for a CPU
            "model.anchor_sizes=[8, 16, 32, 64, 128]",
            f"model.rpn_proposals_train={plan.proposals}",
            f"model.rpn_pre_nms_train={plan.proposals}",
            f"model.rpn_proposals_test={plan.proposals // 2}",
            "model.roi_batch_size=64",
            "model.score_thresh=0.01",  # low-scoring boxes too: AP sees more of the PR curve
            f"optim.warmup_steps={max(1, plan.detector_steps // 10)}",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.max_epochs=1000",
            f"trainer.max_steps={plan.detector_steps}",
            f"trainer.val_check_interval={val_every}",
            # batch 4 instead of the paper's 32: noisier gradients; clipping stops a rare spike
            # from turning into a NaN
            "trainer.gradient_clip_val=10.0",
            "trainer.log_every_n_steps=5",
            f"trainer.checkpoint_every_n_steps={plan.detector_steps}",
            "trainer.progress_bar=true",
            f"trainer.seed={seed}",
        ],
    )
    return finetune.fit(config, resume=False)


def _predict(detectors: Mapping[str, Path], data: Any, out: Path) -> dict[str, Path]:
    from cxrkit import finetune
    from cxrkit.data import loading
    from cxrkit.eval.predictions import write_predictions

    cache, every = loading.open_records(data, progress=False)
    records = loading.in_split(every, "test")
    paths = {}
    for init, path in detectors.items():
        detector = finetune.load(path)
        model, config = detector.model, detector.config
        frame = finetune.predict(
            model,
            records=records,
            cache=cache,
            classes=config.classes,
            batch_size=8,
            progress=True,
        )
        paths[init] = write_predictions(frame, out / f"{init}_test.csv", kind="detection")
    return paths


def _evaluate(
    predictions: Mapping[str, Path], data: Any, out: Path, *, plan: Plan, seed: int
) -> dict[str, dict[str, Any]]:
    from cxrkit.config import load
    from cxrkit.data import loading
    from cxrkit.eval import detection, report
    from cxrkit.eval.predictions import read_predictions
    from cxrkit.finetune.config import FinetuneConfig
    from cxrkit.finetune.data import detection_records

    # ground truth = the readers' boxes fused as for training (weighted boxes fusion)
    config = load(FinetuneConfig, overrides=[f"classes=[{', '.join(DEMO_CLASSES)}]"])
    test = detection_records(loading.load_records(data, split="test"), config=config, train=False)
    results = {}
    for init, path in predictions.items():
        frame, _ = read_predictions(path, kind="detection")
        result = detection.evaluate(
            frame, test, classes=list(DEMO_CLASSES), n_bootstrap=plan.n_bootstrap, seed=seed
        )
        report.write_report(result, out / init)
        results[init] = result
    return results


def _cams(
    detectors: Mapping[str, Path], data: Any, out: Path, *, plan: Plan, seed: int = 0
) -> dict[str, Any]:
    from cxrkit import finetune
    from cxrkit.config import load
    from cxrkit.data import loading
    from cxrkit.eval import cam_scores
    from cxrkit.finetune.cam import cover_classes
    from cxrkit.finetune.data import detection_records

    # the same test images for both detectors (chosen by their ground-truth classes, not by
    # either model), so that the localisation scores compare image by image; ground truth fused
    # as for the mAP
    config = load(finetune.Config, overrides=[f"classes=[{', '.join(DEMO_CLASSES)}]"])
    cache, every = loading.open_records(data, progress=False)
    test = detection_records(loading.in_split(every, "test"), config=config, train=False)
    records = cover_classes(test, n=plan.cam_images)
    indexes, files = {}, {}
    for init, path in detectors.items():
        loaded = finetune.load(path)
        model, config = loaded.model, loaded.config
        # a barely trained detector scores low: take each image's top boxes whatever their score
        model.roi_heads.score_thresh = 0.0
        index = finetune.explain(
            model,
            records=records,
            cache=cache,
            classes=config.classes,
            out_dir=out / init,
            method="ablation",
            score_thresh=0.0,
            top_k=CAM_TOP_K,
            ablation_ratio=plan.ablation_ratio,
            batch_size=20,
            progress=False,
        )
        indexes[init] = index
        files[init] = [out / init / name for name in index["file"]]
    summaries = {
        init: cam_scores.summarise(index, n_bootstrap=CAM_BOOTSTRAP, seed=seed)
        for init, index in indexes.items()
    }
    # B - A: Barlow Twins minus random init
    difference = cam_scores.compare(
        indexes["random"], indexes["barlow_twins"], n_bootstrap=CAM_BOOTSTRAP, seed=seed
    )
    return {"files": files, "summaries": summaries, "difference": difference}


# --------------------------------------------------------------------------------------------------
# the report


def _number(metric: Any) -> str:
    from cxrkit.eval.report import fmt_estimate

    if metric is None:
        return "n/a"
    return fmt_estimate(metric) if isinstance(metric, Mapping) else _plain(metric)


def _plain(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _cam_md(cams: Mapping[str, Any], out: Path) -> list[str]:
    import os

    from cxrkit.eval.report import fmt_estimate, fmt_p

    summaries, difference = cams["summaries"], cams["difference"]
    lines = [
        "## CAM localisation: Ablation-CAM (backbone layer3) of each detector's top boxes",
        "",
        "Energy in box: share of the map's mass inside the box the map explains; pointing hit: "
        "the map's maximum lies in that box. Against GT: the same, for the ground-truth boxes of "
        "the box's class in that image (CAMs whose image has none are left out, n GT). Maps and "
        f"boxes at cache resolution; 95 % bootstrap intervals over images ({CAM_BOOTSTRAP} "
        "resamples).",
        "",
    ]
    rows = []
    for init, s in summaries.items():
        rows.append(
            [
                INIT_TITLES[init],
                str(s["n_cams"]),
                fmt_estimate(s["energy_in_box"]),
                fmt_estimate(s["pointing_hit"]),
                str(s["energy_in_gt"]["n"]),
                fmt_estimate(s["energy_in_gt"]),
                fmt_estimate(s["pointing_hit_gt"]),
            ]
        )
    rows.append(
        [
            f"BT − random ({difference['pairing']})",
            "",
            fmt_estimate(difference["energy_in_box"])
            + f", p {fmt_p(difference['energy_in_box']['p_value'])}",
            fmt_estimate(difference["pointing_hit"])
            + f", p {fmt_p(difference['pointing_hit']['p_value'])}",
            "",
            fmt_estimate(difference["energy_in_gt"]),
            fmt_estimate(difference["pointing_hit_gt"]),
        ]
    )
    lines += _table(
        [
            "model",
            "n CAMs",
            "energy in box",
            "pointing hit rate",
            "n GT",
            "energy in GT",
            "pointing hit rate (GT)",
        ],
        rows,
    )
    lines += [
        "Overlays (white: the predicted box with its score; magenta: ground truth; index with "
        "every score: cams/<model>/cams.csv):",
        "",
    ]
    for init, paths in cams["files"].items():
        lines += [f"{INIT_TITLES[init]}:", ""]
        lines += [f"![{p.stem}]({os.path.relpath(p, out)})" for p in paths] + [""]
    return lines


def _write_report(
    out: Path,
    *,
    results: Mapping[str, Mapping[str, Any]],
    cams: Mapping[str, Any],
    plan: Plan,
    quick: bool,
    seconds: float,
) -> Path:
    bt, rnd = results["barlow_twins"], results["random"]
    counts = bt["counts"]
    lines = [
        "# cxrkit demo: Barlow Twins pretraining -> Faster R-CNN abnormality localizer",
        "",
        f"Synthetic phantoms, {'quick' if quick else 'full'} mode, {seconds:.0f} s. Test split: "
        f"{counts['n_images']} images, {counts['n_gt_boxes']} boxes (three readers fused by "
        f"weighted boxes fusion). Detectors: {plan.detector_steps} SGD steps at "
        f"{plan.cache_size} px after {plan.pretrain_steps} Barlow Twins steps.",
        "",
    ]
    if quick:
        lines += [
            "Quick mode shows that every step runs; with a few dozen training steps the numbers "
            "below are close to chance and say nothing about the methods.",
            "",
        ]
    lines += ["## mAP@0.5 per class (COCO AP at IoU 0.5)", ""]
    rows = []
    for name in bt["classes"]:
        rows.append(
            [
                name,
                str(bt["per_class"][name]["n_gt"]),
                _number(bt["per_class"][name]["ap50"]),
                _number(rnd["per_class"][name]["ap50"]),
            ]
        )
    rows.append(
        [
            "**mean**",
            str(counts["n_gt_boxes"]),
            _number(bt["mean"]["map50"]),
            _number(rnd["mean"]["map50"]),
        ]
    )
    rows.append(
        [
            "VinBigData VOC mAP@0.4",
            "",
            _number(bt["mean"]["voc_map"]),
            _number(rnd["mean"]["voc_map"]),
        ]
    )
    lines += _table(["class", "boxes", INIT_TITLES["barlow_twins"], INIT_TITLES["random"]], rows)

    lines += ["## By view: mAP@0.5 on AP and PA films, and the AP − PA gap", ""]
    view_rows = []
    for label, getter in (
        ("AP films", lambda r: r["views"]["map50"]["AP"]),
        ("PA films", lambda r: r["views"]["map50"]["PA"]),
        ("gap AP − PA", lambda r: r["views"]["gap"]),
    ):
        view_rows.append([label, _number(getter(bt)), _number(getter(rnd))])
    lines += _table(["", INIT_TITLES["barlow_twins"], INIT_TITLES["random"]], view_rows)
    compared = bt["views"].get("classes_compared") or []
    view_counts = bt["views"]["counts"]
    lines += [
        f"Images: {view_counts['AP']} AP, {view_counts['PA']} PA. Classes with boxes in both "
        f"views (the gap averages these): {', '.join(compared) or 'none'}.",
        "",
        "Per class and view:",
        "",
    ]
    per_view = []
    for name in bt["classes"]:
        b, r = bt["per_class"][name]["ap50_by_view"], rnd["per_class"][name]["ap50_by_view"]
        per_view.append([name, _plain(b["AP"]), _plain(b["PA"]), _plain(r["AP"]), _plain(r["PA"])])
    lines += _table(["class", "BT: AP", "BT: PA", "random: AP", "random: PA"], per_view)

    lines += _cam_md(cams, out)
    lines += [
        "## Files",
        "",
        "- each model's full evaluation (intervals, FROC, PR curves): "
        "[eval/barlow_twins/report.md](eval/barlow_twins/report.md), "
        "[eval/random/report.md](eval/random/report.md)",
        "- predictions in original pixels: predictions/*_test.csv",
        "- training runs (TensorBoard, checkpoints, detector.pt): runs/",
        "- data: synth/ (phantoms), data/ (manifests, caches)",
        "",
    ]
    from cxrkit.io import atomic_write

    return atomic_write(out / "report.md", "\n".join(lines))
