"""Configuration of stage one: Barlow Twins pretraining and the linear evaluation protocol.

Dataclass defaults are the paper's (BarlowTwins-CXR, after Zbontar et al. 2021, "Barlow Twins");
``configs/pretrain/*.yaml`` and ``key=value`` overrides change them (see :mod:`cxrkit.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrkit.config import DataConfig, TrainerConfig
from cxrkit.data import vocab
from cxrkit.errors import ConfigError
from cxrkit.models.weights import check_init

RECIPES = ("byol", "cxr")


@dataclass
class ModelConfig:
    """Backbone initialisation, projector and loss."""

    # cxrkit.models.weights: imagenet (torchvision's ResNet-50 file at `weights`), random (no
    # file), checkpoint (a backbone.pth or pretrain .ckpt at `weights`: continued pretraining).
    # BarlowTwins-CXR main.py: resnet50(weights=ResNet50_Weights.IMAGENET1K_V2), the V2 file.
    init: str = "imagenet"
    weights: str = ""  # e.g. weights/resnet50-11ad3fa6.pth (IMAGENET1K_V2)
    # Barlow Twins: projector 2048-8192-8192-8192 (BarlowTwins-CXR main.py --projector keeps it).
    projector_hidden_dim: int = 8192
    projector_output_dim: int = 8192
    # Barlow Twins / BarlowTwins-CXR main.py --lambd: 0.0051 (lightly's default is 5e-3).
    lambda_param: float = 0.0051

    def __post_init__(self) -> None:
        check_init(self.init, key="model.init")
        if min(self.projector_hidden_dim, self.projector_output_dim) < 1 or self.lambda_param < 0:
            raise ValueError("projector dims must be >= 1 and lambda_param >= 0")


@dataclass
class ViewsConfig:
    """The two augmented views of each image (``cxrkit.pretrain.transforms``)."""

    recipe: str = "byol"  # byol: BarlowTwins-CXR's BYOL-style pair; cxr: radiograph-specific
    size: int = 224  # view side in pixels (BarlowTwins-CXR: 224)
    min_scale: float = 0.08  # RandomResizedCrop lower area bound (BYOL: 0.08)
    # None: the recipe's default (byol: 0.5 as in BYOL; cxr: 0.0, see transforms.py)
    hflip_prob: float | None = None
    rotation_degrees: float = 10.0  # cxr only: +- degrees
    translate: float = 0.05  # cxr only: +- fraction of the side
    scale_jitter: float = 0.1  # cxr only: affine zoom in [1 - s, 1 + s]

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"views.recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.size < 16 or not 0 < self.min_scale <= 1:
            raise ValueError("views.size must be >= 16 and views.min_scale in (0, 1]")
        if self.hflip_prob is not None and not 0 <= self.hflip_prob <= 1:
            raise ValueError(f"views.hflip_prob must be in [0, 1], got {self.hflip_prob}")


@dataclass
class OptimConfig:
    """LARS with a warm-up then cosine schedule (Barlow Twins / BarlowTwins-CXR)."""

    # Learning rates per 256 images of global batch: lr = base * global_batch / 256
    # (BarlowTwins-CXR main.py: --learning-rate-weights 0.2, --learning-rate-biases 0.0048).
    lr_weights: float = 0.2
    lr_biases: float = 0.0048  # biases and norm parameters: no weight decay, no LARS adaptation
    weight_decay: float = 1e-6  # BarlowTwins-CXR main.py: 1e-6 (Barlow Twins: 1.5e-6)
    momentum: float = 0.9  # BarlowTwins-CXR main.py (LARS default)
    trust_coefficient: float = 0.001  # LARS eta, BarlowTwins-CXR main.py
    warmup_epochs: float = 10.0  # BarlowTwins-CXR main.py: warmup_steps = 10 x len(loader)
    end_lr_factor: float = 0.001  # cosine decays to base lr x this (BarlowTwins-CXR main.py)

    def __post_init__(self) -> None:
        if min(self.lr_weights, self.lr_biases, self.weight_decay) < 0 or self.warmup_epochs < 0:
            raise ValueError("learning rates, weight_decay and warmup_epochs must be >= 0")


@dataclass
class PretrainConfig:
    """``cxrkit pretrain``: everything a run needs; saved as ``output_dir/config.yaml``."""

    output_dir: str = "runs/pretrain"
    # data.batch_size is per device: global batch = batch_size x devices x nodes (never gradient
    # accumulation, see check_no_accumulation). BarlowTwins-CXR: 768 in one step on one GPU
    # (main.py --batch-size 768); on 8 GPUs that is data.batch_size=96.
    # data.train_split: the split pretrained on; "all" uses every record of the manifest
    # (BarlowTwins-CXR LOG.TXT: 145 steps per epoch = 112,120 NIH images // 768).
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=768, train_split="all"))
    # BarlowTwins-CXR LOG.TXT ends at epoch 799, step 115,990 = 800 x 145: 800 epochs (main.py's
    # --epochs default of 600 is not what they ran). bf16-mixed is cxrkit's choice (the authors
    # used float16 autocast with a GradScaler).
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(max_epochs=800, precision="bf16-mixed")
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        check_no_accumulation(self.trainer.accumulate_grad_batches)


def check_no_accumulation(accumulate_grad_batches: int) -> None:
    """Refuse gradient accumulation in Barlow Twins pretraining.

    Raises:
        ConfigError: ``accumulate_grad_batches > 1``.
    """
    if accumulate_grad_batches > 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={accumulate_grad_batches}: Barlow Twins pretraining "
            "cannot accumulate gradients. Each micro-batch gets its own cross-correlation matrix "
            "(normalised over that micro-batch only), so e.g. 192 x 4 optimises the mean of four "
            "192-image losses, not the loss of a 768-image batch. Use a larger data.batch_size or "
            "more devices (DDP all-reduces the matrix over the global batch); set "
            "trainer.accumulate_grad_batches=1"
        )


# NIH ChestX-ray14: the 14 findings + "No Finding", from the adapter's class table.
FINDINGS_NIH = (*vocab.NIH_FINDINGS, vocab.NIH_NO_FINDING)

# cxrkit: train on data.train_split, test on data.test_split (NIH's patient-disjoint official
# lists), seeded random label fractions, no augmentation, the last epoch.
# authors: BarlowTwins-CXR's evaluate.py / dataset.py, LEAKY by design (kept to compare with their
# numbers): only data.test_split (the official test list) split 80/20 by image with iterative
# stratification, stratified fractions, RandomResizedCrop + flip, lr not scaled by the batch,
# cosine per epoch, head ~ N(0, 0.01), and the best epoch by mean test AUROC; the report states how
# many test images have their patient in training. Its hyperparameters (lr 0.5, batch 64, wd 1e-6,
# 30 epochs) are in configs/pretrain/linear_eval_nih_authors.yaml.
PROTOCOLS = ("cxrkit", "authors")


@dataclass
class LinearEvalConfig:
    """``cxrkit pretrain linear-eval``: a multi-label head on a (frozen) backbone."""

    output_dir: str = "runs/linear_eval"
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=64))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_epochs=30))
    # the backbone to evaluate: imagenet (file), random, or checkpoint (backbone.pth / .ckpt)
    init: str = "checkpoint"
    weights: str = ""
    mode: str = "linear"  # linear: frozen backbone (BN in eval mode); finetune: everything trains
    findings: list[str] = field(default_factory=lambda: list(FINDINGS_NIH))
    # fractions of the training images whose labels are used (a seeded random subset of images)
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    n_bootstrap: int = 1000  # patient-bootstrap replicates for the test AUROC intervals
    lr: float = 0.1  # SGD, x global_batch / 256, cosine to 0
    momentum: float = 0.9
    weight_decay: float = 0.0
    backbone_lr_factor: float = 0.1  # finetune mode: backbone lr = lr x this
    protocol: str = "cxrkit"  # cxrkit (leakage-free) | authors (leaky, see PROTOCOLS above)

    def __post_init__(self) -> None:
        check_init(self.init, key="init")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.mode not in ("linear", "finetune"):
            raise ValueError(f"mode must be 'linear' or 'finetune', got {self.mode!r}")
        if not self.findings:
            raise ValueError("findings must name at least one finding")
        if not self.label_fractions or not all(0 < f <= 1 for f in self.label_fractions):
            raise ValueError(f"label_fractions must be in (0, 1], got {self.label_fractions}")
        if self.n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be >= 0, got {self.n_bootstrap}")
