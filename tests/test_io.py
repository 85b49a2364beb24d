"""Atomic writes, hashes and the one model-file format."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from cxrkit import io
from cxrkit.errors import CheckpointError, ConfigError, MissingFileError


def test_atomic_write_bytes_text_and_writer(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    assert io.atomic_write(target, b"\x00\x01") == target and target.read_bytes() == b"\x00\x01"
    io.atomic_write(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    seen: list[Path] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("from a writer")

    io.atomic_write(tmp_path / "plot.png", writer)
    assert (tmp_path / "plot.png").read_text() == "from a writer"
    # the temporary file sits beside the target and keeps its suffix (savefig picks the format)
    assert seen[0].parent == tmp_path and seen[0].suffix == ".png" and seen[0].name.startswith(".")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "plot.png"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        io.atomic_write(target, broken)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_temp_names_differ_per_call(tmp_path: Path) -> None:
    names = {io.temp_path(tmp_path / "x.csv") for _ in range(50)}
    assert len(names) == 50


def test_sha256_of_bytes_and_files(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # more than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert io.sha256(data) == io.sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_model_file_round_trip(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    path = io.save_model(
        tmp_path / "m.pt",
        kind="detector",
        state_dict=net.state_dict(),
        config={"a": 1},
        classes=["x", "y"],
    )
    blob = io.load_model(path, kind="detector", hint="train one")
    assert blob["format"] == io.MODEL_FORMAT and blob["classes"] == ["x", "y"]
    assert blob["config"] == {"a": 1}
    torch.testing.assert_close(blob["state_dict"]["weight"], net.weight.detach())
    with pytest.raises(CheckpointError, match="a cxrkit detector model file, not a multitask one"):
        io.load_model(path, kind="multitask", hint="")


def test_model_file_errors_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingFileError, match=r"nope\.pt: detector model file not found; train"):
        io.load_model(tmp_path / "nope.pt", kind="detector", hint="train one")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: not a readable"):
        io.load_model(tmp_path / "empty.pt", kind="detector", hint="")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="needs 'state_dict' and 'config'"):
        io.load_model(tmp_path / "other.pt", kind="detector", hint="")

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (tmp_path / "pwned", "x"))

    torch.save({"state_dict": {}, "config": {}, "x": Payload()}, tmp_path / "evil.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="weights_only=True") as caught:
        io.load_model(tmp_path / "evil.pt", kind="detector", hint="")
    assert not (tmp_path / "pwned").exists()
    # torch's advice to turn weights_only off is never passed on; what the file holds is
    assert "weights_only=False" not in str(caught.value)
    assert "weights_only` set to `False`" not in str(caught.value)
    assert "Unsupported global" in str(caught.value) or "WeightsUnpickler" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("scan.png", b"\x89PNG\r\n\x1a\n" + bytes(32), "a PNG image"),
        ("scan.jpg", b"\xff\xd8\xff\xe0" + bytes(32), "a JPEG image"),
        ("scan.dcm", bytes(128) + b"DICM" + bytes(32), "a DICOM file"),
        ("ensemble.json", b'  {"members": []}', "a JSON file"),
        ("config.yaml", b"model:\n  init: random\n", "a text file"),
    ],
)
def test_a_file_of_another_kind_is_named_instead_of_unpickled(tmp_path, name, content, kind):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        io.load_model(tmp_path / name, kind="detector", hint="train one with `cxrkit finetune`")
    message = str(caught.value)
    assert f"this is {kind}" in message and "not a detector model file" in message
    assert "train one with `cxrkit finetune`" in message and "weights_only" not in message


def test_check_output_dir_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="below a file"):
        io.check_output_dir(tmp_path / "file" / "run")
    with pytest.raises(ConfigError, match="below a file"):
        io.check_output_dir(tmp_path / "file")
    assert io.check_output_dir(tmp_path / "a" / "b").is_dir()
