"""A real two-process DDP fit on CPU (gloo) through ``engine.build_trainer`` and ``engine.fit``,
run as a script by tests/test_engine_ddp.py (Lightning's DDP launcher starts rank 1 by running
this file again). Each rank writes the item indices of every batch it trained on.

    python tests/ddp_fit_script.py RUN_DIR RECORD.json --max-steps N
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from torch import nn

from cxrkit import engine
from cxrkit.config import TrainerConfig

ITEMS = 22  # 11 per rank: batches of 2, the last of each epoch 1 item
BATCH = 2
EPOCHS = 2


class Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append([int(i) for i in batch["index"]])
        return (self.net(batch["x"]) - batch["x"]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("record", type=Path)
    parser.add_argument("--max-steps", type=int, default=-1)
    args = parser.parse_args()
    items = [{"x": torch.tensor([float(i)]), "index": torch.tensor(i)} for i in range(ITEMS)]
    loader = engine.build_loader(items, batch_size=BATCH, num_workers=0, train=True, seed=0)
    config = TrainerConfig(
        accelerator="cpu", devices="2", strategy="ddp", max_epochs=EPOCHS,
        max_steps=args.max_steps, checkpoint_every_n_steps=1000, log_every_n_steps=1,
        progress_bar=False,
    )  # fmt: skip
    trainer = engine.build_trainer(config=config, output_dir=args.run_dir)
    torch.manual_seed(0)  # the same initial weights in every run
    module = Recorder()
    engine.fit(trainer=trainer, module=module, train_dataloaders=loader, output_dir=args.run_dir)
    record = args.record.with_name(f"{args.record.stem}.rank{trainer.global_rank}.json")
    weights = [p.detach().flatten().tolist() for p in module.parameters()]
    record.write_text(json.dumps({"seen": module.seen, "weights": weights}))


if __name__ == "__main__":
    main()
