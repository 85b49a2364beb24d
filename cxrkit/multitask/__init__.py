"""Multi-task chest X-ray models on one encoder family (ResNet-50 / DenseNet-121).

- KCR Model 1 (classifier) and Model 2 (classifier + image-reconstruction decoder), compared on
  mean AUROC and the AP-PA gap through :mod:`cxrkit.eval` (:mod:`.compare`);
- Guendel's heads: lung/heart segmentation and abnormality location;
- the screening thesis' ensemble: per-disease 3-class models with a dilated-lesion reconstruction
  decoder, trained in two stages, combined by an SVM (:mod:`.screening`).

Modules: :mod:`.config` (the experiment schema), :mod:`.model` and :mod:`.decoder` (networks),
:mod:`.targets` and :mod:`.losses` (what is learned), :mod:`.dataset` (per-image targets),
:mod:`.module` (the LightningModule), :mod:`.train` (a multi-label run), :mod:`.screening`,
:mod:`.compare`, :mod:`.cli` (``cxrkit multitask``).
"""
