"""The HTML health report: one self-contained file (plotly.js inlined once, no external request) that a person
reads after a run, from a CI artifact or while the run is still going.

Top to bottom: verdict banner, findings (hint + evidence chart with the flagged steps shaded), loss with the
phases of training, learning rate, gradient norms, update ratios, activation statistics, sharpness, run metadata,
passed and skipped checks. Reads the run only through the store's reader API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["render_report", "write_report", "REPORT_FILENAME"]

REPORT_FILENAME = "report.html"


def render_report(run: Any, *, result: Any | None = None, rules: Any = "default", title: str | None = None) -> str:
    """The report's HTML. ``run``: a :class:`~dyncheck.store.Run` or a path to one. ``result``: a
    :class:`~dyncheck.checks.CheckResult` already computed (else ``rules`` are evaluated: ``"default"``, rule-file
    paths, a :class:`RuleSet`, or None for a report without checks)."""
    from ..store import Run, open_run

    if not isinstance(run, Run):
        with open_run(run) as opened:
            return render_report(opened, result=result, rules=rules, title=title)
    rules_label = ""
    if result is None and rules is not None:
        from ..checks import evaluate, load_rules
        from ..checks.rules import RuleSet

        ruleset = rules if isinstance(rules, RuleSet) else load_rules(
            [rules] if isinstance(rules, (str, os.PathLike)) else list(rules))
        result = evaluate(run, ruleset)
        rules_label = ", ".join(ruleset.sources)
    elif result is not None and getattr(rules, "sources", None):
        rules_label = ", ".join(rules.sources)
    from ._render import render

    return render(run, result, title=title, rules_label=rules_label)


def write_report(run: Any, out: str | os.PathLike | None = None, *, result: Any | None = None,
                 rules: Any = "default", title: str | None = None) -> Path:
    """Write the report to ``out`` (default: ``report.html`` in the run directory) and return its path. The file
    is written atomically (a temporary file beside it, then renamed) and only over a regular file or nothing: a
    symbolic link, FIFO, device or directory at ``out`` is refused with a :class:`DyncheckError` naming it."""
    from ..store import Run, open_run

    if not isinstance(run, Run):
        with open_run(run) as opened:
            return write_report(opened, out, result=result, rules=rules, title=title)
    from .._io import check_target, write_text

    path = Path(out) if out is not None else run.dir / REPORT_FILENAME
    check_target(path, "report")  # refuse a symlink, FIFO, device or directory before rendering
    text = render_report(run, result=result, rules=rules, title=title)
    return write_text(path, text, what="report")

