"""``cxrkit synth`` (moving here from cxrkit.data.synthetic)."""

from cxrkit.data.synthetic import register

__all__ = ["register"]
