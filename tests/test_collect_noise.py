"""The noise-scale collector: exact values through a plain loop (probe and gradient accumulation, against gradients
computed in the test), a real Lightning Trainer recording the metrics from either source, training left
bit-identical, and its options."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import dyncheck
from dyncheck import ConfigError, DynamicsMonitor, open_run
from dyncheck.measure.noise import split_batch, two_batch_estimates
from models import MLP, loaders, trainer

NOISE = ("noise/b_simple", "noise/trace_sigma", "noise/grad_sq", "batch/size")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(128, 8, generator=g), torch.randn(128, 1, generator=g)


def _loss(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def _copy(model):
    """A copy of the weights in a fresh module (the watched one carries the monitor's hooks)."""
    ref = _model()
    ref.load_state_dict(model.state_dict())
    return ref


def _sq(grads):
    return float(sum((g.double() ** 2).sum() for g in grads))


def _grads(model, batch):
    return torch.autograd.grad(_loss(model, batch), list(model.parameters()))


@pytest.mark.parametrize("order", ["after", "before"])
def test_accumulation_source_in_a_plain_loop_matches_micro_batch_gradients(tmp_path, order):
    """Four micro-batches of 8 per step, ``(loss / 4).backward()``: with no smoothing (noise_ema=0) each step's
    tr(Σ) and |G|² are the two-batch estimates of the micro-batch gradients (B_small 8, B_big 32), computed here
    on a copy of the model. ``mon.step(loss)`` before or after ``optimizer.step()`` gives the same."""
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = {}
    with dyncheck.watch(model, opt, dirpath=tmp_path / "run", probe_batch=(x[:8], y[:8]), sharpness_loss_fn=_loss,
                        sharpness_budget=0, noise_every_n_steps=1, noise_ema=0.0, report=False) as mon:
        for step in range(6):
            ref = _copy(model)
            micro = [(x[(4 * step + k) * 8 % 128:][:8], y[(4 * step + k) * 8 % 128:][:8]) for k in range(4)]
            gs = [_grads(ref, mb) for mb in micro]
            mean = [sum(g[i] for g in gs) / 4 for i in range(len(gs[0]))]
            expected[step] = two_batch_estimates(float(np.mean([_sq(g) for g in gs])), _sq(mean), 8, 32)
            for k, mb in enumerate(micro):
                loss = _loss(model, mb)
                (loss / 4).backward()
                if order == "before" or k < 3:
                    mon.step(loss)
            opt.step()
            opt.zero_grad()
            if order == "after":
                mon.step(loss)
    run = open_run(tmp_path / "run")
    assert run.meta["noise_source"] == "accumulation"
    assert set(run.meta["noise_sources_skipped"]) == {"ddp", "probe"}
    tr, g2 = run.series("noise/trace_sigma"), run.series("noise/grad_sq")
    assert tr.steps.tolist() == list(range(6)) == g2.steps.tolist()
    np.testing.assert_allclose(g2.values, [expected[s][0] for s in range(6)], rtol=1e-4)
    np.testing.assert_allclose(tr.values, [expected[s][1] for s in range(6)], rtol=1e-4)
    assert run.series("batch/size").values.tolist() == [32.0] * 6
    b = run.series("noise/b_simple")
    pos = g2.values > 0
    assert b.steps.tolist() == g2.steps[pos].tolist()
    np.testing.assert_allclose(b.values, tr.values[pos] / g2.values[pos], rtol=1e-6)


def test_probe_source_in_a_plain_loop_matches_the_same_micro_batches(tmp_path):
    """One batch per step: the probe splits the probe batch (a plain loop passes no batches) in 8 random
    micro-batches of 2 and computes the gradients of the first 4, at the weights of the step (before its forward):
    B_small 2, B_big 8 (their mean). Reproduced here with the collector's generator (seed 0, one permutation per
    probe). The first measured step only looks for accumulation."""
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = (x[:16], y[:16])
    weights = {}
    with dyncheck.watch(model, opt, dirpath=tmp_path / "run", probe_batch=probe, sharpness_loss_fn=_loss,
                        sharpness_budget=0, noise_every_n_steps=1, noise_ema=0.0, report=False) as mon:
        for step in range(6):
            weights[step] = _copy(model)
            loss = _loss(model, (x[16 * step:16 * step + 16], y[16 * step:16 * step + 16]))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # clipping the step's gradient changes nothing here
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    run = open_run(tmp_path / "run")
    assert run.meta["noise_source"] == "probe"
    assert run.meta["noise_probe"] == {"micro_batches": 8, "evaluated": 4, "big_batch": "the evaluated micro-batches"}
    assert run.meta["noise_sources_skipped"]["accumulation"].startswith("one batch per optimizer step")
    tr, g2 = run.series("noise/trace_sigma"), run.series("noise/grad_sq")
    assert tr.steps.tolist() == [1, 2, 3, 4, 5]
    gen = torch.Generator().manual_seed(0)
    for i, step in enumerate(tr.steps):
        ref = weights[int(step)]
        perm = torch.randperm(16, generator=gen)
        gs = [_grads(ref, split_batch(probe, perm[j * 2:(j + 1) * 2], 16)) for j in range(4)]
        mean = [sum(g[k] for g in gs) / 4 for k in range(len(gs[0]))]
        want = two_batch_estimates(float(np.mean([_sq(g) for g in gs])), _sq(mean), 2, 8)
        assert g2.values[i] == pytest.approx(want[0], rel=1e-4)
        assert tr.values[i] == pytest.approx(want[1], rel=1e-4)
    assert run.series("batch/size").values.tolist() == [16.0] * 5


@pytest.mark.parametrize("accumulate", [1, 4])
def test_lightning_records_the_noise_scale_beside_the_batch_size(tmp_path, accumulate):
    mon = DynamicsMonitor(dirpath=tmp_path / "run", noise_every_n_steps=2, report=False)
    trainer(tmp_path, [mon], max_epochs=3, accumulate_grad_batches=accumulate).fit(
        MLP(), *loaders(batch_size=16, flat=True, shuffle=True))
    run = open_run(tmp_path / "run")
    steps = 48 // accumulate
    assert run.meta["noise_source"] == ("probe" if accumulate == 1 else "accumulation")
    assert run.meta["noise_schedule"]["mode"] == "fixed"
    tr, g2, size = (run.series(k) for k in NOISE[1:])
    # the probe: step 0 looks for accumulation, the probe measures from step 1 (bucket 0 still open)
    want = ([1] if accumulate == 1 else [0]) + list(range(2, steps, 2))
    assert tr.steps.tolist() == want == size.steps.tolist()
    assert size.values.tolist() == [16.0 * accumulate] * len(want)
    assert np.all(tr.values > 0) and np.all(np.isfinite(g2.values))
    b = run.series("noise/b_simple")
    assert len(b) >= len(want) // 2
    i = np.searchsorted(tr.steps, b.steps)
    np.testing.assert_allclose(b.values, tr.values[i] / g2.values[i], rtol=1e-6)
    assert run.meta["measurement_errors"] == []


def test_lightning_probe_values_match_micro_batches_against_the_step_gradient(tmp_path):
    """Lightning reads gradients before clipping: the probe computes 2 of 8 micro-batches (2 examples each) of
    the step's batch at the step's weights, and the step's own gradient (16 examples, before its clipping) is
    the big batch. Reproduced here from the recorded weights and batches with the collector's generator."""
    weights, batches = {}, {}

    class Rec(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            weights[trainer.global_step] = {k: v.clone() for k, v in pl_module.state_dict().items()}
            batches[trainer.global_step] = [t.clone() for t in batch]

    mon = DynamicsMonitor(dirpath=tmp_path / "run", noise_every_n_steps=1, noise_ema=0.0, report=False)
    pl.seed_everything(0)
    trainer(tmp_path, [Rec(), mon], max_epochs=1, gradient_clip_val=1e-3).fit(
        MLP(), *loaders(n=96, batch_size=16, flat=True, shuffle=True))
    run = open_run(tmp_path / "run")
    assert run.meta["noise_probe"] == {"micro_batches": 8, "evaluated": 2, "big_batch": "the step's gradient"}
    tr, g2 = run.series("noise/trace_sigma"), run.series("noise/grad_sq")
    assert tr.steps.tolist() == [1, 2, 3, 4, 5]
    ref = MLP()
    gen = torch.Generator().manual_seed(0)

    def grads(x, y):
        return torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))

    for i, step in enumerate(tr.steps.tolist()):
        ref.load_state_dict(weights[step])
        x, y = batches[step]
        perm = torch.randperm(16, generator=gen)
        small = np.mean([_sq(grads(x[perm[j * 2:(j + 1) * 2]], y[perm[j * 2:(j + 1) * 2]])) for j in range(2)])
        want = two_batch_estimates(float(small), _sq(grads(x, y)), 2, 16)
        assert g2.values[i] == pytest.approx(want[0], rel=1e-4, abs=1e-7)
        assert tr.values[i] == pytest.approx(want[1], rel=1e-4)


