"""``cxrkit reproduce barlowtwins-cxr``: the BarlowTwins-CXR protocol, data to tables, in one run.

The chain (each step a resumable stage of :class:`cxrkit.reproduce.pipeline.Pipeline`)::

    prepare      NIH manifest (all images); VinDr manifest: Kaggle train (PhysioNet's train part),
                 abnormal images only, split 70/15/15 by patient or by the authors' split files
    preprocess   the NIH cache (plain images) and one VinDr cache per detector image size
    pretrain     Barlow Twins from ImageNet V2 on every NIH image -> backbone.pth
    detector-*   Faster R-CNN per arm (Barlow Twins / ImageNet V1 / random) x image size x seed
    predict      every detector on the VinDr test split, boxes in original pixels
    eval         mAP@0.5 per arm (mean over seeds, across-seed and image-bootstrap intervals),
                 BT - ImageNet with its paired image bootstrap, per class, per view, Kaggle metric
    linear-eval  AUROC of each initialisation on NIH (init x label fraction), per protocol in
                 :data:`LINEAR_EVAL_PROTOCOLS`
    cams         Ablation-CAM of every arm's detector on the same test images -> a panel, and
                 each arm's CAM energy in box / pointing game with intervals, BT - ImageNet

Every value of the protocol comes from ``configs/barlowtwins_cxr/`` (each commented with its
source); ``--scale tiny`` applies small sizes on top of the same files and, without ``--nih`` /
``--vindr``, synthesises phantoms (:mod:`cxrkit.synth`). Outputs: ``OUT/table.md``,
``OUT/table.csv``, ``OUT/report.json``; the stages' work under ``OUT/data``, ``OUT/runs``,
``OUT/predictions``, ``OUT/eval``, ``OUT/cams``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.errors import ConfigError, MissingFileError
from cxrkit.reproduce.pipeline import Pipeline, StagePlan, markdown_table, write_json

NAME = "reproduce barlowtwins-cxr"
ARMS = ("bt", "imagenet", "random")
ARM_TITLES = {"bt": "Barlow Twins (NIH)", "imagenet": "ImageNet V1", "random": "random init"}
ARM_FILES = {"bt": (), "imagenet": ("imagenet_v1.yaml",), "random": ("random.yaml",)}
# The linear-evaluation protocols the driver runs, in order, with the config files of each:
# "cxrkit" is the leakage-free default; "authors" is BarlowTwins-CXR's own (leaky: image-level
# split of the official test list, best epoch on test), run beside it for comparison with the
# paper's numbers, with its leakage counted in the table.
LINEAR_EVAL_FILES: dict[str, tuple[str, ...]] = {
    "cxrkit": ("linear_eval.yaml",),
    "authors": ("linear_eval.yaml", "linear_eval_authors.yaml"),
}
LINEAR_EVAL_PROTOCOLS: list[str] = list(LINEAR_EVAL_FILES)
# The authors trained on Kaggle's VinBigData train = PhysioNet VinDr-CXR's train part
PAPER_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
IMAGENET_URLS = {
    "v1": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "v2": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
}
# Documented step times for the plan's estimate (seconds per optimizer step on one GPU):
# authors' barlowtwins/LOG.TXT: "time": 151531 s at step 115,990 (batch 768, their GPU).
PRETRAIN_STEP_S = 151531 / 115990
# cxrkit's assumption, not measured (no GPU was available to this driver's author): Faster R-CNN
# R50-FPN, batch 32, at 224 px and 640 px on one recent GPU.
DETECTOR_STEP_S = {224: 0.15, 640: 0.6}
LINEAR_STEP_S = 0.1  # cxrkit's assumption: a frozen ResNet-50 forward at batch 64, 224 px
PAPER_COUNTS = {"nih": 112_120, "vindr_abnormal": 4_394}


@dataclass(frozen=True)
class Scale:
    """What ``--scale`` changes; the protocol files give every other value."""

    name: str
    detector_sizes: tuple[int, ...]
    pretrain_overrides: tuple[str, ...] = ()
    detector_overrides: tuple[str, ...] = ()
    linear_overrides: tuple[str, ...] = ()
    cam_overrides: tuple[str, ...] = ()
    n_bootstrap: int = 1000
    cam_images: int = 8
    # phantoms synthesised when no dataset folder is given (tiny scale only)
    n_vindr: int = 0
    n_nih: int = 0
    phantom_size: int = 0
    # NIH split when the folder has no official lists (None: cxrkit's default 0.8 / 0.1 / 0.1)
    nih_fractions: tuple[float, float, float] | None = None


CPU = ("trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true")
QUIET = ("trainer.progress_bar=false", "trainer.log_every_n_steps=1")
PAPER = Scale(name="paper", detector_sizes=(224, 640))
TINY = Scale(
    name="tiny",
    detector_sizes=(64,),
    pretrain_overrides=(
        *CPU,
        *QUIET,
        "data.batch_size=4",
        "data.num_workers=0",
        "model.projector_hidden_dim=32",
        "model.projector_output_dim=32",
        "views.size=64",
        "views.min_scale=0.5",
        "optim.warmup_epochs=0",
        "trainer.max_epochs=1",
        "trainer.max_steps=1",
        "trainer.checkpoint_every_n_steps=1",
    ),
    detector_overrides=(
        *CPU,
        *QUIET,
        "data.batch_size=2",
        "data.num_workers=0",
        "model.anchor_sizes=[8, 16, 32, 64, 128]",
        "model.rpn_pre_nms_train=50",
        "model.rpn_proposals_train=50",
        "model.rpn_proposals_test=25",
        "model.roi_batch_size=32",
        "model.detections_per_img=20",
        "model.score_thresh=0.0",  # untrained detectors score low: keep their boxes for AP
        "optim.warmup_steps=1",
        "trainer.max_epochs=1",
        # one step, no validation (the epoch never ends): the detector is last.ckpt's. Best-epoch
        # selection is the finetune stage's and tested there; here the chain is what is tested
        "trainer.max_steps=1",
        "trainer.checkpoint_every_n_steps=1",
    ),
    linear_overrides=(
        *CPU,
        *QUIET,
        "data.batch_size=4",
        "data.num_workers=0",
        "label_fractions=[0.5, 1.0]",
        "n_bootstrap=0",
        "trainer.max_epochs=1",
        "trainer.max_steps=1",
    ),
    cam_overrides=("score_thresh=0.0", "top_k=1", "ablation_ratio=0.01", "batch_size=16"),
    n_bootstrap=200,
    cam_images=1,
    n_vindr=48,
    n_nih=32,
    phantom_size=96,
    nih_fractions=(0.5, 0.1, 0.4),  # a test split large enough for an AUROC on some finding
)
SCALES = {"paper": PAPER, "tiny": TINY}


def protocol_dir() -> Path:
    """``configs/barlowtwins_cxr`` of the cxrkit checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "configs" / "barlowtwins_cxr"


