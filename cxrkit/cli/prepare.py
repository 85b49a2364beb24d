"""``cxrkit prepare {nih,vindr,chestxdet,csv,jsrt,montgomery,shenzhen,masks}``: a dataset's own
files -> one Parquet manifest with patient-level splits (:mod:`cxrkit.data.sources`).

Each handler calls its adapter's ``prepare_*`` function, writes the result with
:func:`~cxrkit.data.sources.write_prepared` and prints what it wrote.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cxrkit.cli.common import add_command, options
from cxrkit.data import sources
from cxrkit.data.sources.common import DEFAULT_FRACTIONS, ON_ERROR
from cxrkit.io import check_output_file

COMMON_EPILOG = """
Every subcommand writes one Parquet manifest (--out) and, with --on-error skip, a CSV of the
images it left out beside it (<out_stem>_errors.csv). Splits are by patient: the source's
official split when it has one (validation carved from its training part, --val-fraction),
otherwise --split-fractions train,val,test stratified by label. The result depends only on the
inputs and --seed.
"""

NIH_EPILOG = """examples:
  # the full release: images_001/images/*.png ... images_012/images/*.png, Data_Entry_2017.csv,
  # BBox_List_2017.csv, train_val_list.txt and test_list.txt in one folder (official split used)
  cxrkit prepare nih --root /data/ChestX-ray14 --out nih.parquet

  # metadata only (no images on this machine): 1024x1024 assumed, 112,120 rows in seconds
  cxrkit prepare nih --root /data/nih-meta --data-entry Data_Entry_2017.csv.gz \\
      --metadata-only --out nih-meta.parquet

  # a sample with renamed CSVs and a flat images/ folder, random patient split 70/10/20
  cxrkit prepare nih --root sample --data-entry Data_Entry_2017_subset.csv \\
      --bbox-list BBox_List_2017_subset.csv --split-fractions 0.7,0.1,0.2 --out sample.parquet
"""

VINDR_EPILOG = """examples:
  # PhysioNet VinDr-CXR 1.0.0: annotations/{annotations,image_labels}_{train,test}.csv,
  # train/*.dicom, test/*.dicom; official train/test kept, 10% of train patients -> val
  cxrkit prepare vindr --root /data/vindr-cxr/1.0.0 --out vindr.parquet

  # Kaggle VinBigData: train.csv (14 classes + "No finding") and train/*.dicom
  cxrkit prepare vindr --root /data/vinbigdata --layout kaggle --out vinbig.parquet

  # the Kaggle train.csv alone (no DICOMs here): classes, boxes and splits checked, the sizes
  # of absent images assumed from their boxes (headers are read where the DICOMs are present)
  cxrkit prepare vindr --root /data/vinbigdata-csv --layout kaggle --metadata-only \\
      --out vinbig-meta.parquet

A finding is 1 for an image if ANY reader marked it; meta["votes"] keeps how many readers did.
Every reader's box is kept with its rad_id as the box's reader (fusion happens in finetune).
VinDr is de-identified: patient_id is the DICOM PatientID when present, else the image_id.
"""

CHESTXDET_EPILOG = """examples:
  # ChestX_Det_train.json, ChestX_Det_test.json and the images in train/ and test/ under --root;
  # polygons become masks in chestxdet_masks/<image_id>.<finding>.png beside the manifest
  cxrkit prepare chestxdet --root /data/ChestX-Det --out chestxdet.parquet

  # annotations only (no images here): 1024x1024 assumed; views from a CSV (file_name,view)
  cxrkit prepare chestxdet --root /data/ChestX-Det --metadata-only --views views.csv \\
      --out chestxdet.parquet

  # views, patient ids and NIH labels from each image's NIH original, found by its pixels
  # (exact copies, re-encoded or resized); unmatched images keep view unknown
  cxrkit prepare chestxdet --root /data/ChestX-Det --nih-manifest nih.parquet \\
      --nih-index nih_fingerprints.npz --out chestxdet.parquet
