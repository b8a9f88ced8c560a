"""Root cause first: findings grouped into diagnoses by the ``explains:`` relations of the rule files."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import numpy as np

from dyncheck.checks.engine import CheckResult, Finding, diagnose, evaluate
from dyncheck.checks.output import format_junit, format_text
from dyncheck.checks.rules import Check, load_rules


def _check(cid, explains=(), severity="warning"):
    return Check(id=cid, summary=f"{cid} summary", severity=severity, detector="threshold", metrics=("loss/train",),
                 explains=tuple(explains))


def _f(cid, step=0, severity="warning", metric="m"):
    return Finding(cid, severity, metric, step, step + 10, 1.0, f"{cid} message", f"{cid} hint")


def _checks(*cs):
    return {c.id: c for c in cs}


def test_one_root_explains_its_symptoms_transitively():
    checks = _checks(_check("vanishing", ["no-progress", "update-small"]), _check("update-small", ["unchanged"]),
                     _check("no-progress", severity="error"), _check("unchanged"))
    fs = [_f("no-progress", 390, "error"), _f("update-small", 40), _f("unchanged", 399), _f("vanishing", 40),
          _f("vanishing", 60, metric="m2")]
    (d,) = diagnose(fs, checks)
    assert d.check == "vanishing" and d.severity == "error"  # the worst severity of what it explains
    assert [f.metric for f in d.findings] == ["m", "m2"]
    assert d.explained_checks == ["update-small", "no-progress", "unchanged"]  # by first step


def test_unrelated_causes_stay_apart_and_order_by_severity_then_step():
    checks = _checks(_check("a"), _check("b"), _check("c", severity="error"))
    ds = diagnose([_f("a", 50), _f("b", 10), _f("c", 300, "error")], checks)
    assert [d.check for d in ds] == ["c", "b", "a"]


def test_a_symptom_shared_by_two_causes_goes_to_the_broader_one():
    checks = _checks(_check("narrow", ["s1"]), _check("broad", ["s1", "s2"]), _check("s1"), _check("s2"))
    ds = diagnose([_f("narrow", 5), _f("broad", 5), _f("s1", 6), _f("s2", 7)], checks)
    by = {d.check: d.explained_checks for d in ds}
    assert by == {"broad": ["s1", "s2"], "narrow": []}


def test_cycles_keep_the_check_declared_first_as_root():
    checks = _checks(_check("x", ["y"]), _check("y", ["x"]))
    (d,) = diagnose([_f("y", 1), _f("x", 2)], checks)
    assert d.check == "x" and d.explained_checks == ["y"]


def test_explained_check_that_did_not_fire_changes_nothing():
    checks = _checks(_check("a", ["b"]), _check("b"), _check("c"))
    ds = diagnose([_f("c", 1)], checks)
    assert [d.check for d in ds] == ["c"] and not ds[0].explained
    assert diagnose([], checks) == []


def test_no_finding_is_lost():
    rng = np.random.default_rng(1)
    ids = [f"k{i}" for i in range(8)]
    for _ in range(200):
        checks = _checks(*[_check(c, rng.choice(ids, rng.integers(0, 4), replace=False).tolist()) for c in ids])
        checks = {c: Check(**{**vars(k), "explains": tuple(e for e in k.explains if e != c)})
                  for c, k in checks.items()}
        fs = [_f(str(c), int(rng.integers(0, 100))) for c in rng.choice(ids, rng.integers(1, 8), replace=False)]
        ds = diagnose(fs, checks)
        got = sorted((f.check, f.first_step) for d in ds for f in (*d.findings, *d.explained))
        assert got == sorted((f.check, f.first_step) for f in fs)
        assert len({d.check for d in ds}) == len(ds)


RULES = """
    checks:
      - id: cause
        summary: the cause
        severity: warning
        metrics: grad_norm/total
        detector: threshold
        params: {below: 0.01}
        explains: [symptom]
        message: "gradient {value:.2g} at step {step}"
        hint: fix the cause
      - id: symptom
        summary: the symptom
        severity: error
        metrics: loss/train
        detector: threshold
        params: {above: 1}
        message: "loss {value:.2g}"
