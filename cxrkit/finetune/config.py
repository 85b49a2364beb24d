"""The detector stage's configuration: defaults are the BarlowTwins-CXR detector recipe.

``cxrkit finetune --config configs/finetune/faster_rcnn_vindr.yaml [key=value ...]`` loads
:class:`FinetuneConfig` through :func:`cxrkit.config.load`; the resolved configuration, including
the reader-fusion choice, is written to ``output_dir/config.yaml`` and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cxrkit.config import DataConfig, PreprocessConfig, TrainerConfig
from cxrkit.data.vocab import VINDR_KAGGLE_IDS, VINDR_NO_FINDING
from cxrkit.errors import ConfigError
from cxrkit.models.weights import check_init

# The 14 VinBigData/VinDr-CXR box classes in Kaggle class-id order (0..13); the Kaggle submission
# format writes a class's index in this list, and len(list) (= 14) for "No finding".
VINDR_CLASSES: tuple[str, ...] = tuple(
    name for _, name in sorted(VINDR_KAGGLE_IDS.items()) if name != VINDR_NO_FINDING
)

FUSION_METHODS = ("wbf", "nms", "none")


@dataclass
class ModelConfig:
    """Faster R-CNN + FPN on a ResNet-50 (:func:`cxrkit.finetune.model.build_detector`)."""

    # cxrkit.models.weights: random (no file), imagenet (torchvision's resnet50-*.pth at
    # `weights`), checkpoint (stage one's backbone.pth or a pretrain .ckpt at `weights`)
    init: str = "random"
    weights: str = ""
    # trainable ResNet stages counted from the top (0..5). None: 3 with weights (BarlowTwins-CXR, as
    # detectron2's FREEZE_AT=2: stem and layer1 frozen), 5 from random initialisation
    trainable_layers: int | None = None
    # FrozenBatchNorm2d statistics. None: frozen with weights, trainable BatchNorm from random init
    # (frozen identity statistics would leave a random ResNet-50 without any normalisation)
    frozen_bn: bool | None = None
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    score_thresh: float = 0.05  # detections below are dropped (ROI heads; validation and predict)
    nms_thresh: float = 0.5  # per-class NMS of the ROI heads
    detections_per_img: int = 100
    # region proposals in training: per FPN level before the RPN's NMS, per image after it.
    # BarlowTwins-CXR authors' mmdetection config: 2000 before, 1000 after (torchvision's and
    # detectron2's default: 2000 after). None before: the same number as after.
    rpn_pre_nms_train: int | None = 2000
    rpn_proposals_train: int = 1000
    rpn_proposals_test: int = 1000  # fewer make inference and CAMs faster
    roi_batch_size: int = 512  # proposals sampled per image for the box head (detectron2)

    def __post_init__(self) -> None:
        check_init(self.init, key="model.init")
        if self.trainable_layers is not None and not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"model.trainable_layers must be in 0..5, got {self.trainable_layers}")
        if len(self.anchor_sizes) != 5 or any(s <= 0 for s in self.anchor_sizes):
            raise ValueError(
                "model.anchor_sizes needs 5 positive sizes, one per FPN level (P2..P6), got "
                f"{list(self.anchor_sizes)}"
            )
        if not 0 <= self.score_thresh < 1 or not 0 < self.nms_thresh <= 1:
            raise ValueError("model.score_thresh must be in [0, 1) and model.nms_thresh in (0, 1]")
        counts = (
            self.detections_per_img,
            self.rpn_proposals_train,
            self.rpn_proposals_test,
            self.roi_batch_size,
        )
        if min(counts) < 1 or (self.rpn_pre_nms_train is not None and self.rpn_pre_nms_train < 1):
            raise ValueError(
                "model.detections_per_img, rpn_proposals_train, rpn_pre_nms_train, "
                "rpn_proposals_test and roi_batch_size must be >= 1"
            )

    def resolved(self) -> ModelConfig:
        """A copy with ``trainable_layers`` and ``frozen_bn`` decided (None -> the default for
        ``init``). Runs save this, so config.yaml and checkpoints record the concrete choice and a
        detector rebuilt from a checkpoint without the weights file is the same."""
        pretrained = self.init != "random"
        return dataclasses.replace(
            self,
            trainable_layers=(3 if pretrained else 5)
            if self.trainable_layers is None
            else self.trainable_layers,
            frozen_bn=pretrained if self.frozen_bn is None else self.frozen_bn,
        )


@dataclass
class FusionConfig:
    """How the readers' boxes of one image become one set of training boxes (finetune/fusion.py)."""

    method: str = "wbf"  # wbf (weighted boxes fusion) | nms | none (every reader's box kept)
    # VinBigData solutions used IoU 0.4-0.6 for fusing the three readers; 0.5 is the middle
    iou_thr: float = 0.5
    skip_box_thr: float = 0.0  # ground-truth boxes all have confidence 1

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"fusion.method must be one of {FUSION_METHODS}, got {self.method!r}")
        if not 0 < self.iou_thr <= 1 or not 0 <= self.skip_box_thr < 1:
            raise ValueError("fusion.iou_thr must be in (0, 1] and fusion.skip_box_thr in [0, 1)")


