"""The pytest plugin (entry point ``pytest11``): a ``dyncheck`` fixture that gives a test a monitor for its Trainer
and, after training, ``assert_healthy()`` and ``assert_no_regression()`` against a baseline stored beside the test.

Baselines follow the pytest-regressions convention: ``<test dir>/<test module>/<test name>.dyncheck.yaml``
(parametrized ids made file-safe). The first run writes the baseline and fails with "baseline created";
``--dyncheck-update-baselines`` rewrites them (and fails, so a regeneration is never silent).

Neither assertion passes what it could not judge: a run that did not finish (still running or killed,
interrupted, crashed), holds no series, or on which every check was skipped fails with the reason. The ini option
``dyncheck_allow_unfinished = true`` (or ``allow_unfinished=True`` of either assertion) judges an unfinished run on
what it recorded.
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
_HELP_RULES = ("rule files for the dyncheck fixture, layered in order: 'default' (the built-in pack) or paths "
               "relative to the ini file's directory, separated by whitespace, commas or newlines (default: "
               "default)")
_HELP_ALLOW = ("judge runs that did not finish (running or killed, interrupted, crashed) on what they recorded "
               "instead of failing (default: false)")


@dataclass(frozen=True)
class _Options:
    update: bool
    report_dir: Path | None
    rules: list[str]
    fail_on: str
    allow_unfinished: bool = False


_OPTIONS = pytest.StashKey[_Options]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dyncheck", "training dynamics checks (dyncheck)")
    group.addoption("--dyncheck-update-baselines", action="store_true", default=False, help=_HELP_UPDATE)
    group.addoption("--dyncheck-report-dir", metavar="DIR", default=None, help=_HELP_REPORTS)
    parser.addini("dyncheck_rules", _HELP_RULES, type="linelist", default=["default"])
    parser.addini("dyncheck_fail_on", "default severity at which assert_healthy fails: error or warning",
                  default="error")
    parser.addini("dyncheck_report_dir", _HELP_REPORTS, default="")
    parser.addini("dyncheck_allow_unfinished", _HELP_ALLOW, type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    report_dir = config.getoption("--dyncheck-report-dir") or config.getini("dyncheck_report_dir") or None
    fail_on = config.getini("dyncheck_fail_on")
    if fail_on not in ("error", "warning"):
        raise pytest.UsageError(f"ini option dyncheck_fail_on = {fail_on!r}: expected 'error' or 'warning'")
    config.stash[_OPTIONS] = _Options(
        update=bool(config.getoption("--dyncheck-update-baselines")),
        report_dir=Path(report_dir).resolve() if report_dir else None,
        rules=_ini_rules(config),
        fail_on=fail_on,
        allow_unfinished=bool(config.getini("dyncheck_allow_unfinished")),
    )


def _ini_rules(config: pytest.Config) -> list[str]:
    """The ini option ``dyncheck_rules``: 'default' or paths, separated by whitespace, commas or newlines (quote a
    path that holds either), a relative path taken from the ini file's directory (the rootdir without one), the
    way pytest resolves its own path options. Rule files other than the default pack are loaded once here, so that
    a wrong one is a usage error naming the file, line and column, not a failure in every test."""
    import shlex

    raw = config.getini("dyncheck_rules")
    items: list[str] = []
    for value in raw if isinstance(raw, list) else [raw]:
        lex = shlex.shlex(str(value), posix=True)
        lex.whitespace += ","
        lex.whitespace_split = True
        lex.commenters = ""
        try:
            items.extend(lex)
        except ValueError as exc:  # an unbalanced quote
            raise pytest.UsageError(f"ini option dyncheck_rules = {value!r}: {exc}") from None
    if not items:
        return ["default"]
    base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    rules = [r if r == "default" else str(Path(r).expanduser() if Path(r).expanduser().is_absolute()
                                          else base / Path(r).expanduser()) for r in items]
    if rules != ["default"]:
        from .checks.rules import load_rules
        from .errors import DyncheckError

        try:
            load_rules(rules)
        except DyncheckError as exc:
            raise pytest.UsageError(f"ini option dyncheck_rules ({', '.join(items)}):\n{exc}") from None
    return rules


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
        """The run's CheckResult: the monitor's final one (when it saw the run's last status; a live one taken
        while training does not judge the finished run), else evaluated once here."""
        from .store import open_run

        mine = getattr(self._monitor, "result", None)
        if mine is not None:
            with open_run(self._store()) as run:
                status = run.meta.get("status") or "unknown"
            if mine.run_status == status:
                return mine
        if self._evaluated is None:
            from .checks import evaluate

            self._evaluated = evaluate(self._store(), self._opts.rules)
        return self._evaluated

    def _allow(self, allow_unfinished: bool | None) -> bool:
        return self._opts.allow_unfinished if allow_unfinished is None else bool(allow_unfinished)

    def _fail_unjudged(self, what: str, why: str, unfinished: bool) -> None:
        __tracebackhide__ = True
        hint = ("\n  to judge it on what it recorded: allow_unfinished=True, or the ini option "
                "dyncheck_allow_unfinished = true") if unfinished else ""
        pytest.fail(f"dyncheck: {what}: {why}{hint}\n  report: {self._report()}", pytrace=False)

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
    def assert_healthy(self, fail_on: str | None = None, allow_unfinished: bool | None = None) -> Any:
        """Fail when a finding at or above ``fail_on`` (``error`` default, or ``warning``) fired; the message lists
        the findings with their hints and the report's path. Fail too when the run cannot be judged: it did not
        finish (unless ``allow_unfinished``, default: the ini option ``dyncheck_allow_unfinished``), holds no
        series, or every check was skipped. Returns the CheckResult."""
        __tracebackhide__ = True
        fail_on = fail_on or self._opts.fail_on
        if fail_on not in ("error", "warning"):
            raise ValueError(f"assert_healthy(fail_on={fail_on!r}): expected 'error' or 'warning'")
        allow = self._allow(allow_unfinished)
        self._store()
        result = self._result()
        bad = result.at_or_above(fail_on)
        if not bad and result.not_judged(allow):
            self._fail_unjudged("the run could not be judged", result.not_judged(allow),
                                result.unfinished and not allow)
        if bad:
            from .checks.output import explained_line, steps_text

            rank = {"info": 0, "warning": 1, "error": 2}
            diags = [d for d in result.diagnoses if rank[d.severity] >= rank[fail_on]]
            lines = [f"dyncheck: the run is unhealthy ({len(diags)} diagnos{'i' if len(diags) == 1 else 'e'}s at or "
                     f"above {fail_on}, from {len(bad)} finding{'' if len(bad) == 1 else 's'}):"]
            if result.unfinished:
                lines.append(f"  run: {result.run_line()}")
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

    def assert_no_regression(self, baseline: str | Path | None = None, allow_unfinished: bool | None = None) -> Any:
        """Compare the run with the test's baseline (or ``baseline``): fail with a table of quantity, baseline,
        obtained and tolerance, and the trajectories out of their band (series, direction, step span), when
        something regressed. Creates the baseline on the first run (and fails, saying
        so); ``--dyncheck-update-baselines`` rewrites it. A run that did not finish (unless ``allow_unfinished``,
        default: the ini option ``dyncheck_allow_unfinished``) or holds no series is neither compared nor made a
        baseline: the test fails saying why. Returns the Comparison."""
        __tracebackhide__ = True
        from .baseline import BaselineRefused, compare, format_comparison, load_baseline, make_baseline
        from .errors import DyncheckError

        store = self._store()
        allow = self._allow(allow_unfinished)
        path = Path(baseline) if baseline is not None else self.baseline_path
        if self._opts.update or not path.exists():
            existed = path.exists()
            try:
                base = make_baseline([store], rules=self._opts.rules, results=[self._result()],
                                     allow_unfinished=allow)
            except BaselineRefused as exc:
                self._fail_unjudged(f"baseline not {'regenerated' if existed else 'created'} ({path})", str(exc),
                                    exc.unfinished)
            base.info["runs"] = [f"pytest {self._request.node.nodeid}"]  # not the tmp path: stable in diffs
            if existed:  # keep the tolerances someone tuned by hand
                try:
                    old = load_baseline(path)
                except DyncheckError:  # a malformed file is being replaced anyway
                    old = None
                for name, q in (old.quantities.items() if old else ()):
                    if name in base.quantities:
                        base.quantities[name].kind, base.quantities[name].tolerance = q.kind, q.tolerance
                for name, b in (old.trajectories.items() if old else ()):  # and a band's policy, span, widen
                    if name in base.trajectories:
                        new = base.trajectories[name]
                        new.fail, new.span = b.fail, b.span
                        new.widen = b.widen if b.log == new.log else None
            from ._io import write_text

            write_text(path, base.to_yaml(), what="baseline")  # atomic, only over a regular file
            what = "regenerated" if existed else "created"
            pytest.fail(f"dyncheck: baseline {what}: {path}\n  commit it; later runs are compared with it "
                        f"(--dyncheck-update-baselines rewrites it)", pytrace=False)

        try:
            base = load_baseline(path)
        except DyncheckError as exc:
            pytest.fail(f"dyncheck: {exc}", pytrace=False)
        cmp = compare(store, base, rules=self._opts.rules, result=self._result())
        why = cmp.not_judged(allow)
        if why:
            self._fail_unjudged(f"not compared against {path}", why, bool(cmp.run_ended) and not allow)
        if cmp.regressions:
            pytest.fail(f"{format_comparison(cmp, title=f'against {path}', allow_unfinished=allow)}\n  report: "
                        f"{self._report()}", pytrace=False)
        return cmp


@pytest.fixture
def dyncheck(request: pytest.FixtureRequest, tmp_path: Path) -> DyncheckFixture:
    """Training-dynamics checks for this test: ``trainer = Trainer(callbacks=[dyncheck.monitor()])``, train, then
    ``dyncheck.assert_healthy()`` and ``dyncheck.assert_no_regression()``."""
    return DyncheckFixture(request, tmp_path)
