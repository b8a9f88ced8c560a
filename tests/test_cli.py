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


# -- many runs ------------------------------------------------------------------------------------------------
def _suites(xml_text):
    root = ET.fromstring(xml_text.encode())
    return root, {s.get("name"): s for s in root.iter("testsuite")}


def test_check_many_runs_one_table_json_and_junit(tmp_path, capsys):
    """A directory of runs (found below it, a real Lightning run among them) and a quoted glob: one row per run,
    the verdict of each, its first diagnosis; JSON per run; one JUnit testsuite per run; exit 1 over all."""
    from tinyfit import fit

    fleet = tmp_path / "fleet"
    fit(fleet / "lightning" / "seed0")
    make_run(fleet / "synthetic" / "healthy")
    make_run(fleet / "synthetic" / "warn", dead=np.full(N // 10, 0.97))
    loss = 2.3 * np.exp(-np.arange(N) / 60) + 0.05
    loss[200:] = np.nan
    make_run(fleet / "synthetic" / "fail", loss=loss)
    (fleet / "notes").mkdir()  # neither a run nor holding one: passed over
    names = [str(fleet / p) for p in ("lightning/seed0", "synthetic/fail", "synthetic/healthy", "synthetic/warn")]

    assert main(["check", str(fleet)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dyncheck check -- FAIL: 4 runs (1 fail, 1 warn, 2 pass): a finding at or above")
    assert out[1].split() == ["run", "status", "verdict", "first", "diagnosis"]
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert list(rows) == names  # natural order
    assert rows[names[0]][1:3] == ["finished", "PASS"]  # the real run records its status
    assert rows[names[1]][1:5] == ["unknown", "FAIL", "non-finite", "loss/train"]
    assert rows[names[3]][2:4] == ["WARN", "dead-units"] and rows[names[2]][2:4] == ["PASS", "—"]

    assert main(["check", str(fleet / "synthetic" / "*"), str(fleet / "lightning"), "--format", "json",
                 "--fail-on", "warning"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "fail" and doc["fail_on"] == "warning"
    assert doc["counts"] == {"fail": 1, "warn": 1, "pass": 2, "unjudged": 0, "error": 0}
    by = {r["run"]: r for r in doc["runs"]}
    assert sorted(by) == sorted(names)
    assert by[names[1]]["status"] == "fail" and by[names[1]]["first_diagnosis"]["check"] == "non-finite"
    assert by[names[1]]["first_diagnosis"]["first_step"] == 200
    assert by[names[3]]["findings"][0]["check"] == "dead-units" and by[names[0]]["run_status"] == "finished"

    junit = tmp_path / "junit.xml"
    assert main(["check", str(fleet), "--format", "junit", "-o", str(junit)]) == 1
    root, suites = _suites(junit.read_text())
    assert root.tag == "testsuites" and list(suites) == [f"dyncheck.{n}" for n in names]
    n_cases = len(load_rules("default")) + 1
    assert all(int(s.get("tests")) == n_cases for s in suites.values())
    assert int(root.get("tests")) == 4 * n_cases
    fail = suites[f"dyncheck.{names[1]}"]
    assert next(c for c in fail.iter("testcase") if c.get("name") == "non-finite").find("failure") is not None
    assert int(root.get("failures")) == sum(int(s.get("failures")) for s in suites.values()) == 4


def test_check_many_runs_never_passes_what_it_could_not_judge(tmp_path, capsys):
    """Over many runs: exit 3 when one did not finish, holds no series or is too short for any check (each said on
    stderr and in its row); 2 when one cannot be read; 1 when one fails, whatever else; 0 only when all pass."""
    runs = tmp_path / "runs"
    good = make_run(runs / "good")
    assert main(["check", str(runs)]) == 0  # one run found below a directory: still the table
    assert "PASS: 1 run (1 pass)" in capsys.readouterr().out
    running = make_run(runs / "running")
    with RunWriter(running / "run.db", mode="a") as w:
        w.set_meta(status="running")
    with RunWriter(runs / "empty" / "run.db"):
        pass
    with RunWriter(runs / "short" / "run.db") as w:  # only what no check can judge: every check skipped
        w.write({"sharpness/n_hvp": (np.arange(5), np.ones(5))})
    assert main(["check", str(runs)]) == 3
    cap = capsys.readouterr()
    assert "NOT JUDGED: 4 runs (1 pass, 3 not judged): a run could not be judged" in cap.out
    rows = {line.split()[0]: line for line in cap.out.splitlines()[2:]}
    assert "not judged: the run did not finish: running at step 399" in rows[str(runs / "running")]
    assert "not judged: the run holds no recorded series" in rows[str(runs / "empty")]
    assert "not judged: every check was skipped" in rows[str(runs / "short")]
    for name in ("running", "empty", "short"):
        assert f"dyncheck check: not judged: {runs / name}: " in cap.err
        assert main(["check", str(runs / name)]) == 3  # as each is alone
    capsys.readouterr()
    # a 3-point loss is judged as it is alone (the checks that need more are skipped, non-finite judges it)
    with RunWriter(tmp_path / "three" / "run.db") as w:
        w.write({"loss/train": (np.arange(3), np.array([2.0, 1.9, 1.8]))})
    assert main(["check", str(tmp_path / "three"), "--format", "json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert main(["check", str(tmp_path / "three"), str(good), "--format", "json"]) == 0
    many = json.loads(capsys.readouterr().out)["runs"][0]
    assert many["status"] == alone["status"] == "pass" and many["skipped"] == alone["skipped"]
    assert "(--allow-unfinished judges it on what it recorded)" in cap.err
    # --allow-unfinished judges the running one; an empty or too short run is still not passed
    assert main(["check", str(good), str(running), "--allow-unfinished"]) == 0
    assert main(["check", str(runs), "--allow-unfinished", "--fail-on", "never"]) == 3
    capsys.readouterr()
    (runs / "damaged").mkdir()
    (runs / "damaged" / "run.db").write_bytes(b"not a database")
    assert main(["check", str(runs), "--format", "json"]) == 2
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    bad = next(r for r in doc["runs"] if r["run"] == str(runs / "damaged"))
    assert bad["status"] == "error" and "is not an SQLite database" in bad["error"] and doc["status"] == "error"
    assert f"dyncheck check: error: {runs / 'damaged'}: " in cap.err
    loss = 2.3 * np.exp(-np.arange(N) / 60) + 0.05
    loss[100:] = np.inf
    make_run(runs / "fail", loss=loss)
    assert main(["check", str(runs)]) == 1  # a failing run fails the gate, whatever else
    capsys.readouterr()
    assert main(["check", str(runs), "--format", "junit"]) == 1
    root, suites = _suites(capsys.readouterr().out)
    assert suites[f"dyncheck.{runs / 'damaged'}"].find("testcase/error") is not None
    assert suites[f"dyncheck.{runs / 'empty'}"].find("testcase[@name='run']/failure").get("type") == "not-judged"


def test_check_many_runs_bad_input_names_the_argument(tmp_path, capsys):
    """No run found: a directory holding none, a glob matching nothing, a file that is no run: exit 2, the message
    names the argument and what was expected; no traceback."""
    good = make_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    cases = [([str(tmp_path / "empty")], f"argument RUN {tmp_path / 'empty'}: this directory holds no run (no run.db "
                                         f"in it or in any directory below it)"),
             ([str(good), str(tmp_path / "nope-*")], f"argument RUN '{tmp_path / 'nope-*'}': the pattern matches "
                                                     f"nothing"),
             ([str(good), str(tmp_path / "notes.txt")], f"argument RUN {tmp_path / 'notes.txt'}: this file is "
                                                        f"neither a run store (.db) nor a log to import"),
             ([str(good), str(tmp_path / "missing")], f"argument RUN {tmp_path / 'missing'}: no such file or "
                                                      f"directory")]
    for argv, message in cases:
        assert main(["check", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "expected a run directory (holding run.db)" in err and "Traceback" not in err
    assert main(["check", str(good), str(good / "run.db"), str(tmp_path / "g*")]) == 0  # one run, reached 3 ways
    assert "PASS: 1 run (1 pass)" in capsys.readouterr().out
