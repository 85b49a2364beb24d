"""A loaded detector on image files: boxes in each file's original pixels, the same numbers as on
a cache of the files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrkit import finetune
from cxrkit.config import load
from cxrkit.data.cache import Cache
from cxrkit.data.images import image_size
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError
from cxrkit.finetune import train
from cxrkit.finetune.config import FinetuneConfig
from cxrkit.finetune.model import build_detector, from_config
from cxrkit.finetune.predictor import Detector

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "finetune" / "tiny_faster_rcnn.yaml"
LESION = (60, 40, 124, 88)  # x1, y1, x2, y2 in the PNG's pixels (256 x 192)
DICOM_LESION = (150, 30, 210, 90)  # in the DICOM's pixels (300 x 200)


class BrightestRegion(nn.Module):
    """A stand-in detector with a known answer: the box of the pixels brighter than 0.6, in the
    pixels of the image it is given (torchvision's output contract), scored 0.8; like
    torchvision's ROI heads it drops boxes below ``roi_heads.score_thresh``."""

    def __init__(self) -> None:
        super().__init__()
        self.roi_heads = SimpleNamespace(score_thresh=0.05)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        keep = int(self.roi_heads.score_thresh <= 0.8)
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.6, as_tuple=True)
            boxes = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]).float()
            labels, scores = torch.ones(1, dtype=torch.int64), torch.full((1,), 0.8)
            out.append({"boxes": boxes[:keep], "labels": labels[:keep], "scores": scores[:keep]})
        return out


def _config(*overrides: str) -> FinetuneConfig:
    return load(FinetuneConfig, files=[TINY], overrides=["classes=[Nodule/Mass]", *overrides])


def _files(root: Path, cr_dicom) -> list[Path]:
    rng = np.random.default_rng(0)
    png = rng.normal(70, 6, (192, 256)).clip(0, 255).astype(np.uint8)
    png[:, :8] = 0  # a dark border keeps the percentile window stable
    x1, y1, x2, y2 = LESION
    png[y1:y2, x1:x2] = 230
    cv2.imwrite(str(root / "chest.png"), png)
    # MONOCHROME1: the lesion is stored dark and shown bright, as on film
    stored = rng.normal(3000, 60, (200, 300)).clip(0, 4095).astype(np.uint16)
    stored[:, -8:] = 4095
    x1, y1, x2, y2 = DICOM_LESION
    stored[y1:y2, x1:x2] = 400
    cr_dicom(root / "chest.dcm", stored, PhotometricInterpretation="MONOCHROME1")
    return [root / "chest.png", root / "chest.dcm"]


def test_known_boxes_come_back_in_each_files_original_pixels(tmp_path: Path, cr_dicom) -> None:
    files = _files(tmp_path, cr_dicom)
    detector = Detector(model=BrightestRegion(), config=_config(), path=tmp_path / "x.pt")
    frame = detector.predict_images(files)
    assert list(frame.columns) == ["path", "image_id", "finding", "score", "x1", "y1", "x2", "y2"]
    assert list(frame["path"]) == [str(f) for f in files]
    for row, truth in zip(frame.itertuples(), (LESION, DICOM_LESION), strict=True):
        found = np.array([row.x1, row.y1, row.x2, row.y2])
        # cache pixels are 2x (PNG: 256 -> 128) and 2.34x (DICOM: 300 -> 128) the original ones
        assert np.abs(found - np.array(truth)).max() <= 2.5, (row.image_id, found, truth)
    # score_threshold reaches the ROI heads for the call only
    assert len(detector.predict_images(files, score_threshold=0.7)) == 2
    assert detector.predict_images(files, score_threshold=0.9).empty
    assert detector.model.roi_heads.score_thresh == 0.05
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        detector.predict_images(files, score_threshold=1.0)


def test_predict_images_equals_predict_on_a_cache_of_the_files(tmp_path: Path, cr_dicom) -> None:
    files = _files(tmp_path, cr_dicom)
    config = _config("model.score_thresh=0.0", "model.rpn_proposals_test=50")
    torch.manual_seed(0)
    model = build_detector(**from_config(config, read_weights=False))
    detector = finetune.load(train.save(model, config, tmp_path / "detector.pt"))
    assert isinstance(detector, Detector) and not detector.model.training
    assert detector.classes == ["Nodule/Mass"] and detector.path == tmp_path / "detector.pt"

    frame = detector.predict_images(files, device="cpu")
    records = [
        Record(
            image_id=str(f),  # the two files share a stem: their ids are their paths as given
            source="t",
            path=str(f),
            patient_id="p",
            width=image_size(f)[0],
            height=image_size(f)[1],
        )
        for f in files
    ]
    recipe = config.data.preprocess
    build_cache(records=records, out_dir=tmp_path / "cache", recipe=recipe, progress=False)
    cached = finetune.predict(
        detector.model,
        records=records,
        cache=Cache(tmp_path / "cache"),
        classes=detector.classes,
        progress=False,
    )
    assert len(frame) > 0 and set(frame["image_id"]) == {str(f) for f in files}
    pd.testing.assert_frame_equal(frame.drop(columns=["path"]), cached)
    png_rows = frame[frame["path"] == str(files[0])]
    assert (frame["x2"] <= 300).all() and (png_rows["x2"] <= 256).all()
    assert (png_rows["y2"] <= 192).all() and len(png_rows) < len(frame)
