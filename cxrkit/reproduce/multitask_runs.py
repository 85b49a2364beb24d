"""Pieces the multitask reproduction drivers share (``reproduce kcr`` and ``reproduce guendel``):
their protocol configs in ``configs/multitask/``, phantom data for ``--scale tiny``, and a
training run resumed from its own checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrkit.errors import MissingFileError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "multitask"


def config_file(name: str, *, config_dir: Path | None = None) -> Path:
    """``configs/multitask/<name>.yaml`` of the source checkout (or ``config_dir``).

    Raises:
        MissingFileError: no such file (an installed wheel has no ``configs/``: pass the folder).
    """
    path = Path(config_dir or CONFIG_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise MissingFileError(
            f"{path}: protocol config not found; pass the folder holding cxrkit's "
            "configs/multitask/*.yaml (--config-dir)"
        )
    return path


def load_model_config(name: str, *, config_dir: Path | None, overrides: Sequence[str]) -> Any:
    """The multitask config ``name`` with ``overrides`` (``key=value``) applied."""
    from cxrkit import multitask
    from cxrkit.config import load

    return load(
        multitask.Config, files=[config_file(name, config_dir=config_dir)], overrides=overrides
    )


def synth_manifest(
    out: Path,
    *,
    n: int,
    size: int,
    seed: int,
    fractions: str,
    abnormal_fraction: float = 0.7,
) -> Path:
    """Phantoms in NIH layout with AP and PA films, lung and heart masks and boxes, read by the
    generic CSV adapter into ``out/manifest.parquet`` (splits by patient with ``fractions``)."""
    from cxrkit import synth
    from cxrkit.data.records import write_manifest
    from cxrkit.data.sources.folder import prepare_csv

    synth.generate(
        out_dir=out,
        n=n,
        size=size,
        seed=seed,
        abnormal_fraction=abnormal_fraction,
        ap_fraction=0.5,
        datasets=("nih",),
        progress=False,
    )
    prepared = prepare_csv(
        root=out / "nih",
        csv_path="phantoms.csv",
        boxes_path="phantom_boxes.csv",
        source="phantom",
        fractions=fractions,
        seed=seed,
    )
    return write_manifest(prepared.records, out / "manifest.parquet")


def train_model(config: Any) -> dict[str, Any]:
    """``multitask.fit`` resumed from its own checkpoint when one exists; what it returns."""
    from cxrkit import multitask

    result = multitask.fit(config, resume="auto")
    return {
        "output_dir": str(result.output_dir),
        "model": str(result.artifacts["model"]),
        "checkpoint": str(result.checkpoint) if result.checkpoint else "",
        "predictions": str(result.artifacts.get("predictions", "")),
        "selection": config.selection,
    }
