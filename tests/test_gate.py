"""The gate never passes what it could not judge: checks without enough evidence are skipped with the reason (never
passed); a run that did not finish, holds nothing, or on which every check was skipped fails `dyncheck check`,
`compare` and `baseline` with exit code 3 unless --allow-unfinished; its status is in every output format;
non-finite tolerances, duplicate keys and non-finite detector parameters are refused with file, line and key."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from dyncheck import DynamicsMonitor, open_run
from dyncheck.baseline import BaselineRefused, Quantity, _judge, load_baseline, make_baseline
from dyncheck.checks.detectors import DETECTORS
from dyncheck.checks.engine import (SeriesSource, _evaluate_check, _fired, _shortfall, evaluate,
                                    evidence_needed)
from dyncheck.checks.rules import load_rules
from dyncheck.cli import main
from dyncheck.errors import ConfigError
from dyncheck.store import RunWriter
from models import MLP, loaders, trainer

HERE = Path(__file__).resolve().parent


def rules_from(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return load_rules(p)


def one_check(tmp_path, detector, params, *, metrics="loss/train", for_=1, warmup=0, when=None):
    body = {"id": "c", "summary": "s", "severity": "warning", "metrics": metrics, "detector": detector,
            "params": params, "for": for_, "warmup": warmup}
    if when is not None:
        body["when"] = when
    p = tmp_path / "one.yaml"
    p.write_text(json.dumps({"checks": [body]}))  # JSON is YAML
    return load_rules(p)


def outcome(result, cid="c"):
    if any(f.check == cid for f in result.findings):
        return "fired"
    if cid in result.passed:
        return "passed"
    return next(s.reason for s in result.skipped if s.check == cid)


# -- evidence: known answers ---------------------------------------------------------------------------------------
def decaying(n, start=0):
    s = np.arange(start, start + n)
    return s, 2.3 * np.exp(-s / 60) + 0.05


def test_a_30_step_run_skips_what_needs_more_and_says_how_much():
    s, loss = decaying(30)
    one = np.array([0])
    series = {"loss/train": (s, loss), "grad_norm/total": (s, np.ones(30)), "lr/SGD/pg0": (s, np.full(30, 0.1))}
    for p in ("a.weight", "b.weight", "c.weight"):  # per-layer statistics: one point, at step 0
        series[f"grad_norm/{p}"] = (one, np.array([1.0]))
        series[f"update_ratio/{p}"] = (one, np.array([1e-3]))
    series["act/dead/fc"] = (one, np.array([0.0]))
    res = evaluate(series, "default")
    skipped = {x.check: x.reason for x in res.skipped}
    assert skipped["premature-plateau"].startswith("30 points of loss/train, needs 50 (min_points: 50")
    # loss-divergence can fire from its 20th point on and must then hold 10 steps: 11 steps are left, judged;
    # in a 25-step run 6 are left
    assert "loss-divergence" in res.passed
    s25, loss25 = decaying(25)
    short = {x.check: x.reason for x in evaluate({"loss/train": (s25, loss25)}, "default").skipped}
    assert short["loss-divergence"] == ("loss/train can hold for at most 6 steps (step 19 on, 6 points), "
                                        "needs 10 (for: 10)")
    assert skipped["vanishing-gradients"].startswith("no point of grad_norm/*weight* (3 series), at steps they "
                                                     "share after the warm-up (from step 3): 1 point, at step 0")
    assert skipped["dead-units"].startswith("no point of act/dead/fc after the warm-up (from step 3)")
    assert skipped["update-too-small"].startswith("0 points of update_ratio/*weight* (3 series) after the "
                                                  "warm-up (from step 3), needs 3")
    for cid in ("premature-plateau", "vanishing-gradients", "dead-units", "update-too-small"):
        assert cid not in res.passed
    # what 30 points do judge is still judged
    assert {"non-finite", "loss-spike", "no-progress", "exploding-gradients"} <= set(res.passed)
    assert res.findings == [] and res.verdict() == "pass" and res.not_judged() is None


@pytest.mark.parametrize("detector, params, kw, need, series", [
    # at `need` points the detector fires on these series; one point fewer it cannot, and the check is skipped
    ("plateau", {"min_points": 50}, {},
     50, lambda n: np.r_[np.linspace(2.0, 1.0, 8), np.full(n - 8, 1.0)]),
    ("no_progress", {"min_points": 20}, {}, 20, lambda n: np.ones(n)),
    ("spike", {"window": 10, "min_history": 6, "factor": 3.0}, {},
     8, lambda n: np.r_[np.ones(n - 2), 10.0, 1.0]),
    ("trend", {"window": 5, "direction": "rising", "z": 0, "min_change": 0.1}, {},
     10, lambda n: np.r_[np.ones(n - 5), np.full(5, 100.0)]),
    ("divergence", {"min_points": 12, "window": 2}, {},
     12, lambda n: np.r_[np.linspace(2, 0.1, n - 2), 5.0, 5.0]),
    ("step_change", {"factor": 2.0}, {}, 2, lambda n: np.r_[np.ones(n - 1), 3.0]),
    ("threshold", {"above": 0.5}, {"for_": 10}, 10, lambda n: np.ones(n)),
    ("collapse", {"below": 0.01, "early": 0.9}, {}, 3, lambda n: np.r_[1.0, np.full(n - 1, 1e-4)]),
])
def test_evidence_is_exactly_what_the_detector_needs(tmp_path, detector, params, kw, need, series):
    rules = one_check(tmp_path, detector, params, **kw)
    fired = evaluate({"loss/train": (np.arange(need), series(need))}, rules)
    assert outcome(fired) == "fired", outcome(fired)
    short = evaluate({"loss/train": (np.arange(need - 1), series(need - 1)[: need - 1])}, rules)
    why = outcome(short)
    assert why not in ("fired", "passed") and f"needs {need}" in why, why
    if not kw:  # (with `for:` the need is the stretch's length, not the detector's)
        assert evidence_needed(detector, rules["c"].params).points == need


def test_a_median_passes_on_three_values_and_fires_on_any(tmp_path):
    """scope: median asks for 3 values before it passes a series (a "median" of one or two values is no
    verdict on the run); a median beyond the bound is a finding on any number of values (never dropped)."""
    rules = one_check(tmp_path, "threshold", {"above": 0.5, "scope": "median"})
    assert outcome(evaluate({"loss/train": (np.arange(2), np.ones(2))}, rules)) == "fired"
    assert outcome(evaluate({"loss/train": (np.arange(2), np.zeros(2))}, rules)) == \
        "2 points of loss/train, needs 3 (scope: median takes at least 3)"
    assert outcome(evaluate({"loss/train": (np.arange(3), np.zeros(3))}, rules)) == "passed"
    nan = np.array([0.0, np.nan, 0.0, np.nan])  # finite values count
    assert outcome(evaluate({"loss/train": (np.arange(4), nan)}, rules)) == \
        "2 finite points of loss/train, needs 3 (scope: median takes at least 3)"


def test_warmup_longer_than_the_series_skips(tmp_path):
    rules = one_check(tmp_path, "threshold", {"above": 5}, metrics="logged/x", warmup=200)
    res = evaluate({"loss/train": (np.arange(300), np.ones(300)), "logged/x": (np.arange(0, 150, 10), np.ones(15))},
                   rules)
    assert outcome(res) == "no point of logged/x after the warm-up (from step 200): 15 points, the last at step 140"
    res = evaluate({"loss/train": (np.arange(300), np.ones(300)), "logged/x": (np.arange(0, 300, 10), np.ones(30))},
                   rules)
    assert outcome(res) == "passed"


def test_a_when_condition_without_evidence_is_no_verdict():
    """premature-plateau: the plateau detector flags a stalled loss, but whether the optimizer's steps shrank
    (its `when`) needs update ratios: none recorded, or too few for the trend, is not a pass."""
    s = np.arange(400)
    loss = np.where(s < 60, 2.3 - 1.2 * s / 60, 1.1)
    series = {"loss/train": (s, loss)}
    why = outcome(evaluate(series, "default"), "premature-plateau")
    assert why == ("its detector flagged loss/train at step 40, but a 'when' condition could not be judged: no "
                   "recorded metric matches update_ratio/*weight*")
    series["update_ratio/a.weight"] = (s[::100], np.array([1e-2, 1e-4, 1e-4, 1e-4]))
    why = outcome(evaluate(series, "default"), "premature-plateau")
    assert "4 points of update_ratio/a.weight, needs 6" in why
    # enough points, steps that did not shrink: judged, and it passes
    series["update_ratio/a.weight"] = (s[::20], np.full(20, 1e-2))
    assert outcome(evaluate(series, "default"), "premature-plateau") == "passed"
    # steps that shrank 100x around the stall: it fires
    series["update_ratio/a.weight"] = (s[::20], np.r_[1e-2, 1e-2, 1e-2, np.full(17, 1e-4)])
    assert outcome(evaluate(series, "default"), "premature-plateau") == "fired"


# -- soundness: a check skipped for lack of evidence could not have fired on any values -----------------------------
_EACH = {
    "plateau": {"min_points": 12},
    "no_progress": {"min_points": 8},
    "spike": {"window": 6, "min_history": 4, "factor": 1.5},
    "trend": {"window": 4, "z": 0.0, "direction": "rising"},
    "divergence": {"min_points": 8, "window": 2, "factor": 1.2, "lost": 0.1},
    "growth": {"min_points": 6, "factor": 2.0, "bound": 1.0},
    "step_change": {"factor": 1.5},
    "collapse": {"below": 0.5},
    "threshold": {"above": 0.5},
}


@settings(max_examples=300, deadline=None)
@given(detector=st.sampled_from(sorted(_EACH)),
       values=st.lists(st.one_of(st.floats(1e-3, 1e3), st.just(float("nan"))), min_size=1, max_size=14),
       spacing=st.integers(1, 5), for_=st.sampled_from([1, 3, 8]))
def test_what_is_skipped_for_lack_of_evidence_could_never_fire(detector, values, spacing, for_):
    from dyncheck.checks.rules import Check

    params = {**DETECTORS[detector].defaults(), **_EACH[detector]}
    check = Check("c", "s", "warning", detector, metrics=("loss/train",), params=params, for_steps=for_)
    v = np.array(values)
    s = np.arange(v.size) * spacing
    span = (int(s[0]), int(s[-1]))
    if _shortfall(check, "loss/train", s, v, span) is None:
        return
    mask, _, _ = DETECTORS[detector].fn(s, v, metric="loss/train", **params)
    assert not _fired(check, s, np.asarray(mask, bool), span).any()
    out = _evaluate_check(check, SeriesSource({"loss/train": (s, v)}), span)
    assert not isinstance(out, list)  # skipped, never passed


# -- what cannot be judged at all ----------------------------------------------------------------------------------
def test_no_series_and_every_check_skipped_are_not_judged():
    empty = evaluate({}, "default")
    assert empty.not_judged() == "the run holds no recorded series" and empty.verdict() == "unjudged"
    assert empty.status == "pass"  # what the findings say; the verdict is what the gate says
    only_val = evaluate({"sharpness/n_hvp": (np.arange(3), np.ones(3))}, "default")
    assert only_val.passed == [] and only_val.findings == []
    assert only_val.not_judged().startswith(f"every check was skipped ({len(only_val.checks)} of "
                                            f"{len(only_val.checks)})")
    assert only_val.to_dict()["status"] == "unjudged"


# -- real runs: finished, crashed, interrupted, killed, empty ------------------------------------------------------
class CrashAt(pl.Callback):
    def __init__(self, at, exc):
        self.at, self.exc = at, exc

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise self.exc


def fit(root, *callbacks, epochs=10, **monitor):
    pl.seed_everything(0)
    mon = DynamicsMonitor(dirpath=root / "run", report=False, **monitor)
    trainer(root, [mon, *callbacks], max_epochs=epochs).fit(MLP(lr=0.1, momentum=0.9, log_acc=False),
                                                          *loaders(flat=True))
    return root / "run"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    out = {"finished": fit(root / "finished")}
    with pytest.raises(RuntimeError, match="boom"):
        fit(root / "crashed", CrashAt(60, RuntimeError("boom")))
    out["crashed"] = root / "crashed" / "run"
    old = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning shuts down gracefully after a KeyboardInterrupt, then exits
            fit(root / "interrupted", CrashAt(60, KeyboardInterrupt()))
    finally:
        signal.signal(signal.SIGINT, old)
    out["interrupted"] = root / "interrupted" / "run"
    # killed: the process dies at step 60 without any hook running (SIGKILL, OOM killer, preemption)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(HERE)!r})
        import pytorch_lightning as pl
        from pathlib import Path
        from dyncheck import DynamicsMonitor
        from models import MLP, loaders, trainer

        class Kill(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == 60:
                    os._exit(0)

        root = Path(sys.argv[1])
        pl.seed_everything(0)
        mon = DynamicsMonitor(dirpath=root / "run", report=False, flush_every_n_steps=20)
        trainer(root, [mon, Kill()], max_epochs=10).fit(MLP(lr=0.1, momentum=0.9, log_acc=False),
                                                       *loaders(flat=True))
    """)
    (root / "kill.py").write_text(script)
    subprocess.run([sys.executable, str(root / "kill.py"), str(root / "killed")], check=True, timeout=300,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True)
    out["killed"] = root / "killed" / "run"
    with RunWriter(root / "empty" / "run.db") as w:
        w.set_meta(status="finished")
    out["empty"] = root / "empty"
    return out


