"""The sharpness schedule: spacing, first probe, budget and re-planning against brute-force references with fake
clocks; the step label through a real Trainer against dense Hessians; probe counts and spacing at defaults; the
monitor with sharpness on does not change training."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.func import functional_call

from dyncheck import DynamicsMonitor, open_run
from dyncheck.measure.sharpness import SharpnessSchedule
from models import MLP, loaders, trainer


@pytest.fixture(autouse=True)
def one_thread():
    """Timing-driven schedules on a shared 2-core machine: one intra-op thread keeps step and probe times from
    collapsing under oversubscription (the benchmarks run the same way)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------------------
# the schedule with fake clocks
# ----------------------------------------------------------------------------------------------------------------
class FakeRun:
    """Drives a schedule like the monitor does: ``tau(step)`` training seconds per step, probe costs
    ``graph + hvp * n`` with ``n_cold`` products from a random start and ``n_warm(step)`` warm-started."""

    def __init__(self, T, *, tau=1e-3, graph=1.2e-3, hvp=0.4e-3, n_cold=14, n_warm=7, budget=0.02, known=True,
                 every_n=None, start=0, max_iter=20):
        self.T, self.start = T, start
        self.tau = tau if callable(tau) else (lambda s: tau)
        self.graph = graph if callable(graph) else (lambda s: graph)
        self.hvp = hvp if callable(hvp) else (lambda s: hvp)
        self.n_cold, self.n_warm = n_cold, (n_warm if callable(n_warm) else (lambda s: n_warm))
        self.sched = SharpnessSchedule(budget=budget, every_n=every_n, total_steps=T if known else None,
                                       start_step=start, max_iter=max_iter)
        self.train = 0.0
        self.spent_at = []  # (train seconds before the probe, spent after it)

    def run(self):
        s = self.sched
        for step in range(self.start, self.start + self.T):
            if s.due(step):
                limit = s.admit(step, self.train)
                if limit is not None:
                    cold = not s.steps
                    g, h = self.graph(step), self.hvp(step)
                    if g + h * s.max_iter > limit:  # the monitor sees it after two products
                        s.record_abort(step, g + 2 * h, graph_s=g, hvp_s=h)
                    else:
                        n = self.n_cold if cold else self.n_warm(step)
                        s.record(step, g + h * n, n_hvp=n, graph_s=g, cold=cold)
                    self.spent_at.append((self.train, s.spent))
            self.train += self.tau(step)
        return s


def documented_allowance(T, train_s, tau, c_first, c_warm, budget=0.02):
    """The README rule, written out independently of the implementation: 2% of the training time; for runs of at
    least 200 steps at least what 8 probes cost, up to the time of 60 training steps (2% of 3000) and 2 s."""
    a = budget * train_s
    if T >= 200:
        a = max(a, min(60 * tau, 2.0, c_first + 7 * c_warm))
    return a


def brute_force(T, first, c_first, c_warm, allowance, min_spacing=4):
    """Among every evenly spaced schedule ``first + k d`` (integer d >= min_spacing) inside the run whose cost
    fits the allowance: the most probes, then the widest spacing."""
    affordable = 0  # the most probes the allowance pays for, counted one by one
    while c_first + affordable * c_warm <= allowance + 1e-12:
        affordable += 1
    best = (0, 0)
    for d in range(min_spacing, T):
        steps = list(range(first, T, d))[:affordable]
        best = max(best, (len(steps), d))
    return best


@pytest.mark.parametrize("T,n_warm", [(300, 7), (1000, 7), (3000, 7), (3000, 4), (20000, 7)])
def test_planned_schedule_matches_brute_force(T, n_warm):
    tau, g, h, n_cold = 1e-3, 1.2e-3, 0.4e-3, 14
    s = FakeRun(T, tau=tau, graph=g, hvp=h, n_cold=n_cold, n_warm=n_warm).run()
    c_first, c_warm = g + h * n_cold, g + h * n_warm
    allowance = documented_allowance(T, T * tau, tau, c_first, c_warm)
    n_ref, d_ref = brute_force(T, s.first_step, c_first, c_warm, allowance)
    # first probe within the first 1-2% of the run, a few steps in
    assert s.steps[0] == s.first_step == min(max(round(0.01 * T), 3), 20)
    assert len(s.steps) == n_ref
    assert s.spent <= allowance + 1e-9
    gaps = np.diff(s.steps)
    assert gaps.min() >= 4
    # even: the first gap (planned with a guessed warm cost) within 35% of the reference spacing; the others
    # within a step of each other, and off the reference only by their share of what the first was off
    assert abs(gaps[0] - d_ref) <= 0.35 * d_ref + 1, (gaps, d_ref)
    assert gaps[1:].max() - gaps[1:].min() <= 1, gaps
    assert np.all(np.abs(gaps[1:] - d_ref) <= abs(gaps[0] - d_ref) / (len(gaps) - 1) + 2), (gaps, d_ref)
    assert s.steps[-1] >= T - 1 - d_ref  # spread over the whole run
    facts = s.facts()
    assert facts["probes"] == n_ref and facts["mode"] == "planned" and facts["first_step"] == s.first_step
    assert facts["floor_used"] == (allowance > 0.02 * T * tau)