def test_lightning_accumulation_values_match_the_micro_batch_gradients(tmp_path):
    """Through Lightning's own accumulation (the loss divided by 4, ``.grad`` summed over the micro-batches, zeroed
    after the step): each step's estimates (no smoothing) are those of the four micro-batches' gradients at the
    step's weights, recomputed here."""
    weights, batches = {}, {}

    class Rec(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step = trainer.global_step
            if step not in weights:
                weights[step] = {k: v.clone() for k, v in pl_module.state_dict().items()}
            batches.setdefault(step, []).append([t.clone() for t in batch])

    mon = DynamicsMonitor(dirpath=tmp_path / "run", noise_every_n_steps=1, noise_ema=0.0, report=False)
    pl.seed_everything(0)
    trainer(tmp_path, [Rec(), mon], max_epochs=1, accumulate_grad_batches=4).fit(
        MLP(), *loaders(batch_size=16, flat=True, shuffle=True))
    run = open_run(tmp_path / "run")
    tr, g2 = run.series("noise/trace_sigma"), run.series("noise/grad_sq")
    assert tr.steps.tolist() == [0, 1, 2, 3]
    ref = MLP()
    for i, step in enumerate(tr.steps.tolist()):
        ref.load_state_dict(weights[step])
        gs = [torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))
              for x, y in batches[step]]
        mean = [sum(g[k] for g in gs) / 4 for k in range(len(gs[0]))]
        want = two_batch_estimates(float(np.mean([_sq(g) for g in gs])), _sq(mean), 16, 64)
        assert g2.values[i] == pytest.approx(want[0], rel=1e-3, abs=1e-7)
        assert tr.values[i] == pytest.approx(want[1], rel=1e-4)


