"""`dyncheck check` and `dyncheck rules`: exit codes 0/1/2, output formats, error messages."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from dyncheck.checks.rules import load_rules

from dyncheck.cli import main
from dyncheck.store import RunWriter

N = 400


def make_run(path, *, loss=None, dead=None):
    s = np.arange(N)
    healthy = 2.3 * np.exp(-s / 60) + 0.05
    with RunWriter(path / "run.db") as w:
        w.write({"loss/train": (s, healthy if loss is None else loss)})
        if dead is not None:
            w.write({"act/dead/fc1": (s[::10], dead)})
    return path


@pytest.fixture
def healthy_run(tmp_path):
    return make_run(tmp_path / "healthy")


@pytest.fixture
def warn_run(tmp_path):  # dead units: a warning only
    return make_run(tmp_path / "warn", dead=np.full(N // 10, 0.97))


@pytest.fixture
def fail_run(tmp_path):
    loss = 2.3 * np.exp(-np.arange(N) / 60) + 0.05
    loss[200:] = np.nan
    return make_run(tmp_path / "fail", loss=loss)


def test_exit_codes_follow_fail_on(healthy_run, warn_run, fail_run, capsys):
    assert main(["check", str(healthy_run)]) == 0
    assert main(["check", str(warn_run)]) == 0  # default --fail-on error
    assert main(["check", str(warn_run), "--fail-on", "warning"]) == 1
    assert main(["check", str(fail_run)]) == 1
    assert main(["check", str(fail_run), "--fail-on", "never"]) == 0
    out = capsys.readouterr().out
    assert "FAIL: " in out and "ERROR non-finite" in out and "hint: " in out


def test_json_shape(fail_run, capsys):
    assert main(["check", str(fail_run), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "fail"
    f = next(f for f in doc["findings"] if f["check"] == "non-finite")
    assert set(f) == {"check", "severity", "metric", "first_step", "last_step", "value", "message", "hint"}
    assert (f["severity"], f["metric"], f["first_step"], f["last_step"], f["value"]) == \
        ("error", "loss/train", 200, N - 1, "nan")
    assert all(set(s) == {"check", "reason"} for s in doc["skipped"]) and doc["skipped"]


def test_junit_one_case_per_check(warn_run, tmp_path):
    out = tmp_path / "junit.xml"
    assert main(["check", str(warn_run), "--format", "junit", "-o", str(out), "--fail-on", "warning"]) == 1
    suite = ET.parse(out).getroot()
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    n = len(load_rules("default")) + 1  # one case per check, and the diagnoses first
    assert len(cases) == n and suite.get("tests") == str(n) and suite.get("failures") == "2"
    assert next(suite.iter("testcase")).get("name") == "diagnoses"
    assert cases["diagnoses"].find("failure").get("message").startswith("1 diagnosis: dead-units")
    assert cases["dead-units"].find("failure").get("type") == "warning"
    assert cases["train-val-divergence"].find("skipped") is not None
    assert cases["no-progress"].find("failure") is None


def test_usage_config_and_io_errors_exit_2(healthy_run, tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks:\n  - id: x\n    severity: loud\n")
    assert main(["check", str(healthy_run), "--rules", str(bad)]) == 2
    assert f"{bad}:3:15: check 'x': 'severity': expected one of error, warning, info" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["check", str(healthy_run), "--format", "yaml"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_layered_rules_on_the_command_line(warn_run, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("disable: [dead-units]\n")
    assert main(["check", str(warn_run), "--fail-on", "warning", "--rules", "default", str(mine)]) == 0


def test_rules_files_before_the_run_leave_it_the_run(warn_run, tmp_path, capsys):
    """``--rules`` takes one or more files (and comma lists), repeatable; a run after them is RUN, not a rule file."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("disable: [dead-units]\n")
    for argv in (["check", "--rules", "default", str(mine), str(warn_run)],
                 ["check", "--fail-on", "warning", "--rules", "default", str(mine), str(warn_run)],
                 ["check", "--rules", f"default,{mine}", str(warn_run)],
                 ["check", "--rules", "default", "--rules", str(mine), str(warn_run)],
                 ["check", str(warn_run), "--rules", "default", str(mine)]):
        assert main(argv + ["--fail-on", "warning"]) == 0, argv  # dead-units disabled: nothing fires
    assert main(["check", "--rules", "default", str(warn_run), "--fail-on", "warning"]) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # no run at all: the rule files stay rule files
        main(["check", "--rules", "default", str(mine)])
    assert e.value.code == 2 and "the following arguments are required: RUN" in capsys.readouterr().err
    base = tmp_path / "b.yaml"
    assert main(["baseline", "--rules", "default", str(mine), str(warn_run), "-o", str(base)]) == 0
    assert main(["compare", str(warn_run), "--baseline", str(warn_run / "run.db")]) == 2
    assert "run.db:1:1: this is a SQLite database (a run store?), not a baseline" in capsys.readouterr().err


def test_rules_list_validate_detectors(tmp_path, capsys):
    assert main(["rules", "list"]) == 0
    out = capsys.readouterr().out
    assert "edge-of-stability" in out and "info" in out
    assert main(["rules", "list", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(load_rules("default"))
    assert main(["rules", "validate", "default"]) == 0
    assert f"ok: {len(load_rules('default'))} checks" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks:\n  - id: x\n    summary: s\n    severity: info\n    metrics: lose/train\n"
                   "    detector: threshold\n")
    assert main(["rules", "validate", str(bad)]) == 2
    assert f"{bad}:5:14: check 'x': metric pattern 'lose/train' can never match" in capsys.readouterr().err
    assert main(["rules", "detectors"]) == 0
    assert "spike (each): window=20" in capsys.readouterr().out


def test_exit_3_when_the_run_cannot_be_judged(healthy_run, tmp_path, capsys):
    """A run still running (or killed: it stays 'running') is not judged unless --allow-unfinished; a finding
    still exits 1; every exit code is in --help."""
    with RunWriter(healthy_run / "run.db", mode="a") as w:
        w.set_meta(status="running")
    assert main(["check", str(healthy_run)]) == 3
    cap = capsys.readouterr()
    assert "NOT JUDGED" in cap.out and "run: running at step 399" in cap.out
    assert f"dyncheck check: not judged: {healthy_run}: the run did not finish" in cap.err
    assert main(["check", str(healthy_run), "--allow-unfinished"]) == 0
    assert "-- PASS:" in capsys.readouterr().out
    loss = 2.3 * np.exp(-np.arange(N) / 60) + 0.05
    loss[200:] = np.nan
    failing = make_run(tmp_path / "nan", loss=loss)
    with RunWriter(failing / "run.db", mode="a") as w:
        w.set_meta(status="crashed", exception={"type": "RuntimeError", "message": "nan"})
    assert main(["check", str(failing)]) == 1  # what fired is real, finished or not
    assert "run: crashed at step 399 (RuntimeError: nan)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "3: the run could not be judged" in help_text and "--allow-unfinished" in help_text
