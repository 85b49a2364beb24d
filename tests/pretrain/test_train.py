"""A tiny pretraining run on synthetic phantoms: it learns, resumes exactly, and exports."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torchvision

import cxrkit
from cxrkit import cli
from cxrkit.config import load
from cxrkit.data import loading
from cxrkit.data.sampling import SeededItems
from cxrkit.models import detectron2_export
from cxrkit.pretrain import fit
from cxrkit.pretrain.config import PretrainConfig
from cxrkit.pretrain.data import view_pairs
from cxrkit.pretrain.module import BarlowTwins

TINY = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny_pretrain.yaml"


def _config(phantoms, out: Path, *overrides: str) -> PretrainConfig:
    return load(
        PretrainConfig,
        files=[TINY],
        overrides=[
            f"data.manifest={phantoms.manifest}",
            f"data.cache={phantoms.cache}",
            f"output_dir={out}",
            *overrides,
        ],
    )


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_tiny_run_lowers_the_loss(phantoms, tmp_path):
    # Eight phantoms with fixed views (made by the real view transform), so that each step
    # optimises the same objective and the loss must fall, not just fluctuate with new crops.
    config = _config(phantoms, tmp_path / "run", "trainer.max_epochs=8", "trainer.max_steps=8")
    records = loading.load_records(config.data)
    pairs = view_pairs(
        records=records,
        cache=loading.open_cache(config.data),
        views=config.views,
        manifest=config.data.manifest,
        split="all",
    )
    views = SeededItems(pairs)
    fixed = [views[(i, 1000 + i)] for i in range(8)]
    view = fixed[0]["image"][0]  # BYOL recipe: grey uint8 views, float on the device
    assert view.shape == (1, 64, 64) and view.dtype == torch.uint8
    fit(config, dataset=fixed)
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(8))
    assert losses[7] < 0.5 * losses[0], losses


class _Killed(Exception):
    """Stands for SIGKILL / a lost node in the middle of a step."""


def test_resume_continues_exactly_and_export_loads_strictly(phantoms, tmp_path, monkeypatch):
    # 32 phantoms / batch 8 = 4 steps per epoch; a checkpoint every 3 steps. The interrupted run
    # dies inside step 5 (after the step-3 checkpoint, mid-epoch), and the resumed run crosses
    # into the second epoch.
    full, split = tmp_path / "full", tmp_path / "split"
    overrides = [
        f"data.manifest={phantoms.manifest}",
        f"data.cache={phantoms.cache}",
        "trainer.max_epochs=2",
        "trainer.max_steps=6",
        "trainer.checkpoint_every_n_steps=3",
    ]
    assert cli.main(["pretrain", "--config", str(TINY), f"output_dir={full}", *overrides]) == 0

    config = _config(phantoms, split, *overrides[2:])
    original_step = BarlowTwins.training_step

    def dying_step(self, batch, batch_idx):
        if self.global_step == 4:
            raise _Killed
        return original_step(self, batch, batch_idx)

    with monkeypatch.context() as m:
        m.setattr(BarlowTwins, "training_step", dying_step)
        with pytest.raises(_Killed):
            fit(config)
    ckpt = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["config"]["output_dir"] == str(split)  # resolved config inside
    fit(config)  # resumes automatically from checkpoints/last.ckpt

    # the resumed run continued at step 3 and saw the same batches: same losses, same weights
    assert sorted(_losses(split)) == [0, 1, 2, 3, 4, 5]
    for step, loss in _losses(full).items():
        assert _losses(split)[step] == pytest.approx(loss, rel=1e-4), step
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], atol=1e-5), key
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i, s in state_a.items():
        assert torch.allclose(s["momentum_buffer"], state_b[i]["momentum_buffer"], atol=1e-5)

    # backbone.pth: torchvision names, strict load into resnet50 without fc, the trained weights
    model = torchvision.models.resnet50()
    model.fc = torch.nn.Identity()
    exported = torch.load(full / "backbone.pth", weights_only=True)
    model.load_state_dict(exported, strict=True)
    for key, value in exported.items():
        assert torch.equal(value, a["state_dict"][f"backbone.{key}"].float()), key

    # backbone_d2.pkl: the same tensors under detectron2's names
    with (full / "backbone_d2.pkl").open("rb") as f:
        d2 = pickle.load(f)
    assert d2["matching_heuristics"] is True and "__author__" in d2
    assert d2["model"]["res5.2.conv3.norm.running_var"].shape == (2048,)
    for name, array in d2["model"].items():
        assert torch.equal(
            torch.from_numpy(array), exported[detectron2_export.from_detectron2_name(name)]
        ), name
    assert (full / "config.yaml").is_file() and list((full / "tensorboard").iterdir())


@pytest.mark.slow  # ~35 s: two spawned processes each import Lightning and build ResNet-50
def test_lightning_ddp_two_processes_on_cpu(phantoms, tmp_path):
    # The same run() under Lightning's DDP (gloo, two spawned processes): sharded sampler, the
    # gathered loss, rank-0-only files, the export after the barrier.
    out = tmp_path / "ddp"
    config = _config(
        phantoms,
        out,
        "trainer.strategy=ddp_spawn",
        "trainer.devices=2",
        "data.batch_size=4",
        "trainer.max_steps=2",
    )
    backbone = fit(config).artifacts["backbone"]
    assert backbone.is_file() and (out / "backbone_d2.pkl").is_file()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert sorted(_losses(out)) == [0, 1]


def test_resume_without_the_initial_weights_file_and_the_backbone_feeds_finetune(
    phantoms, tmp_path, monkeypatch
):
    # Start from a backbone.pth (model.init=checkpoint), die after the step-2 checkpoint, delete
    # the file, resume: the data order is the resumable sampler's (mid-epoch is fine here), so the
    # resumed run must end on the uninterrupted run's weights.
    from cxrkit import finetune, pretrain
    from cxrkit.finetune.model import build_detector, from_config
    from cxrkit.models.backbones import build_resnet50
    from cxrkit.pretrain.handoff import export_backbone

    torch.manual_seed(5)
    weights, _ = export_backbone(state=build_resnet50().state_dict(), out_dir=tmp_path / "init")
    overrides = [
        "model.init=checkpoint",
        f"model.weights={weights}",
        "trainer.max_steps=4",
        "trainer.checkpoint_every_n_steps=2",
    ]
    full = pretrain.fit(_config(phantoms, tmp_path / "full", *overrides))
    split = _config(phantoms, tmp_path / "split", *overrides)
    original_step = BarlowTwins.training_step

    def dying_step(self, batch, batch_idx):
        if self.global_step == 2:
            raise _Killed
        return original_step(self, batch, batch_idx)

    with monkeypatch.context() as m:
        m.setattr(BarlowTwins, "training_step", dying_step)
        with pytest.raises(_Killed):
            pretrain.fit(split)
    weights.unlink()
    resumed = pretrain.fit(split)
    a = torch.load(full.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], atol=1e-5), key

    # the artifacts: the backbone loads by itself and into the finetune detector's body
    backbone = pretrain.load(resumed.artifacts["backbone"])
    assert backbone(torch.rand(1, 3, 64, 64)).shape == (1, 2048)
    assert resumed.artifacts["detectron2"].is_file()
    cfg = cxrkit.load_config(
        finetune.Config,
        Path(__file__).resolve().parents[2] / "configs" / "finetune" / "tiny_faster_rcnn.yaml",
        overrides=["model.init=checkpoint", f"model.weights={resumed.artifacts['backbone']}"],
    )
    body = build_detector(**from_config(cfg)).backbone.body.state_dict()
    assert torch.equal(
        body["layer4.2.conv3.weight"], backbone.state_dict()["layer4.2.conv3.weight"]
    )


def test_a_longer_schedule_on_a_finished_run_is_refused(phantoms, tmp_path):
    from cxrkit.errors import ConfigError

    out = tmp_path / "run"
    fit(_config(phantoms, out, "trainer.max_steps=2", "trainer.max_epochs=-1"))
    with pytest.raises(ConfigError, match=r"trainer.max_steps 2 -> 4.*--resume never"):
        fit(_config(phantoms, out, "trainer.max_steps=4", "trainer.max_epochs=-1"))
