"""Evaluation policy of a monitored fit: which checks run when, what they may cost, and what comes out of them --
live checks at flush boundaries (``stop_on``), ``findings.json``, the summary and finding counts at the end, the
HTML report. Framework-neutral apart from the two things an adapter lends it: a boolean collective (to stop all
processes together) and the trainer's loggers.

Options (declared here once, with their meaning, and validated in :class:`EvaluationOptions`): ``rules``,
``stop_on``, ``report``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DyncheckError, RuleError
from ._threads import one_blas_thread
from .store import open_run

__all__ = ["FINDINGS_FILENAME", "LIVE_BUDGET", "Evaluation", "EvaluationAttributes", "EvaluationOptions",
           "load_rules_option"]

FINDINGS_FILENAME = "findings.json"
#: share of training time that live evaluation (stop_on) may take
LIVE_BUDGET = 0.02


def load_rules_option(owner: str, rules: Any) -> Any:
    """The ``rules`` option as loaded rules (None: checking off); every problem is a :class:`ConfigError` or
    :class:`RuleError` naming the argument."""
    if rules is None or rules is False:
        return None
    from .checks.rules import load_rules

    given = rules
    if isinstance(rules, os.PathLike):
        rules = os.fspath(rules)
    expected = "expected 'default', a path to a YAML rule file (UTF-8), a list of them, or None"
    if not isinstance(rules, (str, list, tuple)) or not all(
            isinstance(r, (str, os.PathLike)) for r in ([rules] if isinstance(rules, str) else rules)):
        raise ConfigError(f"{owner}(rules={given!r}): {expected}")
    sources = [rules] if isinstance(rules, str) else [os.fspath(r) for r in rules]
    try:
        return load_rules(sources)
    except RuleError as exc:  # names the file, line and check: say which argument it came from
        exc.args = (f"{owner}(rules={given!r}): invalid rule file\n{exc}",)
        raise
    except ConfigError as exc:
        raise ConfigError(f"{owner}(rules={given!r}): {exc}") from None
    except Exception as exc:  # unreadable file: not UTF-8, not a file we can read, nested too deep
        bad = next((src for src in sources if src != "default" and not _readable_text(src)), None)
        what = f"cannot read rule file {bad!r}" if bad is not None else "cannot load the rules"
        raise ConfigError(f"{owner}(rules={given!r}): {what} ({type(exc).__name__}: {exc}); {expected}") from None


#: what ``mirror=True`` logs: logger key -> the stored metric (a glob: the maximum over the matching series)
MIRRORED = {"dyncheck/grad_norm_total": "grad_norm/total", "dyncheck/dead_share_max": "act/dead/*",
            "dyncheck/sharpness": "sharpness/top_eig", "dyncheck/sharpness_threshold": "sharpness/threshold"}
#: points per mirrored series at most (evenly thinned, the last kept)
MIRROR_POINTS = 1000


def mirrored_series(store: Path) -> dict[int, dict[str, float]]:
    """step -> {logger key: value} of the :data:`MIRRORED` series of a run (finite values only)."""
    import numpy as np

    rows: dict[int, dict[str, float]] = {}
    with open_run(store) as run:
        for key, pattern in MIRRORED.items():
            per_step: dict[int, float] = {}
            for name in run.metrics(pattern):
                s = run.series(name)
                for step, value in zip(s.steps.tolist(), s.values.tolist()):
                    if np.isfinite(value):
                        per_step[step] = max(per_step.get(step, value), value)
            steps = sorted(per_step)
            if len(steps) > MIRROR_POINTS:
                keep = np.unique(np.linspace(0, len(steps) - 1, MIRROR_POINTS).round().astype(int))
                steps = [steps[i] for i in keep]
            for step in steps:
                rows.setdefault(step, {})[key] = float(per_step[step])
    return rows


def _readable_text(path: str) -> bool:
    try:
        Path(path).read_text(encoding="utf-8")
        return True
    except (OSError, ValueError):
        return False



@dataclass
class EvaluationOptions:
    """The evaluation options of :class:`~dyncheck.DynamicsMonitor`; ``rules`` is loaded (and so validated) here."""

    rules: str | os.PathLike | Sequence[str | os.PathLike] | None = field(default="default", metadata={"doc": (
        'the checks evaluated at the end of the fit and after a crash: ``"default"`` (the built-in pack), '
        'a path to a YAML rule file, or a list of them layered in order (``["default", "mine.yaml"]``); None '
        "turns checking off. Findings go to ``findings.json`` beside the store, a one-screen summary to the log, "
        "and finding counts (``dyncheck/errors``, ``dyncheck/warnings``, ``dyncheck/info``) to the trainer's "
        "loggers.")})
    stop_on: str | None = field(default=None, metadata={"doc": (
        '``"error"`` or ``"warning"``: also evaluate the checks live, at flushes and validation ends (within 2% '
        "of the training time), and stop training -- all processes together -- when a finding of at least this "
        "severity fires. Checks that judge the whole run (no-progress, premature-plateau, medians) wait for the "
        "end. None (default): never stop.")})
    report: bool = field(default=True, metadata={"doc": (
        "write the HTML health report ``report.html`` beside the store at the end of the fit and after a crash "
        "(True, default); ``dyncheck report RUN`` writes it later from the store.")})
    mirror: bool = field(default=False, metadata={"doc": (
        "also log, at the end of the fit, a few summary series to the trainer's loggers (TensorBoard, CSV, W&B, "
        "MLflow: each logger's ``log_metrics``) -- ``dyncheck/grad_norm_total``, ``dyncheck/dead_share_max`` (the "
        "worst module's dead share), ``dyncheck/sharpness`` and ``dyncheck/sharpness_threshold``, at their steps "
        "(at most 1000 points each) -- and the findings as the hyperparameter ``dyncheck/findings``. Nothing per "
        "step. False (default).")})
    owner: str = field(default="DynamicsMonitor", compare=False, repr=False)

    def __post_init__(self) -> None:
        o = self.owner
        self.loaded = load_rules_option(o, self.rules)
        if self.stop_on not in (None, "error", "warning"):
            raise ConfigError(f"{o}(stop_on={self.stop_on!r}): expected 'error', 'warning' or None")
        if self.stop_on is not None and self.loaded is None:
            raise ConfigError(f"{o}(stop_on={self.stop_on!r}): needs rules to evaluate; got rules=None")
        if not isinstance(self.report, bool):
            raise ConfigError(f"{o}(report={self.report!r}): expected True or False")
        if not isinstance(self.mirror, bool):
            raise ConfigError(f"{o}(mirror={self.mirror!r}): expected True or False")


class Evaluation:
    """Checks and report of one monitored run (any number of fits). ``warn(key, message)`` warns once per key;
    ``info(message)`` logs a rank-zero line."""

    def __init__(self, options: EvaluationOptions, *, warn: Callable[[str, str], None],
                 info: Callable[[str], None]) -> None:
        self.rules = options.loaded
        self.stop_on = options.stop_on
        self.report = options.report
        self.mirror = options.mirror
        self._warn, self._info = warn, info
        self.result: Any = None  # the CheckResult of the last evaluation (after the fit: the final one)
        self.stopped_by: Any = None  # the Finding that stopped training, if stop_on did
        self._cost = 0.0  # seconds the last evaluation took
        self._last = 0.0  # perf_counter at its end (0: none yet in this fit)
        self._flushes_seen = 0  # the monitor's flush count at the last live check (one per flush)

    def fit_started(self, monitor: Any = None) -> None:
        """A fit begins (``monitor``: its flush count so far, from an earlier fit into the same store)."""
        self._last = 0.0
        self.stopped_by = None
        self._flushes_seen = monitor.flushes if monitor is not None else 0

    def live_due(self, monitor: Any) -> bool:
        """Whether :meth:`after_flush` would check: ``stop_on`` is set and ``monitor`` flushed since the last look
        (a cheap test for the per-step hot path)."""
        return self.stop_on is not None and monitor.flushes != self._flushes_seen

    def after_flush(self, monitor: Any, agree: Callable[[bool], bool], stop: Callable[[], None], *,
                    step: int) -> None:
        """Live checks once per new flush of ``monitor`` when ``stop_on`` is set: every process calls this at the
        same step (see :meth:`live`)."""
        if not self.live_due(monitor):
            return
        self._flushes_seen = monitor.flushes
        store = monitor.store
        self.live(monitor.store_path if store is not None else None, agree, stop, step=step,
                  set_meta=lambda **kw: store.set_meta(**kw) if store is not None else None)


    # -- live --------------------------------------------------------------------------------------------------
    def live(self, store: Path | None, agree: Callable[[bool], bool], stop: Callable[[], None], *, step: int,
             set_meta: Callable[..., None]) -> None:
        """At a flush boundary (every process reaches it at the same step): rank 0 (``store`` not None) evaluates
        when the time budget allows; ``agree(fired)`` is the processes' one boolean collective (any fired)."""
        fired = None
        if store is not None:
            since = time.perf_counter() - self._last
            if self._last == 0.0 or self._cost <= LIVE_BUDGET * since:
                with one_blas_thread():
                    result = self._evaluate(store, final=False)
                if result is not None:
                    self.result = result
                    fired = next(iter(result.at_or_above(self.stop_on)), None)
        if agree(fired is not None):
            if fired is not None:
                self.stopped_by = fired
                set_meta(stopped_by=fired.to_dict())
                self._info(f"dyncheck: stopping training at step {step}: {fired.severity} "
                           f"{fired.check} on {fired.metric}: {fired.message}")
            stop()

    # -- at the end --------------------------------------------------------------------------------------------
    def final(self, store: Path, *, step: int, loggers: Sequence[Any] = ()) -> None:
        """Evaluate, write findings.json, log the counts and summary; write the report. Never raises."""
        with one_blas_thread():
            self._final(store, step=step, loggers=loggers)

    def _final(self, store: Path, *, step: int, loggers: Sequence[Any]) -> None:
        summary = self._final_check(store, step, loggers) if self.rules is not None else None
        result = self.result if summary is not None else None
        if self.mirror and loggers:
            self._mirror(store, result, loggers)
        report = self._write_report(store, result) if self.report else None
        if summary is not None:
            where = f"\n  report:  {report}" if report is not None else ""
            self._info(summary + where + f"\n  details: {store.parent / FINDINGS_FILENAME}  "
                                         f"(or: dyncheck check {store.parent})")
        elif report is not None:
            self._info(f"dyncheck report: {report}")

    def _evaluate(self, store: Path, *, final: bool = True) -> Any:
        from .checks.engine import evaluate

        t = time.perf_counter()
        try:
            with open_run(store) as run:
                return evaluate(run, self.rules, final=final)
        except Exception as exc:  # checking must never break the training it observes
            self._warn("checks", f"dyncheck: evaluating the checks failed ({type(exc).__name__}: {exc}); the run "
                                 f"store is intact, run `dyncheck check {store.parent}`")
            return None
        finally:
            # the first live evaluation of a fit pays one-off costs (imports, loading the rules, cold caches): it
            # does not set the pace; the next flush evaluates again and measures what an evaluation costs
            first = self._last == 0.0
            self._cost = 0.0 if first and not final else time.perf_counter() - t
            self._last = time.perf_counter()

    def _final_check(self, store: Path, step: int, loggers: Sequence[Any]) -> str | None:
        """Evaluate, write findings.json, log the counts; return the summary for the log (None if it failed)."""
        from .checks.output import format_text

        result = self._evaluate(store)
        if result is None:
            return None
        self.result = result
        doc = {**result.to_dict(), "run": str(store.parent), "rules": self.rules.sources, "step": step}
        if self.stopped_by is not None:
            doc["stopped_by"] = self.stopped_by.to_dict()
        path = store.parent / FINDINGS_FILENAME
        try:
            from ._io import write_text

            write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n", what="findings")
        except (OSError, DyncheckError) as exc:  # a file it cannot write must not break the end of the fit
            warnings.warn(f"dyncheck: cannot write {path}: {exc}", stacklevel=2)
        counts = result.counts()
        for logger in loggers or []:
            try:
                logger.log_metrics({f"dyncheck/{k}{'s' if k != 'info' else ''}": float(v) for k, v in counts.items()},
                                   step=step)
            except Exception as exc:  # a logger that cannot take them must not break the end of the fit
                self._warn("logger", f"dyncheck: could not log finding counts to {type(logger).__name__}: {exc}")
        return format_text(result, title=str(store.parent), hints=False, max_findings=10)

    def _mirror(self, store: Path, result: Any, loggers: Sequence[Any]) -> None:
        """The summary series and the findings into the trainer's loggers (``mirror=True``). Never raises."""
        try:
            rows = mirrored_series(store)
        except Exception as exc:
            self._warn("mirror", f"dyncheck: reading the summary series failed ({type(exc).__name__}: {exc})")
            return
        from .checks.output import steps_text

        findings = [f"{f.severity} {f.check} on {f.metric} ({steps_text(f)}): {f.message}"
                    for f in (result.findings if result is not None else [])]
        for logger in loggers:
            try:
                for step in sorted(rows):
                    logger.log_metrics(rows[step], step=step)
                if result is not None:
                    logger.log_hyperparams({"dyncheck/findings": findings or ["none"]})
            except Exception as exc:  # a logger that cannot take them must not break the end of the fit
                self._warn(f"mirror-{type(logger).__name__}",
                           f"dyncheck: could not mirror into {type(logger).__name__}: {type(exc).__name__}: {exc}")

    def _write_report(self, store: Path, result: Any) -> Path | None:
        """The HTML report beside the store; failures warn (the run store is intact) and never raise."""
        from .report import write_report

        try:
            with open_run(store) as run:
                return write_report(run, result=result, rules=self.rules if result is not None else None)
        except Exception as exc:
            self._warn("report", f"dyncheck: writing the HTML report failed ({type(exc).__name__}: {exc}); the "
                                 f"run store is intact, run `dyncheck report {store.parent}`")
            return None


class EvaluationAttributes:
    """The evaluation's state as attributes of an adapter (the Lightning callback, ``watch``, the HF callback),
    read from its ``evaluation``."""

    evaluation: Evaluation

    @property
    def rules(self) -> Any:
        """The loaded rules (None: checking off)."""
        return self.evaluation.rules

    @property
    def stop_on(self) -> str | None:
        return self.evaluation.stop_on

    @property
    def report(self) -> bool:
        return self.evaluation.report

    @property
    def result(self) -> Any:
        """The CheckResult of the last evaluation (after the fit: the final one)."""
        return self.evaluation.result

    @property
    def stopped_by(self) -> Any:
        """The Finding that stopped training, if ``stop_on`` did."""
        return self.evaluation.stopped_by

