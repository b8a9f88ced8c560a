"""Checks that read more than one signal: ``when:`` / ``unless:`` conditions on companion series, the detectors
made for them (present, step_change, trend), and their validation in rule files."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from dyncheck.checks.detectors import present, ratio, step_change, trend
from dyncheck.checks.engine import evaluate
from dyncheck.checks.rules import load_rules
from dyncheck.errors import RuleError


def _rules(tmp_path, body: str):
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(body))
    return load_rules([str(p)])


SPIKE = """
    checks:
      - id: jump
        summary: a jump
        severity: warning
        metrics: loss/train
        detector: threshold
        params: {above: 5}
        message: "{metric} at {step}"
"""


def _loss_with_jump(n=400, at=200):
    steps = np.arange(n)
    v = np.ones(n)
    v[at:at + 3] = 10.0
    return steps, v


# -- detectors against known answers ------------------------------------------------------------------------------
def test_step_change_finds_schedule_events():
    steps = np.arange(10)
    lr = np.array([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.1, 0.1, 0.0, 0.1])
    m, _, _ = step_change(steps, lr, factor=2.0)
    assert np.flatnonzero(m).tolist() == [3, 6, 8, 9]
    m, _, _ = step_change(steps, lr, factor=2.0, direction="up")
    assert np.flatnonzero(m).tolist() == [6, 9]  # 0.01 -> 0.1 and the restart from exactly 0
    m, _, _ = step_change(steps, lr, factor=2.0, direction="down")
    assert np.flatnonzero(m).tolist() == [3, 8]
    # a smooth warm-up / cosine never changes by 2x from one step to the next
    smooth = 0.1 * (np.arange(1, 201) / 200)
    assert not step_change(np.arange(180), smooth[20:], factor=2.0)[0].any()


def test_present_is_one_verdict():
    assert present(np.arange(3), np.array([np.nan, 1.0, 2.0]))[0].tolist() == [False, False, True]
    assert not present(np.arange(2), np.array([np.nan, np.nan]))[0].any()
    assert not present(np.zeros(0, np.int64), np.zeros(0))[0].any()


def test_trend_against_brute_force_and_noise():
    rng = np.random.default_rng(0)
    n, w = 600, 50
    steps = np.arange(n)
    falling = np.exp(-steps / 200) * np.exp(0.1 * rng.standard_normal(n))
    flat = np.exp(0.3 * rng.standard_normal(n))  # heavy noise, no trend
    m, change, _ = trend(steps, falling, direction="falling", window=w)
    # brute force: median of the last w log-values minus the median of the w before them
    x = np.log10(falling)
    for i in (2 * w - 1, 300, n - 1):
        ref = np.median(x[i - 2 * w + 1: i - w + 1])
        assert change[i] == pytest.approx(np.median(x[i - w + 1: i + 1]) - ref)
    assert m[2 * w - 1:].mean() > 0.95 and not m[: 2 * w - 1].any()
    # pure noise is neither falling nor rising at z=3 (allow the rare point: 3 sigma, correlated windows)
    for d in ("falling", "rising"):
        assert trend(steps, flat, direction=d, window=w)[0].mean() < 0.02
    # since=start: the change from the first window
    m, change, _ = trend(steps, falling, direction="falling", window=w, since="start")
    assert change[n - 1] == pytest.approx(np.median(x[-w:]) - np.median(x[:w]))
    # too short for two windows: never holds
    assert not trend(steps[:99], falling[:99], window=50)[0].any()


def test_trend_min_change_and_linear_scale():
    steps = np.arange(400)
    v = 1.0 - steps * 1e-5  # falls very slightly but without noise: significant, yet tiny
    assert trend(steps, v, direction="falling", window=50, log=False)[0][-1]
    assert not trend(steps, v, direction="falling", window=50, log=False, min_change=0.01)[0].any()


# -- conditions in the engine -------------------------------------------------------------------------------------
def test_unless_rules_out_at_the_same_step(tmp_path):
    rules = _rules(tmp_path, SPIKE + """
        unless:
          - metrics: lr/*
            detector: step_change
            params: {factor: 2}
            within: 5
    """)
    steps, loss = _loss_with_jump()
    lr_event = (steps, np.where(steps < 198, 0.01, 0.1))  # restart two steps before the jump
    lr_none = (steps, np.full(steps.size, 0.01))
    assert evaluate({"loss/train": (steps, loss), "lr/SGD/pg0": lr_event}, rules).findings == []
    (f,) = evaluate({"loss/train": (steps, loss), "lr/SGD/pg0": lr_none}, rules).findings
    assert f.first_step == 200
    # an event far from the jump does not excuse it
    lr_far = (steps, np.where(steps < 100, 0.01, 0.1))
    assert len(evaluate({"loss/train": (steps, loss), "lr/SGD/pg0": lr_far}, rules).findings) == 1
    # the companion not recorded: the condition does not hold, the check fires
    assert len(evaluate({"loss/train": (steps, loss)}, rules).findings) == 1


def test_within_run_holds_anywhere_in_the_run(tmp_path):
    rules = _rules(tmp_path, SPIKE + """
        unless:
          - {metrics: logged/ok, detector: threshold, params: {above: 0.5}, within: run}
    """)
    steps, loss = _loss_with_jump()
    late = (np.array([0, 100, 390]), np.array([0.0, 0.0, 1.0]))  # holds only at step 390, far after the jump
    assert evaluate({"loss/train": (steps, loss), "logged/ok": late}, rules).findings == []
    never = (np.array([0, 100, 390]), np.array([0.0, 0.0, 0.0]))
    assert len(evaluate({"loss/train": (steps, loss), "logged/ok": never}, rules).findings) == 1
    # the parsed condition keeps "anywhere" as the largest step count a run may have
    from dyncheck.checks.rules import LIMITS

    assert rules.checks["jump"].unless[0].within == LIMITS["steps"]


def test_unless_without_within_takes_the_latest_point(tmp_path):
    rules = _rules(tmp_path, SPIKE + """
        unless:
          - metrics: logged/ok
            detector: threshold
            params: {above: 0.5}
    """)
    steps, loss = _loss_with_jump()
    # recorded every 100 steps: at 200 the latest point (200) says ok; shifted to 150/250 the one at 150 says not
    ok_at_200 = (np.array([0, 100, 200, 300]), np.array([0.0, 0.0, 1.0, 0.0]))
    assert evaluate({"loss/train": (steps, loss), "logged/ok": ok_at_200}, rules).findings == []
    ok_at_250 = (np.array([0, 150, 250]), np.array([0.0, 0.0, 1.0]))
    (f,) = evaluate({"loss/train": (steps, loss), "logged/ok": ok_at_250}, rules).findings
    assert (f.first_step, f.last_step) == (200, 202)


def test_when_requires_every_condition(tmp_path):
    rules = _rules(tmp_path, SPIKE + """
        when:
          - {metrics: "lr/Adam*", detector: present}
          - {metrics: logged/flag, detector: threshold, params: {above: 0}}
    """)
    steps, loss = _loss_with_jump()
    flag = (steps, (steps >= 201).astype(float))
    base = {"loss/train": (steps, loss), "logged/flag": flag}
    assert evaluate(base, rules).findings == []  # no Adam: the whole-run condition fails everywhere
    (f,) = evaluate({**base, "lr/Adam/pg0": (steps, np.full(steps.size, 1e-3))}, rules).findings
    assert (f.first_step, f.last_step) == (201, 202)  # where the flag holds too


def test_absent_holds_only_where_the_metric_was_not_recorded(tmp_path):
    """``absent``: the run has no such metric (or only non-finite values of it) -- a whole-run verdict."""
    rules = _rules(tmp_path, SPIKE + """
        when:
          - {metrics: "lr/Adam*", detector: absent}
    """)
    steps, loss = _loss_with_jump()
    assert {f.check for f in evaluate({"loss/train": (steps, loss)}, rules).findings} == {"jump"}
    adam = {"loss/train": (steps, loss), "lr/Adam/pg0": (steps, np.full(steps.size, 1e-3))}
    assert evaluate(adam, rules).findings == []
    nan = {"loss/train": (steps, loss), "lr/Adam/pg0": (steps, np.full(steps.size, np.nan))}
    assert {f.check for f in evaluate(nan, rules).findings} == {"jump"}


def test_conditions_combine_with_for_and_warmup(tmp_path):
    rules = _rules(tmp_path, SPIKE.replace("        message:", "        for: 3\n        message:") + """
        unless:
          - {metrics: logged/excuse, detector: threshold, params: {above: 0}}
    """)
    steps, loss = _loss_with_jump()
    excuse = (steps, (steps == 201).astype(float))  # breaks the 3-step run in the middle
    assert evaluate({"loss/train": (steps, loss), "logged/excuse": excuse}, rules).findings == []


# -- validation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cond, expected", [
    ("{metrics: lr/*, detector: nope}", "expected one of"),
    ("{metrics: lr/*, detector: spread}", "a condition needs a detector that reads each series on its own"),
    ("{metrics: lr/*, detector: ratio}", "detector 'ratio' reads two series: give metrics as {a: ..., b: ...}"),
    ("{metrics: {a: loss/train, b: loss/val}, detector: trend}", "detector 'trend' reads each series on its own"),
    ("{metrics: {a: loss/train, b: nonsense/x}, detector: ratio}", "metric pattern 'nonsense/x' can never match"),
    ("{metrics: {a: loss/train}, detector: ratio}", "metrics"),
    ("{any: []}", "any"),
    ("{metrics: lr/*, detector: step_change, params: {factr: 2}}", "unknown parameter 'factr' for detector "
                                                                   "'step_change'; it takes: factor, direction"),
    ("{metrics: lr/*, detector: step_change, params: {factor: 0.5}}", "expected a number > 1"),
    ("{metrics: nonsense/x, detector: present}", "metric pattern 'nonsense/x' can never match"),
    ("{detector: present}", "missing required key 'metrics'"),
    ("{metrics: lr/*, detector: present, within: -1}", "'within': expected a number of steps (int >= 0) or run"),
    ("{metrics: lr/*, detector: present, within: always}", "'within': expected a number of steps (int >= 0) or run"),
    ("{metrics: lr/*, detector: present, wihtin: 3}", "unknown key 'wihtin'"),
])
def test_bad_conditions_are_named(tmp_path, cond, expected):
    with pytest.raises(RuleError) as e:
        _rules(tmp_path, SPIKE + f"        unless: [{cond}]\n")
    assert expected in str(e.value) and "rules.yaml:" in str(e.value) and "check 'jump'" in str(e.value)


def test_explains_unknown_and_self(tmp_path):
    with pytest.raises(RuleError, match="explains unknown check 'nope'"):
        _rules(tmp_path, SPIKE + "        explains: [nope]\n")
    with pytest.raises(RuleError, match="a check cannot explain itself"):
        _rules(tmp_path, SPIKE + "        explains: [jump]\n")


def test_override_keeps_conditions_of_the_earlier_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(textwrap.dedent(SPIKE + """
        unless:
          - {metrics: logged/excuse, detector: threshold, params: {above: 0}}
    """))
    over = tmp_path / "over.yaml"
    over.write_text("checks:\n  - id: jump\n    severity: error\n")
    rules = load_rules([str(base), str(over)])
    c = rules["jump"]
    assert c.severity == "error" and len(c.unless) == 1 and c.unless[0].params["above"] == 0
    steps, loss = _loss_with_jump()
    assert evaluate({"loss/train": (steps, loss), "logged/excuse": (steps, np.ones(steps.size))}, rules
                    ).findings == []


def test_all_of_is_a_conjunction(tmp_path):
    rules = _rules(tmp_path, SPIKE + """
        unless:
          - all:
              - {metrics: logged/a, detector: threshold, params: {above: 0}}
              - {metrics: logged/b, detector: threshold, params: {above: 0}}
    """)
    steps, loss = _loss_with_jump()
    on, off = (steps, np.ones(steps.size)), (steps, np.zeros(steps.size))
    assert evaluate({"loss/train": (steps, loss), "logged/a": on, "logged/b": on}, rules).findings == []
    assert len(evaluate({"loss/train": (steps, loss), "logged/a": on, "logged/b": off}, rules).findings) == 1
    with pytest.raises(RuleError, match="unknown parameter 'abve'"):
        _rules(tmp_path, SPIKE + "        unless: [{all: [{metrics: logged/a, detector: threshold, "
                                 "params: {abve: 0}}]}]\n")


def test_any_of_is_a_disjunction(tmp_path):
    rules = _rules(tmp_path, SPIKE + """
        unless:
          - any:
              - {metrics: logged/a, detector: threshold, params: {above: 0}}
              - {metrics: logged/b, detector: threshold, params: {above: 0}}
    """)
    steps, loss = _loss_with_jump()
    on, off = (steps, np.ones(steps.size)), (steps, np.zeros(steps.size))
    base = {"loss/train": (steps, loss)}
    assert evaluate({**base, "logged/a": off, "logged/b": on}, rules).findings == []
    assert evaluate({**base, "logged/a": on}, rules).findings == []  # one side missing: the other decides
    assert len(evaluate({**base, "logged/a": off, "logged/b": off}, rules).findings) == 1
    assert len(evaluate(base, rules).findings) == 1
    c = rules["jump"].unless[0]
    assert [p.metrics for p in c.any] == [("logged/a",), ("logged/b",)]
    assert c.to_dict()["any"][1]["metrics"] == ["logged/b"]


# -- ratio between a per-step and a per-validation series ----------------------------------------------------------
def _brute_ratio_between(sa, va, sb, vb):
    out = []
    for i, s in enumerate(sb):
        prev = sb[i - 1] if i else -np.inf
        sel = [x for t, x in zip(sa, va) if prev < t <= s and np.isfinite(x)]
        out.append(np.median(sel) / vb[i] if sel else np.nan)
    return np.array(out)


def test_ratio_between_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        sa = np.sort(rng.choice(1000, n, replace=False))
        va = rng.lognormal(0, 1, n)
        va[rng.random(n) < 0.1] = np.nan
        sb = np.sort(rng.choice(1000, int(rng.integers(1, 20)), replace=False))
        vb = rng.lognormal(0, 1, sb.size)
        steps, mask, r, _ = ratio((sa, va), (sb, vb), above=1.5, between=True)
        expect = _brute_ratio_between(sa, va, sb, vb)
        assert np.array_equal(steps, sb)
        np.testing.assert_allclose(r, expect, equal_nan=True)
        assert mask.tolist() == (np.nan_to_num(expect, nan=-1) >= 1.5).tolist()


def test_ratio_to_end_keeps_only_a_stretch_that_lasts_to_the_end():
    sb = np.arange(0, 100, 10)
    b = np.ones(10)
    a_late = np.array([1, 1, 2, 1, 1, 1, 1, 2, 2, 2], float)  # the last 3 of 10 points
    _, m, _, _ = ratio((sb, a_late), (sb, b), above=1.5, to_end=0.25)
    assert m.tolist() == [False] * 7 + [True] * 3  # the early blip does not count
    _, m, _, _ = ratio((sb, a_late), (sb, b), above=1.5, to_end=0.5)
    assert not m.any()  # 3 of 10 points is not half
    a_gone = a_late.copy()
    a_gone[-1] = 1.0  # over at 70 and 80 but not at the end
    assert not ratio((sb, a_gone), (sb, b), above=1.5, to_end=0.1)[1].any()


def test_pair_condition(tmp_path):
    rules = _rules(tmp_path, SPIKE + """
        when:
          - {metrics: {a: loss/train, b: loss/val}, detector: ratio, params: {above: 2.0, between: true}}
    """)
    steps, loss = _loss_with_jump()
    val_low = (np.array([100, 203, 300]), np.array([1.0, 1.0, 1.0]))  # at 203: median of 101-203 is 1 -> no
    val_tiny = (np.array([100, 201, 300]), np.array([1.0, 0.4, 1.0]))  # at 201: median(1.., 10, 10)/0.4 > 2
    assert evaluate({"loss/train": (steps, loss), "loss/val": val_low}, rules).findings == []
    (f,) = evaluate({"loss/train": (steps, loss), "loss/val": val_tiny}, rules).findings
    assert (f.first_step, f.last_step) == (201, 202)  # as of the latest validation point at or before each step
    assert evaluate({"loss/train": (steps, loss)}, rules).findings == []  # no validation loss: does not hold
    assert rules["jump"].when[0].to_dict()["metrics"] == {"a": "loss/train", "b": "loss/val"}


def test_over_regularization_on_synthetic_runs():
    """The default pack's over-regularization check: a training loss that does not halve while it stays above the
    validation loss (dropout / label smoothing), or while weight decay shrinks a layer 10x; not when the loss
    falls well, nor for a loss-scale mismatch (train 255x val: a sum reduction)."""
    rules = load_rules("default")
    rng = np.random.default_rng(1)
    steps = np.arange(600)
    vsteps = np.arange(49, 600, 50)
    noise = lambda n: np.exp(0.03 * rng.standard_normal(n))  # noqa: E731
    val = 2.3 - 0.8 * (1 - np.exp(-vsteps / 200))
    # dropout-like: the training loss falls 25% and stays ever further above validation
    train = (2.3 - 0.6 * (1 - np.exp(-steps / 200))) * noise(steps.size)
    run = {"loss/train": (steps, train), "loss/val": (vsteps, val * (1 - 0.25 * vsteps / 600))}
    ids = {f.check for f in evaluate(run, rules).findings}
    assert "over-regularization" in ids
    # the same gap, but the loss falls 5x: a healthy regularized run (BatchNorm in train mode with tiny batches)
    fast = (2.3 * np.exp(-steps / 300) + 0.1) * noise(steps.size)
    ok = {"loss/train": (steps, fast), "loss/val": (vsteps, 0.6 * (2.3 * np.exp(-vsteps / 300) + 0.1))}
    assert "over-regularization" not in {f.check for f in evaluate(ok, rules).findings}
    # no gap (train ~ val): not this check
    same = {"loss/train": (steps, train), "loss/val": (vsteps, 2.3 - 0.6 * (1 - np.exp(-vsteps / 200)))}
    assert "over-regularization" not in {f.check for f in evaluate(same, rules).findings}
    # a training loss 255x the validation loss is a reduction mismatch, not regularization
    scaled = {"loss/train": (steps, 255 * train), "loss/val": (vsteps, val)}
    assert "over-regularization" not in {f.check for f in evaluate(scaled, rules).findings}
    # a softmax classifier (chance log 10) whose training loss on mixed-up inputs falls fast to ~0.9 and ends at
    # 0.45, 5x its validation loss of 0.085 (mixup): it fits, the regularizer does not cripple it. The same curves
    # with a validation loss that ends at 0.4x chance (dropout 0.9): flagged
    facts = {"output/chance_loss": (vsteps, np.full(vsteps.size, np.log(10))),
             "output/softmax_grad": (vsteps, np.ones(vsteps.size))}
    mixed = (0.45 + 0.5 * np.exp(-steps / 300) + 1.4 * np.exp(-steps / 10)) * noise(steps.size)
    mixup = {"loss/train": (steps, mixed), "loss/val": (vsteps, 0.085 + 0.2 * np.exp(-vsteps / 150)), **facts}
    assert "over-regularization" not in {f.check for f in evaluate(mixup, rules).findings}
    crippled = {"loss/train": (steps, 2 * mixed), "loss/val": (vsteps, 0.9 + 0.4 * np.exp(-vsteps / 150)), **facts}
    assert "over-regularization" in {f.check for f in evaluate(crippled, rules).findings}
    # weight decay: the loss stuck at log(10) while the weights shrink 100x
    w = 3.0 * np.exp(-steps / 100)
    stuck = np.log(10) * noise(steps.size)
    wd = {"loss/train": (steps, stuck), "weight_norm/net.0.weight": (steps, w)}
    (f,) = [f for f in evaluate(wd, rules).findings if f.check == "over-regularization"]
    diag = evaluate(wd, rules).diagnoses
    assert diag[0].check == "over-regularization"
    # weights that stay put: no
    flat = {"loss/train": (steps, stuck), "weight_norm/net.0.weight": (steps, np.full(steps.size, 3.0))}
    assert "over-regularization" not in {f.check for f in evaluate(flat, rules).findings}


@pytest.mark.parametrize("until, fires", [("51%", True), (201, True), (199, False), ("49%", False), (None, True)])
def test_until_keeps_only_the_early_part_of_the_run(tmp_path, until, fires):
    """``until``: a check that looks at the first steps (or share) of the run only; the jump at step 200 of a
    400-step run (steps 0-399) is inside the first 51% and 201 steps, not inside the first 199 or 49%."""
    extra = f"        until: {until!r}\n".replace("'", '"') if until is not None else ""
    rules = _rules(tmp_path, SPIKE + extra)
    steps, loss = _loss_with_jump()
    found = evaluate({"loss/train": (steps, loss)}, rules).findings
    assert bool(found) == fires
    if found:
        assert (found[0].first_step, found[0].last_step) == (200, 202 if until in (None, "51%") else 201)
    if until is not None:  # it round-trips as written
        assert rules.checks["jump"].to_dict()["until"] == until


@pytest.mark.parametrize("value, expected", [
    ("-5", "'until': expected a number of steps (int >= 0) or a share of the run such as \"10%\""),
    ('"150%"', "'until': expected a share of the run up to 100%"),
])
def test_bad_until_is_named(tmp_path, value, expected):
    with pytest.raises(RuleError) as e:
        _rules(tmp_path, SPIKE + f"        until: {value}\n")
    assert expected in str(e.value) and "check 'jump'" in str(e.value)


def test_until_too_short_says_where_the_series_was_cut(tmp_path):
    rules = _rules(tmp_path, """
    checks:
      - id: early-jump
        summary: an early jump
        severity: info
        metrics: loss/train
        detector: spike
        params: {min_history: 5}
        until: 10%
    """)
    steps = np.arange(40)
    (skipped,) = [x for x in evaluate({"loss/train": (steps, np.ones(40))}, rules).skipped if x.check == "early-jump"]
    assert skipped.reason.startswith("4 points of loss/train in the first 10% of the run (until, to step 3), needs 7")


def test_update_too_small_needs_a_loss_that_does_not_move():
    """The default pack's update-too-small: tiny update-to-weight ratios are the fault when the loss does not fall
    by 30% either (a learning rate far too small); with a loss that falls 40% (fine-tuning at 2e-5, where
    LayerNorm gains of ~1 move ~1e-5 a step) they are the learning rate's intended scale."""
    rules = load_rules("default")
    rng = np.random.default_rng(2)
    steps = np.arange(500)
    ratio = 4e-6 * np.exp(0.1 * rng.standard_normal(steps.size))
    flat = 2.3 * np.exp(0.02 * rng.standard_normal(steps.size))
    falling = (2.3 - 0.9 * steps / 500) * np.exp(0.02 * rng.standard_normal(steps.size))
    stalled = {"loss/train": (steps, flat), "update_ratio/encoder.ln.weight": (steps, ratio)}
    assert {f.check for f in evaluate(stalled, rules).findings} >= {"update-too-small", "no-progress"}
    assert evaluate(stalled, rules).diagnoses[0].check == "update-too-small"  # the cause, explaining no-progress
    fine_tuning = {"loss/train": (steps, falling), "update_ratio/encoder.ln.weight": (steps, ratio)}
    assert "update-too-small" not in {f.check for f in evaluate(fine_tuning, rules).findings}
    # a 12-step run: the loss condition cannot be judged, so neither is the check (skipped, not fired)
    short = {"loss/train": (steps[:12], flat[:12]), "update_ratio/encoder.ln.weight": (steps[:12], ratio[:12])}
    result = evaluate(short, rules)
    assert "update-too-small" not in {f.check for f in result.findings}
    assert "update-too-small" in {s.check for s in result.skipped}


def _output_series(steps, loss, **out):
    every = steps[::10]
    series = {"loss/train": (steps, loss)}
    for k, v in out.items():
        series[f"output/{k}"] = (every, np.full(every.size, float(v)))
    return series


def test_softmax_before_loss_needs_the_loss_at_the_double_softmax_floor():
    """Probability rows and a loss that settles within [0.97, 1.15] of log(1 + (K-1)/e) is softmax applied twice;
    the same rows with a loss below that floor (impossible for a double softmax: NLL on their log) are not."""
    rules = load_rules("default")
    rng = np.random.default_rng(3)
    steps = np.arange(400)
    floor = math.log1p(9 / math.e)
    noise = np.exp(0.01 * rng.standard_normal(steps.size))
    at_floor = (floor * 1.03 + (2.3 - floor) * np.exp(-steps / 40)) * noise
    below = (floor * 0.85 + (2.3 - floor) * np.exp(-steps / 40)) * noise
    fired = evaluate(_output_series(steps, at_floor, prob_rows=1.0, softmax_floor=floor), rules)
    assert fired.diagnoses[0].check == "softmax-before-loss"
    quiet = evaluate(_output_series(steps, below, prob_rows=1.0, softmax_floor=floor), rules)
    assert "softmax-before-loss" not in {f.check for f in quiet.findings}
    logits = evaluate(_output_series(steps, at_floor, prob_rows=0.0, softmax_floor=floor), rules)
    assert "softmax-before-loss" not in {f.check for f in logits.findings}


def test_clamped_output_fires_on_outputs_the_loss_pushes_below_zero():
    rules = load_rules("default")
    steps = np.arange(400)
    loss = 0.5 + 0.5 * np.exp(-steps / 50)
    fired = evaluate(_output_series(steps, loss, zero_share=0.5, blocked_share=0.4), rules)
    assert fired.diagnoses[0].check == "clamped-output"
    # half the outputs at zero where the target is zero too: no gradient pushes them lower
    quiet = evaluate(_output_series(steps, loss, zero_share=0.5, blocked_share=0.0), rules)
    assert "clamped-output" not in {f.check for f in quiet.findings}


def test_no_progress_of_a_classifier_resumed_below_its_chance_level_is_no_fault():
    """A run whose cross-entropy starts 15% or more below log K (a model trained before this run) and stays there
    has nothing left to gain; the same flat loss at chance, or a flat loss that is not a cross-entropy (squared
    error on a wide output), is no progress."""
    rules = load_rules("default")
    rng = np.random.default_rng(4)
    steps = np.arange(400)
    flat = lambda level: level * np.exp(0.03 * rng.standard_normal(steps.size))  # noqa: E731
    resumed = _output_series(steps, flat(1.95), softmax_grad=1.0, chance_loss=math.log(16))
    assert "no-progress" not in {f.check for f in evaluate(resumed, rules).findings}
    at_chance = _output_series(steps, flat(math.log(16)), softmax_grad=1.0, chance_loss=math.log(16))
    assert "no-progress" in {f.check for f in evaluate(at_chance, rules).findings}
    not_ce = _output_series(steps, flat(1.95), softmax_grad=0.0, chance_loss=math.log(16))
    assert "no-progress" in {f.check for f in evaluate(not_ce, rules).findings}
    # just under the bound (0.86 of chance at the first step): a fresh model whose first batch was easy, still judged
    near = _output_series(steps, flat(0.86 * math.log(16)), softmax_grad=1.0, chance_loss=math.log(16))
    near["loss/train"][1][0] = 0.86 * math.log(16)
    assert "no-progress" in {f.check for f in evaluate(near, rules).findings}


def test_symmetric_units_fire_on_copied_units_and_lead_the_diagnosis():
    rules = load_rules("default")
    rng = np.random.default_rng(5)
    steps = np.arange(450)
    every = steps[::50]
    plateau = np.r_[2.3 - 0.5 * (1 - np.exp(-steps[:100] / 20)), np.full(350, 1.8)] * np.exp(
        0.01 * rng.standard_normal(steps.size))
    copies = {"loss/train": (steps, plateau), "act/unit_spread/net.lstm": (every, np.full(every.size, 3e-7)),
              "act/unit_spread/net.head": (every, np.full(every.size, 0.4))}
    result = evaluate(copies, rules)
    (f,) = [f for f in result.findings if f.check == "symmetric-units"]
    assert f.metric == "act/unit_spread/net.lstm"
    assert result.diagnoses[0].check == "symmetric-units"
    distinct = {**copies, "act/unit_spread/net.lstm": (every, np.full(every.size, 2e-2))}
    assert "symmetric-units" not in {f.check for f in evaluate(distinct, rules).findings}


def test_over_regularization_from_weight_decay_that_takes_too_much_per_step():
    """AdamW's decay of 5 at lr 2e-3 takes 1% of every weight per step: with a loss that fell 5x but not 10x it
    is over-regularization; the usual 1e-4 is not, nor 1e-2 when the loss falls 10x."""
    rules = load_rules("default")
    rng = np.random.default_rng(6)
    steps = np.arange(350)
    every = steps[::50]
    loss = (0.4 + 1.9 * np.exp(-steps / 40)) * np.exp(0.05 * rng.standard_normal(steps.size))
    ratio = np.full(every.size, 6e-3)  # AdamW at that decay: decay and gradient cancel, the net update is smaller
    heavy = {"loss/train": (steps, loss), "decay/AdamW/pg0": (every, np.full(every.size, 1e-2)),
             "update_ratio/net.0.weight": (every, ratio)}
    assert "over-regularization" in {f.check for f in evaluate(heavy, rules).findings}
    # a learning rate so large that every update rewrites 15% of the weights carries its decay along: not this
    huge_lr = {**heavy, "update_ratio/net.0.weight": (every, np.full(every.size, 0.15))}
    assert "over-regularization" not in {f.check for f in evaluate(huge_lr, rules).findings}
    usual = {**heavy, "decay/AdamW/pg0": (every, np.full(every.size, 1e-4))}
    assert "over-regularization" not in {f.check for f in evaluate(usual, rules).findings}
    fits = {**heavy, "loss/train": (steps, 0.1 * loss - 0.035)}
    assert "over-regularization" not in {f.check for f in evaluate(fits, rules).findings}
    # a coupled L2 term under Adam is no share of the weights: not read
    coupled = {"loss/train": (steps, loss), "decay/Adam/pg0": (every, np.full(every.size, 1e-2)),
               "update_ratio/net.0.weight": (every, ratio)}
    assert "over-regularization" not in {f.check for f in evaluate(coupled, rules).findings}


def test_loss_divergence_at_the_very_end_of_a_run():
    """A loss that climbs from 2x to 10x its best over the last dozen steps (an lr that keeps climbing) diverged;
    a loss that spikes 3x for four steps inside the run and falls back did not."""
    rules = load_rules("default")
    rng = np.random.default_rng(7)
    steps = np.arange(200)
    base = (1.2 + 1.2 * np.exp(-steps / 30)) * np.exp(0.05 * rng.standard_normal(steps.size))
    blowup = base.copy()
    blowup[-13:] = np.geomspace(3.0, 25.0, 13)
    assert "loss-divergence" in {f.check for f in evaluate({"loss/train": (steps, blowup)}, rules).findings}
    spike = base.copy()
    spike[100:104] = 4.0
    assert "loss-divergence" not in {f.check for f in evaluate({"loss/train": (steps, spike)}, rules).findings}
    # batch noise at a floor: single points at 3x the level, never ten in a row
    noisy = 0.2 * np.exp(0.6 * rng.standard_normal(1000)) + 0.05
    assert "loss-divergence" not in {f.check for f in evaluate({"loss/train": (np.arange(1000), noisy)},
                                                               rules).findings}


def test_divergence_tail_points_against_brute_force():
    """``tail_points``: the last k raw values all above factor x the best smoothed value before them."""
    from dyncheck.checks.detectors import divergence, rolling_median

    rng = np.random.default_rng(8)
    for trial in range(200):
        n = int(rng.integers(30, 80))
        v = np.exp(rng.normal(0, 0.5, n)) * np.linspace(3, 1, n)
        if trial % 2:
            v[-int(rng.integers(5, 15)):] *= rng.uniform(1, 10)
        mask, _, fields = divergence(np.arange(n), v, window=5, factor=2.0, lost=0.5, at_end=True, min_points=10,
                                     tail_points=6)
        plain, _, _ = divergence(np.arange(n), v, window=5, factor=2.0, lost=0.5, at_end=True, min_points=10)
        sm = rolling_median(v, 5)
        ref = np.min(sm[:n - 6])
        initial = fields["initial"][0]
        want_tail = bool(np.all(v[-6:] > 2 * ref) and np.median(v[-6:]) - ref > 0.5 * (initial - ref))
        assert mask[-1] == (want_tail or plain[-1]), trial
        if want_tail:
            assert mask[-6:].all()


def test_exploding_gradients_while_the_loss_falls_only_a_quarter():
    """A clipped recurrent net: gradient norms that jump to 80x their early level while the loss falls 25% are
    an explosion; the same norms while the loss falls 95% (the edge of stability, a wide net) are not."""
    rules = load_rules("default")
    rng = np.random.default_rng(9)
    steps = np.arange(600)
    g = 2.0 * np.exp(0.5 * rng.standard_normal(steps.size))
    g[300] = 160.0  # one raw value 80x the early level (the smoothed norm stays under 10x)
    quarter = (2.4 - 0.6 * steps / 600) * np.exp(0.03 * rng.standard_normal(steps.size))
    found = {f.check for f in evaluate({"loss/train": (steps, quarter), "grad_norm/total": (steps, g)},
                                       rules).findings}
    assert "exploding-gradients" in found
    fast = 2.4 * np.exp(-steps / 60) + 0.05
    assert "exploding-gradients" not in {f.check for f in evaluate(
        {"loss/train": (steps, fast), "grad_norm/total": (steps, g)}, rules).findings}


def test_vanishing_gradients_under_adam_need_real_learning_to_be_excused():
    """Under Adam a 1e-7 spread between layers is excused when validation gets 30% below its first value; a deep
    sigmoid stack that sits at chance and improves validation 20% in its last steps is not excused."""
    rules = load_rules("default")
    steps = np.arange(650)
    every = steps[::50]
    vsteps = np.arange(40, 650, 41)
    train = np.full(steps.size, 2.3)
    grads = {f"grad_norm/net.{i}.weight": (every, np.full(every.size, 10.0 ** (-7 + i))) for i in range(7)}
    base = {"loss/train": (steps, train), "lr/Adam/pg0": (steps, np.full(steps.size, 1e-3)), **grads}
    late = np.r_[np.full(vsteps.size - 2, 2.3), 2.1, 1.84]  # 20% better, in the last two validations
    assert "vanishing-gradients" in {f.check for f in evaluate({**base, "loss/val": (vsteps, late)},
                                                               rules).findings}
    learns = 2.3 * np.exp(-vsteps / 300)  # 60% better
    assert "vanishing-gradients" not in {f.check for f in evaluate({**base, "loss/val": (vsteps, learns)},
                                                                   rules).findings}


def test_oscillation_after_warm_restarts_is_the_schedule():
    """A cosine schedule with warm restarts every 250 steps: a burst of swings after each restart, ~20 in 1000
    steps -- the schedule, not oscillation, when the restarts show in the learning rate; without it, swings of a
    loss at its floor (0.05 jumping to 1, from a start of 10) are too small to count. The same bursts
    every 60 steps with a constant learning rate, from a loss that started at 0.3, are oscillation."""
    rules = load_rules("default")
    rng = np.random.default_rng(10)
    steps = np.arange(1000)

    def bursts(period, start_level):
        loss = 0.05 * np.exp(0.05 * rng.standard_normal(steps.size))
        loss[:10] = start_level  # where the loss started
        for start in range(period, 1000, period):
            for k in range(5):  # 5 swings to 20x, each decaying over a few steps
                at = start + 8 + 6 * k
                loss[at:at + 3] *= [20.0, 8.0, 3.0]
        return loss

    lr = 0.1 * (1 + np.cos(np.pi * (steps % 250) / 250)) / 2 + 1e-4
    for series in ({"loss/train": (steps, bursts(250, 0.3)), "lr/SGD/pg0": (steps, lr)},
                   {"loss/train": (steps, bursts(250, 10.0))}):
        assert "oscillating-loss" not in {f.check for f in evaluate(series, rules).findings}
    dense = {"loss/train": (steps, bursts(60, 0.3)), "lr/SGD/pg0": (steps, np.full(steps.size, 0.1))}
    assert "oscillating-loss" in {f.check for f in evaluate(dense, rules).findings}


def test_gradients_that_grow_at_the_edge_of_stability_are_no_explosion():
    """Full-batch GD at the edge of stability: the gradient norm rises 10x while the loss falls 40% and the
    sharpness hovers at 2/lr -- not an explosion; the same with the sharpness 10x past 2/lr is one."""
    rules = load_rules("default")
    steps = np.arange(1000)
    loss = 1.0 - 0.4 * steps / 1000
    g = np.where(steps < 100, 0.1, 0.1 * 10 ** np.minimum(1.2, (steps - 100) / 300))
    probes = steps[::100]
    base = {"loss/train": (steps, loss), "grad_norm/total": (steps, g),
            "sharpness/threshold": (probes, np.full(probes.size, 40.0))}
    eos = {**base, "sharpness/top_eig": (probes, np.r_[20.0, 30.0, np.full(probes.size - 2, 41.0)])}
    assert "exploding-gradients" not in {f.check for f in evaluate(eos, rules).findings}
    unstable = {**base, "sharpness/top_eig": (probes, np.r_[20.0, 30.0, np.full(probes.size - 2, 400.0)])}
    assert "exploding-gradients" in {f.check for f in evaluate(unstable, rules).findings}


def test_a_spike_from_a_memorised_training_set_must_exceed_half_the_initial_loss():
    """From a loss near 0 (a training set memorised, batch 8) a jump to 0.7 is 14x the level but a third of the
    initial 2.3: batch noise at that level, no spike; a bad batch that jumps to 12 is one."""
    rules = load_rules("default")
    rng = np.random.default_rng(11)
    steps = np.arange(800)
    loss = np.maximum(2.3 * np.exp(-steps / 40), 0.03) * np.exp(0.3 * rng.standard_normal(steps.size))
    small = loss.copy()
    small[400] = 0.7
    assert "loss-spike" not in {f.check for f in evaluate({"loss/train": (steps, small)}, rules).findings}
    big = loss.copy()
    big[400] = 12.0
    assert "loss-spike" in {f.check for f in evaluate({"loss/train": (steps, big)}, rules).findings}


def test_softmax_before_loss_short_of_the_floor_when_the_gradient_is_a_softmax_s():
    """Probability rows whose loss is still 20% above the double-softmax floor: softmax applied twice when the
    loss's gradient at them sums to 0 along each row (a softmax cross-entropy's), not when it does not (NLLLoss on
    their log)."""
    rules = load_rules("default")
    rng = np.random.default_rng(12)
    steps = np.arange(400)
    floor = math.log1p(9 / math.e)
    loss = (floor * 1.2 + (2.3 - floor * 1.2) * np.exp(-steps / 40)) * np.exp(0.01 * rng.standard_normal(steps.size))
    fired = evaluate(_output_series(steps, loss, prob_rows=1.0, softmax_floor=floor, softmax_grad=1.0), rules)
    assert fired.diagnoses[0].check == "softmax-before-loss"
    nll = evaluate(_output_series(steps, loss, prob_rows=1.0, softmax_floor=floor, softmax_grad=0.0), rules)
    assert "softmax-before-loss" not in {f.check for f in nll.findings}


def test_oscillation_needs_a_swing_every_100_steps():
    """Swings decaying over a few steps: one every 20 steps is oscillation (sorted data), so is one every 70 (two
    data sources concatenated, not shuffled); one every 150 is not."""
    rules = load_rules("default")
    rng = np.random.default_rng(13)
    steps = np.arange(1500)
    for every, fires in ((20, True), (70, True), (150, False)):
        loss = 0.3 * np.exp(0.05 * rng.standard_normal(steps.size))
        for at in range(100, 1500, every):
            loss[at:at + 3] *= [20.0, 8.0, 3.0]
        got = "oscillating-loss" in {f.check for f in evaluate({"loss/train": (steps, loss)}, rules).findings}
        assert got == fires, every


def test_default_pack_on_fresh_suite_shapes():
    """The default pack on the shapes two independent held-out suites showed: a corrupt batch's spike (the
    gradient peak with it is the spike's, not an explosion), a spike at the edge of stability (excused), and a
    classifier whose validation loss never leaves chance while its training loss falls (labels shuffled)."""
    rules = load_rules("default")
    rng = np.random.default_rng(0)
    steps = np.arange(1500)
    noise = lambda: np.exp(rng.normal(0.0, 0.2, steps.size))  # noqa: E731
    loss = 2.3 * np.exp(-steps / 150) + 0.04
    loss = loss * noise()
    loss[800:880] = np.geomspace(800.0, 0.05, 80)
    grad = 0.5 * noise()
    grad[800] = 400.0
    run = {"loss/train": (steps, loss), "grad_norm/total": (steps, grad)}
    res = evaluate(run, rules)
    assert [d.check for d in res.diagnoses if d.severity != "info"] == ["loss-spike"]
    # the same jump where the sharpness sits at 0.8x of 2/lr: gradient descent at the edge of stability
    sharp = {"sharpness/top_eig": (np.array([700, 900]), np.array([16.0, 16.0])),
             "sharpness/threshold": (np.array([700, 900]), np.array([20.0, 20.0]))}
    assert "loss-spike" not in {f.check for f in evaluate({**run, **sharp}, rules).findings}
    # shuffled labels: training loss 2.30 -> 1.90, validation 2.33 -> 2.55 (never below 0.97x log 10)
    vsteps = np.arange(100, 1501, 100)
    shuffled = {"loss/train": (steps, (2.30 - 0.4 * steps / 1500) * np.exp(rng.normal(0, 0.02, steps.size))),
                "loss/val": (vsteps, 2.33 + 0.22 * (vsteps - 100) / 1400),
                "output/softmax_grad": (np.arange(0, 1500, 50), np.ones(30)),
                "output/chance_loss": (np.arange(0, 1500, 50), np.full(30, np.log(10)))}
    assert "train-val-divergence" in {f.check for f in evaluate(shuffled, rules).findings}
    learned = {**shuffled, "loss/val": (vsteps, 1.6 + 0.15 * (vsteps - 100) / 1400)}  # +9%, but well below chance
    assert "train-val-divergence" not in {f.check for f in evaluate(learned, rules).findings}


def test_frozen_parameters_on_synthetic_runs():
    """The default pack's frozen-parameters check: 93% of the parameters frozen on a random encoder while the
    loss falls 12% and the validation loss stays near chance -- flagged, with no-progress explained. Not: the
    same share under a pre-trained backbone whose loss falls 10x, an EMA copy (half the elements) over a flat
    loss, a frozen part whose classifier gets below half its chance level, a backbone unfrozen early."""
    rules = load_rules("default")
    rng = np.random.default_rng(3)
    steps = np.arange(1500)
    lsteps = steps[::50]
    vsteps = np.arange(99, 1500, 100)
    noise = lambda n: np.exp(0.03 * rng.standard_normal(n))  # noqa: E731
    chance = {"output/chance_loss": (lsteps, np.full(lsteps.size, np.log(4))),
              "output/softmax_grad": (lsteps, np.ones(lsteps.size))}
    slow = (1.22 + 0.18 * np.exp(-steps / 200)) * noise(steps.size)

    def run(share, train, val):
        return {"loss/train": (steps, train), "loss/val": (vsteps, val), **chance,
                "model/untrained_share": (lsteps, share if np.ndim(share) else np.full(lsteps.size, share))}

    frozen = run(0.93, slow, 1.2 + 0.1 * np.exp(-vsteps / 300))
    res = evaluate(frozen, rules)
    assert "frozen-parameters" in {f.check for f in res.findings}
    assert res.diagnoses[0].check == "frozen-parameters"
    assert "frozen-parameters" not in {f.check for f in evaluate({**frozen, "model/untrained_share": (
        lsteps, np.zeros(lsteps.size))}, rules).findings}  # everything trains: not this check
    fast = (1.4 * np.exp(-steps / 150) + 0.1) * noise(steps.size)
    assert "frozen-parameters" not in {f.check for f in evaluate(run(0.93, fast, 0.15 + 0 * vsteps), rules).findings}
    assert "frozen-parameters" not in {f.check for f in evaluate(run(0.5, slow, 1.2 + 0 * vsteps), rules).findings}
    assert "frozen-parameters" not in {f.check for f in evaluate(run(0.93, slow, 0.6 + 0 * vsteps), rules).findings}
    unfrozen = np.where(lsteps < 300, 0.93, 0.0)
    assert "frozen-parameters" not in {f.check for f in evaluate(run(unfrozen, slow, 1.2 + 0 * vsteps),
                                                                 rules).findings}


def test_suite_four_conditions_on_synthetic_runs():
    """Today's conditions of the default pack, each on a synthetic run with a known answer: a linear probe (most
    parameters in no optimizer, val far below chance) is no unchanged-parameters fault, an optimizer that leaves
    the weights out is -- and it explains frozen-parameters; L-BFGS that converged in its first steps is no
    update-too-small; a negative validation loss that barely moves is no train-val divergence; an AdamW body
    beside an SGD head is no lr spread."""
    rules = load_rules("default")
    rng = np.random.default_rng(11)
    steps = np.arange(1000)
    lsteps = steps[::50]
    vsteps = np.arange(99, 1000, 100)
    noise = lambda n: np.exp(0.03 * rng.standard_normal(n))  # noqa: E731
    ce = {"output/chance_loss": (lsteps, np.full(lsteps.size, np.log(3))),
          "output/softmax_grad": (lsteps, np.ones(lsteps.size))}
    unchanged = {f"weight_unchanged/enc.{i}.weight": (lsteps, np.ones(lsteps.size)) for i in range(3)}

    def checks(run):
        return {f.check for f in evaluate(run, rules).findings}

    probe = {"loss/train": (steps, (1.1 * np.exp(-steps / 100) + 0.003) * noise(steps.size)),
             "loss/val": (vsteps, 0.003 + 0 * vsteps), "model/untrained_share": (lsteps, np.full(lsteps.size, 0.98)),
             **ce, **unchanged}
    assert "unchanged-parameters" not in checks(probe)
    typo = {**probe, "loss/train": (steps, (1.1 - 0.2 * steps / 1000) * noise(steps.size)),
            "loss/val": (vsteps, 1.05 + 0 * vsteps), "model/untrained_share": (lsteps, np.full(lsteps.size, 0.96))}
    res = evaluate(typo, rules)
    assert {"unchanged-parameters", "frozen-parameters"} <= {f.check for f in res.findings}
    assert [d.check for d in res.diagnoses] == ["unchanged-parameters"]  # one diagnosis, naming the tensors
    assert "frozen-parameters" in {e.check for e in res.diagnoses[0].explained}
    detached = {**probe, "model/untrained_share": (lsteps, np.zeros(lsteps.size))}  # in the optimizer, no gradient
    assert "unchanged-parameters" in checks(detached)

    # L-BFGS: converged within its first steps, then (nearly) no update
    lbfgs_loss = (0.026 + 0.05 * np.exp(-steps / 2.0)) * noise(steps.size)
    tiny = {f"update_ratio/l{i}.weight": (lsteps, np.full(lsteps.size, 1e-9)) for i in range(2)}
    lbfgs = {"loss/train": (steps, lbfgs_loss), "loss/val": (vsteps, 0.27 + 0 * vsteps), **tiny,
             "output/chance_loss": (lsteps, np.full(lsteps.size, np.log(2))),
             "output/softmax_grad": (lsteps, np.ones(lsteps.size))}
    assert "update-too-small" not in checks(lbfgs)
    at_chance = {**lbfgs, "loss/train": (steps, 0.69 * noise(steps.size)), "loss/val": (vsteps, 0.69 + 0 * vsteps)}
    assert "update-too-small" in checks(at_chance)

    # a Poisson NLL below zero: -2.99 at its best, -2.97 after
    pois = {"loss/train": (steps, 0.5 - 3.5 * (1 - np.exp(-steps / 200))),
            "loss/val": (vsteps, np.r_[-2.0, -2.9, -2.99, np.full(vsteps.size - 3, -2.97)])}
    assert "train-val-divergence" not in checks(pois)

    # manual optimization with two optimizers: AdamW at 1e-3 on the body, SGD at 1.0 on the head
    lrs = {"lr/AdamW/pg0": (steps, np.full(steps.size, 1e-3)), "lr/SGD/pg0": (steps, np.ones(steps.size)),
           "loss/train": (steps, 1.6 * np.exp(-steps / 300) + 0.4)}
    assert "layers-not-learning" not in checks(lrs)
    assert "layers-not-learning" in checks({**lrs, "lr/SGD-1/pg0": (steps, np.full(steps.size, 1e-5))})


def test_dead_units_are_no_fault_when_the_live_units_fit_the_data():
    """The default pack's dead-units: 90% of a layer dead for every sample is the fault while the loss stalls (or
    merely falls 20x); a multiclass hinge loss that reaches exactly 0 -- the live units fit the data -- is not."""
    rules = load_rules("default")
    rng = np.random.default_rng(4)
    steps = np.arange(600)
    every = steps[::10]
    dead = {"act/dead/net.1": (every, np.where(every < 50, 0.3, 0.9))}
    noise = np.exp(0.05 * rng.standard_normal(steps.size))
    stalled = 1.5 * noise
    twenty_x = (0.05 + 0.95 * np.exp(-steps / 60)) * 1.0 * noise
    hinge = np.maximum(0.0, 1.0 - steps / 200) * noise  # exactly 0 from step 200 on
    for loss, fires in ((stalled, True), (twenty_x, True), (hinge, False)):
        found = {f.check for f in evaluate({"loss/train": (steps, loss), **dead}, rules).findings}
        assert ("dead-units" in found) is fires, (fires, found)


def test_validation_stalled_not_for_a_classifier_that_validates_far_below_chance():
    """The default pack's validation-stalled: the training loss falls 10x after the first validation while the
    validation loss never improves -- a fault when validation sits at chance (what is trained is not what is
    validated), not when a softmax classifier had converged by its first validation (0.1 against log 3)."""
    rules = load_rules("default")
    steps = np.arange(1000)
    train = 0.005 * np.exp(-steps / 250) + 1e-4
    every = steps[49::50]
    out = {"output/softmax_grad": (every, np.ones(every.size)),
           "output/chance_loss": (every, np.full(every.size, math.log(3)))}
    for val, fires in ((0.10, False), (1.10, True)):
        series = {"loss/train": (steps, train), "loss/val": (every, np.full(every.size, val) + every * 2e-6), **out}
        found = {f.check for f in evaluate(series, rules).findings}
        assert ("validation-stalled" in found) is fires, (val, found)


def test_unchanged_parameters_leave_biases_out():
    """An output bias that a pairwise loss cancels never changes by design; a weight that never changes is the
    fault (detached, unused, in no optimizer)."""
    rules = load_rules("default")
    steps = np.arange(0, 500, 10)
    loss = 2.0 * np.exp(-np.arange(500) / 100) + 0.1
    changed, same = np.zeros(steps.size), np.ones(steps.size)
    base = {"loss/train": (np.arange(500), loss), "weight_unchanged/net.0.weight": (steps, changed)}
    bias_only = {**base, "weight_unchanged/net.4.bias": (steps, same)}
    assert "unchanged-parameters" not in {f.check for f in evaluate(bias_only, rules).findings}
    weight = {**bias_only, "weight_unchanged/net.4.weight": (steps, same)}
    assert "unchanged-parameters" in {f.check for f in evaluate(weight, rules).findings}


def test_ratio_hold_against_brute_force():
    """``between`` + ``hold``: a at b's steps is the median of a's values since b's previous point, or -- none
    there -- a's latest value before it (NaN before a's first point)."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        sa = np.sort(rng.choice(np.arange(200), size=rng.integers(1, 15), replace=False))
        sb = np.sort(rng.choice(np.arange(200), size=rng.integers(1, 25), replace=False))
        va, vb = rng.uniform(1, 3, sa.size), rng.uniform(0.5, 2, sb.size)
        va[rng.random(sa.size) < 0.2] = np.nan
        _, _, r, extra = ratio((sa, va), (sb, vb), above=1.0, between=True, hold=True)
        prev = -1
        for k, s in enumerate(sb):
            sel = va[(sa > prev) & (sa <= s) & np.isfinite(va)]
            before = va[(sa <= s) & np.isfinite(va)]
            want = np.median(sel) if sel.size else (before[-1] if before.size else np.nan)
            np.testing.assert_allclose(extra["a"][k], want, equal_nan=True)
            np.testing.assert_allclose(r[k], want / vb[k], equal_nan=True)
            prev = s
        # without hold the gaps stay NaN
        _, _, r0, _ = ratio((sa, va), (sb, vb), above=1.0, between=True)
        assert np.isnan(r0).sum() >= np.isnan(r).sum()


def test_validation_loss_that_drifts_far_below_chance_is_info_not_overfitting():
    """The default pack: a softmax classifier's validation loss rising 40% while it stays far below chance (its
    minimum a quarter of log K or lower, below half of it to the end) is val-loss-drift (info); the same rise from
    a minimum at a third of chance is train-val-divergence (warning)."""
    rules = load_rules("default")
    steps = np.arange(1000)
    train = 2.3 * np.exp(-steps / 60) + 1e-4
    every = steps[49::33]  # validations at other steps than the per-layer ones
    layer = steps[::50]
    out = {"output/softmax_grad": (layer, np.ones(layer.size)),
           "output/chance_loss": (layer, np.full(layer.size, math.log(10)))}
    for low, warn in ((0.4, False), (0.75, True)):
        val = low * (1 + 0.4 * np.clip((every - 200) / 600, 0, 1))
        found = {f.check: f.severity for f in evaluate({"loss/train": (steps, train), "loss/val": (every, val),
                                                        **out}, rules).findings}
        if warn:
            assert found.get("train-val-divergence") == "warning" and "val-loss-drift" not in found, found
        else:
            assert found.get("val-loss-drift") == "info" and "train-val-divergence" not in found, found


def test_no_progress_not_for_a_model_whose_outputs_already_explain_the_targets():
    """The default pack's no-progress: a flat loss is the fault when the model's outputs barely vary (a fresh or
    stuck model: MSE near the targets' variance, far above the outputs'); a regression resumed at its noise floor
    starts with its loss below the variance of its outputs. A softmax classifier is judged by its chance level,
    not by this."""
    rules = load_rules("default")
    rng = np.random.default_rng(6)
    steps = np.arange(800)
    flat = 0.215 * np.exp(0.05 * rng.standard_normal(steps.size))
    layer = steps[::50]
    for var, extra, fires in ((0.75, {}, False), (0.01, {}, True),
                              (0.75, {"output/softmax_grad": (layer, np.ones(layer.size))}, True)):
        series = {"loss/train": (steps, flat), "output/var": (layer, np.full(layer.size, var)), **extra}
        found = {f.check for f in evaluate(series, rules).findings}
        assert ("no-progress" in found) is fires, (var, extra.keys(), found)


def test_over_regularization_from_a_dropout_that_drops_most_of_its_input():
    """A loss that does not halve while a dropout module has p = 0.9 (a keep probability passed as the drop
    probability) is over-regularization, the root cause of the no-progress it shows; p = 0.3 is no evidence."""
    rules = load_rules("default")
    rng = np.random.default_rng(7)
    steps = np.arange(1000)
    loss = 1.38 * np.exp(0.02 * rng.standard_normal(steps.size))
    layer = steps[::50]
    for p, fires in ((0.9, True), (0.3, False)):
        series = {"loss/train": (steps, loss), "model/max_dropout": (layer, np.full(layer.size, p))}
        result = evaluate(series, rules)
        found = {f.check for f in result.findings}
        assert ("over-regularization" in found) is fires, (p, found)
        if fires:
            assert result.diagnoses[0].check == "over-regularization"
            assert [d.check for d in result.diagnoses] == ["over-regularization"]  # no-progress explained
