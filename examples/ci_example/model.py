"""A tiny model whose training dynamics a test guards: an MLP with BatchNorm on scikit-learn's digits (no
download), about 2 seconds of CPU. The options are the ways a refactor can quietly break training; the test and
benchmarks/baseline_sensitivity.py use them."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

STEPS = 300


class DigitsMLP(pl.LightningModule):
    """``lr``: SGD learning rate (momentum 0.9); ``norm``: BatchNorm after each hidden layer; ``init_gain``:
    scale of the default initialisation; ``freeze_first``: the first layer is left out of the optimizer (a bug
    that freezes it); ``label_noise``: share of training labels replaced by random ones; ``warmup``: steps over
    which the learning rate rises linearly from 0 (a warm-up made too long learns slower early on, then ends at
    about the same loss)."""

    def __init__(self, lr: float = 0.05, norm: bool = True, init_gain: float = 1.0, freeze_first: bool = False,
                 label_noise: float = 0.0, hidden: int = 64, depth: int = 3, warmup: int = 0):
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = 64
        for _ in range(depth):
            layers += [nn.Linear(width, hidden)] + ([nn.BatchNorm1d(hidden)] if norm else []) + [nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)
        if init_gain != 1.0:
            with torch.no_grad():
                for m in self.net:
                    if isinstance(m, nn.Linear):
                        m.weight.mul_(init_gain)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        params = list(self.net.parameters())
        if self.hparams.freeze_first:
            first = set(map(id, self.net[0].parameters()))
            params = [p for p in params if id(p) not in first]
        opt = torch.optim.SGD(params, lr=self.hparams.lr, momentum=0.9)
        if not self.hparams.warmup:
            return opt
        warm = self.hparams.warmup
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loaders(label_noise: float = 0.0, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))  # a fixed split
    x, y = x[perm], y[perm]
    xt, yt, xv, yv = x[:1400], y[:1400].clone(), x[1400:], y[1400:]
    if label_noise:
        g = torch.Generator().manual_seed(1000 + seed)
        flip = torch.rand(len(yt), generator=g) < label_noise
        yt[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    return (DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True),
            DataLoader(TensorDataset(xv, yv), batch_size=512))


def train(monitor, *, seed: int = 0, root=None, **options) -> DigitsMLP:
    """Train with ``monitor`` (a DynamicsMonitor) for :data:`STEPS` steps on CPU, seeded."""
    pl.seed_everything(seed, verbose=False)
    label_noise = options.pop("label_noise", 0.0)
    model = DigitsMLP(label_noise=label_noise, **options)
    train_loader, val_loader = loaders(label_noise, seed)
    trainer = pl.Trainer(max_steps=STEPS, val_check_interval=50, check_val_every_n_epoch=None, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root, callbacks=[monitor], max_epochs=-1)
    trainer.fit(model, train_loader, val_loader)
    return model
