"""The abnormality localizer: torchvision Faster R-CNN with a ResNet-50 FPN backbone.

The ResNet-50 body is initialised from stage one's ``backbone.pth`` (torchvision key names), from a
torchvision ImageNet weights file, or randomly, and loads *strictly* into ``model.backbone.body``.
The model takes the datasets' grayscale images directly: ``FloatTensor[1, H, W]`` in [0, 1] (cache
pixels); its transform repeats the channel to 3 and normalises with ImageNet mean/std, the input
statistics of stage one. ``min_size = max_size = image_size``, so a square cache image is not
resized and boxes stay in cache pixels end to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d

from cxrkit.errors import ConfigError, DataError
from cxrkit.models.backbones import IMAGENET_MEAN, IMAGENET_STD, load_backbone_state
from cxrkit.models.weights import weights_file

if TYPE_CHECKING:
    from cxrkit.finetune.config import FinetuneConfig


class GrayscaleRCNNTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, accepting 1-channel images (repeated to 3 before the
    ImageNet normalisation). 3-channel images pass unchanged."""

    def normalize(self, image: Tensor) -> Tensor:
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return super().normalize(image)


def build_detector(
    *,
    num_classes: int,
    backbone_weights: str | Path | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    image_size: int = 224,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    rpn_proposals_train: int = 2000,
    rpn_proposals_test: int = 1000,
    roi_batch_size: int = 512,
    rpn_pre_nms_train: int | None = None,
) -> FasterRCNN:
    """Build a Faster R-CNN R50-FPN for ``num_classes`` findings.

    Args:
        num_classes: finding classes, not counting background: the model predicts labels
            ``1..num_classes`` (0 is background), as :class:`cxrkit.data.datasets.DetectionDataset`
            gives them.
        backbone_weights: a stage-one ``backbone.pth``, a torchvision ``resnet50-*.pth`` ImageNet
            file, or a stage-one Lightning ``.ckpt``; None initialises randomly.
        trainable_layers: ResNet stages trained, counted from the top (0..5). None: 3 with weights
            (stem and layer1 frozen, BarlowTwins-CXR / detectron2 FREEZE_AT=2), 5 without.
        frozen_bn: use :class:`~torchvision.ops.FrozenBatchNorm2d` (statistics fixed at the loaded
            values). None: frozen with weights, trainable BatchNorm from random initialisation.
        image_size: side of the square cache images; the transform keeps them at this size.
        anchor_sizes: one anchor size (pixels) per FPN level P2..P6; aspect ratios 0.5, 1, 2.
        score_thresh: detections scoring below are dropped at inference.
        nms_thresh: IoU of the per-class NMS at inference.
        detections_per_img: at most this many detections per image.
        rpn_proposals_train: region proposals kept per image after the RPN's NMS in training;
            torchvision's and detectron2's default 2000 (mmdetection's 1000).
        rpn_pre_nms_train: proposals per FPN level kept before the RPN's NMS in training; None
            (default): ``rpn_proposals_train``.
        rpn_proposals_test: the same at inference (default 1000). The box head runs once per
            proposal, so on a CPU or for CAMs (many forward passes) fewer make it much faster.
        roi_batch_size: proposals sampled per image to train the box head (detectron2: 512).

    Returns:
        A :class:`~torchvision.models.detection.FasterRCNN`. Training: ``model(images, targets)``
        with ``images`` a list of ``FloatTensor[1 or 3, H, W]`` in [0, 1] and targets
        ``{"boxes": FloatTensor[N, 4] x1y1x2y2 in image pixels (N may be 0), "labels":
        Int64Tensor[N]}`` returns a dict of four losses. Inference: a list of
        ``{"boxes", "labels", "scores"}`` in the input images' pixels.

    Raises:
        ConfigError: a bad argument. MissingFileError: ``backbone_weights`` does not exist.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if image_size < 32:
        raise ConfigError(f"image_size must be at least 32 pixels, got {image_size}")
    if rpn_pre_nms_train is None:
        rpn_pre_nms_train = rpn_proposals_train
    counts = (rpn_proposals_train, rpn_pre_nms_train, rpn_proposals_test, roi_batch_size)
    if min(*counts, detections_per_img) < 1:
        raise ConfigError(
            "rpn_proposals_train, rpn_pre_nms_train, rpn_proposals_test, roi_batch_size and "
            "detections_per_img must be >= 1"
        )
    if len(anchor_sizes) != 5:
        raise ConfigError(
            f"anchor_sizes needs one size per FPN level (5: P2..P6), got {list(anchor_sizes)}"
        )
    pretrained = backbone_weights is not None and str(backbone_weights) != ""
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if frozen_bn is None:
        frozen_bn = pretrained
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50",
        weights=None,  # never a download: our weights load from a local file below
        norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
        trainable_layers=trainable_layers,
    )
    if pretrained:
        load_backbone_weights(backbone.body, backbone_weights)
    anchors = AnchorGenerator(
        sizes=tuple((int(s),) for s in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5
    )
    model = FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        rpn_anchor_generator=anchors,
        min_size=image_size,
        max_size=image_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
        rpn_pre_nms_top_n_train=rpn_pre_nms_train,
        rpn_post_nms_top_n_train=rpn_proposals_train,
        rpn_pre_nms_top_n_test=rpn_proposals_test,
        rpn_post_nms_top_n_test=rpn_proposals_test,
        box_batch_size_per_image=roi_batch_size,
    )
    model.transform = GrayscaleRCNNTransform(
        min_size=image_size,
        max_size=image_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    return model


def from_config(config: FinetuneConfig, *, read_weights: bool = True) -> dict[str, Any]:
    """The keyword arguments of :func:`build_detector` for ``config``: the one place where the
    finetune configuration meets the builder (``build_detector(**from_config(config))``).

    Args:
        read_weights: False when a checkpoint will restore every weight (a resumed run, a saved
            detector): the initial-weights file is then not read, and need not exist. The frozen
            stages and BatchNorm kind still follow ``model.init`` (:meth:`ModelConfig.resolved`),
            so the module matches the checkpoint's.

    Raises:
        ConfigError: ``model.init`` imagenet or checkpoint without ``model.weights``.
    """
    m = config.model.resolved()
    weights = weights_file(init=m.init, weights=m.weights) if read_weights else None
    return {
        "num_classes": len(config.classes),
        "backbone_weights": weights,
        "trainable_layers": m.trainable_layers,
        "frozen_bn": m.frozen_bn,
        "image_size": config.data.preprocess.size,
        "anchor_sizes": m.anchor_sizes,
        "score_thresh": m.score_thresh,
        "nms_thresh": m.nms_thresh,
        "detections_per_img": m.detections_per_img,
        "rpn_proposals_train": m.rpn_proposals_train,
        "rpn_pre_nms_train": m.rpn_pre_nms_train,
        "rpn_proposals_test": m.rpn_proposals_test,
        "roi_batch_size": m.roi_batch_size,
    }


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load a ResNet-50 weights file strictly into the FPN body (ResNet-50 minus avgpool and fc).

    The file is read by :func:`cxrkit.models.backbones.load_backbone_state` (backbone.pth, ImageNet
    file or stage-one checkpoint; ``fc`` dropped). FrozenBatchNorm2d drops ``num_batches_tracked``.

    Raises:
        MissingFileError: ``path`` does not exist. DataError: the names or shapes do not match.
    """
    state = load_backbone_state(path, arch="resnet50")
    try:
        body.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise DataError(
            f"{path}: does not match the detector's ResNet-50 body: {' '.join(first)}"
        ) from exc
