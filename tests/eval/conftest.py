"""Factories for small manifests and predictions used by the eval tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cxrkit.data.records import Box, Record


@pytest.fixture
def record() -> Callable[..., Record]:
    """``record("img1", labels={...}, view="AP", patient="p1", boxes=[...])``: a 100x100 image."""

    def make(
        image_id: str,
        *,
        labels: dict[str, int] | None = None,
        view: str = "PA",
        patient: str | None = None,
        boxes: list[Box] | None = None,
        width: int = 100,
        height: int = 100,
        split: str = "test",
    ) -> Record:
        return Record(
            image_id=image_id,
            source="test",
            path=f"{image_id}.png",
            patient_id=patient or f"patient-{image_id}",
            width=width,
            height=height,
            view=view,
            split=split,
            labels=dict(labels or {}),
            boxes=list(boxes or []),
        )

    return make
