"""Synthetic chest-radiograph phantoms with known lesions, in the real NIH and VinDr file formats.

A phantom is drawn from anatomy (body outline, lungs with vascular markings, heart, mediastinum,
trachea, spine, posterior and anterior ribs, clavicles, scapulae, hemidiaphragms, gastric bubble;
:mod:`.anatomy`) and up to five findings (consolidation, pneumothorax, nodule/mass, fibrosis,
pleural effusion; :mod:`.findings`), each with its lesion mask and the tight box of that mask,
composed into one film by :mod:`.rendering`. AP and PA differ the way they do in real life: an AP
film magnifies the heart (larger cardiothoracic ratio), has lower contrast and more noise,
projects the scapulae into the lung fields and is often taken at lower inspiration; this is what
makes AP/PA performance gaps exist to be measured.

:func:`generate` plans whole datasets (:mod:`.plan`: patients, follow-ups, views, findings, all
from the seed) and writes them in the NIH and VinDr formats (:mod:`.formats`); the same seed gives
byte-identical files with any number of worker processes::

    from cxrkit import synth

    summary = synth.generate(out_dir=Path("data/synth"), n=1000, size=256, seed=0, workers=4)
    phantom = synth.render_phantom(
        rng=np.random.default_rng(0), size=256, view="AP", findings=["effusion"]
    )
"""

from cxrkit.synth.anatomy import FIELD_OF_VIEW_MM, Anatomy, sample_anatomy
from cxrkit.synth.dataset import SynthSummary, generate
from cxrkit.synth.findings import FINDINGS, MASS_MIN_MM, NIH_NAMES
from cxrkit.synth.formats import (
    NIH_BBOX_HEADER,
    NIH_DATA_ENTRY_HEADER,
    NIH_FINDING_NAMES,
    NIH_NO_FINDING,
    PHANTOMS_COLUMNS,
    VINDR_ANNOTATION_COLUMNS,
    VINDR_LABEL_ID_COLUMNS,
    VINDR_LABELS,
    VINDR_NAMES,
    VINDR_NO_FINDING,
    VINDR_READERS,
)
from cxrkit.synth.plan import DATASETS, PlannedImage, plan_dataset, render_planned
from cxrkit.synth.rendering import Phantom, render_phantom

__all__ = [
    "DATASETS",
    "FIELD_OF_VIEW_MM",
    "FINDINGS",
    "MASS_MIN_MM",
    "NIH_BBOX_HEADER",
    "NIH_DATA_ENTRY_HEADER",
    "NIH_FINDING_NAMES",
    "NIH_NAMES",
    "NIH_NO_FINDING",
    "PHANTOMS_COLUMNS",
    "VINDR_ANNOTATION_COLUMNS",
    "VINDR_LABELS",
    "VINDR_LABEL_ID_COLUMNS",
    "VINDR_NAMES",
    "VINDR_NO_FINDING",
    "VINDR_READERS",
    "Anatomy",
    "Phantom",
    "PlannedImage",
    "SynthSummary",
    "generate",
    "plan_dataset",
    "render_phantom",
    "render_planned",
    "sample_anatomy",
]
