"""Multi-task chest X-ray models on one encoder family (ResNet-50 / DenseNet-121).

- KCR Model 1 (classifier) and Model 2 (classifier + image-reconstruction decoder), compared on
  mean AUROC and the AP-PA gap by :mod:`cxrkit.eval.compare`;
- Guendel's heads: lung/heart segmentation and abnormality location;
- the screening thesis' ensemble: per-disease 3-class models with a dilated-lesion reconstruction
  decoder, trained in two stages (:mod:`.screening`), combined by an SVM (:class:`Ensemble`).

From Python::

    import cxrkit
    from cxrkit import multitask
    cfg = cxrkit.load_config(multitask.Config, "configs/multitask/kcr_model1.yaml", overrides=[...])
    run = multitask.fit(cfg)                       # run.artifacts["model"], ["predictions"]
    classifier = multitask.load(run.artifacts["model"])   # .model, .config, .extra, .findings
    scores = multitask.predict(classifier.model, classifier.config, records=records, cache=cache)
    wide = classifier.predict_images(["a.dcm", "b.png"])  # one row per file

Modules: :mod:`.config` (the experiment schema), :mod:`.model` and :mod:`.decoder` (networks),
:mod:`.targets` and :mod:`.losses` (what is learned), :mod:`.dataset` (per-image targets),
:mod:`.module` (the LightningModule), :mod:`.train` (a run, model files, predictions),
:mod:`.predictor` (a loaded model on image files), :mod:`.ensemble` and :mod:`.screening`.
"""

from cxrkit.multitask.config import MultiTaskConfig as Config
from cxrkit.multitask.ensemble import Ensemble
from cxrkit.multitask.predictor import Classifier
from cxrkit.multitask.train import fit, load, predict

__all__ = ["Classifier", "Config", "Ensemble", "fit", "load", "predict"]
