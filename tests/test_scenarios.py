"""A few labelled scenarios end to end: real Trainer, monitor, default pack (benchmarks/confusion.py runs them all)."""

import pytest

from dyncheck import evaluate
from dyncheck.scenarios import SCENARIOS, run_scenario

QUICK = ["healthy-moons-adamw", "healthy-mlp-sgd-small-batch", "nan-input", "loss-spike-bad-batch", "unused-layer",
         "update-too-large", "lr-too-small-no-progress"]


def test_suite_covers_every_default_check_and_enough_healthy_families():
    from dyncheck.checks.rules import load_rules

    covered = set().union(*(s.expected for s in SCENARIOS.values()))
    # every check of the pack has faults that expect it; labels may name failure classes the pack cannot see yet
    # (over-regularization): the corpus benchmark counts those runs as missed
    assert {c.id for c in load_rules("default")} <= covered
    healthy = [s for s in SCENARIOS.values() if not s.expected]
    assert len(healthy) >= 6 and len({s.family for s in healthy}) >= 4


@pytest.mark.parametrize("name", QUICK)
def test_scenario_diagnosis(name, tmp_path):
    sc = SCENARIOS[name]
    result = evaluate(run_scenario(name, tmp_path, monitor_kwargs={"rules": None}), "default")
    alarms = {f.check for f in result.findings if f.severity != "info"}
    if sc.expected:
        assert sc.expected <= alarms | {f.check for f in result.findings}, result.findings
        assert alarms <= sc.expected | sc.allowed, alarms
    else:
        assert alarms <= sc.allowed, [f.message for f in result.findings]
