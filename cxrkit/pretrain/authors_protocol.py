"""The BarlowTwins-CXR authors' linear evaluation data protocol (``protocol: authors``).

From their ``barlowtwins/dataset.py`` (``ChestXrayDataset``) and ``evaluate.py``:

1. only the images of NIH's official **test list** are used;
2. they are split 80/20 **by image** with iterative stratification on the 15 labels (their
   ``skmultilearn`` ``IterativeStratification``; here ``iterstrat``'s
   ``MultilabelStratifiedShuffleSplit``, the same algorithm of Sechidis et al. 2011, seeded);
3. the 1 % / 10 % training subsets are drawn from the 80 % by iterative stratification too;
4. training images get ``RandomResizedCrop(224)`` + horizontal flip, test images none.

**Leakage**: NIH patients have many images, so a split by image puts images of one patient on
both sides; the test AUROC then partly measures recognising a patient. :func:`patients_in_training`
counts the test images concerned, and every report of this protocol states that number beside the
AUROCs. cxrkit's own protocol (the default) uses the patient-disjoint official lists instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np

from cxrkit.data import findings as finding_groups
from cxrkit.data.augmentation import BOX_LABEL_FIELD
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError

TEST_SIZE = 0.2  # BarlowTwins-CXR dataset.py: test_size=0.2 of the official test list


def label_matrix(records: Sequence[Record], findings: Sequence[str]) -> np.ndarray:
    """(N, F) uint8 multi-hot labels; a finding the record does not state counts as 0 (as the
    authors' ``str.get_dummies`` of "Finding Labels" does)."""
    parsed = finding_groups.parse_all(findings, what="findings")
    out = np.zeros((len(records), len(parsed)), dtype=np.uint8)
    for i, record in enumerate(records):
        for k, finding in enumerate(parsed):
            out[i, k] = finding_groups.label(record.labels, finding) or 0
    return out


def _stratified_pick(labels: np.ndarray, *, n_pick: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n_pick`` rows drawn by multi-label iterative stratification."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    n = len(labels)
    if n_pick >= n:
        return np.arange(n)
    splitter = MultilabelStratifiedShuffleSplit(
        n_splits=1, train_size=n_pick, test_size=n - n_pick, random_state=seed
    )
    picked, _ = next(splitter.split(np.zeros((n, 1)), labels))
    return np.sort(picked)


def split_test_list(
    records: Sequence[Record], *, findings: Sequence[str], seed: int
) -> tuple[list[Record], list[Record]]:
    """The authors' 80/20 image-level split of the official test list: ``(train, test)``.

    Raises:
        ConfigError: fewer than 5 images (no 80/20 split with both parts non-empty).
    """
    if len(records) < 5:
        raise ConfigError(
            f"protocol=authors splits the test list 80/20 and needs >= 5 images, got {len(records)}"
        )
    n_test = max(1, round(TEST_SIZE * len(records)))
    test = set(_stratified_pick(label_matrix(records, findings), n_pick=n_test, seed=seed).tolist())
    return (
        [r for i, r in enumerate(records) if i not in test],
        [r for i, r in enumerate(records) if i in test],
    )


def stratified_fraction(
    records: Sequence[Record], *, findings: Sequence[str], fraction: float, seed: int
) -> list[Record]:
    """About a ``fraction`` of ``records`` (at least one) by iterative stratification, in order
    (the algorithm sizes the part approximately on small sets, as the authors' does)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n_pick = max(1, round(fraction * len(records)))
    keep = _stratified_pick(label_matrix(records, findings), n_pick=n_pick, seed=seed)
    return [records[i] for i in keep]


def patients_in_training(test: Sequence[Record], train: Sequence[Record]) -> int:
    """How many ``test`` images have their patient among the ``train`` images."""
    patients = {r.patient_id for r in train}
    return sum(r.patient_id in patients for r in test)


def train_augment(size: int) -> A.Compose:
    """The authors' training transform on a ``size``-px cache image: ``RandomResizedCrop(size)``
    (torchvision's defaults: area 0.08-1, aspect 3/4-4/3) then a horizontal flip (p = 0.5).

    Boxes (NIH has some) ride along, clipped, so the dataset's box contract holds.
    """
    return A.Compose(
        [A.RandomResizedCrop(size=(size, size), scale=(0.08, 1.0)), A.HorizontalFlip(p=0.5)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=[BOX_LABEL_FIELD], clip=True),
    )
