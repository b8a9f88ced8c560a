"""Findings as text (terminal, training logs), JSON and JUnit XML (CI systems)."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Sequence

from .engine import CheckResult

__all__ = ["format_text", "format_json", "format_junit", "junit_suite", "summary_line", "steps_text",
           "explained_line", "measurement_error_line", "VERDICT_LABELS", "RunCheck", "gate_verdict",
           "format_many_text", "format_many_json", "format_many_junit"]

_LABEL = {"error": "ERROR", "warning": "WARN ", "info": "INFO "}
#: how each verdict (:meth:`CheckResult.verdict`) is spelled in text
VERDICT_LABELS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "unjudged": "NOT JUDGED", "error": "ERROR"}


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
    """JUnit XML of one run: :func:`junit_suite` as a document."""
    suite = junit_suite(result, name=name, allow_unfinished=allow_unfinished)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def junit_suite(result: CheckResult, *, name: str = "dyncheck", allow_unfinished: bool = False) -> ET.Element:
    """The ``<testsuite>`` of one run: the run's status as a suite property (``run_status``); a leading failing
    ``run`` case when the run cannot be judged; a ``diagnoses`` case; one test case per check: a failing case per
    check that fired at warning or error, with the findings as its text; skipped checks as skipped cases; info
    findings as system-out of a passing case."""
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
        message = f"{_plural(len(diags), 'diagnosis')}: " + "; ".join(f"{d.check}: {d.primary.message}" for d in diags)
        el = ET.SubElement(case, "failure", type=diags[0].severity, message=message)
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
    return suite


# -- many runs ---------------------------------------------------------------------------------------------------
@dataclass
class RunCheck:
    """One run of a check over many runs: its name (path), its :class:`CheckResult`, or the error that kept it
    from being read (a damaged store, a log that cannot be imported); ``source``: ``run`` or ``log``."""

    name: str
    result: CheckResult | None = None
    error: str | None = None
    source: str = "run"

    def verdict(self, allow_unfinished: bool = False) -> str:
        """The run's verdict (:meth:`CheckResult.verdict`), or ``error``."""
        return "error" if self.result is None else self.result.verdict(allow_unfinished)

    def fails(self, fail_on: str) -> bool:
        """A finding at or above ``fail_on`` fired (never for ``fail_on="never"``)."""
        return self.result is not None and fail_on != "never" and bool(self.result.at_or_above(fail_on))

    def not_judged(self, allow_unfinished: bool = False) -> str | None:
        return None if self.result is None else self.result.not_judged(allow_unfinished)

    def first_diagnosis(self) -> Any:
        diags = self.result.diagnoses if self.result is not None else []
        return diags[0] if diags else None

    def to_dict(self, allow_unfinished: bool = False) -> dict[str, Any]:
        d = self.first_diagnosis()
        first = None if d is None else {"check": d.check, "severity": d.severity, "metric": d.primary.metric,
                                        "first_step": d.primary.first_step, "last_step": d.primary.last_step,
                                        "message": d.primary.message}
        if self.result is None:
            body: dict[str, Any] = {"status": "error", "run_status": None, "not_judged": None, "diagnoses": [],
                                    "findings": [], "skipped": [], "passed": [], "measurement_errors": []}
        else:
            body = self.result.to_dict(allow_unfinished)
        return {"run": self.name, "source": self.source, "error": self.error, "first_diagnosis": first, **body}


def gate_verdict(runs: Sequence[RunCheck], fail_on: str, allow_unfinished: bool = False) -> str:
    """The verdict over many runs, as the exit code reads it: ``fail`` when a run has a finding at or above
    ``fail_on``; else ``error`` when a run could not be read; else ``unjudged`` when a run could not be judged
    (:meth:`CheckResult.not_judged`); else ``pass``. What could not be judged is never passed."""
    if any(r.fails(fail_on) for r in runs):
        return "fail"
    if any(r.result is None for r in runs):
        return "error"
    if any(r.not_judged(allow_unfinished) for r in runs):
        return "unjudged"
    return "pass"


def _counts(runs: Sequence[RunCheck], allow_unfinished: bool) -> dict[str, int]:
    out = {v: 0 for v in ("fail", "warn", "pass", "unjudged", "error")}
    for r in runs:
        out[r.verdict(allow_unfinished)] += 1
    return out


