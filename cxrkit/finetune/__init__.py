"""Stage two: the Faster R-CNN + FPN abnormality localizer (BarlowTwins-CXR).

From Python, without the CLI::

    import cxrkit
    from cxrkit import finetune

    cfg = cxrkit.load_config(finetune.Config, "configs/finetune/tiny_faster_rcnn.yaml",
                             overrides=["model.init=checkpoint", "model.weights=backbone.pth"])
    run = finetune.fit(cfg)                       # run.metrics["val/mAP50"]
    detector = finetune.load(run.artifacts["detector"])  # .model, .config, .classes
    frame = finetune.predict(detector.model, records=records, cache=cache, classes=detector.classes)
    boxes = detector.predict_images(["a.dcm", "b.png"])  # one file each: its own original pixels

- :class:`Config`, :func:`fit` (:mod:`~cxrkit.finetune.train`): training, best epoch by
  validation mAP@0.5, ``detector.pt``; returns :class:`cxrkit.engine.RunResult`;
- :func:`load`: a ``detector.pt`` or finetune checkpoint -> :class:`Detector`
  (:mod:`~cxrkit.finetune.predictor`; ``predict_images`` on PNG / DICOM files);
- :func:`predict` (:mod:`~cxrkit.finetune.detections`): detections in original pixels;
- :func:`explain` (:mod:`~cxrkit.finetune.cam`): Ablation-CAM / Grad-CAM / EigenCAM per box;
- :mod:`~cxrkit.finetune.inference`: the same over a manifest split, files written (the CLI's);
- :mod:`~cxrkit.finetune.model`: ``build_detector`` and its ``from_config``;
- :mod:`~cxrkit.finetune.data`: class mapping, reader fusion, "No finding" negatives.
"""

from cxrkit.finetune.cam import explain
from cxrkit.finetune.config import FinetuneConfig as Config
from cxrkit.finetune.detections import predict
from cxrkit.finetune.predictor import Detector
from cxrkit.finetune.train import fit, load

__all__ = ["Config", "Detector", "explain", "fit", "load", "predict"]