"""

CSV_EPILOG = """examples:
  # a hospital export: paths relative to --root, pipe-separated labels ("Effusion|Nodule",
  # "No Finding"), boxes in original pixels (image_id,finding,x1,y1,x2,y2[,reader])
  cxrkit prepare csv --root /data/hospital --csv labels.csv --boxes boxes.csv \\
      --column path=file,patient_id=PatientID,view=ViewPosition,labels=Findings \\
      --out hospital.parquet

  # one 0/1 column per finding (checked against a fixed class list); mask files in columns
  # named like "mask:Left lung" are picked up by themselves
  cxrkit prepare csv --root /data/h2 --csv h2.csv --label-columns Effusion,Nodule,Mass \\
      --classes Effusion,Nodule,Mass --out h2.parquet

  # a bare folder of PNG/JPEG/DICOM (recursive) for unlabeled pretraining; PNGs carry no patient
  # id, so say that one patient per image is acceptable (splits are then by image)
  cxrkit prepare csv --root /data/unlabeled --out unlabeled.parquet --no-patient-ids

CSV columns (rename with --column key=name): path (required; relative to --root or absolute),
image_id (default: path without extension), patient_id (default: the DICOM PatientID; images
with neither are refused unless --no-patient-ids makes each its own patient), view
(PA/AP/LL/..., default: the DICOM header, else unknown), split (train/val/test;
if present it is kept, rows left empty stay unassigned, and --split-fractions is not used), labels
(pipe-separated; an empty cell means not labeled), mask:<name> (a mask file per image).
Boxes (--boxes) are in original pixels.
"""


ORGANS_EPILOG = """examples:
  # JSRT (.IMG: raw 2048x2048 12-bit big-endian, no header) with the SCR masks (GIFs at 1024):
  # images become 16-bit PNGs in jsrt_images/, masks lung/heart/clavicle PNGs in jsrt_masks/
  cxrkit prepare jsrt --root /data/JSRT --scr /data/SCR --out jsrt.parquet

  # Montgomery County: CXR_png/*.png, ManualMask/leftMask/*.png, ManualMask/rightMask/*.png
  cxrkit prepare montgomery --root /data/MontgomerySet --out montgomery.parquet

  # Shenzhen: CXR_png/*.png and lung masks <stem>_mask.png (default folder: --root/mask)
  cxrkit prepare shenzhen --root /data/ChinaSet_AllFiles --masks /data/shenzhen/mask \\
      --out shenzhen.parquet

Records: view PA; patient id = image id (the releases have none: splits are by image);
mask_paths lung (both lungs), heart and clavicle where the set has them, at the image's size.
Labels: JSRT Nodule (JPCLN/JPCNN), Montgomery and Shenzhen Tuberculosis (_0/_1).
"""

MASKS_EPILOG = """examples:
  # organ masks kept by image id (lung/00000001_000.png or lung/00000001_000_mask.png) onto an
  # NIH manifest; masks of another size but the same aspect ratio are scaled (nearest neighbour)
  cxrkit prepare masks --manifest nih.parquet --mask lung=/data/nih_lungs \\
      --mask heart=/data/nih_hearts --out nih_organs.parquet
