"""The pytest plugin (entry point ``pytest11``): a ``dyncheck`` fixture that gives a test a monitor for its Trainer
and, after training, ``assert_healthy()`` and ``assert_no_regression()`` against a baseline stored beside the test.

Baselines follow the pytest-regressions convention: ``<test dir>/<test module>/<test name>.dyncheck.yaml``
(parametrized ids made file-safe). The first run writes the baseline and fails with "baseline created";
``--dyncheck-update-baselines`` rewrites them (and fails, so a regeneration is never silent).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["DyncheckFixture"]

_HELP_UPDATE = "rewrite the dyncheck baselines of the tests that run (they fail once, saying so)"
_HELP_REPORTS = "copy the HTML reports of tests whose dyncheck assertions fail into this directory"


@dataclass(frozen=True)
class _Options:
    update: bool
    report_dir: Path | None
    rules: list[str]
    fail_on: str


_OPTIONS = pytest.StashKey[_Options]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dyncheck", "training dynamics checks (dyncheck)")
    group.addoption("--dyncheck-update-baselines", action="store_true", default=False, help=_HELP_UPDATE)
    group.addoption("--dyncheck-report-dir", metavar="DIR", default=None, help=_HELP_REPORTS)
    parser.addini("dyncheck_rules", "rule files for the dyncheck fixture, layered in order (default: default)",
                  type="linelist", default=["default"])
    parser.addini("dyncheck_fail_on", "default severity at which assert_healthy fails: error or warning",
                  default="error")
    parser.addini("dyncheck_report_dir", _HELP_REPORTS, default="")


def pytest_configure(config: pytest.Config) -> None:
    report_dir = config.getoption("--dyncheck-report-dir") or config.getini("dyncheck_report_dir") or None
    fail_on = config.getini("dyncheck_fail_on")
    if fail_on not in ("error", "warning"):
        raise pytest.UsageError(f"ini option dyncheck_fail_on = {fail_on!r}: expected 'error' or 'warning'")
    config.stash[_OPTIONS] = _Options(
        update=bool(config.getoption("--dyncheck-update-baselines")),
        report_dir=Path(report_dir).resolve() if report_dir else None,
        rules=list(config.getini("dyncheck_rules")) or ["default"],
        fail_on=fail_on,
    )


def _file_safe(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", name).strip("_") or "test"


class DyncheckFixture:
    """What the ``dyncheck`` fixture gives a test: ``monitor(**options)`` for the Trainer, then the assertions."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self._request = request
        self._opts: _Options = request.config.stash[_OPTIONS]
        self.run_dir = tmp_path / "dyncheck"
        self._monitor: Any = None
        self._evaluated: Any = None
        path = Path(str(request.node.path))
        self.baseline_path = path.parent / path.stem / f"{_file_safe(request.node.name)}.dyncheck.yaml"

    def monitor(self, **options: Any) -> Any:
        """A :class:`~dyncheck.DynamicsMonitor` writing to this test's run directory (rules from the ini option
        ``dyncheck_rules`` unless given). Pass ``lightning=True`` for the ``lightning.pytorch`` flavour."""
        if options.pop("lightning", False):
            from .lightning import DynamicsMonitor
        else:
            from ._callback import DynamicsMonitor
        options.setdefault("rules", self._opts.rules)
        self._monitor = DynamicsMonitor(dirpath=self.run_dir, **options)
        return self._monitor

    # -- helpers -----------------------------------------------------------------------------------------------
    def _store(self) -> Path:
        __tracebackhide__ = True
        if not (self.run_dir / "run.db").exists():
            pytest.fail(f"dyncheck: no run recorded in {self.run_dir}; pass dyncheck.monitor() to the Trainer's "
                        f"callbacks and train before asserting", pytrace=False)
        return self.run_dir

    def _result(self) -> Any:
        """The run's CheckResult: the monitor's final one, else evaluated once here."""
        if getattr(self._monitor, "result", None) is not None:
            return self._monitor.result
        if self._evaluated is None:
            from .checks import evaluate

            self._evaluated = evaluate(self._store(), self._opts.rules)
        return self._evaluated

    def _report(self) -> str:
        """Where the HTML report is (copied to --dyncheck-report-dir when given)."""
        report = self.run_dir / "report.html"
        if not report.exists():
            from .report import write_report

            try:
                report = write_report(self.run_dir, rules=self._opts.rules)
            except Exception as exc:  # a report that cannot be written must not hide the real failure
                return f"(no report: {exc})"
        if self._opts.report_dir is not None:
            self._opts.report_dir.mkdir(parents=True, exist_ok=True)
            dest = self._opts.report_dir / f"{_file_safe(self._request.node.nodeid)}.html"
            shutil.copyfile(report, dest)
            return str(dest)
        return str(report)

    # -- assertions --------------------------------------------------------------------------------------------
    def assert_healthy(self, fail_on: str | None = None) -> Any:
        """Fail when a finding at or above ``fail_on`` (``error`` default, or ``warning``) fired; the message lists
        the findings with their hints and the report's path. Returns the CheckResult."""
        __tracebackhide__ = True
        fail_on = fail_on or self._opts.fail_on
        if fail_on not in ("error", "warning"):
            raise ValueError(f"assert_healthy(fail_on={fail_on!r}): expected 'error' or 'warning'")
        self._store()
        result = self._result()
        bad = result.at_or_above(fail_on)
        if bad:
            from .checks.output import explained_line, steps_text

            rank = {"info": 0, "warning": 1, "error": 2}
            diags = [d for d in result.diagnoses if rank[d.severity] >= rank[fail_on]]
            lines = [f"dyncheck: the run is unhealthy ({len(diags)} diagnos{'i' if len(diags) == 1 else 'e'}s at or "
                     f"above {fail_on}, from {len(bad)} finding{'' if len(bad) == 1 else 's'}):"]
            for d in diags:
                f = d.primary
                lines.append(f"  {d.severity.upper():7} {d.check} ({f.metric}, {steps_text(f)}): {f.message}")
                if d.explained:
                    lines.append(f"          explains: {explained_line(d.explained)}")
                if f.hint:
                    lines.append(f"          hint: {f.hint}")
            lines.append(f"  report: {self._report()}")
            pytest.fail("\n".join(lines), pytrace=False)
        return result

    def assert_no_regression(self, baseline: str | Path | None = None) -> Any:
        """Compare the run with the test's baseline (or ``baseline``): fail with a table of quantity, baseline,
        obtained and tolerance when something regressed. Creates the baseline on the first run (and fails, saying
        so); ``--dyncheck-update-baselines`` rewrites it. Returns the Comparison."""
        __tracebackhide__ = True
        from .baseline import compare, format_comparison, load_baseline, make_baseline
        from .errors import DyncheckError

        store = self._store()
        path = Path(baseline) if baseline is not None else self.baseline_path
        if self._opts.update or not path.exists():
            existed = path.exists()
            base = make_baseline([store], rules=self._opts.rules, results=[self._result()])
            base.info["runs"] = [f"pytest {self._request.node.nodeid}"]  # not the tmp path: stable in diffs
            if existed:  # keep the tolerances someone tuned by hand
                try:
                    old = load_baseline(path)
                except DyncheckError:  # a malformed file is being replaced anyway
                    old = None
                for name, q in (old.quantities.items() if old else ()):
                    if name in base.quantities:
                        base.quantities[name].kind, base.quantities[name].tolerance = q.kind, q.tolerance
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(base.to_yaml(), encoding="utf-8")
            what = "regenerated" if existed else "created"
            pytest.fail(f"dyncheck: baseline {what}: {path}\n  commit it; later runs are compared with it "
                        f"(--dyncheck-update-baselines rewrites it)", pytrace=False)

        try:
            base = load_baseline(path)
        except DyncheckError as exc:
            pytest.fail(f"dyncheck: {exc}", pytrace=False)
        cmp = compare(store, base, rules=self._opts.rules, result=self._result())
        if cmp.regressions:
            pytest.fail(f"{format_comparison(cmp, title=f'against {path}')}\n  report: {self._report()}",
                        pytrace=False)
        return cmp


@pytest.fixture
def dyncheck(request: pytest.FixtureRequest, tmp_path: Path) -> DyncheckFixture:
    """Training-dynamics checks for this test: ``trainer = Trainer(callbacks=[dyncheck.monitor()])``, train, then
    ``dyncheck.assert_healthy()`` and ``dyncheck.assert_no_regression()``."""
    return DyncheckFixture(request, tmp_path)
