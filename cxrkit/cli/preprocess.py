"""``cxrkit preprocess`` (moving here from cxrkit.data.preprocess)."""

from cxrkit.data.preprocess import register

__all__ = ["register"]
