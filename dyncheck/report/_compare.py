"""The report's "Compared runs" section: the key series of the run and of the runs it is compared with, overlaid,
and the baseline comparison of the run against the others (:func:`dyncheck.baseline.make_baseline` over the
others, :func:`dyncheck.baseline.compare` of the run with it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._figures import Line, line_chart

#: the series overlaid, in order: (name in :func:`dyncheck.trajectory.run_series`, chart title, y axis, log toggle)
OVERLAID = (("loss/train", "training loss", "loss", True), ("loss/val", "validation loss", "loss", True),
            ("grad_norm/total", "global gradient norm", "L2 norm", True),
            ("grad_norm/layers.median", "median per-layer gradient norm", "L2 norm", True),
            ("sharpness/top_eig", "top Hessian eigenvalue", "eigenvalue", False),
            ("lr", "learning rate (first parameter group)", "learning rate", True))
#: the run itself, then the others (the palette repeats past its end, dashed)
PALETTE = ("#e53935", "#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#3949ab", "#c0ca33",
           "#d81b60")
RUN_COLOUR = "#212121"


def labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names for runs: each directory's name, or the shortest tail of its path that tells it apart."""
    parts = [p.resolve().parts for p in paths]
    out = []
    for i, ps in enumerate(parts):
        for k in range(1, len(ps) + 1):
            tail = ps[-k:]
            if all(o[-k:] != tail for j, o in enumerate(parts) if j != i):
                break
        out.append("/".join(tail) if tail else str(paths[i]))
    return out


def _series(run: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from ..trajectory import run_series

    out = dict(run_series(run))
    lrs = run.metrics("lr/*")
    if lrs:
        s = run.series(lrs[0])
        out["lr"] = (s.steps, s.values)
    return out


def compare_section(run: Any, result: Any, others: Sequence[tuple[str, Any]], *, rules: Any,
                    name: str) -> tuple[Any, dict[str, Any]]:
    """The section (overlay charts) and the table's context. ``others``: (label, open Run) pairs; ``name``: the
    run's label; ``rules``: the rule set the run was checked with (None: no checks, findings are not compared)."""
    from ..baseline import compare, make_baseline
    from ..checks.engine import CheckResult
    from ..errors import BaselineRefused
    from ._render import Section

    sec = Section("compare", "Compared runs", f"This run (<b>{_esc(name)}</b>, black) and the {len(others)} "
                  f"run{'s' if len(others) != 1 else ''} it is compared with, series by series; below, this run "
                  f"against a baseline made from the others (as <code>dyncheck baseline OTHER... </code> then "
                  f"<code>dyncheck compare RUN</code>: each quantity is their median, its tolerance at least 3x "
                  f"their spread; a band per series over the run).")
    mine = _series(run)
    theirs = [(label, _series(r)) for label, r in others]
    for k, (key, title, y, log) in enumerate(OVERLAID):
        if key not in mine and not any(key in s for _, s in theirs):
            continue
        lines = [Line(f"{label}", *s[key], colour=PALETTE[i % len(PALETTE)], width=1.3, opacity=0.85,
                      dash="dash" if i >= len(PALETTE) else None, show_nonfinite=False)
                 for i, (label, s) in enumerate(theirs) if key in s]
        if key in mine:
            lines.append(Line(f"{name} (this run)", *mine[key], colour=RUN_COLOUR, width=2.2))
        missing = [label for label, s in [(name, mine), *theirs] if key not in s]
        chart = line_chart(f"chart-compare-{k}", lines, y_title=y, log_toggle=log, height=300,
                           caption=f"{title}" + (f" (not recorded by: {', '.join(missing)})" if missing else ""))
        sec.charts.append(chart)
    if not sec.charts:
        sec.notes.append("None of the runs recorded a loss, gradient norm, sharpness or learning rate.")
    table: dict[str, Any] = {"others": [label for label, _ in others], "rows": [], "trajectories": [],
                             "new_findings": [], "gone_findings": [], "verdict": None, "note": None}
    unfinished = [f"{label} ({r.meta.get('status')})" for label, r in others
                  if r.meta.get("status") not in (None, "finished")]
    try:
        empty = [CheckResult()] * len(others) if rules is None else None
        base = make_baseline([r for _, r in others], rules=rules if rules is not None else "default", results=empty,
                             allow_unfinished=True)
    except BaselineRefused as e:
        table["note"] = f"No baseline could be made from the other runs: {e}"
        return sec, table
    cmp = compare(run, base, rules=rules if rules is not None else "default",
                  result=result if result is not None else CheckResult())
    table["verdict"] = cmp.verdict(True)
    table["regressions"] = cmp.regressions
    table["improvements"] = cmp.improvements
    table["rows"] = [{"quantity": r.quantity, "baseline": f"{r.baseline:.4g}",
                      "obtained": "—" if r.obtained is None else f"{r.obtained:.4g}", "change": r.change,
                      "tolerance": r.tolerance, "status": r.status} for r in cmp.rows]
    table["trajectories"] = [{"series": t.series, "status": t.status, "text": t.text} for t in cmp.trajectories]
    table["phase_timing"] = cmp.phase_timing
    table["new_findings"] = [(f.check, f.severity, f.metric, f.first_step, f.message) for f in cmp.new_findings]
    table["gone_findings"] = list(cmp.gone_findings)
    notes = []
    if unfinished:
        notes.append(f"Compared runs that did not finish are taken as they are: {', '.join(unfinished)}.")
    if rules is None:
        notes.append("Checks were left out (--no-checks): findings are not compared.")
    table["note"] = " ".join(notes) or None
    return sec, table


def _esc(text: str) -> str:
    import html

    return html.escape(str(text), quote=True)