"""


def register(subparsers: Any) -> None:
    """Add ``prepare {nih,vindr,chestxdet,csv,jsrt,montgomery,shenzhen,masks}`` to ``cxrkit``."""
    parser = add_command(
        subparsers,
        "prepare",
        help="turn a dataset (NIH, VinDr-CXR, ChestX-Det, CSV/folder) into a manifest",
        description="Turn a dataset's own files into a cxrkit manifest (Parquet) with "
        "patient-level splits.",
        epilog=COMMON_EPILOG,
    )
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root",
        type=Path,
        required=True,
        help="the dataset folder; the manifest records it and stores paths relative to it, so it "
        "moves with the data (read it elsewhere with --root / data.root)",
    )
    common.add_argument("--out", type=Path, required=True, help="manifest to write (.parquet)")
    common.add_argument(
        "--split-fractions",
        default=DEFAULT_FRACTIONS,
        help="train,val,test fractions of images for sources without an official split "
        "(default 0.8,0.1,0.1)",
    )
    common.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of an official training split moved to val, by patient (default 0.1)",
    )
    common.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    common.add_argument(
        "--strict-views",
        action="store_true",
        help="a view string that is not PA, AP, LL or a known spelling is an error (default: the "
        "view is 'unknown', counted in a warning and kept in meta['view_unrecognised'])",
    )
    common.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="fail",
        help="fail: stop at the first bad row (default); skip: leave the image out and list it "
        "in <out_stem>_errors.csv",
    )

    def add(name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
        return sources.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=epilog + COMMON_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    nih = add("nih", "NIH ChestX-ray14 (Data_Entry_2017.csv, BBox_List_2017.csv)", NIH_EPILOG)
    nih.add_argument(
        "--data-entry",
        help="Data_Entry CSV (default: Data_Entry_2017_v2020.csv or Data_Entry_2017.csv, "
        "optionally .gz, in --root)",
    )
    nih.add_argument("--bbox-list", help="box list CSV (default: BBox_List_2017.csv if present)")
    nih.add_argument("--train-val-list", help="official list (default: train_val_list.txt)")
    nih.add_argument("--test-list", help="official list (default: test_list.txt)")
    nih.add_argument(
        "--metadata-only",
        action="store_true",
        help="build the manifest from the CSV alone: images need not exist, 1024x1024 assumed",
    )
    nih.set_defaults(func=prepare_nih)

    vindr = add("vindr", "VinDr-CXR (PhysioNet) or VinBigData (Kaggle)", VINDR_EPILOG)
    vindr.add_argument(
        "--layout",
        choices=("auto", "physionet", "kaggle"),
        default="auto",
        help="file layout (default: detected from the files in --root)",
    )
    vindr.add_argument(
        "--abnormal-only",
        action="store_true",
        help="keep only images with at least one box (BarlowTwins-CXR's detector data)",
    )
    vindr.add_argument(
        "--split-from",
        action="append",
        default=[],
        metavar="SPLIT=FILE",
        help="put the images a COCO JSON or id-list FILE names into SPLIT (repeatable); the rest "
        "is split by patient with --split-fractions among the splits without a file",
    )
    vindr.add_argument(
        "--metadata-only",
        action="store_true",
        help="keep listed images that are absent (sizes assumed from their boxes): checks the "
        "CSV files, e.g. Kaggle's 67,914-row train.csv, without the images",
    )
    vindr.set_defaults(func=prepare_vindr)

    det = add("chestxdet", "ChestX-Det (ChestX_Det_{train,test}.json)", CHESTXDET_EPILOG)
    det.add_argument("--train-json", help="default: ChestX_Det_train.json in --root")
    det.add_argument("--test-json", help="default: ChestX_Det_test.json in --root")
    det.add_argument("--views", type=Path, help="CSV with columns file_name,view")
    det.add_argument(
        "--metadata-only",
        action="store_true",
        help="images need not exist: 1024x1024 assumed",
    )
    det.add_argument("--no-masks", action="store_true", help="keep boxes, do not draw masks")
    det.add_argument(
        "--nih-manifest",
        type=Path,
        help="NIH manifest (cxrkit prepare nih, images present): find each image's NIH original "
        "by its pixels and take its view and patient id (matches in <out_stem>_nih_matches.csv)",
    )
    det.add_argument(
        "--nih-index",
        type=Path,
        help="NIH fingerprints (.npz) kept between runs (see cxrkit match --index)",
    )
    det.set_defaults(func=prepare_chestxdet)

    own = add("csv", "your own data: a CSV manifest, or a bare folder of images", CSV_EPILOG)
    own.add_argument("--csv", type=Path, help="CSV with one row per image (omit: bare folder)")
    own.add_argument("--boxes", type=Path, help="CSV image_id,finding,x1,y1,x2,y2[,reader]")
    own.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="KEY=NAME[,KEY=NAME...]",
        help="CSV column of path, image_id, patient_id, view, split or labels (repeatable)",
    )
    own.add_argument(
        "--label-columns",
        help="comma-separated 0/1 columns, one per finding (instead of a pipe-separated column)",
    )
    own.add_argument(
        "--classes",
        help="comma-separated class list; any other name in labels or boxes is an error",
    )
    own.add_argument("--source", default="", help="source name stored in each record")
    own.add_argument(
        "--no-patient-ids",
        action="store_true",
        help="accept images without a patient id (no patient_id column, no DICOM PatientID) as "
        "one patient each: splits are then by image; the summary and the manifest say so",
    )
    own.set_defaults(func=prepare_csv)

    jsrt = add("jsrt", "JSRT (.IMG) with the SCR lung/heart/clavicle masks", ORGANS_EPILOG)
    jsrt.add_argument("--scr", type=Path, help="SCR masks folder (fold1/masks/left lung/...)")
    jsrt.add_argument(
        "--jsrt-no-invert",
        action="store_true",
        help="keep JSRT's stored values (default: 4095 - value, so that bone is bright)",
    )
    jsrt.set_defaults(func=prepare_organs, masks=None)
    montgomery = add("montgomery", "Montgomery County lung masks (ManualMask)", ORGANS_EPILOG)
    montgomery.set_defaults(func=prepare_organs, scr=None, masks=None, jsrt_no_invert=False)
    shenzhen = add("shenzhen", "Shenzhen with its lung masks (<stem>_mask.png)", ORGANS_EPILOG)
    shenzhen.add_argument("--masks", type=Path, help="lung masks folder (default: --root/mask)")
    shenzhen.set_defaults(func=prepare_organs, scr=None, jsrt_no_invert=False)

    masks = sources.add_parser(
        "masks",
        help="attach organ masks kept by image id to a manifest's records",
        description="attach organ masks kept by image id to a manifest's records",
        epilog=MASKS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    masks.add_argument("--manifest", type=Path, required=True, help="the manifest to extend")
    masks.add_argument(
        "--mask",
        action="append",
        required=True,
        metavar="NAME=FOLDER",
        help="mask name (lung, heart, ...) and its folder of <image_id>[_mask].png (repeatable)",
    )
    masks.add_argument("--out", type=Path, required=True, help="manifest to write (.parquet)")
    masks.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="fail",
        help="fail: stop at the first bad mask (default); skip: leave the image out and list it",
    )
    masks.set_defaults(func=prepare_masks)


def prepare_nih(args: argparse.Namespace) -> int:
    """``cxrkit prepare nih``."""
    check_output_file(args.out)  # before any work: a typo fails in a second
    prepared = sources.prepare_nih(
        **options(args, "root", "data_entry", "bbox_list", "train_val_list", "test_list"),
        metadata_only=args.metadata_only,
        fractions=args.split_fractions,
        **_run_options(args),
    )
    if prepared.official_lists is not None:
        train_val, test = prepared.official_lists
        print(f"official split: {train_val.name}, {test.name}")
    return finish(prepared, args)


def prepare_vindr(args: argparse.Namespace) -> int:
    """``cxrkit prepare vindr``."""
    check_output_file(args.out)
    from cxrkit.data.splits import parse_split_from

    prepared = sources.prepare_vindr(
        root=args.root,
        layout=args.layout,
        fractions=args.split_fractions,
        abnormal_only=args.abnormal_only,
        split_from=parse_split_from(args.split_from),
        metadata_only=args.metadata_only,
        **_run_options(args),
    )
    return finish(prepared, args)


def prepare_chestxdet(args: argparse.Namespace) -> int:
    """``cxrkit prepare chestxdet``; masks go to ``<out_stem>_masks/`` unless ``--no-masks``."""
    check_output_file(args.out)
    prepared = sources.prepare_chestxdet(
        **options(args, "root", "train_json", "test_json", "views", "metadata_only"),
        masks_dir=None if args.no_masks else sources.masks_dir_for(args.out),
        nih_manifest=args.nih_manifest,
        nih_index=args.nih_index,
        matches_csv=args.out.with_name(f"{args.out.stem}_nih_matches.csv")
        if args.nih_manifest is not None
        else None,
        **_run_options(args),
    )
    return finish(prepared, args)


def prepare_csv(args: argparse.Namespace) -> int:
    """``cxrkit prepare csv``."""
    check_output_file(args.out)
    from cxrkit.data.sources import folder

    prepared = sources.prepare_csv(
        csv_path=args.csv,
        boxes_path=args.boxes,
        columns=folder.parse_columns(args.column),
        label_columns=_split_list(args.label_columns),
        classes=_split_list(args.classes),
        fractions=args.split_fractions,
        patient_ids=not args.no_patient_ids,
        **options(args, "root", "source", "seed", "on_error"),
    )
    return finish(prepared, args)


def prepare_organs(args: argparse.Namespace) -> int:
    """``cxrkit prepare {jsrt,montgomery,shenzhen}``; masks go to ``<out_stem>_masks/``, JSRT's
    PNG copies to ``<out_stem>_images/``."""
    check_output_file(args.out)
    prepared = sources.prepare_organ_set(
        source=args.source,
        root=args.root,
        masks_dir=sources.masks_dir_for(args.out),
        images_dir=args.out.with_name(f"{args.out.stem}_images"),
        invert=not args.jsrt_no_invert,
        **options(args, "scr", "masks"),
        fractions=args.split_fractions,
        **options(args, "seed", "on_error"),
    )
    return finish(prepared, args)


def prepare_masks(args: argparse.Namespace) -> int:
    """``cxrkit prepare masks``: the manifest's records with organ masks attached by image id."""
    check_output_file(args.out)
    from cxrkit.data.records import manifest_warnings, read_manifest
    from cxrkit.errors import ConfigError

    folders = {}
    for item in args.mask:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ConfigError(f"--mask {item!r}: expected NAME=FOLDER (e.g. lung=/data/lungs)")
        folders[name.strip()] = Path(folder.strip())
    issues = sources.Issues(on_error=args.on_error)
    records, notes = sources.attach_masks(
        read_manifest(args.manifest),
        masks=folders,
        masks_dir=sources.masks_dir_for(args.out),
        issues=issues,
    )
    prepared = sources.Prepared(
        records=records,
        issues=issues,
        notes=notes,
        warnings=manifest_warnings(args.manifest),
    )
    args.root = args.manifest
    return finish(prepared, args)


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options every source with an official split takes: val fraction, seed, on-error."""
    return options(args, "val_fraction", "seed", "on_error")


def _split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def finish(prepared: sources.Prepared, args: argparse.Namespace) -> int:
    """Write the manifest (and errors file) and print its counts."""
    from cxrkit.data.records import manifest_root

    summary = sources.write_prepared(
        prepared,
        out=args.out,
        root=args.root,
        strict_views=getattr(args, "strict_views", False),
        manifest_root=_manifest_root(prepared, args),
    )
    views, split_counts = summary.views, summary.splits
    print(
        f"wrote {summary.records} records ({summary.patients} patients, {summary.boxes} boxes) "
        f"to {summary.path}\n"
        "  views: "
        + ", ".join(f"{v} {views.get(v, 0)}" for v in ("PA", "AP", "LL", "unknown"))
        + "\n  splits: "
        + ", ".join(f"{s} {split_counts.get(s, 0)}" for s in ("train", "val", "test", "unassigned"))
    )
    if summary.leaked:
        print(
            f"  note: {len(summary.leaked)} patients have images in more than one split of the "
            f"given split (first: {summary.leaked[0]})"
        )
    for note in summary.notes:
        print(f"  {note}")
    for warning in summary.warnings:
        print(f"  warning: {warning}")
    recorded = manifest_root(summary.path)
    if recorded is not None:
        print(
            f"  paths relative to {recorded} (moved with the data, read it with --root NEW_DIR "
            "or data.root=NEW_DIR)"
        )
    if summary.errors_file is not None:
        print(f"skipped {summary.skipped} images; reasons in {summary.errors_file}")
    return 0


def _manifest_root(prepared: sources.Prepared, args: argparse.Namespace) -> Path | None:
    """The root to record: ``--root`` when it holds every image (a copy of JSRT's images lies
    beside the manifest instead), else None (the images' deepest common folder)."""
    root = getattr(args, "root", None)
    if root is None or not Path(root).is_dir():
        return None
    base = os.path.abspath(root)
    inside = all(
        os.path.abspath(r.path).startswith(base.rstrip(os.sep) + os.sep) for r in prepared.records
    )
    return Path(base) if inside else None