"""


def test_outputs_lead_with_diagnoses(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(RULES))
    steps = np.arange(50)
    run = {"grad_norm/total": (steps, np.full(50, 1e-3)), "loss/train": (steps, np.full(50, 2.0))}
    res = evaluate(run, load_rules([str(p)]))
    assert isinstance(res, CheckResult) and [d.check for d in res.diagnoses] == ["cause"]
    d = json.loads(res.to_json())
    assert d["diagnoses"][0]["check"] == "cause" and d["diagnoses"][0]["severity"] == "error"
    assert d["diagnoses"][0]["explains"][0]["check"] == "symptom" and len(d["findings"]) == 2
    text = format_text(res)
    assert "FAIL: 1 diagnosis (1 error; 2 findings)" in text.splitlines()[0]
    assert "explains: symptom (loss/train)" in text and text.index("cause") < text.index("explains")
    suite = ET.fromstring(format_junit(res).split("\n", 1)[1])
    first = suite.find("testcase")
    assert first.get("name") == "diagnoses" and first.find("failure").get("message").startswith("1 diagnosis: cause")


def test_units_that_die_while_the_gradients_vanish_are_explained_by_the_vanishing():
    """A too-small initialisation (the default pack's relations): the layers' gradients are orders of magnitude
    apart from the start, the last ReLU layer dies later and nothing learns; one diagnosis, the vanishing
    gradients, explaining the dead units, the tiny updates and the missing progress."""
    checks = {c.id: c for c in load_rules("default")}
    fs = [_f("vanishing-gradients", 80), _f("dead-units", 150), _f("update-too-small", 80),
          _f("no-progress", 799, "error")]
    (d,) = diagnose(fs, checks)
    assert d.check == "vanishing-gradients" and d.severity == "error"
    assert set(d.explained_checks) == {"dead-units", "update-too-small", "no-progress"}
    # units killed by a large step, with no spread of the gradients, stay their own diagnosis
    (d,) = diagnose([_f("dead-units", 150), _f("no-progress", 799, "error")], checks)
    assert d.check == "dead-units"


def test_learning_rates_far_apart_explain_the_parameters_they_leave_unchanged():
    """Layer-wise learning-rate decay compounded over depth (the default pack's relations): the first groups train
    at 1e-8 of the head's rate, their weights move by less than float32 resolves and read as unchanged; one
    diagnosis, the learning rates, explaining the unchanged parameters, the tiny updates and the missing progress."""
    checks = {c.id: c for c in load_rules("default")}
    fs = [_f("unchanged-parameters", 50), _f("layers-not-learning", 100), _f("update-too-small", 50),
          _f("no-progress", 999, "error")]
    (d,) = diagnose(fs, checks)
    assert d.check == "layers-not-learning"
    assert set(d.explained_checks) == {"unchanged-parameters", "update-too-small", "no-progress"}
    # parameters left unchanged with the rates together (a group left out of the optimizer): their own diagnosis
    (d,) = diagnose([_f("unchanged-parameters", 50), _f("no-progress", 999, "error")], checks)
    assert d.check == "unchanged-parameters"


def test_a_layer_killed_by_its_bias_is_one_diagnosis():
    """A large negative bias kills every unit of a ReLU layer (the default pack's relations): the dead units are
    all zero -- copies of one another -- and get no gradient, so their weights never change; one diagnosis, the
    dead units, not three."""
    checks = {c.id: c for c in load_rules("default")}
    fs = [_f("dead-units", 60), _f("symmetric-units", 60), _f("unchanged-parameters", 999),
          _f("no-progress", 999, "error")]
    (d,) = diagnose(fs, checks)
    assert d.check == "dead-units"
    assert set(d.explained_checks) == {"symmetric-units", "unchanged-parameters", "no-progress"}
