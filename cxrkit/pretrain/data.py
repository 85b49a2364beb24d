"""The pretraining data: unlabeled records of a manifest, through the cache, as pairs of views.

Batches are ``{"image_id": list[str], "image": [view_a, view_b]}`` with each view a FloatTensor
``[B, C, S, S]`` in ``[0, 1]`` (see :mod:`cxrkit.pretrain.transforms`). The data order and the
views are reproducible and resumable mid-epoch (:mod:`cxrkit.pretrain.sampling`): the position
is saved in every checkpoint and restored before the loader is built.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cxrkit.config import DataConfig
from cxrkit.data import datasets, loading
from cxrkit.errors import ConfigError
from cxrkit.pretrain.config import ViewsConfig
from cxrkit.pretrain.sampling import ResumableSampler, SeededViews
from cxrkit.pretrain.transforms import build_view_transform

ALL_SPLITS = ("all", "")


class PretrainData(L.LightningDataModule):
    """Pairs of views of every record of ``data.train_split`` (``"all"``: the whole manifest).

    Args:
        data: manifest, cache (built on first use by rank 0), per-device batch size, workers.
        views: the view recipe.
        seed: fixes the data order and the views (with the epoch and position).
        dataset: use this dataset instead of manifest + cache (tests, benchmarks); its items must
            be ``{"image_id": str, "image": [view_a, view_b]}``.
    """

    def __init__(
        self, *, data: DataConfig, views: ViewsConfig, seed: int = 0, dataset: Dataset | None = None
    ) -> None:
        super().__init__()
        self.data, self.views, self.seed = data, views, seed
        self.dataset = dataset
        self._resume_epoch, self._resume_batches = 0, 0

    def setup(self, stage: str) -> None:
        if self.dataset is not None:
            return
        split = None if self.data.train_split in ALL_SPLITS else self.data.train_split
        records = loading.load_records(self.data, split=split)
        if not records:
            raise ConfigError(
                f"{self.data.manifest}: no records in split {self.data.train_split!r} to pretrain "
                "on (data.train_split=all uses every record)"
            )
        cache = loading.open_cache(self.data, records=records)
        self.dataset = datasets.UnlabeledDataset(
            records=records, cache=cache, transform=build_view_transform(views=self.views)
        )

    def train_dataloader(self) -> DataLoader:
        assert self.dataset is not None, "setup() builds the dataset"
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        per_rank = len(self.dataset) // world  # type: ignore[arg-type]
        if per_rank < self.data.batch_size:
            raise ConfigError(
                f"{len(self.dataset)} images give {per_rank} per device, fewer than "  # type: ignore[arg-type]
                f"data.batch_size={self.data.batch_size}: lower the batch size"
            )
        sampler = ResumableSampler(
            self.dataset,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            epoch=self._resume_epoch,
            skip=self._resume_batches * self.data.batch_size,
        )
        workers = self.data.num_workers
        return DataLoader(
            SeededViews(self.dataset),
            batch_size=self.data.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=datasets.collate,
            drop_last=True,  # equal batches: BatchNorm and the cross-correlation need them
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
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
