from dataclasses import dataclass, field

import pytest

from cxrkit import config
from cxrkit.errors import ConfigError, MissingFileError


@dataclass
class StageConfig:
    output_dir: str = "runs/x"
    data: config.DataConfig = field(default_factory=config.DataConfig)
    trainer: config.TrainerConfig = field(default_factory=config.TrainerConfig)
    findings: list[str] = field(default_factory=lambda: ["Effusion", "Nodule"])


def test_defaults_then_yaml_then_overrides(tmp_path):
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text(
        "data:\n  batch_size: 8\n  preprocess:\n    size: 256\ntrainer:\n  max_steps: 5\n"
    )
    cfg = config.load(
        StageConfig, files=[yaml_file], overrides=["trainer.max_steps=7", "findings=[A,B,C]"]
    )
    assert isinstance(cfg, StageConfig) and isinstance(cfg.data.preprocess, config.PreprocessConfig)
    assert cfg.data.batch_size == 8  # from YAML
    assert cfg.data.preprocess.size == 256  # nested YAML
    assert cfg.trainer.max_steps == 7  # override beats YAML
    assert cfg.findings == ["A", "B", "C"]
    assert cfg.data.num_workers == config.DataConfig().num_workers  # untouched default


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.bogus=1", "bogus"),
        ("nope=3", "nope"),
        ("data.batch_size=abc", "data.batch_size"),
        ("data.on_error=maybe", "on_error"),
        ("trainer.precision=8", "precision"),
        ("data.preprocess.clip_low=99.9", "clip_low"),
        ("novalue", "key=value"),
    ],
)
def test_bad_keys_and_values_fail_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        config.load(StageConfig, overrides=[override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*max_stepz"):
        config.load(StageConfig, files=[bad])


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(MissingFileError, match="nothere.yaml"):
        config.load(StageConfig, files=[tmp_path / "nothere.yaml"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(StageConfig, files=[tmp_path / "list.yaml"])


def test_saved_config_loads_back_identical(tmp_path):
    cfg = config.load(StageConfig, overrides=["data.manifest=m.parquet", "trainer.seed=3"])
    path = config.save(cfg, tmp_path / "run" / "config.yaml")
    assert config.load(StageConfig, files=[path]) == cfg
    assert not list((tmp_path / "run").glob(".*tmp*"))  # atomic write left no temp file


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.devices=abc", r"trainer.devices must be 'auto', a count .* got 'abc'"),
        ("trainer.devices=0;1", r"trainer.devices must be"),
        ("trainer.max_steps=0", r"trainer.max_steps must be -1 .* or >= 1, got 0"),
        ("trainer.max_steps=-5", r"trainer.max_steps must be"),
        ("trainer.max_epochs=0", r"trainer.max_epochs must be -1 or >= 1, got 0"),
    ],
)
def test_trainer_values_that_cannot_run_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load(StageConfig, overrides=[override])


def test_trainer_device_forms_that_run():
    from cxrkit.engine import _devices

    for text, parsed in [
        ("auto", "auto"),
        ("4", 4),
        ("-1", -1),
        ("0,1", [0, 1]),
        (" 2 , 3 ", [2, 3]),
    ]:
        cfg = config.load(StageConfig, overrides=[f"trainer.devices='{text}'"])
        assert _devices(cfg.trainer.devices) == parsed


def test_num_workers_auto_is_resolved_from_the_cores_and_the_ranks(monkeypatch):
    import os

    from cxrkit.config import AUTO_WORKERS_CAP, DataConfig, auto_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(40)), raising=False)
    assert auto_workers() == AUTO_WORKERS_CAP
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 40 cores for 8 GPU processes: 5 each
    assert auto_workers() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert auto_workers() == 0
    assert config.load(DataConfig, overrides=["num_workers=auto"]).num_workers == 0
    assert config.load(DataConfig, overrides=["num_workers=6"]).num_workers == 6
    with pytest.raises(ConfigError, match="num_workers must be a number or 'auto'"):
        config.load(DataConfig, overrides=["num_workers=many"])


def test_precision_auto_is_32_bit_without_a_gpu():
    from cxrkit.config import TrainerConfig
    from cxrkit.engine import resolve_precision

    assert config.load(TrainerConfig, overrides=["precision=auto"]).precision == "auto"
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"  # as given
