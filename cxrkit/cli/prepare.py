"""``cxrkit prepare`` (moving here from cxrkit.data.sources)."""

from cxrkit.data.sources import register

__all__ = ["register"]
