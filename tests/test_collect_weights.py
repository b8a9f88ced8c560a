"""Weight norms, update ratios from a bounded rotating subset of copies, and weight_unchanged from fingerprints,
each against a brute-force reference (full copies of every weight)."""

import numpy as np
import pytest
import torch
from loop import drive
from torch import nn

from dyncheck import open_run
from dyncheck.collect import WeightCollector
from dyncheck.monitor import Monitor, MonitorConfig


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 1)
        self.frozen = nn.Parameter(torch.randn(4))  # trainable, in the optimizer, never gets a gradient
        self.nudged = nn.Parameter(torch.randn(5))  # changed by hand in one element, once

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))) + 0 * self.nudged.sum()


class Reference:
    """Brute force: a full copy of every trainable tensor at the start and before every step."""

    def __init__(self, model):
        self.model = model
        self.initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.unchanged = {n: True for n in self.initial}
        self.ratios, self.flags = {}, {}

    def before(self):
        self._before = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def after(self, step):
        for n, p in self.model.named_parameters():
            b = self._before[n]
            self.ratios[(step, n)] = ((p.detach() - b).norm() / b.norm()).item()
            self.unchanged[n] = self.unchanged[n] and torch.equal(p.detach(), self.initial[n])
            self.flags[(step, n)] = float(self.unchanged[n])


def _run(tmp_path, steps=12, flush=5, snapshot=None, nudge_at=7):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref = Reference(model)
    mon = Monitor(MonitorConfig(sharpness_budget=0, flush_every_n_steps=flush, activations_every_n_steps=0))
    if snapshot is not None:
        for c in mon.collectors:
            if isinstance(c, WeightCollector):
                c.snapshot_bytes = snapshot
    orig = mon.before_optimizer_step

    def before(step, o):
        ref.before()
        orig(step, o)

    mon.before_optimizer_step = before

    def on_step(step):
        if step == nudge_at:
            with torch.no_grad():  # the smallest change there is: one element, one ulp
                model.nudged[2] = torch.nextafter(model.nudged[2], torch.tensor(1e9))
        ref.after(step)

    drive(tmp_path, model, opt, steps, monitor=mon, on_step=on_step, data=(torch.randn(16, 8), torch.randn(16, 1)))
    return open_run(tmp_path / "run.db"), ref


def test_weight_unchanged_matches_a_full_copy_including_a_one_ulp_change(tmp_path):
    run, ref = _run(tmp_path)
    for n in ref.initial:
        s = run.series(f"weight_unchanged/{n}")
        assert s.steps.tolist() == list(range(12))
        assert s.values.tolist() == [ref.flags[(k, n)] for k in range(12)], n
    assert run.series("weight_unchanged/nudged").values.tolist() == [1.0] * 7 + [0.0] * 5
    assert run.meta["unchanged_parameters"] == ["frozen"]


def test_update_ratios_match_brute_force_when_all_fit(tmp_path):
    run, ref = _run(tmp_path)
    for n in ("a.weight", "b.bias", "c.weight"):
        s = run.series(f"update_ratio/{n}")
        assert s.steps.tolist() == list(range(12))
        np.testing.assert_allclose(s.values, [ref.ratios[(k, n)] for k in range(12)], rtol=1e-5)
    # weight norms: of the weights after the step
    np.testing.assert_allclose(run.series("weight_norm/c.bias").values[-1],
                               ref.model.c.bias.detach().norm().item(), rtol=1e-6)


def test_update_ratio_copies_rotate_within_the_byte_bound(tmp_path, monkeypatch):
    sizes = {n: p.numel() * 4 for n, p in Net().named_parameters()}
    cap = 16 * 16 * 4 + 64  # b.weight (1 KiB) and a little: a rotating subset of a few tensors per step
    copied = []
    real = WeightCollector.gradients

    def spy(self, step, g):
        real(self, step, g)
        copied.append((step, sorted(self.now.before)))

    monkeypatch.setattr(WeightCollector, "gradients", spy)
    run, ref = _run(tmp_path, snapshot=cap)
    per_step = {}
    for step, names in copied:
        per_step.setdefault(step, names)
    for step, names in per_step.items():
        assert sum(sizes[n] for n in names) <= max(cap, max(sizes[n] for n in names)), (step, names)
    with_grad = {"a.weight", "a.bias", "b.weight", "b.bias", "c.weight", "c.bias", "nudged"}
    assert set().union(*per_step.values()) == with_grad  # every tensor covered in a few steps
    for n in with_grad:  # each ratio recorded is the exact one of its step
        s = run.series(f"update_ratio/{n}")
        assert 0 < len(s) < 12
        np.testing.assert_allclose(s.values, [ref.ratios[(k, n)] for k in s.steps.tolist()], rtol=1e-5)