def _train(tmp_path, monitor, accumulate):
    pl.seed_everything(1234)
    model = MLP(dropout=0.3, batchnorm=True, momentum=0.9)
    trainer(tmp_path, [monitor] if monitor else [], accumulate_grad_batches=accumulate).fit(
        model, *loaders(shuffle=True, flat=True))
    return model.losses, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_noise_probe_does_not_change_training(tmp_path, accumulate):
    """Same seed, bit-identical losses and weights with the noise scale measured at every step (dropout draws
    random numbers, BatchNorm keeps running statistics), beside sharpness probes and activation hooks."""
    mon = DynamicsMonitor(dirpath=tmp_path / "run", every_n_steps=1, activations_every_n_steps=1,
                          sharpness_every_n_steps=2, noise_every_n_steps=1, flush_every_n_steps=3, report=False)
    with_losses, with_state = _train(tmp_path / "a", mon, accumulate)
    plain_losses, plain_state = _train(tmp_path / "b", None, accumulate)
    assert with_losses == plain_losses
    for k in plain_state:
        assert torch.equal(with_state[k], plain_state[k]), k
    run = open_run(tmp_path / "run")
    assert len(run.series("noise/trace_sigma")) >= 16 // accumulate - 1
    assert run.meta["measurement_errors"] == []


