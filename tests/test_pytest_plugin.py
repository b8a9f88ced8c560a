"""The pytest plugin, tested with pytester: baseline created on the first run, compared after, regenerated on
request; failure messages (a table, the report path) that point at the test, not at the plugin; reports of failing
tests collected; pytest-xdist."""

import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ci_example"
# imported here, once: pytester's in-process runs unload modules first imported inside them, and re-importing
# C extensions (scikit-learn, torch) in one process can crash it
sys.path.insert(0, str(EXAMPLE))
import model  # noqa: E402,F401
import sklearn.datasets  # noqa: E402,F401
import dyncheck.report  # noqa: E402,F401
import dyncheck.checks  # noqa: E402,F401

TEST_FILE = f"""
import sys
sys.path.insert(0, {str(EXAMPLE)!r})
import pytest
from model import train

@pytest.mark.parametrize("lr", [0.05])
def test_dynamics(dyncheck, tmp_path, lr, request):
    lr = float(request.config.getoption("--lr", default=None) or lr)
    train(dyncheck.monitor(every_n_steps=10), seed=0, root=tmp_path, lr=lr)
    dyncheck.assert_healthy()
    dyncheck.assert_no_regression()
"""

CONFTEST = """
def pytest_addoption(parser):
    parser.addoption("--lr", default=None)
"""


@pytest.fixture
def project(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_train=TEST_FILE)
    return pytester


def baseline_file(pytester):
    return pytester.path / "test_train" / "test_dynamics_0.05.dyncheck.yaml"


def test_first_run_creates_the_baseline_then_compares(project):
    first = project.runpytest("-p", "no:cacheprovider")
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*dyncheck: baseline created: *test_train*test_dynamics_0.05.dyncheck.yaml*"])
    assert baseline_file(project).exists()
    text = baseline_file(project).read_text()
    assert "loss/train.mean:" in text and "pytest test_train.py::test_dynamics[0.05]" in text
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_regression_fails_with_a_table_pointing_at_the_test(project, tmp_path):
    project.runpytest("-p", "no:cacheprovider")  # creates the baseline
    reports = tmp_path / "reports"
    result = project.runpytest("-p", "no:cacheprovider", "--lr", "0.5", "--dyncheck-report-dir", str(reports))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*REGRESSED: *loss/train.mean*",
        "*quantity*baseline*obtained*change*tolerance*status*",
        "*loss/train.mean*REGRESSED*",
        "*report: *",
    ])
    out = result.stdout.str()
    assert "pytest_plugin.py" not in out  # the traceback is the test's, not the plugin's
    assert list(reports.glob("*.html")), "the failing test's report was not collected"


def test_update_baselines_rewrites_and_says_so(project):
    project.runpytest("-p", "no:cacheprovider")
    before = baseline_file(project).read_text().replace("ratio: 1.75", "ratio: 2.5")  # a hand-tuned tolerance
    baseline_file(project).write_text(before)
    result = project.runpytest("-p", "no:cacheprovider", "--lr", "0.1", "--dyncheck-update-baselines")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*dyncheck: baseline regenerated:*"])
    after = baseline_file(project).read_text()
    assert after != before and "ratio: 2.5" in after  # new values, the tolerance kept
    project.runpytest("-p", "no:cacheprovider", "--lr", "0.1").assert_outcomes(passed=1)


