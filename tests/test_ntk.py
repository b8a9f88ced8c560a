"""Empirical NTK drift: the kernel against torch.func.jacrev, the distance's known values, lazy vs rich training,
the collector through the monitor and a real Lightning Trainer, checkpoints, the observer effect, options."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.func import functional_call, jacrev

from dyncheck import DynamicsMonitor
from dyncheck.collect import NTKCollector
from dyncheck.errors import ConfigError
from dyncheck.measure.ntk import default_output, empirical_ntk, kernel_distance, kernel_stats, probe_slice
from dyncheck.monitor import MonitorConfig
from dyncheck.store import open_run

from loop import drive
from models import MLP, fit_mlp, loaders, trainer


def _jacrev_kernel(net: nn.Module, x: torch.Tensor, out_fn) -> torch.Tensor:
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p):
        return out_fn(functional_call(net, p, (x,)))

    jac = jacrev(f)(params)
    j = torch.cat([jac[k].reshape(x.shape[0], -1) for k in params], dim=1).double()
    return j @ j.T


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("block_values", [16_000_000, 500])
@pytest.mark.parametrize("batched", [True, False])
def test_kernel_matches_jacrev(block_values, batched):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 24), nn.GELU(), nn.Linear(24, 5))
    x = torch.randn(9, 12)
    res = empirical_ntk(net, x, block_values=block_values, batched=batched)
    ref = _jacrev_kernel(net, x, lambda o: o.sum(1))
    assert res.kernel.shape == (9, 9) and res.kernel.dtype == torch.float64
    assert _rel(res.kernel, ref) < 1e-5
    assert res.looped is (not batched)
    assert (res.blocks > 1) is (block_values == 500)
    assert res.n_params == sum(p.numel() for p in net.parameters())


def test_kernel_of_a_cnn_in_eval_mode_and_a_custom_output_matches_jacrev():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(6, 1, 6, 6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def true_logit(o):
        return o.gather(1, labels[:, None]).squeeze(1)

    res = empirical_ntk(net, (x, labels), output_fn=lambda m, b: true_logit(m(b[0])))
    assert _rel(res.kernel, _jacrev_kernel(net, x, true_logit)) < 1e-5


def test_default_output_and_probe_slice():
    net = nn.Linear(3, 4)
    x = torch.randn(5, 3)
    assert torch.allclose(default_output(net, (x, torch.zeros(5))), net(x).sum(1))
    sl = probe_slice({"x": x, "y": [x, 7]}, 2)
    assert sl["x"].shape == (2, 3) and sl["y"][0].shape == (2, 3) and sl["y"][1] == 7


def test_distance_and_spectrum_known_values():
    eye = torch.eye(2, dtype=torch.float64)
    assert kernel_distance(eye, 3 * eye) == pytest.approx(0.0, abs=1e-15)  # scale does not count
    assert kernel_distance(eye, torch.diag(torch.tensor([1.0, 0.0]))) == pytest.approx(1 - 1 / math.sqrt(2))
    assert kernel_distance(torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([0.0, 1.0]))) == 1.0
    assert math.isnan(kernel_distance(eye, torch.zeros(2, 2)))
    top, share = kernel_stats(torch.diag(torch.tensor([3.0, 1.0, 0.0])))
    assert top == pytest.approx(3.0) and share == pytest.approx(0.75)


def _fit(tmp_path, width, lr, depth, steps=100):
    torch.manual_seed(1)
    layers = [nn.Linear(10, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    net = nn.Sequential(*layers, nn.Linear(width, 1))
    x = torch.randn(16, 10)
    y = torch.sin(3 * x[:, :1]) + x[:, 1:2] ** 2
    drive(tmp_path, net, torch.optim.SGD(net.parameters(), lr=lr), steps, data=(x, y),
          config=MonitorConfig(sharpness_budget=0, ntk_every_n_steps=20, trajectory_every_n_steps=0),
          probe_loss=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]))
    with open_run(tmp_path / "run.db") as run:
        loss = run.series("loss/train").values
        return run.series("ntk/distance"), run.series("ntk/velocity"), loss


def test_a_wide_lazy_net_keeps_its_kernel_and_a_narrow_one_moves_it(tmp_path):
    (tmp_path / "lazy").mkdir()
    (tmp_path / "rich").mkdir()
    lazy, lazy_v, lazy_loss = _fit(tmp_path / "lazy", 4096, 0.003, 1)
    rich, rich_v, rich_loss = _fit(tmp_path / "rich", 8, 0.2, 2)
    for loss in (lazy_loss, rich_loss):  # both fit the data
        assert loss[-1] < loss[0] / 20
    assert list(lazy.steps) == [0, 20, 40, 60, 80] and lazy.values[0] == 0.0
    assert lazy.values.max() < 0.005
    assert rich.values.max() > 0.15 and rich.values.max() > 30 * lazy.values.max()
    # the velocity is the distance between consecutive kernels: the first equals the first distance
    assert rich_v.steps[0] == 20 and rich_v.values[0] == pytest.approx(rich.values[1])
    assert (rich_v.values <= 1.0).all() and (rich_v.values >= 0).all()


def test_lightning_run_records_the_kernel_of_the_initial_model_and_changes_nothing(tmp_path):
    # dropout: the probe runs in eval mode and restores the random generators
    plain = fit_mlp(tmp_path, "plain", dropout=0.3)
    watched = fit_mlp(tmp_path, "ntk", {"ntk_every_n_steps": 3, "ntk_examples": 16, "sharpness_budget": 0},
                      dropout=0.3)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    pl.seed_everything(0, verbose=False)
    fresh = MLP(dropout=0.3).eval()
    x0, _ = next(iter(loaders()[0]))
    k0 = empirical_ntk(fresh, x0[:16]).kernel
    with open_run(tmp_path / "ntk") as run:
        top = run.series("ntk/top_eig")
        dist = run.series("ntk/distance")
        assert list(top.steps) == [0, 3, 6, 9, 12, 15]
        assert top.values[0] == pytest.approx(kernel_stats(k0)[0], rel=1e-6)
        assert dist.values[0] == 0 and (dist.values[1:] > 0).all()
        assert list(run.series("ntk/velocity").steps) == [3, 6, 9, 12, 15]
        assert 0 < run.series("ntk/top_eig_share").values.min() <= 1
        meta = run.meta
        assert meta["ntk"]["examples"] == 16 and meta["ntk"]["reference_step"] == 0
        assert meta["ntk_probes"] == 6 and meta["measurement_errors"] == []


def test_budget_schedule_takes_the_reference_then_probes_on_the_sharpness_schedule_rules(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
    drive(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.05), 300,
          config=MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=0, ntk_budget=0.005),
          probe_loss=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]))
    with open_run(tmp_path / "run.db") as run:
        steps = run.series("ntk/distance").steps
        meta = run.meta
    # the reference at the first step, the first scheduled probe at a tenth of the run (30) and then the sharpness
    # schedule's 1% of the rest but at least 3 steps (33), taken there unless the allowance does not cover its
    # measured cost yet (a slow or busy host: later); how many follow depends on measured times (benchmarks)
    facts = meta["ntk"]["schedule"]
    assert steps[0] == 0 and facts["planned_first_step"] == 33 and all(33 <= s < 300 for s in steps[1:])
    assert facts["first_step"] in (None, steps[1] if len(steps) > 1 else None)
    assert facts["mode"] == "planned" and meta["ntk_probes"] == len(steps) == facts["probes"] + 1
    assert 0 < meta["ntk_time_s"] < meta["duration_s"]


def test_checkpoint_keeps_the_reference_and_a_new_probe_set_resets_it(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    probe = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    cfg = MonitorConfig(sharpness_budget=0, ntk_every_n_steps=5, trajectory_every_n_steps=0)
    (tmp_path / "a").mkdir()
    mon = drive(tmp_path / "a", net, torch.optim.SGD(net.parameters(), lr=0.1), 20, config=cfg, probe_loss=probe)
    state = mon.state_dict()["collectors"]["ntk"]
    assert len(state["k0"]) == 16 and state["ref_step"] == 0
    c = NTKCollector(budget=0.0, every_n=5)
    c.load_state_dict(state)
    assert c.saved.k0 == state["k0"] and c.saved.fingerprint == state["fingerprint"]
    # the same probe batch (drive seeds it): the reference stays, the first probe is a distance from it
    from dyncheck.monitor import Monitor

    (tmp_path / "b").mkdir()
    resumed = Monitor(cfg)
    resumed.collectors[[type(x) for x in resumed.collectors].index(NTKCollector)].load_state_dict(state)
    drive(tmp_path / "b", net, torch.optim.SGD(net.parameters(), lr=0.1), 6, monitor=resumed, probe_loss=probe)
    with open_run(tmp_path / "b" / "run.db") as run:
        assert run.series("ntk/distance").values[0] > 0  # not a new reference
        assert run.meta["ntk"]["reference_step"] == 0
    # another probe set: a new reference
    (tmp_path / "c").mkdir()
    other = Monitor(cfg)
    other.collectors[[type(x) for x in other.collectors].index(NTKCollector)].load_state_dict(state)
    data = (torch.randn(16, 8) + 5, torch.randn(16, 1))
    drive(tmp_path / "c", net, torch.optim.SGD(net.parameters(), lr=0.1), 6, monitor=other, probe_loss=probe,
          data=data)
    with open_run(tmp_path / "c" / "run.db") as run:
        assert run.series("ntk/distance").values[0] == 0.0


def test_an_output_fn_that_fails_turns_ntk_off_and_training_goes_on(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1))

    def bad(module, batch):
        return module(batch[0])  # (m, 1): not one value per example

    with pytest.warns(UserWarning, match="ntk"):
        drive(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1), 5, probe_loss=lambda m, b: m(b[0]).sum(),
              config=MonitorConfig(sharpness_budget=0, ntk_every_n_steps=2, ntk_output_fn=bad))
    with open_run(tmp_path / "run.db") as run:
        assert "ntk/distance" not in run and len(run.series("loss/train").steps) == 5
        errs = run.meta["measurement_errors"]
        assert errs[0]["measurement"] == "ntk" and "1-d tensor" in errs[0]["message"]


@pytest.mark.parametrize("kw", [{"ntk_budget": 1.5}, {"ntk_budget": -0.1}, {"ntk_every_n_steps": -1},
                                {"ntk_examples": 0}, {"ntk_examples": 2.5}, {"ntk_output_fn": "sum"}])
def test_bad_options_are_clear_errors(kw):
    name = next(iter(kw))
    with pytest.raises(ConfigError, match=name):
        MonitorConfig(**kw)
    with pytest.raises(ConfigError, match=name):
        DynamicsMonitor(**kw)


def test_the_benchmark_script_runs_and_prints_its_tables():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "ntk_trajectory.py"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for title in ("1. empirical NTK vs torch.func.jacrev", "2. trajectory PCA", "3. sketch overhead per step",
                  "4. the sketch in the run store"):
        assert title in out
    row = next(line for line in out.splitlines() if line.startswith("mlp 64-64-32-10 tanh"))
    assert all(float(v) < 1e-5 for v in row.split()[4:9])  # every error column within the target


def test_a_lightning_resume_continues_the_kernel_distances_and_the_sketch(tmp_path):
    """An uninterrupted run vs one that crashes in epoch 3 and resumes from the epoch-2 checkpoint with a new
    monitor: the same NTK distances (K_0 came back from the checkpoint) and the same weight sketch, step for step."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from test_lifecycle import Crashing

    from dyncheck.measure.trajectory import read_sketch

    kw = dict(every_n_steps=3, flush_every_n_steps=2, ntk_every_n_steps=3, ntk_examples=8, trajectory_every_n_steps=2,
              trajectory_dim=64, sharpness_budget=0, rules=None, report=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.seed_everything(7)
        trainer(tmp_path / "ref", [DynamicsMonitor(dirpath=tmp_path / "ref_run", **kw)], max_epochs=4).fit(
            MLP(), *loaders(flat=True))
        pl.seed_everything(7)
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
        with pytest.raises(RuntimeError):
            trainer(tmp_path / "a", [DynamicsMonitor(dirpath=tmp_path / "run", **kw), ckpt], max_epochs=4,
                    enable_checkpointing=True).fit(Crashing(20, RuntimeError("preempted")), *loaders(flat=True))
        last = sorted((tmp_path / "ckpt").glob("epoch=1*.ckpt"))[0]
        pl.seed_everything(7)
        trainer(tmp_path / "b", [DynamicsMonitor(dirpath=tmp_path / "run", **kw)], max_epochs=4,
                enable_checkpointing=True).fit(MLP(), *loaders(flat=True), ckpt_path=last)
    with open_run(tmp_path / "run") as run, open_run(tmp_path / "ref_run") as ref:
        assert run.meta["resumed_from_step"] == 16 and run.meta["ntk"]["reference_step"] == 0
        for name in ("ntk/distance", "ntk/velocity", "ntk/top_eig"):
            a, b = run.series(name), ref.series(name)
            assert list(a.steps) == list(b.steps) == list(range(0 if name != "ntk/velocity" else 3, 32, 3)), name
            np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-12, err_msg=name)
        (sa, ma), (sb, mb) = read_sketch(run), read_sketch(ref)
        assert list(sa) == list(sb) == list(range(0, 32, 2)) and np.array_equal(ma, mb)