def test_no_host_copy_of_the_weights(tmp_path):
    """The per-fit state of weight_unchanged is 4 int64 per tensor, whatever the tensor's size."""
    torch.manual_seed(0)
    model = nn.Linear(256, 256)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # never changes: every tensor stays tracked
    mon = Monitor(MonitorConfig(sharpness_budget=0, activations_every_n_steps=0))
    held = {}

    def on_step(step):
        w = next(c for c in mon.collectors if isinstance(c, WeightCollector))
        held[step] = sum(r.fp.numel() * r.fp.element_size() for r in w.fit.refs.values())
        assert all(r.copy is None for r in w.fit.refs.values())

    drive(tmp_path, model, opt, 3, monitor=mon, data=(torch.randn(4, 256), torch.randn(4, 256)), on_step=on_step)
    assert held == {0: 64, 1: 64, 2: 64}
    assert open_run(tmp_path / "run.db").meta["unchanged_parameters"] == ["bias", "weight"]


@pytest.mark.parametrize("host_norms", [True, False])
def test_changed_tensors_are_not_fingerprinted_again(tmp_path, monkeypatch, host_norms):
    """On the host a clearly changed norm tells at once; otherwise (a device: no synchronisation) the flush does."""
    import dyncheck.collect.weights as W

    calls = []
    real = W.fingerprint
    monkeypatch.setattr(W, "fingerprint", lambda t: calls.append(t.shape) or real(t))
    if not host_norms:
        monkeypatch.setattr(W, "_clearly_differ", lambda a, b: False)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 6,
          config=MonitorConfig(sharpness_budget=0, flush_every_n_steps=2, activations_every_n_steps=0))
    # start: 2; then with host norms none; without: steps 0 and 1, 2 each, and after the flush at step 1 none
    assert len(calls) == (2 if host_norms else 6)
    assert open_run(tmp_path / "run.db").series("weight_unchanged/weight").values.tolist() == [0.0] * 6


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex64])
def test_other_dtypes(tmp_path, dtype):
    torch.manual_seed(0)
    model = nn.Linear(4, 1).to(dtype)
    x = torch.randn(8, 4).to(dtype)
    y = torch.randn(8, 1).to(dtype)

    class Real(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m(x)
            return out.real if out.is_complex() else out

    net = Real(model)
    drive(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1), 3, data=(x, y.real if y.is_complex() else y))
    run = open_run(tmp_path / "run.db")
    assert run.series("weight_unchanged/m.weight").values.tolist() == [0.0, 0.0, 0.0]
    assert run.meta["unchanged_parameters"] == []


@pytest.mark.parametrize("trained", [False, True])
def test_a_parameter_replaced_in_the_module_is_compared_from_when_it_appears(tmp_path, trained):
    """A head assigned after the optimizer was built (the optimizer still holds the old one): the module's new
    tensor never changes and must read unchanged from its first step -- not "changed" against the old head's
    fingerprint. The same replacement added to the optimizer changes at its next step."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = Monitor(MonitorConfig(sharpness_budget=0, flush_every_n_steps=4, activations_every_n_steps=0))

    def on_step(step):
        if step == 3:
            model.c = nn.Linear(16, 1)
            if trained:
                opt.add_param_group({"params": list(model.c.parameters())})

    drive(tmp_path, model, opt, 10, monitor=mon, on_step=on_step, data=(torch.randn(16, 8), torch.randn(16, 1)))
    run = open_run(tmp_path / "run.db")
    new = [1.0] + [0.0] * 6 if trained else [1.0] * 7
    for n in ("c.weight", "c.bias"):
        assert run.series(f"weight_unchanged/{n}").values.tolist() == [0.0] * 3 + new, n
    assert run.series("weight_unchanged/a.weight").values.tolist() == [0.0] * 10
    # (with the new group the optimizer is indexed again: the old head's tensors, still in its first group and no
    # longer in the module, are named by position -- and are unchanged, as they get no gradient)
    expected = ["frozen", "nudged", "param6", "param7"] if trained else ["c.bias", "c.weight", "frozen", "nudged"]
    assert run.meta["unchanged_parameters"] == expected
