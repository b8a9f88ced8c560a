"""The callback through real Lightning Trainers, against brute-force references recorded by a plain callback."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from dyncheck import DynamicsMonitor, open_run
from models import MLP, loaders, trainer


class Reference(pl.Callback):
    """Records, the slow obvious way, what the monitor should have measured."""

    def __init__(self):
        self.grad = {}
        self.weights_before = {}
        self.ratio = {}
        self.wnorm = {}
        self.lr = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step
        self.lr[self.step] = trainer.optimizers[0].param_groups[0]["lr"]
        self.weights_before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grad[self.step] = {n: p.grad.double().norm().item() for n, p in pl_module.named_parameters()
                                if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            return
        self.wnorm[self.step] = {n: p.detach().double().norm().item() for n, p in pl_module.named_parameters()}
        self.ratio[self.step] = {
            n: ((p.detach() - self.weights_before[n]).double().norm() / self.weights_before[n].double().norm()).item()
            for n, p in pl_module.named_parameters()}


def _fit(tmp_path, model, mon_kw=None, tr_kw=None, data=None, ref=True):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", **(mon_kw or {}))
    cbs = [mon] + ([Reference()] if ref else [])
    t = trainer(tmp_path, cbs, **(tr_kw or {}))
    train, val = data or loaders(flat=True)
    t.fit(model, train, val)
    return open_run(tmp_path / "run"), (cbs[1] if ref else None), mon


def test_every_family_recorded_and_matches_reference(tmp_path):
    pl.seed_everything(0)
    model = MLP(act="relu")
    run, ref, _ = _fit(tmp_path, model, {"every_n_steps": 3, "sharpness_every_n_steps": 4})
    n_steps = 16  # 2 epochs x 8 batches
    loss = run.series("loss/train")
    np.testing.assert_array_equal(loss.steps, np.arange(n_steps))
    np.testing.assert_allclose(loss.values, model.losses, rtol=1e-6)
    total = run.series("grad_norm/total")
    ref_total = [math.sqrt(sum(v * v for v in ref.grad[s].values())) for s in range(n_steps)]
    np.testing.assert_allclose(total.values, ref_total, rtol=1e-5)
    measured = [0, 3, 6, 9, 12, 15]
    for name in ("net.0.weight", "net.3.bias", "net.5.weight"):
        g = run.series(f"grad_norm/{name}")
        np.testing.assert_array_equal(g.steps, measured)
        np.testing.assert_allclose(g.values, [ref.grad[s][name] for s in measured], rtol=1e-5)
        w = run.series(f"weight_norm/{name}")
        np.testing.assert_allclose(w.values, [ref.wnorm[s][name] for s in measured], rtol=1e-5)
        r = run.series(f"update_ratio/{name}")
        np.testing.assert_allclose(r.values, [ref.ratio[s][name] for s in measured], rtol=1e-4)
        assert run.series(f"grad_nonfinite/{name}").values.tolist() == [0.0] * len(measured)
        assert run.series(f"weight_unchanged/{name}").values.tolist() == [0.0] * len(measured)
    np.testing.assert_allclose(run.series("lr/SGD/pg0").values, 0.1)
    assert run.metrics("act/dead/*") == [f"act/dead/net.{i}" for i in (0, 1, 3, 4, 5)]  # dropout skipped
    assert set(run.metrics("act/*/net.1")) == {f"act/{s}/net.1" for s in
                                               ("mean", "std", "max_abs", "nonfinite", "dead",
                                                                "unit_spread")}
    val = run.series("loss/val")
    np.testing.assert_array_equal(val.steps, [8, 16])
    assert run.series("logged/val_loss").values.tolist() == val.values.tolist()
    acc = run.series("logged/train_acc_step")
    assert set(acc.steps) <= set(measured) | {7, 15} and len(acc) >= 6  # last step of each epoch, before validation
    assert "logged/train_acc_epoch" in run
    sh = run.series("sharpness/top_eig")
    np.testing.assert_array_equal(sh.steps, [0, 4, 8, 12])
    assert np.all(sh.values > 0)
    np.testing.assert_allclose(run.series("sharpness/threshold").values, 2 / 0.1)
    meta = run.meta
    assert meta["status"] == "finished" and meta["exception"] is None
    assert meta["model"]["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert {p["name"] for p in meta["model"]["parameters"]} == {n for n, _ in model.named_parameters()}
    assert meta["optimizers"][0]["class"] == "SGD" and meta["optimizers"][0]["param_groups"][0]["lr"] == 0.1
    assert meta["hyperparameters"]["hidden"] == 32
    assert meta["trainer"]["world_size"] == 1 and meta["trainer"]["precision"] == "32-true"
    assert "torch" in meta["versions"] and meta["ended"] >= meta["started"]


def test_lr_schedule_recorded_per_step(tmp_path):
    class Sched(MLP):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 5, 0.5),
                                                       "interval": "step"}}

    run, ref, _ = _fit(tmp_path, Sched())
    lr = run.series("lr/SGD/pg0")
    np.testing.assert_allclose(lr.values, [ref.lr[s] for s in lr.steps])
    np.testing.assert_allclose(lr.values[:11], [0.1] * 5 + [0.05] * 5 + [0.025])
    assert run.meta["schedulers"][0]["class"] == "StepLR"


def test_gradient_accumulation_averages_loss_and_measures_after_accumulation(tmp_path):
    pl.seed_everything(0)
    model = MLP()
    run, ref, _ = _fit(tmp_path, model, {"every_n_steps": 1}, {"accumulate_grad_batches": 2})
    loss = run.series("loss/train")
    np.testing.assert_array_equal(loss.steps, np.arange(8))  # 16 batches, 8 optimizer steps
    pairs = (2 * np.asarray(model.losses)).reshape(-1, 2).mean(1)  # on_before_backward sees loss / 2
    np.testing.assert_allclose(loss.values, pairs, rtol=1e-6)
    g = run.series("grad_norm/net.0.weight")
    np.testing.assert_allclose(g.values, [ref.grad[s]["net.0.weight"] for s in range(8)], rtol=1e-5)


class Partial(pl.LightningModule):
    """A frozen sub-module, a parameter that never gets a gradient, and a dict-returning sub-module."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(64, 16).requires_grad_(False)
        self.head = nn.Linear(16, 10)
        self.unused = nn.Parameter(torch.ones(3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return {"loss": nn.functional.cross_entropy(self.head(torch.relu(self.frozen(x))), y), "extra": 1}

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def test_frozen_and_unused_parameters(tmp_path):
    run, _, _ = _fit(tmp_path, Partial(), {"every_n_steps": 2}, ref=False)
    assert run.metrics("grad_norm/frozen*") == [] and run.metrics("weight_norm/frozen*") == []
    assert run.metrics("grad_norm/unused") == []  # no gradient, no norm
    assert run.series("weight_unchanged/unused").values.tolist() == [1.0] * 8
    assert run.series("weight_unchanged/head.weight").values[-1] == 0.0
    assert run.meta["unchanged_parameters"] == ["unused"]
    assert len(run.series("loss/train")) == 16


class TwoOptimizers(pl.LightningModule):
    """Manual optimization, two optimizers (a GAN-like alternation), training_step returns nothing."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a = nn.Linear(64, 10)
        self.b = nn.Linear(64, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_a, opt_b = self.optimizers()
        for opt, layer in ((opt_a, self.a), (opt_b, self.b)):
            loss = nn.functional.cross_entropy(layer(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.Adam(self.b.parameters(), lr=0.01)


def test_manual_optimization_two_optimizers(tmp_path):
    with pytest.warns(UserWarning, match="sharpness is off: manual optimization"):
        run, _, _ = _fit(tmp_path, TwoOptimizers(), {"every_n_steps": 2}, ref=False)
    assert run.metrics("lr/*") == ["lr/Adam/pg0", "lr/SGD/pg0"]
    assert run.series("lr/Adam/pg0").values[0] == 0.01
    steps = run.series("grad_norm/total").steps
    np.testing.assert_array_equal(steps, np.arange(0, 32, 2))  # global_step counts both optimizers
    assert set(run.metrics("grad_norm/*")) >= {"grad_norm/a.weight", "grad_norm/b.weight"}
    # the training loss comes from the logged 'train_loss' on measuring steps
    assert len(run.series("loss/train")) >= 4
    assert run.metrics("sharpness/*") == []


def test_nan_loss_is_recorded_not_fatal(tmp_path):
    pl.seed_everything(0)
    model = MLP(lr=1e6, act="relu")
    run, _, _ = _fit(tmp_path, model, {"every_n_steps": 1, "sharpness_every_n_steps": 3}, ref=False)
    loss = run.series("loss/train").values
    assert len(loss) == 16 and not np.all(np.isfinite(loss))
    assert np.any(run.series("grad_nonfinite/net.0.weight").values > 0) or not np.all(
        np.isfinite(run.series("grad_norm/total").values))
    assert run.meta["status"] == "finished"


def test_hooks_removed_and_two_fits_in_one_process(tmp_path):
    pl.seed_everything(0)
    mon = DynamicsMonitor(dirpath=tmp_path / "a", every_n_steps=1)
    model = MLP()
    t = trainer(tmp_path, [mon], max_epochs=1)
    t.fit(model, *loaders(flat=True))
    assert not any(m._forward_hooks for m in model.modules())
    # a second trainer with a new monitor and another model in the same process
    mon2 = DynamicsMonitor(dirpath=tmp_path / "b", every_n_steps=1)
    model2 = MLP()
    trainer(tmp_path, [mon2], max_epochs=1).fit(model2, *loaders(flat=True))
    assert not any(m._forward_hooks for m in model2.modules())
    assert len(open_run(tmp_path / "a").series("loss/train")) == 8
    assert len(open_run(tmp_path / "b").series("loss/train")) == 8
    # fitting the first trainer further continues its run (steps go on, nothing duplicated)
    t.fit_loop.max_epochs = 2
    t.fit(model, *loaders(flat=True))
    np.testing.assert_array_equal(open_run(tmp_path / "a").series("loss/train").steps, np.arange(16))


def test_default_dirpath_is_under_log_dir(tmp_path):
    mon = DynamicsMonitor()
    t = trainer(tmp_path, [mon], max_epochs=1)
    t.fit(MLP(), *loaders(flat=True))
    assert mon.run_dir == tmp_path / "dyncheck"
    assert len(open_run(mon.run_dir).series("loss/train")) == 8


def test_buffers_bounded_and_store_readable_during_training(tmp_path):
    seen = {"max_blocks": 0, "live": []}

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["max_blocks"] = max(seen["max_blocks"], len(mon.monitor._blocks))

        def on_train_epoch_end(self, trainer, pl_module):
            seen["live"].append((open_run(tmp_path / "run").meta["status"],
                                 len(open_run(tmp_path / "run").series("loss/train"))))

    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=1, flush_every_n_steps=4)
    trainer(tmp_path, [mon, Probe()], max_epochs=3).fit(MLP(), *loaders(flat=True))
    # per step: loss, total norm, grad norms, non-finite counts, weight norms, ratios, 3 activation groups, the
    # output's facts and its blocked share, the weight sketch (trajectory: every step of this 24-step run)
    assert seen["max_blocks"] <= 4 * 12
    assert seen["live"][0] == ("running", 8)


def test_validation_loss_from_validation_step_outputs(tmp_path):
    class NoLog(MLP):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

    pl.seed_everything(0)
    model = NoLog()
    run, _, _ = _fit(tmp_path, model, tr_kw={"val_check_interval": 4}, ref=False)
    val = run.series("loss/val")
    np.testing.assert_array_equal(val.steps, [4, 8, 12, 16])
    assert np.all(np.isfinite(val.values)) and "logged/val_loss" not in run


def test_lightning_package_adapter(tmp_path):
    L = pytest.importorskip("lightning")
    from dyncheck.lightning import DynamicsMonitor as LMonitor

    class LModel(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    mon = LMonitor(dirpath=tmp_path / "run", every_n_steps=2)
    assert isinstance(mon, L.Callback)
    t = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[mon], accelerator="cpu", devices=1)
    t.fit(LModel(), loaders(flat=True, val=False)[0])
    run = open_run(tmp_path / "run")
    assert len(run.series("loss/train")) == 8
    assert "act/saturated/net.1" in run and run.meta["status"] == "finished"


class SeqModel(pl.LightningModule):
    """An LSTM (module output is a tuple) feeding a head; rows of digits as a sequence of 8 steps."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.act = nn.Tanh()
        self.head = nn.Linear(16, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out, _ = self.lstm(x.reshape(len(x), 8, 8))
        return nn.functional.cross_entropy(self.head(self.act(out[:, -1])), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_tuple_returning_modules(tmp_path):
    run, _, _ = _fit(tmp_path, SeqModel(), {"every_n_steps": 2, "sharpness_every_n_steps": 8}, ref=False)
    assert len(run.series("act/mean/lstm")) == 8
    assert "act/saturated/act" in run and "act/saturated/lstm" not in run
    assert run.metrics("sharpness/*") == ["sharpness/n_hvp", "sharpness/top_eig"]  # Adam: no threshold


def test_bf16_mixed_precision_measures_unscaled_fp32_gradients(tmp_path):
    pl.seed_everything(0)
    run, ref, _ = _fit(tmp_path, MLP(), {"every_n_steps": 1}, {"precision": "bf16-mixed"})
    assert run.meta["trainer"]["precision"] == "bf16-mixed"
    g = run.series("grad_norm/net.0.weight")
    np.testing.assert_allclose(g.values, [ref.grad[s]["net.0.weight"] for s in g.steps], rtol=1e-5)
    assert np.all(np.isfinite(run.series("loss/train").values))


class _NoNorm(torch.Tensor):
    """A tensor subclass whose norm kernels fail: a gradient the monitor cannot measure."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if "norm" in getattr(func, "__name__", ""):
            raise NotImplementedError("no norm for this tensor type")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_unmeasurable_gradient_is_left_out_once_with_one_warning(tmp_path, monkeypatch):
    from dyncheck.measure.tensors import NormPlan
    from dyncheck.monitor import Monitor, MonitorConfig

    probes = []
    real_probe = NormPlan.probe.__func__
    monkeypatch.setattr(NormPlan, "probe", classmethod(lambda cls, ts: probes.append(len(ts)) or real_probe(cls, ts)))
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(MonitorConfig(sharpness_budget=0, activations_every_n_steps=0))
    mon.start(module=model, optimizers=[opt], store_path=tmp_path / "run.db", meta={}, every_n_steps=2)
    with pytest.warns(UserWarning) as caught:
        for step in range(4):
            mon.batch_start(step, None)
            model.weight.grad = torch.ones(2, 3)
            model.bias.grad = torch.full((2,), 2.0).as_subclass(_NoNorm)
            mon.before_optimizer_step(step, opt)
            mon.batch_end(step, torch.tensor(1.0), stepped=True)
    mon.finish("finished")
    ours = [str(w.message) for w in caught if str(w.message).startswith("dyncheck")]
    assert len(ours) == 1 and "grad_norm/bias" in ours[0] and "NotImplementedError" in ours[0]
    # each list's plan is made once, at its first step: gradients, weights, updates (2 measuring steps of 4)
    assert probes == [2, 2, 2]
    run = open_run(tmp_path)
    np.testing.assert_allclose(run.series("grad_norm/total").values, [math.sqrt(6)] * 4, rtol=1e-6)  # bias left out
    np.testing.assert_allclose(run.series("grad_norm/weight").values, [math.sqrt(6)] * 2, rtol=1e-6)
    assert "grad_norm/bias" not in run and run.series("grad_nonfinite/bias").values.tolist() == [0.0, 0.0]
    assert run.meta["measurement_errors"] == [{"measurement": "grad_norm", "metric": "grad_norm/bias",
                                               "error": "NotImplementedError",
                                               "message": "no norm for this tensor type", "step": 0}]


def test_measurement_errors_survive_a_second_fit_listed_once(tmp_path):
    class Complex(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(64, 10, dtype=torch.cfloat) / 8)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy((x.to(torch.cfloat) @ self.w).real, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    mon = DynamicsMonitor(dirpath=tmp_path / "run", sharpness_every_n_steps=2, rules=None, report=False)
    t = trainer(tmp_path, [mon], max_epochs=1)
    model = Complex()
    with pytest.warns(UserWarning, match="sharpness measurement failed.*complex parameters \\(w\\)"):
        t.fit(model, loaders(flat=True, val=False)[0])
    t.fit_loop.max_epochs = 2
    with pytest.warns(UserWarning, match="sharpness measurement failed"):  # a new fit tells again
        t.fit(model, loaders(flat=True, val=False)[0])
    run = open_run(tmp_path / "run")
    assert [e["measurement"] for e in run.meta["measurement_errors"]] == ["sharpness"]
    assert run.meta["measurement_errors"][0]["step"] == 0
    assert len(run.series("grad_norm/total")) == 16 and "sharpness/top_eig" not in run


# -- the framework-neutral monitor, driven directly -------------------------------------------------------------
def test_a_new_quantity_is_a_collector_the_monitor_schedules_and_flushes(tmp_path):
    """A collector the monitor has never heard of: declared metrics, schedule and reduction; the monitor calls only
    the hooks it overrides, on the steps it is due, and writes what it emits."""
    from dataclasses import dataclass

    from dyncheck.collect import Collector, default_collectors
    from dyncheck.monitor import Monitor, MonitorConfig
    from loop import drive

    class SquaredGradSum(Collector):
        name = "grad_sq"
        metrics = ("grad_sq/total",)
        reduce = "sum"
        schedule = "layers"

        @dataclass
        class Step:
            parts: list = None

        def gradients(self, step, g):
            self.now.parts = [torch.stack([x.square().sum() for x in g.grads]).sum()]

        def step_end(self, step):
            self.ctx.emit(step, ("grad_sq/total",), self.now.parts[0], self.reduce)

    cfg = MonitorConfig(sharpness_budget=0)
    mon = Monitor(cfg, collectors=default_collectors(cfg) + [SquaredGradSum()])
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 7, every_n_steps=3, monitor=mon)
    run = open_run(tmp_path / "run.db")
    s = run.series("grad_sq/total")
    assert s.steps.tolist() == [0, 3, 6]
    np.testing.assert_allclose(s.values, run.series("grad_norm/total").values[[0, 3, 6]] ** 2, rtol=1e-5)


def test_a_collector_that_raises_is_turned_off_alone_with_one_warning(tmp_path):
    from dyncheck.collect import Collector, default_collectors
    from dyncheck.monitor import Monitor, MonitorConfig
    from loop import drive

    class Broken(Collector):
        name = "broken"

        def step_end(self, step):
            if step == 2:
                raise RuntimeError("cannot measure this")

    cfg = MonitorConfig(sharpness_budget=0)
    broken = Broken()
    mon = Monitor(cfg, collectors=default_collectors(cfg) + [broken])
    model = nn.Linear(3, 1)
    with pytest.warns(UserWarning, match="broken measurement failed and is turned off for this fit") as rec:
        drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 5, monitor=mon)
    assert sum("dyncheck" in str(w.message) for w in rec) == 1 and not broken.enabled
    run = open_run(tmp_path / "run.db")
    assert len(run.series("loss/train")) == 5  # the others went on
    assert run.meta["measurement_errors"] == [{"measurement": "broken", "error": "RuntimeError",
                                               "message": "cannot measure this", "step": 2}]


def test_shares_of_sharded_tensors_are_reduced_before_roots_and_ratios(tmp_path):
    """The flush's reductions for sharded tensors, with a stand-in for a second process whose every share is 3 and
    whose every unchanged flag is 0: "rss" is sqrt(own^2 + 3^2), "ratio" divides the reduced numerator and
    denominator (own shares 0/0: 3/3, not NaN), "min" is the minimum; "mean" blocks travel unchanged beside them
    in the same three collectives. A fit that ends without the reduction (a crash) leaves the shares out."""
    from dyncheck.collect import Collector
    from dyncheck.monitor import Monitor, MonitorConfig

    calls = []

    def reduce(t, op):  # what the other process adds: squares of 3 to sums, flags of 0 to maxima (negated mins)
        calls.append(op)
        return t + 9.0 if op == "sum" else torch.maximum(t, torch.zeros_like(t)) if op == "max" else t

    class Shares(Collector):
        name = "shares"

        def step_end(self, step):
            self.ctx.emit(step, ("a/x", "a/y"), torch.tensor([4.0, 0.0]), "rss")
            self.ctx.emit(step, ("r/x", "r/y"), torch.tensor([0.0, 4.0, 0.0, 3.0]), "ratio")  # nums | dens
            self.ctx.emit(step, ("u/x",), torch.tensor([1.0]), "min")
            self.ctx.emit(step, ("m/x",), torch.tensor([7.0]), "mean")

    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(MonitorConfig(sharpness_budget=0), collectors=[Shares()])
    mon.start(module=model, optimizers=[opt], store_path=tmp_path / "run.db", meta={}, every_n_steps=1,
              reduce=reduce)
    for step in range(2):
        mon.batch_start(step, None)
        mon.batch_end(step, None, stepped=True)
        if step == 0:
            mon.flush()
    mon.finish("crashed", reduce=False)
    assert sorted(calls) == ["max", "mean", "sum"]  # one collective per operation, at the one reducing flush
    run = open_run(tmp_path / "run.db")
    assert run.series("a/x").values.tolist() == [5.0] and run.series("a/y").values.tolist() == [3.0]
    assert run.series("r/x").values.tolist() == [1.0]  # sqrt(0 + 9) / sqrt(0 + 9)
    np.testing.assert_allclose(run.series("r/y").values, [5.0 / math.sqrt(18.0)])
    assert run.series("u/x").values.tolist() == [0.0]
    assert run.series("m/x").steps.tolist() == [0, 1]  # this process's own mean after the crash, as before


def test_checkpoint_state_carries_schedules_and_collector_state(tmp_path):
    from dyncheck.monitor import Monitor, MonitorConfig
    from loop import drive

    model = nn.Linear(3, 1)
    mon = drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1), 5, every_n_steps=2,
                config=MonitorConfig(sharpness_budget=0, activations_every_n_steps=4))
    state = mon.state_dict()
    assert state["last_bucket"] == 2 and state["last_act_bucket"] == 1 and state["seq"] > 0
    assert state["collectors"] == {"weights": {"update_cursor": 0}, "trajectory": {"sizes": [3, 1]}}
    again = Monitor(MonitorConfig(sharpness_budget=0))
    again.start(module=model, optimizers=[torch.optim.SGD(model.parameters(), lr=0.1)],
                store_path=tmp_path / "run.db", meta={}, every_n_steps=2, resume=state)
    assert again.schedules["layers"].last == 2 and not again.schedules["layers"].due(5)
    again.finish("finished")


def test_norm_blocks_flush_as_the_norm_of_each_steps_values():
    """"norm" blocks hold a vector per step; the flush writes each step's L2 norm -- the brute-force value, for
    blocks of one length (one kernel) and of several (parameters added to the optimizer)."""
    from dyncheck.monitor import _norm_rows

    torch.manual_seed(0)
    vecs = [torch.rand(4) for _ in range(5)]
    brute = [math.sqrt(sum(float(v) ** 2 for v in vec)) for vec in vecs]
    out = _norm_rows(vecs)
    assert out.shape == (5, 1)
    np.testing.assert_allclose(out[:, 0].numpy(), brute, rtol=1e-6)
    ragged = [torch.rand(3), torch.rand(5)]  # another optimizer's parameters were added
    np.testing.assert_allclose(_norm_rows(ragged)[:, 0].numpy(), [float(r.norm()) for r in ragged], rtol=1e-6)


@pytest.mark.parametrize("step_s, option, reduce, want", [
    (0.001, None, False, 1000),  # 2 s of 1 ms steps is 2000: at most 1000
    (0.05, None, False, 40),  # 2 s of training
    (1.0, None, False, 10),  # at least 10
    (0.001, 7, False, 7),  # an explicit interval is kept
    (0.001, None, True, 100),  # several processes: the fixed interval (their flushes are collectives)
])
def test_automatic_flush_interval_follows_the_step_time(tmp_path, monkeypatch, step_s, option, reduce, want):
    from loop import drive

    from dyncheck.monitor import Monitor, MonitorConfig

    mon = Monitor(MonitorConfig(sharpness_budget=0, noise_budget=0, ntk_budget=0, trajectory_every_n_steps=0,
                                flush_every_n_steps=option))
    monkeypatch.setattr(Monitor, "_train_seconds", lambda self: self._steps_seen * step_s)
    if reduce:
        orig = Monitor.start
        monkeypatch.setattr(Monitor, "start", lambda self, **kw: orig(self, **kw, reduce=lambda t, op: t))
    flushes = []
    orig_flush = Monitor.flush
    monkeypatch.setattr(Monitor, "flush", lambda self, *a, **k: (flushes.append(self._steps_seen),
                                                                  orig_flush(self, *a, **k))[1])
    model = nn.Linear(3, 1)
    steps = 100 + 3 * want
    drive(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.01), steps, monitor=mon)
    first = option or 100
    assert flushes[0] == first
    assert flushes[1] - flushes[0] == want
    run = open_run(tmp_path / "run.db")
    assert run.series("loss/train").steps.tolist() == list(range(steps))  # nothing lost, whatever the interval
