"""Patient-level splits: every image of a patient lands in the same split.

Images of one patient are strongly correlated (follow-up studies of the same chest), so a split by
image would leak patients from training into evaluation and inflate every metric. Splits here are
made over patients and stratified by label with the iterative stratification of Sechidis, Tsoumakas
and Vlahavas ("On the stratification of multi-label data", ECML PKDD 2011), applied to patients:
a patient's label vector counts its images positive for each finding, and its weight is its number
of images, so the split fractions hold in images, not patients.

Official splits are kept when a source has them (NIH's ``train_val_list.txt`` / ``test_list.txt``,
VinDr-CXR's train/test files); the validation set is then carved from the official training part,
again by patient.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cxrkit.data.records import SPLITS, Record
from cxrkit.errors import ConfigError, DataError, MissingFileError

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}


def parse_fractions(text: str) -> dict[str, float]:
    """Parse ``"0.8,0.1,0.1"`` (train, val, test) into a fractions dict; raises ConfigError."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ConfigError(
            f"split fractions {text!r}: expected three numbers train,val,test (e.g. 0.8,0.1,0.1)"
        )
    try:
        values = [float(p) for p in parts]
    except ValueError as exc:
        raise ConfigError(f"split fractions {text!r}: not numbers ({exc})") from exc
    fractions = dict(zip(("train", "val", "test"), values, strict=True))
    _check_fractions(fractions)
    return fractions


