"""The drivers' command lines: overrides written as in the training commands or with --set."""

from __future__ import annotations

import pytest

from cxrkit import cli
from cxrkit.cli.reproduce import overrides_of
from cxrkit.errors import ConfigError


@pytest.mark.parametrize("paper", ["kcr", "guendel"])
def test_positional_and_set_overrides_both_reach_the_models(paper):
    args = cli.build_parser().parse_args(
        ["reproduce", paper, "--scale", "tiny", "--set", "a.b=1", "encoder.init=random"]
    )
    assert overrides_of(args) == ["a.b=1", "encoder.init=random"]


def test_a_word_without_equals_is_named():
    args = cli.build_parser().parse_args(["reproduce", "kcr", "encoder.init"])
    with pytest.raises(ConfigError, match="'encoder.init' is not a key=value override"):
        overrides_of(args)
    # and through the CLI: one line, exit status 1
    assert cli.main(["reproduce", "kcr", "--scale", "tiny", "oops"]) == 1
