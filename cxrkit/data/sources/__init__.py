"""cxrkit.data.sources."""
