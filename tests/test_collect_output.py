"""dyncheck.collect.output through a real Lightning Trainer: which module's output the loss gets, and its facts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dyncheck import DynamicsMonitor, open_run
from dyncheck.measure.output import blocked_share
from models import MLP, loaders, trainer


class SoftmaxMLP(MLP):
    def forward(self, x):
        return torch.softmax(self.net(x.reshape(len(x), -1)), -1)


class ReluLogits(MLP):
    def forward(self, x):
        return self.net(x.reshape(len(x), -1)).relu()


class CallsNet(MLP):
    """training_step calls self.net directly and holds its loss as a module."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.criterion = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self.net(x.reshape(len(x), -1)), y)


def _fit(tmp_path, module, **kw):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", rules=None, report=False, **kw)
    trainer(tmp_path, [mon], max_epochs=1).fit(module, *loaders(n=128))
    return open_run(tmp_path / "run")


def test_logits_of_a_classifier(tmp_path):
    with _fit(tmp_path, MLP(log_acc=False)) as run:
        assert run.meta["output"] == {"module": "", "type": "MLP", "shape": [32, 10], "steps": 2}
        assert list(run.series("output/prob_rows").values) == [0.0, 0.0]
        assert list(run.series("output/zero_share").values) == [0.0, 0.0]
        assert list(run.series("output/blocked_share").values) == [0.0, 0.0]
        assert run.series("output/softmax_floor").values[0] == pytest.approx(math.log1p(9 / math.e))
        assert list(run.series("output/zero_share").steps) == list(run.series("act/mean/net.0").steps)
        # the loss is a softmax cross-entropy over the 10 logits: its chance level is log 10
        assert list(run.series("output/softmax_grad").values) == [1.0, 1.0]
        assert list(run.series("output/chance_loss").values) == pytest.approx([math.log(10)] * 2)


class MSEOnLogits(MLP):
    """A 10-wide output trained with squared error against one-hot targets: not a cross-entropy."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), F.one_hot(y, 10).float())


def test_squared_error_on_a_wide_output_is_not_taken_for_a_cross_entropy(tmp_path):
    with _fit(tmp_path, MSEOnLogits(log_acc=False)) as run:
        assert list(run.series("output/softmax_grad").values) == [0.0, 0.0]


def test_probabilities_from_a_softmax_in_forward(tmp_path):
    with _fit(tmp_path, SoftmaxMLP(log_acc=False)) as run:
        assert list(run.series("output/prob_rows").values) == [1.0, 1.0]


def test_relu_on_logits_blocked_share_matches_brute_force(tmp_path):
    torch.manual_seed(0)
    model = ReluLogits(log_acc=False)
    ref = ReluLogits(log_acc=False)
    ref.load_state_dict(model.state_dict())
    x, y = next(iter(loaders(n=128)[0]))
    out = ref(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    want_blocked = blocked_share(out, out.grad).item()
    want_zero = (out == 0).float().mean().item()
    with _fit(tmp_path, model) as run:
        blocked, zero = run.series("output/blocked_share"), run.series("output/zero_share")
        assert blocked.steps[0] == 0 and blocked.values[0] == pytest.approx(want_blocked, abs=1e-7)
        assert zero.values[0] == pytest.approx(want_zero, abs=1e-7)
        assert want_blocked > 0.3


def test_the_module_training_step_calls_and_not_the_loss_module(tmp_path):
    with _fit(tmp_path, CallsNet(log_acc=False)) as run:
        assert run.meta["output"]["module"] == "net" and run.meta["output"]["type"] == "Sequential"


def test_training_is_bit_identical_with_the_output_hooks(tmp_path):
    weights = []
    for with_monitor in (False, True):
        torch.manual_seed(0)
        model = ReluLogits(log_acc=False)
        cbs = [DynamicsMonitor(dirpath=tmp_path / "run", rules=None, report=False, every_n_steps=1)] \
            if with_monitor else []
        trainer(tmp_path, cbs, max_epochs=1).fit(model, *loaders(n=128))
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_off_with_the_activations(tmp_path):
    with _fit(tmp_path, MLP(log_acc=False), activations_every_n_steps=0) as run:
        assert not [m for m in run.metrics() if m.startswith("output/")]
        assert run.meta["output"]["module"] is None


def test_a_compiled_network_is_watched_from_outside_its_graph(tmp_path):
    """Hooks go on the compiled wrapper, not inside its graph (where adding and removing them would recompile)."""
    import torch._dynamo as dynamo

    dynamo.reset()

    class Compiled(ReluLogits):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.net = torch.compile(self.net)

        def forward(self, x):
            return self.net(x.reshape(len(x), -1)).relu()

    torch.manual_seed(0)  # (unseeded, the share at step 0 follows the initialisation: 0.78 at seed 0, 0.20-0.61 else)
    model = Compiled(log_acc=False)
    with _fit(tmp_path, model) as run:
        assert run.meta["output"]["module"] == "" and run.meta["output"]["type"] == "Compiled"
        assert run.series("output/blocked_share").values[0] > 0.3
    inner = model.net._orig_mod
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in inner.modules())


class KeepsOutputs(MLP):
    """Keeps every training forward's output (the reference for output/var)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.outputs: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.outputs.append(out.detach().clone())
        return F.cross_entropy(out, y)


def test_output_var_is_the_variance_of_the_step_output(tmp_path):
    module = KeepsOutputs(log_acc=False)
    # (no probes: a probe's forward would run training_step too)
    with _fit(tmp_path, module, sharpness_budget=0, noise_budget=0, ntk_budget=0) as run:
        s = run.series("output/var")
        assert len(s.steps) == 2
        for step, value in zip(s.steps, s.values):
            ref = module.outputs[int(step)].double().var(dim=0, correction=0).mean().item()
            assert value == pytest.approx(ref, rel=1e-5)
