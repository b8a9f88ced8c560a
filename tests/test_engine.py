"""Evaluation: findings, persistence (for), warm-up, skipped checks, status; against series with known answers."""

import textwrap

import numpy as np
import pytest

from dyncheck.checks.engine import evaluate
from dyncheck.checks.rules import load_rules


def rules_from(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text))
    return load_rules(p)


def test_for_counts_steps_and_warmup_excludes(tmp_path):
    rules = rules_from(tmp_path, """
        checks:
          - id: high
            summary: above 5
            severity: warning
            metrics: x/*
            detector: threshold
            params: {above: 5}
            for: 30
            warmup: 20%
            message: "{metric} at {value:g} from step {step} to {last_step} ({points} points)"
    """.replace("x/*", "logged/x*"))
    steps = np.arange(0, 200, 10)  # 20 points, every 10 steps
    a = np.zeros(20)
    a[1:3] = 9  # during warm-up (steps 10, 20 < 40): ignored
    a[8:10] = 9  # steps 80, 90: holds 20 steps only -> not for 30
    a[14:17] = 7  # steps 140..160: holds 30 steps -> fires
    b = np.zeros(20)
    res = evaluate({"logged/xa": (steps, a), "logged/xb": (steps, b), "loss/train": (np.arange(191), np.ones(191))},
                   rules)
    assert len(res.findings) == 1
    f = res.findings[0]
    assert (f.check, f.metric, f.first_step, f.last_step, f.value) == ("high", "logged/xa", 140, 160, 7.0)
    assert f.message == "logged/xa at 7 from step 140 to 160 (3 points)"
    assert res.status == "warn" and res.passed == [] and res.counts() == {"error": 0, "warning": 1, "info": 0}


def test_skipped_with_reason_never_silently_passed():
    res = evaluate({"loss/train": (np.arange(50), np.linspace(2, 0.1, 50))}, "default")
    skipped = {s.check: s.reason for s in res.skipped}
    assert "validation loss" in skipped["train-val-divergence"]
    assert "sharpness was not measured" in skipped["edge-of-stability"]
    assert "activation statistics were not recorded" in skipped["dead-units"]
    assert set(skipped) | set(res.passed) | {f.check for f in res.findings} == set(res.checks)
    assert res.status == "pass"


def test_default_pack_on_synthetic_failures():
    s = np.arange(400)
    healthy = 2.3 * np.exp(-s / 60) + 0.05
    nan = healthy.copy()
    nan[300:] = np.nan
    res = evaluate({"loss/train": (s, nan)}, "default")
    assert [(f.check, f.first_step) for f in res.findings if f.check == "non-finite"] == [("non-finite", 300)]
    assert res.status == "fail"
    # divergence: falls to 0.05, then climbs back to 3 and stays
    div = np.concatenate([healthy[:200], np.linspace(0.06, 3.0, 50), np.full(150, 3.0)])
    ids = {f.check for f in evaluate({"loss/train": (s, div)}, "default").findings}
    assert "loss-divergence" in ids and "loss-spike" not in ids
    # a spike that recovers
    spk = healthy.copy()
    spk[250:253] = 2.5
    ids = {f.check for f in evaluate({"loss/train": (s, spk)}, "default").findings}
    assert ids == {"loss-spike"}
    # healthy: nothing at all
    assert evaluate({"loss/train": (s, healthy)}, "default").findings == []


def test_pair_and_group_findings_name_their_metrics(tmp_path):
    s = np.arange(0, 100, 10)
    series = {
        "grad_norm/a.weight": (s, np.full(10, 1e-7)),
        "grad_norm/b.weight": (s, np.full(10, 1e-2)),
        "grad_norm/c.weight": (s, np.ones(10)),
        "sharpness/top_eig": (s, np.linspace(10, 40, 10)),
        "sharpness/threshold": (s, np.full(10, 40.0)),
        "loss/train": (s, np.ones(10)),
    }
    rules = load_rules("default")
    res = evaluate(series, rules)
    by = {f.check: f for f in res.findings}
    assert by["vanishing-gradients"].metric == "grad_norm/a.weight"
    assert "grad_norm/c.weight" in by["vanishing-gradients"].message
    eos = by["edge-of-stability"]
    assert eos.severity == "info" and eos.metric == "sharpness/threshold" and eos.first_step == 80
    assert eos.value == pytest.approx(36.6667 / 40, rel=1e-3)


def test_evaluate_reads_a_run_store(tmp_path):
    from dyncheck.store import RunWriter

    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": (range(100), [2.0] * 50 + [float("inf")] * 50)})
    res = evaluate(tmp_path, "default")
    f = next(f for f in res.findings if f.check == "non-finite")
    assert (f.metric, f.first_step, f.last_step) == ("loss/train", 50, 99)
    assert res.to_dict()["findings"][0]["value"] == "inf"  # JSON has no Infinity: spelled out


