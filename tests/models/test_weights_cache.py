"""``init: imagenet`` without a path takes torchvision's file from the user's torch cache."""

from __future__ import annotations

import pytest

from cxrkit.errors import ConfigError
from cxrkit.models.weights import torch_cache_dir, weights_file


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert torch_cache_dir() == folder
    folder.mkdir(parents=True)
    return folder


def test_the_one_cached_file_is_found_without_a_path(torch_home):
    (torch_home / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert weights_file(init="imagenet", weights="") == str(torch_home / "resnet50-0676ba61.pth")
    # a given path always wins
    assert weights_file(init="imagenet", weights="/w.pth") == "/w.pth"


def test_two_cached_files_are_ambiguous_and_the_message_names_both(torch_home):
    for name in ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"):
        (torch_home / name).write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"2 ImageNet resnet50 files.*0676ba61.*model.weights"):
        weights_file(init="imagenet", weights=None)


def test_no_cached_file_says_where_one_may_go(torch_home):
    (torch_home / "densenet121-a639ec97.pth").write_bytes(b"x")  # another architecture's file
    with pytest.raises(ConfigError, match=rf"resnet50-11ad3fa6.pth.*put it in {torch_home}"):
        weights_file(init="imagenet", weights="")
    assert weights_file(init="imagenet", weights="", arch="densenet121").endswith(
        "densenet121-a639ec97.pth"
    )


def test_checkpoint_and_random_never_look_in_the_cache(torch_home):
    (torch_home / "resnet50-0676ba61.pth").write_bytes(b"x")
    assert weights_file(init="random", weights="") is None
    with pytest.raises(ConfigError, match="backbone.pth or .ckpt"):
        weights_file(init="checkpoint", weights="")
