"""The thesis protocol: Table 1, the recipe, the FC-only weak stage, the plateau stop."""

from __future__ import annotations

import pytest
import torch

from cxrkit.config import load
from cxrkit.data.findings import parse as parse_finding
from cxrkit.errors import ConfigError
from cxrkit.eval.screening import DEFAULT_RISK_GROUPS, check_risk_groups, normalise
from cxrkit.multitask.config import MultiTaskConfig, ReconstructionConfig
from cxrkit.multitask.module import MultiTaskModule, PlateauStop

from .conftest import CONFIGS, REPO

SCXNN = REPO / "configs" / "scxnn"

# Thesis Table 1, written out independently of the code: group -> diseases
TABLE_1 = {
    "critical": ["Pneumothorax", "Pneumoperitoneum", "Mediastinal Widening"],
    "urgent": [
        "Pleural Effusion",
        "Nodule",
        "Consolidation",
        "Active Tuberculosis",
        "Advanced Tuberculosis",
    ],
    "non-urgent": [
        "Atelectasis",
        "Support Device",
        "Pleural Calcification",
        "Interstitial Opacity",
    ],
    "cardiomegaly": ["Cardiomegaly"],
}
UNSEEN = {"pneumonia", "edema", "oedema", "pulmonary edema", "fracture"}


@pytest.mark.parametrize("path", [SCXNN / "scxnn.yaml", CONFIGS / "screening_ensemble.yaml"])
def test_thesis_configs_are_table_1(path) -> None:
    s = load(MultiTaskConfig, files=[path]).screening
    assert [parse_finding(d).name for d in s.diseases] == [d for ds in TABLE_1.values() for d in ds]
    assert {g: list(ns) for g, ns in s.groups().items()} == TABLE_1
    spellings = {
        normalise(m) for d in s.diseases for m in [parse_finding(d).name, *parse_finding(d)[1]]
    }
    assert not spellings & UNSEEN
    # aliases are only the same finding: pleural effusion spelled by VinDr and NIH
    aliased = {parse_finding(d).name: parse_finding(d)[1] for d in s.diseases}
    for name, members in aliased.items():
        expected = ["Pleural Effusion", "Pleural effusion", "Effusion"]
        assert list(members) == (expected if name == "Pleural Effusion" else [name]), name
    assert list(DEFAULT_RISK_GROUPS) == list(TABLE_1)


def test_default_risk_groups_are_table_1() -> None:
    groups = DEFAULT_RISK_GROUPS
    assert list(groups) == list(TABLE_1)  # the same groups, most severe first
    for group, diseases in TABLE_1.items():
        listed = {normalise(f) for f in groups[group]}
        wanted = {normalise(d) for d in diseases}
        # every disease of the table, and besides them only NIH's spelling of pleural effusion
        assert wanted <= listed, group
        assert listed - wanted == ({"effusion"} if group == "urgent" else set()), group
    assert sum(len(d) for d in TABLE_1.values()) == 13
    assert not {normalise(f) for fs in groups.values() for f in fs} & UNSEEN
    check_risk_groups(groups)


def test_thesis_recipe() -> None:
    c = load(MultiTaskConfig, files=[SCXNN / "scxnn.yaml"])
    p = c.data.preprocess
    assert (p.clip_percentiles, p.clip_low, p.clip_high, p.pad_square, p.clahe, p.size) == (
        True,
        0.5,
        99.5,
        True,
        True,
        1024,
    )
    assert c.augment and c.augment_transforms == [
        "shift",
        "rotate",
        "gamma",
        "sharpen",
        "blur",
        "noise",
    ]
    assert (c.encoder.name, c.encoder.init) == ("densenet121", "imagenet")
    assert c.screening.classes == 3 and c.screening.weak_trains == "classifier"
    assert c.reconstruction.target == "lesion" and c.reconstruction.weight == 0.8
    o = c.optim
    assert (o.name, o.lr, o.beta1, o.weight_decay) == ("adam", 1e-3, 0.9, 5e-4)
    assert (o.plateau_factor, o.plateau_patience, o.stop_lr, o.stop_patience) == (0.5, 50, 1e-4, 50)
    assert c.data.batch_size == 4
    assert c.screening.hard.max_epochs == c.screening.weak.max_epochs == 300
    assert c.screening.operating_point == "svm"
    # the kernel is given at 1024 px and scales with the cache
    assert c.reconstruction.kernel(1024) == 31 and c.reconstruction.kernel(256) == 7


def test_public_mapping_layers_over_the_thesis_config() -> None:
    c = load(MultiTaskConfig, files=[SCXNN / "scxnn.yaml", SCXNN / "public_approximate.yaml"])
    names = [parse_finding(d).name for d in c.screening.diseases]
    assert "Tuberculosis" in names and "Active Tuberculosis" not in names
    assert "Pneumoperitoneum" not in names and "Mediastinal Widening" not in names
    assert set(names) == {n for ns in c.screening.groups().values() for n in ns}
    text = (SCXNN / "public_approximate.yaml").read_text()
    assert "APPROXIMATE" in text and "Enlarged Cardiomediastinum" in text


