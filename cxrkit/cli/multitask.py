"""``cxrkit multitask`` (moving here from cxrkit.multitask.cli)."""

from cxrkit.multitask.cli import register

__all__ = ["register"]