def test_default_budget_measures_and_zero_budget_turns_it_off(tmp_path):
    # budget mode, as by default; the 32-step run pays for a first measurement of ~2 steps at 10% (at the default
    # 0.25% it would not: tests/test_measure_noise.py, the schedule)
    on = DynamicsMonitor(dirpath=tmp_path / "on", report=False, noise_budget=0.1)
    trainer(tmp_path, [on]).fit(MLP(), *loaders(batch_size=16, flat=True, shuffle=True))
    run = open_run(tmp_path / "on")
    assert run.meta["noise_schedule"]["mode"] == "budget" and run.meta["noise_schedule"]["measurements"] >= 1
    assert len(run.series("noise/trace_sigma")) == run.meta["noise_schedule"]["measurements"]
    off = DynamicsMonitor(dirpath=tmp_path / "off", noise_budget=0, report=False)
    trainer(tmp_path, [off]).fit(MLP(), *loaders(batch_size=16, flat=True))
    run = open_run(tmp_path / "off")
    assert not [m for m in run.metrics() if m.startswith("noise/") or m == "batch/size"]
    assert run.meta["noise_source"] is None and "turned off" in run.meta["noise_sources_skipped"]["all"]
    from dyncheck.report import render_report

    html = render_report(tmp_path / "off")
    assert "The gradient noise scale was not measured: turned off (noise_budget=0 or noise_every_n_steps=0)" in html


@pytest.mark.parametrize("kw, msg", [
    ({"noise_budget": -0.1}, r"noise_budget=-0\.1\): expected a number in \[0\.0, 1\.0\]"),
    ({"noise_budget": 2}, "noise_budget=2"),
    ({"noise_budget": "a"}, "noise_budget='a'"),
    ({"noise_every_n_steps": -1}, r"noise_every_n_steps=-1\): expected an int >= 0 or None"),
    ({"noise_every_n_steps": 2.5}, "noise_every_n_steps=2.5"),
    ({"noise_ema": 1.0}, r"noise_ema=1\.0\): expected a number in \[0\.0, 1\.0\)"),
    ({"noise_ema": -0.5}, "noise_ema=-0.5"),
    ({"noise_ema": True}, "noise_ema=True"),
])
def test_bad_options_are_clear_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        DynamicsMonitor(**kw)


@pytest.mark.parametrize("top, dip_at_end, fires_from", [
    (1000.0, False, 8),  # B_simple >= 160 (batch 16 at 0.1x or less) from point 8 of 20 on: 12 points, to the end
    (300.0, False, None),  # from point 13 on: 7 of 20 points, under half of them
    (1000.0, True, None),  # not so at the end
])
def test_noise_dominated_check_is_info_and_needs_a_sustained_stretch_to_the_end(top, dip_at_end, fires_from):
    from dyncheck.checks.engine import evaluate
    from dyncheck.checks.rules import load_rules

    steps = np.arange(20) * 10
    b = np.geomspace(50.0, top, 20)
    if dip_at_end:
        b[-1] = 100.0
    series = {"loss/train": (np.arange(200), np.linspace(2, 0.5, 200)), "batch/size": (steps, np.full(20, 16.0)),
              "noise/b_simple": (steps, b)}
    rules = load_rules("default")
    assert rules["noise-dominated"].severity == "info"
    found = [f for f in evaluate(series, rules).findings if f.check == "noise-dominated"]
    if fires_from is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].severity == "info" and found[0].first_step == steps[fires_from]
        assert "noise-dominated" in found[0].message


def test_noise_dominated_is_skipped_with_a_reason_when_not_measured():
    from dyncheck.checks.engine import evaluate

    res = evaluate({"loss/train": (np.arange(50), np.ones(50))}, "default")
    why = {s.check: s.reason for s in res.skipped}["noise-dominated"]
    assert "gradient noise scale was not measured" in why


def test_noise_scale_scenario_shows_the_noise_scale_growing_as_the_loss_falls(tmp_path):
    """The demo scenario (``dyncheck demo --scenario noise-scale``): a healthy run, no warnings or errors, where
    B_simple ends several times above where it started while the loss falls; the report says so."""
    from dyncheck import evaluate
    from dyncheck.scenarios import SCENARIOS, run_scenario

    run_dir = run_scenario("noise-scale", tmp_path, monitor_kwargs={"rules": None})
    run = open_run(run_dir)
    b, loss = run.series("noise/b_simple"), run.series("loss/train")
    k = len(b) // 3
    assert len(b) > 100 and np.median(b.values[-k:]) > 2.5 * np.median(b.values[:k])
    assert np.median(loss.values[-100:]) < 0.6 * np.median(loss.values[:100])
    assert run.meta["noise_source"] == "probe"
    result = evaluate(run_dir, "default")
    assert {f.check for f in result.findings if f.severity != "info"} <= SCENARIOS["noise-scale"].allowed
    from dyncheck.report import render_report

    html = render_report(run_dir, result=result)
    assert "it grew, as the noise scale does while the loss falls" in html


