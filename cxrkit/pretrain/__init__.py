"""Stage one: Barlow Twins pretraining of a ResNet-50 on unlabeled chest X-rays.

From Python, without the CLI::

    import cxrkit
    from cxrkit import pretrain

    cfg = cxrkit.load_config(pretrain.Config, "configs/pretrain/tiny_pretrain.yaml",
                             overrides=["data.manifest=nih.parquet", "data.cache=cache/nih64"])
    run = pretrain.fit(cfg)                      # resumes from OUTPUT_DIR/checkpoints/last.ckpt
    backbone = pretrain.load(run.artifacts["backbone"])   # torchvision ResNet-50, fc = Identity
    run.artifacts["detectron2"]                  # backbone_d2.pkl, for detectron2 users

- :func:`fit`: a run (:mod:`~cxrkit.pretrain.train`), returning :class:`cxrkit.engine.RunResult`;
- :func:`load`: the backbone of a ``backbone.pth`` or a pretrain ``.ckpt``;
- :func:`export`: a checkpoint's backbone as ``backbone.pth`` + ``backbone_d2.pkl``;
- :func:`linear_eval` with :class:`LinearEvalConfig`: the linear evaluation protocol.
"""

from cxrkit.pretrain.config import LinearEvalConfig
from cxrkit.pretrain.config import PretrainConfig as Config
from cxrkit.pretrain.handoff import export, load
from cxrkit.pretrain.linear_probe import linear_eval
from cxrkit.pretrain.train import fit

__all__ = ["Config", "LinearEvalConfig", "export", "fit", "linear_eval", "load"]
