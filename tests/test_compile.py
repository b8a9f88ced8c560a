"""The monitor on ``torch.compile``-d models (CPU, inductor): activation statistics at every activation step, the
eager run's metric names, training bit-identical with and without the monitor, no recompiles beyond the graph with
the statistics and the one without, and a recorded explanation where a compiled graph cannot be seen."""

import warnings

import pytest
import torch
import torch._dynamo as dynamo
from loop import drive
from models import MLP, loaders, trainer
from torch import nn

from dyncheck import DynamicsMonitor, open_run
from dyncheck.checks import evaluate
from dyncheck.measure.activations import activation_stats
from dyncheck.monitor import MonitorConfig

STEPS, ACT_EVERY = 6, 2


def _fit(tmp_path, *, compiled: bool, monitor: bool, module=None):
    """Fit the digits MLP for STEPS steps (sanity check and one validation batch on); the weights after, the
    per-step losses and the dyncheck warnings."""
    dynamo.reset()
    torch.manual_seed(0)
    model = module() if module is not None else MLP(log_acc=False)
    train, val = loaders(n=96, batch_size=16, flat=True)
    cbs = [DynamicsMonitor(dirpath=tmp_path, sharpness_budget=0, every_n_steps=ACT_EVERY)] if monitor else []
    tr = trainer(tmp_path, cbs, max_steps=STEPS, max_epochs=1, limit_val_batches=1, num_sanity_val_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(torch.compile(model) if compiled else model, train, val)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    return weights, list(model.losses), [str(w.message) for w in caught if "dyncheck:" in str(w.message)]


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """One eager and two compiled fits of the same model (compiling on CPU is slow: shared by the tests here)."""
    out = {}
    for key, compiled, monitor in (("eager", False, True), ("compiled", True, True), ("bare", True, False)):
        d = tmp_path_factory.mktemp(key)
        out[key] = (d, *_fit(d, compiled=compiled, monitor=monitor))
    return out


def test_compiled_module_measures_activations_at_every_activation_step(fits):
    eager_dir, *_ = fits["eager"]
    comp_dir, _, _, warned = fits["compiled"]
    eager, comp = open_run(eager_dir / "run.db"), open_run(comp_dir / "run.db")
    acts = comp.metrics("act/*")
    assert acts and acts == eager.metrics("act/*")
    for name in acts:
        s = comp.series(name)
        assert s.steps.tolist() == list(range(0, STEPS, ACT_EVERY)), name  # not step 0 only
    # the compiled graph computes the statistics of the compiled forward: the eager run's values, up to rounding
    for name in ("act/mean/net.0", "act/std/net.3", "act/max_abs/net.4", "act/dead/net.1"):
        assert comp.series(name).values == pytest.approx(eager.series(name).values, rel=1e-4, abs=1e-6), name
    meta = comp.meta["activations"]
    assert meta["compiled"] is True and meta["never_ran"] == [] and meta["steps_without_statistics"] == []
    assert meta["selected"] == ["net.0", "net.1", "net.3", "net.4", "net.5"]  # net.2: dropout
    assert not any("activations" in w for w in warned)


def test_compiled_and_eager_runs_record_the_same_metric_names(fits):
    eager = open_run(fits["eager"][0] / "run.db")
    comp = open_run(fits["compiled"][0] / "run.db")
    assert comp.metrics() == eager.metrics()
    assert not any("_orig_mod" in n for n in comp.metrics())
    assert [p["name"] for p in comp.meta["model"]["parameters"]] == \
        [p["name"] for p in eager.meta["model"]["parameters"]]


def test_monitor_does_not_change_compiled_training(fits):
    _, w_mon, loss_mon, _ = fits["compiled"]
    _, w_bare, loss_bare, _ = fits["bare"]
    assert loss_mon == loss_bare  # bit-identical, step by step
    assert w_mon.keys() == w_bare.keys()
    assert all(torch.equal(w_mon[n], w_bare[n]) for n in w_mon)


class CompiledInside(MLP):
    """A Lightning module that compiles its network itself: its parameters are ``net._orig_mod.<i>.weight``."""

    def __init__(self):
        super().__init__(log_acc=False)
        self.net = torch.compile(self.net)


def test_module_compiled_inside_records_eager_names(fits, tmp_path):
    weights, _, warned = _fit(tmp_path, compiled=False, monitor=True, module=CompiledInside)
    assert any("_orig_mod" in n for n in weights)  # the model really holds a compiled submodule
    run = open_run(tmp_path / "run.db")
    eager = open_run(fits["eager"][0] / "run.db")
    # the noise scale's B_simple exists only where its smoothed |G|^2 came out positive: a sign that rounding may
    # flip between the compiled and the eager run
    assert [m for m in run.metrics() if m != "noise/b_simple"] == [m for m in eager.metrics() if m != "noise/b_simple"]
    assert run.series("act/mean/net.0").steps.tolist() == list(range(0, STEPS, ACT_EVERY))
    assert "grad_norm/net.0.weight" in run.metrics() and "weight_norm/net.5.bias" in run.metrics()
    assert not any("_orig_mod" in m["name"] for m in run.meta["model"]["modules"])
    assert not any("activations" in w for w in warned)


def test_no_recompiles_beyond_the_measuring_and_the_plain_graph(tmp_path):
    """Hooks stay registered; dynamo guards on the recorder's flag: one graph with the statistics, one without,
    then nothing new however many steps follow. ``fullgraph=True``: the hooks (statistics, saturation of the Tanh,
    the recorder's bookkeeping) trace without a graph break, which would raise in the training here."""
    dynamo.reset()
    dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    graphs = []
    mon = drive(tmp_path, torch.compile(model, fullgraph=True), torch.optim.SGD(model.parameters(), lr=0.1), 8,
                config=MonitorConfig(sharpness_budget=0, activations_every_n_steps=2),
                on_step=lambda step: graphs.append(dynamo.utils.counters["stats"]["unique_graphs"]))
    assert graphs[2:] == [graphs[1]] * (len(graphs) - 2)  # steps 0 and 1 compiled both; nothing after
    run = open_run(tmp_path / "run.db")
    assert run.series("act/dead/1").steps.tolist() == [0, 2, 4, 6]
    assert run.series("act/saturated/3").steps.tolist() == [0, 2, 4, 6]
    assert run.meta["measurement_errors"] == []
    assert not model[1]._forward_hooks and mon.collectors  # removed at the end


def test_compiled_before_the_monitor_started_is_explained_not_silent(tmp_path):
    """A compiled model run before the monitor registered its hooks keeps the graph dynamo traced without them
    (dynamo does not guard on hooks): what cannot be measured is recorded in meta and warned about."""
    dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    compiled = torch.compile(model)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    nn.functional.mse_loss(compiled(x), y).backward()  # traced now, without the monitor's hooks
    model.zero_grad()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drive(tmp_path, compiled, torch.optim.SGD(model.parameters(), lr=0.1), 4, data=(x, y),
              config=MonitorConfig(sharpness_budget=0, activations_every_n_steps=2))
    run = open_run(tmp_path / "run.db")
    meta = run.meta["activations"]
    assert meta["measured_steps"] == 2 and meta["steps_without_statistics"] == [0, 2]
    assert meta["never_ran"] == ["0", "1", "2"] and "torch.compile" in meta["note"]
    reason = {s.check: s.reason for s in evaluate(run).skipped}["dead-units"]  # what `dyncheck check` prints
    assert "none of the 3 selected modules ran on a measuring step" in reason and "torch._dynamo.reset()" in reason
    warned = [str(w.message) for w in caught if "dyncheck: activations" in str(w.message)]
    assert len(warned) == 1 and "no selected module produced an output at step 0" in warned[0]  # warned once
    assert "torch._dynamo.reset()" in warned[0]


def test_a_second_fit_of_the_same_compiled_model_is_measured_with_its_weights(tmp_path):
    """The graph traced in the first fit reads the hooks (and their recorder's flag) where the module holds them:
    the second fit's new hooks record into its own recorder, the current weights' statistics."""
    dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    compiled = torch.compile(model)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    for fit in range(2):
        with torch.no_grad():  # what step 0 of this fit sees: the weights the previous fit left
            ref = activation_stats(torch.relu(model[0](x)), 1)
        (tmp_path / str(fit)).mkdir()
        drive(tmp_path / str(fit), compiled, torch.optim.SGD(model.parameters(), lr=0.1), 3, data=(x, y),
              config=MonitorConfig(sharpness_budget=0, activations_every_n_steps=2))
        run = open_run(tmp_path / str(fit) / "run.db")
        mean = run.series("act/mean/1")
        assert mean.steps.tolist() == [0, 2], fit
        assert mean.values[0] == pytest.approx(float(ref[0]), rel=1e-5)
        assert run.series("act/dead/1").values[0] == pytest.approx(float(ref[4]), abs=1e-7)
        assert run.meta["activations"]["steps_without_statistics"] == []


@pytest.mark.parametrize("watched", ["compiled", "inner"])
def test_plain_loop_watch_measures_a_compiled_model(tmp_path, watched):
    """``dyncheck.watch`` on the compiled model, or on the model inside it while the loop calls the compiled one:
    the forward pre-hook that starts each step runs before the compiled graph (or inside it, traced)."""
    import dyncheck

    dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    compiled = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    with dyncheck.watch(compiled if watched == "compiled" else model, opt, dirpath=tmp_path, every_n_steps=2,
                        sharpness_budget=0, report=False, rules=None) as mon:
        for _ in range(5):
            loss = nn.functional.mse_loss(compiled(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    run = open_run(tmp_path)
    assert run.series("loss/train").steps.tolist() == [0, 1, 2, 3, 4]
    assert run.metrics("act/mean/*") == ["act/mean/0", "act/mean/1", "act/mean/2"]
    assert run.series("act/dead/1").steps.tolist() == [0, 2, 4]