@dataclass(frozen=True)
class Detector:
    """One detector run: an arm at an image size with a seed."""

    arm: str
    size: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm}-{self.size}-seed{self.seed}"


def detector_grid(scale: Scale, seeds: int) -> list[Detector]:
    """Every detector run, in the order the driver trains them."""
    return [
        Detector(arm, size, seed)
        for size in scale.detector_sizes
        for arm in ARMS
        for seed in range(seeds)
    ]


# --------------------------------------------------------------------------------------------------
# the plan


def plan(
    *, scale: Scale, seeds: int, n_nih: int | None = None, n_train: int | None = None
) -> list[StagePlan]:
    """The stages in order, with estimates at paper scale (``basis`` says where they come from).

    Args:
        n_nih, n_train: images pretrained on and VinDr training images (default: the paper's
            112,120 and 70 % of 4,394).
    """
    paper = scale.name == "paper"
    n_nih = n_nih or PAPER_COUNTS["nih"]
    n_train = n_train or round(PAPER_FRACTIONS["train"] * PAPER_COUNTS["vindr_abnormal"])
    stages = [
        StagePlan("prepare", "NIH + VinDr manifests (abnormal only, 70/15/15 or split files)"),
        StagePlan("preprocess", "caches: NIH plain 224 px, VinDr per detector size"),
    ]
    pretrain_steps = 800 * (n_nih // 768)  # the authors' loader drops the last partial batch
    stages.append(
        StagePlan(
            "pretrain",
            f"Barlow Twins from ImageNet V2, {pretrain_steps:,} steps of 768"
            if paper
            else "Barlow Twins, tiny",
            pretrain_steps * PRETRAIN_STEP_S if paper else None,
            f"{PRETRAIN_STEP_S:.2f} s/step: authors' LOG.TXT" if paper else "",
        )
    )
    detector_steps = 50 * math.ceil(n_train / 32)
    for d in detector_grid(scale, seeds):
        step_s = DETECTOR_STEP_S.get(d.size)
        stages.append(
            StagePlan(
                f"detector-{d.name}",
                f"Faster R-CNN, {ARM_TITLES[d.arm]}, {d.size} px, seed {d.seed}"
                + (f", {detector_steps:,} steps" if paper else ""),
                detector_steps * step_s if paper and step_s else None,
                f"{step_s} s/step assumed (not measured)" if paper and step_s else "",
            )
        )
    stages += [
        StagePlan("predict", "every detector on the VinDr test split"),
        StagePlan("eval", "mAP50 per arm, paired BT - ImageNet test, per class/view, Kaggle"),
    ]
    linear_steps = 30 * math.ceil(0.7 * n_nih / 64) * 1.11  # 100 % + 10 % + 1 % of the labels
    for protocol in LINEAR_EVAL_PROTOCOLS:
        for arm in ARMS:
            stages.append(
                StagePlan(
                    f"linear-eval-{protocol}-{arm}",
                    f"linear evaluation ({protocol} protocol), {ARM_TITLES[arm]}",
                    linear_steps * LINEAR_STEP_S if paper else None,
                    f"{LINEAR_STEP_S} s/step assumed (not measured)" if paper else "",
                )
            )
    stages.append(StagePlan("cams", "Ablation-CAM panel and localisation scores, every arm"))
    return stages


# --------------------------------------------------------------------------------------------------
# the driver


def run(
    *,
    out_dir: str | Path,
    nih: str | Path | None = None,
    vindr: str | Path | None = None,
    imagenet_v1: str | Path | None = None,
    imagenet_v2: str | Path | None = None,
    seeds: int = 3,
    scale: str = "paper",
    stages: Sequence[str] | None = None,
    plan_only: bool = False,
    split_from: Mapping[str, str | Path] | None = None,
    protocol: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path | None:
    """Run the protocol into ``out_dir``; returns ``OUT/table.md`` (None with ``plan_only``).

    Args:
        nih, vindr: dataset folders (``cxrkit prepare nih`` / ``vindr`` layouts). At tiny scale,
            a missing one is replaced by synthetic phantoms.
        imagenet_v1, imagenet_v2: torchvision's ResNet-50 files (V1 for the ImageNet arm, V2 to
            start pretraining). At tiny scale, missing ones are replaced by random-weight files
            the driver writes (the tables say so).
        seeds: detector seeds per arm and size (>= 2 for an across-seed interval).
        stages: run only these stages (names or prefixes), see :class:`Pipeline`.
        split_from: split -> the authors' COCO JSON (or an id list) for the VinDr split.
        protocol: the protocol folder (default :func:`protocol_dir`).

    Raises:
        ConfigError: a bad argument; MissingFileError: a dataset folder or weights file is missing
            at paper scale (the message says how to provide it).
    """
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    sizes = SCALES[scale]
    folder = Path(protocol) if protocol else protocol_dir()
    if not (folder / "detector.yaml").is_file():
        raise MissingFileError(
            f"{folder}: the BarlowTwins-CXR protocol folder (detector.yaml, pretrain.yaml, ...) "
            "is not there; pass --protocol configs/barlowtwins_cxr of a cxrkit checkout"
        )
    out = Path(out_dir)
    pipeline = Pipeline(out, name=NAME, stages=plan(scale=sizes, seeds=seeds), only=stages, log=log)
    pipeline.print_plan()
    if plan_only:
        return None
    say = log or (lambda line: print(line, flush=True))
    from cxrkit import engine

    engine.lightning_warnings_only()
    notes: list[str] = []
    inputs = _inputs(
        out=pipeline.out_dir,
        scale=sizes,
        nih=nih,
        vindr=vindr,
        imagenet_v1=imagenet_v1,
        imagenet_v2=imagenet_v2,
        notes=notes,
    )
    data = pipeline.out_dir / "data"
    files = {k: str(v) for k, v in (split_from or {}).items()}

    pipeline.stage(
        "prepare",
        lambda: _prepare(inputs, data, split_from=files, seed=0, scale=sizes),
        settings={"inputs": {k: inputs[k] for k in ("nih", "vindr")}, "split_from": files},
    )
    pipeline.stage(
        "preprocess",
        lambda: _preprocess(pipeline.result("prepare"), data, folder=folder, scale=sizes),
        settings={"sizes": list(sizes.detector_sizes), "scale": sizes.name},
    )
    pipeline.stage(
        "pretrain",
        lambda: _pretrain(
            pipeline.result("preprocess"),
            pipeline.out_dir / "runs" / "pretrain",
            inputs,
            folder,
            sizes,
        ),
        settings={"scale": sizes.name, "imagenet_v2": inputs["imagenet_v2"]},
    )
    detectors: dict[str, Any] = {}
    for d in detector_grid(sizes, seeds):
        detectors[d.name] = pipeline.stage(
            f"detector-{d.name}",
            lambda d=d: _detector(
                d,
                caches=pipeline.result("preprocess"),
                backbone=pipeline.result("pretrain")["backbone"],
                inputs=inputs,
                runs=pipeline.out_dir / "runs",
                folder=folder,
                scale=sizes,
            ),
            settings={"scale": sizes.name, "arm": d.arm, "size": d.size, "seed": d.seed},
        )
    grid = detector_grid(sizes, seeds)
    pipeline.stage(
        "predict",
        lambda: _predict(
            {d.name: pipeline.result(f"detector-{d.name}")["detector"] for d in grid},
            caches=pipeline.result("preprocess"),
            out=pipeline.out_dir / "predictions",
        ),
        settings={"detectors": [d.name for d in grid]},
    )
    evaluated = pipeline.stage(
        "eval",
        lambda: _evaluate(
            grid,
            predictions=pipeline.result("predict"),
            caches=pipeline.result("preprocess"),
            folder=folder,
            out=pipeline.out_dir / "eval",
            n_bootstrap=sizes.n_bootstrap,
        ),
        settings={"detectors": [d.name for d in grid], "n_bootstrap": sizes.n_bootstrap},
    )
    linear: dict[str, Any] = {}
    for protocol_name in LINEAR_EVAL_PROTOCOLS:
        for arm in ARMS:
            linear[f"{protocol_name}-{arm}"] = pipeline.stage(
                f"linear-eval-{protocol_name}-{arm}",
                lambda p=protocol_name, a=arm: _linear_eval(
                    p,
                    a,
                    nih=pipeline.result("preprocess")["nih"],
                    backbone=pipeline.result("pretrain")["backbone"],
                    inputs=inputs,
                    out=pipeline.out_dir / "runs" / f"linear_eval_{p}_{a}",
                    folder=folder,
                    scale=sizes,
                ),
                settings={"scale": sizes.name, "protocol": protocol_name, "arm": arm},
            )
    first = sizes.detector_sizes[0]
    cams = pipeline.stage(
        "cams",
        lambda: _cams(
            {arm: pipeline.result(f"detector-{arm}-{first}-seed0")["detector"] for arm in ARMS},
            caches=pipeline.result("preprocess"),
            size=first,
            out=pipeline.out_dir / "cams",
            folder=folder,
            scale=sizes,
        ),
        settings={
            "scale": sizes.name,
            "size": first,
            "arms": list(ARMS),
            "n_bootstrap": sizes.n_bootstrap,
        },
    )
    if evaluated is None:
        say("eval has not run (--stage): no tables written")
        return None
    return write_tables(
        pipeline.out_dir,
        evaluated=evaluated,
        linear=linear,
        cams=cams,
        scale=sizes,
        seeds=seeds,
        notes=notes,
        detectors=detectors,
    )


def _inputs(
    *,
    out: Path,
    scale: Scale,
    nih: str | Path | None,
    vindr: str | Path | None,
    imagenet_v1: str | Path | None,
    imagenet_v2: str | Path | None,
    notes: list[str],
) -> dict[str, str]:
    """The dataset folders and weights files, checked (paper) or stood in for (tiny)."""
    found: dict[str, str] = {}
    for key, given, how in (
        ("nih", nih, "--nih ROOT: the NIH ChestX-ray14 folder (Data_Entry_2017.csv, images*/)"),
        ("vindr", vindr, "--vindr ROOT: the VinBigData / VinDr-CXR folder (train.csv, train/)"),
    ):
        if given is not None:
            if not Path(given).is_dir():
                raise MissingFileError(f"{given}: dataset folder not found ({how})")
            found[key] = str(Path(given).resolve())
        elif scale.name == "paper":
            raise ConfigError(f"{NAME} --scale paper needs {how}")
        else:
            found[key] = ""  # synthesised in the prepare stage
    stand_ins: list[str] = []
    for key, given in (("imagenet_v1", imagenet_v1), ("imagenet_v2", imagenet_v2)):
        version = key[-2:]
        if given is not None and Path(given).is_file():
            found[key] = str(Path(given).resolve())
            continue
        if scale.name == "paper":
            what = f"{given}: not found" if given is not None else f"--{key.replace('_', '-')}"
            raise MissingFileError(
                f"{what}: torchvision's ImageNet {version.upper()} ResNet-50 weights are needed "
                f"({'the ImageNet arm' if version == 'v1' else 'the start of pretraining'}). "
                f"Download {IMAGENET_URLS[version]} and pass --{key.replace('_', '-')} PATH"
            )
        # one random-weight file stands in for both versions (writing a ResNet-50 takes seconds)
        fake = out / "weights" / "fake_resnet50_imagenet.pth"
        if not fake.is_file():
            _write_fake_weights(fake, seed=1)
        found[key] = str(fake)
        stand_ins.append(version.upper())
    if stand_ins:
        notes.append(
            f"tiny scale: the ImageNet {' and '.join(stand_ins)} weights are a random-weight "
            "stand-in written by the driver (weights/fake_resnet50_imagenet.pth); the 'ImageNet' "
            "rows (and the start of pretraining) measure nothing about ImageNet"
        )
    return found


def _write_fake_weights(path: Path, *, seed: int) -> None:
    import torch
    import torchvision

    from cxrkit import io

    torch.manual_seed(seed)
    state = torchvision.models.resnet50(weights=None).state_dict()
    io.atomic_write(path, lambda tmp: torch.save(state, tmp))


# --------------------------------------------------------------------------------------------------
# the stages


def _prepare(
    inputs: Mapping[str, str],
    data: Path,
    *,
    split_from: Mapping[str, str],
    seed: int,
    scale: Scale,
) -> dict[str, Any]:
    from collections import Counter

    from cxrkit.data import splits
    from cxrkit.data.records import write_manifest
    from cxrkit.data.sources.nih import prepare_nih
    from cxrkit.data.sources.vindr import abnormal_records, load_vindr

    nih_root, vindr_root = inputs["nih"], inputs["vindr"]
    if not nih_root or not vindr_root:
        nih_root, vindr_root = _synthesise(data.parent / "synth", nih=nih_root, vindr=vindr_root)
    records, official = load_vindr(root=vindr_root)
    if official:  # PhysioNet: its train part is Kaggle's VinBigData train, the authors' data
        records = [r for r in records if r.split == "train"]
    n_all = len(records)
    records = abnormal_records(records)
    warnings = [f"abnormal only: {len(records)} of {n_all} training images have a box"]
    if split_from:
        records, found = splits.splits_from_files(
            records, split_from, fractions=PAPER_FRACTIONS, seed=seed
        )
        warnings += found
    else:
        records = splits.assign_splits(records, fractions=PAPER_FRACTIONS, seed=seed)
    vindr_manifest = write_manifest(records, data / "vindr_abnormal.parquet", warnings=warnings)
    nih = prepare_nih(
        root=nih_root,
        seed=seed,
        **(
            {"fractions": dict(zip(("train", "val", "test"), scale.nih_fractions, strict=True))}
            if scale.nih_fractions
            else {}
        ),
    )
    nih_manifest = write_manifest(nih.records, data / "nih.parquet", warnings=nih.warnings)
    counts = Counter(r.split for r in records)
    return {
        "vindr": str(vindr_manifest),
        "nih": str(nih_manifest),
        "vindr_splits": dict(counts),
        "n_nih": len(nih.records),
        "warnings": warnings,
    }


def _synthesise(root: Path, *, nih: str, vindr: str) -> tuple[str, str]:
    from cxrkit import synth

    scale = TINY
    if not vindr:
        synth.generate(
            out_dir=root,
            n=scale.n_vindr,
            size=scale.phantom_size,
            seed=0,
            abnormal_fraction=0.8,
            datasets=("vindr",),
            progress=False,
        )
        vindr = str(root / "vindr")
    if not nih:
        synth.generate(
            out_dir=root,
            n=scale.n_nih,
            size=scale.phantom_size,
            seed=1,
            datasets=("nih",),
            progress=False,
        )
        nih = str(root / "nih")
    return nih, vindr


def _load(schema: type, files: Sequence[Path], overrides: Sequence[str]) -> Any:
    from cxrkit.config import load

    return load(schema, files=files, overrides=list(overrides))


def _preprocess(prepared: Mapping[str, Any], data: Path, *, folder: Path, scale: Scale):
    from cxrkit import finetune, pretrain
    from cxrkit.data import loading

    pre = _load(
        pretrain.Config,
        [folder / "pretrain.yaml"],
        [
            f"data.manifest={prepared['nih']}",
            f"data.cache={data / 'cache_nih'}",
            *scale.pretrain_overrides,
            *([f"data.preprocess.size={scale.detector_sizes[0]}"] if scale.name == "tiny" else []),
        ],
    )
    loading.open_cache(pre.data, progress=False)
    out: dict[str, Any] = {
        "nih": {
            "manifest": prepared["nih"],
            "cache": pre.data.cache,
            "size": pre.data.preprocess.size,
        }
    }
    for size in scale.detector_sizes:
        config = _load(
            finetune.Config,
            [folder / "detector.yaml"],
            [
                f"data.manifest={prepared['vindr']}",
                f"data.cache={data / f'cache_vindr_{size}'}",
                f"data.preprocess.size={size}",
                *scale.detector_overrides,
            ],
        )
        loading.open_cache(config.data, progress=False)
        out[f"vindr_{size}"] = {
            "manifest": prepared["vindr"],
            "cache": config.data.cache,
            "size": size,
        }
    out["n_train"] = prepared["vindr_splits"].get("train", 0)
    return out


def _pretrain(
    caches: Mapping[str, Any], out: Path, inputs: Mapping[str, str], folder: Path, scale: Scale
) -> dict[str, Any]:
    from cxrkit import pretrain

    nih = caches["nih"]
    config = _load(
        pretrain.Config,
        [folder / "pretrain.yaml"],
        [
            f"output_dir={out}",
            *_data_overrides(nih),
            f"model.weights={inputs['imagenet_v2']}",
            *scale.pretrain_overrides,
        ],
    )
    result = pretrain.fit(config, resume="auto")
    return {"backbone": str(result.artifacts["backbone"])}


def _arm_weights(arm: str, *, backbone: str, inputs: Mapping[str, str]) -> str:
    """The initial-weights file of ``arm`` ("" for random): the pretrained backbone, or the
    ImageNet V1 file (the authors' torchvision://resnet50 and evaluate.py baseline)."""
    return {"bt": backbone, "imagenet": inputs["imagenet_v1"], "random": ""}[arm]


def _detector(
    d: Detector,
    *,
    caches: Mapping[str, Any],
    backbone: str,
    inputs: Mapping[str, str],
    runs: Path,
    folder: Path,
    scale: Scale,
) -> dict[str, Any]:
    from cxrkit import finetune

    vindr = caches[f"vindr_{d.size}"]
    weights = _arm_weights(d.arm, backbone=backbone, inputs=inputs)
    overrides = [
        f"output_dir={runs / f'detector_{d.name}'}",
        *_data_overrides(vindr),
        f"trainer.seed={d.seed}",
        *scale.detector_overrides,
    ]
    if weights:
        overrides.append(f"model.weights={weights}")
    config = _load(
        finetune.Config,
        [folder / "detector.yaml", *(folder / f for f in ARM_FILES[d.arm])],
        overrides,
    )
    result = finetune.fit(config, resume="auto")
    best = result.metrics.get("val/mAP50")
    return {"detector": str(result.artifacts["detector"]), "val_map50": best}


def _predict(
    detectors: Mapping[str, str], *, caches: Mapping[str, Any], out: Path
) -> dict[str, str]:
    from cxrkit import finetune
    from cxrkit.data import loading
    from cxrkit.eval.predictions import write_predictions

    paths = {}
    for name, path in detectors.items():
        detector = finetune.load(path)
        model, config = detector.model, detector.config
        size = config.data.preprocess.size
        cache, every = loading.open_records(_data_config(caches[f"vindr_{size}"]), progress=False)
        frame = finetune.predict(
            model,
            records=loading.in_split(every, "test"),
            cache=cache,
            classes=config.classes,
            progress=False,
        )
        paths[name] = str(write_predictions(frame, out / f"{name}_test.csv", kind="detection"))
    return paths


def _data_overrides(entry: Mapping[str, Any]) -> list[str]:
    """The overrides that point a stage's config at one of the ``preprocess`` stage's caches."""
    return [
        f"data.manifest={entry['manifest']}",
        f"data.cache={entry['cache']}",
        f"data.preprocess.size={entry['size']}",
    ]


def _data_config(entry: Mapping[str, Any]) -> Any:
    from cxrkit.config import DataConfig, PreprocessConfig

    return DataConfig(
        manifest=entry["manifest"],
        cache=entry["cache"],
        preprocess=PreprocessConfig(size=int(entry["size"])),
        num_workers=0,
    )


def _evaluate(
    grid: Sequence[Detector],
    *,
    predictions: Mapping[str, str],
    caches: Mapping[str, Any],
    folder: Path,
    out: Path,
    n_bootstrap: int,
) -> dict[str, Any]:
    """Score every detector (paired image bootstrap: same resamples for all) and aggregate."""
    from cxrkit import finetune
    from cxrkit.data import loading
    from cxrkit.eval import detection
    from cxrkit.eval.predictions import read_predictions
    from cxrkit.finetune.data import detection_records

    config = _load(finetune.Config, [folder / "detector.yaml"], [])
    per: dict[str, dict[str, Any]] = {}
    reps: dict[str, dict[str, np.ndarray]] = {}
    tests: dict[int, list] = {}
    for d in grid:
        if d.size not in tests:
            records = loading.load_records(_data_config(caches[f"vindr_{d.size}"]), split="test")
            # ground truth = the readers' boxes fused as for training (WBF)
            tests[d.size] = detection_records(records, config=config, train=False)
        frame, _ = read_predictions(predictions[d.name], kind="detection")
        result = detection.evaluate(
            frame,
            tests[d.size],
            classes=config.classes,
            iou_thresholds=(0.5,),
            gt_reader="all",  # fused already
            n_bootstrap=n_bootstrap,
            seed=0,  # the same resamples for every detector: differences are paired by image
            bootstrap_unit="image",
            replicates=True,
            curves=False,
        )
        reps[d.name] = {k: np.asarray(v, dtype=np.float64) for k, v in result["replicates"].items()}
        del result["replicates"]
        write_json(out / f"{d.name}.json", result)
        per[d.name] = result
    return aggregate(grid, per=per, reps=reps, classes=config.classes)


def seed_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean over seeds (NaN with fewer than two finite values)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def _percentile(reps: np.ndarray) -> tuple[float, float]:
    from cxrkit.eval import bootstrap

    if reps.size == 0:
        return math.nan, math.nan
    low, high, _ = bootstrap.percentile_interval(reps, level=0.95)
    return low, high


def aggregate(
    grid: Sequence[Detector],
    *,
    per: Mapping[str, Mapping[str, Any]],
    reps: Mapping[str, Mapping[str, np.ndarray]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """Mean over seeds per arm and size, with across-seed and image-bootstrap intervals; the
    BT - ImageNet difference with its paired bootstrap p-value; per class and per view."""
    from cxrkit.eval import bootstrap

    def value(result: Mapping[str, Any], *path: str) -> float:
        node: Any = result
        for key in path:
            node = node[key]
        v = node["value"] if isinstance(node, Mapping) else node
        return math.nan if v is None else float(v)

    metrics = {
        "map50": ("mean", "map50"),
        "kaggle_map": ("kaggle", "map"),
        "voc_map": ("mean", "voc_map"),
        "map50_AP": ("views", "map50", "AP"),
        "map50_PA": ("views", "map50", "PA"),
    }
    arms: list[dict[str, Any]] = []
    seed_mean_reps: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    sizes = sorted({d.size for d in grid}, key=[d.size for d in grid].index)
    for size in sizes:
        for arm in ARMS:
            runs = [d for d in grid if d.arm == arm and d.size == size]
            if not runs:
                continue
            row: dict[str, Any] = {"arm": arm, "size": size, "seeds": len(runs)}
            mean_reps = {}
            for key, path in metrics.items():
                values = [value(per[d.name], *path) for d in runs]
                stacked = np.vstack([reps[d.name][key] for d in runs])
                with np.errstate(invalid="ignore"):
                    mean_reps[key] = stacked.mean(axis=0)
                row[key] = {
                    "value": float(np.nanmean(values)) if np.isfinite(values).any() else math.nan,
                    "per_seed": values,
                    "seed_ci": list(seed_interval(values)),
                    "bootstrap_ci": list(_percentile(mean_reps[key])),
                }
            gap = np.asarray(row["map50_AP"]["per_seed"]) - np.asarray(row["map50_PA"]["per_seed"])
            row["gap_AP_PA"] = {
                "value": float(np.nanmean(gap)) if np.isfinite(gap).any() else math.nan,
                "bootstrap_ci": list(_percentile(mean_reps["map50_AP"] - mean_reps["map50_PA"])),
            }
            row["per_class"] = {
                c: float(np.nanmean([value(per[d.name], "per_class", c, "ap50") for d in runs]))
                if any(math.isfinite(value(per[d.name], "per_class", c, "ap50")) for d in runs)
                else math.nan
                for c in classes
            }
            row["n_gt_per_class"] = {
                c: int(per[runs[0].name]["per_class"][c]["n_gt"]) for c in classes
            }
            seed_mean_reps[(arm, size)] = mean_reps
            arms.append(row)
    differences = []
    for size in sizes:
        if ("bt", size) not in seed_mean_reps or ("imagenet", size) not in seed_mean_reps:
            continue
        entry: dict[str, Any] = {"size": size, "test": "paired image bootstrap"}
        for key in ("map50", "kaggle_map"):
            diff = seed_mean_reps[("bt", size)][key] - seed_mean_reps[("imagenet", size)][key]
            bt = next(r for r in arms if r["arm"] == "bt" and r["size"] == size)
            im = next(r for r in arms if r["arm"] == "imagenet" and r["size"] == size)
            entry[key] = {
                "value": bt[key]["value"] - im[key]["value"],
                "bootstrap_ci": list(_percentile(diff)),
                "p_value": bootstrap.p_value(diff),
            }
        differences.append(entry)
    first = per[grid[0].name]
    return {
        "arms": arms,
        "differences": differences,
        "classes": list(classes),
        "n_test_images": first["counts"]["n_images"],
        "n_test_boxes": first["counts"]["n_gt_boxes"],
        "view_counts": first["views"]["counts"],
        "n_bootstrap": int(next(iter(reps.values()))["map50"].size) if reps else 0,
    }


def _linear_eval_config(
    protocol: str,
    arm: str,
    *,
    nih: Mapping[str, Any],
    backbone: str,
    inputs: Mapping[str, str],
    out: Path,
    folder: Path,
    scale: Scale,
) -> Any:
    """The linear-evaluation config of ``protocol`` for ``arm`` (one entry per protocol name in
    :data:`LINEAR_EVAL_PROTOCOLS`)."""
    from cxrkit import pretrain

    if protocol not in LINEAR_EVAL_FILES:
        raise ConfigError(
            f"unknown linear-evaluation protocol {protocol!r} "
            f"(known: {', '.join(LINEAR_EVAL_FILES)})"
        )
    init = {"bt": "checkpoint", "imagenet": "imagenet", "random": "random"}[arm]
    # authors' evaluate.py: the ImageNet baseline is torchvision's IMAGENET1K_V1
    weights = _arm_weights(arm, backbone=backbone, inputs=inputs)
    return _load(
        pretrain.LinearEvalConfig,
        [folder / name for name in LINEAR_EVAL_FILES[protocol]],
        [
            f"output_dir={out}",
            *_data_overrides(nih),
            f"init={init}",
            *([f"weights={weights}"] if weights else []),
            *scale.linear_overrides,
        ],
    )


def _linear_eval(protocol: str, arm: str, **kwargs: Any) -> dict[str, Any]:
    from cxrkit import pretrain

    summary = pretrain.linear_eval(_linear_eval_config(protocol, arm, **kwargs), resume="auto")
    means = summary[summary["finding"] == "mean"]
    result = {
        "protocol": protocol,
        "arm": arm,
        "auroc": {
            f"{f:g}": float(a) for f, a in zip(means["fraction"], means["auroc"], strict=True)
        },
    }
    if "test_images_patient_in_train" in means.columns:  # the authors' protocol: its leakage
        result["leakage"] = {
            f"{f:g}": {"test_images": int(n), "patient_in_train": int(k)}
            for f, n, k in zip(
                means["fraction"],
                means["test_images"],
                means["test_images_patient_in_train"],
                strict=True,
            )
        }
    return result


def _cams(
    detectors: Mapping[str, str],
    *,
    caches: Mapping[str, Any],
    size: int,
    out: Path,
    folder: Path,
    scale: Scale,
) -> dict[str, Any]:
    """Ablation-CAM of each arm's top boxes on the same test images: a panel image, and the
    localisation scores (:mod:`cxrkit.eval.cam_scores`) per arm with the BT - ImageNet difference,
    paired by image."""
    import cv2

    from cxrkit import finetune, io
    from cxrkit.data import loading
    from cxrkit.eval import cam_scores
    from cxrkit.finetune.cam import CamConfig, cover_classes
    from cxrkit.finetune.data import detection_records

    cam = _load(CamConfig, [folder / "cam.yaml"], scale.cam_overrides)
    cache, every = loading.open_records(_data_config(caches[f"vindr_{size}"]), progress=False)
    # ground truth fused as for the mAP; the images chosen by their classes (not by any arm)
    config = _load(finetune.Config, [folder / "detector.yaml"], [])
    test = detection_records(loading.in_split(every, "test"), config=config, train=False)
    records = cover_classes(test, n=scale.cam_images)
    tiles: dict[str, list[np.ndarray]] = {}
    counts: dict[str, int] = {}
    indexes = {}
    for arm, path in detectors.items():
        detector = finetune.load(path)
        model, config = detector.model, detector.config
        model.roi_heads.score_thresh = min(model.roi_heads.score_thresh, cam.score_thresh)
        index = finetune.explain(
            model,
            records=records,
            cache=cache,
            classes=config.classes,
            out_dir=out / arm,
            progress=False,
            **dataclasses.asdict(cam),
        )
        indexes[arm] = index
        counts[arm] = len(index)
        tiles[arm] = []
        for record in records:
            rows = (
                index[
                    (index["image_id"] == record.image_id) & (index["rank"] == index["rank"].min())
                ]
                if len(index)
                else index
            )
            image = cv2.imread(str(out / arm / rows["file"].iloc[0])) if len(rows) else None
            if image is None:
                image = np.full((size, size, 3), 40, dtype=np.uint8)
                cv2.putText(
                    image,
                    f"no box >= {cam.score_thresh:g}",
                    (2, size // 2),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    max(0.25, size / 640),
                    (255, 255, 255),
                    1,
                )
            tiles[arm].append(cv2.resize(image, (size, size)))
    panel_path = out / "panel.png"
    if records:
        panel = np.vstack(
            [np.hstack([tiles[arm][k] for arm in detectors]) for k in range(len(records))]
        )
        ok, encoded = cv2.imencode(".png", panel)
        if ok:
            io.atomic_write(panel_path, encoded.tobytes())
    scores = {
        arm: cam_scores.summarise(index, n_bootstrap=scale.n_bootstrap, seed=0)
        for arm, index in indexes.items()
    }
    difference = None
    if "bt" in indexes and "imagenet" in indexes:  # B - A: Barlow Twins minus ImageNet
        difference = cam_scores.compare(
            indexes["imagenet"], indexes["bt"], n_bootstrap=scale.n_bootstrap, seed=0
        )
    return {
        "panel": str(panel_path) if records else "",
        "columns": [ARM_TITLES[a] for a in detectors],
        "images": [r.image_id for r in records],
        "cams": counts,
        "indexes": {arm: str(out / arm / "cams.csv") for arm in detectors},
        "scores": scores,
        "difference": difference,
        "settings": dataclasses.asdict(cam),
    }


# --------------------------------------------------------------------------------------------------
# the tables


def _ci(pair: Sequence[float] | None) -> str:
    if not pair or any(v is None or not math.isfinite(v) for v in pair):
        return "n/a"
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _per_class_figure(out: Path, evaluated: Mapping[str, Any]) -> list[str]:
    """``OUT/per_class_ap50.png``: per-class AP50 of every arm side by side, a panel per size."""
    from cxrkit.eval.report import comparison_figure

    arms, classes = evaluated["arms"], evaluated["classes"]
    if not arms:
        return []
    panels: dict[str, dict[str, list[float]]] = {}
    legends: dict[str, dict[str, str]] = {}
    for r in arms:
        panel = f"{r['size']} px"
        title = ARM_TITLES[r["arm"]]
        panels.setdefault(panel, {})[title] = [r["per_class"][c] for c in classes]
        m = r["map50"]["value"]
        legends.setdefault(panel, {})[title] = (
            f"{title} (mAP50 {m:.3f})" if math.isfinite(m) else f"{title} (mAP50 n/a)"
        )
    comparison_figure(
        out / "per_class_ap50.png",
        categories=classes,
        panels=panels,
        legends=legends,
        ylabel="AP@0.5 (mean over seeds)",
        title="Per-class AP@0.5 on the VinDr test split, by initialisation",
    )
    return [
        "Per class, side by side (legend: each arm's mAP50):",
        "",
        "![per-class AP50](per_class_ap50.png)",
        "",
    ]


CAM_SCORE_TITLES = {
    "energy_in_box": "energy in box",
    "pointing_hit": "pointing hit rate",
    "energy_in_gt": "energy in GT",
    "pointing_hit_gt": "pointing hit rate (GT)",
}


def _cam_tables(cams: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The CAM localisation table (per arm, and BT - ImageNet) and its long-form CSV rows."""
    md = [
        "## Ablation-CAM localisation (the same test images for every arm)",
        "",
    ]
    rows, csv_rows = [], []
    for arm, summary in cams["scores"].items():
        row: dict[str, Any] = {"arm": ARM_TITLES[arm], "CAMs": summary["n_cams"]}
        for key, title in CAM_SCORE_TITLES.items():
            entry = summary[key]
            row[title] = entry["value"]
            row[f"{title} interval"] = _ci(entry.get("ci"))
            ci = entry.get("ci") or [math.nan, math.nan]
            csv_rows.append(
                {
                    "section": "cam",
                    "metric": key,
                    "arm": arm,
                    "value": entry["value"],
                    "bootstrap_ci_low": ci[0],
                    "bootstrap_ci_high": ci[1],
                }
            )
        rows.append(row)
    md += [markdown_table(rows, list(rows[0])), ""]
    d = cams.get("difference")
    if d:
        diff_rows = []
        for key, title in CAM_SCORE_TITLES.items():
            diff_rows.append(
                {
                    "score": title,
                    "BT - ImageNet": d[key]["value"],
                    "bootstrap interval": _ci(d[key].get("ci")),
                    "p (bootstrap)": d[key]["p_value"],
                }
            )
            ci = d[key].get("ci") or [math.nan, math.nan]
            csv_rows.append(
                {
                    "section": "cam_difference",
                    "metric": key,
                    "arm": "bt-imagenet",
                    "value": d[key]["value"],
                    "bootstrap_ci_low": ci[0],
                    "bootstrap_ci_high": ci[1],
                    "p_value": d[key]["p_value"],
                }
            )
        md += [f"### Barlow Twins - ImageNet ({d['pairing']})", ""]
        md += [markdown_table(diff_rows, list(diff_rows[0])), ""]
    md += [
        "energy in box: share of the map's mass inside the box it explains; pointing hit: the "
        "map's maximum lies in that box; GT: the same against the ground-truth boxes of the box's "
        "class in that image (CAMs whose image has none are left out). Maps and boxes at cache "
        "resolution; 95 % percentile bootstrap over test images. Paired by image when both arms "
        "explained the same images (each its own boxes), else unpaired. Every CAM with its "
        "scores: cams/<arm>/cams.csv.",
        "",
    ]
    return md, csv_rows


def write_tables(
    out: Path,
    *,
    evaluated: Mapping[str, Any],
    linear: Mapping[str, Any],
    cams: Mapping[str, Any] | None,
    scale: Scale,
    seeds: int,
    notes: Sequence[str],
    detectors: Mapping[str, Any],
) -> Path:
    """``table.md`` (every table), ``table.csv`` (the same numbers, long form), ``report.json``."""
    import csv
    import io as text_io

    from cxrkit.io import atomic_write

    arms = evaluated["arms"]
    md = [
        "# BarlowTwins-CXR: reproduction (cxrkit reproduce barlowtwins-cxr)",
        "",
        f"Scale **{scale.name}**, {seeds} seed(s) per arm. VinDr test split: "
        f"{evaluated['n_test_images']} images, {evaluated['n_test_boxes']} fused boxes; "
        f"{evaluated['n_bootstrap']} image-bootstrap resamples.",
        "",
        "## Detector mAP@0.5 on the VinDr test split",
        "",
    ]
    csv_rows: list[dict[str, Any]] = []
    rows = []
    for r in arms:
        rows.append(
            {
                "arm": ARM_TITLES[r["arm"]],
                "size": r["size"],
                "seeds": r["seeds"],
                "mAP50": r["map50"]["value"],
                "seed interval": _ci(r["map50"]["seed_ci"]),
                "bootstrap interval": _ci(r["map50"]["bootstrap_ci"]),
                "Kaggle mAP@0.4 (15 cl.)": r["kaggle_map"]["value"],
                "VOC mAP@0.4 (14 cl.)": r["voc_map"]["value"],
            }
        )
        for key in ("map50", "kaggle_map", "voc_map", "map50_AP", "map50_PA"):
            csv_rows.append(
                {
                    "section": "detector",
                    "metric": key,
                    "arm": r["arm"],
                    "size": r["size"],
                    "value": r[key]["value"],
                    "seed_ci_low": r[key]["seed_ci"][0],
                    "seed_ci_high": r[key]["seed_ci"][1],
                    "bootstrap_ci_low": r[key]["bootstrap_ci"][0],
                    "bootstrap_ci_high": r[key]["bootstrap_ci"][1],
                    "n_seeds": r["seeds"],
                    "per_seed": ";".join(f"{v:.6g}" for v in r[key]["per_seed"]),
                }
            )
    columns = list(rows[0]) if rows else []
    md += [markdown_table(rows, columns), ""]
    diff_rows = []
    for d in evaluated["differences"]:
        for key, title in (("map50", "mAP50"), ("kaggle_map", "Kaggle mAP@0.4")):
            diff_rows.append(
                {
                    "size": d["size"],
                    "metric": title,
                    "BT - ImageNet": d[key]["value"],
                    "bootstrap interval": _ci(d[key]["bootstrap_ci"]),
                    "p (paired image bootstrap)": d[key]["p_value"],
                }
            )
            csv_rows.append(
                {
                    "section": "difference",
                    "metric": key,
                    "arm": "bt-imagenet",
                    "size": d["size"],
                    "value": d[key]["value"],
                    "bootstrap_ci_low": d[key]["bootstrap_ci"][0],
                    "bootstrap_ci_high": d[key]["bootstrap_ci"][1],
                    "p_value": d[key]["p_value"],
                }
            )
    if diff_rows:
        md += ["### Barlow Twins - ImageNet (paired by test image)", ""]
        md += [markdown_table(diff_rows, list(diff_rows[0])), ""]

    md += ["## AP@0.5 per class (mean over seeds)", ""]
    class_rows = []
    for c in evaluated["classes"]:
        row: dict[str, Any] = {"class": c, "boxes": arms[0]["n_gt_per_class"][c] if arms else 0}
        for r in arms:
            row[f"{ARM_TITLES[r['arm']]} {r['size']}"] = r["per_class"][c]
            csv_rows.append(
                {
                    "section": "per_class",
                    "metric": f"ap50/{c}",
                    "arm": r["arm"],
                    "size": r["size"],
                    "value": r["per_class"][c],
                }
            )
        class_rows.append(row)
    md += [markdown_table(class_rows, list(class_rows[0])) if class_rows else "", ""]

    vc = evaluated["view_counts"]
    md += [f"## By view (mAP@0.5; {vc.get('AP', 0)} AP, {vc.get('PA', 0)} PA test films)", ""]
    view_rows = [
        {
            "arm": ARM_TITLES[r["arm"]],
            "size": r["size"],
            "AP films": r["map50_AP"]["value"],
            "PA films": r["map50_PA"]["value"],
            "gap AP - PA": r["gap_AP_PA"]["value"],
            "gap interval": _ci(r["gap_AP_PA"]["bootstrap_ci"]),
        }
        for r in arms
    ]
    md += [markdown_table(view_rows, list(view_rows[0])) if view_rows else "", ""]

    md += ["## Linear evaluation on NIH ChestX-ray14 (mean AUROC)", ""]
    for protocol in LINEAR_EVAL_PROTOCOLS:
        results = [linear.get(f"{protocol}-{arm}") for arm in ARMS]
        fractions = sorted({f for r in results if r for f in r["auroc"]}, key=float)
        lin_rows = []
        for arm, r in zip(ARMS, results, strict=True):
            row = {"init": ARM_TITLES[arm]}
            for f in fractions:
                auroc = r["auroc"].get(f) if r else None
                row[f"{float(f):.0%} labels"] = auroc
                csv_rows.append(
                    {
                        "section": f"linear_eval_{protocol}",
                        "metric": f"auroc@{f}",
                        "arm": arm,
                        "value": auroc,
                    }
                )
            lin_rows.append(row)
        md += [f"Protocol: **{protocol}**", ""]
        md += [markdown_table(lin_rows, list(lin_rows[0])), ""]
        leaks = [
            (arm, r["leakage"])
            for arm, r in zip(ARMS, results, strict=True)
            if r and "leakage" in r
        ]
        if leaks:
            arm, leak = leaks[0]  # the split is the same for every arm (same seed and list)
            parts = [
                f"{float(f):.0%} labels: {v['patient_in_train']} of {v['test_images']}"
                for f, v in sorted(leak.items(), key=lambda kv: float(kv[0]))
            ]
            md += [
                "Leakage of this protocol (the authors'): test images whose patient has an image "
                "in training: " + "; ".join(parts) + ". The best epoch is chosen on the test "
                "images, as the authors did.",
                "",
            ]

    md += _per_class_figure(out, evaluated)
    if cams and cams.get("panel"):
        import os

        rel = os.path.relpath(cams["panel"], out)
        md += [
            "## Ablation-CAM (columns: " + " | ".join(cams["columns"]) + ")",
            "",
            f"![CAM panel]({rel})",
            "",
            f"Settings: score >= {cams['settings']['score_thresh']}, top "
            f"{cams['settings']['top_k']} boxes, channel ratio "
            f"{cams['settings']['ablation_ratio']}.",
            "",
        ]
    if cams and cams.get("scores"):
        cam_md, cam_csv = _cam_tables(cams)
        md += cam_md
        csv_rows += cam_csv
    all_notes = [
        "mAP50: COCO AP at IoU 0.5 (pycocotools), mean over classes with a test box, then mean "
        "over seeds.",
        "seed interval: Student-t 95 % interval of the mean over seeds (needs >= 2 seeds).",
        "bootstrap interval: 95 % percentile interval of the seed-mean over resamples of the test "
        "images (the same resamples for every detector, so differences are paired by image).",
        "p: two-sided bootstrap p-value of BT - ImageNet = 0 from those paired resamples.",
        "Kaggle mAP@0.4: VinBigData's leaderboard metric, VOC AP at IoU > 0.4 over the 14 "
        "classes plus 'No finding' (1 - the image's best detection score); VOC mAP@0.4 (14 cl.) "
        "leaves 'No finding' out.",
        "The test images are abnormal only (the authors' protocol), so 'No finding' has no true "
        "object there and the Kaggle figure equals the 14-class one unless normals are added.",
        *notes,
    ]
    md += ["## Notes", "", *[f"- {n}" for n in all_notes], ""]
    table_md = atomic_write(out / "table.md", "\n".join(md))
    fields = [
        "section", "metric", "arm", "size", "value", "seed_ci_low", "seed_ci_high",
        "bootstrap_ci_low", "bootstrap_ci_high", "p_value", "n_seeds", "per_seed",
    ]  # fmt: skip
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in csv_rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    atomic_write(out / "table.csv", buffer.getvalue())
    write_json(
        out / "report.json",
        {
            "scale": scale.name,
            "seeds": seeds,
            "detectors": detectors,
            "eval": evaluated,
            "linear_eval": linear,
            "cams": cams,
            "notes": all_notes,
        },
    )
    return table_md
