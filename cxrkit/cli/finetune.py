"""``cxrkit finetune`` (moving here from cxrkit.finetune.cli)."""

from cxrkit.finetune.cli import register

__all__ = ["register"]