@dataclass
class AugmentConfig:
    """Box-safe training augmentation: :func:`cxrkit.data.augmentation.default_augment`
    (albumentations affine jitter and brightness/contrast on the uint8 cache image, boxes moved with
    it)."""

    enabled: bool = True
    strength: str = "light"  # light | strong
    # detectron2's default pipeline flips horizontally; off here because a mirrored chest film is
    # anatomically impossible (heart on the right). augment.hflip=true to match detectron2.
    hflip: bool = False
    # the named transforms (cxrkit.data.augmentation.TRANSFORMS) in order; null = affine jitter +
    # brightness/contrast (cxrkit's default). [hflip] is a flip and nothing else.
    transforms: list[str] | None = None

    def __post_init__(self) -> None:
        from cxrkit.data.augmentation import TRANSFORMS

        if self.strength not in ("light", "strong"):
            raise ValueError(f"augment.strength must be 'light' or 'strong', got {self.strength!r}")
        unknown = [t for t in self.transforms or () if t not in TRANSFORMS]
        if unknown:
            raise ValueError(
                f"augment.transforms: {unknown[0]!r} is not one of {', '.join(TRANSFORMS)}"
            )


@dataclass
class OptimConfig:
    """SGD with linear warm-up then cosine decay (BarlowTwins-CXR detector recipe)."""

    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500  # iterations (optimizer steps)
    warmup_factor: float = 0.001  # lr multiplier at the first step, as detectron2's WARMUP_FACTOR
    # the cosine's floor: the lr at the last step. BarlowTwins-CXR authors' code
    # (mmdetection/Mytrain/config_vindr_resnet50_*.py: CosineAnnealing min_lr=0.0001, lr x 0.02)
    min_lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("optim.lr must be > 0; momentum, weight_decay, warmup_steps >= 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(
                f"optim.min_lr must be in [0, optim.lr = {self.lr}], got {self.min_lr}"
            )


def _default_data() -> DataConfig:
    # BarlowTwins-CXR fine-tuned at 224 px (640 px as the larger setting)
    return DataConfig(preprocess=PreprocessConfig(size=224))


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(max_epochs=50)


@dataclass
class FinetuneConfig:
    """Everything ``cxrkit finetune`` needs; dataclass defaults are the paper's."""

    # old key -> what to write instead (cxrkit.config.load refuses the old key with this)
    RENAMED: ClassVar[dict[str, str]] = {
        "model.backbone_weights": "write model.init=checkpoint (a backbone.pth or pretrain .ckpt), "
        "model.init=imagenet or model.init=random, with model.weights=PATH for a file",
    }

    output_dir: str = "runs/finetune"
    data: DataConfig = field(default_factory=_default_data)
    trainer: TrainerConfig = field(default_factory=_default_trainer)
    model: ModelConfig = field(default_factory=ModelConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # the detector's classes, in output order (label i+1 = classes[i]); any table for other data
    classes: list[str] = field(default_factory=lambda: list(VINDR_CLASSES))
    # "Finding=Class" entries renaming a source finding before fusion (e.g. a rare VinDr local
    # label: "Edema=Other lesion"); a box whose finding is neither a class, mapped nor ignored is
    # an error, never dropped silently
    class_map: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)  # findings whose boxes are dropped on purpose
    # fraction of training images without any box ("No finding") kept as negatives (empty targets)
    negatives_fraction: float = 1.0
    # validation images drawn with their ground-truth and predicted boxes into TensorBoard at each
    # validation (global rank 0 only; 0 turns it off). cxrkit's choice: the paper logs no images
    log_images: int = 4

    def __post_init__(self) -> None:
        if self.log_images < 0:
            raise ValueError(f"log_images must be >= 0 (0: none), got {self.log_images}")
        if not self.classes:
            raise ValueError("classes must name at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {list(self.classes)}")
        unknown = sorted(set(self.class_mapping().values()) - set(self.classes))
        if unknown:
            raise ValueError(f"class_map points at {unknown}, which are not in classes")
        clash = sorted(set(self.ignore) & set(self.classes))
        if clash:
            raise ValueError(f"{clash} are both in classes and in ignore")
        if not 0 <= self.negatives_fraction <= 1:
            raise ValueError(f"negatives_fraction must be in [0, 1], got {self.negatives_fraction}")

    def class_mapping(self) -> dict[str, str]:
        """``class_map`` as a dict: source finding -> detector class."""
        mapping: dict[str, str] = {}
        for entry in self.class_map:
            source, sep, target = entry.partition("=")
            if not sep or not source.strip() or not target.strip():
                raise ValueError(f"class_map entry {entry!r} is not of the form 'Finding=Class'")
            if source.strip() in mapping:
                raise ValueError(f"class_map maps {source.strip()!r} twice")
            mapping[source.strip()] = target.strip()
        return mapping


def config_from_dict(values: dict[str, Any], *, where: str = "checkpoint") -> FinetuneConfig:
    """Rebuild a :class:`FinetuneConfig` from its saved dict (``config.to_dict``), e.g. the
    ``hyper_parameters`` of a checkpoint. Raises :class:`ConfigError` naming ``where``."""
    values = _translate_old_keys(values)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(FinetuneConfig), values)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: not a finetune configuration ({exc})") from exc


def _translate_old_keys(values: dict[str, Any]) -> dict[str, Any]:
    # detector.pt files and checkpoints written before model.init existed say
    # model.backbone_weights; their trainable_layers and frozen_bn are saved resolved, so the
    # file only decides whether the run started from weights.
    model = values.get("model")
    if not isinstance(model, dict) or "backbone_weights" not in model:
        return values
    model = dict(model)
    weights = model.pop("backbone_weights") or ""
    model.setdefault("init", "checkpoint" if weights else "random")
    model.setdefault("weights", weights)
    return {**values, "model": model}
