"""The image matcher (cxrkit.data.matching): exact copies, re-encoded and resized copies, images
that are not there, ties, and the pigeonhole promise of the banded index."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrkit.data import matching, sources
from cxrkit.data.records import Record, write_manifest
from cxrkit.data.sources import Issues
from cxrkit.errors import DataError, ImageReadError
from cxrkit.synth import render_phantom

RGBA = {"00001369_000", "00002578_000", "00003400_003", "00011322_006", "00014223_009"}
# held out of the reference: other images of patients the reference does contain (follow-ups of
# 4344, 211, 1529, 12094, 19750 look alike), and unrelated ones
HELD_OUT_PATIENTS = {"00004344_013", "00004344_022", "00000211_019", "00001529_005", "00012094_011"}


def phantom(seed: int, size: int = 128, view: str = "PA") -> np.ndarray:
    image = render_phantom(rng=np.random.default_rng(seed), size=size, view=view, findings=[])
    return np.round(image.image * 255).astype(np.uint8)


def refs_of(folder: Path) -> list[matching.ImageRef]:
    return matching.images_of(folder)


# --------------------------------------------------------------------------------- kernels
def test_correlation_golden_values():
    a = np.arange(16, dtype=np.float64).reshape(4, 4)
    assert matching.correlation(a, 2 * a + 3) == pytest.approx(1.0)
    assert matching.correlation(a, -a) == pytest.approx(-1.0)
    assert matching.correlation(a, np.ones_like(a)) == 0.0  # a flat image correlates with nothing
    b = a.copy()
    b[0, 0] = 100
    expected = np.corrcoef(a.ravel(), b.ravel())[0, 1]  # numpy's own Pearson r as the reference
    assert matching.correlation(a, b) == pytest.approx(expected)


def test_pixel_hash_is_of_decoded_pixels(tmp_path):
    image = phantom(0)
    cv2.imwrite(str(tmp_path / "a.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(tmp_path / "b.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    rgba = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA)  # R = G = B, as in part of NIH's release
    cv2.imwrite(str(tmp_path / "c.png"), rgba)
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    hashes = {matching.fingerprint_file(tmp_path / f"{n}.png").pixel_hash for n in "abc"}
    assert len(hashes) == 1
    other = image.copy()
    other[0, 0] ^= 1  # one grey level in one pixel
    assert matching.fingerprint(other).pixel_hash not in hashes
    # same pixels in another shape are another image
    assert matching.fingerprint(image.reshape(64, 256)).pixel_hash not in hashes


def test_banded_index_finds_every_hash_within_its_promise():
    rng = np.random.default_rng(0)
    n, bands = 2000, 4
    settings = matching.Settings(bands=bands, max_distance=64, min_correlation=-1.0)
    phash = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    dhash = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    index = matching.Index(
        refs=[matching.ImageRef(key=str(i), path=str(i)) for i in range(n)],
        pixel_hashes=[str(i) for i in range(n)],
        phash=phash,
        dhash=dhash,
        thumbs=np.zeros((n, 8, 8), np.uint8),
        settings=settings,
    )
    for trial in range(200):
        i = int(rng.integers(n))
        flips = rng.choice(64, size=2 * bands - 1, replace=False)  # the most the promise covers
        query_hash = int(phash[i])
        for bit in flips:
            query_hash ^= 1 << int(bit)
        print_ = matching.Fingerprint("q", query_hash, int(rng.integers(2**63)), np.zeros((8, 8)))
        found = index.candidates(print_)
        assert i in found, trial
        assert len(found) < n // 4  # a few buckets, not a pass over every reference
    # the promise is tight: two flipped bits in every band hide a reference
    flips = [16 * b + k for b in range(bands) for k in (3, 11)]
    query_hash = int(phash[0])
    for bit in flips:
        query_hash ^= 1 << bit
    print_ = matching.Fingerprint("q", query_hash, 0, np.zeros((8, 8)))
    assert 0 not in index.candidates(print_)


def test_settings_are_checked():
    for bad in ({"bands": 7}, {"max_distance": 65}, {"tie_margin": -1}, {"thumb_size": 4}):
        with pytest.raises(ValueError):
            matching.Settings(**bad)


# ------------------------------------------------------------------------------ on phantoms
@pytest.fixture
def phantoms(tmp_path):
    """A reference folder of 12 phantoms (256 px) and the arrays drawn."""
    ref = tmp_path / "ref"
    ref.mkdir()
    images = {}
    for seed in range(12):
        images[f"r{seed:02d}"] = phantom(seed, size=256, view="AP" if seed % 2 else "PA")
        cv2.imwrite(str(ref / f"r{seed:02d}.png"), images[f"r{seed:02d}"])
    return ref, images


def test_copies_match_and_strangers_do_not(tmp_path, phantoms):
    ref, images = phantoms
    query = tmp_path / "query"
    (query / "deep").mkdir(parents=True)
    cv2.imwrite(str(query / "x1.png"), images["r01"])  # a renamed lossless copy
    cv2.imwrite(str(query / "deep" / "x2.jpg"), images["r02"], [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(query / "x3.png"), cv2.resize(images["r03"], (128, 128), cv2.INTER_AREA))
    cv2.imwrite(str(query / "x4.png"), phantom(100, size=256))  # not in the reference
    matches = {
        m.query.key: m for m in matching.match(refs_of(query), matching.build_index(refs_of(ref)))
    }
    assert set(matches) == {"x1", "deep/x2", "x3", "x4"}
    assert (matches["x1"].reference, matches["x1"].method, matches["x1"].score) == (
        "r01",
        "exact",
        1.0,
    )
    assert (matches["deep/x2"].reference, matches["deep/x2"].method) == ("r02", "fingerprint")
    assert (matches["x3"].reference, matches["x3"].method) == ("r03", "fingerprint")
    assert matches["deep/x2"].score > 0.999 and matches["x3"].score > 0.99
    assert matches["x4"].status == "unmatched" and matches["x4"].reference == ""


def test_ties_are_ambiguous(tmp_path, phantoms):
    ref, images = phantoms
    cv2.imwrite(str(ref / "r01_copy.png"), images["r01"])  # identical pixels: an exact tie
    cv2.imwrite(str(ref / "r02_copy.jpg"), images["r02"], [cv2.IMWRITE_JPEG_QUALITY, 95])
    query = tmp_path / "q"
    query.mkdir()
    cv2.imwrite(str(query / "a.png"), images["r01"])
    cv2.imwrite(str(query / "b.png"), cv2.resize(images["r02"], (200, 200), cv2.INTER_AREA))
    index = matching.build_index(refs_of(ref))
    matches = {m.query.key: m for m in matching.match(refs_of(query), index)}
    a, b = matches["a"], matches["b"]
    assert (a.status, a.method, a.reference, set(a.candidates)) == (
        "ambiguous",
        "exact",
        "",
        {"r01", "r01_copy"},
    )
    assert (b.status, b.method, b.reference, set(b.candidates)) == (
        "ambiguous",
        "fingerprint",
        "",
        {"r02", "r02_copy"},
    )
    report = matching.report_for(list(matches.values()), index)
    assert report["counts"]["ambiguous"] == 2
    assert sorted(report["reference_duplicates"][0]) == ["r01", "r01_copy"]
    # with no margin at all, the closer of the two wins
    strict = matching.Settings(tie_margin=0.0)
    index = matching.build_index(refs_of(ref), settings=strict)
    assert matching.match(refs_of(query), index)[1].status == "matched"


def test_self_match_finds_duplicates_and_split_overlaps(tmp_path, phantoms):
    ref, images = phantoms
    cv2.imwrite(str(ref / "dup.jpg"), images["r05"], [cv2.IMWRITE_JPEG_QUALITY, 90])
    records = [
        Record(
            image_id=p.stem,
            source="s",
            path=str(p),
            patient_id=p.stem,
            width=256,
            height=256,
            split="test" if p.stem == "dup" else "train",
        )
        for p in sorted(ref.iterdir())
    ]
    manifest = write_manifest(records, tmp_path / "m.parquet")
    summary = matching.run(query=manifest, reference=manifest, out=tmp_path / "self.csv")
    rows = {r["query"]: r for r in csv.DictReader((tmp_path / "self.csv").open())}
    assert list(rows["r00"]) == list(matching.MATCH_COLUMNS)
    assert rows["dup"]["reference_image_id"] == "r05" and rows["r05"]["reference_image_id"] == "dup"
    # an image is never its own match: every other one is unmatched
    assert {k for k, r in rows.items() if r["status"] == "matched"} == {"dup", "r05"}
    report = json.loads(summary.report_json.read_text())
    assert report["counts"]["matched_fingerprint"] == 2 and report["counts"]["unmatched"] == 11
    overlaps = {
        (o["query"], o["query_split"], o["reference_split"]) for o in report["split_overlaps"]
    }
    assert overlaps == {("dup", "test", "train"), ("r05", "train", "test")}


def test_index_round_trip_and_reuse(tmp_path, phantoms):
    ref, _ = phantoms
    index = matching.build_index(refs_of(ref))
    path = index.save(tmp_path / "idx.npz")
    loaded = matching.load_index(path)
    assert [r.key for r in loaded.refs] == [r.key for r in index.refs]
    assert loaded.pixel_hashes == index.pixel_hashes
    assert np.array_equal(loaded.phash, index.phash) and np.array_equal(loaded.thumbs, index.thumbs)
    (tmp_path / "torn.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="torn.npz: not a readable fingerprint index"):
        matching.load_index(tmp_path / "torn.npz")
    with pytest.raises(DataError, match="built with 32 px thumbnails"):
        matching.load_index(path, settings=matching.Settings(thumb_size=16))
    # reused fingerprints are not read again: the files may even be gone
    (ref / "r00.png").unlink()
    again = matching.build_index(refs_of(tmp_path / "ref") + [index.refs[0]], reuse=loaded)
    assert len(again) == 12 and again.pixel_hashes[-1] == index.pixel_hashes[0]


def test_unreadable_images_fail_or_are_skipped(tmp_path, phantoms):
    ref, images = phantoms
    query = tmp_path / "q"
    query.mkdir()
    (query / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cv2.imwrite(str(query / "good.png"), images["r04"])
    index = matching.build_index(refs_of(ref))
    with pytest.raises(ImageReadError, match="broken.png"):
        matching.match(refs_of(query), index)
    issues = Issues(on_error="skip")
    matches = matching.match(refs_of(query), index, issues=issues)
    assert [m.reference for m in matches] == ["r04"]
    assert [i.image_id for i in issues.items] == ["broken"]


# -------------------------------------------------------------------------- the NIH sample
def test_nih_originals_recovered_from_renamed_reencoded_resized_copies(shared_data, tmp_path):
    """Issue 12's done-means: renamed NIH images, some JPEG q90 and some 512 px, mixed with
    images absent from the reference: every original recovered, the rest unmatched."""
    nih = sorted(
        sources.load_nih(root=shared_data / "nih", data_entry="Data_Entry_2017_subset.csv"),
        key=lambda r: r.image_id,
    )
    images = [Path(r.path) for r in nih]
    by_id = {p.stem: p for p in images}
    held_out = sorted(HELD_OUT_PATIENTS) + [p.stem for p in images[-6:]]
    records = [r for r in nih if r.image_id not in held_out][:60]
    reference = [Path(r.path) for r in records]
    assert RGBA & {p.stem for p in reference[:30]}  # an RGBA original among the queries
    manifest = write_manifest(records, tmp_path / "nih.parquet")

    query = tmp_path / "query"
    query.mkdir()
    truth: dict[str, str] = {}
    for k, original in enumerate(reference[:30]):
        raw = cv2.imread(str(original), cv2.IMREAD_UNCHANGED)
        grey = cv2.imread(str(original), cv2.IMREAD_GRAYSCALE)
        name = f"{10000 + k}"
        if k % 3 == 0:  # renamed, re-saved losslessly (RGBA kept as it was)
            cv2.imwrite(str(query / f"{name}.png"), raw)
        elif k % 3 == 1:
            cv2.imwrite(str(query / f"{name}.jpg"), grey, [cv2.IMWRITE_JPEG_QUALITY, 90])
        else:
            small = cv2.resize(grey, (512, 512), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(query / f"{name}.png"), small)
        truth[name] = original.stem
    for k, stem in enumerate(held_out):
        cv2.imwrite(str(query / f"{20000 + k}.png"), cv2.imread(str(by_id[stem]), 0))
    for k in range(3):
        cv2.imwrite(str(query / f"{30000 + k}.png"), phantom(k, size=512))

    summary = matching.run(query=query, reference=manifest, out=tmp_path / "matches.csv")
    rows = list(csv.DictReader((tmp_path / "matches.csv").open()))
    assert len(rows) == 30 + len(held_out) + 3
    found = {r["query"]: r["reference_image_id"] for r in rows if r["status"] == "matched"}
    assert found == truth  # every original, and nothing else: zero false matches
    methods = {r["query"]: r["method"] for r in rows if r["query"] in truth}
    assert {methods[f"{10000 + k}"] for k in range(0, 30, 3)} == {"exact"}
    assert {methods[f"{10000 + k}"] for k in range(1, 30, 3)} == {"fingerprint"}
    others = [r for r in rows if r["query"] not in truth]
    assert all(r["status"] == "unmatched" and r["reference_image_id"] == "" for r in others)
    assert summary.counts["unmatched"] == len(held_out) + 3 and summary.counts["ambiguous"] == 0


def test_dicom_originals_and_their_negatives(shared_data, tmp_path):
    """A DICOM reference is matched by its decoded pixels: an 8-bit PNG export of NIH's DICOM is
    exact, a JPEG of SIIM's CR is a fingerprint match, and the MONOCHROME1 copy of the same
    stored pixels (decoded as the negative) matches nothing."""
    from cxrkit.data.images import read_image

    dicom = shared_data / "dicom"
    nih_dcm = dicom / "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"
    siim_dcm = dicom / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    reference = [
        matching.ImageRef(key="nih", path=str(nih_dcm)),
        matching.ImageRef(key="siim", path=str(siim_dcm)),
    ]
    query = tmp_path / "q"
    query.mkdir()
    cv2.imwrite(str(query / "nih.png"), read_image(nih_dcm)[0].astype(np.uint8))
    siim = np.clip(read_image(siim_dcm)[0], 0, 255).astype(np.uint8)
    cv2.imwrite(str(query / "siim.jpg"), siim, [cv2.IMWRITE_JPEG_QUALITY, 90])
    negative = tmp_path / "neg"
    negative.mkdir()
    (negative / "fake.dcm").write_bytes((dicom / "Fake_MONOHR1.dcm").read_bytes())
    index = matching.build_index(reference)
    got = {m.query.key: m for m in matching.match(refs_of(query) + refs_of(negative), index)}
    assert (got["nih"].reference, got["nih"].method) == ("nih", "exact")
    assert (got["siim"].reference, got["siim"].method) == ("siim", "fingerprint")
    assert got["fake"].status == "unmatched"
