"""``cxrkit eval`` (moving here from cxrkit.eval.cli)."""

from cxrkit.eval.cli import register

__all__ = ["register"]
