"""Gradient norms against torch's own norms of the gradients the optimizer steps with."""

import math

import numpy as np
import torch
from loop import drive
from torch import nn

from dyncheck import open_run
from dyncheck.monitor import MonitorConfig


def test_total_and_per_tensor_norms_and_nonfinite_counts(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref = {}
    real_step = opt.step

    def step(*a, **k):
        ref[len(ref)] = {n: p.grad.norm().item() for n, p in model.named_parameters()}
        return real_step(*a, **k)

    opt.step = step
    drive(tmp_path, model, opt, 6, every_n_steps=2,
          config=MonitorConfig(sharpness_budget=0, activations_every_n_steps=0))
    run = open_run(tmp_path / "run.db")
    total = [math.sqrt(sum(v ** 2 for v in ref[k].values())) for k in range(6)]
    np.testing.assert_allclose(run.series("grad_norm/total").values, total, rtol=1e-6)
    s = run.series("grad_norm/0.weight")
    assert s.steps.tolist() == [0, 2, 4]
    np.testing.assert_allclose(s.values, [ref[k]["0.weight"] for k in (0, 2, 4)], rtol=1e-6)
    assert run.series("grad_nonfinite/2.bias").values.tolist() == [0.0, 0.0, 0.0]


def test_norms_are_taken_only_on_the_steps_a_schedule_wants(tmp_path, monkeypatch):
    """``scalars_every_n_steps`` > 1 saves the norm kernels on the steps in between (not only the records)."""
    from dyncheck.collect.grads import GradientCollector

    steps = []
    real = GradientCollector.gradients

    def counted(self, step, g):
        steps.append(step)
        return real(self, step, g)

    monkeypatch.setattr(GradientCollector, "gradients", counted)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    drive(tmp_path, model, opt, 12, every_n_steps=6,
          config=MonitorConfig(sharpness_budget=0, activations_every_n_steps=0, scalars_every_n_steps=4))
    run = open_run(tmp_path / "run.db")
    assert steps == [0, 4, 6, 8]  # the scalars' steps and the per-layer ones
    assert run.series("grad_norm/total").steps.tolist() == [0, 4, 8]
    assert run.series("grad_norm/0.weight").steps.tolist() == [0, 6]
