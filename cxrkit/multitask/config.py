"""Configuration of the multi-task stage: KCR Models 1 and 2, Guendel, the screening ensemble.

One schema, :class:`MultiTaskConfig`, covers every experiment; ``task`` picks between a multi-label
model (KCR Model 1 / Model 2, Guendel) and the per-disease screening ensemble (thesis). The YAML
files in ``configs/multitask/`` set the paper defaults; ``key=value`` overrides follow
:func:`cxrkit.config.load`.

Findings are named as the source names them (records keep each source's own names). An entry may
group several names: ``"Nodule/Mass=Nodule|Mass"`` is the finding ``Nodule/Mass`` whose label is the
maximum over ``Nodule`` and ``Mass`` and whose lesion mask is the union of their masks. The KCR
defaults use NIH ChestX-ray14 names; for VinDr-CXR set
``findings=[Consolidation,Pneumothorax,Nodule/Mass,Pulmonary fibrosis,Pleural effusion]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrkit.config import DataConfig, TrainerConfig
from cxrkit.data.findings import parse as parse_finding

# KCR abstract: the five findings, in NIH ChestX-ray14 naming (Nodule and Mass grouped).
KCR_FINDINGS_NIH = [
    "Consolidation",
    "Pneumothorax",
    "Nodule/Mass=Nodule|Mass",
    "Fibrosis",
    "Effusion",
]
KCR_FINDINGS_VINDR = [
    "Consolidation",
    "Pneumothorax",
    "Nodule/Mass",
    "Pulmonary fibrosis",
    "Pleural effusion",
]
ENCODERS = ("resnet50", "densenet121", "resnet18")
INITS = ("random", "imagenet", "checkpoint")  # the initial-weights vocabulary of every stage
RENAMED_INITS = {"barlow_twins": "checkpoint"}
TASKS = ("multilabel", "screening")
SELECTIONS = {"val/loss": "min", "val/mAUROC": "max"}  # metric choosing best.ckpt -> its mode


@dataclass
class EncoderConfig:
    """The shared encoder.

    ``name``: ``resnet50`` (KCR, Guendel), ``densenet121`` (the screening thesis' best backbone), or
    ``resnet18`` (random initialisation only; for quick CPU runs and tests). ``init`` says what
    ``weights`` holds: ``imagenet`` (torchvision's file, e.g. resnet50-11ad3fa6.pth),
    ``checkpoint`` (a cxrkit ``backbone.pth`` or a ``.ckpt`` from ``cxrkit pretrain``) or
    ``random`` (no file). A resumed run does not read ``weights``: its checkpoint holds every
    weight.
    """

    name: str = "resnet50"
    init: str = "imagenet"
    weights: str = ""

    def __post_init__(self) -> None:
        if self.name not in ENCODERS:
            raise ValueError(f"encoder.name {self.name!r} is not one of {ENCODERS}")
        if self.init in RENAMED_INITS:
            raise ValueError(
                f"encoder.init={self.init} is now encoder.init={RENAMED_INITS[self.init]} "
                "(encoder.weights=PATH to the backbone.pth or .ckpt of `cxrkit pretrain`)"
            )
        if self.init not in INITS:
            raise ValueError(f"encoder.init {self.init!r} is not one of {INITS}")
        if self.name == "resnet18" and self.init != "random":
            raise ValueError("encoder.name=resnet18 supports only encoder.init=random")


@dataclass
class ReconstructionConfig:
    """Model 2's image-reconstruction decoder on the shared encoder.

    ``target``: ``image`` reconstructs the whole input (KCR); ``lesion`` reconstructs the image
    inside the lesion mask dilated by a ``dilation`` x ``dilation`` square kernel (thesis). The
    kernel is in cache pixels when ``dilation_reference`` is 0, otherwise in pixels of an image
    ``dilation_reference`` pixels wide (e.g. 1024, the thesis' resolution) and scaled to the cache
    size (:meth:`kernel`), so one setting means the same anatomy at every cache size.
    Loss = classification + ``weight`` x MSE; a sample without a known lesion mask adds no MSE.
    With ``empty_when_negative`` an image labelled negative for every lesion finding counts as
    having an empty (all-zero) lesion mask, so the decoder also learns to output nothing for normal
    images.
    """

    enabled: bool = False
    target: str = "image"
    weight: float = 0.8  # thesis: lambda 0.8
    dilation: int = 15
    dilation_reference: int = 0  # cxrkit: 0 = `dilation` is in cache pixels
    empty_when_negative: bool = True
    width: int = 256  # channels of the first decoder stage; halved at each 2x upsampling
    skips: bool = False  # U-Net skips; off so the reconstruction must pass through the bottleneck

    def __post_init__(self) -> None:
        if self.target not in ("image", "lesion"):
            raise ValueError(f"reconstruction.target {self.target!r} is not 'image' or 'lesion'")
        if self.dilation < 1 or self.dilation % 2 == 0:
            raise ValueError(
                f"reconstruction.dilation must be a positive odd number of pixels, "
                f"got {self.dilation}"
            )
        if self.weight < 0 or self.width < 8:
            raise ValueError("reconstruction.weight must be >= 0 and reconstruction.width >= 8")
        if self.dilation_reference < 0:
            raise ValueError("reconstruction.dilation_reference must be >= 0 (0: cache pixels)")

    def kernel(self, cache_size: int) -> int:
        """The dilation kernel side in pixels of a ``cache_size`` cache: ``dilation`` scaled by
        ``cache_size / dilation_reference`` and rounded to the nearest odd number (at least 1)."""
        if not self.dilation_reference:
            return self.dilation
        scaled = self.dilation * cache_size / self.dilation_reference
        return max(1, 2 * round((scaled - 1) / 2) + 1)


@dataclass
class SegmentationConfig:
    """Guendel: organ segmentation, a sigmoid per organ, from the records' masks ``organs``."""

    enabled: bool = False
    organs: list[str] = field(default_factory=lambda: ["lung", "heart"])
    weight: float = 1.0
    width: int = 128

    def __post_init__(self) -> None:
        if self.enabled and not self.organs:
            raise ValueError("segmentation.organs is empty")
        if self.weight < 0 or self.width < 8:
            raise ValueError("segmentation.weight must be >= 0 and segmentation.width >= 8")


@dataclass
class LocationConfig:
    """Guendel: where the abnormality lies, from boxes, as left/right x upper/middle/lower.

    A box marks every region that holds at least ``min_overlap`` of its area (and always the region
    of its centre). With ``grid_from_lung`` the thirds and halves split the bounding box of the
    ``lung`` mask when the image has one, otherwise the whole image.
    """

    enabled: bool = False
    weight: float = 1.0
    min_overlap: float = 0.25
    grid_from_lung: bool = True
    lung_mask: str = "lung"

    def __post_init__(self) -> None:
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"location.min_overlap must be in (0, 1], got {self.min_overlap}")
        if self.weight < 0:
            raise ValueError("location.weight must be >= 0")


@dataclass
class OptimConfig:
    """Optimiser, plateau schedule and plateau stop (thesis: Adam lr 1e-3, lr halved on plateau).

    With ``stop_lr`` > 0 a run stops once its learning rate is below ``stop_lr`` and the monitored
    metric has not improved for ``stop_patience`` validation rounds (thesis §3.3.4: lr < 1e-4 and
    50 epochs without improvement); 0 turns the stop off.
    """

    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    beta1: float = 0.9  # adam / adamw; beta2 stays torch's 0.999
    plateau_factor: float = 0.5
    plateau_patience: int = 2  # validation rounds without improvement before the lr is cut
    min_lr: float = 1e-6
    stop_lr: float = 0.0
    stop_patience: int = 50

    def __post_init__(self) -> None:
        if self.name not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optim.name {self.name!r} is not adam, adamw or sgd")
        if self.lr <= 0 or not 0 < self.plateau_factor < 1:
            raise ValueError("optim.lr must be > 0 and optim.plateau_factor in (0, 1)")
        if not 0 <= self.beta1 < 1 or self.stop_lr < 0 or self.stop_patience < 0:
            raise ValueError(
                "optim.beta1 must be in [0, 1), optim.stop_lr >= 0 and optim.stop_patience >= 0"
            )


@dataclass
class StageConfig:
    """One training stage of a screening member."""

    max_epochs: int = 10
    max_steps: int = -1
    lr: float = 1e-3


@dataclass
class SvmConfig:
    """The scikit-learn SVM over all members' logits (normal vs abnormal)."""

    kernel: str = "rbf"
    c: float = 1.0
    class_weight: str = "balanced"  # balanced | none

    def __post_init__(self) -> None:
        if self.kernel not in ("rbf", "linear", "poly", "sigmoid"):
            raise ValueError(f"screening.svm.kernel {self.kernel!r} is not an SVC kernel")
        if self.class_weight not in ("balanced", "none"):
            raise ValueError("screening.svm.class_weight must be 'balanced' or 'none'")


@dataclass
class ScreeningConfig:
    """The thesis' ensemble: one 3-class model (normal / disease / other) per disease, then an SVM.

    ``diseases`` use the finding syntax above. Stage ``hard`` trains on images with lesion masks
    (and, with ``reconstruction.empty_when_negative``, normal images) on classification +
    reconstruction; stage ``weak`` continues from the hard stage's best weights on
    ``weak_records`` (``without_masks`` or ``all``) with the decoder frozen and reconstruction off;
    ``weak_trains: classifier`` (thesis §3.3.4 step 3) also freezes the encoder so only the FC
    layer learns, ``encoder`` trains encoder + FC (cxrkit's former behaviour). ``classes``: 3
    (normal / target / other, the thesis' members) or 2 (normal / target, other diseases count as
    not-target: the thesis' Tables 7-8 comparison). ``other: listed`` (thesis: its members know
    only the 13 diseases and normal) leaves out of training and of the SVM's fit every image whose
    positive findings all lie outside ``diseases`` (they are the unseen diseases of Table 9);
    ``any`` keeps them, as "other" for every member.

    The SVM is fitted on ``svm_split``. ``operating_point``: ``svm`` (default, thesis) calls an
    image abnormal when the SVM's own decision value is >= 0; ``sensitivity`` (cxrkit's option,
    not the thesis') uses the highest threshold reaching ``target_sensitivity`` on ``svm_split``.
    Both thresholds are recorded in ``ensemble.json``. ``risk_groups`` lists
    ``"group=Disease|Disease"`` entries, most severe group first (empty =
    :data:`cxrkit.eval.screening.DEFAULT_RISK_GROUPS`); they are written beside the ensemble for
    ``cxrkit eval screening --risk-groups``.
    """

    diseases: list[str] = field(default_factory=list)
    risk_groups: list[str] = field(default_factory=list)
    hard: StageConfig = field(default_factory=StageConfig)
    weak: StageConfig = field(default_factory=StageConfig)
    weak_records: str = "without_masks"
    weak_trains: str = "classifier"  # thesis: only the FC layer in the weak stage
    other: str = "listed"  # thesis: "other disease" = another of `diseases`
    classes: int = 3  # thesis: 3-class members
    svm: SvmConfig = field(default_factory=SvmConfig)
    svm_split: str = "val"
    operating_point: str = "svm"  # thesis: the SVM's decision; "sensitivity" is cxrkit's
    target_sensitivity: float = 0.99  # cxrkit's option: screen at 99% sensitivity

    def __post_init__(self) -> None:
        if self.weak_records not in ("without_masks", "all"):
            raise ValueError("screening.weak_records must be 'without_masks' or 'all'")
        if self.other not in ("listed", "any"):
            raise ValueError("screening.other must be 'listed' or 'any'")
        if self.weak_trains not in ("classifier", "encoder"):
            raise ValueError("screening.weak_trains must be 'classifier' or 'encoder'")
        if self.classes not in (2, 3):
            raise ValueError(f"screening.classes must be 2 or 3, got {self.classes}")
        if self.operating_point not in ("svm", "sensitivity"):
            raise ValueError("screening.operating_point must be 'svm' or 'sensitivity'")
        if not 0 < self.target_sensitivity <= 1:
            raise ValueError("screening.target_sensitivity must be in (0, 1]")
        names = [parse_finding(entry)[0] for entry in self.diseases]
        if len(set(names)) != len(names):
            raise ValueError(f"screening.diseases has duplicate names: {names}")
        for group, members in self.groups().items():
            unknown = [m for m in members if m not in names]
            if unknown:
                raise ValueError(
                    f"screening.risk_groups: group {group!r} names {unknown}, which are not in "
                    "screening.diseases"
                )

    def groups(self) -> dict[str, list[str]]:
        """``risk_groups`` as ``{group: [disease name, ...]}`` in priority order."""
        return dict(parse_finding(entry) for entry in self.risk_groups)


@dataclass
class MultiTaskConfig:
    """Top-level configuration of ``cxrkit multitask``."""

    output_dir: str = "runs/multitask"
    task: str = "multilabel"
    findings: list[str] = field(default_factory=lambda: list(KCR_FINDINGS_NIH))
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    location: LocationConfig = field(default_factory=LocationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    augment: bool = False  # training augmentation (albumentations), see augment_transforms
    # named transforms of cxrkit.data.augmentation.TRANSFORMS; empty = its default list (small
    # affine + brightness/contrast jitter)
    augment_transforms: list[str] = field(default_factory=list)
    predict_split: str = "test"  # split scored after training into predictions_<split>.csv
    # the validation metric that picks checkpoints/best.ckpt (and drives the plateau schedule):
    # val/loss, or val/mAUROC (multilabel only) so models with different losses are selected alike
    selection: str = "val/loss"

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection {self.selection!r} is not one of {list(SELECTIONS)}")
        if self.selection == "val/mAUROC" and self.task != "multilabel":
            raise ValueError("selection=val/mAUROC is logged by task=multilabel only")
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        if self.task == "multilabel" and not self.findings:
            raise ValueError("findings is empty")
        if self.task == "screening" and not self.screening.diseases:
            raise ValueError("task=screening needs screening.diseases")
        names = [parse_finding(entry)[0] for entry in self.findings]
        if len(set(names)) != len(names):
            raise ValueError(f"findings has duplicate names: {names}")
        from cxrkit.data.augmentation import TRANSFORMS

        unknown = [t for t in self.augment_transforms if t not in TRANSFORMS]
        if unknown:
            raise ValueError(f"augment_transforms: {unknown} not in {TRANSFORMS}")


def config_from_dict(values: dict) -> MultiTaskConfig:
    """A :class:`MultiTaskConfig` from its ``to_dict`` form (as stored in checkpoints, model files).

    Raises:
        ConfigError: an unknown key or an invalid value.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from cxrkit.errors import ConfigError

    try:
        merged = OmegaConf.merge(OmegaConf.structured(MultiTaskConfig), OmegaConf.create(values))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise ConfigError(f"stored multitask config is invalid: {exc}") from exc