def test_real_statuses(runs):
    assert {k: open_run(v).meta["status"] for k, v in runs.items()} == {
        "finished": "finished", "crashed": "crashed", "interrupted": "interrupted", "killed": "running",
        "empty": "finished"}
    # what the last flush (at the validation after step 55) wrote survives the kill; steps 56-59 were lost
    assert open_run(runs["killed"]).series("loss/train").steps.max() == 55


def test_check_finished_run_passes_with_its_status(runs, capsys):
    assert main(["check", str(runs["finished"])]) == 0
    out = capsys.readouterr().out
    assert "-- PASS:" in out and "  run: finished at step 79" in out


@pytest.mark.parametrize("kind, line", [
    ("crashed", "run: crashed at step 59 (RuntimeError: boom)"),
    ("interrupted", "run: interrupted at step 59 (KeyboardInterrupt)"),
    ("killed", "run: running at step 55: still training, or its process was killed"),
])
def test_check_unfinished_run_is_not_judged_exit_3(runs, kind, line, capsys, tmp_path):
    run = str(runs[kind])
    assert main(["check", run]) == 3
    cap = capsys.readouterr()
    assert "-- NOT JUDGED: no findings" in cap.out and line in cap.out and "not judged: the run did not finish" in cap.out
    assert f"dyncheck check: not judged: {run}: the run did not finish" in cap.err
    assert "--allow-unfinished" in cap.err
    assert main(["check", run, "--fail-on", "never"]) == 3  # --fail-on is about findings, not about judging
    capsys.readouterr()
    # JSON: the status and the reason
    assert main(["check", run, "--format", "json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "unjudged" and doc["run_status"] == open_run(run).meta["status"]
    assert doc["not_judged"].startswith("the run did not finish")
    # JUnit: a property, and a failing `run` case first
    junit = tmp_path / "j.xml"
    assert main(["check", run, "--format", "junit", "-o", str(junit)]) == 3
    suite = ET.parse(junit).getroot()
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["run_status"] == doc["run_status"] and props["verdict"] == "unjudged"
    first = next(suite.iter("testcase"))
    assert first.get("name") == "run" and first.find("failure").get("message").startswith("not judged: the run")
    # opting in: judged on what it recorded
    assert main(["check", run, "--allow-unfinished"]) == 0
    out = capsys.readouterr().out
    assert "-- PASS:" in out and line in out and "judged on what it recorded before it stopped" in out
    assert main(["check", run, "--allow-unfinished", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "pass" and doc["not_judged"] is None and doc["run_status"] == props["run_status"]


def test_findings_on_a_crashed_run_take_precedence(tmp_path, capsys):
    class NaNAt(pl.Callback):  # the inputs turn NaN from step 40, then the run crashes at 60
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step >= 40:
                batch[0].fill_(float("nan"))

    with pytest.raises(RuntimeError):
        fit(tmp_path, NaNAt(), CrashAt(60, RuntimeError("loss is nan")))
    assert main(["check", str(tmp_path / "run")]) == 1  # what fired on the recorded part is real
    out = capsys.readouterr().out
    assert "-- FAIL:" in out and "ERROR non-finite" in out and "run: crashed at step 59 (RuntimeError: loss is nan)" in out


def test_empty_store_is_never_passed(runs, tmp_path, capsys):
    assert main(["check", str(runs["empty"])]) == 3
    cap = capsys.readouterr()
    assert "NOT JUDGED" in cap.out and "the run holds no recorded series" in cap.err
    assert main(["check", str(runs["empty"]), "--allow-unfinished"]) == 3  # nothing to judge is not opt-in
    capsys.readouterr()
    base = tmp_path / "b.yaml"
    assert main(["baseline", str(runs["empty"]), "-o", str(base)]) == 3
    assert "no baseline quantity could be measured" in capsys.readouterr().err and not base.exists()
    with pytest.raises(BaselineRefused, match="0 quantities"):
        make_baseline([runs["empty"]])


def test_every_check_skipped_is_not_judged(tmp_path, capsys):
    with RunWriter(tmp_path / "run.db") as w:  # only a metric no check reads
        w.write({"sharpness/n_hvp": (np.arange(5), np.ones(5))})
        w.set_meta(status="finished")
    assert main(["check", str(tmp_path)]) == 3
    assert "every check was skipped" in capsys.readouterr().err


def test_a_short_real_run_at_defaults(tmp_path, capsys):
    """30 steps at the monitor's defaults (per-layer statistics every 50 steps: once): the checks that need more
    are skipped with how much they had, not passed."""
    pl.seed_everything(0)
    mon = DynamicsMonitor(dirpath=tmp_path / "run", report=False)
    trainer(tmp_path, [mon], max_steps=30, max_epochs=-1, log_every_n_steps=50).fit(
        MLP(lr=0.1, momentum=0.9, log_acc=False), *loaders(flat=True))
    assert main(["check", str(tmp_path / "run"), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    skipped = {s["check"]: s["reason"] for s in doc["skipped"]}
    assert skipped["premature-plateau"].startswith("30 points of loss/train, needs 50")
    assert "1 point, at step 0" in skipped["vanishing-gradients"]
    for cid in ("premature-plateau", "vanishing-gradients", "dead-units", "update-too-small"):
        assert cid in skipped and cid not in doc["passed"], cid
    assert doc["run_status"] == "finished" and doc["status"] == "pass"


# -- compare and baseline on unfinished runs -----------------------------------------------------------------------
def test_compare_and_baseline_refuse_unfinished_runs(runs, tmp_path, capsys):
    base = tmp_path / "base.yaml"
    assert main(["baseline", str(runs["crashed"]), "-o", str(base)]) == 3
    err = capsys.readouterr().err
    assert "the run did not finish (crashed at step 59 (RuntimeError: boom))" in err and not base.exists()
    assert err.rstrip().endswith("a baseline must come from a finished run (--allow-unfinished takes it as it is)")
    assert main(["baseline", str(runs["crashed"]), "-o", str(base), "--allow-unfinished"]) == 0
    assert base.exists()
    capsys.readouterr()
    assert main(["baseline", str(runs["finished"]), "-o", str(base)]) == 0
    for kind in ("crashed", "killed", "interrupted"):
        assert main(["compare", str(runs[kind]), "--baseline", str(base)]) == 3, kind
        cap = capsys.readouterr()
        assert "NOT JUDGED: the run did not finish" in cap.out and "dyncheck compare: not judged" in cap.err
    assert main(["compare", str(runs["crashed"]), "--baseline", str(base), "--format", "json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "unjudged" and doc["run_status"] == "crashed"
    j = tmp_path / "c.xml"
    assert main(["compare", str(runs["killed"]), "--baseline", str(base), "--format", "junit", "-o", str(j)]) == 3
    suite = ET.parse(j).getroot()
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["run_status"] == "running"
    assert next(suite.iter("testcase")).get("name") == "run"
    # opted in, the comparison is a verdict again (the partial run trained less: its losses regressed)
    rc = main(["compare", str(runs["crashed"]), "--baseline", str(base), "--allow-unfinished"])
    out = capsys.readouterr().out
    assert rc == 1 and "REGRESSED" in out and "run: crashed at step 59" in out
    assert main(["compare", str(runs["finished"]), "--baseline", str(base)]) == 0
    assert "  run: finished" in capsys.readouterr().out


# -- baseline files: non-finite tolerances, duplicate keys ---------------------------------------------------------
@pytest.fixture
def baseline_pair(tmp_path):
    s = np.arange(300)
    good, worse = tmp_path / "good", tmp_path / "worse"
    for d, floor in ((good, 0.05), (worse, 2e6)):
        with RunWriter(d / "run.db") as w:
            w.write({"loss/train": (s, 2.3 * np.exp(-s / 50) + floor)})
            w.set_meta(status="finished")
    base = tmp_path / "base.yaml"
    assert main(["baseline", str(good), "-o", str(base)]) == 0
    return good, worse, base


@pytest.mark.parametrize("old, new, message", [
    ("    ratio: 1.75", "    ratio: .nan", "quantities.loss/train.final.ratio: expected a ratio >= 1, got .nan"),
    ("    ratio: 1.75", "    ratio: .inf", "quantities.loss/train.final.ratio: expected a ratio >= 1, got .inf"),
    ("    ratio: 1.4", "    abs: .nan", "quantities.loss/train.mean.abs: expected a value >= 0, got .nan"),
    ("    ratio: 1.4", "    abs: -0.5", "quantities.loss/train.mean.abs: expected a value >= 0, got -0.5"),
    ("    ratio: 1.75", "    ratio: 0.9", "quantities.loss/train.final.ratio: expected a ratio >= 1, got 0.9"),
])
def test_bad_tolerances_are_refused_naming_file_and_key(baseline_pair, capsys, old, new, message):
    good, worse, base = baseline_pair
    text = base.read_text()
    assert old in text
    base.write_text(text.replace(old, new, 1))
    # the regression is x4e7: a NaN tolerance must not turn it into "ok"
    assert main(["compare", str(worse), "--baseline", str(base)]) == 2
    err = capsys.readouterr().err
    assert f"{base}: {message}" in err and "Traceback" not in err


def test_nan_value_in_a_baseline_is_refused(baseline_pair):
    _, _, base = baseline_pair
    import re

    base.write_text(re.sub(r"    value: .*", "    value: .nan", base.read_text(), count=1))
    with pytest.raises(ConfigError, match=r"quantities\.loss/train\.final\.value: expected a number \(inf for a run "
                                          r"that diverged\), got \.nan"):
        load_baseline(base)


def test_the_unedited_regression_fails(baseline_pair, capsys):
    good, worse, base = baseline_pair
    assert main(["compare", str(worse), "--baseline", str(base)]) == 1
    assert "REGRESSED: loss/train.final, loss/train.mean" in capsys.readouterr().out


def test_duplicate_keys_in_a_baseline_name_the_line(baseline_pair, capsys):
    good, worse, base = baseline_pair
    lines = base.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("    ratio: 1.75"))
    lines.insert(i + 1, "    ratio: 1.0e9")  # the last one would win, silently
    base.write_text("\n".join(lines) + "\n")
    assert main(["compare", str(worse), "--baseline", str(base)]) == 2
    err = capsys.readouterr().err
    assert (f"{base}:{i + 2}: duplicate key 'quantities.loss/train.final.ratio' (first given at line {i + 1}); "
            f"each key may appear once") in err
    text = base.read_text().replace("    ratio: 1.0e9\n", "")
    base.write_text(text + "quantities: {}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'quantities' \(first given at line \d+\)"):
        load_baseline(base)


def test_a_baseline_without_quantities_is_refused(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("dyncheck_baseline: 1\nquantities: {}\nfindings: []\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: 'quantities' is empty: a baseline with no quantity would pass"):
        load_baseline(p)


def test_judge_refuses_a_non_finite_tolerance_made_in_code():
    with pytest.raises(ConfigError, match="expected a finite tolerance"):
        _judge(Quantity(1.0, "lower", "ratio", float("nan")), 4e7)


# -- rule files: non-finite detector parameters --------------------------------------------------------------------
def test_non_finite_detector_parameters_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        checks:
          - id: loss-spike
            params: {factor: .nan}
          - id: mine
            summary: s
            severity: warning
            metrics: loss/train
            detector: threshold
            params:
              above: .inf
            unless:
              - {metrics: "lr/*", detector: step_change, params: {factor: .nan}}
    """))
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": (np.arange(100), np.ones(100))})
    assert main(["check", str(tmp_path), "--rules", "default", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3:22: check 'loss-spike': 'factor': expected a finite number for detector 'spike', got .nan" in err
    assert f"{bad}:10:14: check 'mine': 'above': expected a finite number for detector 'threshold', got .inf" in err
    assert f"{bad}:12:67: check 'mine': 'factor': expected a finite number for detector 'step_change'" in err
    assert "Traceback" not in err
    assert main(["rules", "validate", "default", str(bad)]) == 2


# -- measurement errors --------------------------------------------------------------------------------------------
def test_measurement_errors_are_a_notice_in_text_and_json(tmp_path, capsys):
    s, loss = decaying(200)
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": (s, loss)})
        w.set_meta(status="finished", measurement_errors=[
            {"measurement": "sharpness", "error": "RuntimeError", "message": "out of memory", "step": 120},
            {"measurement": "activations", "layer": "net.1", "error": "ValueError", "message": "bad shape",
             "step": 40}])
    assert main(["check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "notice: 2 measurements failed during training and were turned off" in out
    assert "sharpness (step 120): RuntimeError: out of memory" in out
    assert "activations of net.1 (step 40): ValueError: bad shape" in out
    assert main(["check", str(tmp_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["measurement_errors"][0] == {"measurement": "sharpness", "error": "RuntimeError",
                                            "message": "out of memory", "step": 120}
    j = tmp_path / "j.xml"
    assert main(["check", str(tmp_path), "--format", "junit", "-o", str(j)]) == 0
    values = [p.get("value") for p in ET.parse(j).getroot().iter("property") if p.get("name") == "measurement_error"]
    assert values == ["sharpness (step 120): RuntimeError: out of memory",
                      "activations of net.1 (step 40): ValueError: bad shape"]


def test_a_store_without_status_says_so_and_is_judged(tmp_path, capsys):
    s, loss = decaying(200)
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": (s, loss)})
    assert main(["check", str(tmp_path)]) == 0
    assert "run: status not recorded (the store was not written by DynamicsMonitor), last step 199" in \
        capsys.readouterr().out
    res = evaluate(tmp_path, "default")
    assert res.run_status == "unknown" and not res.unfinished
