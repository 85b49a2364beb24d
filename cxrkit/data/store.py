"""The packed image store: a cache's images as raw uint8 shards, memory-mapped by the loader.

A PNG costs a decode (and a sha256) every time a training loader reads it; the same pixels as raw
bytes in a memory-mapped file cost one copy and, once per process, a crc32. Measured with
``benchmarks/loader_throughput.py`` (per CPU second, shared 2-core machine): 38 / 39 / 64 us per
image from the store at 224 / 256 / 512 px against 995 / 1,288 / 4,205 us for the checked PNG.
The store sits inside a cache directory and holds the same images as its PNGs, in the same
geometry (``height x width`` cache pixels, uint8, single channel)::

    store/index.parquet               one row per image: image_id, shard, offset, height, width,
                                      crc32 of the raw bytes, sha256 of the PNG it was packed from
    store/shard-<digest>.u8           raw images back to back (C order, no header)

Guarantees, the cache's own carried over:

* **Geometry**: an item's bytes are its PNG decoded, so every box mapping of
  :class:`cxrkit.data.cache.Geometry` holds unchanged.
* **Atomic writes, resume**: every shard is written with :func:`cxrkit.io.atomic_write` under a
  name derived from what it holds (its images' ids and PNG hashes), then the index last. A killed
  pack leaves the previous index with its shards intact; a rerun keeps every shard whose name it
  would write again and removes shards no index names.
* **Verification**: each item's crc32 is checked the first time a process reads it (lazily: a
  worker pays it once per image, about 30 us at 256 px); an item whose PNG hash in the cache index
  differs from the one it was packed from, or whose PNG file changed size or mtime since, is not
  served from the store (the PNG is read, and checked, instead).

:class:`cxrkit.data.cache.Cache` reads from the store when one is present and falls back to the
PNGs otherwise, so caches built before the store existed keep working; ``cxrkit preprocess``
packs the store for training sizes (side <= :data:`MAX_SIDE`).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cxrkit import io
from cxrkit.errors import DataError, ImageReadError

STORE_DIR = "store"
INDEX_FILE = "index.parquet"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".u8"
# cxrkit's choice: a shard near 256 MiB (about 4,000 images at 256 px; 112,120 NIH images in 28
# files instead of 224,240 PNGs and sidecars) keeps file counts small and a rewrite cheap.
SHARD_BYTES = 256 << 20
# cxrkit's choice: the store is packed for training sizes (<= 512 px), where every epoch reads
# every image and the store is 25x+ faster (benchmarks/loader_throughput.py). Larger caches
# (1024 px: 1 MiB an image raw, 117 GB for NIH) serve inference, where each PNG is read once;
# their load speed was not measured here.
MAX_SIDE = 512

INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("shard", pa.string()),  # file name under store/
        ("offset", pa.int64()),  # byte offset of the image in the shard
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("crc32", pa.uint32()),  # of the raw height x width bytes
        ("png_sha256", pa.string()),  # the cache PNG these bytes were decoded from
        ("png_size", pa.int64()),  # and its size and mtime when packed (see Store.has)
        ("png_mtime_ns", pa.int64()),
    ]
)


@dataclass(frozen=True)
class PackSummary:
    """What :func:`pack` did: images packed, shards written anew, shards kept from before."""

    images: int
    shards_written: int
    shards_kept: int


def _shard_name(items: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for image_id, png_sha in items:
        digest.update(image_id.encode("utf-8", "surrogatepass") + b"\0" + png_sha.encode() + b"\0")
    return f"{SHARD_PREFIX}{digest.hexdigest()[:32]}{SHARD_SUFFIX}"


def _plan_shards(rows: list[Mapping[str, Any]], sizes: list[int]) -> list[list[int]]:
    """Row indices per shard, in index order, each shard up to SHARD_BYTES (at least one image)."""
    shards: list[list[int]] = [[]]
    used = 0
    for i, size in enumerate(sizes):
        if shards[-1] and used + size > SHARD_BYTES:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += size
    return [s for s in shards if s]


def pack(
    cache_dir: str | Path, *, rows: Iterable[Mapping[str, Any]], read: Any = None
) -> PackSummary:
    """Write the store of ``cache_dir`` from the cache index rows ``rows``.

    Args:
        cache_dir: a cache directory whose PNGs are finished.
        rows: the cache index rows (``image_id``, ``file``, ``sha256``), in the order to pack.
        read: reads one cache PNG as uint8 (H, W) given (path, sha256); default
            :func:`cxrkit.data.cache.read_png` (which checks the sha256).

    Returns:
        Counts of images packed, shards written and shards kept from an earlier pack.
    """
    if read is None:
        from cxrkit.data.cache import read_png

        def read(path: Path, sha: str) -> np.ndarray:
            return read_png(path, sha256=sha)

    root = Path(cache_dir) / STORE_DIR
    rows = list(rows)
    # Shapes from the PNG headers: the plan needs sizes before any image is decoded.
    shapes = [_png_shape(Path(cache_dir) / row["file"]) for row in rows]
    stats = [(Path(cache_dir) / row["file"]).stat() for row in rows]
    plan = _plan_shards(rows, [h * w for h, w in shapes])
    index: list[dict[str, Any]] = []
    written = kept = 0
    names: set[str] = set()
    for members in plan:
        name = _shard_name([(rows[i]["image_id"], rows[i]["sha256"]) for i in members])
        names.add(name)
        path = root / name
        total = sum(shapes[i][0] * shapes[i][1] for i in members)
        reuse = path.is_file() and path.stat().st_size == total
        offset = 0
        chunks = []
        for i in members:
            row = rows[i]
            if reuse:
                h, w = shapes[i]
                crc = None  # read back below from the kept shard
            else:
                image = read(Path(cache_dir) / row["file"], row["sha256"])
                if image.ndim != 2 or image.dtype != np.uint8:
                    raise DataError(
                        f"{cache_dir}/{row['file']}: cache image is {image.dtype} {image.shape}, "
                        "the store holds uint8 (H, W) only"
                    )
                h, w = image.shape
                data = np.ascontiguousarray(image).tobytes()
                chunks.append(data)
                crc = zlib.crc32(data)
            index.append(
                {
                    "image_id": row["image_id"],
                    "shard": name,
                    "offset": offset,
                    "height": h,
                    "width": w,
                    "crc32": crc,
                    "png_sha256": row["sha256"],
                    "png_size": stats[i].st_size,
                    "png_mtime_ns": stats[i].st_mtime_ns,
                }
            )
            offset += h * w
        if reuse:
            mapped = np.memmap(path, dtype=np.uint8, mode="r")
            for entry in index[len(index) - len(members) :]:
                size = entry["height"] * entry["width"]
                entry["crc32"] = zlib.crc32(mapped[entry["offset"] : entry["offset"] + size])
            del mapped
            kept += 1
        else:
            io.atomic_write(path, lambda tmp, chunks=chunks: _write_chunks(tmp, chunks))
            written += 1
    table = pa.Table.from_pylist(index, schema=INDEX_SCHEMA)
    io.atomic_write(root / INDEX_FILE, lambda tmp: pq.write_table(table, tmp))
    for stale in root.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"):
        if stale.name not in names:
            stale.unlink(missing_ok=True)
    return PackSummary(images=len(index), shards_written=written, shards_kept=kept)


def _write_chunks(path: Path, chunks: list[bytes]) -> None:
    with path.open("wb") as f:
        for chunk in chunks:
            f.write(chunk)


def _png_shape(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, without decoding it."""
    try:
        with path.open("rb") as f:
            head = f.read(24)
    except OSError:
        raise ImageReadError(f"{path}: cache file missing (rerun `cxrkit preprocess`)") from None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ImageReadError(f"{path}: not a PNG (rerun `cxrkit preprocess`)")
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


