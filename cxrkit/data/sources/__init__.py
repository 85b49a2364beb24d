"""Dataset adapters: each turns a dataset's own layout into :class:`cxrkit.data.records.Record`\\ s.

One module per source (:mod:`.nih`, :mod:`.vindr`, :mod:`.chestxdet`, :mod:`.folder` for a CSV
manifest or a bare folder of private data, :mod:`.organ_masks` for the JSRT/SCR, Montgomery and
Shenzhen lung and heart masks). ``load_*`` reads records with ``split="unassigned"`` or
the source's official split; ``prepare_*`` also assigns patient-level splits and returns a
:class:`Prepared`, which :func:`write_prepared` writes as the manifest (and the errors file of the
images it left out). What the adapters share lives in :mod:`.common`::

    from cxrkit.data import sources

    prepared = sources.prepare_nih(root="/data/ChestX-ray14", on_error="skip")
    summary = sources.write_prepared(prepared, out=Path("nih.parquet"), root=...)
"""

from cxrkit.data.sources.chestxdet import load_chestxdet, prepare_chestxdet
from cxrkit.data.sources.common import (
    Issue,
    Issues,
    ManifestSummary,
    Prepared,
    errors_csv_for,
    masks_dir_for,
    write_prepared,
)
from cxrkit.data.sources.folder import load_csv, load_folder, prepare_csv
from cxrkit.data.sources.nih import load_nih, prepare_nih
from cxrkit.data.sources.organ_masks import (
    attach_masks,
    load_jsrt,
    load_montgomery,
    load_shenzhen,
    prepare_organ_set,
    read_jsrt,
)
from cxrkit.data.sources.vindr import load_vindr, prepare_vindr

__all__ = [
    "Issue",
    "Issues",
    "ManifestSummary",
    "Prepared",
    "attach_masks",
    "errors_csv_for",
    "load_chestxdet",
    "load_csv",
    "load_folder",
    "load_jsrt",
    "load_montgomery",
    "load_nih",
    "load_shenzhen",
    "load_vindr",
    "masks_dir_for",
    "prepare_chestxdet",
    "prepare_csv",
    "prepare_nih",
    "prepare_organ_set",
    "prepare_vindr",
    "read_jsrt",
    "write_prepared",
]
