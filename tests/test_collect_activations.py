"""Activation statistics: hooks registered for the whole fit, recording only on the steps that measure, removed at
the end; what the patterns select; what is listed when something cannot be measured."""

import torch
from loop import drive
from torch import nn

from dyncheck import open_run
from dyncheck.collect import ActivationCollector
from dyncheck.measure.activations import activation_stats
from dyncheck.monitor import Monitor, MonitorConfig


def test_hooks_record_only_on_measuring_steps_and_values_match(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    hooked, active = [], []

    x, y = torch.randn(16, 3), torch.randn(16, 1)
    last = {}

    def on_step_record(step):  # after the step's forward and backward: the hooks of this step are still on
        hooked.append(bool(model[1]._forward_hooks))
        col = next(c for c in mon_ref[0].collectors if isinstance(c, ActivationCollector))
        active.append(col.fit.recorder.active)
        with torch.no_grad():  # lr 0: the weights never change, so this is the forward the hooks saw
            last[step] = activation_stats(torch.relu(model[0](x)), 1)

    mon_ref = [Monitor(MonitorConfig(sharpness_budget=0, activations_every_n_steps=3))]
    mon = drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.0), 6, every_n_steps=1, data=(x, y),
                monitor=mon_ref[0], on_step=on_step_record)
    assert hooked == [True] * 6  # registered once (torch.compile must see them), ...
    assert active == [True, False, False, True, False, False]  # ... recording on the measuring steps only
    assert not model[1]._forward_hooks  # nothing left attached after the fit
    run = open_run(tmp_path / "run.db")
    s = run.series("act/mean/1")
    assert s.steps.tolist() == [0, 3]
    assert abs(s.values[0] - float(last[0][0])) < 1e-6  # lr 0: the weights never change
    assert "act/saturated/1" not in run and "act/dead/2" in run
    assert isinstance(next(c for c in mon.collectors if isinstance(c, ActivationCollector)), ActivationCollector)
