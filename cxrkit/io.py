"""Files the package writes and reads back: atomic writes, hashes, and the one model-file format.

Every file cxrkit writes goes through :func:`atomic_write`: the bytes land in a temporary file
in the same folder, which then replaces the target with ``os.replace`` (atomic within one file
system), so a killed run leaves either the old file or the new one, never half of either, and a
rerun can trust whatever it finds.

A model file (``detector.pt``, ``model.pt``, an ensemble member) is one dict::

    {"format": "cxrkit-model", "kind": "detector", "state_dict": {...}, "config": {...}, ...extra}

written by :func:`save_model` and read by :func:`load_model` with ``torch.load(weights_only=True)``:
tensors, plain containers and strings only, so loading an untrusted file never runs code.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cxrkit.errors import CheckpointError, ConfigError, MissingFileError

MODEL_FORMAT = "cxrkit-model"


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique per process and call, keeping its suffix (libraries
    such as matplotlib choose the format from it): ``dir/.name.tmp<pid>-<hex>.png``."""
    return path.with_name(f".{path.stem}.tmp{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``path`` atomically; returns it.

    Args:
        path: the target; missing parent folders are created.
        data: the bytes, a text (UTF-8), or a function that writes a given temporary path (for
            writers that want a file name: ``torch.save``, ``pq.write_table``, ``savefig``).

    Raises:
        OSError: the folder cannot be written (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        elif isinstance(data, str):
            tmp.write_bytes(data.encode("utf-8"))
        else:
            data(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _nearest_existing(paths: tuple[Path, ...]) -> Path | None:
    """The first of ``paths`` (a path and its parents, nearest first) that exists."""
    return next((p for p in paths if p.exists()), None)


def check_output_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) as a writable folder, or raise :class:`ConfigError` naming it.

    Checked before any work starts, so a read-only or mistyped output path fails in a second, not
    after the training.
    """
    path = Path(path)
    existing = _nearest_existing((path, *path.parents))
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{path}: output directory is below a file ({existing})")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the output directory ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: output directory is not writable")
    return path


def check_output_file(path: str | Path) -> Path:
    """Check, before any work, that a file can be written at ``path``; returns it.

    Raises:
        ConfigError: ``path`` is a directory, lies below a file, or its nearest existing folder is
            not writable (missing folders are fine: :func:`atomic_write` creates them).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a file name")
    parent = _nearest_existing(path.parents)
    if parent is not None:
        if not parent.is_dir():
            raise ConfigError(f"{path}: cannot be written below {parent}, which is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{path}: folder {parent} is not writable")
    return path


def sha256(data: bytes | str | Path) -> str:
    """Hex sha256 of bytes, or of a file's contents when given a path."""
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with Path(data).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(
    path: str | Path,
    *,
    kind: str,
    state_dict: Mapping[str, Any],
    config: Mapping[str, Any],
    **extra: Any,
) -> Path:
    """Write a model file (module docstring) atomically; tensors are detached and moved to the CPU.

    Args:
        kind: what the file holds (``"detector"``, ``"multitask"``, ...), checked by
            :func:`load_model`.
        state_dict: the model's weights.
        config: the resolved configuration as plain data (``cxrkit.config.to_dict``).
        extra: further plain entries (class names, findings, metrics).
    """
    import torch

    state = {
        k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()
    }
    blob = {"format": MODEL_FORMAT, "kind": kind, "state_dict": state, "config": dict(config)}
    blob.update(extra)
    return atomic_write(path, lambda tmp: torch.save(blob, tmp))


def load_torch(path: str | Path, *, what: str, hint: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with errors for people.

    Args:
        what: what the file should be, for messages (``"detector"``).
        hint: how to get such a file, appended to the not-found message.
        mmap: map the file instead of reading its tensors (a cheap check of a large checkpoint).

    Raises:
        MissingFileError: no such file. CheckpointError: empty, torn, not a torch file, or holding
            objects that ``weights_only`` refuses.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: {what} not found; {hint}")
    with path.open("rb") as f:
        head = f.read(132)
    kind = _file_kind(head)
    if kind is not None:
        raise CheckpointError(f"{path}: this is {kind}, not a {what}; {hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False: never pass that on; keep the line that
        # names what the file holds
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next(
            (line for line in lines if "Unsupported" in line or "WeightsUnpickler" in line),
            "not a torch file",
        )
        raise CheckpointError(
            f"{path}: refused to load this {what}: it holds objects other than tensors and plain "
            f"containers ({detail}); cxrkit loads files only with weights_only=True, so that "
            "loading a file never runs code from it"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable {what} ({exc})") from None


# Leading bytes of files people pass by mistake where a torch file belongs.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"PAR1", "a Parquet file (a manifest?)"),
    (b"\x1f\x8b", "a gzip file (unpack it first?)"),
)


def _file_kind(head: bytes) -> str | None:
    """What a file that is not a torch file is, from its first bytes; None for a torch file (zip
    or pickle) or anything unrecognised."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if not head:
        return None  # empty: torch's own error says so
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[128:132] == b"DICM":
        return "a DICOM file"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "a JSON file"
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "a text file (YAML, CSV or a config?)"


def load_model(path: str | Path, *, kind: str, hint: str) -> dict[str, Any]:
    """Read a file written by :func:`save_model` of this ``kind``.

    Files written before the ``format`` key existed (``{"state_dict", "config", ...}``) are read
    too. Returns the whole dict.

    Raises:
        MissingFileError, CheckpointError: as :func:`load_torch`; also a file of another kind.
    """
    blob = load_torch(path, what=f"{kind} model file", hint=hint)
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise CheckpointError(
            f"{path}: not a cxrkit {kind} model file (needs 'state_dict' and 'config')"
        )
    found = blob.get("kind", kind)
    if found != kind:
        raise CheckpointError(f"{path}: a cxrkit {found} model file, not a {kind} one")
    if not isinstance(blob["config"], dict):
        raise CheckpointError(f"{path}: holds no {kind} configuration")
    return blob
