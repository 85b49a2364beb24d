"""Fixtures of the detector tests (the toy dataset itself is built in toy_vindr.py)."""

from __future__ import annotations

import pytest

from .toy_vindr import ToyData, make_toy


@pytest.fixture(scope="session")
def toy(tmp_path_factory: pytest.TempPathFactory) -> ToyData:
    return make_toy(tmp_path_factory.mktemp("toy_vindr"))