def test_short_runs_get_the_floor_within_its_ceilings():
    # a 300-step run of a model with cheap probes (3.3 and 1.7 step-times): 2% would pay for one probe; the floor
    # gives 8 (they cost 15 step-times, below the ceiling of 60)
    s = FakeRun(300, graph=0.5e-3, hvp=0.2e-3, n_cold=14, n_warm=6).run()
    assert len(s.steps) == 8 and s.spent == pytest.approx(3.3e-3 + 7 * 1.7e-3) and s.facts()["floor_used"]
    # the ceiling of 60 step-times binds when 8 probes cost more (12.4 + 7 x 9.2 step-times): as many as fit
    s = FakeRun(300, hvp=0.8e-3, n_cold=14, n_warm=10).run()
    assert len(s.steps) == 1 + int((60 - 12.4) / 9.2) and s.spent <= 60e-3 + 1e-12
    # slow steps (1 s) and 1.5 s probes: 60 steps would be 60 s, the ceiling of 2 s is below the budget
    # (2% of 300 s = 6 s), so the budget rules: 4 probes
    s = FakeRun(300, tau=1.0, graph=0.5, hvp=0.1, n_cold=10, n_warm=10).run()
    assert len(s.steps) == 4 and s.spent <= 6.0 + 1e-9 and not s.facts()["floor_used"]
    # ... with 0.2 s steps the 2 s ceiling binds (60 steps = 12 s, 8 probes 4 s; the budget is 1.2 s): 4 probes
    s = FakeRun(300, tau=0.2, graph=0.1, hvp=0.04, n_cold=10, n_warm=10).run()
    assert len(s.steps) == 4 and s.spent <= 2.0 + 1e-9 and s.facts()["floor_used"]
    # below 200 steps only the budget: nothing fits in 2% of 150 steps
    assert FakeRun(150).run().steps == []


def test_expensive_first_probe_stops_after_two_products():
    # 75 step-times per probe (a large model): it does not fit in the 60 step-times of a 300-step run; the second
    # product shows it and the probe stops there, costing the graph build and two products; no probe is taken
    s = FakeRun(300, graph=3e-3, hvp=3.6e-3).run()
    assert s.steps == [] and s.aborted == 1 and s.spent == pytest.approx(10.2e-3)
    # too short to try at all: the allowance left is below max_iter / 4 step-times
    s = FakeRun(30, graph=3e-3, hvp=3.6e-3).run()
    assert s.steps == [] and s.aborted == 0 and s.spent == 0


def test_replanning_follows_changing_costs_smoothly():
    # probes get 1.7x as expensive at step 2000 (warm starts help less): the spacing grows to match over a few
    # re-plans, monotonically (the smoothed cost), then stays even; the run stays within budget
    T, g, h = 6000, 1.2e-3, 0.4e-3
    s = FakeRun(T, n_warm=lambda s: 4 if s < 2000 else 9).run()
    steps, gaps = np.asarray(s.steps), np.diff(s.steps)
    assert gaps.min() >= 4
    i = int(np.searchsorted(steps, 2000))  # the first expensive probe is steps[i]
    before, after = gaps[1:i], gaps[i:]  # gaps[i] is the first planned with the new cost
    assert before.max() - before.min() <= 1
    assert np.all(np.diff(after) >= -1) and after[0] > before.max()
    assert after[-8:].max() - after[-8:].min() <= 1 and after[-8:].mean() > 1.6 * before.mean()
    assert np.all(gaps[1:] / gaps[:-1] < 1.5)  # no jump: the 1.7x is followed over several re-plans
    assert s.spent <= 0.02 * T * 1e-3 + 1e-9
    assert s.steps[-1] >= T - 1 - gaps[-1]


