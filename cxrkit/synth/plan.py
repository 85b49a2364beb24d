"""Who is in a generated dataset, with which view and findings: deterministic from the seed.

Every random draw comes from ``np.random.default_rng([seed, dataset code, stream, n])`` with one
stream per purpose (below), so any number of worker processes draws the same values, and the
anatomy of a patient (stream 2, by patient number) is shared by all of their follow-up films.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from cxrkit.synth.anatomy import sample_anatomy
from cxrkit.synth.findings import FINDINGS
from cxrkit.synth.rendering import Phantom, render_phantom

DATASETS: tuple[str, ...] = ("nih", "vindr")
DATASET_CODE = {"nih": 1, "vindr": 2}
# the third seed word of each random stream
STREAM_PLAN = 0  # patients, views and findings of a whole dataset
STREAM_IMAGE = 1  # one film (n: image index)
STREAM_ANATOMY = 2  # one patient's habitus (n: patient number)
STREAM_READERS = 3  # the VinDr readers' box jitter (n: image index)
STREAM_DICOM = 4  # the DICOM stored-value range (n: image index)


@dataclass(frozen=True, kw_only=True)
class PlannedImage:
    """One image of a generated dataset: who, which view, which findings, how it is stored."""

    dataset: str
    index: int
    image_id: str
    patient_id: str
    patient_number: int
    follow_up: int
    age: int
    sex: str
    view: str
    findings: tuple[str, ...]
    split: str  # VinDr: "train" / "test"; NIH: ""
    photometric: str  # VinDr: MONOCHROME1 / MONOCHROME2
    bits_stored: int  # VinDr: 12 or 14


def _hex_id(*parts: object) -> str:
    """A stable hex id (VinDr-style image and patient ids) from the parts' text."""
    return hashlib.md5(":".join(str(p) for p in parts).encode()).hexdigest()


def plan_dataset(
    dataset: str, *, n: int, seed: int, abnormal_fraction: float, ap_fraction: float
) -> list[PlannedImage]:
    """Patients, follow-ups, views and findings of one dataset, in file order.

    Depends only on its arguments (not on the image size), so :func:`render_planned` can redraw any
    written image in memory, e.g. to compare a reader's output with the intended display.
    """
    rng = np.random.default_rng([seed, DATASET_CODE[dataset], STREAM_PLAN])
    # patients: most have one film, some 2-4 follow-ups (so patient-level splits matter)
    patients: list[tuple[int, int, int, str]] = []  # (patient number, films, age, sex)
    total = 0
    while total < n:
        films = 1 if rng.random() < 0.7 else int(rng.integers(2, 5))
        films = min(films, n - total)
        patients.append(
            (len(patients) + 1, films, int(rng.integers(18, 91)), str(rng.choice(["M", "F"])))
        )
        total += films
    abnormal = np.zeros(n, bool)
    abnormal[rng.permutation(n)[: int(round(n * abnormal_fraction))]] = True
    views = np.where(rng.random(n) < ap_fraction, "AP", "PA")
    # VinDr: whole patients go to train until ~80% of the films are there
    split_of: dict[int, str] = {}
    if dataset == "vindr":
        in_train = 0
        for k in rng.permutation(len(patients)):
            number, films = patients[k][0], patients[k][1]
            split_of[number] = "train" if in_train < 0.8 * n else "test"
            in_train += films if split_of[number] == "train" else 0
    items: list[PlannedImage] = []
    for number, films, age, sex in patients:
        patient_id = (
            str(number) if dataset == "nih" else _hex_id(seed, "vindr-patient", number)[:16]
        )
        for follow_up in range(films):
            i = len(items)
            findings: tuple[str, ...] = ()
            if abnormal[i]:
                k = int(rng.choice([1, 2, 3], p=[0.7, 0.22, 0.08]))
                chosen = set(rng.choice(len(FINDINGS), size=k, replace=False).tolist())
                findings = tuple(f for j, f in enumerate(FINDINGS) if j in chosen)
            image_id = (
                f"{number:08d}_{follow_up:03d}" if dataset == "nih" else _hex_id(seed, dataset, i)
            )
            items.append(
                PlannedImage(
                    dataset=dataset,
                    index=i,
                    image_id=image_id,
                    patient_id=patient_id,
                    patient_number=number,
                    follow_up=follow_up,
                    age=min(age + (follow_up + 1) // 3, 95),
                    sex=sex,
                    view=str(views[i]),
                    findings=findings,
                    split=split_of.get(number, ""),
                    photometric="MONOCHROME1" if rng.random() < 0.25 else "MONOCHROME2",
                    bits_stored=int(rng.choice([12, 14])),
                )
            )
    return items


def render_planned(item: PlannedImage, *, seed: int, size: int) -> Phantom:
    """Draw the phantom :func:`generate` writes for ``item`` (same seed and size -> same pixels)."""
    code = DATASET_CODE[item.dataset]
    anatomy = sample_anatomy(
        np.random.default_rng([seed, code, STREAM_ANATOMY, item.patient_number]),
        female=item.sex == "F",
    )
    return render_phantom(
        rng=np.random.default_rng([seed, code, STREAM_IMAGE, item.index]),
        size=size,
        view=item.view,
        findings=item.findings,
        anatomy=anatomy,
    )