def _check_fractions(fractions: Mapping[str, float]) -> None:
    allowed = [s for s in SPLITS if s != "unassigned"]
    for name, value in fractions.items():
        if name not in allowed:
            raise ConfigError(f"split fractions: unknown split {name!r} (use {allowed})")
        if not (np.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(f"split fractions: {name} = {value!r} is not in [0, 1]")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {dict(fractions)} sum to {total:g}, not 1")


def assign_splits(
    records: Sequence[Record],
    *,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    stratify_on: Sequence[str] | None = None,
) -> list[Record]:
    """Return copies of ``records`` with ``split`` set, no patient in two splits.

    Args:
        records: the records to split; their current ``split`` is ignored.
        fractions: split name -> fraction of *images* (default 0.8 / 0.1 / 0.1 train/val/test);
            the fractions must sum to 1. Achieved fractions are as close as whole patients allow.
        seed: the result depends only on the seed and the set of records (not their order).
        stratify_on: findings whose positives are spread evenly across splits (a label absent
            from a record counts as negative). Default: every finding in any record's labels.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    _check_fractions(fractions)
    if not records:
        return []
    findings = (
        list(stratify_on)
        if stratify_on is not None
        else sorted({f for r in records for f in r.labels})
    )
    patient_of = [str(r.patient_id) for r in records]
    patients = sorted(set(patient_of))  # sorted: independent of record order
    row_of = {patient: p for p, patient in enumerate(patients)}
    rows = np.fromiter((row_of[p] for p in patient_of), dtype=np.int64, count=len(records))
    positive = np.array(
        [[r.labels.get(f) == 1 for f in findings] for r in records], dtype=np.float64
    ).reshape(len(records), len(findings))
    counts = np.zeros((len(patients), len(findings)), dtype=np.float64)
    np.add.at(counts, rows, positive)
    sizes = np.bincount(rows, minlength=len(patients)).astype(np.float64)
    names = list(fractions)
    chosen = _iterative_stratification(
        counts=counts,
        sizes=sizes,
        fractions=np.array([fractions[n] for n in names]),
        rng=np.random.default_rng(seed),
    )
    return [
        dataclasses.replace(r, split=names[chosen[row]])
        for r, row in zip(records, rows, strict=True)
    ]


def _iterative_stratification(
    *, counts: np.ndarray, sizes: np.ndarray, fractions: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Sechidis et al. 2011, over weighted items.

    counts: (P, L) positives per item and label; sizes: (P,) weight of each item; fractions: (K,).
    Returns (P,) subset index per item. Labels are handled rarest first; each item carrying the
    label goes to the subset that still wants most of that label (ties: most wanted overall, then
    random). Items with no positive label fill the subsets that still want most images.
    """
    n_items, n_labels = counts.shape
    active = np.flatnonzero(fractions > 0)
    want_size = fractions * sizes.sum()
    want_label = fractions[:, None] * counts.sum(axis=0)[None, :]
    chosen = np.full(n_items, -1, dtype=np.int64)
    order = rng.permutation(n_items)
    remaining = counts > 0

    def take(item: int, scores: list[np.ndarray]) -> None:
        candidates = active
        for score in scores:
            values = score[candidates]
            candidates = candidates[values >= values.max() - 1e-9]
            if len(candidates) == 1:
                break
        k = int(candidates[0] if len(candidates) == 1 else rng.choice(candidates))
        chosen[item] = k
        want_size[k] -= sizes[item]
        want_label[k] -= counts[item]

    while n_labels:
        left = remaining.sum(axis=0)
        if not left.any():
            break
        j = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        members = order[remaining[order, j]]
        for item in members:
            take(int(item), [want_label[:, j], want_size])
        remaining[members] = False
    for item in order[chosen[order] < 0]:
        take(int(item), [want_size])
    return chosen


def carve_validation(
    records: Sequence[Record],
    *,
    val_fraction: float,
    seed: int = 0,
    stratify_on: Sequence[str] | None = None,
) -> list[Record]:
    """Move ``val_fraction`` of the ``train`` records' images to ``val``, by patient.

    Records in other splits are returned unchanged. Used when a source has an official train/test
    split but no validation set.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"validation fraction {val_fraction!r} is not in [0, 1)")
    train = [r for r in records if r.split == "train"]
    if val_fraction == 0.0 or not train:
        return list(records)
    carved = assign_splits(
        train,
        fractions={"train": 1.0 - val_fraction, "val": val_fraction},
        seed=seed,
        stratify_on=stratify_on,
    )
    new_split = {r.image_id: r.split for r in carved}
    return [
        dataclasses.replace(r, split=new_split[r.image_id]) if r.split == "train" else r
        for r in records
    ]


def _read_list(source: str | Path | Iterable[str], what: str) -> set[str]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise MissingFileError(f"{path}: NIH {what} not found")
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    else:
        lines = list(source)
    return {Path(line.strip()).stem for line in lines if line.strip()}


def official_nih_split(
    records: Sequence[Record],
    train_val_list: str | Path | Iterable[str],
    test_list: str | Path | Iterable[str],
    val_fraction: float = 0.1,
    seed: int = 0,
) -> list[Record]:
    """NIH's official split, with validation carved from ``train_val_list`` by patient.

    Args:
        records: NIH records; matched to the lists by image file name without extension
            (``00000001_000.png`` in a list matches image_id ``00000001_000``).
        train_val_list: path of ``train_val_list.txt`` or its image names.
        test_list: path of ``test_list.txt`` or its image names.
        val_fraction: fraction of the train_val images moved to ``val`` (whole patients).
        seed: seed of the validation carve.

    Images in neither list stay ``unassigned``. An image in both lists, or a patient with images
    in both, is a :class:`DataError` (NIH's official lists are disjoint by patient).
    """
    train_val = _read_list(train_val_list, "train_val_list")
    test = _read_list(test_list, "test_list")
    both = sorted(train_val & test)
    if both:
        raise DataError(
            f"{len(both)} images are in both train_val_list and test_list (first: {both[0]})"
        )
    out = []
    for r in records:
        key = r.image_id
        split = "train" if key in train_val else "test" if key in test else "unassigned"
        out.append(dataclasses.replace(r, split=split))
    leaked = patients_in_several_splits(out)
    if leaked:
        raise DataError(
            f"{len(leaked)} patients have images in both train_val_list and test_list "
            f"(first: patient {leaked[0]}); the official NIH lists are split by patient"
        )
    return carve_validation(out, val_fraction=val_fraction, seed=seed)


def patients_in_several_splits(records: Iterable[Record]) -> list[str]:
    """Patient ids whose images are in more than one split (``unassigned`` ignored), sorted."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.split != "unassigned":
            seen[str(r.patient_id)].add(r.split)
    return sorted(p for p, splits in seen.items() if len(splits) > 1)


# --------------------------------------------------------------------------------------------------
# imported split lists (a COCO JSON or an id list per split)


def read_split_file(path: str | Path) -> list[str]:
    """The image ids a split file names, in file order, without duplicates.

    Two kinds of file:

    - a COCO JSON (``{"images": [{"file_name": ..., "id": ...}, ...]}``, e.g. the authors' files
      of BarlowTwins-CXR, ``preprocessing/test_annotations.json``): each image's id is its
      ``file_name`` without folders and extension (COCO's own ``id`` is usually a running number);
    - any other text file: one id per line (``#`` lines and blank lines skipped); a CSV line keeps
      its first field; a file name ``abc.png`` or ``train/abc.dicom`` stands for ``abc``.

    Raises:
        MissingFileError: no such file. DataError: a JSON file that is not COCO, or no id at all.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: split file not found")
    text = path.read_text(encoding="utf-8-sig")
    ids: list[str] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{path}: not a COCO file (no 'images' list)")
        for k, image in enumerate(images):
            name = image.get("file_name") if isinstance(image, dict) else None
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"{path}: images[{k}] has no file_name")
            ids.append(_image_key(name))
    else:
        for line in text.splitlines():
            field_ = line.split(",")[0].strip()
            if field_ and not field_.startswith("#"):
                ids.append(_image_key(field_))
    if not ids:
        raise DataError(f"{path}: names no image")
    return list(dict.fromkeys(ids))


def _image_key(name: str) -> str:
    stem = Path(name.replace("\\", "/")).name
    suffix = Path(stem).suffix.lower()
    return stem[: -len(suffix)] if suffix in (".png", ".jpg", ".jpeg", ".dicom", ".dcm") else stem


def parse_split_from(entries: Sequence[str]) -> dict[str, Path]:
    """``["val=valid.json", "test=test.txt"]`` (the ``--split-from`` option) -> split -> file.

    Raises:
        ConfigError: an entry not of the form ``SPLIT=FILE``, an unknown split, a split twice.
    """
    allowed = [s for s in SPLITS if s != "unassigned"]
    out: dict[str, Path] = {}
    for entry in entries:
        split, sep, file = entry.partition("=")
        split = split.strip()
        if not sep or not file.strip():
            raise ConfigError(f"--split-from {entry!r}: expected SPLIT=FILE, e.g. test=test.json")
        if split not in allowed:
            raise ConfigError(f"--split-from {entry!r}: unknown split {split!r} (use {allowed})")
        if split in out:
            raise ConfigError(f"--split-from names the {split} split twice")
        out[split] = Path(file.strip())
    return out


def splits_from_files(
    records: Sequence[Record],
    files: Mapping[str, str | Path],
    *,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> tuple[list[Record], list[str]]:
    """Assign the splits that ``files`` name, and split the other records by patient.

    Each file (:func:`read_split_file`) puts the records it names into its split. The records no
    file names are then split by patient (:func:`assign_splits`) among the splits that got no file,
    with ``fractions`` (default 0.8 / 0.1 / 0.1) renormalised over those; when every split got a
    file, they stay ``unassigned``. So ``{"val": ..., "test": ...}`` is the authors' split of
    BarlowTwins-CXR with everything else in train.

    Returns:
        The records and warnings (ids of a file that are not in ``records``, patients the files
        put in two splits) for the user.

    Raises:
        DataError: an id in two files, or a file none of whose ids is in ``records``.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    _check_fractions(fractions)
    known = {r.image_id for r in records}
    split_of: dict[str, str] = {}
    warnings: list[str] = []
    for split, file in files.items():
        ids = read_split_file(file)
        found = [i for i in ids if i in known]
        if not found:
            raise DataError(
                f"{file}: none of its {len(ids)} image ids is in the manifest (first: {ids[0]!r});"
                " is it a split file of this dataset?"
            )
        if len(found) < len(ids):
            missing = [i for i in ids if i not in known]
            warnings.append(
                f"{file}: {len(missing)} of {len(ids)} ids are not in the manifest "
                f"(first: {missing[0]!r})"
            )
        clash = sorted(i for i in found if i in split_of)
        if clash:
            raise DataError(
                f"{file}: {len(clash)} images are already in the {split_of[clash[0]]} split of "
                f"another file (first: {clash[0]!r})"
            )
        split_of.update(dict.fromkeys(found, split))
    named = [
        dataclasses.replace(r, split=split_of[r.image_id])
        for r in records
        if r.image_id in split_of
    ]
    rest = [r for r in records if r.image_id not in split_of]
    left = {s: f for s, f in fractions.items() if s not in files and f > 0}
    if rest and left:
        total = sum(left.values())
        rest = assign_splits(rest, fractions={s: f / total for s, f in left.items()}, seed=seed)
    else:
        rest = [dataclasses.replace(r, split="unassigned") for r in rest]
    out_split = {r.image_id: r.split for r in (*named, *rest)}
    out = [dataclasses.replace(r, split=out_split[r.image_id]) for r in records]
    leaked = patients_in_several_splits(out)
    if leaked:
        warnings.append(
            f"{len(leaked)} patients have images in more than one split after the split files "
            f"(first: {leaked[0]})"
        )
    return out, warnings
