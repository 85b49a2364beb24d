"""cxrkit.multitask."""
