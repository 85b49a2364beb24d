"""Shared fixtures. Real sample data is read from ../shared/data (or $CXRKIT_SHARED_DATA) and tests
that need it skip cleanly when it is absent, as in a user's own clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("CXRKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _empty_torch_cache(tmp_path_factory, monkeypatch):
    """Every test sees an empty torch cache: ``init: imagenet`` without a path looks there
    (cxrkit.models.weights), and a developer's downloaded weights must not change a test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))


class Killed(Exception):
    """Stands for SIGKILL / a lost node in the middle of a training step."""


@pytest.fixture
def kill_at_step(monkeypatch):
    """``with kill_at_step(ModuleClass, step): stage.fit(config)``: the run dies (:class:`Killed`,
    which the block expects) as its step ``step`` starts, leaving the checkpoints written before."""
    import contextlib

    @contextlib.contextmanager
    def kill(module_class, step: int):
        original = module_class.training_step

        def dying_step(self, batch, batch_idx):
            if self.global_step == step:
                raise Killed
            return original(self, batch, batch_idx)

        with monkeypatch.context() as m:
            m.setattr(module_class, "training_step", dying_step)
            with pytest.raises(Killed):
                yield

    return kill


@pytest.fixture
def assert_same_weights():
    """``assert_same_weights(run_a, run_b, step=k)``: both runs' ``checkpoints/last.ckpt`` are at
    global step ``k`` and hold bit-identical weights (``torch.equal``, key by key)."""
    import torch

    def check(a: Path, b: Path, *, step: int) -> None:
        blobs = [
            torch.load(Path(d) / "checkpoints" / "last.ckpt", weights_only=True) for d in (a, b)
        ]
        assert [blob["global_step"] for blob in blobs] == [step, step]
        first, second = (blob["state_dict"] for blob in blobs)
        assert first.keys() == second.keys()
        for key, value in first.items():
            assert torch.equal(value, second[key]), key

    return check


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test (``pytest.mark.usefixtures("one_thread")``): on a
    shared CPU, OpenMP threads spin waiting for each other and small training steps take many
    times longer (tests/multitask/test_resume_seeded.py: 190 s with two threads, 33 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def save_random_ensemble():
    """``save_random_ensemble(out, threshold=t)``: a one-member (Effusion) screening ensemble of
    the tiny screening config, random network and a random SVM, saved in ``out`` as training
    saves one; returns ``(config, member_paths)``. Session-scoped so module fixtures can
    use it; each call builds afresh."""

    def save(out: Path, *, threshold: float):
        import numpy as np
        import torch

        from cxrkit.config import load
        from cxrkit.multitask import ensemble, screening, train
        from cxrkit.multitask.config import MultiTaskConfig
        from cxrkit.multitask.model import build_from_config

        config = load(
            MultiTaskConfig,
            files=[REPO / "configs" / "multitask" / "tiny_screening.yaml"],
            overrides=[
                "screening.diseases=[Effusion]",  # one member: the SVM's input is still its logits
                "screening.risk_groups=[urgent=Effusion]",
            ],
        )
        torch.manual_seed(0)
        members = [build_from_config(config, num_outputs=3, load_weights=False).eval()]
        paths = [
            train.save_model(
                m, config, out / "members" / screening.member_slug(d) / "member.pt", disease=d
            )
            for m, d in zip(members, config.screening.diseases, strict=True)
        ]
        rng = np.random.default_rng(0)
        svm, _ = ensemble.fit_svm(rng.normal(size=(20, 3)), np.r_[np.zeros(10), np.ones(10)])
        ensemble.Ensemble(
            diseases=list(config.screening.diseases),
            members=members,
            svm=svm,
            threshold=threshold,
            target_sensitivity=0.9,
            config=config,
        ).save(out, member_paths=paths)
        return config, paths

    return save


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real sample data (nih/, dicom/, chestx-det/); skips the test when absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real sample data not found at {root} (set CXRKIT_SHARED_DATA)")
    return root


@pytest.fixture
def cr_dicom():
    """``cr_dicom(path, pixels, **tags) -> path``: a minimal CR DICOM of uint16 ``pixels``; the
    ``tags`` are set after the pixel data, so a test can make the header disagree with it."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    def write(path: Path, pixels: np.ndarray, **tags: object) -> Path:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.PatientID = "CR", "P1"
        ds.set_pixel_data(np.asarray(pixels, dtype=np.uint16), "MONOCHROME2", 16)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
        return path

    return write


@pytest.fixture
def split_data(tmp_path: Path):
    """A DataConfig over four 32 px PNGs in splits train, train, val, test (ids i0..i3), its
    cache already built (a first build reads the manifest itself, so read counts start after)."""
    import cv2
    import numpy as np

    from cxrkit.config import DataConfig, PreprocessConfig
    from cxrkit.data import loading
    from cxrkit.data.records import Record, write_manifest

    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        path = tmp_path / f"i{i}.png"
        cv2.imwrite(str(path), np.full((32, 32), 40 * i, np.uint8))
        rows.append(
            Record(
                image_id=f"i{i}",
                source="t",
                path=str(path),
                patient_id=f"p{i}",
                width=32,
                height=32,
                split=split,
            )
        )
    data = DataConfig(
        manifest=str(write_manifest(rows, tmp_path / "m.parquet")),
        cache=str(tmp_path / "cache"),
        preprocess=PreprocessConfig(size=16, clahe=False, clip_percentiles=False),
    )
    loading.open_cache(data, progress=False)
    return data