def test_moving_averages_travel_in_checkpoints(tmp_path):
    """A resumed fit's B_simple goes on from the checkpoint's moving averages; nothing measured: nothing saved."""
    from types import SimpleNamespace

    from dyncheck.collect import NoiseScaleCollector

    emitted = []

    def ctx():
        return SimpleNamespace(module=_model(), probe_loss=_loss, start_step=0, planned_steps=None, sharded=False,
                               has_store=True,
                               emit_host=lambda step, names, vals: emitted.append((step, dict(zip(names, vals)))))

    c = NoiseScaleCollector(budget=0.01, every_n=None, ema=0.9)
    c.start(ctx())
    assert c.state_dict() == {}
    # a step whose squared norms at batch sizes 1 and 2 are 12 and 7: |G|² 2, tr(Σ) 10
    c.now = c.Step(seen_final=True, estimate=(12.0, 7.0, 1.0, 2.0), batch=2)
    c.step_end(3)
    assert emitted == [(3, {"noise/b_simple": pytest.approx(5.0), "noise/trace_sigma": pytest.approx(10.0),
                            "noise/grad_sq": pytest.approx(2.0), "batch/size": 2.0})]
    again = NoiseScaleCollector(budget=0.01, every_n=None, ema=0.9)
    again.load_state_dict(c.state_dict())
    again.start(ctx())
    assert again.fit.ema.b_simple == pytest.approx(5.0)
    again.fit.ema.update(4.0, 4.0)
    assert again.fit.ema.grad_sq == pytest.approx((0.9 * 0.1 * 2 + 0.1 * 4) / (0.9 * 0.1 + 0.1))


def test_noise_section_chart_renders_in_a_browser(tmp_path):
    """The report's noise-scale chart (B_simple beside the batch size) draws both traces in headless Chromium, with
    no console error (skips without Chromium/Playwright, as tests/test_report_browser.py does)."""
    pytest.importorskip("playwright.sync_api")
    import test_report_browser as rb
    from playwright.sync_api import sync_playwright

    if rb.chromium_path() is None:
        pytest.skip("no Chromium found")
    mon = DynamicsMonitor(dirpath=tmp_path / "run", noise_every_n_steps=1)
    trainer(tmp_path, [mon], max_epochs=2).fit(MLP(), *loaders(batch_size=16, flat=True, shuffle=True))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=rb.chromium_path(), args=rb.ARGS)
        try:
            seen = rb.open_report(browser, tmp_path / "run" / "report.html", "noise-section")
        finally:
            browser.close()
    rb.assert_clean(seen)
    chart = next(c for c in seen["charts"] if c["id"] == "chart-noise")
    assert chart["traces"] == 2 and chart["drawn"] == 2
    assert "Gradient noise scale" in seen["text"] and "B_simple went from about" in seen["text"]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_batches_of_one_example(tmp_path, accumulate):
    """Batches of one: without accumulation the probe has no two batch sizes (off, said in the meta, no warning);
    with two micro-batches of one, accumulation measures (B_small 1, B_big 2)."""
    import warnings

    mon = DynamicsMonitor(dirpath=tmp_path / "run", noise_every_n_steps=1, report=False, rules=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [mon], max_epochs=1, accumulate_grad_batches=accumulate).fit(
            MLP(), *loaders(n=16, batch_size=1, flat=True, shuffle=True))
    run = open_run(tmp_path / "run")
    assert run.meta["measurement_errors"] == []
    assert not [w for w in caught if "dyncheck: noise" in str(w.message)]
    if accumulate == 1:
        assert "batches of one example" in run.meta["noise_sources_skipped"]["all"]
        assert "noise/trace_sigma" not in run.metrics()
    else:
        assert run.meta["noise_source"] == "accumulation"
        assert run.series("batch/size").values.tolist() == [2.0] * 8


