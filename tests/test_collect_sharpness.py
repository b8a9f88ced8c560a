"""Sharpness: on its schedule, at the weights of the step's forward; off (with its meta) when it cannot run."""

import numpy as np
import pytest
import torch
from loop import drive
from torch import nn

from dyncheck import open_run
from dyncheck.measure.sharpness import hvp_operator, lanczos_top_eig
from dyncheck.monitor import Monitor, MonitorConfig


def _loss(module, batch):
    x, y = batch
    return nn.functional.mse_loss(module(x), y)


def test_fixed_schedule_values_are_the_top_eigenvalue_at_the_steps_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    expected, weights = {}, {}
    mon = Monitor(MonitorConfig(sharpness_every_n_steps=2))
    orig_start = mon.batch_start

    def batch_start(step, batch):
        if step % 2 == 0 and step not in weights:
            weights[step] = [p.detach().clone() for p in model.parameters()]
        orig_start(step, batch)

    mon.batch_start = batch_start
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 5, monitor=mon, data=(x, y),
          probe_loss=_loss)
    for step, ws in weights.items():
        probe = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
        with torch.no_grad():
            for p, w in zip(probe.parameters(), ws):
                p.copy_(w)
        matvec, n = hvp_operator(_loss(probe, (x, y)), list(probe.parameters()))
        expected[step] = lanczos_top_eig(matvec, n, max_iter=20, tol=1e-4).value
    run = open_run(tmp_path / "run.db")
    s = run.series("sharpness/top_eig")
    assert s.steps.tolist() == [0, 2, 4]
    np.testing.assert_allclose(s.values, [expected[k] for k in (0, 2, 4)], rtol=1e-3)
    assert run.meta["sharpness_probes"] == 3 and run.meta["sharpness_schedule"]["mode"] == "fixed"
    assert run.series("sharpness/threshold").values.tolist() == pytest.approx([2 / 0.1] * 3)


def test_off_without_a_probe_loss_or_budget_but_meta_is_written(tmp_path):
    model = nn.Linear(3, 1)
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 3,
          config=MonitorConfig(sharpness_budget=0))
    meta = open_run(tmp_path / "run.db").meta
    assert meta["sharpness_probes"] == 0 and meta["sharpness_time_s"] == 0 and "sharpness_schedule" in meta
    assert meta["measurement_errors"] == []


def test_complex_parameters_turn_it_off_with_one_warning(tmp_path):
    class C(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 1, dtype=torch.cfloat))

        def forward(self, x):
            return (x.to(torch.cfloat) @ self.w).real

    model = C()
    with pytest.warns(UserWarning, match=r"sharpness measurement failed.*complex parameters \(w\)"):
        drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 3, data=(torch.randn(8, 3),
              torch.randn(8, 1)), config=MonitorConfig(sharpness_every_n_steps=1), probe_loss=_loss)
    run = open_run(tmp_path / "run.db")
    assert "sharpness/top_eig" not in run and run.meta["measurement_errors"][0]["measurement"] == "sharpness"
