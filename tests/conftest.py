"""Shared fixtures. Real sample data is read from ../shared/data (or $CXRKIT_SHARED_DATA) and tests
that need it skip cleanly when it is absent, as in a user's own clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("CXRKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample data (nih/, dicom/, chestx-det/); skips the test when absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real sample data not found at {root} (set CXRKIT_SHARED_DATA)")
    return root
