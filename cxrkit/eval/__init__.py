"""cxrkit.eval."""
