"""cxrkit: chest X-ray pretraining, localisation, multi-task models and their evaluation."""

__version__ = "0.1.0"
