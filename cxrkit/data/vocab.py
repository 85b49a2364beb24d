"""Explicit name tables: the class names each source may use, and the view names of every source.

Every class name read from a dataset file goes through one :class:`ClassTable`; a name that is not
in the table (nor one of its listed aliases) is a :class:`~cxrkit.errors.DataError` naming the file
and row. Nothing is dropped silently and nothing is guessed: a new spelling is added here, with a
test.

Canonical names keep each source's own spelling (NIH ``Pleural_Thickening``, VinDr ``Nodule/Mass``),
so a manifest can be compared with the papers that use the source.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cxrkit.errors import DataError


@dataclass(frozen=True)
class ClassTable:
    """The class names of one source (canonical spelling, in the source's order) and their aliases.

    Lookup ignores case and surrounding spaces but nothing else: ``"no finding"`` matches
    ``"No finding"``, ``"Nodule Mass"`` does not match ``"Nodule/Mass"``.
    """

    source: str
    names: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    _lookup: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup: dict[str, str] = {}
        for name in self.names:
            lookup[_key(name)] = name
        for alias, name in self.aliases.items():
            if name not in self.names:
                raise ValueError(f"{self.source}: alias {alias!r} points at unknown class {name!r}")
            lookup[_key(alias)] = name
        object.__setattr__(self, "_lookup", lookup)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._lookup

    def canonical(self, name: str, *, where: str) -> str:
        """The canonical spelling of ``name``; :class:`DataError` naming ``where`` if unknown."""
        found = self._lookup.get(_key(name))
        if found is None:
            raise DataError(
                f"{where}: unknown {self.source} class {name!r} (known: {', '.join(self.names)})"
            )
        return found


def _key(name: str) -> str:
    return name.strip().casefold()


def open_table(*, source: str, names: Iterable[str]) -> ClassTable:
    """A table for a user's own data (``prepare csv --classes a,b,c``), no aliases."""
    first: dict[str, str] = {}  # one class per spelling up to case: the first spelling wins
    for n in names:
        if n.strip():
            first.setdefault(_key(n), n.strip())
    names = tuple(first.values())
    if not names:
        raise DataError(f"{source}: the class list is empty")
    return ClassTable(source=source, names=names)


# NIH ChestX-ray14 (Wang et al., CVPR 2017): Data_Entry_2017.csv spells the 14 findings like this
# and writes "No Finding" for images with none. BBox_List_2017.csv writes "Infiltrate" for the
# finding Data_Entry calls "Infiltration".
NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH_NO_FINDING = "No Finding"
NIH = ClassTable(
    source="NIH ChestX-ray14",
    names=(*NIH_FINDINGS, NIH_NO_FINDING),
    aliases={"Infiltrate": "Infiltration"},
)

# VinDr-CXR on PhysioNet (Nguyen et al., Sci Data 2022): 22 local labels (boxes) and 6 global labels
# (image level) in annotations_*.csv / image_labels_*.csv. image_labels_test.csv spells the global
# label "Other disease" where image_labels_train.csv spells "Other diseases".
VINDR_LOCAL = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
)
VINDR_GLOBAL = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
VINDR_NO_FINDING = "No finding"
VINDR = ClassTable(
    source="VinDr-CXR",
    names=(*VINDR_LOCAL, *VINDR_GLOBAL),
    aliases={"Other disease": "Other diseases"},
)

# VinBigData Kaggle competition train.csv: class_id -> class_name; 14 = "No finding" (no box).
VINDR_KAGGLE_IDS: dict[int, str] = {
    0: "Aortic enlargement",
    1: "Atelectasis",
    2: "Calcification",
    3: "Cardiomegaly",
    4: "Consolidation",
    5: "ILD",
    6: "Infiltration",
    7: "Lung Opacity",
    8: "Nodule/Mass",
    9: "Other lesion",
    10: "Pleural effusion",
    11: "Pleural thickening",
    12: "Pneumothorax",
    13: "Pulmonary fibrosis",
    14: VINDR_NO_FINDING,
}
VINDR_KAGGLE = ClassTable(source="VinBigData (Kaggle)", names=tuple(VINDR_KAGGLE_IDS.values()))

# ChestX-Det (Lian et al., 2021; Deepwise): the 13 class names of ChestX_Det_{train,test}.json.
CHESTXDET_FINDINGS = (
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "Diffuse Nodule",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Fracture",
    "Mass",
    "Nodule",
    "Pleural Thickening",
    "Pneumothorax",
)
CHESTXDET_NO_FINDING = "No Finding"
CHESTXDET = ClassTable(source="ChestX-Det", names=(*CHESTXDET_FINDINGS, CHESTXDET_NO_FINDING))

