"""Tiny models and data for tests: real Lightning modules, data that ships with scikit-learn (no download)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def digits_tensors(n: int | None = None, seed: int = 0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y


def loaders(n: int = 256, batch_size: int = 32, flat: bool = False, val: bool = True, shuffle: bool = False):
    x, y = digits_tensors(n + (64 if val else 0))
    if flat:
        x = x.reshape(len(x), -1)
    train = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch_size, shuffle=shuffle)
    if not val:
        return train, None
    return train, DataLoader(TensorDataset(x[n:], y[n:]), batch_size=64)


class MLP(pl.LightningModule):
    """Digits MLP; options add dropout, BatchNorm, sigmoid, SGD settings."""

    def __init__(self, hidden=32, lr=0.1, momentum=0.0, dropout=0.0, batchnorm=False, act="relu",
                 optimizer="sgd", log_acc=True):
        super().__init__()
        self.save_hyperparameters()
        a = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[act]
        layers = [nn.Linear(64, hidden)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [a(), nn.Dropout(dropout), nn.Linear(hidden, hidden), a(), nn.Linear(hidden, 10)]
        self.net = nn.Sequential(*layers)
        self.losses: list[float] = []

    def forward(self, x):
        return self.net(x.reshape(len(x), -1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        if self.hparams.log_acc:
            self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=True, on_epoch=True)
        return loss

    def on_before_backward(self, loss):
        # called for real training steps only (not for the monitor's sharpness probes)
        self.losses.append(loss.item())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss, sync_dist=True)  # the monitor records logged values as logged
        return loss

    def configure_optimizers(self):
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)


class CNN(pl.LightningModule):
    def __init__(self, lr=0.05, dropout=0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(16 * 16, 10),
        )
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def trainer(tmp_path, callbacks=(), **kw):
    opts = dict(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(tmp_path), log_every_n_steps=2,
                accelerator="cpu", devices=1)
    opts.update(kw)
    return pl.Trainer(callbacks=list(callbacks), **opts)


def fit_mlp(tmp_path, name, monitor_kwargs=None, **model_kw):
    """Seeded digits MLP trained for 2 epochs, with ``DynamicsMonitor(dirpath=tmp_path / name, **monitor_kwargs)``
    or (``monitor_kwargs`` None) without a monitor; warnings silenced. Returns the trained model."""
    import warnings

    from dyncheck import DynamicsMonitor

    pl.seed_everything(0, verbose=False)
    model = MLP(**model_kw)
    train, val = loaders()
    cbs = [DynamicsMonitor(dirpath=tmp_path / name, **monitor_kwargs)] if monitor_kwargs is not None else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(tmp_path / f"t-{name}", cbs, max_epochs=2).fit(model, train, val)
    return model


def close_process_group() -> None:
    """End of a multi-process test script: wait for every rank, then destroy the process group. A gloo group left
    to the interpreter's exit can abort the process ("terminate called without an active exception", exit -6)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
