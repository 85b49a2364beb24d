"""cxrkit.finetune."""
