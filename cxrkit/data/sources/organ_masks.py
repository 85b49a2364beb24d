"""Public lung and heart mask sets -> records with organ masks, read in their released formats.

Guendel et al.'s segmentation head learns the lungs and the heart; these are the sets users have:

- **JSRT** (Shiraishi et al., AJR 2000; 247 PA films, 154 with a lung nodule ``JPCLN*``, 93
  without ``JPCNN*``) with the **SCR** masks (van Ginneken et al., Med Image Anal 2006). JSRT
  images are ``<id>.IMG``: raw 2048 x 2048 pixels, 12 bits in 16-bit **big-endian** words, no
  header (0.175 mm pixels). SCR masks are GIFs at 1024 x 1024, one per organ folder
  (``fold1/masks/left lung/JPCLN001.gif``, ``right lung``, ``heart``, ``left clavicle``,
  ``right clavicle``; folds ``fold1``/``fold2`` or none).
- **Montgomery County** (Jaeger et al., Quant Imaging Med Surg 2014; 138 PA films, ``_1`` = TB):
  ``CXR_png/MCUCXR_0001_0.png`` and one PNG per lung at the image's size,
  ``ManualMask/leftMask/*.png`` and ``ManualMask/rightMask/*.png``.
- **Shenzhen** (same paper; 662 PA films, ``_1`` = TB): ``CXR_png/CHNCXR_0001_0.png``; the lung
  masks (both lungs in one file, made for a subset by Stirenko et al. 2018) are
  ``mask/CHNCXR_0001_0_mask.png``.

Record contract: ``image_id`` = file stem; ``view`` = ``PA`` (every image of the three sets is a
PA film); ``patient_id`` = image_id (none of the releases has patient ids; each image is one
patient as far as their documentation says, flagged in ``meta["patient_id_from"]``);
``mask_paths``: ``lung`` (both lungs), ``heart`` and ``clavicle`` (both) where the set has them,
each a uint8 0/255 PNG at the image's size in ``masks_dir`` (a Shenzhen mask already at its
image's size is used where it lies). Labels: JSRT ``Nodule`` (from the ``JPCLN``/``JPCNN`` name),
Montgomery and Shenzhen ``Tuberculosis`` (from the ``_0``/``_1`` suffix).

:func:`attach_masks` gives NIH-style records (any manifest) organ masks kept in folders by image
id (``lung/00000001_000.png`` or ``..._mask.png``): ``cxrkit prepare masks``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cxrkit.data.records import Record
from cxrkit.data.sources.common import (
    DEFAULT_FRACTIONS,
    Issues,
    Prepared,
    index_files,
    split_fractions,
    write_png,
)
from cxrkit.errors import DataError, ImageReadError, MissingFileError

JSRT_SIZE = 2048  # JSRT: 2048 x 2048 pixels
JSRT_BITS = 12  # 12 bits stored in 16-bit big-endian words
JSRT_PIXEL_MM = 0.175
ORGANS = ("lung", "heart", "clavicle")
# SCR organ folder names -> the organ they are part of
SCR_FOLDERS = {
    "left lung": "lung",
    "right lung": "lung",
    "heart": "heart",
    "left clavicle": "clavicle",
    "right clavicle": "clavicle",
}
_TB_SUFFIX = re.compile(r"_([01])$")
_NO_PATIENTS = "the release has no patient ids: each image is its own patient (splits are by image)"


# ------------------------------------------------------------------------------------- readers
def read_jsrt(path: str | Path, *, invert: bool = True) -> np.ndarray:
    """A JSRT ``.IMG`` file as uint16 (2048, 2048), values 0..4095.

    The file is raw: 2048 x 2048 pixels, 12 bits in big-endian 16-bit words, no header (as the
    JSRT database documents it; it is read with numpy alone, no DICOM). The stored values are
    the digitised film's optical density, high = dark, as public JSRT readers assume (they
    display ``1 - value / 4095``); this is from memory of the JSRT documentation and those
    readers, not checked on this machine. So ``invert=True`` (the default) returns ``4095 -
    value``: high = bright, the MONOCHROME2 sense every other cxrkit image has. If your copy
    looks like a negative, pass ``invert=False`` (``--jsrt-no-invert``).

    Raises:
        ImageReadError: missing file, a size other than 2048 x 2048 x 2 bytes, or values above
            12 bits (not a JSRT file, or little-endian bytes).
    """
    path = Path(path)
    expected = JSRT_SIZE * JSRT_SIZE * 2
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read JSRT image ({exc.strerror})") from exc
    if size != expected:
        raise ImageReadError(
            f"{path}: {size} bytes, but a JSRT image is {JSRT_SIZE}x{JSRT_SIZE} 16-bit pixels "
            f"({expected} bytes, no header)"
        )
    pixels = np.fromfile(path, dtype=">u2").reshape(JSRT_SIZE, JSRT_SIZE)
    top = int(pixels.max())
    if top >= 1 << JSRT_BITS:
        raise ImageReadError(
            f"{path}: value {top} does not fit JSRT's {JSRT_BITS} bits (little-endian bytes, or "
            "not a JSRT image?)"
        )
    pixels = pixels.astype(np.uint16)
    return (np.uint16((1 << JSRT_BITS) - 1) - pixels) if invert else pixels


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file (GIF, PNG, ...) as bool (H, W): nonzero = inside. Read with Pillow, which
    decodes SCR's palette GIFs (OpenCV builds often have no GIF decoder).

    Raises:
        ImageReadError: missing or undecodable file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 0
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: mask file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable mask image ({exc})") from exc


def fit_mask(mask: np.ndarray, *, width: int, height: int, where: str) -> np.ndarray:
    """``mask`` at the image's size: nearest-neighbour scaling when only the scale differs (SCR's
    1024 px masks of 2048 px JSRT images); a different aspect ratio is a :class:`DataError`."""
    import cv2

    h, w = mask.shape
    if (w, h) == (width, height):
        return mask
    if abs(w * height - h * width) > 0.01 * w * height:
        raise DataError(
            f"{where}: mask is {w}x{h} but its image is {width}x{height} (another aspect ratio)"
        )
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized > 0


def _write_organ(mask: np.ndarray, *, masks_dir: Path, image_id: str, organ: str) -> str:
    from cxrkit.data.sources.chestxdet import mask_file_name

    path = masks_dir / mask_file_name(image_id, organ)
    write_png(path, np.where(mask, 255, 0).astype(np.uint8), what="mask")
    return str(path)


def _record(*, source: str, image_id: str, path: Path, width: int, height: int) -> Record:
    return Record(
        image_id=image_id,
        source=source,
        path=str(path),
        patient_id=image_id,
        view="PA",
        width=width,
        height=height,
        meta={"patient_id_from": "image_id"},
    )


def _tb_label(image_id: str) -> dict[str, int]:
    found = _TB_SUFFIX.search(image_id)
    return {"Tuberculosis": int(found.group(1))} if found else {}


def _folder(root: Path, given: str | Path | None, default: str, what: str) -> Path:
    folder = Path(given) if given is not None else root / default
    if not folder.is_absolute() and given is not None and not folder.is_dir():
        folder = root / folder
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: {what} folder not found")
    return folder


# ---------------------------------------------------------------------------------- JSRT + SCR
def scr_masks(scr_root: str | Path) -> dict[str, dict[str, list[Path]]]:
    """``image_id -> organ -> [files]`` of the SCR masks under ``scr_root`` (its organ folders are
    found at any depth, e.g. ``fold1/masks/left lung``); two files of one organ side and one image
    are a :class:`DataError`."""
    scr_root = Path(scr_root)
    if not scr_root.is_dir():
        raise MissingFileError(f"{scr_root}: SCR masks folder not found")
    found: dict[str, dict[str, list[Path]]] = {}
    by_side: dict[str, list[Path]] = {name: [] for name in SCR_FOLDERS}
    for folder, dirs, _ in os.walk(scr_root):
        for d in dirs:
            if d.lower() in SCR_FOLDERS:
                by_side[d.lower()].append(Path(folder) / d)
    if not any(by_side.values()):
        raise MissingFileError(
            f"{scr_root}: no SCR organ folders ({', '.join(repr(n) for n in SCR_FOLDERS)})"
        )
    for side, folders in by_side.items():
        for image_id, file in index_files(
            folders, suffixes=(".gif",), key=lambda p: p.stem
        ).items():
            found.setdefault(image_id, {}).setdefault(SCR_FOLDERS[side], []).append(file)
    return found


def load_jsrt(
    *,
    root: str | Path,
    scr: str | Path | None,
    images_dir: str | Path,
    masks_dir: str | Path,
    invert: bool = True,
    issues: Issues | None = None,
) -> list[Record]:
    """JSRT ``.IMG`` files under ``root`` (recursive) as records, with SCR masks from ``scr``.

    Each image is written as a 16-bit PNG (0..4095, :func:`read_jsrt`) to ``images_dir``, which
    the record's ``path`` names: cxrkit's image reader does not read headerless raw files.
    SCR's 1024 px masks are scaled to 2048 px (nearest neighbour) and united per organ. An organ
    with one side missing (a left lung without its right lung) is a :class:`DataError`; an image
    without any SCR mask keeps ``mask_paths`` empty.
    """
    issues = issues if issues is not None else Issues()
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise MissingFileError(f"{root}: JSRT folder not found")
    files = index_files([root], suffixes=(".img",), key=lambda p: p.stem)
    if not files:
        raise MissingFileError(f"{root}: no JSRT .IMG files found (searched recursively)")
    masks = scr_masks(scr) if scr is not None else {}
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    records = []
    for image_id, file in sorted(files.items()):
        try:
            pixels = read_jsrt(file, invert=invert)
            png = images_dir / f"{image_id}.png"
            write_png(png, pixels, what="image")
            record = _record(
                source="jsrt", image_id=image_id, path=png, width=JSRT_SIZE, height=JSRT_SIZE
            )
            record.meta |= {
                "original": str(file),
                "pixel_spacing": [JSRT_PIXEL_MM, JSRT_PIXEL_MM],
                "inverted": invert,
            }
            if image_id.upper().startswith(("JPCLN", "JPCNN")):
                record.labels = {"Nodule": int(image_id.upper().startswith("JPCLN"))}
            for organ, parts in masks.get(image_id, {}).items():
                sides = {p.parent.name.lower() for p in parts}  # left / right
                if organ != "heart" and len(sides) != 2:
                    raise DataError(
                        f"{parts[0]}: SCR {organ} mask of {image_id} has no other side "
                        "(left and right are united into one mask)"
                    )
                union = np.zeros((JSRT_SIZE, JSRT_SIZE), dtype=bool)
                for part in parts:
                    union |= fit_mask(
                        read_mask(part), width=JSRT_SIZE, height=JSRT_SIZE, where=str(part)
                    )
                record.mask_paths[organ] = _write_organ(
                    union, masks_dir=masks_dir, image_id=image_id, organ=organ
                )
        except DataError as exc:
            issues.add(exc, image_id=image_id)
            continue
        records.append(record)
    unknown = sorted(set(masks) - set(files))
    if unknown:
        issues.add(
            DataError(
                f"{scr}: {len(unknown)} SCR masks name images not under {root} (e.g. {unknown[0]})"
            ),
            image_id=unknown[0],
        )
    return records


# --------------------------------------------------------------------------- Montgomery, Shenzhen
def load_montgomery(
    *,
    root: str | Path,
    masks_dir: str | Path,
    images: str | Path | None = None,
    issues: Issues | None = None,
) -> list[Record]:
    """Montgomery County: ``CXR_png/*.png`` and ``ManualMask/{leftMask,rightMask}/*.png`` under
    ``root``; the two lungs are united into one ``lung`` mask. An image with only one lung mask
    is a :class:`DataError`; one with none keeps ``mask_paths`` empty."""
    issues = issues if issues is not None else Issues()
    root = Path(os.path.abspath(root))
    image_dir = _folder(root, images, "CXR_png", "Montgomery image")
    files = index_files([image_dir], suffixes=(".png",), key=lambda p: p.stem)
    sides = {
        side: index_files(
            [root / "ManualMask" / f"{side}Mask"], suffixes=(".png",), key=lambda p: p.stem
        )
        for side in ("left", "right")
    }
    if not any(sides.values()):
        raise MissingFileError(f"{root}: no lung masks in ManualMask/leftMask, rightMask")

    def add_lung(record: Record) -> None:
        image_id, width, height = record.image_id, record.width, record.height
        parts = [sides[s][image_id] for s in ("left", "right") if image_id in sides[s]]
        if len(parts) == 1:
            raise DataError(f"{parts[0]}: the other lung's mask of {image_id} is missing")
        if parts:
            union = np.zeros((height, width), dtype=bool)
            for part in parts:
                union |= fit_mask(read_mask(part), width=width, height=height, where=str(part))
            record.mask_paths["lung"] = _write_organ(
                union, masks_dir=Path(masks_dir), image_id=image_id, organ="lung"
            )

    return _tb_set(source="montgomery", files=files, issues=issues, add_masks=add_lung)


def _tb_set(
    *,
    source: str,
    files: Mapping[str, Path],
    issues: Issues,
    add_masks: Callable[[Record], None],
) -> list[Record]:
    """Records of Montgomery or Shenzhen PNGs (Tuberculosis from the name), masks added by
    ``add_masks``; an image whose size or masks fail goes to ``issues``."""
    from cxrkit.data.images import image_size

    records = []
    for image_id, file in sorted(files.items()):
        try:
            width, height = image_size(file)
            record = _record(
                source=source, image_id=image_id, path=file, width=width, height=height
            )
            record.labels = _tb_label(image_id)
            add_masks(record)
        except DataError as exc:
            issues.add(exc, image_id=image_id)
            continue
        records.append(record)
    return records


def _mask_key(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_mask")] if stem.lower().endswith("_mask") else stem


def load_shenzhen(
    *,
    root: str | Path,
    masks_dir: str | Path,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    issues: Issues | None = None,
) -> list[Record]:
    """Shenzhen: ``CXR_png/*.png`` under ``root`` and the lung masks ``<stem>_mask.png`` (or
    ``<stem>.png``) in ``masks`` (default ``root/mask``). A mask at its image's size is used
    as it is; another size with the same aspect ratio is scaled into ``masks_dir``."""
    from cxrkit.data.images import image_size

    issues = issues if issues is not None else Issues()
    root = Path(os.path.abspath(root))
    image_dir = _folder(root, images, "CXR_png", "Shenzhen image")
    files = index_files([image_dir], suffixes=(".png",), key=lambda p: p.stem)
    mask_files = index_files(
        [_folder(root, masks, "mask", "Shenzhen mask")], suffixes=(".png",), key=_mask_key
    )

    def add_lung(record: Record) -> None:
        mask_file = mask_files.get(record.image_id)
        if mask_file is None:
            return
        if image_size(mask_file) == (record.width, record.height):
            record.mask_paths["lung"] = str(mask_file)
            return
        mask = fit_mask(
            read_mask(mask_file), width=record.width, height=record.height, where=str(mask_file)
        )
        record.mask_paths["lung"] = _write_organ(
            mask, masks_dir=Path(masks_dir), image_id=record.image_id, organ="lung"
        )

    return _tb_set(source="shenzhen", files=files, issues=issues, add_masks=add_lung)


# ------------------------------------------------------------------------------------- prepare
def mask_counts(records: Sequence[Record]) -> str:
    """``"masks: lung 240, heart 240 of 247 images"`` for the summary."""
    counts = {o: sum(o in r.mask_paths for r in records) for o in ORGANS}
    counts |= {
        name: sum(name in r.mask_paths for r in records)
        for name in sorted({n for r in records for n in r.mask_paths} - set(ORGANS))
    }
    shown = ", ".join(f"{o} {n}" for o, n in counts.items() if n)
    return f"masks: {shown or 'none'} of {len(records)} images"


def prepare_organ_set(
    *,
    source: str,
    root: str | Path,
    masks_dir: str | Path,
    images_dir: str | Path | None = None,
    scr: str | Path | None = None,
    masks: str | Path | None = None,
    invert: bool = True,
    fractions: str | Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    on_error: str = "fail",
) -> Prepared:
    """``cxrkit prepare {jsrt,montgomery,shenzhen}``: one of the sets as split records (by
    image: the releases have no patient ids), mask counts in the notes.

    Args:
        source: ``jsrt``, ``montgomery`` or ``shenzhen``.
        images_dir: JSRT only: where the PNG copies of the ``.IMG`` files go (required).
        scr: JSRT only: the SCR masks folder.
        masks: Shenzhen only: the masks folder (default ``root/mask``).
        invert: JSRT only: see :func:`read_jsrt`.
    """
    from cxrkit.data import splits

    issues = Issues(on_error=on_error)
    if source == "jsrt":
        if images_dir is None:
            raise DataError("JSRT: images_dir (where the .IMG files become PNGs) is required")
        records = load_jsrt(
            root=root,
            scr=scr,
            images_dir=images_dir,
            masks_dir=masks_dir,
            invert=invert,
            issues=issues,
        )
    elif source == "montgomery":
        records = load_montgomery(root=root, masks_dir=masks_dir, issues=issues)
    elif source == "shenzhen":
        records = load_shenzhen(root=root, masks_dir=masks_dir, masks=masks, issues=issues)
    else:
        raise DataError(f"unknown organ-mask set {source!r} (jsrt, montgomery, shenzhen)")
    records = splits.assign_splits(records, fractions=split_fractions(fractions), seed=seed)
    return Prepared(
        records=records,
        issues=issues,
        notes=[mask_counts(records)],
        warnings=[f"{source}: {_NO_PATIENTS}"] if records else [],
    )


def attach_masks(
    records: Sequence[Record],
    *,
    masks: Mapping[str, str | Path],
    masks_dir: str | Path,
    issues: Issues | None = None,
) -> tuple[list[Record], list[str]]:
    """Give records the organ masks kept in folders by image id.

    Args:
        records: any manifest's records (NIH-style: ``image_id`` is the file stem).
        masks: mask name (``lung``, ``heart``, ...) -> folder holding ``<image_id>.png`` or
            ``<image_id>_mask.png`` (any depth; PNG, GIF or JPEG), each at the image's size
            (used where it lies) or the same aspect ratio (then scaled, nearest neighbour, and
            written to ``masks_dir``). A record's existing mask of that name is replaced.
        masks_dir: where scaled masks go (``<out_stem>_masks/`` beside the new manifest).
        issues: a mask that cannot be read or fit is a :class:`DataError` (raised unless
            skipping; the image is then left out).

    Returns:
        The records and notes for the summary (how many got each mask, and mask files whose id
        is no record's).
    """
    from cxrkit.data.images import image_size

    issues = issues if issues is not None else Issues()
    by_id = {r.image_id: r for r in records}
    dropped: set[str] = set()
    notes = []
    for name, folder in masks.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFileError(f"{folder}: masks folder of {name!r} not found")
        files = index_files([folder], suffixes=(".png", ".gif", ".jpg", ".jpeg"), key=_mask_key)
        attached = 0
        for image_id, file in sorted(files.items()):
            record = by_id.get(image_id)
            if record is None or image_id in dropped:
                continue
            try:
                if image_size(file) == (record.width, record.height):
                    path = str(file)
                else:
                    fitted = fit_mask(
                        read_mask(file), width=record.width, height=record.height, where=str(file)
                    )
                    path = _write_organ(
                        fitted,
                        masks_dir=Path(masks_dir),
                        image_id=image_id,
                        organ=name,
                    )
            except DataError as exc:
                issues.drop(exc, image_id=image_id, records=by_id, dropped=dropped)
                continue
            record.mask_paths[name] = path
            attached += 1
        strays = sorted(set(files) - {r.image_id for r in records})
        notes.append(
            f"{name}: {attached} of {len(records)} images"
            + (f"; {len(strays)} mask files match no image (e.g. {strays[0]})" if strays else "")
        )
    return [r for r in records if r.image_id in by_id], notes
