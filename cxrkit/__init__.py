"""cxrkit: chest X-ray pretraining, localisation, multi-task models and their evaluation."""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

# albumentations asks PyPI for a newer release on import: a network call at run time, which offline
# hospital clusters refuse slowly. Users can still set the variable themselves.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

T = TypeVar("T")


def load_config(
    schema: type[T], files: str | Path | Sequence[str | Path] = (), *, overrides: Sequence[str] = ()
) -> T:
    """A stage's typed config from YAML file(s) and ``key=value`` overrides.

    ``cxrkit.load_config(pretrain.Config, "configs/pretrain/tiny_pretrain.yaml",
    overrides=["trainer.max_steps=10"])``: unknown keys, wrong types and invalid values raise
    :class:`cxrkit.errors.ConfigError` naming the key or file, as on the command line.
    """
    from cxrkit import config

    paths = [files] if isinstance(files, (str, Path)) else list(files)
    return config.load(schema, files=paths, overrides=list(overrides))


__all__ = ["__version__", "load_config"]
