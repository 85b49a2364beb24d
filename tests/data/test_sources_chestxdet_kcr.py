"""The ChestX-Det -> KCR five-findings table: explicit, complete, the same in vocab.py and in
configs/kcr/chestxdet_findings.yaml, and labelling real ChestX-Det records as the JSON says."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cxrkit import load_config
from cxrkit.data import findings, vocab
from cxrkit.data.sources import chestxdet
from cxrkit.multitask.config import MultiTaskConfig

REPO = Path(__file__).resolve().parents[2]
TABLE_YAML = REPO / "configs" / "kcr" / "chestxdet_findings.yaml"


def test_table_is_explicit_and_complete():
    used = [m for members in vocab.CHESTXDET_KCR.values() for m in members]
    assert len(used) == len(set(used))  # no class feeds two findings
    assert set(used).isdisjoint(vocab.CHESTXDET_NOT_KCR)
    # every ChestX-Det class is either used or listed as not used: none dropped silently
    assert sorted(used + list(vocab.CHESTXDET_NOT_KCR)) == sorted(vocab.CHESTXDET_FINDINGS)
    assert tuple(vocab.CHESTXDET_KCR) == vocab.KCR_FINDINGS


def test_config_file_is_the_table_and_names_match_the_kcr_configs():
    entries = yaml.safe_load(TABLE_YAML.read_text())["findings"]
    assert entries == vocab.finding_entries(vocab.CHESTXDET_KCR)
    assert entries[2] == "Nodule/Mass=Nodule|Mass|Diffuse Nodule"
    model1 = REPO / "configs" / "multitask" / "kcr_model1.yaml"
    nih_entries = yaml.safe_load(model1.read_text())["findings"]
    assert findings.names(entries) == findings.names(nih_entries) == list(vocab.KCR_FINDINGS)
    # a later --config over a KCR config swaps the members and keeps the names
    config = load_config(MultiTaskConfig, [model1, TABLE_YAML])
    assert list(config.findings) == entries


def test_real_chestxdet_labels_through_the_table(shared_data):
    root = shared_data / "chestx-det"
    records = chestxdet.load_chestxdet(root=root, metadata_only=True)
    expanded = {
        r.image_id: r
        for r in findings.expand_records(records, vocab.finding_entries(vocab.CHESTXDET_KCR))
    }
    for split in ("train", "test"):
        for entry in json.loads((root / f"ChestX_Det_{split}.json").read_text()):
            labels = expanded[entry["file_name"][:-4]].labels
            syms = set(entry["syms"])
            for name, members in vocab.CHESTXDET_KCR.items():
                assert labels[name] == int(bool(syms & set(members))), (entry["file_name"], name)
    positives = {n: sum(r.labels[n] for r in expanded.values()) for n in vocab.KCR_FINDINGS}
    assert all(v > 0 for v in positives.values())
    assert positives["Nodule/Mass"] >= sum(r.labels["Nodule"] for r in records)
