"""decay/<Optimizer>/pg<j>: lr x weight_decay of each param group with decay, on the per-layer schedule."""

import pytest
import torch
from loop import drive
from torch import nn

from dyncheck import open_run


def test_decay_is_lr_times_weight_decay_per_group_as_scheduled(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 0.1, "weight_decay": 0.5},
                             {"params": model[1].parameters(), "lr": 0.01, "weight_decay": 0.0}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    drive(tmp_path, model, opt, 6, every_n_steps=2, on_step=lambda s: sched.step())
    run = open_run(tmp_path / "run.db")
    d = run.series("decay/AdamW/pg0")
    assert d.steps.tolist() == run.series("weight_norm/0.weight").steps.tolist() == [0, 2, 4]
    assert d.values.tolist() == pytest.approx([0.1 * 0.5 * 0.5 ** s for s in (0, 2, 4)])
    assert "decay/AdamW/pg1" not in run  # no decay in that group: no series


def test_decoupled_decay_removes_that_share_of_each_weight(tmp_path):
    """What the metric claims: with a zero gradient, AdamW's step multiplies every weight by 1 - decay."""
    p = nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([p], lr=0.02, weight_decay=3.0)
    before = p.detach().clone()
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(p.detach(), before * (1 - 0.02 * 3.0))
    model = nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.02, weight_decay=3.0)
    drive(tmp_path, model, opt, 1)
    assert open_run(tmp_path / "run.db").series("decay/AdamW/pg0").values.tolist() == pytest.approx([0.06])


def test_optimizers_without_decay_record_nothing(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # weight_decay=0
    drive(tmp_path, model, opt, 2)
    run = open_run(tmp_path / "run.db")
    assert run.metrics("decay/*") == [] and not run.meta.get("measurement_errors")
