"""The phantoms on disk, in the real NIH ChestX-ray14 and VinDr-CXR formats.

Layout under ``OUT`` (the ``out_dir`` of :func:`cxrkit.synth.generate`)::

    OUT/nih/images/<image_id>.png            uint8 grayscale, size x size; ids like 00000001_000
    OUT/nih/Data_Entry_2017.csv              NIH 2017 format (CRLF, header with a trailing comma)
    OUT/nih/BBox_List_2017.csv               NIH box list: x, y, w, h in PNG pixels
    OUT/nih/masks/<image_id>.<name>.png      uint8 0/255: lung, heart, one per NIH finding name
    OUT/nih/phantoms.csv                     the same images for the generic CSV adapter
    OUT/nih/phantom_boxes.csv                image_id, finding, x1, y1, x2, y2, reader (empty)
    OUT/vindr/{train,test}/<image_id>.dicom  VinDr PhysioNet layout, uncompressed 16-bit DICOM
    OUT/vindr/annotations/annotations_{train,test}.csv   three readers' boxes (R8, R9, R10)
    OUT/vindr/annotations/image_labels_{train,test}.csv  per-reader 0/1 labels, all 28 VinDr names
    OUT/README.txt                           what was generated: seed, sizes, counts

Boxes everywhere are pixel edges of the written image: ``x1`` is the first lesion column and ``x2``
one past the last, so ``0 <= x1 < x2 <= size`` (the :class:`cxrkit.data.records.Box` contract).
Every file is written with :func:`cxrkit.io.atomic_write`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrkit.data import vocab
from cxrkit.io import atomic_write
from cxrkit.synth.anatomy import FIELD_OF_VIEW_MM
from cxrkit.synth.plan import DATASET_CODE, STREAM_DICOM, STREAM_READERS, PlannedImage
from cxrkit.synth.rendering import Phantom

NIH_FINDING_NAMES: tuple[str, ...] = (
    "Consolidation",
    "Pneumothorax",
    "Nodule",
    "Mass",
    "Fibrosis",
    "Effusion",
)
NIH_NO_FINDING = "No Finding"

#: VinDr-CXR class names of the five simulated findings.
VINDR_NAMES: dict[str, str] = {
    "consolidation": "Consolidation",
    "pneumothorax": "Pneumothorax",
    "nodule_mass": "Nodule/Mass",
    "fibrosis": "Pulmonary fibrosis",
    "effusion": "Pleural effusion",
}
#: VinDr-CXR PhysioNet image-level labels: 22 local labels then 6 global ones, in the file's order
#: (the adapter's own table, so the phantoms can never drift from what `prepare vindr` accepts).
VINDR_LABELS: tuple[str, ...] = (*vocab.VINDR_LOCAL, *vocab.VINDR_GLOBAL)
VINDR_NO_FINDING = "No finding"
VINDR_READERS: tuple[str, ...] = ("R8", "R9", "R10")

# The real files' header lines, byte for byte (Data_Entry ends its header, not its rows, with a
# comma and uses CRLF; the box list has three empty trailing header fields and LF line ends).
NIH_DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"

PHANTOMS_COLUMNS: tuple[str, ...] = (
    "image_id",
    "path",
    "patient_id",
    "view",
    "labels",
    "mask:lung",
    "mask:heart",
    *(f"mask:{name}" for name in NIH_FINDING_NAMES),
)
VINDR_ANNOTATION_COLUMNS: tuple[str, ...] = (
    "image_id",
    "rad_id",
    "class_name",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
)
VINDR_LABEL_ID_COLUMNS: tuple[str, ...] = ("image_id", "rad_id")
_DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return buf.tobytes()


def write_nih_item(item: PlannedImage, phantom: Phantom, root: Path) -> dict[str, Any]:
    atomic_write(root / "images" / f"{item.image_id}.png", png_bytes(phantom.to_uint8()))
    masks: dict[str, str] = {}
    for key, mask in phantom.masks.items():
        name = phantom.nih_names.get(key, key)  # lung, heart, or the NIH finding name
        rel = f"masks/{item.image_id}.{name}.png"
        atomic_write(root / rel, png_bytes(mask.astype(np.uint8) * 255))
        masks[name] = rel
    return {
        "labels": sorted(phantom.nih_names[f] for f in item.findings),
        "boxes": [(phantom.nih_names[f], x1, y1, x2, y2) for f, x1, y1, x2, y2 in phantom.boxes],
        "masks": masks,
    }


def reader_boxes(
    item: PlannedImage, phantom: Phantom, *, seed: int, size: int
) -> list[tuple[str, str, tuple[float, float, float, float] | None]]:
    """Three readers' boxes: each finding boxed by each reader with a few % jitter per edge;
    now and then one reader misses a finding. A reader with no box reports "No finding"."""
    rng = np.random.default_rng([seed, DATASET_CODE[item.dataset], STREAM_READERS, item.index])
    per_reader: dict[str, list[tuple[str, str, tuple[float, float, float, float] | None]]] = {
        r: [] for r in VINDR_READERS
    }
    for finding, x1, y1, x2, y2 in phantom.boxes:
        missing = int(rng.integers(len(VINDR_READERS))) if rng.random() < 0.12 else -1
        w, h = x2 - x1, y2 - y1
        for r, reader in enumerate(VINDR_READERS):
            jitter = np.clip(rng.normal(0.0, 0.025, 4), -0.06, 0.06) * np.array([w, h, w, h])
            if r == missing:
                continue
            bx1, by1, bx2, by2 = np.round(np.array([x1, y1, x2, y2]) + jitter, 1)
            bx1, bx2 = max(0.0, bx1), min(float(size), bx2)
            by1, by2 = max(0.0, by1), min(float(size), by2)
            if bx2 - bx1 < 1.0 or by2 - by1 < 1.0:
                bx1, by1, bx2, by2 = float(x1), float(y1), float(x2), float(y2)
            per_reader[reader].append((reader, VINDR_NAMES[finding], (bx1, by1, bx2, by2)))
    rows = []
    for reader in VINDR_READERS:
        rows.extend(per_reader[reader] or [(reader, VINDR_NO_FINDING, None)])
    return rows


def dicom_bytes(item: PlannedImage, phantom: Phantom, *, seed: int) -> bytes:
    """The phantom as an uncompressed 16-bit DX DICOM (explicit VR little endian).

    Stored values span ``[lo, hi]`` inside ``BitsStored``; the window covers exactly that span in
    rescaled units, so Modality LUT + window (+ inversion for MONOCHROME1) gives back the display
    image up to quantisation.
    """
    from io import BytesIO

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng([seed, DATASET_CODE[item.dataset], STREAM_DICOM, item.index])
    size = phantom.image.shape[0]
    top = (1 << item.bits_stored) - 1
    lo = int(round(top * rng.uniform(0.02, 0.1)))
    hi = int(round(top * rng.uniform(0.85, 0.97)))
    stored = np.round(lo + phantom.image.astype(np.float64) * (hi - lo)).astype(np.uint16)
    center = 0.5 * (lo + hi)
    if item.photometric == "MONOCHROME1":  # bright = low values: invert the stored data
        stored = (top - stored).astype(np.uint16)
        center = top - center
    slope, intercept = (1.0, 0.0) if rng.random() < 0.7 else (2.0, -1024.0)

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["cxrkit-synth", str(seed), item.image_id, kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _DX_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyDate = "20200101"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.PatientID = item.patient_id
    ds.PatientSex = item.sex
    ds.PatientAge = f"{item.age:03d}Y"
    ds.ViewPosition = item.view
    ds.SeriesNumber = 1
    ds.InstanceNumber = item.follow_up + 1
    spacing = f"{phantom.pixel_spacing_mm:.4f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = item.photometric
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = item.bits_stored
    ds.HighBit = item.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{center * slope + intercept:.1f}"
    ds.WindowWidth = f"{(hi - lo) * slope:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.astype("<u2").tobytes()
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def write_vindr_item(
    item: PlannedImage, phantom: Phantom, root: Path, *, seed: int
) -> dict[str, Any]:
    atomic_write(
        root / item.split / f"{item.image_id}.dicom", dicom_bytes(item, phantom, seed=seed)
    )
    return {"readers": reader_boxes(item, phantom, seed=seed, size=phantom.image.shape[0])}


def write_nih_tables(
    root: Path, items: Sequence[PlannedImage], results: Sequence[dict[str, Any]]
) -> None:
    spacing = FIELD_OF_VIEW_MM
    entry = [NIH_DATA_ENTRY_HEADER]
    bbox = [NIH_BBOX_HEADER]
    phantoms = [",".join(PHANTOMS_COLUMNS)]
    boxes = ["image_id,finding,x1,y1,x2,y2,reader"]
    for item, res in zip(items, results, strict=True):
        size = int(res["size"])
        pix = f"{spacing / size:.3f}"
        labels = "|".join(res["labels"]) or NIH_NO_FINDING
        # rows carry 11 values; only the header has the trailing comma (as in NIH's file)
        entry.append(
            f"{item.image_id}.png,{labels},{item.follow_up},{item.patient_number},{item.age},"
            f"{item.sex},{item.view},{size},{size},{pix},{pix}"
        )
        for name, x1, y1, x2, y2 in res["boxes"]:
            bbox.append(
                f"{item.image_id}.png,{name},{float(x1)!r},{float(y1)!r},"
                f"{float(x2 - x1)!r},{float(y2 - y1)!r}"
            )
            boxes.append(f"{item.image_id},{name},{x1},{y1},{x2},{y2},")
        masks = res["masks"]
        phantoms.append(
            ",".join(
                [
                    item.image_id,
                    f"images/{item.image_id}.png",
                    item.patient_id,
                    item.view,
                    labels,
                    masks["lung"],
                    masks["heart"],
                    *(masks.get(name, "") for name in NIH_FINDING_NAMES),
                ]
            )
        )
    atomic_write(root / "Data_Entry_2017.csv", ("\r\n".join(entry) + "\r\n").encode())
    atomic_write(root / "BBox_List_2017.csv", ("\n".join(bbox) + "\n").encode())
    atomic_write(root / "phantoms.csv", ("\n".join(phantoms) + "\n").encode())
    atomic_write(root / "phantom_boxes.csv", ("\n".join(boxes) + "\n").encode())


def write_vindr_tables(
    root: Path, items: Sequence[PlannedImage], results: Sequence[dict[str, Any]]
) -> None:
    annotations_dir = root / "annotations"
    annotations_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        ann = [",".join(VINDR_ANNOTATION_COLUMNS)]
        labels = [",".join((*VINDR_LABEL_ID_COLUMNS, *VINDR_LABELS))]
        for item, res in zip(items, results, strict=True):
            if item.split != split:
                continue
            found: dict[str, set[str]] = {r: set() for r in VINDR_READERS}
            for reader, class_name, box in res["readers"]:
                found[reader].add(class_name)
                coords = ["", "", "", ""] if box is None else [f"{v:.1f}" for v in box]
                ann.append(",".join([item.image_id, reader, class_name, *coords]))
            for reader in VINDR_READERS:
                flags = ["1" if name in found[reader] else "0" for name in VINDR_LABELS]
                labels.append(",".join([item.image_id, reader, *flags]))
        atomic_write(annotations_dir / f"annotations_{split}.csv", ("\n".join(ann) + "\n").encode())
        atomic_write(
            annotations_dir / f"image_labels_{split}.csv", ("\n".join(labels) + "\n").encode()
        )
