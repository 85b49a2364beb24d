"""The pretraining data: unlabeled records of a manifest, through the cache, as pairs of views.

Batches leave the workers as ``{"image_id": list[str], "image": [view_a, view_b]}`` with each view
a ByteTensor ``[B, 1, S, S]`` (uint8 grey on the wire, see :mod:`cxrkit.pretrain.transforms`) and
reach the model, after the transfer to its device, as FloatTensor ``[B, 1, S, S]`` in ``[0, 1]``
(:meth:`PretrainData.on_after_batch_transfer`). The data order and the views are reproducible
and resumable mid-epoch (:mod:`cxrkit.data.sampling`): the position is saved in every
checkpoint and restored before the loader is built.

No stall at epoch boundaries: a DataLoader, even with persistent workers, refills its queue only
when the next epoch's iterator is created, so the first batch of every epoch waits for one worker
to build a whole batch alone (768 pairs at 200 pairs/s: about 4 s, where a step takes 0.5 s). Here
one loader iterator runs through all epochs (:class:`EpochSpanningLoader`): the workers build the
next epoch's first batches while the last steps of this one train. Each epoch is still exactly
:class:`~cxrkit.data.sampling.ResumableSampler`'s (same items, views and tail dropped).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from itertools import count
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrkit import engine
from cxrkit.data import datasets
from cxrkit.data.cache import Cache
from cxrkit.data.records import Record
from cxrkit.data.sampling import ResumableSampler, SeededItems
from cxrkit.errors import ConfigError
from cxrkit.pretrain.config import ViewsConfig
from cxrkit.pretrain.transforms import build_view_transform, to_float_views

log = logging.getLogger(__name__)

ALL_SPLITS = ("all", "")
SHM = "/dev/shm"
PREFETCH_FACTOR = 2  # torch's default, which engine.build_loader keeps


def view_pairs(
    *, records: Sequence[Record], cache: Cache, views: ViewsConfig, manifest: str, split: str
) -> datasets.UnlabeledDataset:
    """Pairs of views of ``records`` (read from ``cache``); ``manifest`` and ``split`` name them
    in the error raised when there are none."""
    if not records:
        raise ConfigError(
            f"{manifest}: no records in split {split!r} to pretrain on (data.train_split=all "
            "uses every record)"
        )
    return datasets.UnlabeledDataset(
        records=list(records), cache=cache, transform=build_view_transform(views=views)
    )


class EpochKeys(Sampler[tuple[int, int]]):
    """:class:`ResumableSampler`'s ``(index, item_seed)`` keys of epochs ``epoch``, ``epoch + 1``,
    ... back to back, without end; each epoch cut to whole batches (its tail dropped, as
    ``drop_last`` does), so batches never straddle two epochs. ``skip`` items of the first epoch
    are left out (a resume)."""

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        num_replicas: int,
        rank: int,
        seed: int,
        epoch: int,
        skip: int,
    ) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch, self.skip = epoch, skip

    def epoch_sampler(self, epoch: int, skip: int = 0) -> ResumableSampler:
        return ResumableSampler(
            self.dataset,
            num_replicas=self.num_replicas,
            rank=self.rank,
            seed=self.seed,
            epoch=epoch,
            skip=skip,
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in count(self.epoch):
            sampler = self.epoch_sampler(epoch, self.skip if epoch == self.epoch else 0)
            whole = len(sampler) // self.batch_size * self.batch_size
            skip = sampler.skip
            for n, key in enumerate(sampler, start=skip):
                if n >= whole:
                    break
                yield key


class EpochSpanningLoader:
    """Epochs of ``batches_per_epoch`` batches taken from one iterator of ``loader``, which lives
    across epochs (see the module docstring). ``first_epoch_batches`` is what is left of the first
    epoch (fewer on a resume mid-epoch).

    Lightning sees a sized iterable: ``len()`` is the batches of a full epoch, and each ``iter()``
    yields the next epoch's batches.
    """

    def __init__(
        self, loader: DataLoader, *, batches_per_epoch: int, first_epoch_batches: int
    ) -> None:
        self.loader = loader
        self.batches_per_epoch, self._left_in_first = batches_per_epoch, first_epoch_batches
        self._batches: Iterator[Any] | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Any]:
        if self._batches is None:
            self._batches = iter(self.loader)
            n = self._left_in_first
        else:
            n = self.batches_per_epoch
        batches = self._batches
        for _ in range(n):
            yield next(batches)


def check_shared_memory(*, pair_bytes: int, batch_size: int, num_workers: int) -> str | None:
    """A warning when ``/dev/shm`` cannot hold the batches DataLoader workers keep in flight.

    Workers hand batches over in shared memory: ``num_workers x PREFETCH_FACTOR`` batches are in
    flight. Returns the message (also logged), or None when there is room or no ``/dev/shm``.
    """
    if num_workers == 0 or not os.path.isdir(SHM):
        return None
    stats = os.statvfs(SHM)
    have = stats.f_bavail * stats.f_frsize
    need = pair_bytes * batch_size * num_workers * PREFETCH_FACTOR
    if have >= need:
        return None
    message = (
        f"{SHM} has {have / 2**20:.0f} MiB free but {num_workers} loader workers keep "
        f"{need / 2**20:.0f} MiB of batches in flight ({batch_size} pairs of "
        f"{pair_bytes / 1024:.0f} kB, {PREFETCH_FACTOR} batches per worker); workers may die "
        "with a bus error. Raise it: `docker run --shm-size=8g ...` (or --ipc=host), "
        f"`mount -o remount,size=8G {SHM}`, or lower data.num_workers / data.batch_size"
    )
    log.warning(message)
    return message


def _pair_bytes(dataset: Dataset) -> int:
    """Bytes of one item's views, measured on item 0 (views are uint8 from the shipped recipes)."""
    views = SeededItems(dataset)[(0, 0)]["image"]
    return sum(v.element_size() * v.nelement() for v in views)