@pytest.mark.parametrize(
    ("dilation", "reference", "size", "kernel"),
    [
        (15, 0, 256, 15),
        (31, 1024, 1024, 31),
        (31, 1024, 512, 15),
        (31, 1024, 128, 3),
        (3, 1024, 64, 1),
    ],
)
def test_dilation_kernel_scales_to_the_cache(dilation, reference, size, kernel) -> None:
    rec = ReconstructionConfig(dilation=dilation, dilation_reference=reference)
    assert rec.kernel(size) == kernel
    assert kernel % 2 == 1


def test_new_settings_are_validated() -> None:
    for override, key in [
        ("screening.classes=4", "classes"),
        ("screening.operating_point=youden", "operating_point"),
        ("screening.weak_trains=decoder", "weak_trains"),
        ("augment_transforms=[zoom]", "augment_transforms"),
        ("optim.beta1=1.5", "beta1"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load(MultiTaskConfig, overrides=[override])


def test_plateau_stop_follows_the_thesis_rule() -> None:
    stop = PlateauStop(stop_lr=1e-4, patience=3)
    # improving: never stops, even at a small lr
    assert not any(stop.update(v, 1e-5) for v in [5.0, 4.0, 3.0])
    # 3 rounds without improvement at a large lr: the schedule halves the lr, no stop
    assert [stop.update(3.0, 1e-3) for _ in range(3)] == [False, False, False]
    # the lr falls below 1e-4 with the 4th round still without improvement: stop
    assert stop.update(3.5, 5e-5)
    assert not PlateauStop(stop_lr=0.0, patience=1).update(float("nan"), 1e-9)  # off


def _module(stage: str, *extra: str) -> MultiTaskModule:
    config = load(
        MultiTaskConfig,
        files=[SCXNN / "scxnn.yaml"],
        overrides=[
            "encoder.init=random",
            "data.preprocess.size=64",
            "reconstruction.width=16",
            *extra,
        ],
    )
    return MultiTaskModule(config=config, disease="Nodule", stage=stage)


def test_weak_stage_trains_only_the_classifier() -> None:
    torch.manual_seed(0)
    module = _module("weak")
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    opt = module.configure_optimizers()["optimizer"]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 1024 * 3 + 3
    module.train()
    assert not module.model.encoder.training and not module.model.decoder.training
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    batch = {
        "image": torch.rand(2, 1, 64, 64),
        "target3": torch.tensor([1, 2]),
        "image_id": ["a", "b"],
    }
    for _ in range(2):
        loss = module.compute_losses(module(batch["image"]), batch)["loss_cls"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = module.model.state_dict()
    for k in after:  # encoder and decoder weights AND BatchNorm statistics, bit for bit
        if not k.startswith("classifier."):
            assert torch.equal(after[k], before[k]), k
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    # cxrkit's former weak stage (encoder + FC) stays available
    old = _module("weak", "screening.weak_trains=encoder")
    assert any(p.requires_grad for p in old.model.encoder.parameters())
    assert not any(p.requires_grad for p in old.model.decoder.parameters())
    hard = _module("hard")
    assert all(p.requires_grad for p in hard.model.parameters())


def test_two_class_member_learns_normal_against_target() -> None:
    module = _module("hard", "screening.classes=2")
    assert module.model.classifier.out_features == 2
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.1], [-3.0, 3.0]])
    batch = {"target3": torch.tensor([0, 2, 1])}  # normal, other disease, target
    loss = module.compute_losses({"logits": logits}, batch)["loss_cls"]
    # another disease counts as "not the target" (class 0)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1]))
    assert torch.allclose(loss, expected)


def test_training_augmentation_is_the_thesis_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrkit.multitask import train

    seen: dict[str, object] = {}

    class Captured(Exception):
        pass

    def capture(**kwargs: object) -> object:
        seen.update(kwargs)
        raise Captured

    monkeypatch.setattr(train.augmentation, "default_augment", capture)
    config = load(MultiTaskConfig, files=[SCXNN / "scxnn.yaml"])
    with pytest.raises(Captured):
        train.build_dataset(config=config, records=[], cache=None, disease="Nodule", train=True)
    assert seen["transforms"] == ["shift", "rotate", "gamma", "sharpen", "blur", "noise"]
    assert seen["size"] == 1024
    # `augment: true` without a list keeps the default transforms (None)
    plain = load(MultiTaskConfig, overrides=["augment=true"])
    with pytest.raises(Captured):
        train.build_dataset(config=plain, records=[], cache=None, train=True)
    assert seen["transforms"] is None
