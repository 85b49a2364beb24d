"""cxrkit.models."""
