"""Screening members: best-epoch handoff between stages, member-level outputs of screen/predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit import cli, engine
from cxrkit.config import load
from cxrkit.data import loading
from cxrkit.multitask import ensemble as ensembles
from cxrkit.multitask import screening, train
from cxrkit.multitask.config import MultiTaskConfig

from .conftest import CONFIGS, Phantoms
from .test_screening import _random_ensemble


def _config(phantoms: Phantoms, out: Path, *extra: str) -> MultiTaskConfig:
    return load(
        MultiTaskConfig,
        files=[CONFIGS / "tiny_screening.yaml"],
        overrides=[*phantoms.overrides(out), *extra],
    )


def test_weak_stage_starts_from_the_hard_stage_best_checkpoint(
    phantoms: Phantoms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    # two validations per stage (steps 2 and 4): best.ckpt is one of them
    config = _config(
        phantoms,
        tmp_path,
        "screening.hard.max_steps=4",
        "screening.weak.max_steps=4",
        "trainer.val_check_interval=2",
        "screening.hard.lr=0.5",
    )
    cache = loading.open_cache(config.data)
    train_records = [r for r in phantoms.records if r.split == "train"]
    val = [r for r in phantoms.records if r.split == "val"]
    fit_stage, seen = screening._fit_stage, []

    def spy(**kwargs: object) -> object:
        seen.append(kwargs)
        return fit_stage(**kwargs)

    monkeypatch.setattr(screening, "_fit_stage", spy)
    path = screening.train_member(
        config=config,
        disease="Effusion",
        train_records=train_records,
        val_records=val,
        cache=cache,
        output_dir=tmp_path / "member",
    )
    best_hard = engine.check_checkpoint(tmp_path / "member" / "hard" / "checkpoints" / "best.ckpt")
    weak_init = seen[1]["init_state"]
    for k, v in weak_init.items():
        assert torch.equal(v, best_hard["state_dict"][f"model.{k}"]), k
    # the member file holds the weak stage's best weights
    best_weak = engine.check_checkpoint(tmp_path / "member" / "weak" / "checkpoints" / "best.ckpt")
    member = train.load(path)
    model, blob = member.model, member.extra
    assert blob["disease"] == "Effusion"
    for k, v in model.state_dict().items():
        assert torch.equal(v, best_weak["state_dict"][f"model.{k}"]), k


def _saved_ensemble(phantoms: Phantoms, out: Path) -> tuple[ensembles.Ensemble, list[Path]]:
    config = _config(phantoms, out)
    cache = loading.open_cache(config.data)
    records = [r for r in phantoms.records if r.split in ("val", "test")]
    ensemble = _random_ensemble(config, records, cache)
    paths = [
        train.save_model(
            m, config, out / "members" / screening.member_slug(d) / "member.pt", disease=d
        )
        for d, m in zip(ensemble.diseases, ensemble.members, strict=True)
    ]
    ensemble.save(out, member_paths=paths)
    return ensemble, paths


def test_screen_exports_every_members_probabilities(phantoms: Phantoms, tmp_path: Path) -> None:
    ensemble, paths = _saved_ensemble(phantoms, tmp_path / "ensemble")
    data = ["--manifest", str(phantoms.manifest), "--cache", str(phantoms.cache)]
    args = [*data, "--split", "test", "--device", "cpu"]
    preds, members_csv = tmp_path / "screen.csv", tmp_path / "members.csv"
    rc = cli.main(
        [
            "multitask",
            "screen",
            "--ensemble",
            str(tmp_path / "ensemble"),
            *args,
            "--out",
            str(preds),
            "--members",
            str(members_csv),
        ]
    )
    assert rc == 0
    test = [r for r in phantoms.records if r.split == "test"]
    members = pd.read_csv(members_csv)
    assert len(members) == len(test) * len(ensemble.diseases)  # one row per image x member
    assert list(members["member"].unique()) == ["Pneumothorax", "Nodule/Mass", "Effusion"]
    probs = members[["p_normal", "p_target", "p_other"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # the member rows are the softmax of the logits the SVM scored
    cache = loading.open_cache(ensemble.config.data)
    ids, feats = ensemble.features_of(records=test, cache=cache)
    first = torch.tensor(feats[0, :3]).softmax(0).numpy()
    row = members[(members["image_id"] == ids[0]) & (members["member"] == "Pneumothorax")]
    np.testing.assert_allclose(row[["p_normal", "p_target", "p_other"]].to_numpy()[0], first)
    scores = pd.read_csv(preds)
    np.testing.assert_allclose(
        scores.set_index("image_id").loc[ids, "score"].to_numpy(), ensemble.score(feats)
    )

    # `multitask predict` takes one member and writes the same rows for it
    one = tmp_path / "effusion.csv"
    rc = cli.main(["multitask", "predict", "--model", str(paths[2]), *args, "--out", str(one)])
    assert rc == 0
    alone = pd.read_csv(one)
    assert set(alone["member"]) == {"Effusion"} and len(alone) == len(test)
    same = members[members["member"] == "Effusion"].set_index("image_id").loc[alone["image_id"]]
    np.testing.assert_allclose(
        alone[["p_normal", "p_target", "p_other"]].to_numpy(),
        same[["p_normal", "p_target", "p_other"]].to_numpy(),
        rtol=1e-5,
    )
