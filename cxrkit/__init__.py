"""cxrkit: chest X-ray pretraining, localisation, multi-task models and their evaluation."""

import os

# albumentations asks PyPI for a newer release on import: a network call at run time, which offline
# hospital clusters refuse slowly. Users can still set the variable themselves.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
