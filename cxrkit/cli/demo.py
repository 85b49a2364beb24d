"""``cxrkit demo`` (moving here from cxrkit.demo)."""

from cxrkit.demo import register

__all__ = ["register"]
