"""loss/train: one value per optimizer step, the mean over its batches with gradient accumulation."""

import numpy as np
import torch
from loop import drive
from torch import nn

from dyncheck import open_run
from dyncheck.collect import LossCollector
from dyncheck.monitor import MonitorConfig


def test_loss_is_the_mean_of_the_steps_batches(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    seen = []
    real = LossCollector.batch

    def spy(self, step, loss):
        seen.append((step, float(loss)))
        real(self, step, loss)

    LossCollector.batch = spy
    try:
        drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.01), 4, accumulate=3)
    finally:
        LossCollector.batch = real
    s = open_run(tmp_path / "run.db").series("loss/train")
    assert s.steps.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(s.values, [np.mean([v for st, v in seen if st == k]) for k in range(4)], rtol=1e-6)


def test_loss_follows_the_scalars_schedule(tmp_path):
    model = nn.Linear(3, 1)
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.01), 7,
          config=MonitorConfig(sharpness_budget=0, scalars_every_n_steps=3))
    run = open_run(tmp_path / "run.db")
    assert run.series("loss/train").steps.tolist() == [0, 3, 6]
    assert run.series("grad_norm/total").steps.tolist() == [0, 3, 6]
