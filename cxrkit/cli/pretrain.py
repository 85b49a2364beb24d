"""``cxrkit pretrain`` (moving here from cxrkit.pretrain.cli)."""

from cxrkit.pretrain.cli import register

__all__ = ["register"]
