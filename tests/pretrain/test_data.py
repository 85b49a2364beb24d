"""The pretraining loader: epochs back to back from one iterator, uint8 to float on the device,
and the /dev/shm check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cxrkit.data.sampling import ResumableSampler
from cxrkit.pretrain import data as data_mod
from cxrkit.pretrain.data import EpochKeys, EpochSpanningLoader, PretrainData, check_shared_memory


def epoch_batches(n: int, *, batch: int, epoch: int, skip: int = 0, **kw) -> list[list]:
    """The reference: one ResumableSampler epoch batched with drop_last, as before."""
    keys = list(ResumableSampler(range(n), epoch=epoch, skip=skip, **kw))
    whole = (len(keys) + skip) // batch * batch - skip
    return [keys[i : i + batch] for i in range(0, whole, batch)]


@pytest.mark.parametrize("replicas,rank", [(1, 0), (2, 1)])
def test_epoch_keys_are_resumable_sampler_epochs_back_to_back(replicas, rank) -> None:
    n, batch = 23, 4
    keys = EpochKeys(
        range(n), batch_size=batch, num_replicas=replicas, rank=rank, seed=7, epoch=2, skip=batch
    )
    got, it = [], iter(keys)
    per_epoch = n // replicas // batch
    for _ in range(per_epoch - 1 + 2 * per_epoch):  # rest of epoch 2, then epochs 3 and 4
        got.append([next(it) for _ in range(batch)])
    kw = {"num_replicas": replicas, "rank": rank, "seed": 7}
    want = (
        epoch_batches(n, batch=batch, epoch=2, skip=batch, **kw)
        + epoch_batches(n, batch=batch, epoch=3, **kw)
        + epoch_batches(n, batch=batch, epoch=4, **kw)
    )
    assert got == want


class _CountingLoader:
    """A loader that counts how often an iterator is made (each would refill workers' queues)."""

    def __init__(self, items) -> None:
        self.items, self.iterators = items, 0

    def __iter__(self):
        self.iterators += 1
        return iter(self.items)


def test_spanning_loader_keeps_one_iterator_across_epochs() -> None:
    source = _CountingLoader(list(range(100)))
    loader = EpochSpanningLoader(source, batches_per_epoch=4, first_epoch_batches=1)  # type: ignore[arg-type]
    assert len(loader) == 4
    epochs = [list(loader) for _ in range(3)]
    assert epochs == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert source.iterators == 1


def test_lightning_epochs_from_the_datamodule_match_the_sampler(tmp_path) -> None:
    # Through Lightning with two workers: each epoch yields exactly ResumableSampler's batches
    import lightning as L

    n, batch = 12, 4

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            views = [torch.full((1, 2, 2), i, dtype=torch.uint8)] * 2
            return {"image_id": str(i), "image": views}

    seen: list[tuple[int, list[int], torch.dtype]] = []

    class Probe(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, b, i):
            ids = [int(x) for x in b["image_id"]]
            seen.append((self.current_epoch, ids, b["image"][0].dtype))
            assert (b["image"][0][:, 0, 0, 0] * 255).round().tolist() == ids
            return (self.w**2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = PretrainData(dataset=Items(), batch_size=batch, num_workers=2, seed=3)
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Probe(), train_dataloaders=dm)
    assert all(dtype == torch.float32 for *_, dtype in seen)  # float after the transfer
    for epoch in range(3):
        got = [ids for e, ids, _ in seen if e == epoch]
        want = [[i for i, _ in b] for b in epoch_batches(n, batch=batch, epoch=epoch, seed=3)]
        assert got == want, epoch


def test_after_transfer_converts_uint8_views_only() -> None:
    dm = PretrainData(dataset=[], batch_size=1, num_workers=0)
    u8 = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    f = torch.tensor([[[[0.25]]]])
    out = dm.on_after_batch_transfer({"image_id": ["a"], "image": [u8, f]}, 0)
    assert out["image"][0].dtype == torch.float32
    assert out["image"][0].flatten().tolist() == [0.0, 1.0] and out["image"][1] is f


def test_shared_memory_check_warns_with_the_remedy(monkeypatch, caplog) -> None:
    monkeypatch.setattr(data_mod.os.path, "isdir", lambda p: True)
    free = SimpleNamespace(f_bavail=64, f_frsize=2**20)  # Docker's default 64 MiB
    monkeypatch.setattr(data_mod.os, "statvfs", lambda p: free)
    pair = 2 * 224 * 224  # two uint8 grey views
    message = check_shared_memory(pair_bytes=pair, batch_size=768, num_workers=16)
    assert message is not None and "--shm-size" in message and "2352 MiB" in message
    assert check_shared_memory(pair_bytes=pair, batch_size=8, num_workers=1) is None
    assert check_shared_memory(pair_bytes=pair, batch_size=768, num_workers=0) is None
