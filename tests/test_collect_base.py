"""The collector protocol's shared parts: schedules, the failure record, norm plans with failure handling, state."""

import warnings
from dataclasses import dataclass

import pytest
import torch

from dyncheck.collect import Collector, Context, Every, Failures, Modulo
from dyncheck.collect.base import GradStep


def test_modulo_and_every_schedules():
    assert [s for s in range(10) if Modulo(3).due(s)] == [0, 3, 6, 9]
    e = Every(4)
    taken = []
    for s in [0, 1, 2, 5, 6, 9, 12, 13]:  # e.g. a resumed run that skips steps: once per bucket of 4
        if e.due(s):
            e.take(s)
            taken.append(s)
    assert taken == [0, 5, 9, 12] and e.last == 3
    assert not Every(0).due(0)


def test_failures_warn_once_list_once_and_report_each_new_list():
    seen = []
    f = Failures(on_new=lambda errors: seen.append(len(errors)))
    f.load([{"measurement": "grad_norm", "metric": "grad_norm/w", "error": "X", "message": "m", "step": 0}])
    with pytest.warns(UserWarning, match=r"grad_norm measurement failed and is turned off for grad_norm/w"):
        f.failed("grad_norm", [("grad_norm/w", ValueError("again"))], 5)  # a continued run warns again...
    assert len(f.errors) == 1  # ...but lists it once
    with pytest.warns(UserWarning, match="sharpness scheduling failed .* for this fit"):
        f.failed("sharpness", [(None, RuntimeError("boom"))], 7, what="scheduling failed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f.failed("sharpness", [(None, RuntimeError("boom"))], 8)  # known: no second warning
    assert [e["measurement"] for e in f.errors] == ["grad_norm", "sharpness"]
    assert f.errors[1] == {"measurement": "sharpness", "error": "RuntimeError", "message": "boom", "step": 7}
    assert seen == [1, 2]


def _ctx(module=None):
    blocks = []
    ctx = Context(module=module or torch.nn.Linear(2, 2), optimizers=[], schedules={"scalars": Modulo(1)},
                  emit=lambda *a: blocks.append(a), emit_host=lambda *a: blocks.append(a), failures=Failures())
    return ctx, blocks


def test_planned_leaves_out_what_fails_and_reuses_the_plan():
    ctx, _ = _ctx()
    good, bad = torch.ones(3), torch.ones(2, dtype=torch.int64)  # no float norm of an int tensor
    with pytest.warns(UserWarning, match="w_norm/b"):
        plan, norms = ctx.planned("w_norm", "k", [("a", good), ("b", bad)], [good, bad], 0)
    assert plan.kept == (0,) and norms.tolist() == pytest.approx([3 ** 0.5])
    plan2, _ = ctx.planned("w_norm", "k", [("a", good), ("b", bad)], [good, bad], 1)
    assert plan2 is plan  # made once


def test_guarded_turns_off_the_tensor_it_fails_on():
    ctx, _ = _ctx()
    ts = [torch.ones(2), torch.ones(3)]

    def fn(xs):
        if any(x.numel() == 3 for x in xs):
            raise ValueError("three")
        return torch.stack([x.sum() for x in xs])

    with pytest.warns(UserWarning, match="m/b"):
        names, vals = ctx.guarded("m", [("a", ts[0]), ("b", ts[1])], ts, fn, 0)
    assert names == ("a",) and vals.tolist() == [2.0]
    assert ctx.failures.off_items["m"] == {"b"}
    names, _ = ctx.guarded("m", [("a", ts[0]), ("b", ts[1])], ts, fn, 1)  # left out from now on, silently
    assert names == ("a",)


class _Counting(Collector):
    name = "counting"

    @dataclass
    class Step:
        seen: int = 0

    @dataclass
    class Saved:
        total: int = 0

    def gradients(self, step: int, g: GradStep) -> None:
        self.now.seen += 1
        self.saved.total += 1


def test_state_is_split_and_checkpointed_fields_round_trip():
    c = _Counting()
    assert c.has_step_state and not Collector.has_step_state
    assert c.overrides("gradients") and not c.overrides("step_end")
    c.gradients(0, None)
    c.gradients(0, None)
    assert c.now.seen == 2 and c.state_dict() == {"total": 2}
    c.new_step()
    assert c.now.seen == 0 and c.saved.total == 2
    d = _Counting()
    d.load_state_dict({"total": 5, "unknown": 1})
    assert d.saved.total == 5