def test_a_cost_spike_does_not_strand_the_allowance():
    # the second probe is 4x slower (another process took the CPU): the spacing widens at once, narrows again
    # gradually, and what the allowance still pays for is spent, the last probe near the end
    calls = []

    def hvp(step):
        calls.append(step)
        return 0.4e-3 * (4 if len(calls) == 2 else 1)

    T = 600
    s = FakeRun(T, hvp=hvp, graph=0.6e-3, n_cold=14, n_warm=5).run()
    gaps = np.diff(s.steps)
    assert gaps.min() >= 4 and len(s.steps) >= 5
    assert s.steps[-1] >= T - 1 - gaps[-1] // 2 - 1
    c_warm = 0.6e-3 + 0.4e-3 * 5
    assert s.allowance_s - c_warm <= s.spent <= s.allowance_s + 1e-12


def test_replanning_follows_the_step_time():
    # training slows down 3x at step 1000: the planned training time grows, so does the allowance; the spacing
    # shrinks over a few re-plans (monotonically) and then stays even
    T = 3000
    tau = lambda s: 1e-3 if s < 1000 else 3e-3
    s = FakeRun(T, tau=tau).run()
    train = sum(tau(i) for i in range(T))
    assert 0.018 * train <= s.spent <= 0.02 * train
    steps, gaps = np.asarray(s.steps), np.diff(s.steps)
    i = int(np.searchsorted(steps, 1000))
    assert gaps.min() >= 4
    assert np.all(np.diff(gaps[i - 1:]) <= 1)
    late = gaps[-10:]
    assert late.max() - late.min() <= 1


def test_open_ended_runs_keep_the_budget_without_bursts():
    T = 20000
    run = FakeRun(T, known=False)
    s = run.run()
    gaps = np.diff(s.steps)
    assert gaps.min() >= 4
    # the first probe once 200 steps have run (the floor may pay for it then)
    assert s.steps[0] == 200
    # at every probe: the time spent stays within the allowance of the training time so far
    c_first, c_warm = 1.2e-3 + 0.4e-3 * 14, 1.2e-3 + 0.4e-3 * 7
    for train, spent in run.spent_at:
        assert spent <= documented_allowance(200, train, 1e-3, c_first, c_warm) + c_warm * 1e-6
    # in the steady state, the spacing that spends exactly the budget: cost / (budget * step time)
    steady = (1.2e-3 + 0.4e-3 * 7) / (0.02 * 1e-3)
    np.testing.assert_allclose(gaps[-10:], steady, atol=1)
    assert s.spent <= 0.02 * T * 1e-3 + c_first


def test_fixed_schedule_and_off():
    s = FakeRun(50, every_n=7, start=3).run()
    assert s.steps == [7, 14, 21, 28, 35, 42, 49] and s.facts()["mode"] == "fixed"
    assert FakeRun(50, every_n=0).run().steps == []
    assert FakeRun(5000, budget=0).run().steps == []
    assert FakeRun(50, every_n=5, budget=0).run().steps == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]


def test_resumed_fit_plans_from_its_start_step():
    s = FakeRun(1000, start=500).run()
    assert s.steps[0] == 510 and s.steps[-1] <= 1499
    assert s.steps == [500 + i for i in FakeRun(1000).run().steps]


# ----------------------------------------------------------------------------------------------------------------
# the step label, through a real Trainer, against dense Hessians
# ----------------------------------------------------------------------------------------------------------------
class Tiny(pl.LightningModule):
    """64 -> 8 -> 10 tanh MLP (610 parameters): its dense Hessian is cheap."""

    def __init__(self, lr=0.8, decay=0.9):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
        self.lr, self.decay = lr, decay

    def forward(self, x):
        return self.net(x.reshape(len(x), -1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: self.decay ** s)  # a new lr every step
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class WeightsAtStep(pl.Callback):
    """The weights and learning rate each step's forward uses (before that step's update)."""

    def __init__(self):
        self.weights, self.lr = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        s = trainer.global_step
        self.weights[s] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.lr[s] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_end(self, trainer, pl_module):
        self.weights[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def dense_top_eig(model, weights, batch):
    """Largest eigenvalue of the dense float64 Hessian of the training loss at ``weights`` on ``batch``."""
    names = list(weights)
    shapes = [weights[n].shape for n in names]
    sizes = [weights[n].numel() for n in names]
    flat = torch.cat([weights[n].double().reshape(-1) for n in names])
    x, y = batch

    def loss(z):
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(z, sizes), shapes)}
        return nn.functional.cross_entropy(functional_call(model, params, (x.double(),)), y)

    return float(torch.linalg.eigvalsh(torch.func.hessian(loss)(flat))[-1])


