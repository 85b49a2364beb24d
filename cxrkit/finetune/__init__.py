"""Stage two: the Faster R-CNN + FPN abnormality localizer (BarlowTwins-CXR).

- :mod:`~cxrkit.finetune.config`: ``FinetuneConfig``, the paper's defaults;
- :mod:`~cxrkit.finetune.model`: ``build_detector`` (torchvision, stage-one ``backbone.pth``);
- :mod:`~cxrkit.data.fusion`: the readers' boxes fused (weighted boxes fusion, NMS or none);
- :mod:`~cxrkit.finetune.data`: class mapping, fusion and "No finding" negatives before training;
- :mod:`~cxrkit.finetune.module` / :mod:`~cxrkit.finetune.train`: Lightning training, best
  checkpoint by validation mAP@0.5, ``detector.pt``;
- :mod:`~cxrkit.finetune.predict`: detections in original pixels, the Kaggle submission format;
- :mod:`~cxrkit.finetune.cam`: Ablation-CAM / Grad-CAM / EigenCAM overlays per predicted box;
- :mod:`~cxrkit.finetune.cli`: ``cxrkit finetune [predict|cam]``.
"""
