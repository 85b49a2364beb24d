"""Train detectron2 on a cxrkit cache: register the ``cxrkit export coco`` files as datasets.

detectron2 is not a dependency (it is built from source against the local torch/CUDA; see the
README's detectron2 section), so it is imported only inside these functions. A detectron2 user
needs three lines before detectron2's usual ``DefaultTrainer`` / ``tools/train_net.py``::

    from cxrkit.models import detectron2_bridge
    detectron2_bridge.register_coco("vindr_train", "coco/vindr_train.json")
    detectron2_bridge.register_coco("vindr_val", "coco/vindr_val.json")

with ``configs/detectron2/faster_rcnn_R_50_FPN_barlow_twins.yaml`` (``DATASETS.TRAIN``/``TEST``
name these datasets; ``MODEL.WEIGHTS`` is ``cxrkit pretrain``'s ``backbone_d2.pkl``). detectron2
then reads the cache PNGs and their boxes in cache pixels, and its ``COCOEvaluator(output_dir=D)``
writes ``D/instances_predictions.pth``, which ``cxrkit export predictions`` maps back to original
pixels for ``cxrkit eval detection``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrkit.data.coco import read_coco
from cxrkit.errors import CxrkitError

BUILD_HINT = (
    "detectron2 is not installed; it is not on the package registries: build it against this "
    "torch with pip install --no-build-isolation 'git+https://github.com/facebookresearch/"
    "detectron2.git' (see the README's detectron2 section)"
)


class MissingDetectron2Error(CxrkitError, ImportError):
    """detectron2 is needed for this call and cannot be imported."""


def import_detectron2() -> Any:
    """The ``detectron2`` package, or :class:`MissingDetectron2Error` saying how to build it."""
    try:
        import detectron2
        import detectron2.data  # noqa: F401  (the catalogs every caller here needs)
    except ImportError as exc:
        raise MissingDetectron2Error(f"{BUILD_HINT} ({exc})") from exc
    return detectron2


def register_coco(
    name: str, json_file: str | Path, *, image_root: str | Path | None = None
) -> None:
    """Register the COCO file of ``cxrkit export coco`` as the detectron2 dataset ``name``.

    Args:
        name: the dataset name ``DATASETS.TRAIN`` / ``DATASETS.TEST`` refer to.
        json_file: the exported file; its categories become ``thing_classes`` in their order.
        image_root: the cache folder; default: the one recorded in the file (``info.image_root``).

    Raises:
        MissingDetectron2Error: detectron2 cannot be imported.
        MissingFileError, DataError: the file is missing or not a ``cxrkit export coco`` file.
    """
    import_detectron2()
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    coco = read_coco(json_file)
    root = image_root or coco.get("info", {}).get("image_root")
    if not root:
        raise CxrkitError(f"{json_file}: no info.image_root; pass image_root=CACHE_DIR")
    classes = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)  # a re-run in the same session re-registers cleanly
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_coco_instances(name, {"thing_classes": classes}, str(json_file), str(root))
