"""A tiny Lightning fit for trajectory tests: a regression MLP, 100 SGD steps (about a second on CPU)."""

import logging
import warnings


def fit(d, seed=0, delay=0, monitor=None):
    """Train into the run directory ``d`` (or with ``monitor``, e.g. the pytest fixture's). ``delay``: the
    learning rate is 1% for the first ``delay`` steps (a warm-up made too long): slower early learning that ends
    at about the same loss."""
    import pytorch_lightning as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from dyncheck import DynamicsMonitor

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

        def training_step(self, batch, i):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
            if not delay:
                return opt
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.01 if k < delay else 1.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 1, generator=g)) + 0.05 * torch.randn(2048, 1, generator=g)
    data = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(1))
    pl.seed_everything(seed, verbose=False)
    model = Tiny()
    if monitor is None:
        monitor = DynamicsMonitor(dirpath=d, every_n_steps=5, report=False, rules=None)
    trainer = pl.Trainer(max_steps=100, max_epochs=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=d,
                         callbacks=[monitor])
    trainer.fit(model, data)
    return d