class PretrainData(L.LightningDataModule):
    """The pretraining loader over ``dataset``, in a resumable, seeded order.

    Args:
        dataset: items ``{"image_id": str, "image": [view_a, view_b]}`` (:func:`view_pairs`, or
            fixed items in tests and benchmarks).
        batch_size: images per device per step.
        num_workers: loader worker processes.
        seed: fixes the data order and the views (with the epoch and position).
    """

    def __init__(
        self, *, dataset: Dataset, batch_size: int, num_workers: int, seed: int = 0
    ) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.num_workers, self.seed = (
            dataset,
            batch_size,
            num_workers,
            seed,
        )
        self._resume_epoch, self._resume_batches = 0, 0

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        per_rank = len(self.dataset) // world  # type: ignore[arg-type]
        if per_rank < self.batch_size:
            raise ConfigError(
                f"{len(self.dataset)} images give {per_rank} per device, fewer than "  # type: ignore[arg-type]
                f"data.batch_size={self.batch_size}: lower the batch size"
            )
        if self.num_workers > 0:
            check_shared_memory(
                pair_bytes=_pair_bytes(self.dataset),
                batch_size=self.batch_size,
                num_workers=self.num_workers,
            )
        keys = EpochKeys(
            self.dataset,
            batch_size=self.batch_size,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            epoch=self._resume_epoch,
            skip=self._resume_batches * self.batch_size,
        )
        loader = engine.build_loader(
            SeededItems(self.dataset),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            train=True,
            drop_last=True,  # equal batches: BatchNorm and the cross-correlation need them
            sampler=keys,
        )
        per_epoch = per_rank // self.batch_size
        return EpochSpanningLoader(  # type: ignore[return-value]
            loader,
            batches_per_epoch=per_epoch,
            first_epoch_batches=max(0, per_epoch - self._resume_batches),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 views -> float in [0, 1], on the device the batch was moved to."""
        if isinstance(batch, dict) and isinstance(batch.get("image"), list | tuple):
            batch = {**batch, "image": to_float_views(list(batch["image"]))}
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Where the data order stands: the epoch and the batches of it already trained on."""
        if self.trainer is None:
            return {}
        epoch, done = engine.data_position(self.trainer)
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_epoch = int(state_dict.get("epoch", 0))
        self._resume_batches = int(state_dict.get("batches_done", 0))
        engine.ignore_replay_warning()
