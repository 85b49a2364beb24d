"""Tests of stage two (cxrkit.finetune)."""
