"""lr/<Optimizer>/pg<j>: each param group's learning rate at the start of the step; one that is not a number is
left out with one warning."""

import pytest
import torch
from loop import drive
from torch import nn

from dyncheck import open_run


def test_learning_rates_per_group_as_scheduled(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[1].parameters(), "lr": 0.01}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    drive(tmp_path, model, opt, 3, on_step=lambda s: sched.step())
    run = open_run(tmp_path / "run.db")
    assert run.series("lr/SGD/pg0").values.tolist() == pytest.approx([0.1, 0.05, 0.025])
    assert run.series("lr/SGD/pg1").values.tolist() == pytest.approx([0.01, 0.005, 0.0025])


def test_a_learning_rate_that_is_not_a_number_is_left_out_once(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[1].parameters(), "lr": 0.2}])
    opt.param_groups[1]["lr"] = None  # as Adafactor's relative step sizes have it
    with pytest.warns(UserWarning, match="lr measurement failed and is turned off for lr/SGD/pg1") as rec:
        orig = torch.optim.SGD.step
        torch.optim.SGD.step = lambda self, closure=None: None  # the lr=None group cannot step
        try:
            drive(tmp_path, model, opt, 3)
        finally:
            torch.optim.SGD.step = orig
    assert sum("dyncheck" in str(w.message) for w in rec) == 1
    run = open_run(tmp_path / "run.db")
    assert run.series("lr/SGD/pg0").values.tolist() == [0.1] * 3 and "lr/SGD/pg1" not in run
    assert [e.get("metric") for e in run.meta["measurement_errors"]] == ["lr/SGD/pg1"]