def test_the_default_leaves_models_with_a_large_probe_jacobian_alone(tmp_path):
    """ntk_budget=None (the default): on for small models, off with the reason in the meta when examples x
    trainable parameters exceeds NTK_AUTO_MAX; an explicit budget measures any model."""
    from dyncheck.collect.ntk import NTK_AUTO_MAX

    torch.manual_seed(0)
    width = NTK_AUTO_MAX // (32 * 10) + 1  # 32 examples x (10 width + 1) parameters > NTK_AUTO_MAX
    wide = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 1))
    loss = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    (tmp_path / "auto").mkdir()
    (tmp_path / "on").mkdir()
    drive(tmp_path / "auto", wide, torch.optim.SGD(wide.parameters(), lr=0.01), 4,
          config=MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=0, noise_budget=0), probe_loss=loss)
    with open_run(tmp_path / "auto" / "run.db") as run:
        assert not [m for m in run.metrics() if m.startswith("ntk/")]
        assert "off by default for this model" in run.meta["ntk"]["off"]
        assert run.meta["measurement_errors"] == []
    drive(tmp_path / "on", wide, torch.optim.SGD(wide.parameters(), lr=0.01), 4,
          config=MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=0, noise_budget=0, ntk_every_n_steps=2),
          probe_loss=loss)
    with open_run(tmp_path / "on" / "run.db") as run:
        assert run.series("ntk/distance").steps.tolist() == [0, 2]


