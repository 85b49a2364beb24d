"""The screening ensemble: stages, the frozen decoder, the SVM threshold, saving and reloading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit import cli
from cxrkit.config import load
from cxrkit.data import loading
from cxrkit.data.records import read_manifest
from cxrkit.errors import DataError
from cxrkit.eval import screening as eval_screening
from cxrkit.eval.predictions import read_predictions
from cxrkit.multitask import ensemble as ensembles
from cxrkit.multitask import screening, targets, train
from cxrkit.multitask.config import MultiTaskConfig
from cxrkit.multitask.model import build_from_config

from .conftest import CONFIGS, Phantoms, build


def _config(phantoms: Phantoms, out: Path, *extra: str) -> MultiTaskConfig:
    return load(
        MultiTaskConfig,
        files=[CONFIGS / "tiny_screening.yaml"],
        overrides=[*phantoms.overrides(out), *extra],
    )


def test_stage_records_split_by_masks(phantoms: Phantoms, tmp_path: Path) -> None:
    config = _config(phantoms, tmp_path)
    train = [r for r in phantoms.records if r.split == "train"]
    hard, weak = screening.stage_records(train, config=config)
    lesions = {"Pneumothorax", "Nodule", "Mass", "Effusion"}
    unseen = 0
    for r in train:
        has_mask = bool(lesions & set(r.mask_paths))
        normal = targets.is_abnormal(r) == 0
        # screening.other=listed (thesis): an image with only other findings is not trained on
        listed = normal or any(r.labels.get(n) == 1 for n in lesions)
        unseen += not listed
        assert (r in hard) == (has_mask or normal)
        assert (r in weak) == (not has_mask and listed)
    assert hard and weak and unseen  # the fixture keeps some abnormal images without masks
    _, weak_any = screening.stage_records(
        train, config=_config(phantoms, tmp_path, "screening.other=any")
    )
    assert len(weak_any) == len(weak) + unseen


def test_weak_stage_freezes_the_decoder(phantoms: Phantoms, tmp_path: Path) -> None:
    # weak_trains=encoder: cxrkit's former weak stage (the thesis' FC-only default is tested in
    # test_scxnn_config.py); the decoder stays frozen either way
    torch.manual_seed(0)
    config = _config(
        phantoms, tmp_path, "trainer.val_check_interval=1.0", "screening.weak_trains=encoder"
    )
    cache = loading.open_cache(config.data)
    train = [r for r in phantoms.records if r.split == "train"]
    hard, weak = screening.stage_records(train, config=config)
    disease = "Effusion"
    first = build_from_config(config, num_outputs=3)
    start = {k: v.clone() for k, v in first.state_dict().items()}
    module = screening._fit_stage(
        config=config,
        disease=disease,
        stage="weak",
        settings=config.screening.weak.__class__(max_epochs=1, max_steps=2, lr=1e-2),
        records=weak,
        val_records=[],
        cache=cache,
        output_dir=tmp_path / "weak",
        init_state=start,
    )
    after = module.model.state_dict()
    decoder = [k for k in after if k.startswith("decoder.")]
    assert any("running_mean" in k for k in decoder)  # BatchNorm statistics are checked too
    for k in decoder:
        assert torch.equal(after[k], start[k]), k
    assert not torch.equal(after["classifier.weight"], start["classifier.weight"])
    assert not torch.equal(
        after["encoder.body.layer1.0.conv1.weight"], start["encoder.body.layer1.0.conv1.weight"]
    )
    assert all(not p.requires_grad for p in module.model.decoder.parameters())


def test_member_trains_the_weak_stage_from_the_hard_stage_weights(
    phantoms: Phantoms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    config = _config(phantoms, tmp_path, "screening.hard.max_steps=1", "screening.weak.max_steps=1")
    cache = loading.open_cache(config.data)
    train = [r for r in phantoms.records if r.split == "train"]
    fit_stage, stages = screening._fit_stage, []

    def spy(**kwargs: object) -> object:
        module = fit_stage(**kwargs)
        final = {k: v.clone() for k, v in module.model.state_dict().items()}
        stages.append((kwargs["stage"], kwargs["init_state"], final))
        return module

    monkeypatch.setattr(screening, "_fit_stage", spy)
    path = screening.train_member(
        config=config,
        disease="Effusion",
        train_records=train,
        val_records=[],
        cache=cache,
        output_dir=tmp_path / "member",
    )
    assert path == tmp_path / "member" / screening.MEMBER_FILE and path.is_file()
    assert [stage for stage, _, _ in stages] == ["hard", "weak"]
    (_, hard_init, hard_final), (_, weak_init, _) = stages
    assert hard_init is None
    assert weak_init.keys() == hard_final.keys()
    for k in hard_final:
        assert torch.equal(weak_init[k], hard_final[k]), k


def test_svm_threshold_reaches_the_target_sensitivity() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 30)
    features = np.c_[y + rng.normal(0, 0.8, 60), rng.normal(0, 1, 60)]
    svm, threshold = ensembles.fit_svm(features, y, target_sensitivity=0.9, kernel="linear")
    scores = svm.decision_function(features)
    called = scores >= threshold
    assert called[y == 1].mean() >= 0.9
    # the highest such threshold: the next abnormal score above it would lose sensitivity
    above = np.sort(scores[(y == 1) & (scores > threshold)])
    if above.size:
        assert (scores[y == 1] >= above[0]).mean() < 0.9
    with pytest.raises(DataError, match="normal and abnormal"):
        ensembles.fit_svm(features, np.ones(60, dtype=int))


def _random_ensemble(config: MultiTaskConfig, records: list, cache) -> ensembles.Ensemble:
    torch.manual_seed(0)
    members = [build_from_config(config, num_outputs=3).eval() for _ in config.screening.diseases]
    ensemble = ensembles.Ensemble(
        diseases=list(config.screening.diseases),
        members=members,
        svm=None,
        threshold=float("nan"),
        target_sensitivity=0.9,
        config=config,
    )
    _, feats = ensemble.features_of(records=records, cache=cache)
    y = np.array([targets.is_abnormal(r) for r in records])
    ensemble.svm, ensemble.threshold = ensembles.fit_svm(feats, y, target_sensitivity=0.9)
    return ensemble


def test_saved_ensemble_reloads_and_predicts_identically(
    phantoms: Phantoms, tmp_path: Path
) -> None:
    config = _config(phantoms, tmp_path)
    cache = loading.open_cache(config.data)
    ensemble = _random_ensemble(
        config, [r for r in phantoms.records if r.split in ("val", "test")], cache
    )
    records = [r for r in phantoms.records if r.split == "test"]
    out = tmp_path / "ensemble"
    paths = []
    for disease, model in zip(ensemble.diseases, ensemble.members, strict=True):
        paths.append(
            train.save_model(
                model,
                config,
                out / "members" / screening.member_slug(disease) / "member.pt",
                disease=disease,
            )
        )
    ensemble.save(out, member_paths=paths)
    screening.write_risk_groups(config, out / screening.RISK_GROUPS_FILE)

    loaded = ensembles.Ensemble.load(out)
    assert loaded.diseases == ensemble.diseases and loaded.threshold == ensemble.threshold
    _, before = ensemble.features_of(records=records, cache=cache)
    _, after = loaded.features_of(records=records, cache=cache)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(ensemble.score(before), loaded.score(after))
    doc = json.loads((out / ensembles.ENSEMBLE_FILE).read_text())
    assert doc["features"][:3] == [
        "Pneumothorax:normal",
        "Pneumothorax:disease",
        "Pneumothorax:other",
    ]
    assert doc["members"][1]["checkpoint"] == "members/Nodule_Mass/member.pt"

    # `screen` writes what `cxrkit eval screening` reads, with the ensemble's risk groups
    preds = tmp_path / "screen.csv"
    rc = cli.main(
        [
            "multitask",
            "screen",
            "--ensemble",
            str(out),
            "--manifest",
            str(phantoms.manifest),
            "--cache",
            str(phantoms.cache),
            "--split",
            "test",
            "--out",
            str(preds),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    frame, _ = read_predictions(preds, kind="screening")
    test = [r for r in read_manifest(phantoms.manifest) if r.split == "test"]
    assert sorted(frame["image_id"]) == sorted(r.image_id for r in test)
    groups = eval_screening.load_risk_groups(out / screening.RISK_GROUPS_FILE)
    assert groups == {
        "critical": ("Pneumothorax",),
        "urgent": ("Nodule/Mass", "Nodule", "Mass", "Effusion"),
    }
    result = eval_screening.evaluate(
        frame, test, risk_groups=groups, n_bootstrap=0, threshold=loaded.threshold
    )
    assert result["counts"]["n_images"] == len(test)

    # a changed file is refused
    member = out / "members" / "Effusion" / "member.pt"
    member.write_bytes(member.read_bytes() + b"\0")
    with pytest.raises(DataError, match="checksum"):
        ensembles.Ensemble.load(out)


def test_svm_file_with_untrusted_types_is_refused(tmp_path: Path) -> None:
    import operator

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    out = tmp_path / "ensemble"
    out.mkdir()
    # operator.attrgetter is a callable skops does not trust: loading it is refused up front
    sio.dump(FunctionTransformer(func=operator.attrgetter("x")), out / ensembles.SVM_FILE)
    (out / ensembles.ENSEMBLE_FILE).write_text(
        json.dumps(
            {
                "members": [{"disease": "Effusion", "checkpoint": "member.pt"}],
                "threshold": 0.0,
                "target_sensitivity": 0.9,
            }
        )
    )
    with pytest.raises(DataError, match="untrusted"):
        ensembles.Ensemble.load(out)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_trained_ensemble_separates_normal_from_abnormal(tmp_path: Path) -> None:
    """The whole pipeline on phantoms with large lesions (64 px hides small nodules): three members
    trained through both stages on 144 images (the weak stage at a fine-tuning lr), a linear SVM
    fitted on 48 validation images (too few for an RBF kernel), then 168 held-out images screened
    better than chance: the lower end of the AUROC's 95% bootstrap interval (cxrkit.eval) lies
    above 0.5 (observed: test AUROC 0.75; members alone 0.62-0.80). About 3 minutes on two
    free CPU cores, 12 on busy ones."""
    phantoms = build(
        tmp_path / "phantoms",
        n=360,
        seed=2,
        keys=("consolidation", "pneumothorax", "effusion"),
        fractions=(0.4, 0.4 / 3),
    )
    out = tmp_path / "run"
    rc = cli.main(
        [
            "multitask",
            "--config",
            str(CONFIGS / "tiny_screening.yaml"),
            *phantoms.overrides(out),
            "screening.diseases=[Pneumothorax,Consolidation,Effusion]",
            "screening.risk_groups=[critical=Pneumothorax,urgent=Consolidation|Effusion]",
            "screening.hard.max_steps=100",
            "screening.hard.max_epochs=50",
            "screening.weak.max_steps=10",
            "screening.weak.lr=1e-4",
            "screening.weak.max_epochs=50",
            "screening.svm.kernel=linear",
            "data.batch_size=16",
            "trainer.val_check_interval=1.0",
        ]
    )
    assert rc == 0
    preds, _ = read_predictions(out / "predictions_test.csv", kind="screening")
    test = [r for r in phantoms.records if r.split == "test"]
    assert len(test) == len(preds) == 168
    result = eval_screening.evaluate(preds, test, n_bootstrap=500, target_sensitivity=0.9)
    assert result["auroc"]["ci"][0] > 0.5, result["auroc"]