def _gate_line(runs: Sequence[RunCheck], fail_on: str, allow_unfinished: bool) -> str:
    gate = gate_verdict(runs, fail_on, allow_unfinished)
    counts = _counts(runs, allow_unfinished)
    parts = ", ".join(f"{n} {VERDICT_LABELS[v].lower()}" for v, n in counts.items() if n)
    why = {"fail": f"a finding at or above --fail-on {fail_on}", "error": "a run could not be read",
           "unjudged": "a run could not be judged", "pass": "every run judged, nothing at or above --fail-on "
                                                           f"{fail_on}"}[gate]
    return f"{VERDICT_LABELS[gate]}: {_plural(len(runs), 'run')} ({parts}): {why}"


def _cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def format_many_text(runs: Sequence[RunCheck], *, fail_on: str = "error", allow_unfinished: bool = False,
                     width: int = 120) -> str:
    """One line over all the runs (the gate's verdict and the runs by verdict), then a table: run, run status,
    verdict, first diagnosis (its check, metric, steps and message; the reason for a run not judged, the error for
    one that could not be read)."""
    rows = []
    for r in runs:
        res = r.result
        status = "—" if res is None else str(res.run_status or "—")
        d = r.first_diagnosis()
        why = r.not_judged(allow_unfinished)
        if r.error is not None:
            first = f"error: {r.error}"
        elif d is not None:
            first = f"{d.check} {d.primary.metric} ({steps_text(d.primary)}): {d.primary.message}"
        elif why:
            first = f"not judged: {why}"
        else:
            first = "—"
        rows.append((r.name, status, VERDICT_LABELS[r.verdict(allow_unfinished)], first))
    head = ("run", "status", "verdict", "first diagnosis")
    w = [max([len(head[i])] + [len(row[i]) for row in rows]) for i in range(3)]
    rest = max(60, width - 2 - sum(w) - 6)
    lines = [f"dyncheck check -- {_gate_line(runs, fail_on, allow_unfinished)}"]
    fmt = "  {:<%d}  {:<%d}  {:<%d}  {}" % tuple(w)
    lines.append(fmt.format(*head).rstrip())
    for name, status, verdict, first in rows:
        lines.append(fmt.format(name, status, verdict, _cut(first, rest)).rstrip())
    return "\n".join(lines)


def format_many_json(runs: Sequence[RunCheck], *, fail_on: str = "error", allow_unfinished: bool = False) -> str:
    """``{"status": the gate's verdict, "fail_on", "counts": {verdict: runs}, "runs": [per run: "run", "source",
    "error", "first_diagnosis", and the single-run JSON's keys]}``."""
    doc = {"status": gate_verdict(runs, fail_on, allow_unfinished), "fail_on": fail_on,
           "counts": _counts(runs, allow_unfinished), "runs": [r.to_dict(allow_unfinished) for r in runs]}
    return json.dumps(doc, indent=2, allow_nan=False)


def format_many_junit(runs: Sequence[RunCheck], *, prefix: str = "dyncheck", allow_unfinished: bool = False) -> str:
    """``<testsuites>`` with one ``<testsuite>`` per run (:func:`junit_suite`, named ``dyncheck.<run path>``); a run
    that could not be read is a suite whose ``run`` case is an error."""
    top = ET.Element("testsuites", name=prefix)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for r in runs:
        name = f"{prefix}.{r.name}"
        if r.result is None:
            suite = ET.Element("testsuite", name=name, tests="1", failures="0", errors="1", skipped="0")
            props = ET.SubElement(suite, "properties")
            ET.SubElement(props, "property", name="verdict", value="error")
            case = ET.SubElement(suite, "testcase", classname=name, name="run")
            ET.SubElement(case, "error", type="unreadable", message=str(r.error)).text = str(r.error)
        else:
            suite = junit_suite(r.result, name=name, allow_unfinished=allow_unfinished)
        for k in totals:
            totals[k] += int(suite.get(k, "0"))
        top.append(suite)
    for k, v in totals.items():
        top.set(k, str(v))
    ET.indent(top)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(top, encoding="unicode") + "\n"
