"""One pretraining run: config in, checkpoints, logs and the exported backbone out.

``output_dir`` after a run (see :mod:`cxrkit.engine` for the logging files)::

    config.yaml  metrics.json  tensorboard/  checkpoints/last.ckpt
    backbone.pth       torchvision ResNet-50 names, no fc (stage two's input)
    backbone_d2.pkl    the same weights for detectron2
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from cxrkit import config as config_io
from cxrkit import engine
from cxrkit.data import loading
from cxrkit.models import backbones
from cxrkit.models.weights import weights_file
from cxrkit.pretrain.config import PretrainConfig
from cxrkit.pretrain.data import ALL_SPLITS, PretrainData, view_pairs
from cxrkit.pretrain.handoff import BACKBONE_FILE, DETECTRON2_FILE, export_backbone
from cxrkit.pretrain.module import BarlowTwins


def build_module(config: PretrainConfig, *, resuming: bool = False) -> BarlowTwins:
    """The LightningModule of ``config`` (the one place its fields meet the module's arguments).

    When ``resuming`` the initial weights file is not read: the checkpoint overwrites every
    weight, and the file may not be on this machine.
    """
    model = config.model
    weights = None if resuming else weights_file(init=model.init, weights=model.weights)
    module = BarlowTwins(
        backbone=backbones.build_resnet50(weights=weights),
        feature_dim=backbones.FEATURE_DIMS["resnet50"],
        projector_hidden_dim=model.projector_hidden_dim,
        projector_output_dim=model.projector_output_dim,
        lambda_param=model.lambda_param,
        optim=config.optim,
        batch_size=config.data.batch_size,
        config=config_io.to_dict(config),
        channels_last=config.trainer.channels_last,
    )
    engine.apply_channels_last_and_compile(module, config.trainer)
    return module


def fit(
    config: PretrainConfig, *, resume: str | Path | bool = "auto", dataset: Dataset | None = None
) -> engine.RunResult:
    """Pretrain (or continue) the run in ``config.output_dir`` and export its backbone.

    Args:
        resume: ``"auto"`` continues from ``checkpoints/last.ckpt`` when present, a path from that
            checkpoint, ``False`` starts over.
        dataset: items ``{"image_id", "image": [view_a, view_b]}`` instead of the manifest (tests).

    Returns:
        ``artifacts["backbone"]`` (``backbone.pth``) and ``artifacts["detectron2"]``
        (``backbone_d2.pkl``); ``checkpoint`` is ``last.ckpt``; ``metrics["train/loss"]`` the
        last logged loss.
    """
    # The data are read after the module is built, not by prepare_run: a missing or wrong weights
    # file then fails in a second, before the manifest is read and a cache built.
    run = engine.prepare_run(config, resume=resume, schedule_keys=engine.SCHEDULE_KEYS)
    module = build_module(config, resuming=run.resuming)
    if dataset is None:
        split = config.data.train_split
        every = split in ALL_SPLITS
        records = loading.load_records(config.data, split=None if every else split)
        dataset = view_pairs(
            records=records,
            cache=loading.open_cache(config.data, records=records),
            views=config.views,
            manifest=config.data.manifest,
            split=split,
        )
    data = PretrainData(
        dataset=dataset,
        batch_size=config.data.batch_size,
        num_workers=config.data.num_workers,
        seed=config.trainer.seed,
    )
    trainer = engine.build_trainer(config=config.trainer, output_dir=run.output_dir)
    engine.fit(
        trainer=trainer,
        module=module,
        train_dataloaders=data,
        output_dir=run.output_dir,
        resume=run.checkpoint or False,
    )
    out = run.output_dir
    if trainer.is_global_zero:
        export_backbone(state=module.backbone.state_dict(), out_dir=out)
    trainer.strategy.barrier("export")
    last = out / engine.CHECKPOINT_DIR / engine.LAST_CHECKPOINT
    loss = trainer.callback_metrics.get("train/loss")
    return engine.RunResult(
        output_dir=out,
        checkpoint=last if last.is_file() else None,
        artifacts={"backbone": out / BACKBONE_FILE, "detectron2": out / DETECTRON2_FILE},
        metrics={} if loss is None else {"train/loss": float(loss)},
    )