def test_step_label_is_the_hessian_at_the_weights_of_that_steps_loss(tmp_path):
    pl.seed_everything(0)
    model = Tiny()
    ref = WeightsAtStep()
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=1, activations_every_n_steps=1,
                          sharpness_every_n_steps=3, sharpness_max_iter=60, sharpness_tol=1e-6, rules=None,
                          report=False)
    train, _ = loaders(n=128, batch_size=32, flat=True, val=False)
    trainer(tmp_path, [mon, ref], max_epochs=3).fit(model, train)  # 12 steps
    run = open_run(tmp_path / "run")
    sh = run.series("sharpness/top_eig")
    np.testing.assert_array_equal(sh.steps, [0, 3, 6, 9])
    probe = next(iter(train))  # the probe batch: the first training batch
    for step, value in zip(sh.steps, sh.values):
        at = dense_top_eig(model, ref.weights[int(step)], probe)
        after = dense_top_eig(model, ref.weights[int(step) + 1], probe)  # after that step's update
        assert value == pytest.approx(at, rel=1e-4), step
        assert abs(after - at) > 20 * 1e-4 * abs(at), step  # the test can tell the two apart ...
        assert value != pytest.approx(after, rel=1e-3), step  # ... and the label is not the post-update one
    # the stability threshold uses the learning rate of the labelled step (it changes every step here)
    thr = run.series("sharpness/threshold")
    np.testing.assert_allclose(thr.values, [2 / ref.lr[int(s)] for s in thr.steps], rtol=1e-12)
    np.testing.assert_allclose(run.series("lr/SGD/pg0").values[sh.steps.astype(int)],
                               [ref.lr[int(s)] for s in sh.steps], rtol=1e-12)


def test_step_label_at_default_schedule(tmp_path):
    pl.seed_everything(0)
    model = Tiny(lr=0.5, decay=0.999)
    ref = WeightsAtStep()
    mon = DynamicsMonitor(dirpath=tmp_path / "run", sharpness_tol=1e-6, sharpness_max_iter=60, rules=None,
                          report=False)
    train, _ = loaders(n=128, batch_size=32, flat=True, val=False)
    trainer(tmp_path, [mon, ref], max_steps=240, max_epochs=-1).fit(model, train)
    run = open_run(tmp_path / "run")
    assert "sharpness/top_eig" in run, run.meta["sharpness_schedule"]
    sh = run.series("sharpness/top_eig")
    assert len(sh) >= 2 and sh.steps[0] == 3, run.meta["sharpness_schedule"]
    probe = next(iter(train))
    for step, value in zip(sh.steps, sh.values):
        assert value == pytest.approx(dense_top_eig(model, ref.weights[int(step)], probe), rel=1e-4), step


# ----------------------------------------------------------------------------------------------------------------
# at defaults, through real Trainers
# ----------------------------------------------------------------------------------------------------------------
def _fit_defaults(tmp_path, steps, model=None, **mon_kw):
    pl.seed_everything(0)
    mon = DynamicsMonitor(dirpath=tmp_path / "run", rules=None, report=False, **mon_kw)
    train, val = loaders(n=512, batch_size=32, flat=True)
    trainer(tmp_path, [mon], max_steps=steps, max_epochs=-1, log_every_n_steps=50,
            val_check_interval=100, check_val_every_n_epoch=None).fit(model or MLP(), train, val)
    return open_run(tmp_path / "run")


def test_short_run_at_defaults_gets_a_series(tmp_path):
    run = _fit_defaults(tmp_path, 300)
    sh = run.series("sharpness/top_eig")
    meta = run.meta
    facts = meta["sharpness_schedule"]
    assert facts["mode"] == "planned" and facts["planned_steps"] == 300 and facts["probes"] == len(sh)
    assert meta["sharpness_probes"] == len(sh) and facts["floor_used"]
    assert sh.steps[0] == 3, facts  # 1% of 300 steps (at least 3 in)
    gaps = np.diff(sh.steps)
    assert len(sh) >= 3 and gaps.min() >= 4 and sh.steps[-1] >= 150, facts
    # as many probes as the floor pays for: this MLP's probes cost a few steps each, so on a quiet machine the
    # floor's 8 probes fit in its 60 steps' worth (benchmarks/sharpness_schedule.py); on a loaded one fewer, but then the
    # allowance is used up
    assert len(sh) >= 6 or facts["time_s"] >= facts["allowance_s"] - 1.5 * facts["probe_cost_s"], facts
    # within the floor's ceilings: the time of 60 training steps (20% of this run), 2 s (margin: the wall clock
    # of a shared machine)
    train_s = meta["duration_s"] - meta["sharpness_time_s"]
    assert meta["sharpness_time_s"] <= min(60 * train_s / 300, 2.0) * 1.3, facts


