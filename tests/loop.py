"""A plain training loop that drives the framework-neutral Monitor the way the Lightning adapter does."""

from __future__ import annotations

import torch
from torch import nn

from dyncheck.monitor import Monitor, MonitorConfig


def drive(tmp_path, model: nn.Module, opt: torch.optim.Optimizer, steps: int, *, config: MonitorConfig | None = None,
          every_n_steps: int = 1, data=None, on_step=None, monitor: Monitor | None = None, accumulate: int = 1,
          probe_loss=None):
    """Train ``steps`` optimizer steps on a fixed random regression batch; return the monitor (finished)."""
    torch.manual_seed(0)
    mon = monitor or Monitor(config or MonitorConfig(sharpness_budget=0))
    first = next(model.parameters())
    x, y = data if data is not None else (torch.randn(16, first.shape[-1]), torch.randn(16, 1))
    mon.start(module=model, optimizers=[opt], store_path=tmp_path / "run.db", meta={}, every_n_steps=every_n_steps,
              probe_loss=probe_loss, planned_steps=steps)
    for step in range(steps):
        for k in range(accumulate):
            mon.batch_start(step, (x, y))
            loss = nn.functional.mse_loss(model(x), y)
            (loss / accumulate).backward()
            if k == accumulate - 1:
                mon.before_optimizer_step(step, opt)
                opt.step()
                opt.zero_grad()
                if on_step is not None:
                    on_step(step)
            mon.batch_end(step, loss, stepped=k == accumulate - 1)
    mon.finish("finished")
    return mon
