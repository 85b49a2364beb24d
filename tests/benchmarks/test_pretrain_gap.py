"""The epoch-gap run of benchmarks/pretrain_throughput.py end to end at a tiny size (no timing
assertion): both checkpoint writers produce the same checkpoints, and the timings are recorded
once per checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import loader_throughput, pretrain_throughput
from cxrkit.config import PreprocessConfig
from cxrkit.data import datasets
from cxrkit.data.cache import Cache
from cxrkit.data.preprocess import build_cache
from cxrkit.pretrain.config import ViewsConfig
from cxrkit.pretrain.transforms import build_view_transform


@pytest.mark.parametrize(
    "loader", ["ours", "ours, synchronous checkpoint", "Lightning's AsyncCheckpointIO (clones)"]
)
def test_epoch_gap_run_times_each_checkpoint(tmp_path: Path, loader: str) -> None:
    records = loader_throughput.make_originals(tmp_path / "originals", n=4, side=64)
    build_cache(
        records=records, out_dir=tmp_path / "cache", recipe=PreprocessConfig(size=32),
        progress=False,
    )  # fmt: skip
    dataset = datasets.UnlabeledDataset(
        records=records,
        cache=Cache(tmp_path / "cache"),
        transform=build_view_transform(views=ViewsConfig(size=32)),
    )
    out = tmp_path / "run"
    gaps, timings = pretrain_throughput.epoch_gap_run(
        dataset, loader=loader, batch=2, workers=0, epochs=3, projector=16, out=out
    )
    assert len(gaps) == 2  # three epochs, two boundaries
    # a checkpoint at every epoch's last step: 3, each built once and handed to the writer once
    assert len(timings["dump_s"]) == len(timings["save_call_s"]) == 3
    assert len(timings["size_gb"]) == 1 and timings["size_gb"][0] > 0


def test_engine_snapshot_writer_saves_each_point_in_time(tmp_path: Path) -> None:
    import torch

    from cxrkit.engine import SnapshotCheckpointIO

    writer = SnapshotCheckpointIO(pretrain_throughput._SyncAtomicCheckpointIO())
    weight = torch.arange(6.0).reshape(2, 3)
    state = {"state_dict": {"w": weight}, "optimizer_states": [{"m": weight * 2}], "epoch": 1}
    writer.save_checkpoint(state, tmp_path / "a.ckpt")
    weight += 100  # training goes on while the thread writes
    writer.save_checkpoint(
        {**state, "optimizer_states": [{"m": weight * 2}], "epoch": 2}, tmp_path / "b.ckpt"
    )
    writer.teardown()
    a = torch.load(tmp_path / "a.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b.ckpt", weights_only=True)
    torch.testing.assert_close(a["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))
    torch.testing.assert_close(a["optimizer_states"][0]["m"], 2 * torch.arange(6.0).reshape(2, 3))
    torch.testing.assert_close(b["state_dict"]["w"], torch.arange(6.0).reshape(2, 3) + 100)
    assert (a["epoch"], b["epoch"]) == (1, 2)
    kept = [buffer for buffers in writer._buffers.values() for buffer in buffers]
    assert len(kept) == 2  # one buffer per tensor, reused by the second checkpoint


def test_warmed_buffers_are_the_ones_the_first_checkpoint_fills(tmp_path: Path) -> None:
    import torch

    from cxrkit.engine import SnapshotCheckpointIO

    writer = SnapshotCheckpointIO(pretrain_throughput._SyncAtomicCheckpointIO())
    weight, bias = torch.rand(4, 3), torch.rand(4)
    momentum = torch.rand(4, 3)
    writer.warm([weight, bias, momentum])  # made and touched in the writer's thread
    writer._pending.result()
    warmed = {id(b) for buffers in writer._buffers.values() for b in buffers}
    assert len(warmed) == 3
    state = {"state_dict": {"w": weight, "b": bias}, "optimizer_states": [{"m": momentum}]}
    writer.save_checkpoint(state, tmp_path / "a.ckpt")
    writer.teardown()
    assert {id(b) for buffers in writer._buffers.values() for b in buffers} == warmed
    saved = torch.load(tmp_path / "a.ckpt", weights_only=True)
    torch.testing.assert_close(saved["state_dict"]["w"], weight)
    torch.testing.assert_close(saved["state_dict"]["b"], bias)
    torch.testing.assert_close(saved["optimizer_states"][0]["m"], momentum)


def test_trainer_warms_the_buffers_its_checkpoints_use(tmp_path: Path) -> None:
    """After a short run every tensor of last.ckpt was copied into a buffer made before the first
    checkpoint: the warm-up covered the module and the optimizer state."""
    import lightning as L
    import torch

    from cxrkit import engine
    from cxrkit.config import TrainerConfig

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    config = TrainerConfig(
        accelerator="cpu", devices="1", max_epochs=1, checkpoint_every_n_steps=2,
        log_every_n_steps=1, progress_bar=False,
    )  # fmt: skip
    trainer = engine.build_trainer(config=config, output_dir=tmp_path)
    writer = trainer.strategy.checkpoint_io
    made_at: list[int] = []
    original = writer.warm

    def warm(tensors):
        made_at.append(trainer.global_step)
        original(tensors)
        writer._pending.result()
        made_at.append(sum(len(b) for b in writer._buffers.values()))

    writer.warm = warm
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(8, 3)), 2)
    trainer.fit(Tiny(), train_dataloaders=data)
    # warmed once, after step 1: weight, bias and their two momentum buffers
    assert made_at == [1, 4]
    kept = sum(len(b) for b in writer._buffers.values())
    saved = torch.load(tmp_path / engine.CHECKPOINT_DIR / engine.LAST_CHECKPOINT, weights_only=True)
    others = {k: v for k, v in saved.items() if k not in ("state_dict", "optimizer_states")}
    assert kept == 4 + len(engine._tensors(others))  # the warmed four, and nothing else re-made