def _catapult_series(*, first_ratio=1.3, late_ratio=0.4, end_loss=0.01, spike_at=3, n=450):
    """Full-batch GD: the loss 0.1 at the start jumps ~10x over a few steps from ``spike_at`` and falls back, then
    decays to ``end_loss``; sharpness probed at steps 4, 68, 200, 449 against a threshold of 4."""
    s = np.arange(n)
    loss = 0.1 * np.exp(np.log(end_loss / 0.1) * s / (n - 1))
    for k, f in enumerate([2.0, 5.0, 11.0, 7.0]):
        loss[spike_at + k] = 0.1 * f
    probes = np.array([4, 68, 200, 449])
    eig = np.array([first_ratio, late_ratio, late_ratio, late_ratio]) * 4.0
    return {"loss/train": (s, loss), "sharpness/top_eig": (probes, eig),
            "sharpness/threshold": (probes, np.full(4, 4.0))}


@pytest.mark.parametrize("case, fires", [
    ({}, True),
    ({"first_ratio": 0.95}, True),  # the first probe a little after the onset, already just below 2/lr
    ({"first_ratio": 50.0, "late_ratio": 0.9}, False),  # far above the catapult range: a blow-up, not a catapult
    ({"first_ratio": 0.3, "late_ratio": 0.1}, False),  # started below 2/lr: nothing to catapult out of
    ({"late_ratio": 1.1}, False),  # sharpness never got below 2/lr
    ({"end_loss": 0.09}, False),  # the loss did not end well below its start (a blow-up that settles)
    ({"spike_at": 100}, False),  # the jump is not early (100 of 450 steps)
])
def test_catapult_known_answers(case, fires):
    res = evaluate(_catapult_series(**case), "default")
    got = [f for f in res.findings if f.check == "catapult"]
    assert bool(got) == fires, [f.message for f in res.findings]
    if got:
        assert got[0].severity == "info" and got[0].first_step == (case.get("spike_at", 3))
        assert "catapult" in got[0].message


@pytest.mark.parametrize("eig, threshold, fires", [
    (np.linspace(1.0, 3.5, 8), 4.0, True),  # 3.5x, up to 88% of 2/lr
    (np.linspace(1.0, 1.3, 8), 4.0, False),  # rises only 1.3x
    (np.linspace(0.1, 1.0, 8), 4.0, False),  # 10x, but stays at a quarter of 2/lr (minibatch SGD's early rise)
    (np.full(8, 3.0), 4.0, False),  # flat near the threshold: the edge, no sharpening
    (np.linspace(3.5, 1.0, 8), 4.0, False),  # falling
    (np.linspace(1.0, 3.5, 8), None, False),  # no known threshold (Adam)
])
def test_progressive_sharpening_known_answers(eig, threshold, fires):
    probes = np.linspace(4, 1000, 8).astype(int)
    s = np.arange(1001)
    series = {"loss/train": (s, 2.3 * np.exp(-s / 200) + 0.05), "sharpness/top_eig": (probes, eig)}
    if threshold is not None:
        series["sharpness/threshold"] = (probes, np.full(8, threshold))
    got = [f for f in evaluate(series, "default").findings if f.check == "progressive-sharpening"]
    assert bool(got) == fires
    if got:
        assert got[0].severity == "info"
        first = int(np.flatnonzero(eig >= 1.5 * eig[0])[0])
        assert got[0].first_step == probes[first]
        assert f"from {eig[0]:.3g} at the first probe" in got[0].message


def test_a_check_skipped_for_a_failed_measurement_says_so(tmp_path):
    """A sharpness probe that failed and was turned off: the checks reading sharpness are skipped with that
    reason (the measurement, the step, the error), not "the run was too short for the time budget"."""
    from dyncheck.store import RunWriter

    s = np.arange(300)
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": (s, 2.3 * np.exp(-s / 60) + 0.05)})
        w.set_meta(status="finished", measurement_errors=[
            {"measurement": "sharpness", "error": "RuntimeError", "step": 12,
             "message": "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not "
                        "implemented"}])
    res = evaluate(tmp_path / "run.db", "default")
    skipped = {x.check: x.reason for x in res.skipped}
    for cid in ("edge-of-stability", "progressive-sharpening"):
        assert skipped[cid].startswith("sharpness failed at step 12 and was turned off"), skipped[cid]
        assert "RuntimeError: derivative for aten::_scaled_dot_product_flash" in skipped[cid]
    # a failure of one layer's activations leaves the others measured: no such reason
    assert "failed" not in skipped.get("dead-units", "")


@pytest.mark.parametrize("framework, says", [
    (None, "log 'val_loss', or pass DynamicsMonitor(val_loss_key=...)"),
    ("plain loop", "call mon.log_val(loss)"),
    ("transformers.Trainer", "give the Trainer an eval_dataset"),
])
def test_missing_validation_loss_reason_names_the_adapters_way(tmp_path, framework, says):
    from dyncheck.store import RunWriter

    s = np.arange(200)
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": (s, 2.3 * np.exp(-s / 60) + 0.05)})
        w.set_meta(status="finished", trainer={"framework": framework} if framework else {"max_steps": 200})
    reasons = {x.check: x.reason for x in evaluate(tmp_path / "run.db", "default").skipped}
    assert says in reasons["train-val-divergence"]
    if framework:
        assert "val_loss_key" not in reasons["train-val-divergence"]
