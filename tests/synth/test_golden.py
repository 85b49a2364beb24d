"""Golden hashes: the phantoms are bit-identical to the ones the generator wrote before it was
split into the cxrkit.synth package (same seed -> same bytes, whatever the code layout).

The listed files were written by ``cxrkit synth --out X --n 12 --size 64 --seed 0`` (README.txt
names the module that wrote it, so its hash is the one written by cxrkit.synth)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from cxrkit import cli, synth
from cxrkit.io import sha256

GOLDEN = Path(__file__).with_name("golden_n12_64px_seed0.sha256")


def _golden() -> dict[str, str]:
    rows = (line.split() for line in GOLDEN.read_text().splitlines() if line.strip())
    return {name: digest for digest, name in rows}


def test_synth_command_writes_the_golden_files(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["synth", "--out", str(out), "--n", "12", "--size", "64", "--seed", "0"]
    assert cli.main([*args, "--workers", "2"]) == 0
    capsys.readouterr()
    written = {p.relative_to(out).as_posix(): sha256(p) for p in out.rglob("*") if p.is_file()}
    golden = _golden()
    assert len(golden) == 63
    assert sorted(written) == sorted(golden)
    for name, digest in golden.items():
        assert written[name] == digest, name


@pytest.mark.parametrize(
    ("seed", "view", "findings", "size", "image_sha256", "boxes"),
    [
        (0, "PA", (), 64, "ee8a47d7dca9f34e73d8a7d133f2fff70fdc19ff311d71eac9fc5869acc30d45", []),
        (
            1,
            "AP",
            synth.FINDINGS,
            96,
            "e6be00b0766c3b1990dc984e65fbf4475e09413480d55b78bcf47028bb557882",
            [
                ("consolidation", 63, 29, 83, 55),
                ("pneumothorax", 13, 12, 42, 55),
                ("nodule_mass", 28, 25, 40, 38),
                ("fibrosis", 13, 36, 31, 63),
                ("effusion", 13, 50, 30, 64),
            ],
        ),
    ],
)
def test_render_phantom_gives_the_golden_pixels(seed, view, findings, size, image_sha256, boxes):
    phantom = synth.render_phantom(
        rng=np.random.default_rng(seed), size=size, view=view, findings=findings
    )
    assert hashlib.sha256(phantom.image.tobytes()).hexdigest() == image_sha256
    assert phantom.boxes == boxes
