"""Findings as text (terminal, training logs), JSON and JUnit XML (CI systems)."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from typing import Any

from .engine import CheckResult

__all__ = ["format_text", "format_json", "format_junit"]

_LABEL = {"error": "ERROR", "warning": "WARN ", "info": "INFO "}


def _steps(f: Any) -> str:
    return f"step {f.first_step}" if f.first_step == f.last_step else f"steps {f.first_step}-{f.last_step}"


def summary_line(result: CheckResult) -> str:
    c = result.counts()
    n_checks = len(result.checks)
    return (f"{result.status.upper()}: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info "
            f"from {n_checks} checks ({len(result.passed)} passed, {len(result.skipped)} skipped)")


def format_text(result: CheckResult, *, title: str = "", hints: bool = True, width: int = 100,
                max_findings: int = 20) -> str:
    """A short, readable summary: verdict line, one block per finding (message, hint), skipped checks."""
    lines = [f"dyncheck {title}".rstrip() + f" -- {summary_line(result)}"]
    shown = result.findings[:max_findings]
    for f in shown:
        lines.append(f"  {_LABEL[f.severity]} {f.check:<22} {f.metric}  ({_steps(f)})")
        lines += textwrap.wrap(f.message, width, initial_indent=" " * 9, subsequent_indent=" " * 9)
        if hints and f.hint:
            lines += textwrap.wrap("hint: " + f.hint, width, initial_indent=" " * 9, subsequent_indent=" " * 15)
    if len(result.findings) > len(shown):
        lines.append(f"  ... and {len(result.findings) - len(shown)} more findings (see findings.json)")
    for s in result.skipped:
        lines += textwrap.wrap(f"skipped {s.check}: {s.reason}", width, initial_indent="  ",
                               subsequent_indent=" " * 10)
    return "\n".join(lines)


def format_json(result: CheckResult) -> str:
    return result.to_json(indent=2)


def format_junit(result: CheckResult, *, name: str = "dyncheck") -> str:
    """JUnit XML: one test case per check; a failing case per check that fired at warning or error, with the
    findings as its text; skipped checks as skipped cases; info findings as system-out of a passing case."""
    by_check: dict[str, list[Any]] = {}
    for f in result.findings:
        by_check.setdefault(f.check, []).append(f)
    skipped = {s.check: s.reason for s in result.skipped}
    failures = sum(1 for fs in by_check.values() if any(f.severity != "info" for f in fs))
    suite = ET.Element("testsuite", name=name, tests=str(len(result.checks)), failures=str(failures),
                       errors="0", skipped=str(len(skipped)))
    for cid, check in result.checks.items():
        case = ET.SubElement(suite, "testcase", classname=name, name=cid)
        fs = by_check.get(cid, [])
        body = "\n".join(f"{f.metric} ({_steps(f)}): {f.message}" for f in fs)
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
