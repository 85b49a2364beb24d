"""Reading a manifest into Records against pandas reading the same Parquet file.

Writes a synthetic NIH-like manifest (default 112,120 records, the size of ChestX-ray14: 15 labels
each, 880 images with boxes, the NIH adapter's ``meta`` keys) and compares, interleaved A B A B:

* ours: ``cxrkit.data.records.read_manifest`` -> a list of ``Record`` objects;
* peer: ``pandas.read_parquet`` -> a DataFrame (no Records: the floor for any Python reader).

Memory is measured in a fresh process per contender: the peak resident set while reading, minus
the resident set after the imports, and what stays allocated once the reader returns.

    python benchmarks/manifest_read.py                  # 112,120 records, 5 rounds
    python benchmarks/manifest_read.py --records 5000 --pairs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    from benchmarks._interleave import Contender, interleave
except ImportError:  # run as a script: benchmarks/ is on sys.path, the repository may not be
    from _interleave import Contender, interleave

from cxrkit.data.records import Box, Record, read_manifest, write_manifest
from cxrkit.data.vocab import NIH_FINDINGS, NIH_NO_FINDING

NIH_RECORDS = 112_120
NIH_BOXED = 880  # images with boxes in BBox_List_2017.csv


def make_manifest(path: Path, *, n: int = NIH_RECORDS, seed: int = 0) -> Path:
    """A manifest shaped like ``cxrkit prepare nih`` writes for the full ChestX-ray14, its images
    under ``nih/`` beside it (the folder is made, the images are not: reading labels needs none,
    and an existing root is read as recorded, with no search for a moved dataset)."""
    rng = np.random.default_rng(seed)
    root = path.parent / "nih"
    root.mkdir(parents=True, exist_ok=True)
    names = (*NIH_FINDINGS, NIH_NO_FINDING)
    positives = rng.random((n, len(names))) < 0.08
    boxed = set(rng.choice(n, size=min(n, NIH_BOXED), replace=False).tolist())
    records = []
    for i in range(n):
        patient = i // 4 + 1
        labels = {name: int(v) for name, v in zip(names, positives[i], strict=True)}
        boxes = []
        if i in boxed:
            x, y = rng.uniform(0, 800, 2)
            boxes = [Box(finding=str(rng.choice(NIH_FINDINGS[:8])), x1=x, y1=y, x2=x + 150.5,
                         y2=y + 99.25)]  # fmt: skip
        records.append(
            Record(
                image_id=f"{patient:08d}_{i % 4:03d}",
                source="nih",
                path=f"{root}/images_{i % 12 + 1:03d}/images/{patient:08d}_{i % 4:03d}.png",
                patient_id=f"{patient:08d}",
                width=1024,
                height=1024,
                view="PA" if i % 5 < 3 else "AP",
                split=("train", "train", "train", "val", "test")[patient % 5],
                labels=labels,
                boxes=boxes,
                meta={
                    "age": int(rng.integers(1, 95)),
                    "sex": "M" if i % 2 else "F",
                    "follow_up": i % 4,
                    "original_width": 2500 + i % 500,
                    "original_height": 2048 + i % 700,
                    "original_pixel_spacing": [0.143, 0.143],
                },
            )
        )
    return write_manifest(records, path)


def read_ours(path: Path) -> int:
    return len(read_manifest(path))


def read_pandas(path: Path) -> int:
    import pandas as pd

    return len(pd.read_parquet(path))


READERS = {"ours": read_ours, "pandas": read_pandas}


def _status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: the peak of this
    process, reset at exec, unlike getrusage's ru_maxrss, which inherits the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


def memory_in_fresh_process(reader: str, path: Path) -> dict[str, float]:
    """MiB: peak RSS growth while reading, and RSS growth still held after (the result alive)."""
    code = (
        "import json, sys, gc\n"
        "import pandas, pyarrow.parquet\n"
        "from benchmarks import manifest_read as m\n"
        "import cxrkit.data.records\n"
        "before = m._status_kib('VmRSS')\n"
        "result = {'ours': cxrkit.data.records.read_manifest, 'pandas': pandas.read_parquet}"
        "[sys.argv[1]](sys.argv[2])\n"
        "gc.collect()\n"
        "held = m._status_kib('VmRSS') - before\n"
        "peak = m._status_kib('VmHWM') - before\n"
        "print(json.dumps({'peak_mib': peak / 1024, 'held_mib': held / 1024, 'n': len(result)}))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", code, reader, str(path)], check=True, capture_output=True, text=True,
        env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=NIH_RECORDS)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved rounds (>= 5)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"# {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="cxrkit-manifest-") as tmp:
        path = Path(tmp) / "manifest.parquet"
        log(f"writing a {args.records}-record NIH-like manifest")
        make_manifest(path, n=args.records)
        result = interleave(
            [
                Contender("ours: read_manifest -> Records", run=lambda: read_ours(path),
                          items=args.records),
                Contender("peer: pandas.read_parquet", run=lambda: read_pandas(path),
                          items=args.records),
            ],
            pairs=args.pairs,
            log=log,
        )  # fmt: skip
        memory = {name: memory_in_fresh_process(name, path) for name in READERS}
        size_mib = path.stat().st_size / 2**20
    ours, peer = result.contenders[0].name, result.contenders[1].name
    print(f"manifest: {args.records} records, {size_mib:.1f} MiB Parquet; cpus {os.cpu_count()}")
    print(result.table(reference=peer, unit="records"))
    print(f"time ours / pandas (median of per-round ratios): {1 / result.ratio(ours, peer):.2f}x")
    for name, figures in memory.items():
        print(
            f"memory {name}: peak +{figures['peak_mib']:.0f} MiB while reading, "
            f"+{figures['held_mib']:.0f} MiB held after"
        )
    ours_mem, peer_mem = memory["ours"], memory["pandas"]
    print(
        f"memory ours / pandas: peak {ours_mem['peak_mib'] / peer_mem['peak_mib']:.2f}x, "
        f"held {ours_mem['held_mib'] / peer_mem['held_mib']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps({"time": result.as_dict(), "memory": memory}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
