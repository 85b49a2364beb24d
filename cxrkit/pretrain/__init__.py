"""cxrkit.pretrain."""
