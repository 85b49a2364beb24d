"""``cxrkit predict``: one PNG and one DICOM through each model kind; files, overlays, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit import cli
from cxrkit.config import load

REPO = Path(__file__).resolve().parents[2]
PNG_SIZE, DICOM_SIZE = (256, 192), (300, 200)  # (width, height); both differ from the cache's


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, save_random_ensemble) -> dict[str, Path]:
    """A random-weight detector.pt, multi-task model.pt and two-member ensemble directory."""
    from cxrkit.finetune import train as finetune_train
    from cxrkit.finetune.config import FinetuneConfig
    from cxrkit.finetune.model import build_detector, from_config
    from cxrkit.multitask import train as multitask_train
    from cxrkit.multitask.config import MultiTaskConfig
    from cxrkit.multitask.model import build_from_config

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    det = load(
        FinetuneConfig,
        files=[REPO / "configs" / "finetune" / "tiny_faster_rcnn.yaml"],
        overrides=["model.score_thresh=0.0", "model.rpn_proposals_test=30"],
    )
    detector = finetune_train.save(
        build_detector(**from_config(det, read_weights=False)), det, root / "detector.pt"
    )
    configs = REPO / "configs" / "multitask"
    kcr = load(MultiTaskConfig, files=[configs / "tiny_kcr_model1.yaml"])
    model = multitask_train.save_model(
        build_from_config(kcr, num_outputs=len(kcr.findings), load_weights=False),
        kcr,
        root / "model.pt",
    )
    out = root / "ensemble"
    save_random_ensemble(out, threshold=0.0)
    return {"detector": detector, "classifier": model, "ensemble": out}


@pytest.fixture
def files(tmp_path: Path, cr_dicom) -> list[Path]:
    rng = np.random.default_rng(0)
    png = rng.normal(70, 20, PNG_SIZE[::-1]).clip(0, 255).astype(np.uint8)
    png[40:100, 60:120] = 230
    cv2.imwrite(str(tmp_path / "a.png"), png)
    stored = rng.normal(3000, 200, DICOM_SIZE[::-1]).clip(0, 4095).astype(np.uint16)
    cr_dicom(tmp_path / "b.dcm", stored, PhotometricInterpretation="MONOCHROME1")
    return [tmp_path / "a.png", tmp_path / "b.dcm"]


@pytest.mark.parametrize("kind", ["detector", "classifier", "ensemble"])
def test_one_png_and_one_dicom_through_each_model_kind(
    kind: str, models: dict[str, Path], files: list[Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["predict", "--model", str(models[kind]), *map(str, files), "--out", str(out)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    assert f"{kind} on 2 images" in capsys.readouterr().out
    table = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["kind"] == kind and doc["failed"] == []
    images = doc["images"]
    assert [i["path"] for i in images] == [str(f) for f in files]
    assert [(i["width"], i["height"]) for i in images] == [PNG_SIZE, DICOM_SIZE]
    if kind == "detector":
        # one CSV row per box, the JSON's boxes per image, the same numbers; original pixels
        rows = [
            {"path": i["path"], "image_id": i["image_id"], **box}
            for i in images
            for box in i["boxes"]
        ]
        assert len(rows) == len(table) > 0
        pd.testing.assert_frame_equal(pd.DataFrame(rows), table, check_dtype=False)
        for (width, height), name in zip((PNG_SIZE, DICOM_SIZE), ("a", "b"), strict=True):
            boxes = table[table["image_id"] == name]
            assert (boxes["x2"] <= width).all() and (boxes["y2"] <= height).all()
        assert (table["x1"] >= 0).all() and (table["y1"] >= 0).all()
    else:
        # one CSV row per image, the same values as the JSON's entry
        assert len(table) == 2
        for entry, (_, row) in zip(images, table.iterrows(), strict=True):
            for column in table.columns:
                assert entry[column] == pytest.approx(row[column]), column
        if kind == "ensemble":
            assert doc["threshold"] == 0.0
            assert list(table["abnormal"]) == list(table["score"] >= 0.0)
        else:
            assert "Nodule/Mass" in table.columns
    for name, (width, height) in (("a", PNG_SIZE), ("b", DICOM_SIZE)):
        overlay = cv2.imread(str(out / "overlays" / f"{name}.png"))
        assert overlay.shape == (height, width, 3)
        assert not np.array_equal(overlay[..., 0], overlay[..., 1])  # something drawn in colour


def _fails(argv: list[str], capsys, code: int = 1) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_named_line(
    models: dict[str, Path], files: list[Path], tmp_path: Path, capsys
) -> None:
    model = str(models["classifier"])
    out = str(tmp_path / "out")
    missing = tmp_path / "nope.dcm"
    err = _fails(["predict", "--model", model, str(files[0]), str(missing), "--out", out], capsys)
    assert f"{missing}: image file not found" in err
    text = tmp_path / "notes.png"
    text.write_text("a radiology report, not an image\n")
    err = _fails(["predict", "--model", model, str(text), "--out", out], capsys)
    assert str(text) in err and "cannot decode" in err
    err = _fails(["predict", "--model", str(files[0]), str(files[1]), "--out", out], capsys)
    assert "a PNG image" in err and str(files[0]) in err
    err = _fails(["predict", "--model", str(tmp_path), str(files[1]), "--out", out], capsys)
    assert "ensemble.json" in err
    err = _fails(["predict", "--model", str(missing), str(files[1]), "--out", out], capsys)
    assert f"{missing}: model not found" in err
    # the output folder is checked first: below a file, before the (missing) model is looked at
    err = _fails(
        ["predict", "--model", str(missing), str(files[1]), "--out", str(files[0] / "x")],
        capsys,
        code=1,
    )
    assert "output directory is below a file" in err
    err = _fails(
        ["predict", "--model", model, str(files[1]), "--out", out, "--score-threshold", "0.5"],
        capsys,
        code=1,
    )
    assert "applies to detectors" in err


def test_skip_lists_unreadable_files(
    models: dict[str, Path], files: list[Path], tmp_path: Path, capsys
) -> None:
    text = tmp_path / "c.png"
    text.write_text("not an image\n")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(models["classifier"]), str(text), str(files[1])]
    assert cli.main([*argv, "--out", str(out), "--on-error", "skip", "--device", "cpu"]) == 0
    assert "skipped" in capsys.readouterr().out
    doc = json.loads((out / "predictions.json").read_text())
    assert [i["image_id"] for i in doc["images"]] == ["b"]
    assert [f["path"] for f in doc["failed"]] == [str(text)]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["b.png"]


def test_files_sharing_a_stem_across_chunks_keep_distinct_ids(
    models: dict[str, Path], files: list[Path], tmp_path: Path, monkeypatch
) -> None:
    from cxrkit import predict

    monkeypatch.setattr(predict, "CHUNK", 1)  # one file per chunk: ids are still decided over all
    twin = tmp_path / "sub" / "a.png"
    twin.parent.mkdir()
    twin.write_bytes(files[0].read_bytes())
    result = predict.predict_files(
        models["classifier"], [files[0], twin, files[1]], out_dir=tmp_path / "out", device="cpu"
    )
    assert list(result.frame["image_id"]) == [str(files[0]), str(twin), "b"]
    assert len({p.name for p in result.overlays}) == 3
    # the same pixels give the same scores, whichever chunk read them
    scores = result.frame.drop(columns=["path", "image_id"]).to_numpy()
    np.testing.assert_array_equal(scores[0], scores[1])


def test_a_real_monochrome1_jpeg2000_dicom(
    models: dict[str, Path], shared_data: Path, tmp_path: Path
) -> None:
    rg1 = shared_data / "dicom" / "RG1_J2KI.dcm"  # real CR chest PA, 1841 x 1955
    out = tmp_path / "out"
    argv = ["predict", "--model", str(models["classifier"]), str(rg1), "--out", str(out)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    doc = json.loads((out / "predictions.json").read_text())
    assert (doc["images"][0]["width"], doc["images"][0]["height"]) == (1841, 1955)
    overlay = cv2.imread(str(out / "overlays" / "RG1_J2KI.png"))
    assert overlay.shape == (1955, 1841, 3)


def test_the_kind_is_read_from_the_file(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    from cxrkit import predict
    from cxrkit.finetune.predictor import Detector
    from cxrkit.multitask import Classifier, Ensemble

    assert isinstance(predict.load(models["classifier"]), Classifier)
    assert isinstance(predict.load(models["ensemble"]), Ensemble)
    blob = torch.load(models["detector"], weights_only=True)
    # a finetune Lightning checkpoint holds the same weights under the module's "model." prefix
    ckpt = tmp_path / "best.ckpt"
    state = {f"model.{k}": v for k, v in blob["state_dict"].items()}
    torch.save({"hyper_parameters": {"config": blob["config"]}, "state_dict": state}, ckpt)
    detector = predict.load(ckpt)
    assert isinstance(detector, Detector) and detector.path == ckpt
    for key, value in detector.model.state_dict().items():
        assert torch.equal(value, blob["state_dict"][key]), key
    # a backbone.pth (plain weights, no configuration) is no model to predict with
    backbone = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, backbone)
    err = _fails(["predict", "--model", str(backbone), str(ckpt), "--out", str(tmp_path)], capsys)
    assert f"{backbone}: not a cxrkit model file" in err
