"""Findings as text (terminal, training logs), JSON and JUnit XML (CI systems)."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from typing import Any

from .engine import CheckResult

__all__ = ["format_text", "format_json", "format_junit", "summary_line", "steps_text", "explained_line",
           "measurement_error_line", "VERDICT_LABELS"]

_LABEL = {"error": "ERROR", "warning": "WARN ", "info": "INFO "}
#: how each verdict (:meth:`CheckResult.verdict`) is spelled in text
VERDICT_LABELS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "unjudged": "NOT JUDGED"}


def steps_text(f: Any) -> str:
    """``step 5`` or ``steps 5-9`` for a finding."""
    return f"step {f.first_step}" if f.first_step == f.last_step else f"steps {f.first_step}-{f.last_step}"


def _plural(n: int, word: str) -> str:
    if word.endswith("diagnosis"):
        return f"{n} {word if n == 1 else word[:-2] + 'es'}"
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_line(result: CheckResult, *, allow_unfinished: bool = False) -> str:
    """One line: the verdict (``NOT JUDGED`` for a run that cannot be judged, :meth:`CheckResult.verdict`), the
    diagnoses by severity, and how many checks ran."""
    diags = result.diagnoses
    by = {s: sum(d.severity == s for d in diags) for s in ("error", "warning", "info")}
    parts = [_plural(by[s], s) for s in ("error", "warning", "info") if by[s]]
    what = _plural(len(diags), "diagnosis") if diags else "no findings"
    found = f" ({', '.join(parts)}; {_plural(len(result.findings), 'finding')})" if diags else ""
    return (f"{VERDICT_LABELS[result.verdict(allow_unfinished)]}: {what}{found} from {len(result.checks)} checks "
            f"({len(result.passed)} passed, {len(result.skipped)} skipped)")


def measurement_error_line(e: dict[str, Any]) -> str:
    """``sharpness (step 120): RuntimeError: out of memory``: one measurement that failed during training."""
    what = str(e.get("measurement") or "measurement")
    on = e.get("metric") or e.get("layer")
    step = e.get("step")
    err = ": ".join(str(x) for x in (e.get("error"), e.get("message")) if x not in (None, ""))
    return (f"{what}{f' of {on}' if on else ''}{f' (step {step})' if step is not None else ''}"
            f"{': ' + err if err else ''}")


def explained_line(findings: Any) -> str:
    """``no-progress (loss/train), update-too-small (3 metrics)``: what a diagnosis explains, per check."""
    by: dict[str, list[str]] = {}
    for f in findings:
        by.setdefault(f.check, []).append(f.metric)
    return ", ".join(f"{c} ({ms[0] if len(ms) == 1 else _plural(len(ms), 'metric')})" for c, ms in by.items())


def format_text(result: CheckResult, *, title: str = "", hints: bool = True, width: int = 100,
                max_findings: int = 20, allow_unfinished: bool = False) -> str:
    """A short, readable summary: the verdict line, how the run ended, why it cannot be judged (if so), the
    measurements that failed, one block per diagnosis (the root cause's message, what it explains, its hint), then
    skipped checks. ``max_findings`` bounds the diagnoses shown."""
    lines = [f"dyncheck {title}".rstrip() + f" -- {summary_line(result, allow_unfinished=allow_unfinished)}"]
    run = result.run_line()
    if run is not None:
        lines.append(f"  run: {run}")
    why = result.not_judged(allow_unfinished)
    if why:
        lines += textwrap.wrap(f"not judged: {why}", width, initial_indent="  ", subsequent_indent=" " * 14)
    elif result.unfinished:
        lines.append("  judged on what it recorded before it stopped (unfinished runs allowed)")
    if result.measurement_errors:
        n = len(result.measurement_errors)
        lines += textwrap.wrap(f"notice: {_plural(n, 'measurement')} failed during training and "
                               f"{'was' if n == 1 else 'were'} turned off; checks on {'it' if n == 1 else 'them'} "
                               f"see only what was recorded before:", width, initial_indent="  ",
                               subsequent_indent=" " * 10)
        for e in result.measurement_errors[:max_findings]:
            lines += textwrap.wrap(measurement_error_line(e), width, initial_indent=" " * 4,
                                   subsequent_indent=" " * 6)
        if n > max_findings:
            lines.append(f"    ... and {n - max_findings} more")
    diags = result.diagnoses
    shown = diags[:max_findings]
    for d in shown:
        f = d.primary
        more = f" and {_plural(len(d.findings) - 1, 'more metric')}" if len(d.findings) > 1 else ""
        lines.append(f"  {_LABEL[d.severity]} {d.check:<22} {f.metric}{more}  ({steps_text(f)})")
        lines += textwrap.wrap(f.message, width, initial_indent=" " * 9, subsequent_indent=" " * 9)
        if d.explained:
            lines += textwrap.wrap("explains: " + explained_line(d.explained), width, initial_indent=" " * 9,
                                   subsequent_indent=" " * 19)
        if hints and f.hint:
            lines += textwrap.wrap("hint: " + f.hint, width, initial_indent=" " * 9, subsequent_indent=" " * 15)
    if len(diags) > len(shown):
        lines.append(f"  ... and {_plural(len(diags) - len(shown), 'more diagnosis')} (see findings.json)")
    for s in result.skipped:
        lines += textwrap.wrap(f"skipped {s.check}: {s.reason}", width, initial_indent="  ",
                               subsequent_indent=" " * 10)
    return "\n".join(lines)


def format_json(result: CheckResult, *, allow_unfinished: bool = False) -> str:
    return result.to_json(allow_unfinished, indent=2)


def format_junit(result: CheckResult, *, name: str = "dyncheck", allow_unfinished: bool = False) -> str:
    """JUnit XML: the run's status as a suite property (``run_status``); a leading failing ``run`` case when the
    run cannot be judged; a ``diagnoses`` case; one test case per check: a failing case per check that fired at
    warning or error, with the findings as its text; skipped checks as skipped cases; info findings as system-out
    of a passing case."""
    by_check: dict[str, list[Any]] = {}
    for f in result.findings:
        by_check.setdefault(f.check, []).append(f)
    skipped = {s.check: s.reason for s in result.skipped}
    failures = sum(1 for fs in by_check.values() if any(f.severity != "info" for f in fs))
    suite = ET.Element("testsuite", name=name, tests=str(len(result.checks)), failures=str(failures),
                       errors="0", skipped=str(len(skipped)))
    diags = [d for d in result.diagnoses if d.severity != "info"]
    why = result.not_judged(allow_unfinished)
    suite.set("tests", str(len(result.checks) + 1 + bool(why)))
    suite.set("failures", str(failures + bool(diags) + bool(why)))
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="run_status", value=str(result.run_status or "not recorded"))
    ET.SubElement(props, "property", name="verdict", value=result.verdict(allow_unfinished))
    for e in result.measurement_errors:
        ET.SubElement(props, "property", name="measurement_error", value=measurement_error_line(e))
    if why:  # first: a CI page shows that nothing was judged before anything else
        case = ET.SubElement(suite, "testcase", classname=name, name="run")
        el = ET.SubElement(case, "failure", type="not-judged", message=f"not judged: {why}")
        el.text = f"run: {result.run_line() or 'not recorded'}\nnot judged: {why}"
    case = ET.SubElement(suite, "testcase", classname=name, name="diagnoses")
    if diags:  # the root causes first: what a CI page shows at the top
        el = ET.SubElement(case, "failure", type=diags[0].severity,
                           message=f"{_plural(len(diags), 'diagnosis')}: " + "; ".join(f"{d.check}: {d.primary.message}" for d in diags))
        el.text = "\n\n".join(
            f"{d.severity}: {d.check} -- {d.primary.metric} ({steps_text(d.primary)}): {d.primary.message}"
            + (f"\nexplains: {explained_line(d.explained)}" if d.explained else "")
            + (f"\nhint: {d.primary.hint}" if d.primary.hint else "") for d in diags)
    for cid, check in result.checks.items():
        case = ET.SubElement(suite, "testcase", classname=name, name=cid)
        fs = by_check.get(cid, [])
        body = "\n".join(f"{f.metric} ({steps_text(f)}): {f.message}" for f in fs)
        if cid in skipped:
            ET.SubElement(case, "skipped", message=skipped[cid])
        elif any(f.severity != "info" for f in fs):
            worst = "error" if any(f.severity == "error" for f in fs) else "warning"
            el = ET.SubElement(case, "failure", message=f"{worst}: {fs[0].message}", type=worst)
            el.text = body + ("\nhint: " + check.hint if check.hint else "")
        elif fs:
            ET.SubElement(case, "system-out").text = body
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