class Store:
    """Read-only, memory-mapped view of ``cache_dir/store`` (see the module docstring).

    Safe to hand to DataLoader workers: shards are mapped lazily in the process that reads them,
    and what a process has verified is its own.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir) / STORE_DIR
        path = self.root / INDEX_FILE
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{path}: unreadable store index ({exc}); rerun `cxrkit preprocess` on this "
                "cache to repack it, or delete the store folder to read the PNGs"
            ) from None
        cols = table.to_pydict()
        self._pos = {image_id: i for i, image_id in enumerate(cols["image_id"])}
        self._shard = np.array(cols["shard"], dtype=object)
        self._offset = np.asarray(cols["offset"], dtype=np.int64)
        self._shape = np.stack([cols["height"], cols["width"]], axis=1).astype(np.int64)
        self._crc = np.asarray(cols["crc32"], dtype=np.uint32)
        self._png_sha = cols["png_sha256"]
        self._png_stat = list(zip(cols["png_size"], cols["png_mtime_ns"], strict=True))
        self._maps: dict[str, np.memmap] = {}
        self._verified = np.zeros(len(self._pos), dtype=bool)

    @staticmethod
    def exists(cache_dir: str | Path) -> bool:
        return (Path(cache_dir) / STORE_DIR / INDEX_FILE).is_file()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are opened again in the process that reads
        return state

    def __len__(self) -> int:
        return len(self._pos)

    def has(self, image_id: str, *, png: Path, png_sha256: str) -> bool:
        """True when the store holds ``image_id`` packed from ``png`` as it is now.

        The PNG's hash in the cache index must be the one packed, and the file's size and mtime
        unchanged since (one ``stat``, not a read): a PNG replaced after preprocessing is then read
        and refused by its sha256, as without a store, instead of the store serving other pixels.
        """
        i = self._pos.get(image_id)
        if i is None or self._png_sha[i] != png_sha256:
            return False
        try:
            found = png.stat()
        except OSError:
            return False
        return (found.st_size, found.st_mtime_ns) == self._png_stat[i]

    def _map(self, name: str) -> np.memmap:
        mapped = self._maps.get(name)
        if mapped is None:
            path = self.root / name
            try:
                mapped = np.memmap(path, dtype=np.uint8, mode="r")
            except (OSError, ValueError):
                raise ImageReadError(
                    f"{path}: store shard missing or empty; rerun `cxrkit preprocess` on this "
                    "cache to repack it"
                ) from None
            self._maps[name] = mapped
        return mapped

    def load(self, image_id: str) -> np.ndarray:
        """The image as uint8 (height, width), a copy; its crc32 checked on this process's first
        read of it.

        Raises:
            KeyError: not in the store. ImageReadError: shard missing, short or damaged.
        """
        i = self._pos[image_id]
        name, offset = self._shard[i], int(self._offset[i])
        h, w = (int(v) for v in self._shape[i])
        mapped = self._map(name)
        view = mapped[offset : offset + h * w]
        if view.size != h * w:
            raise ImageReadError(
                f"{self.root / name}: store shard is shorter than its index says (truncated?); "
                "rerun `cxrkit preprocess` on this cache to repack it"
            )
        image = view.reshape(h, w).copy()
        if not self._verified[i]:
            if zlib.crc32(image) != int(self._crc[i]):
                raise ImageReadError(
                    f"{self.root / name}: image {image_id!r} does not match the crc32 in "
                    f"{STORE_DIR}/{INDEX_FILE} (damaged after packing); rerun `cxrkit preprocess`"
                    " on this cache to repack it"
                )
            self._verified[i] = True
        return image