# KCR 2025 (Kang et al., abstract): five findings -- consolidation (CSN), pneumothorax (PTX), nodule
# or mass (NDL), fibrosis (FIB), pleural effusion (PEF) -- scored under the names cxrkit's KCR
# configs use (NIH spellings, configs/multitask/kcr_model1.yaml), so that a model trained on NIH
# labels and the ChestX-Det external set name the same outputs.
KCR_FINDINGS = ("Consolidation", "Pneumothorax", "Nodule/Mass", "Fibrosis", "Effusion")

# ChestX-Det class names behind each KCR finding (configs/kcr/chestxdet_findings.yaml writes the
# same table as finding groups). The abstract evaluates on ChestX-Det but does not give its class
# mapping; this one is cxrkit's choice: "Diffuse Nodule" counts as nodule/mass because ChestX-Det
# re-annotated NIH images, whose "Nodule" label covers multiple and diffuse nodules.
CHESTXDET_KCR: dict[str, tuple[str, ...]] = {
    "Consolidation": ("Consolidation",),
    "Pneumothorax": ("Pneumothorax",),
    "Nodule/Mass": ("Nodule", "Mass", "Diffuse Nodule"),
    "Fibrosis": ("Fibrosis",),
    "Effusion": ("Effusion",),
}
# The ChestX-Det classes no KCR finding uses (listed, so that leaving them out is a decision).
CHESTXDET_NOT_KCR = (
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Emphysema",
    "Fracture",
    "Pleural Thickening",
)


def finding_entries(table: Mapping[str, Sequence[str]]) -> list[str]:
    """A finding -> members table as finding entries (``"Nodule/Mass=Nodule|Mass"``; a finding
    that is its own single member stays a plain name), the form configs' ``findings`` take."""
    return [
        name if tuple(members) == (name,) else f"{name}={'|'.join(members)}"
        for name, members in table.items()
    ]


# View names seen in DICOM ViewPosition tags, NIH's "View Position" and hospital exports, mapped to
# the record's PA / AP / LL / unknown. AP supine and AP erect are both AP; left and right laterals
# are both LL (a lateral is a lateral for a frontal-view model). Anything else is "unknown".
_VIEWS: dict[str, str] = {
    "PA": "PA",
    "POSTERO_ANTERIOR": "PA",
    "POSTEROANTERIOR": "PA",
    "POSTERO-ANTERIOR": "PA",
    "PA ERECT": "PA",
    "AP": "AP",
    "ANTERO_POSTERIOR": "AP",
    "ANTEROPOSTERIOR": "AP",
    "ANTERO-POSTERIOR": "AP",
    "AP SUPINE": "AP",
    "AP ERECT": "AP",
    "AP SEMI-ERECT": "AP",
    "AP SEMI ERECT": "AP",
    "AP PORTABLE": "AP",
    "APS": "AP",
    "LL": "LL",
    "RL": "LL",
    "LAT": "LL",
    "LATERAL": "LL",
    "LEFT LATERAL": "LL",
    "RIGHT LATERAL": "LL",
    "L LATERAL": "LL",
    "R LATERAL": "LL",
}


@functools.lru_cache(maxsize=4096)  # called once per image; a dataset has a handful of spellings
def normalize_view(value: object) -> str:
    """Map a view string from any source to ``"PA"``, ``"AP"``, ``"LL"`` or ``"unknown"``.

    Case, surrounding spaces and underscores-vs-spaces in multi-word forms are ignored
    (``"ap_supine"`` -> AP); an empty or missing value, or any other string, gives ``"unknown"``.
    """
    if not isinstance(value, str):
        return "unknown"
    text = " ".join(value.strip().upper().split())
    if text in _VIEWS:
        return _VIEWS[text]
    return _VIEWS.get(text.replace("_", " "), "unknown")


#: ``Record.meta`` key of a view string :func:`normalize_view` does not know (the record's view is
#: then ``"unknown"``); ``cxrkit prepare`` counts them in its summary and the manifest's warnings.
VIEW_UNRECOGNISED = "view_unrecognised"


def unrecognised_view(value: object) -> str | None:
    """``value`` stripped when it is a non-empty view string that maps to ``"unknown"``, else
    None (a known view, or no view given: an absent view is not a misspelt one)."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip() if normalize_view(value) == "unknown" else None


def view_warning(raw_views: Iterable[str]) -> str | None:
    """One summary line for the unrecognised view strings of a manifest's records, or None."""
    counts = Counter(raw_views)
    if not counts:
        return None
    shown = ", ".join(f"{text!r} {n}" for text, n in counts.most_common(5))
    more = f" and {len(counts) - 5} more spellings" if len(counts) > 5 else ""
    return (
        f"{sum(counts.values())} images have a view cxrkit does not read as PA, AP or LL "
        f"({shown}{more}): their view is 'unknown' (meta[{VIEW_UNRECOGNISED!r}] keeps the string)"
    )
