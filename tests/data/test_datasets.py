import logging
import pickle
import shutil
import threading

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxrkit.config import DataConfig, PreprocessConfig
from cxrkit.data import augmentation, datasets, loading
from cxrkit.data.cache import Cache
from cxrkit.data.preprocess import build_cache
from cxrkit.data.records import Box, Record, write_manifest
from cxrkit.errors import ConfigError, DataError, MissingFileError

SIZE = 64
RECIPE = PreprocessConfig(size=SIZE, clahe=False)
CLASSES = ["Nodule", "Mass", "Effusion", "Aortic enlargement"]
SQUARE = (20, 10, 40, 30)  # the bright square of image "a", original pixels


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return str(path)


def _make_records(root):
    """Four small non-square originals with boxes, labels and masks."""
    rng = np.random.default_rng(0)

    def background(width, height):
        return rng.integers(0, 40, size=(height, width), dtype=np.uint8)

    a = background(96, 64)  # wider than high: padded top and bottom
    x1, y1, x2, y2 = SQUARE
    a[y1:y2, x1:x2] = 230
    lesion = np.zeros_like(a)
    lesion[y1:y2, x1:x2] = 255
    lung = np.zeros_like(a)
    lung[:, :48] = 255
    b = background(64, 96)  # higher than wide: padded left and right
    lung_b = np.zeros_like(b)
    lung_b[20:70, 10:30] = 255
    c = background(80, 80)
    d = background(72, 88)
    return [
        Record(
            image_id="a",
            source="test",
            path=_write_png(root / "a.png", a),
            patient_id="p1",
            width=96,
            height=64,
            view="PA",
            split="train",
            labels={"Nodule": 1, "Mass": 0, "Effusion": 0},
            boxes=[Box(finding="Nodule", x1=x1, y1=y1, x2=x2, y2=y2)],
            mask_paths={
                "lesion": _write_png(root / "a_lesion.png", lesion),
                "lung": _write_png(root / "a_lung.png", lung),
            },
        ),
        Record(
            image_id="b",
            source="test",
            path=_write_png(root / "b.png", b),
            patient_id="p2",
            width=64,
            height=96,
            view="AP",
            split="train",
            labels={"Nodule": 0},
            mask_paths={"lung": _write_png(root / "b_lung.png", lung_b)},
        ),
        Record(
            image_id="c",
            source="test",
            path=_write_png(root / "c.png", c),
            patient_id="p3",
            width=80,
            height=80,
            view="PA",
            split="val",
            labels={"Mass": 1, "Effusion": 1},
            boxes=[
                Box(finding="Mass", x1=5, y1=5, x2=30, y2=25, reader="R1"),
                Box(finding="Mass", x1=6, y1=6, x2=31, y2=26, reader="R2"),
                Box(finding="Effusion", x1=40, y1=50, x2=80, y2=80, reader="R1"),
            ],
        ),
        Record(
            image_id="d",
            source="test",
            path=_write_png(root / "d.png", d),
            patient_id="p4",
            width=72,
            height=88,
            view="unknown",
            split="val",
            boxes=[Box(finding="Aortic enlargement", x1=10, y1=10, x2=20, y2=30)],
        ),
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(records, Cache) of a finished 64 px cache made by the real preprocess writer."""
    root = tmp_path_factory.mktemp("ds")
    records = _make_records(root / "orig")
    build_cache(records=records, out_dir=root / "cache", recipe=RECIPE, workers=1, progress=False)
    return records, Cache(root / "cache")


def _by_id(records, image_id):
    return next(r for r in records if r.image_id == image_id)


def test_a_finding_no_record_states_is_warned_unless_unlabelled_by_design(built, caplog):
    records, cache = built
    with caplog.at_level("WARNING", logger=datasets.__name__):
        datasets.ClassificationDataset(records=records, cache=cache, findings=["Hernia"])
    assert "no record states Hernia" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=datasets.__name__):
        datasets.ClassificationDataset(
            records=records, cache=cache, findings=["Hernia"], labelled=False
        )
    assert caplog.text == ""


# ------------------------------------------------------------------------------------------------
# Items


def test_classification_items_shapes_and_values(built):
    records, cache = built
    ds = datasets.ClassificationDataset(
        records=records,
        cache=cache,
        findings=["Nodule", "Mass", "Effusion"],
        masks=["lung", "heart"],
    )
    assert len(ds) == 4 and ds.image_ids == ["a", "b", "c", "d"]
    for i, r in enumerate(records):
        item = ds[i]
        assert item["image_id"] == r.image_id and item["view"] == r.view
        assert item["image"].shape == (1, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert item["image"].min() >= 0 and item["image"].max() <= 1
        assert item["labels"].shape == item["label_known"].shape == (3,)
        assert item["labels"].dtype == item["label_known"].dtype == torch.float32
        assert item["masks"].shape == (2, SIZE, SIZE) and item["masks"].dtype == torch.float32
        assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}
        assert item["boxes"].shape == (len(r.boxes), 4) and item["boxes"].dtype == torch.float32
        assert item["box_findings"] == [b.finding for b in r.boxes]
    a = ds[0]
    assert a["labels"].tolist() == [1, 0, 0] and a["label_known"].tolist() == [1, 1, 1]
    assert a["mask_known"].tolist() == [1, 0]  # no heart mask on disk
    assert a["masks"][1].sum() == 0
    # image a (96x64) is padded by 16 rows top and bottom: the left-half lung mask sits in cache
    # rows 16*2/3 .. (16+64)*2/3 and columns 0 .. 48*2/3
    lung = a["masks"][0].numpy()
    assert lung[11:53, :32].mean() > 0.95 and lung[:10].sum() == 0 and lung[:, 33:].sum() == 0
    c = ds[2]
    assert c["labels"].tolist() == [0, 1, 1] and c["label_known"].tolist() == [0, 1, 1]
    assert ds[3]["label_known"].tolist() == [0, 0, 0]


def test_unlabeled_items_and_transform(built):
    records, cache = built
    ds = datasets.UnlabeledDataset(records=records, cache=cache)
    item = ds[1]
    assert set(item) == {"image_id", "image"} and item["image_id"] == "b"
    assert item["image"].shape == (1, SIZE, SIZE) and item["image"].dtype == torch.float32
    np.testing.assert_allclose(item["image"][0].numpy() * 255, cache.load("b"), atol=1e-3)

    def two_views(image):
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE)
        t = torch.from_numpy(image).float()[None]
        return [t, t.flip(-1)]

    views = datasets.UnlabeledDataset(records=records, cache=cache, transform=two_views)
    batch = datasets.collate([views[0], views[1], views[2]])
    assert batch["image_id"] == ["a", "b", "c"]
    assert len(batch["image"]) == 2 and batch["image"][0].shape == (3, 1, SIZE, SIZE)
    assert torch.equal(batch["image"][1], batch["image"][0].flip(-1))


def test_detection_items_and_empty_targets(built):
    records, cache = built
    ds = datasets.DetectionDataset(records=records, cache=cache, classes=CLASSES)
    empty = ds[1]  # image b has no boxes ("No finding")
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["labels"].shape == (0,) and empty["labels"].dtype == torch.int64
    c = ds[2]
    assert c["labels"].tolist() == [2, 2, 3]  # both readers' Mass boxes kept, as given
    assert c["image"].shape == (1, SIZE, SIZE) and c["view"] == "PA"
    assert ds[3]["labels"].tolist() == [4]


def test_boxes_are_mapped_to_cache_pixels(built):
    records, cache = built
    ds = datasets.DetectionDataset(records=records, cache=cache, classes=CLASSES)
    for i, r in enumerate(records):
        expected = cache.geometry(r.image_id).boxes_to_cache(np.array([b.xyxy for b in r.boxes]))
        np.testing.assert_allclose(ds[i]["boxes"].numpy(), expected.reshape(-1, 4), atol=1e-4)
    # Golden value by hand: a is 96x64, padded to 96x96 (16 rows on top), scaled by 64/96.
    s = 2 / 3
    np.testing.assert_allclose(
        ds[0]["boxes"].numpy(), [[20 * s, (10 + 16) * s, 40 * s, (30 + 16) * s]], atol=1e-4
    )
    # ... and the bright square really is there in the cache image.
    bright = ds[0]["image"][0].numpy() > 0.5
    ys, xs = np.nonzero(bright)
    np.testing.assert_allclose(
        [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], ds[0]["boxes"][0].numpy(), atol=1.0
    )


def test_finding_groups(built):
    records, cache = built
    base = _by_id(records, "a")

    def rec(image_id, labels):
        return Record(**{**base.__dict__, "image_id": image_id, "labels": labels})

    cases = [
        ({"Nodule": 1}, 1, 1),  # one member positive, the other unknown
        ({"Nodule": 0}, 0, 1),  # one member negative, the other unknown: known negative
        ({"Nodule": 0, "Mass": 1}, 1, 1),
        ({"Nodule": 0, "Mass": 0}, 0, 1),
        ({"Effusion": 1}, 0, 0),  # no member known
    ]
    group = ["Nodule/Mass=Nodule|Mass", "Effusion"]
    for labels, want, known in cases:
        ds = datasets.ClassificationDataset(records=[rec("a", labels)], cache=cache, findings=group)
        item = ds[0]
        assert ds.findings == ["Nodule/Mass", "Effusion"]
        assert (item["labels"][0].item(), item["label_known"][0].item()) == (want, known), labels
    with pytest.raises(ConfigError, match="Name=Member"):
        datasets.ClassificationDataset(records=records, cache=cache, findings=["X=A|"])
    with pytest.raises(ConfigError, match="listed twice"):
        datasets.ClassificationDataset(records=records, cache=cache, findings=["Mass", "Mass"])
    with pytest.raises(ConfigError, match="^ClassificationDataset: findings is empty$"):
        datasets.ClassificationDataset(records=records, cache=cache, findings=[])
    with pytest.raises(ConfigError, match="ClassificationDataset: masks must be a list"):
        datasets.ClassificationDataset(records=records, cache=cache, findings=group, masks="lung")
    with pytest.raises(ConfigError, match="^DetectionDataset: classes is empty$"):
        datasets.DetectionDataset(records=records, cache=cache, classes=[])
    with pytest.raises(ConfigError, match="DetectionDataset: ignore must be a list"):
        datasets.DetectionDataset(records=records, cache=cache, classes=group, ignore="Effusion")


def test_detection_class_groups_and_ignore(built):
    records, cache = built
    ds = datasets.DetectionDataset(
        records=records,
        cache=cache,
        classes=["Lesion=Nodule|Mass", "Effusion"],
        ignore=["Aortic enlargement"],
    )
    assert ds.classes == ["Lesion", "Effusion"]
    assert ds[0]["labels"].tolist() == [1] and ds[2]["labels"].tolist() == [1, 1, 2]
    assert ds[3]["boxes"].shape == (0, 4)  # its only box is ignored


def test_unknown_box_finding_names_the_image(built):
    records, cache = built
    with pytest.raises(DataError, match=r"image 'd'.*'Aortic enlargement'"):
        datasets.DetectionDataset(
            records=records, cache=cache, classes=["Nodule", "Mass", "Effusion"]
        )


def test_records_not_in_cache_are_named(built):
    records, cache = built
    stranger = Record(**{**records[0].__dict__, "image_id": "zz"})
    with pytest.raises(DataError, match=r"1 of 5 records.*'zz'"):
        datasets.UnlabeledDataset(records=[*records, stranger], cache=cache)


# ------------------------------------------------------------------------------------------------
# Augmentation


def _bright(image):
    """The bright square: above the midpoint between the background and the brightest pixel."""
    return image > (np.median(image) + image.max()) / 2


def test_augmentation_keeps_boxes_inside_and_on_the_lesion(built):
    records, cache = built
    a = [_by_id(records, "a")] * 24  # the same image, augmented 24 times
    augment = augmentation.default_augment(kind="detection", size=SIZE, strength="strong")
    augment.set_random_seed(0)
    det = datasets.DetectionDataset(records=a, cache=cache, classes=CLASSES, augment=augment)
    still = datasets.DetectionDataset(records=a[:1], cache=cache, classes=CLASSES)[0]["boxes"]
    moved = 0
    for i in range(len(a)):
        item = det[i]
        if len(item["boxes"]) == 0:
            continue  # the lesion left the image: allowed, its box went with it
        (x1, y1, x2, y2), bright = item["boxes"][0].tolist(), _bright(item["image"][0].numpy())
        assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
        inside = bright[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))].sum()
        assert inside >= 0.95 * bright.sum(), i
        ys, xs = np.nonzero(bright)
        region = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose([x1, y1, x2, y2], region, atol=2.0)
        moved += not np.allclose(item["boxes"].numpy(), still.numpy(), atol=0.5)
    assert moved > 5  # the augmentation did move things


def test_augmentation_keeps_masks_aligned_with_the_image(built):
    records, cache = built
    a = [_by_id(records, "a")] * 16
    augment = A.Compose(
        [A.Affine(rotate=(-20, 20), translate_percent=0.1, scale=(0.8, 1.2), p=1.0)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=[augmentation.BOX_LABEL_FIELD]),
        seed=0,
    )
    cls = datasets.ClassificationDataset(
        records=a, cache=cache, findings=["Nodule"], masks=["lesion"], augment=augment
    )
    for i in range(len(a)):
        c = cls[i]
        mask, bright = c["masks"][0].numpy() > 0.5, _bright(c["image"][0].numpy())
        # edges differ by interpolation (bilinear image, nearest mask); a mask that did not move
        # with the image would miss most of the square
        iou = (mask & bright).sum() / (mask | bright).sum()
        assert iou > 0.7, (i, iou)
        np.testing.assert_allclose(np.argwhere(mask).mean(0), np.argwhere(bright).mean(0), atol=1)
        assert c["box_findings"] == ["Nodule"]
        bx1, by1, bx2, by2 = c["boxes"][0].tolist()
        assert mask[int(by1) : int(np.ceil(by2)), int(bx1) : int(np.ceil(bx2))].sum() == mask.sum()


def test_boxes_pushed_out_of_the_image_are_dropped(built):
    records, cache = built
    shift_out = A.Compose(
        [A.Affine(translate_px={"x": 50, "y": 0}, p=1.0)],
        bbox_params=A.BboxParams(
            format="pascal_voc", label_fields=[augmentation.BOX_LABEL_FIELD], clip=True
        ),
    )
    raw = shift_out(
        image=cache.load("a"), bboxes=[[40 / 3, 52 / 3, 80 / 3, 92 / 3]], box_labels=[0]
    )
    assert len(raw["bboxes"]) == 1  # albumentations keeps a 0.67 px sliver (x 63.3..64) ...
    ds = datasets.DetectionDataset(records=records, cache=cache, classes=CLASSES, augment=shift_out)
    item = ds[0]
    assert item["boxes"].shape == (0, 4) and item["labels"].shape == (0,)  # ... the dataset not
    # c (80x80, scale 0.8): Mass boxes x 4..24 move 50 px to 54..74 and are clipped at 64; the
    # Effusion box x 32..64 leaves the image.
    kept = ds[2]
    assert kept["labels"].tolist() == [2, 2]
    np.testing.assert_allclose(kept["boxes"][:, [0, 2]].numpy(), [[54, 64], [54.8, 64]], atol=0.01)


def test_augment_must_carry_boxes(built):
    records, cache = built
    with pytest.raises(ConfigError, match="bbox_params"):
        datasets.DetectionDataset(
            records=records, cache=cache, classes=CLASSES, augment=A.Compose([A.Affine()])
        )
    with pytest.raises(ConfigError, match="albumentations Compose"):
        datasets.DetectionDataset(
            records=records, cache=cache, classes=CLASSES, augment=lambda **kw: kw
        )


def test_default_augment_options():
    flip = augmentation.default_augment(kind="detection", size=SIZE, hflip=True)
    plain = augmentation.default_augment(kind="classification", size=SIZE)
    assert any(isinstance(t, A.HorizontalFlip) for t in flip.transforms)
    assert not any(isinstance(t, A.HorizontalFlip) for t in plain.transforms)
    image = np.full((96, 96), 100, np.uint8)
    out = plain(image=image, bboxes=np.zeros((0, 4)), box_labels=np.zeros(0))
    assert out["image"].shape == (SIZE, SIZE) and out["image"].dtype == np.uint8
    with pytest.raises(ConfigError, match="kind"):
        augmentation.default_augment(kind="segmentation", size=SIZE)
    with pytest.raises(ConfigError, match="strength"):
        augmentation.default_augment(kind="detection", size=SIZE, strength="extreme")


def test_named_transforms_build_exactly_the_list_in_order():
    flip_only = augmentation.default_augment(kind="detection", size=SIZE, transforms=["hflip"])
    assert [type(t) for t in flip_only.transforms] == [A.HorizontalFlip, A.Resize]
    thesis = augmentation.default_augment(
        kind="classification",
        size=SIZE,
        transforms=["shift", "rotate", "gamma", "sharpen", "blur", "noise"],
    )
    kinds = [type(t) for t in thesis.transforms]
    assert kinds == [
        A.Affine,
        A.Affine,
        A.RandomGamma,
        A.Sharpen,
        A.GaussianBlur,
        A.GaussNoise,
        A.Resize,
    ]
    shift, rotate = thesis.transforms[0], thesis.transforms[1]
    # shift does not zoom or rotate; rotate does not shift or zoom
    assert shift.rotate == (0, 0) and rotate.translate_px["x"] == (0, 0)
    assert shift.scale["x"] == (1, 1) and rotate.scale["x"] == (1, 1)
    # the default is unchanged: affine jitter then brightness/contrast
    default = augmentation.default_augment(kind="detection", size=SIZE)
    assert [type(t) for t in default.transforms] == [A.Affine, A.RandomBrightnessContrast, A.Resize]
    image = (np.arange(96 * 96) % 251).astype(np.uint8).reshape(96, 96)
    out = thesis(image=image, bboxes=np.zeros((0, 4)), box_labels=np.zeros(0))
    assert out["image"].shape == (SIZE, SIZE) and out["image"].dtype == np.uint8
    with pytest.raises(ConfigError, match="'zoom' is not one of hflip"):
        augmentation.default_augment(kind="detection", size=SIZE, transforms=["zoom"])


# ------------------------------------------------------------------------------------------------
# Workers and batching


def test_pickle_round_trip(built):
    records, cache = built
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.ids == cache.ids and clone.geometry("a") == cache.geometry("a")
    ds = datasets.ClassificationDataset(
        records=records,
        cache=cache,
        findings=["Nodule"],
        masks=["lung"],
        augment=augmentation.default_augment(kind="classification", size=SIZE),
    )
    again = pickle.loads(pickle.dumps(ds))
    assert again.image_ids == ds.image_ids
    assert torch.equal(again[2]["labels"], ds[2]["labels"])


def test_dataloader_with_workers_and_collate(built):
    records, cache = built
    det = datasets.DetectionDataset(
        records=records,
        cache=cache,
        classes=CLASSES,
        augment=augmentation.default_augment(kind="detection", size=SIZE),
    )
    loader = DataLoader(det, batch_size=2, num_workers=2, collate_fn=datasets.collate)
    batches = list(loader)
    assert [b["image_id"] for b in batches] == [["a", "b"], ["c", "d"]]
    first = batches[0]
    assert first["image"].shape == (2, 1, SIZE, SIZE)
    assert isinstance(first["boxes"], list) and first["boxes"][1].shape == (0, 4)
    assert isinstance(first["labels"], list) and first["labels"][1].shape == (0,)

    cls = datasets.ClassificationDataset(
        records=records, cache=cache, findings=["Nodule", "Mass"], masks=["lung"]
    )
    batch = next(iter(DataLoader(cls, batch_size=4, num_workers=2, collate_fn=datasets.collate)))
    assert batch["labels"].shape == (4, 2) and batch["masks"].shape == (4, 1, SIZE, SIZE)
    assert batch["view"] == ["PA", "AP", "PA", "unknown"]
    assert [len(b) for b in batch["boxes"]] == [1, 0, 3, 1]


def test_workers_get_different_augmentations(built):
    records, cache = built
    same = [_by_id(records, "c")] * 4
    ds = datasets.UnlabeledDataset(
        records=same, cache=cache, transform=A.Compose([A.Affine(rotate=(-45, 45), p=1.0)])
    )
    items = list(DataLoader(ds, batch_size=1, num_workers=2, collate_fn=datasets.collate))
    images = [b["image"][0] for b in items]  # workers serve items 0, 2 and 1, 3
    # albumentations' own generator is inherited by every forked worker: without reseeding,
    # worker 0's and worker 1's first items would be rotated identically.
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[2], images[3])


def test_collate_rules():
    det = [
        {"image_id": "x", "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"image_id": "y", "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    batch = datasets.collate(det)
    # equal-length per-box targets still stay lists, so a batch has one type whatever N is
    assert isinstance(batch["boxes"], list) and isinstance(batch["labels"], list)
    cls = [{"labels": torch.tensor([1.0, 0.0])}, {"labels": torch.tensor([0.0, 1.0])}]
    assert datasets.collate(cls)["labels"].shape == (2, 2)
    with pytest.raises(ValueError, match="different keys"):
        datasets.collate([{"a": 1}, {"b": 2}])


# ------------------------------------------------------------------------------------------------
# Failures name their image


def test_corrupt_cache_png_names_the_image(built, tmp_path):
    records, cache = built
    root = tmp_path / "cache"
    shutil.copytree(cache.root, root)
    broken = Cache(root)
    (root / broken._rows["c"]["file"]).write_bytes(b"not a png")
    ds = datasets.DetectionDataset(records=records, cache=broken, classes=CLASSES)
    assert ds[0]["image_id"] == "a"
    with pytest.raises(DataError, match=r"image 'c' \(item 2\).*corrupt"):
        ds[2]
    loader = DataLoader(ds, batch_size=1, num_workers=1, collate_fn=datasets.collate)
    with pytest.raises(DataError, match="image 'c'"):
        list(loader)


# ------------------------------------------------------------------------------------------------
# open_cache and load_records


def _data_config(tmp_path, records, **kw):
    manifest = write_manifest(records, tmp_path / "m.parquet")
    fields = {
        "manifest": str(manifest),
        "cache": str(tmp_path / "cache"),
        "preprocess": RECIPE,
        "num_workers": 0,
        **kw,
    }
    return DataConfig(**fields)


def test_open_cache_builds_then_rejects_another_recipe(tmp_path):
    records = _make_records(tmp_path / "orig")
    data = _data_config(tmp_path, records)
    cache = loading.open_cache(data, progress=False)
    assert sorted(cache.ids) == ["a", "b", "c", "d"]
    assert cache.load("a").shape == (SIZE, SIZE)
    train = loading.load_records(data, split="train", cache=cache)
    assert [r.image_id for r in train] == ["a", "b"]
    assert loading.open_cache(data, records=train).root == cache.root  # reuses it

    other = DataConfig(**{**data.__dict__, "preprocess": PreprocessConfig(size=32, clahe=False)})
    with pytest.raises(ConfigError, match=r"size: cache 64 vs config 32") as info:
        loading.open_cache(other, progress=False)
    assert str(tmp_path / "cache") in str(info.value) and "data.preprocess" in str(info.value)
    with pytest.raises(ConfigError, match="split"):
        loading.load_records(data, split="training")


def test_open_cache_missing_records_fail_or_skip(tmp_path, caplog):
    records = _make_records(tmp_path / "orig")
    (tmp_path / "orig" / "c.png").write_bytes(b"garbage")  # preprocess cannot read c
    data = _data_config(tmp_path, records, on_error="skip")
    wanted = list(records)
    with caplog.at_level(logging.WARNING, logger="cxrkit.data.datasets"):
        cache = loading.open_cache(data, records=wanted, progress=False)
    assert "c" not in cache and [r.image_id for r in wanted] == ["a", "b", "d"]
    assert "1 of 4 requested images" in caplog.text and "'c'" in caplog.text

    strict = DataConfig(**{**data.__dict__, "on_error": "fail"})
    with pytest.raises(DataError, match=r"1 of 4 requested images.*'c'"):
        loading.open_cache(strict, records=list(records))
    with pytest.raises(DataError, match=r"1 of 2 requested images.*'c'"):
        loading.load_records(strict, split="val", cache=cache)


def test_other_ranks_wait_for_rank_zero(tmp_path, monkeypatch):
    records = _make_records(tmp_path / "orig")
    data = _data_config(tmp_path, records)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(loading.CACHE_WAIT_ENV, "0.2")
    with pytest.raises(MissingFileError, match=r"rank 1 waited 0 s.*index.parquet"):
        loading.open_cache(data, progress=False)
    assert not (tmp_path / "cache").exists()  # rank 1 never builds

    monkeypatch.setenv(loading.CACHE_WAIT_ENV, "60")
    rank0 = threading.Timer(
        0.3,
        build_cache,
        kwargs={
            "records": records,
            "out_dir": tmp_path / "cache",
            "recipe": RECIPE,
            "progress": False,
        },
    )
    rank0.start()
    try:
        cache = loading.open_cache(data, progress=False)
    finally:
        rank0.join()
    assert len(cache) == 4


def test_global_rank_from_environment(monkeypatch):
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert loading.global_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert loading.global_rank() != 0  # first GPU of the second node is not global rank 0
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert loading.global_rank() == 3
    monkeypatch.setenv("RANK", "0")
    assert loading.global_rank() == 0
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="RANK"):
        loading.global_rank()


@pytest.mark.slow
def test_dataloader_with_spawned_workers(built):
    # spawn pickles the dataset (Cache, packed items, albumentations Compose) into fresh processes,
    # as on macOS/Windows and with CUDA in the parent
    records, cache = built
    ds = datasets.ClassificationDataset(
        records=records,
        cache=cache,
        findings=["Nodule"],
        masks=["lung"],
        augment=augmentation.default_augment(kind="classification", size=SIZE),
    )
    loader = DataLoader(
        ds,
        batch_size=4,
        num_workers=1,
        collate_fn=datasets.collate,
        multiprocessing_context="spawn",
    )
    batch = next(iter(loader))
    assert batch["image_id"] == ["a", "b", "c", "d"] and batch["image"].shape == (4, 1, SIZE, SIZE)
