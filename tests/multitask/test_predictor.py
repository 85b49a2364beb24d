"""A loaded multi-task model, a screening member and the ensemble on image files: the same numbers
as their predictions on a cache of the same files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cxrkit import multitask
from cxrkit.config import load
from cxrkit.data.cache import Cache
from cxrkit.data.images import image_size
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Record
from cxrkit.multitask import ensemble as ensembles
from cxrkit.multitask import screening, train
from cxrkit.multitask.config import MultiTaskConfig
from cxrkit.multitask.model import build_from_config
from cxrkit.multitask.predictor import Classifier

from .conftest import CONFIGS


def _files(root: Path, cr_dicom) -> list[Path]:
    rng = np.random.default_rng(1)
    png = rng.normal(100, 30, (80, 64)).clip(0, 255).astype(np.uint8)
    cv2.imwrite(str(root / "tall.png"), png)
    stored = rng.normal(2000, 300, (48, 96)).clip(0, 4095).astype(np.uint16)
    cr_dicom(root / "wide.dcm", stored, PhotometricInterpretation="MONOCHROME1")
    return [root / "tall.png", root / "wide.dcm"]


def _cache(files: list[Path], config: MultiTaskConfig, root: Path) -> tuple[list[Record], Cache]:
    records = [
        Record(
            image_id=f.stem,
            source="t",
            path=str(f),
            patient_id=f.stem,
            width=image_size(f)[0],
            height=image_size(f)[1],
        )
        for f in files
    ]
    recipe = config.data.preprocess
    build_cache(records=records, out_dir=root / "cache", recipe=recipe, progress=False)
    return records, Cache(root / "cache")


def test_classifier_scores_files_as_on_their_cache(tmp_path: Path, cr_dicom) -> None:
    files = _files(tmp_path, cr_dicom)
    config = load(MultiTaskConfig, files=[CONFIGS / "tiny_kcr_model1.yaml"])
    torch.manual_seed(0)
    model = build_from_config(config, num_outputs=len(config.findings), load_weights=False)
    path = train.save_model(model, config, tmp_path / "model.pt", findings=["a"])
    classifier = multitask.load(path)
    assert isinstance(classifier, Classifier) and not classifier.model.training
    assert classifier.extra["findings"] == ["a"] and classifier.path == path
    names = ["Consolidation", "Pneumothorax", "Nodule/Mass", "Fibrosis", "Effusion"]
    assert classifier.findings == names

    wide = classifier.predict_images(files, device="cpu")
    assert list(wide.columns) == ["path", "image_id", *names]
    assert list(wide["path"]) == [str(f) for f in files]
    records, cache = _cache(files, config, tmp_path)
    long = multitask.predict(
        classifier.model, classifier.config, records=records, cache=cache, device="cpu"
    )
    expected = long.pivot(index="image_id", columns="finding", values="score")
    got = wide.set_index("image_id")[names]
    pd.testing.assert_frame_equal(
        got, expected.loc[got.index, names], check_names=False, check_exact=True
    )


def test_member_and_ensemble_score_files_as_on_their_cache(
    tmp_path: Path, cr_dicom, save_random_ensemble
) -> None:
    files = _files(tmp_path, cr_dicom)
    out = tmp_path / "ensemble"
    config, paths = save_random_ensemble(out, threshold=0.1)
    records, cache = _cache(files, config, tmp_path)

    member = multitask.load(paths[0])
    assert member.is_member and member.findings == ["Effusion"]
    table = member.predict_images(files, device="cpu")
    expected = screening.predict_member(
        member.model, config, disease="Effusion", records=records, cache=cache, device="cpu"
    )
    pd.testing.assert_frame_equal(table.drop(columns=["path"]), expected, check_exact=True)

    ensemble = multitask.Ensemble.load(out)
    frame = ensemble.predict_images(files, device="cpu")
    columns = ensembles.feature_names(config.screening.diseases, classes=3)
    assert list(frame.columns) == ["path", "image_id", *columns, "score", "abnormal"]
    ids, feats = ensemble.features_of(records=records, cache=cache, device="cpu")
    assert ids == list(frame["image_id"])
    np.testing.assert_array_equal(frame[columns].to_numpy(), feats)
    np.testing.assert_array_equal(frame["score"], ensemble.score(feats))
    assert list(frame["abnormal"]) == list(ensemble.score(feats) >= 0.1)
    assert frame.attrs["threshold"] == 0.1
