"""Quickstart: train a small CNN on scikit-learn's digits (no download) with dyncheck's DynamicsMonitor, then read
the run back from its store.

    python examples/quickstart.py [--out reports/quickstart] [--epochs 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyncheck
from dyncheck import DynamicsMonitor


class DigitsCNN(pl.LightningModule):
    def __init__(self, lr: float = 0.05, momentum: float = 0.9):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 4 * 4, 10),
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_acc", (logits.argmax(1) == y).float().mean())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)}


def digits_loaders(batch_size: int = 64):
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    tr, va = perm[:1500], perm[1500:]
    return (DataLoader(TensorDataset(x[tr], y[tr]), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(x[va], y[va]), batch_size=256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/quickstart", help="run directory (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()

    pl.seed_everything(0)
    monitor = DynamicsMonitor(dirpath=args.out)
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=[monitor], logger=False, enable_checkpointing=False,
                         accelerator="cpu", log_every_n_steps=10)
    trainer.fit(DigitsCNN(), *digits_loaders())

    run = dyncheck.open_run(args.out)
    loss, val = run.series("loss/train"), run.series("loss/val")
    print(f"\nrun store: {run.path}  ({len(run.metrics())} metrics, status: {run.meta['status']})")
    print(f"training loss  {loss.values[:10].mean():.3f} (first 10 steps) -> {loss.values[-10:].mean():.3f} "
          f"(last 10) over {len(loss)} steps")
    print(f"validation loss {' -> '.join(f'{v:.3f}' for v in val.values)}")
    gn = run.series("grad_norm/total").values
    print(f"global gradient norm: median {np.median(gn):.3f}, max {gn.max():.3f}")
    if "sharpness/top_eig" in run:
        sh = run.series("sharpness/top_eig")
        thr = run.series("sharpness/threshold").values
        print(f"sharpness (top Hessian eigenvalue) at steps {sh.steps.tolist()}: "
              f"{', '.join(f'{v:.2f}' for v in sh.values)}; stability threshold 2(1+beta)/lr: {thr[-1]:.1f}")
    dead = {m.split('/')[-1]: run.series(m).values[-1] for m in run.metrics("act/dead/*")}
    print("dead-unit share at the last measurement: " + ", ".join(f"{k} {v:.0%}" for k, v in dead.items()))


if __name__ == "__main__":
    main()
