"""The shared Lightning plumbing: run directory layout, checkpoints, exact resume, loss checks."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxrkit import engine
from cxrkit.config import TrainerConfig, load
from cxrkit.data import loading
from cxrkit.errors import CheckpointError, MissingFileError, NonFiniteLossError


class _Regression(L.LightningModule):
    """A tiny model with BatchNorm, SGD with momentum and a scheduler: state worth resuming."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch["x"], batch["y"]
        losses = {"loss_mse": nn.functional.mse_loss(self.net(x).squeeze(1), y)}
        engine.check_finite(losses, step=self.global_step, image_ids=[f"img{batch_idx}"])
        loss = sum(losses.values())
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch["x"], batch["y"]
        self.log("val/neg_mse", -nn.functional.mse_loss(self.net(x).squeeze(1), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loader(*, train: bool = True, num_workers: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    items = [{"x": xi, "y": yi} for xi, yi in zip(x, y, strict=True)]
    # a training loader is shuffled by a ResumableSampler of the seed: exact resume mid-epoch
    return engine.build_loader(items, batch_size=8, num_workers=num_workers, train=train, seed=0)


def _config(**kw) -> TrainerConfig:
    base = dict(accelerator="cpu", devices="1", max_epochs=10, progress_bar=False)
    base.update(kw)
    return TrainerConfig(**base)


def _run(out: Path, resume="auto", **kw) -> _Regression:
    L.seed_everything(0)
    module = _Regression()
    trainer = engine.build_trainer(config=_config(**kw), output_dir=out)
    engine.fit(
        trainer=trainer, module=module, train_dataloaders=_loader(), output_dir=out, resume=resume
    )
    return module


def test_run_directory_layout_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    _run(out, max_steps=5, checkpoint_every_n_steps=2, log_every_n_steps=1)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5  # the end-of-training checkpoint, not only step 4
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == [0, 1, 2, 3, 4]
    assert any("lr-SGD" in r for r in rows)  # LearningRateMonitor


@pytest.mark.parametrize("stops", [(8,), (5,), (3, 11)], ids=["epoch-end", "mid", "twice"])
def test_exact_resume_of_a_shuffled_loader_matches_uninterrupted_run(tmp_path, stops):
    full = _run(tmp_path / "full", max_steps=19, checkpoint_every_n_steps=100)
    # stop at each step of `stops` (end-of-training checkpoint; 8 batches an epoch, so 8 is an
    # epoch's end, 5, 3 and 11 are mid-epoch), continue the directory, finally to 19.
    for stop in stops:
        _run(tmp_path / "split", max_steps=stop, checkpoint_every_n_steps=100)
    resumed = _run(tmp_path / "split", max_steps=19, checkpoint_every_n_steps=100)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_shuffled_loader_differs_per_epoch_and_is_independent_of_workers():
    def epoch_orders(loader, epochs=2):
        out = []
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            out.append(torch.cat([b["y"] for b in loader]))
        return out

    zero = epoch_orders(_loader(num_workers=0))
    two = epoch_orders(_loader(num_workers=2))
    assert all(torch.equal(a, b) for a, b in zip(zero, two, strict=True))
    assert not torch.equal(zero[0], zero[1])  # a new permutation each epoch
    assert torch.equal(zero[0].sort().values, zero[1].sort().values)  # of the same 64 items


def test_fit_shards_a_training_loader_and_keeps_its_position(tmp_path):
    from types import SimpleNamespace

    from torch.utils.data import DistributedSampler

    from cxrkit.data.sampling import ResumableSampler, SeededItems

    loader = _loader()
    assert isinstance(loader.sampler, ResumableSampler)
    assert isinstance(loader.dataset, SeededItems)
    trainer = engine.build_trainer(config=_config(max_steps=3), output_dir=tmp_path)
    engine.fit(trainer=trainer, module=_Regression(), train_dataloaders=loader, output_dir=tmp_path)
    [tracker] = [c for c in trainer.callbacks if getattr(c, "sampler", None) is loader.sampler]
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    assert {"epoch": 0, "batches_done": 3} in saved.values()  # stopped 3 batches into epoch 0
    # under DDP each rank gets its DistributedSampler share (what setup does with the trainer's)
    tracker.setup(SimpleNamespace(world_size=2, global_rank=1), None, "fit")
    reference = DistributedSampler(
        list(range(64)), num_replicas=2, rank=1, shuffle=True, seed=0, drop_last=True
    )
    assert [i for i, _ in loader.sampler] == list(reference)
    # a restored position starts the epoch that many batches in
    tracker.load_state_dict({"epoch": 2, "batches_done": 3})
    assert (loader.sampler.epoch, loader.sampler.skip) == (2, 24)


def test_resume_false_starts_fresh_and_missing_path_is_explained(tmp_path):
    out = tmp_path / "run"
    _run(out, max_steps=2)
    assert engine.resolve_resume(out, "auto") == str(out / "checkpoints" / "last.ckpt")
    assert engine.resolve_resume(out, False) is None
    assert engine.resolve_resume(tmp_path / "empty", "auto") is None
    with pytest.raises(MissingFileError, match="nope.ckpt"):
        engine.resolve_resume(out, tmp_path / "nope.ckpt")


def test_best_checkpoint_by_monitor(tmp_path):
    out = tmp_path / "run"
    L.seed_everything(0)
    trainer = engine.build_trainer(
        config=_config(max_epochs=2), output_dir=out, monitor="val/neg_mse", mode="max"
    )
    engine.fit(
        trainer=trainer,
        module=_Regression(),
        train_dataloaders=_loader(),
        val_dataloaders=_loader(),
        output_dir=out,
    )
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_check_finite_names_term_step_and_images():
    ok = {"loss_cls": torch.tensor(0.5), "loss_box_reg": torch.tensor(1.0)}
    engine.check_finite(ok, step=3, image_ids=["a"])
    bad = {"loss_cls": torch.tensor(0.5), "loss_box_reg": torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteLossError) as info:
        engine.check_finite(bad, step=17, image_ids=["a", "b", "c"])
    assert str(info.value) == "non-finite loss 'loss_box_reg'=nan at step 17; batch images: a, b, c"
    with pytest.raises(NonFiniteLossError, match="'x'=inf at step 0"):
        engine.check_finite({"x": torch.tensor(float("inf"))}, step=0, image_ids=[])


def test_non_finite_loss_stops_training(tmp_path):
    class Exploding(_Regression):
        def training_step(self, batch, batch_idx):
            x, y = batch["x"], batch["y"]
            scale = float("nan") if self.global_step == 2 else 1.0
            losses = {"loss_mse": nn.functional.mse_loss(self.net(x).squeeze(1), y) * scale}
            engine.check_finite(losses, step=self.global_step, image_ids=[f"img{batch_idx}"])
            return sum(losses.values())

    trainer = engine.build_trainer(config=_config(max_steps=5), output_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match="at step 2; batch images: img2"):
        trainer.fit(Exploding(), train_dataloaders=_loader())


def test_save_run_config_round_trips(tmp_path):
    cfg = _config(max_steps=9)
    engine.save_run_config(cfg, tmp_path)
    assert load(TrainerConfig, files=[tmp_path / "config.yaml"]) == cfg


def test_channels_last_and_compile_keep_state_dict_names():
    module = nn.Module()
    module.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    module.head = nn.Linear(4, 2)
    keys = list(module.state_dict())
    engine.apply_channels_last_and_compile(module, _config(channels_last=True, compile=True))
    assert module.backbone[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert list(module.state_dict()) == keys  # no "_orig_mod." prefixes
    assert module.backbone._compiled_call_impl is not None


class _Payload:
    """Unpickling this runs code (writes a marker file): what a planted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)


@pytest.mark.parametrize("where", ["last", "explicit"])
def test_malicious_checkpoint_is_refused_even_when_torch_is_told_otherwise(
    tmp_path, monkeypatch, where
):
    # With this variable torch.load defaults to weights_only=False: only an explicit True holds.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    out, marker = tmp_path / "run", tmp_path / "marker"
    planted = out / "checkpoints" / "last.ckpt" if where == "last" else tmp_path / "evil.ckpt"
    _plant(planted, marker)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt|last\.ckpt") as info:
        _run(out, resume="auto" if where == "last" else planted, max_steps=2)
    assert "weights_only=True" in str(info.value) and "--resume never" in str(info.value)
    assert not marker.exists()


def test_lightning_resume_itself_loads_weights_only(tmp_path, monkeypatch):
    # Past cxrkit's own check, the load inside trainer.fit must be weights_only too.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setattr(engine, "check_checkpoint", lambda path: None)
    out, marker = tmp_path / "run", tmp_path / "marker"
    _plant(out / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(Exception, match="Weights only load failed"):
        _run(out, max_steps=2)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "torn", "not a checkpoint"])
def test_torn_or_empty_last_checkpoint_is_a_named_error(tmp_path, damage):
    out = tmp_path / "run"
    _run(out, max_steps=3)
    last = out / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    if damage == "empty":
        last.write_bytes(b"")
    elif damage == "torn":
        last.write_bytes(good[: len(good) // 2])  # killed half-way through the write
    else:
        torch.save({"weights": torch.zeros(2)}, last)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: .*delete it .*--resume never"):
        _run(out, max_steps=6)
    _run(out, resume=False, max_steps=3)  # the way out the message gives works


def test_checkpoint_error_at_the_cli_has_no_traceback(tmp_path, capsys):
    from cxrkit import cli

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")
    code = cli.main(
        [
            "pretrain",
            "--config",
            "configs/pretrain/tiny_pretrain.yaml",
            f"output_dir={out}",
            "data.manifest=nowhere.parquet",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "last.ckpt: not a complete checkpoint" in err and "--resume never" in err


def test_prepare_run_reads_the_manifest_once_and_keeps_each_split(
    tmp_path, monkeypatch, split_data
):
    reads = []
    real = loading.read_manifest
    monkeypatch.setattr(loading, "read_manifest", lambda p, **kw: reads.append(p) or real(p, **kw))
    data = split_data

    class Config:
        output_dir = str(tmp_path / "run")
        trainer = TrainerConfig(seed=3)

    monkeypatch.setattr(engine, "save_run_config", lambda config, out: None)
    run = engine.prepare_run(Config(), data=data, splits=("train", "val"))
    assert len(reads) == 1
    assert [r.image_id for r in run.records["train"]] == ["i0", "i1"]
    assert [r.image_id for r in run.records["val"]] == ["i2"] and "test" not in run.records
    assert run.cache is not None and "i3" in run.cache
    assert run.checkpoint is None and not run.resuming


def test_best_checkpoint_prefers_best_then_last(tmp_path):
    assert engine.best_checkpoint(tmp_path) is None
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"x")
    assert engine.best_checkpoint(tmp_path) == ckpts / "last.ckpt"
    (ckpts / "best.ckpt").write_bytes(b"x")
    assert engine.best_checkpoint(tmp_path) == ckpts / "best.ckpt"


def test_inference_device_and_loader():
    assert engine.inference_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert engine.inference_device("auto") == torch.device("cpu")
        with pytest.raises(engine.ConfigError, match="no CUDA device"):
            engine.inference_device("cuda:0")
    with pytest.raises(engine.ConfigError, match="not auto, cpu, cuda or cuda:N"):
        engine.inference_device("tpu")
    items = [{"image_id": f"i{k}", "image": torch.zeros(1, 2, 2)} for k in range(5)]
    loader = engine.build_loader(items, batch_size=2, num_workers=0, train=False)
    batches = list(loader)
    assert [b["image_id"] for b in batches] == [["i0", "i1"], ["i2", "i3"], ["i4"]]
    assert batches[0]["image"].shape == (2, 1, 2, 2)
    dropped = engine.build_loader(items, batch_size=2, num_workers=0, train=True, drop_last=True)
    assert len(list(dropped)) == 2


def test_lightning_banners_are_dropped_and_the_stop_reason_kept(tmp_path, caplog):
    import logging

    # another test (the demo) may have raised Lightning's loggers to WARNING: set them here
    with (
        caplog.at_level(logging.INFO, logger="lightning.pytorch"),
        caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"),
    ):
        _run(tmp_path / "run", max_steps=2)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "available: " in m or m.startswith("💡")], messages
    assert any("`Trainer.fit` stopped: `max_steps=2` reached" in m for m in messages), messages


def test_resume_with_a_changed_schedule_length_is_refused(tmp_path):
    from dataclasses import dataclass, field

    from cxrkit.errors import ConfigError

    @dataclass
    class _Stage:
        output_dir: str = ""
        trainer: TrainerConfig = field(default_factory=TrainerConfig)

    out = tmp_path / "run"
    first = _Stage(output_dir=str(out), trainer=_config(max_steps=4))
    engine.prepare_run(first, schedule_keys=("trainer.max_steps",))
    _run(out, max_steps=4)  # leaves checkpoints/last.ckpt; config.yaml is the one above
    longer = _Stage(output_dir=str(out), trainer=_config(max_steps=8))
    with pytest.raises(ConfigError, match=r"trainer.max_steps 4 -> 8.*--resume never"):
        engine.prepare_run(longer, schedule_keys=("trainer.max_steps",))
    with pytest.raises(ConfigError, match=r"trainer.max_steps 4 -> 8"):
        engine.prepare_run(longer, schedule_keys=("trainer.",))
    # the same length resumes; a key outside the schedule may change; --resume never starts over
    same = _Stage(output_dir=str(out), trainer=_config(max_steps=4, log_every_n_steps=3))
    assert engine.prepare_run(same, schedule_keys=("trainer.max_steps",)).resuming
    assert not engine.prepare_run(
        longer, resume=False, schedule_keys=("trainer.max_steps",)
    ).resuming
