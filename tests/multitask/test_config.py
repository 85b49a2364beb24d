"""Shipped experiment configs load, validate, and agree with cxrkit.eval's risk table."""

from __future__ import annotations

import pytest

from cxrkit.config import load, to_dict
from cxrkit.data.findings import parse as parse_finding
from cxrkit.errors import ConfigError
from cxrkit.eval.screening import DEFAULT_RISK_GROUPS, normalise
from cxrkit.multitask.config import (
    KCR_FINDINGS_NIH,
    KCR_FINDINGS_VINDR,
    MultiTaskConfig,
    config_from_dict,
)
from cxrkit.multitask.dataset import mask_layout

from .conftest import CONFIGS

SHIPPED = ["kcr_model1", "kcr_model2", "screening_ensemble", "guendel"]


@pytest.mark.parametrize(
    "name", [*SHIPPED, *(f"tiny_{n}" for n in ("kcr_model1", "kcr_model2", "screening", "guendel"))]
)
def test_every_config_loads_and_round_trips(name: str) -> None:
    config = load(MultiTaskConfig, files=[CONFIGS / f"{name}.yaml"])
    assert config_from_dict(to_dict(config)) == config


def test_kcr_configs_differ_only_by_the_decoder() -> None:
    m1 = load(MultiTaskConfig, files=[CONFIGS / "kcr_model1.yaml"])
    m2 = load(MultiTaskConfig, files=[CONFIGS / "kcr_model2.yaml"])
    assert m1.findings == m2.findings == KCR_FINDINGS_NIH
    assert not m1.reconstruction.enabled and m2.reconstruction.enabled
    assert m2.reconstruction.weight == 0.8 and m2.reconstruction.target == "image"
    assert m1.encoder == m2.encoder and m1.optim == m2.optim and m1.data == m2.data
    bt = load(
        MultiTaskConfig,
        files=[CONFIGS / "kcr_model2.yaml"],
        overrides=["encoder.init=checkpoint", "encoder.weights=backbone.pth"],
    )
    assert bt.encoder.init == "checkpoint"
    # the old name fails before any work, naming the new one
    with pytest.raises(ConfigError, match="barlow_twins is now encoder.init=checkpoint"):
        load(MultiTaskConfig, overrides=["encoder.init=barlow_twins"])
    vindr = load(
        MultiTaskConfig,
        files=[CONFIGS / "kcr_model1.yaml"],
        overrides=[
            "findings=[Consolidation,Pneumothorax,Nodule/Mass,Pulmonary fibrosis,Pleural effusion]"
        ],
    )
    assert vindr.findings == KCR_FINDINGS_VINDR


def test_screening_config_matches_eval_risk_table() -> None:
    config = load(MultiTaskConfig, files=[CONFIGS / "screening_ensemble.yaml"])
    s = config.screening
    assert len(s.diseases) == 13 and config.encoder.name == "densenet121"
    assert config.reconstruction.target == "lesion" and config.reconstruction.weight == 0.8
    assert config.optim.name == "adam" and config.optim.lr == 1e-3
    assert config.optim.plateau_factor == 0.5
    eval_group = {normalise(f): g for g, fs in DEFAULT_RISK_GROUPS.items() for f in fs}
    assert list(s.groups()) == list(DEFAULT_RISK_GROUPS)  # same groups, same priority
    for group, names in s.groups().items():
        for name in names:
            entry = next(d for d in s.diseases if parse_finding(d)[0] == name)
            for spelling in [name, *parse_finding(entry)[1]]:
                assert eval_group.get(normalise(spelling)) == group, spelling
    grouped = {n for names in s.groups().values() for n in names}
    assert grouped == {parse_finding(d)[0] for d in s.diseases}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("reconstruction.dilation=4", "dilation"),
        ("encoder.name=vgg16", "encoder.name"),
        ("encoder.name=resnet18", "resnet18"),
        ("task=screening", "screening.diseases"),
        ("findings=[A,A=B|C]", "duplicate"),
        ("reconstruction.target=edges", "reconstruction.target"),
    ],
)
def test_invalid_settings_fail_before_any_work(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load(MultiTaskConfig, overrides=[override])


def test_screening_risk_groups_must_name_diseases() -> None:
    with pytest.raises(ConfigError, match="Atelectasis"):
        load(
            MultiTaskConfig,
            overrides=[
                "task=screening",
                "screening.diseases=[Pneumothorax]",
                "screening.risk_groups=[urgent=Atelectasis]",
            ],
        )


def test_mask_layout_per_experiment() -> None:
    guendel = load(MultiTaskConfig, files=[CONFIGS / "tiny_guendel.yaml"])
    layout = mask_layout(guendel)
    assert layout.names == ["lung", "heart"] and layout.organs == [0, 1] and layout.lung == 0
    screening = load(MultiTaskConfig, files=[CONFIGS / "tiny_screening.yaml"])
    layout = mask_layout(screening, disease="Nodule/Mass=Nodule|Mass")
    assert layout.names == ["Nodule", "Mass"] and layout.lesions == [0, 1]
    assert mask_layout(load(MultiTaskConfig, files=[CONFIGS / "tiny_kcr_model2.yaml"])).names == []
