"""One pretraining run: config in, checkpoints, logs and the exported backbone out.

``output_dir`` after a run (see :mod:`cxrkit.engine` for the logging files)::

    config.yaml  metrics.json  tensorboard/  checkpoints/last.ckpt
    backbone.pth       torchvision ResNet-50 names, no fc (stage two's input)
    backbone_d2.pkl    the same weights for detectron2
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import Dataset

from cxrkit import config as config_io
from cxrkit import engine
from cxrkit.pretrain.config import ModelConfig, PretrainConfig
from cxrkit.pretrain.data import PretrainData
from cxrkit.pretrain.export import BACKBONE_FILE, export_backbone
from cxrkit.pretrain.module import BarlowTwins


def build_module(config: PretrainConfig, *, resuming: bool = False) -> BarlowTwins:
    """The LightningModule of ``config``; when ``resuming`` the initial weights file is not read
    (the checkpoint overwrites the weights, and the file may not be on this machine)."""
    model = config.model
    if resuming:
        model = ModelConfig(**{**config_io.to_dict(model), "init": "random"})
    module = BarlowTwins(
        model=model,
        optim=config.optim,
        batch_size=config.data.batch_size,
        config=config_io.to_dict(config),
        channels_last=config.trainer.channels_last,
    )
    engine.apply_channels_last_and_compile(module, config.trainer)
    return module


def run(
    config: PretrainConfig, *, resume: str | Path | bool = "auto", dataset: Dataset | None = None
) -> Path:
    """Pretrain (or continue) the run in ``config.output_dir`` and export its backbone.

    Args:
        resume: ``"auto"`` continues from ``checkpoints/last.ckpt`` when present, a path from that
            checkpoint, ``False`` starts over.
        dataset: items ``{"image_id", "image": [view_a, view_b]}`` instead of the manifest (tests).

    Returns:
        The path of ``backbone.pth``.
    """
    out = Path(config.output_dir)
    checkpoint = engine.resolve_resume(out, resume)
    L.seed_everything(config.trainer.seed, workers=True)
    module = build_module(config, resuming=checkpoint is not None)  # a bad weights file fails here
    engine.save_run_config(config, out)
    data = PretrainData(
        data=config.data, views=config.views, seed=config.trainer.seed, dataset=dataset
    )
    trainer = engine.build_trainer(config=config.trainer, output_dir=out)
    engine.fit(
        trainer=trainer,
        module=module,
        train_dataloaders=data,
        output_dir=out,
        resume=checkpoint or False,
    )
    if trainer.is_global_zero:
        export_backbone(state=module.backbone.state_dict(), out_dir=out)
    trainer.strategy.barrier("export")
    return out / BACKBONE_FILE
