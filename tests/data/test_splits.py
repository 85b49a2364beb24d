"""Patient-level splits: no leakage, stratification, determinism, official NIH lists."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from cxrkit.data import splits
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError, DataError


def _rec(image_id: str, patient: str, labels: dict[str, int] | None = None, split="unassigned"):
    return Record(
        image_id=image_id,
        source="t",
        path=f"/x/{image_id}.png",
        patient_id=patient,
        width=8,
        height=8,
        labels=labels or {},
        split=split,
    )


def _population(n_patients: int = 200, seed: int = 1) -> list[Record]:
    """Patients with 1-5 images each and a few labels of different frequency."""
    rng = random.Random(seed)
    records = []
    for p in range(n_patients):
        for k in range(rng.randint(1, 5)):
            labels = {
                "Common": int(rng.random() < 0.4),
                "Rare": int(p % 25 == 0),
                "Mid": int(rng.random() < 0.1),
            }
            records.append(_rec(f"{p}_{k}", f"P{p}", labels))
    return records


def _split_of_patients(records):
    seen = defaultdict(set)
    for r in records:
        seen[r.patient_id].add(r.split)
    return seen


def test_no_patient_in_two_splits_and_all_assigned():
    out = splits.assign_splits(_population(), seed=3)
    assert all(len(s) == 1 for s in _split_of_patients(out).values())
    assert {r.split for r in out} == {"train", "val", "test"}
    assert splits.patients_in_several_splits(out) == []


def test_fractions_hold_in_images():
    records = _population(400)
    out = splits.assign_splits(records, fractions={"train": 0.7, "val": 0.1, "test": 0.2})
    counts = Counter(r.split for r in out)
    n = len(records)
    assert abs(counts["train"] / n - 0.7) < 0.02
    assert abs(counts["val"] / n - 0.1) < 0.02
    assert abs(counts["test"] / n - 0.2) < 0.02


def test_rare_label_is_spread_exactly_as_asked():
    # 10 one-image patients positive for "Rare", 90 negative: 0.8/0.1/0.1 must give 8/1/1
    # positives (iterative stratification: each positive goes where it is wanted most).
    records = [_rec(f"i{p}", f"P{p}", {"Rare": int(p < 10)}) for p in range(100)]
    out = splits.assign_splits(records, seed=5)
    positives = Counter(r.split for r in out if r.labels["Rare"] == 1)
    assert positives == {"train": 8, "val": 1, "test": 1}
    assert Counter(r.split for r in out) == {"train": 80, "val": 10, "test": 10}


def test_stratification_beats_chance_on_common_label():
    records = _population(300, seed=7)
    out = splits.assign_splits(records, seed=0)
    for split in ("train", "val", "test"):
        part = [r for r in out if r.split == split]
        rate = sum(r.labels["Common"] for r in part) / len(part)
        overall = sum(r.labels["Common"] for r in records) / len(records)
        assert abs(rate - overall) < 0.03


def test_stratify_on_restricts_the_labels_used():
    records = [_rec(f"i{p}", f"P{p}", {"A": int(p < 10), "B": int(p >= 90)}) for p in range(100)]
    out = splits.assign_splits(records, stratify_on=["A"], seed=2)
    assert Counter(r.split for r in out if r.labels["A"]) == {"train": 8, "val": 1, "test": 1}


def test_deterministic_by_seed_and_independent_of_order():
    records = _population()
    a = {r.image_id: r.split for r in splits.assign_splits(records, seed=11)}
    b = {r.image_id: r.split for r in splits.assign_splits(records, seed=11)}
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    c = {r.image_id: r.split for r in splits.assign_splits(shuffled, seed=11)}
    d = {r.image_id: r.split for r in splits.assign_splits(records, seed=12)}
    assert a == b == c
    assert a != d


def test_inputs_are_not_modified():
    records = _population(20)
    splits.assign_splits(records)
    assert {r.split for r in records} == {"unassigned"}


def test_unlabeled_records_split_by_size():
    records = [_rec(f"i{p}", f"P{p // 2}") for p in range(200)]  # 100 patients x 2 images
    out = splits.assign_splits(records, seed=0)
    assert Counter(r.split for r in out) == {"train": 160, "val": 20, "test": 20}
    assert splits.patients_in_several_splits(out) == []


def test_two_way_split_and_zero_fraction():
    records = [_rec(f"i{p}", f"P{p}") for p in range(50)]
    out = splits.assign_splits(records, fractions={"train": 1.0, "test": 0.0})
    assert {r.split for r in out} == {"train"}


def test_empty_input():
    assert splits.assign_splits([]) == []


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.8, "val": 0.1}, "sum to 0.9"),
        ({"train": 0.8, "val": 0.1, "holdout": 0.1}, "unknown split 'holdout'"),
        ({"train": 1.2, "val": -0.2}, "not in [0, 1]"),
    ],
)
def test_bad_fractions(fractions, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        splits.assign_splits([_rec("a", "p")], fractions=fractions)


def test_parse_fractions():
    assert splits.parse_fractions("0.7, 0.1,0.2") == {"train": 0.7, "val": 0.1, "test": 0.2}
    with pytest.raises(ConfigError, match="three numbers"):
        splits.parse_fractions("0.8,0.2")
    with pytest.raises(ConfigError, match="not numbers"):
        splits.parse_fractions("0.8,a,0.1")
    with pytest.raises(ConfigError, match="sum to"):
        splits.parse_fractions("0.8,0.3,0.1")


def test_carve_validation_only_touches_train():
    records = [_rec(f"tr{p}", f"P{p}", split="train") for p in range(100)]
    records += [_rec(f"te{p}", f"Q{p}", split="test") for p in range(30)]
    out = splits.carve_validation(records, val_fraction=0.2, seed=0)
    assert Counter(r.split for r in out) == {"train": 80, "val": 20, "test": 30}
    assert all(r.split == "test" for r in out if r.image_id.startswith("te"))
    with pytest.raises(ConfigError):
        splits.carve_validation(records, val_fraction=1.0)


def test_official_nih_split(tmp_path):
    records = [_rec(f"0000000{p}_00{k}", str(p)) for p in range(1, 9) for k in range(2)]
    train_val = tmp_path / "train_val_list.txt"
    train_val.write_text(
        "\n".join(f"0000000{p}_00{k}.png" for p in range(1, 7) for k in range(2)) + "\n"
    )
    test = ["00000007_000.png", "00000007_001.png"]  # patient 8 in neither list
    out = splits.official_nih_split(records, train_val, test, val_fraction=0.34, seed=0)
    by_id = {r.image_id: r.split for r in out}
    assert by_id["00000007_000"] == by_id["00000007_001"] == "test"
    assert by_id["00000008_000"] == by_id["00000008_001"] == "unassigned"
    train_val_splits = Counter(by_id[f"0000000{p}_00{k}"] for p in range(1, 7) for k in range(2))
    assert train_val_splits == {"train": 8, "val": 4}  # 2 of 6 patients carved, 2 images each
    assert splits.patients_in_several_splits(out) == []


def test_official_nih_split_rejects_overlapping_lists():
    records = [_rec("00000001_000", "1"), _rec("00000001_001", "1")]
    with pytest.raises(DataError, match="in both train_val_list and test_list"):
        splits.official_nih_split(records, ["00000001_000.png"], ["00000001_000.png"])
    with pytest.raises(DataError, match="patients have images in both.*patient 1"):
        splits.official_nih_split(records, ["00000001_000.png"], ["00000001_001.png"])


def test_official_nih_split_missing_list_file(tmp_path):
    from cxrkit.errors import MissingFileError

    with pytest.raises(MissingFileError, match="test_list"):
        splits.official_nih_split([], [], tmp_path / "test_list.txt")


def test_real_nih_sample_patients_stay_together(shared_data):
    from cxrkit.data.sources import nih

    records = nih.load_nih(
        root=shared_data / "nih",
        data_entry="Data_Entry_2017_subset.csv",
        bbox_list="BBox_List_2017_subset.csv",
    )
    out = splits.assign_splits(records, seed=0)
    by_patient = _split_of_patients(out)
    assert len(by_patient["211"]) == 1 and len(by_patient["4344"]) == 1
    assert sum(r.patient_id == "4344" for r in out) == 6
    assert splits.patients_in_several_splits(out) == []
    counts = Counter(r.split for r in out)
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


# imported split files ------------------------------------------------------------------------


def test_read_split_file_coco_and_lists(tmp_path):
    coco = tmp_path / "test.json"
    coco.write_text(
        '{"images": [{"id": 0, "file_name": "abc.jpeg"}, {"id": 1, "file_name": "d/ef.png"},'
        ' {"id": 2, "file_name": "abc.jpeg"}], "annotations": []}'
    )
    assert splits.read_split_file(coco) == ["abc", "ef"]
    listing = tmp_path / "ids.csv"
    listing.write_text("# header comment\nabc.dicom,PA\n\n  xyz  \nabc\n")
    assert splits.read_split_file(listing) == ["abc", "xyz"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"annotations": []}')
    with pytest.raises(DataError, match="not a COCO file"):
        splits.read_split_file(bad)


def test_parse_split_from():
    assert splits.parse_split_from(["val=a.json", "test = b.txt"]) == {
        "val": Path("a.json"),
        "test": Path("b.txt"),
    }
    for entries, message in (
        (["a.json"], "SPLIT=FILE"),
        (["holdout=a.json"], "unknown split"),
        (["val=a", "val=b"], "twice"),
    ):
        with pytest.raises(ConfigError, match=message):
            splits.parse_split_from(entries)


def test_files_set_their_splits_and_the_rest_is_split_by_patient(tmp_path):
    records = _population(60)
    ids = [r.image_id for r in records]
    (tmp_path / "test.txt").write_text("\n".join(ids[:10]))
    out, warnings = splits.splits_from_files(
        records,
        {"test": tmp_path / "test.txt"},
        fractions={"train": 0.7, "val": 0.15, "test": 0.15},
        seed=0,
    )
    by_id = {r.image_id: r.split for r in out}
    assert {by_id[i] for i in ids[:10]} == {"test"}
    rest = Counter(by_id[i] for i in ids[10:])
    assert set(rest) == {"train", "val"}  # the test share went to the file
    # train : val = 0.7 : 0.15 of the rest, as close as whole patients allow
    assert abs(rest["val"] / (len(ids) - 10) - 0.15 / 0.85) < 0.08
    # the population's patients have several images: the file split some of them
    assert warnings == [] or "more than one split" in warnings[0]


def test_every_split_from_a_file_leaves_the_rest_unassigned(tmp_path):
    records = [_rec(f"i{k}", f"P{k}") for k in range(4)]
    for split, names in (("train", "i0"), ("val", "i1"), ("test", "i2\nmissing")):
        (tmp_path / f"{split}.txt").write_text(names)
    out, warnings = splits.splits_from_files(
        records, {s: tmp_path / f"{s}.txt" for s in ("train", "val", "test")}
    )
    assert [r.split for r in out] == ["train", "val", "test", "unassigned"]
    assert warnings == [
        f"{tmp_path / 'test.txt'}: 1 of 2 ids are not in the manifest (first: 'missing')"
    ]
    (tmp_path / "again.txt").write_text("i0")
    with pytest.raises(DataError, match="already in the train split"):
        splits.splits_from_files(
            records, {"train": tmp_path / "train.txt", "test": tmp_path / "again.txt"}
        )