def test_assert_healthy_lists_findings_with_hints(pytester):
    pytester.makepyfile(test_nan=f"""
import sys
sys.path.insert(0, {str(EXAMPLE)!r})
from model import train

def test_nan(dyncheck, tmp_path):
    train(dyncheck.monitor(every_n_steps=10), seed=0, root=tmp_path, lr=1e6)
    dyncheck.assert_healthy()
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*dyncheck: the run is unhealthy*", "*ERROR*", "*hint: *", "*report: *report.html*"])


def test_bad_ini_option_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\ndyncheck_fail_on = sometimes\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*dyncheck_fail_on = 'sometimes': expected 'error' or 'warning'*"])


def test_works_under_xdist(project):
    pytest.importorskip("xdist")
    project.runpytest("-p", "no:cacheprovider")  # creates the baseline
    project.makepyfile(test_more=TEST_FILE.replace("test_dynamics", "test_other"))
    project.runpytest("-p", "no:cacheprovider", "test_more.py")  # its baseline too
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=2)


def test_the_committed_example_passes_against_its_baseline(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", str(EXAMPLE / "test_dynamics.py"))
    result.assert_outcomes(passed=1)


CRASHING = f"""
import sys
sys.path.insert(0, {str(EXAMPLE)!r})
import pytest
from dyncheck import DynamicsMonitor
from model import train


class Crashing(DynamicsMonitor):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if trainer.global_step == 100:
            raise RuntimeError("preempted")


def crash(dyncheck, tmp_path):
    with pytest.raises(RuntimeError, match="preempted"):
        train(Crashing(dirpath=dyncheck.run_dir, every_n_steps=10, report=False), seed=0, root=tmp_path)


def test_healthy(dyncheck, tmp_path):
    crash(dyncheck, tmp_path)
    dyncheck.assert_healthy()


def test_healthy_allowed(dyncheck, tmp_path):
    crash(dyncheck, tmp_path)
    dyncheck.assert_healthy(allow_unfinished=True)


def test_regression(dyncheck, tmp_path):
    crash(dyncheck, tmp_path)
    dyncheck.assert_no_regression()
"""


def test_an_unfinished_run_is_not_judged_unless_allowed(pytester):
    pytester.makepyfile(test_crash=CRASHING)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines([
        "*dyncheck: the run could not be judged: the run did not finish: crashed at step 99 (RuntimeError: "
        "preempted)*",
        "*to judge it on what it recorded: allow_unfinished=True, or the ini option dyncheck_allow_unfinished*",
    ])
    result.stdout.fnmatch_lines(["*dyncheck: baseline not created (*test_regression.dyncheck.yaml): *the run did "
                                 "not finish (crashed at step 99 (RuntimeError: preempted))*"])
    assert "test_healthy_allowed FAILED" not in result.stdout.str()
    assert not (pytester.path / "test_crash" / "test_regression.dyncheck.yaml").exists()
    assert "pytest_plugin.py" not in result.stdout.str()
    # the ini option opts the whole suite in
    pytester.makeini("[pytest]\ndyncheck_allow_unfinished = true\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*dyncheck: baseline created: *test_regression.dyncheck.yaml*"])


def test_ini_rules_are_a_list_resolved_from_the_ini_file(pytester):
    """``dyncheck_rules``: whitespace, commas or newlines between files, paths from the ini file's directory (not
    the directory pytest runs from), 'default' the built-in pack."""
    ci = pytester.mkdir("ci")
    (ci / "mine.yaml").write_text("disable: [dead-units]\n")
    (ci / "more rules.yaml").write_text("checks:\n  - id: lr-too-low\n    summary: s\n    severity: info\n"
                                        "    metrics: lr/*\n    detector: threshold\n    params: {below: 1.0e-6}\n")
    (ci / "pytest.ini").write_text("[pytest]\ndyncheck_rules = default, mine.yaml\n    'more rules.yaml'\n")
    pytester.makepyfile(test_rules_ini=f"""
def test_rules(dyncheck):
    rules = dyncheck.monitor().rules
    assert rules.sources == ["default", {str(ci / "mine.yaml")!r}, {str(ci / "more rules.yaml")!r}]
    assert "dead-units" in rules.disabled and rules["lr-too-low"].severity == "info"
""")
    result = pytester.runpytest("-p", "no:cacheprovider", "-c", str(ci / "pytest.ini"), str(pytester.path))
    result.assert_outcomes(passed=1)


def test_a_bad_ini_rule_file_is_a_usage_error_naming_file_line_and_column(pytester):
    (pytester.path / "bad.yaml").write_text("checks:\n  - id: x\n    severity: loud\n")
    pytester.makeini("[pytest]\ndyncheck_rules = default,bad.yaml\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option dyncheck_rules (default, bad.yaml):*",
                                 f"*{pytester.path / 'bad.yaml'}:3:15: check 'x': 'severity': expected one of*"])
    pytester.makeini("[pytest]\ndyncheck_rules = 'unbalanced\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option dyncheck_rules = \"'unbalanced\": No closing quotation*"])


TRAJECTORY_TEST = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from tinyfit import fit

def test_curve(dyncheck, tmp_path, request):
    delay = int(request.config.getoption("--delay", default=None) or 0)
    fit(tmp_path, delay=delay, monitor=dyncheck.monitor(every_n_steps=5))
    dyncheck.assert_no_regression()
"""


def test_a_trajectory_baseline_through_the_plugin(pytester):
    """The baseline the plugin writes holds trajectory bands; a slower start that ends at the same loss fails
    naming the series and the step span while every end value is ok; a hand-set band policy survives an update."""
    pytester.makeconftest('def pytest_addoption(parser):\n    parser.addoption("--delay", default=None)\n')
    pytester.makepyfile(test_traj=TRAJECTORY_TEST)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)  # created
    path = pytester.path / "test_traj" / "test_curve.dyncheck.yaml"
    text = path.read_text()
    assert "trajectories:\n  loss/train:\n    log: true\n" in text and "grad_norm/layers.median:" in text
    slow = pytester.runpytest("-p", "no:cacheprovider", "--delay", "8")
    slow.assert_outcomes(failed=1)
    slow.stdout.fnmatch_lines(["*REGRESSED: trajectory loss/train (loss/train above the band from step *",
                               "*loss/train.mean*ok*", "*REGRESSED  loss/train above the band from step*"])
    assert "loss/train.final" in slow.stdout.str() and "loss/train.final     REGRESSED" not in slow.stdout.str()
    path.write_text(text.replace("    fail: above\n", "    fail: never\n", 1))  # the loss band: report only
    pytester.runpytest("-p", "no:cacheprovider", "--delay", "8", "--dyncheck-update-baselines")
    assert "  loss/train:\n    log: true\n    steps: [0, 99]\n    fail: never\n" in path.read_text()
    pytester.runpytest("-p", "no:cacheprovider", "--delay", "8").assert_outcomes(passed=1)
