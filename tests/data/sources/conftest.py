"""Fixtures of the adapter tests: ``prepare`` runs the real ``cxrkit prepare`` command line."""

from __future__ import annotations

import pytest

from cxrkit import cli


@pytest.fixture
def prepare(capsys):
    """Run ``cxrkit prepare ...`` through the real command line; returns (exit code, out, err)."""

    def run(*argv):
        code = cli.main(["prepare", *map(str, argv)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
