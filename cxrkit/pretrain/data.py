"""The pretraining data: unlabeled records of a manifest, through the cache, as pairs of views.

Batches are ``{"image_id": list[str], "image": [view_a, view_b]}`` with each view a FloatTensor
``[B, C, S, S]`` in ``[0, 1]`` (see :mod:`cxrkit.pretrain.transforms`). The data order and the
views are reproducible and resumable mid-epoch (:mod:`cxrkit.pretrain.sampling`): the position
is saved in every checkpoint and restored before the loader is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from cxrkit import engine
from cxrkit.data import datasets
from cxrkit.data.cache import Cache
from cxrkit.data.records import Record
from cxrkit.errors import ConfigError
from cxrkit.pretrain.config import ViewsConfig
from cxrkit.pretrain.sampling import ResumableSampler, SeededViews
from cxrkit.pretrain.transforms import build_view_transform

ALL_SPLITS = ("all", "")


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
        sampler = ResumableSampler(
            self.dataset,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            epoch=self._resume_epoch,
            skip=self._resume_batches * self.batch_size,
        )
        return engine.build_loader(
            SeededViews(self.dataset),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            train=True,
            drop_last=True,  # equal batches: BatchNorm and the cross-correlation need them
            sampler=sampler,
        )

    def state_dict(self) -> dict[str, Any]:
        """Where the data order stands: the epoch and the batches of it already trained on."""
        trainer = self.trainer
        if trainer is None:
            return {}
        epoch = trainer.current_epoch
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            epoch, done = epoch + 1, 0
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_epoch = int(state_dict.get("epoch", 0))
        self._resume_batches = int(state_dict.get("batches_done", 0))
        # Lightning warns that a mid-epoch resume replays the epoch unless the *loader* is
        # stateful; here the sampler starts where the checkpoint left off, so it does not.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")