def test_longer_run_is_evenly_spaced(tmp_path):
    run = _fit_defaults(tmp_path, 1500)
    steps = run.series("sharpness/top_eig").steps.astype(int)
    gaps = np.diff(steps)
    facts = run.meta["sharpness_schedule"]
    assert len(steps) >= 6 and steps[0] == 15, facts  # 1% of the run
    # no bursts; the spacing narrows by at most 15% per probe (warm starts get cheaper as training settles, and
    # the allowance left is spread over the steps left), and never collapses
    assert gaps.min() >= 4, gaps
    # (the last gap may be shorter: a probe the allowance still pays for comes at the run's last steps)
    assert np.all(gaps[2:-1] >= 0.85 * gaps[1:-2] - 1), gaps
    assert gaps[1:-1].min() >= gaps[1:-1].max() / 5, gaps
    assert steps[-1] >= 1500 - 2 * gaps[-1] - 4  # spread to the end
    meta = run.meta
    assert meta["sharpness_time_s"] <= 0.02 * (meta["duration_s"] - meta["sharpness_time_s"]) * 1.3, facts


def test_unknown_length_still_probes(tmp_path):
    # an iterable dataset without length and no max_steps: the schedule is open-ended
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            x, y = loaders(n=512, batch_size=512, flat=True, val=False)[0].dataset.tensors
            for i in range(0, 512 * 3, 32):
                j = i % 512
                yield x[j:j + 32], y[j:j + 32]

    pl.seed_everything(0)
    mon = DynamicsMonitor(dirpath=tmp_path / "run", rules=None, report=False)
    dl = torch.utils.data.DataLoader(Stream(), batch_size=None)
    trainer(tmp_path, [mon], max_epochs=6).fit(MLP(), dl)
    run = open_run(tmp_path / "run")
    assert run.meta["sharpness_schedule"]["mode"] == "open"
    assert run.meta["sharpness_schedule"]["planned_steps"] is None
    steps = run.series("sharpness/top_eig").steps
    assert len(steps) >= 1 and steps[0] >= 200 and np.all(np.diff(steps) >= 4)


# ----------------------------------------------------------------------------------------------------------------
# it does not change training
# ----------------------------------------------------------------------------------------------------------------
def _train(tmp_path, monitor, steps, **model_kw):
    pl.seed_everything(1234)
    model = MLP(**model_kw)
    losses = []

    class Rec(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    cbs = [Rec()] + ([monitor] if monitor else [])
    trainer(tmp_path, cbs, max_steps=steps, max_epochs=-1).fit(model, *loaders(shuffle=True, flat=True))
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def test_budget_schedule_does_not_change_training(tmp_path):
    kw = dict(dropout=0.3, batchnorm=True, momentum=0.9)
    mon = DynamicsMonitor(dirpath=tmp_path / "run", rules=None, report=False)
    with_losses, with_state = _train(tmp_path / "a", mon, 240, **kw)
    plain_losses, plain_state = _train(tmp_path / "b", None, 240, **kw)
    run = open_run(tmp_path / "run")
    assert "sharpness/top_eig" in run and len(run.series("sharpness/top_eig")) >= 2, run.meta["sharpness_schedule"]
    assert with_losses == plain_losses
    for k in plain_state:
        assert torch.equal(with_state[k], plain_state[k]), k


def test_probes_do_not_leak_into_activation_statistics(tmp_path):
    """Probing before the forward of a step must not count as that step's forward for the activation hooks."""
    kw = dict(dropout=0.3, batchnorm=True)

    def acts(sub, sharp):
        mon = DynamicsMonitor(dirpath=tmp_path / sub, every_n_steps=1, activations_every_n_steps=1,
                              sharpness_every_n_steps=sharp, rules=None, report=False)
        _train(tmp_path / f"t{sub}", mon, 12, **kw)
        run = open_run(tmp_path / sub)
        return run, {m: run.series(m).values for m in run.metrics("act/*")}

    run_on, on = acts("on", 2)
    _, off = acts("off", 0)
    assert len(run_on.series("sharpness/top_eig")) == 6
    assert on.keys() == off.keys() and on
    for m in off:
        np.testing.assert_array_equal(on[m], off[m], err_msg=m)