def test_the_default_is_off_on_a_planned_run_too_short_to_pay_for_the_reference(tmp_path, monkeypatch):
    """ntk_budget=None on a planned run of fewer than NTK_AUTO_MIN_STEPS steps: off, the reason in the meta, no
    error and no time spent (the reference alone would cost more than the run's budget); from that length on, and
    with an explicit budget at any length, the reference is taken at the first step."""
    from dyncheck.collect import ntk as ntk_module

    torch.manual_seed(0)
    loss = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    cfg = MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=0, noise_budget=0)
    for name, min_steps, config in [("short", 10_000, cfg), ("long-enough", 20, cfg),
                                    ("explicit", 10_000, MonitorConfig(sharpness_budget=0, trajectory_every_n_steps=0,
                                                                       noise_budget=0, ntk_budget=0.005))]:
        monkeypatch.setattr(ntk_module, "NTK_AUTO_MIN_STEPS", min_steps)
        net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        (tmp_path / name).mkdir()
        drive(tmp_path / name, net, torch.optim.SGD(net.parameters(), lr=0.05), 20, config=config, probe_loss=loss)
        with open_run(tmp_path / name / "run.db") as run:
            meta = run.meta
            ntk = [m for m in run.metrics() if m.startswith("ntk/")]
            if name == "short":
                assert not ntk and meta["ntk_time_s"] == 0 and meta["ntk_probes"] == 0
                assert "20 planned steps, fewer than 10,000" in meta["ntk"]["off"]
                assert meta["measurement_errors"] == []
            else:
                assert run.series("ntk/distance").steps[0] == 0 and meta["ntk_probes"] >= 1, name