def test_scaled_micro_batch_gradients_fall_back_to_the_probe(tmp_path):
    """A loss scaler (fp16's GradScaler) scales the micro-batches' gradients and unscales only the final one:
    the accumulation source sees .grad shrink 2^16-fold at the last micro-batch and hands over to the probe."""
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scale = 2.0 ** 16
    with dyncheck.watch(model, opt, dirpath=tmp_path / "run", probe_batch=(x[:8], y[:8]), sharpness_loss_fn=_loss,
                        sharpness_budget=0, noise_every_n_steps=1, report=False) as mon:
        for step in range(5):
            for k in range(4):
                i = (4 * step + k) * 8 % 128
                loss = _loss(model, (x[i:i + 8], y[i:i + 8]))
                (loss / 4 * scale).backward()
                if k < 3:
                    mon.step(loss)
            with torch.no_grad():  # what GradScaler.unscale_ does before the step
                for p in model.parameters():
                    p.grad /= scale
            opt.step()
            opt.zero_grad()
            mon.step(loss)
    run = open_run(tmp_path / "run")
    assert run.meta["noise_source"] == "probe"
    assert run.meta["noise_sources_skipped"]["accumulation"].startswith("the micro-batch gradients are scaled")
    assert run.series("noise/trace_sigma").steps.tolist() == [1, 2, 3, 4]
    assert set(run.series("batch/size").values.tolist()) == {32.0}


def test_benchmark_script_runs(tmp_path):
    """benchmarks/noise_scale.py --quick prints its accuracy and cost tables (figures are its business, not
    asserted here)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "noise_scale.py"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 2/8+step |" in proc.stdout and "| 4/8 |" in proc.stdout and "accumulation (8 micro)" in proc.stdout
    assert "target: mean estimates within 10% of exact" in proc.stdout


def test_hugging_face_trainer_records_the_noise_scale(tmp_path):
    """Through a real transformers.Trainer (tiny random GPT-2): the probe runs on its own micro-batches (the
    Trainer's gradients come after its clipping), beside the per-device batch size."""
    pytest.importorskip("transformers")
    import test_adapters_hf as hf

    from dyncheck.adapters.hf import DynamicsMonitorCallback

    cb = DynamicsMonitorCallback(dirpath=tmp_path / "run", noise_every_n_steps=2, report=False, rules=None)
    hf._fit(tmp_path, [cb], steps=12)
    run = open_run(tmp_path / "run")
    assert run.meta["noise_source"] == "probe" and run.meta["measurement_errors"] == []
    assert run.meta["noise_probe"] == {"micro_batches": 8, "evaluated": 4, "big_batch": "the evaluated micro-batches"}
    tr = run.series("noise/trace_sigma")
    assert tr.steps.tolist() == [2, 4, 6, 8, 10] and np.all(tr.values > 0)
    assert run.series("batch/size").values.tolist() == [8.0] * 5


@pytest.mark.parametrize("accumulate", [1, 2])
def test_plain_loop_training_is_bit_identical_with_the_noise_scale_every_step(tmp_path, accumulate):
    """The probe runs inside the model's forward pre-hook of a plain loop: with dropout drawing random numbers,
    the weights after training are bit-identical with and without it."""

    def train(monitored):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x, y = _data()
        torch.manual_seed(1)
        ctx = dyncheck.watch(model, opt, dirpath=tmp_path / f"run{accumulate}", probe_batch=(x[:16], y[:16]),
                             sharpness_loss_fn=_loss, sharpness_every_n_steps=3, noise_every_n_steps=1,
                             report=False, rules=None) if monitored else None
        mon = ctx.__enter__() if ctx else None
        for step in range(6):
            for k in range(accumulate):
                i = ((step * accumulate + k) * 16) % 128
                loss = _loss(model, (x[i:i + 16], y[i:i + 16]))
                (loss / accumulate).backward()
                if mon and k < accumulate - 1:
                    mon.step(loss)
            opt.step()
            opt.zero_grad()
            if mon:
                mon.step(loss)
        if ctx:
            ctx.__exit__(None, None, None)
        return {k: v.clone() for k, v in model.state_dict().items()}

    with_state, plain_state = train(True), train(False)
    for k in plain_state:
        assert torch.equal(with_state[k], plain_state[k]), k
    run = open_run(tmp_path / f"run{accumulate}")
    assert len(run.series("noise/trace_sigma")) >= 5
    assert run.meta["noise_source"] == ("probe" if accumulate == 1 else "accumulation")
