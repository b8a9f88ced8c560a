"""The HTML health report: one self-contained file (plotly.js inlined once, no external request) that a person
reads after a run, from a CI artifact or while the run is still going.

Top to bottom: verdict banner, findings (hint + evidence chart with the flagged steps shaded), loss with the
phases of training, learning rate, gradient norms, update ratios, activation statistics, sharpness, run metadata,
passed and skipped checks. Reads the run only through the store's reader API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["render_report", "write_report", "REPORT_FILENAME"]

REPORT_FILENAME = "report.html"


def render_report(run: Any, *, result: Any | None = None, rules: Any = "default", title: str | None = None,
                  compare: Sequence[Any] = ()) -> str:
    """The report's HTML. ``run``: a :class:`~dyncheck.store.Run` or a path to one. ``result``: a
    :class:`~dyncheck.checks.CheckResult` already computed (else ``rules`` are evaluated: ``"default"``, rule-file
    paths, a :class:`RuleSet`, or None for a report without checks). ``compare``: other runs (open runs or paths)
    whose key series are overlaid on the run's, with the run compared against a baseline made from them."""
    from ..store import Run, open_run

    if not isinstance(run, Run):
        with open_run(run) as opened:
            return render_report(opened, result=result, rules=rules, title=title, compare=compare)
    if compare and not all(isinstance(c, Run) for c in compare):
        import contextlib

        with contextlib.ExitStack() as stack:
            others = [c if isinstance(c, Run) else stack.enter_context(open_run(c)) for c in compare]
            return render_report(run, result=result, rules=rules, title=title, compare=others)
    rules_label = ""
    ruleset = None
    if result is None and rules is not None:
        from ..checks import evaluate, load_rules
        from ..checks.rules import RuleSet

        ruleset = rules if isinstance(rules, RuleSet) else load_rules(
            [rules] if isinstance(rules, (str, os.PathLike)) else list(rules))
        result = evaluate(run, ruleset)
        rules_label = ", ".join(ruleset.sources)
    elif result is not None and getattr(rules, "sources", None):
        rules_label = ", ".join(rules.sources)
        ruleset = rules
    elif result is not None and rules is not None:
        ruleset = rules
    from ._render import render

    return render(run, result, title=title, rules_label=rules_label, compare=list(compare), rules=ruleset)


def write_report(run: Any, out: str | os.PathLike | None = None, *, result: Any | None = None,
                 rules: Any = "default", title: str | None = None, compare: Sequence[Any] = ()) -> Path:
    """Write the report to ``out`` (default: ``report.html`` in the run directory) and return its path. The file
    is written atomically (a temporary file beside it, then renamed) and only over a regular file or nothing: a
    symbolic link, FIFO, device or directory at ``out`` is refused with a :class:`DyncheckError` naming it."""
    from ..store import Run, open_run

    if not isinstance(run, Run):
        with open_run(run) as opened:
            return write_report(opened, out, result=result, rules=rules, title=title, compare=compare)
    from .._io import check_target, write_text

    path = Path(out) if out is not None else run.dir / REPORT_FILENAME
    check_target(path, "report")  # refuse a symlink, FIFO, device or directory before rendering
    text = render_report(run, result=result, rules=rules, title=title, compare=compare)
    return write_text(path, text, what="report")

