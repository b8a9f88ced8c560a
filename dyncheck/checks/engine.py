"""Evaluation: checks x recorded series -> findings. Vectorised numpy; reads a run only through the store's reader
API (or any mapping of metric name -> (steps, values)), so it works after training, live, or from an artifact.

A check passes only when it was evaluated on enough evidence: each detector declares what it needs (``EVIDENCE``:
from its parameters ``min_points``, ``window``, ``min_history``, ...), and a run too short for it, for the check's
``warmup`` or for its ``for:``, or a ``when:`` condition on a companion metric that was not recorded (or too
briefly), makes the check :class:`Skipped` with the reason ("30 points of loss/train, needs 50"), never passed.
The result also carries the run's status; :meth:`CheckResult.not_judged` says when the run as a whole cannot be
judged (it did not finish, holds no series, or every check was skipped)."""

from __future__ import annotations

import bisect
import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ._activation_gaps import activation_gap_reason
from .detectors import DETECTORS, held_for
from .rules import SEVERITIES, Check, Condition, RuleSet, load_rules, render_message

__all__ = ["Finding", "Skipped", "Diagnosis", "CheckResult", "diagnose", "evaluate", "SeriesSource", "Evidence",
           "evidence_needed", "FINISHED", "RUN_STATUSES"]

#: the run statuses the monitor records (``meta["status"]``): ``running`` from the start until the fit ends (a run
#: whose process was killed stays ``running``), then ``finished``, ``interrupted`` (KeyboardInterrupt), ``crashed``
#: (another exception), or ``ended`` (torn down without saying how). Only ``finished`` is a finished run.
FINISHED = "finished"
#: ``unconfirmed``: an imported log that does not say the training finished (``dyncheck import``)
RUN_STATUSES = ("running", "finished", "interrupted", "crashed", "ended", "unconfirmed")

_RANK = {s: i for i, s in enumerate(reversed(SEVERITIES))}  # info 0, warning 1, error 2


@dataclass(frozen=True)
class Finding:
    """A check that fired on one metric: where (first/last step), the value that triggered it, message and hint."""

    check: str
    severity: str
    metric: str
    first_step: int
    last_step: int
    value: float | None
    message: str
    hint: str
    #: the stretches of steps where the check held, as (first, last) pairs (the report highlights them; not part
    #: of the JSON output, whose shape is fixed)
    spans: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("spans")
        d["value"] = _json_number(self.value)
        return d


@dataclass(frozen=True)
class Skipped:
    """A check that could not be evaluated, and why (never silently passed)."""

    check: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    """A root cause and what it explains: the findings of one check (``primary`` first, then the same check on
    other metrics) and those of the checks it explains (declared with ``explains:`` in the rule files, followed
    transitively). Its severity is the worst among them."""

    check: str
    severity: str
    summary: str
    findings: tuple[Finding, ...]  # the primary check's own findings, earliest first
    explained: tuple[Finding, ...] = ()

    @property
    def primary(self) -> Finding:
        return self.findings[0]

    @property
    def explained_checks(self) -> list[str]:
        return list(dict.fromkeys(f.check for f in self.explained))

    def to_dict(self) -> dict[str, Any]:
        p = self.primary
        return {"check": self.check, "severity": self.severity, "summary": self.summary, "metric": p.metric,
                "first_step": p.first_step, "last_step": p.last_step, "value": _json_number(p.value),
                "message": p.message, "hint": p.hint, "metrics": [f.metric for f in self.findings],
                "explains": [{"check": f.check, "severity": f.severity, "metric": f.metric,
                              "first_step": f.first_step, "last_step": f.last_step, "message": f.message}
                             for f in self.explained]}


def diagnose(findings: Sequence[Finding], checks: Mapping[str, Check]) -> list[Diagnosis]:
    """Group findings under their root causes. A check that fired is a root cause unless a check that also fired
    explains it (``explains:``, transitively); its diagnosis takes the findings of every check it reaches that
    no earlier root cause took. Mutual explanations (a cycle) leave the check declared first as the root.
    Diagnoses are ordered by the severity of their root-cause finding (worst first), then by their worst
    severity, then by the step their evidence begins (causes come before their effects), then by how much they
    explain."""
    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        by_check.setdefault(f.check, []).append(f)
    fired = list(by_check)
    order = {cid: i for i, cid in enumerate(checks)}
    fired.sort(key=lambda c: order.get(c, len(order)))

    def reach(cid: str) -> list[str]:
        seen, todo = [], [cid]
        while todo:
            c = todo.pop(0)
            for e in (checks[c].explains if c in checks else ()):
                if e in by_check and e != cid and e not in seen:
                    seen.append(e)
                    todo.append(e)
        return seen

    reaches = {c: reach(c) for c in fired}
    # a root is not reached from any other fired check, or sits on a cycle with only later-declared checks
    roots = [c for c in fired if not any(c in reaches[o] and not (o in reaches[c] and order.get(o, 0) >
                                                                  order.get(c, 0)) for o in fired if o != c)]
    if not roots:  # unreachable, but never lose findings
        roots = fired[:1]
    taken: set[str] = set(roots)
    groups: list[tuple[str, list[str]]] = []
    # roots that explain more claim first, so a shared symptom goes to the broader cause
    for r in sorted(roots, key=lambda c: -len(reaches[c])):
        mine = [e for e in reaches[r] if e not in taken]
        taken.update(mine)
        groups.append((r, mine))
    leftover = [c for c in fired if c not in taken]  # on cycles without a root: their own diagnoses
    groups += [(c, []) for c in leftover]
    out = []
    for r, mine in groups:
        own = sorted(by_check[r], key=lambda f: (f.first_step, f.metric))
        expl = sorted((f for e in mine for f in by_check[e]), key=lambda f: (f.first_step, f.check, f.metric))
        worst = max((f.severity for f in own + expl), key=lambda s: _RANK[s])
        summary = checks[r].summary if r in checks else r
        out.append(Diagnosis(r, worst, summary, tuple(own), tuple(expl)))
    # a root cause that is itself an error outranks one that is a warning explaining an error (a divergence
    # before the dead units it left behind)
    out.sort(key=lambda d: (-_RANK[d.primary.severity], -_RANK[d.severity], d.primary.first_step,
                            -len(d.explained), d.check))
    return out


@dataclass
class CheckResult:
    """Findings, skipped checks and the ids of checks that ran and passed, with what the run says about itself:
    ``run_status`` (``meta["status"]``: see :data:`RUN_STATUSES`; ``"unknown"`` for a store that records none,
    ``None`` for series given as a mapping), ``run_info`` (``exception``, ``last_step``), ``measurement_errors``
    (the measurements that failed and were turned off during training) and ``n_series`` (series the run holds)."""

    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)
    run_status: str | None = None
    run_info: dict[str, Any] = field(default_factory=dict)
    measurement_errors: list[dict[str, Any]] = field(default_factory=list)
    n_series: int | None = None

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """The findings grouped under their root causes, the likeliest cause first (:func:`diagnose`)."""
        return diagnose(self.findings, self.checks)

    @property
    def status(self) -> str:
        """What the findings say: ``fail`` if any error fired, ``warn`` if any warning, else ``pass`` (info findings
        do not count). Whether the run could be judged at all is :meth:`not_judged`; :meth:`verdict` combines them."""
        sev = {f.severity for f in self.findings}
        return "fail" if "error" in sev else "warn" if "warning" in sev else "pass"

    @property
    def unfinished(self) -> bool:
        """The run recorded a status other than ``finished`` (still running or killed, interrupted, crashed)."""
        return self.run_status not in (None, "unknown", FINISHED)

    def run_line(self) -> str | None:
        """``crashed at step 11 (RuntimeError: boom)``: how the run ended, for the outputs (None without a run)."""
        if self.run_status is None:
            return None
        last = self.run_info.get("last_step")
        at = f" at step {last}" if last is not None else ""
        if self.run_status == "unknown":
            return f"status not recorded (the store was not written by DynamicsMonitor){at.replace(' at', ', last')}"
        if self.run_status == "unconfirmed":
            return (f"unconfirmed{at.replace(' at', ', last')}: the imported log does not say the training finished "
                    f"(import it with --finished if it did)")
        if self.run_status == "running":
            return (f"running{at}: still training, or its process was killed before it could record how it "
                    f"ended")
        exc = self.run_info.get("exception") or {}
        what = ""
        if exc:
            msg = str(exc.get("message") or "").strip()
            what = f" ({exc.get('type', 'exception')}{': ' + msg if msg else ''})"
        return f"{self.run_status}{at}{what}"

    def not_judged(self, allow_unfinished: bool = False) -> str | None:
        """Why the run cannot be judged (None when it can): it holds no series, no check was evaluated on enough
        evidence (every one skipped), or -- unless ``allow_unfinished`` -- it did not finish."""
        reasons = []
        if self.n_series == 0:
            reasons.append("the run holds no recorded series")
        elif not self.checks:
            reasons.append("no check was evaluated (the rule files define none, or all are disabled)")
        elif not self.passed and not self.findings:
            reasons.append(f"every check was skipped ({len(self.skipped)} of {len(self.checks)}): nothing was "
                           f"judged")
        if self.unfinished and not allow_unfinished:
            reasons.append(f"the run did not finish: {self.run_line()}")
        return "; ".join(reasons) or None

    def verdict(self, allow_unfinished: bool = False) -> str:
        """:attr:`status`, except that a run that cannot be judged (:meth:`not_judged`) is ``unjudged`` rather
        than ``pass``: the gate never passes what it could not judge."""
        status = self.status
        if status == "pass" and self.not_judged(allow_unfinished):
            return "unjudged"
        return status

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in SEVERITIES}
        for f in self.findings:
            out[f.severity] += 1
        return out

    def at_or_above(self, severity: str) -> list[Finding]:
        """Findings at or above ``severity`` (``error``, ``warning`` or ``info``)."""
        return [f for f in self.findings if _RANK[f.severity] >= _RANK[severity]]

    def to_dict(self, allow_unfinished: bool = False) -> dict[str, Any]:
        return {"status": self.verdict(allow_unfinished), "run_status": self.run_status,
                "not_judged": self.not_judged(allow_unfinished),
                "diagnoses": [d.to_dict() for d in self.diagnoses],
                "findings": [f.to_dict() for f in self.findings],
                "skipped": [s.to_dict() for s in self.skipped], "passed": list(self.passed),
                "measurement_errors": [_jsonable(e) for e in self.measurement_errors]}

    def to_json(self, allow_unfinished: bool = False, **kw: Any) -> str:
        return json.dumps(self.to_dict(allow_unfinished), allow_nan=False, **kw)


def _jsonable(v: Any) -> Any:
    """A value from the run's meta made safe for strict JSON (non-finite numbers spelled out)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return _json_number(v)
    return v


def _json_number(v: float | None) -> float | str | None:
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard (``*``, ``?``, ``[``): every match starts with it."""
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern


class SeriesSource:
    """Metric names and cached series from a :class:`~dyncheck.store.Run` or a mapping name -> (steps, values)."""

    def __init__(self, source: Any):
        self._src = source
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._matches: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
        if isinstance(source, Mapping):
            self.names = sorted(source)
        else:
            self.names = sorted(source.metrics())
        # where the run came from, for the reasons of checks skipped for want of a metric: the format of the log it
        # was imported from (``meta["import"]``) or the adapter that recorded it (``meta["trainer"]["framework"]``)
        meta = getattr(source, "meta", None) if not isinstance(source, Mapping) else None
        meta = meta if isinstance(meta, Mapping) else {}
        imported, trainer = meta.get("import"), meta.get("trainer")
        fmt = imported.get("format") if isinstance(imported, Mapping) else None
        self.log_format: str | None = fmt if isinstance(fmt, str) else None
        framework = trainer.get("framework") if isinstance(trainer, Mapping) else None
        self.framework: str | None = framework if isinstance(framework, str) else None

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._cache:
            if isinstance(self._src, Mapping):
                steps, values = self._src[name]
            else:
                s = self._src.series(name)
                steps, values = s.steps, s.values
            self._cache[name] = (np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=float))
        return self._cache[name]

    def match(self, patterns: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
        """The names matching one of ``patterns`` and none of ``exclude``, in name order. Each pattern is tried
        only on the names that start with its literal prefix (found by bisection in the sorted names: a run with
        a thousand sketch series ``traj/c<i>`` costs a check on ``grad_norm/*`` nothing), and results are cached
        per pattern list."""
        key = (tuple(patterns), tuple(exclude))
        hit = self._matches.get(key)
        if hit is None:
            names = self.names
            found: set[str] = set()
            for p in key[0]:
                pre = _literal_prefix(p)
                for i in range(bisect.bisect_left(names, pre), len(names)):
                    n = names[i]
                    if not n.startswith(pre):
                        break
                    if fnmatch.fnmatchcase(n, p):
                        found.add(n)
            hit = self._matches[key] = [n for n in names if n in found
                                        and not any(fnmatch.fnmatchcase(n, e) for e in key[1])]
        return list(hit)


# ----------------------------------------------------------------------------------------------------------------
# evidence: how much of a series a detector needs before it can fire at all
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """What a detector needs of a series (the aligned steps for pair and group detectors) before its silence is a
    verdict: ``points`` values (``finite``: counting finite ones only), the first of which that can fire is at
    index ``first`` (negative: from the end; ``-1``, only the last point), and ``why`` (the parameter that asks for
    it). With less the detector cannot fire at all (``scope: median`` is the one policy beyond that: it asks for
    3 values before it passes a series), so the check is skipped with the reason rather than passed; a finding
    is kept whatever the evidence."""

    points: int = 1
    first: int = 0
    finite: bool = False
    why: str = ""


def _p(params: Mapping[str, Any], key: str, default: int) -> int:
    v = params.get(key, default)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else default


def _threshold_evidence(p: Mapping[str, Any]) -> Evidence:
    scope = p.get("scope", "each")
    if scope == "median":
        return Evidence(3, -1, True, "scope: median takes at least 3")
    return Evidence(1, -1 if scope == "last" else 0)


def _spike_evidence(p: Mapping[str, Any]) -> Evidence:
    h = _p(p, "min_history", 5)
    return Evidence(h + 2, h, False, f"min_history: {h} points before the jump and one after it")


def _min_points(name: str, default: int, *, first: str = "start", finite: bool = False) -> Callable[..., Evidence]:
    def need(p: Mapping[str, Any]) -> Evidence:
        n = max(1, _p(p, "min_points", default))
        at = {"start": 0, "end": -1, "last_needed": n - 1}[first]
        return Evidence(n, at, finite, f"min_points: {n} of the {name} detector")
    return need


def _trend_evidence(p: Mapping[str, Any]) -> Evidence:
    w = max(1, _p(p, "window", 50))
    return Evidence(2 * w, 2 * w - 1, False, f"two windows of {w} points (window: {w})")


def _opposite_evidence(p: Mapping[str, Any]) -> Evidence:
    n = max(_p(p, "min_points", 3), _p(p, "min_run", 1) + 1)
    return Evidence(n, 1, False, "min_points / min_run of the opposite_trends detector")


#: per detector, the evidence it needs given its parameters (:class:`Evidence`); a detector not listed needs one
#: point. Declared beside the engine, which is what decides "skipped" over "passed".
EVIDENCE: dict[str, Callable[[Mapping[str, Any]], Evidence]] = {
    "threshold": _threshold_evidence,
    "nonfinite": lambda p: Evidence(1),
    "spike": _spike_evidence,
    "divergence": _min_points("divergence", 10, first="last_needed"),
    "growth": _min_points("growth", 5),
    "no_progress": _min_points("no_progress", 10, first="end", finite=True),
    "plateau": lambda p: Evidence(max(3, _p(p, "min_points", 20)), 0, True,
                                  f"min_points: {max(3, _p(p, 'min_points', 20))} of the plateau detector"),
    "collapse": lambda p: Evidence(3, 0, False, "3 points to see a fall from a peak that stays"),
    "improves_later": _min_points("improves_later", 4, finite=True),
    "present": lambda p: Evidence(1, -1),
    "absent": lambda p: Evidence(1, -1),
    "step_change": lambda p: Evidence(2, 1, False, "two points to see a change"),
    "trend": _trend_evidence,
    "ratio": lambda p: Evidence(1),
    "opposite_trends": _opposite_evidence,
    "spread": lambda p: Evidence(1),
    "oscillation": _trend_evidence,  # like trend: two windows of history before it can judge
}


def evidence_needed(detector: str, params: Mapping[str, Any]) -> Evidence:
    """The :class:`Evidence` ``detector`` needs with ``params``."""
    fn = EVIDENCE.get(detector)
    return fn(params) if fn is not None else Evidence()


def _plural_points(n: int, finite: bool = False) -> str:
    return f"{n} {'finite ' if finite else ''}point{'' if n == 1 else 's'}"


def _shortfall(check: Check, label: str, steps: np.ndarray, values: np.ndarray | None, span: tuple[int, int],
               *, cut: bool = False) -> str | None:
    """Why ``check`` could never fire on this series (``steps``, ``values``; ``cut``: already cut to after the
    warm-up), or None when it could: too few points for its detector, none after its warm-up, or too short a
    stretch for its ``for:``."""
    ev = evidence_needed(check.detector, check.params)
    ws = _warm_start(check, span)
    steps = np.asarray(steps)
    has = steps.size
    if ev.finite and values is not None:
        has = int(np.isfinite(np.asarray(values, dtype=float)).sum())
    after = f" after the warm-up (from step {ws})" if cut and ws > span[0] else ""
    until = _until_end(check, span)
    if until < math.inf:  # the series was cut at ``until``
        shown = (f"{check.until_share * 100:g}% of the run" if check.until_share is not None
                 else f"{check.until_steps} steps")
        after += f" in the first {shown} (until, to step {int(until)})"
    if has < ev.points:
        why = f" ({ev.why})" if ev.why else ""
        return f"{_plural_points(has, has < steps.size)} of {label}{after}, needs {ev.points}{why}"
    i0 = int(np.searchsorted(steps, ws, side="left"))
    if i0 >= steps.size:
        last = "at" if steps.size == 1 else "the last at"
        return (f"no point of {label} after the warm-up (from step {ws}): {_plural_points(steps.size)}, {last} "
                f"step {int(steps[-1])}")
    if check.for_steps > 1:
        first = max(i0, ev.first if ev.first >= 0 else steps.size + ev.first)
        spacing = float(np.median(np.diff(steps))) if steps.size > 1 else 1.0
        longest = float(steps[-1]) + spacing - float(steps[first])
        if longest < check.for_steps:
            return (f"{label} can hold for at most {longest:g} steps (step {int(steps[first])} on, "
                    f"{_plural_points(steps.size - first)}), needs {check.for_steps} (for: {check.for_steps})")
    return None


def _condition_unjudged(cond: Condition, src: "SeriesSource") -> str | None:
    """Why a ``when:`` condition cannot be judged on this run (None when it can): a companion metric that was
    not recorded, or recorded too briefly for its detector. ``present`` and ``absent`` are always judged (a missing
    metric is their answer)."""
    if cond.all:
        return next((r for r in (_condition_unjudged(c, src) for c in cond.all) if r), None)
    if cond.any:
        reasons = [_condition_unjudged(c, src) for c in cond.any]
        return None if not all(reasons) else "; ".join(r for r in reasons if r)
    if cond.detector in ("present", "absent"):
        return None
    ev = evidence_needed(cond.detector, cond.params)
    det = DETECTORS[cond.detector]
    if cond.pair is not None:
        found = [src.match([p], cond.exclude) for p in cond.pair]
        if not all(found):
            return f"no recorded metric matches {' and '.join(p for p, f in zip(cond.pair, found) if not f)}"
        steps, _, _, _ = det.fn(src.get(found[0][0]), src.get(found[1][0]), **cond.params)
        n = int(np.asarray(steps).size)
        if n >= ev.points:
            return None
        return f"{_plural_points(n)} of {found[0][0]} and {found[1][0]}, needs {ev.points}"
    names = src.match(cond.metrics, cond.exclude)
    if not names:
        return f"no recorded metric matches {', '.join(cond.metrics)}"
    best = 0
    for n in names:
        s, v = src.get(n)
        has = int(np.isfinite(v).sum()) if ev.finite else int(s.size)
        if has >= ev.points:
            return None
        best = max(best, has)
    label = names[0] if len(names) == 1 else f"{', '.join(cond.metrics)} ({len(names)} series)"
    return f"{_plural_points(best)} of {label}, needs {ev.points}" + (f" ({ev.why})" if ev.why else "")


def _blocked_unjudged(check: Check, label: str, steps: np.ndarray, mask: np.ndarray, span: tuple[int, int],
                      src: "SeriesSource") -> str | None:
    """For a check that did not fire: why that is no verdict -- its detector flagged the series but a ``when:``
    condition that could not be judged held it back (the judged conditions alone would have let it fire).
    None when the check was judged."""
    if not check.when or not mask.any():
        return None
    unjudged = [(c, r) for c in check.when if (r := _condition_unjudged(c, src))]
    if not unjudged:
        return None
    m = mask & (steps >= _warm_start(check, span))
    if not held_for(steps, m, check.for_steps).any():
        return None
    blocked = {id(c) for c, _ in unjudged}
    for cond in check.when:
        if id(cond) not in blocked and m.any():
            m &= _condition_mask(cond, steps, src, span)
    for cond in check.unless:
        if m.any():
            m &= ~_condition_mask(cond, steps, src, span)
    held = held_for(steps, m, check.for_steps)
    if not held.any():
        return None
    at = int(steps[np.flatnonzero(held)[0]])
    return (f"its detector flagged {label} at step {at}, but a 'when' condition could not be judged: "
            f"{unjudged[0][1]}")


# ----------------------------------------------------------------------------------------------------------------
def _warm_start(check: Check, run_span: tuple[int, int]) -> int:
    """The first step a check may fire at: warm-up steps, or a share of the run's span, after its start."""
    lo, hi = run_span
    return lo + max(check.warmup_steps, int(math.ceil(check.warmup_share * (hi - lo))))


def _until_end(check: Check, run_span: tuple[int, int]) -> float:
    """The last step a check may fire at: ``until`` steps, or a share of the run's span, after its start."""
    lo, hi = run_span
    if check.until_share is not None:
        return lo + check.until_share * (hi - lo)
    return lo + check.until_steps if check.until_steps is not None else math.inf


def _fired(check: Check, steps: np.ndarray, mask: np.ndarray, span: tuple[int, int],
           src: "SeriesSource | None" = None) -> np.ndarray:
    """Where the check fires: the condition, where its ``when`` conditions hold and none of its ``unless`` ones,
    outside warm-up and before ``until``, held for ``for`` steps."""
    mask = mask & (steps >= _warm_start(check, span)) & (steps <= _until_end(check, span))
    if src is not None and mask.any():
        for cond in check.when:
            mask &= _condition_mask(cond, steps, src, span)
        for cond in check.unless:
            if not mask.any():
                break
            mask &= ~_condition_mask(cond, steps, src, span)
    return held_for(steps, mask, check.for_steps)


def _condition_mask(cond: Condition, at: np.ndarray, src: "SeriesSource", span: tuple[int, int]) -> np.ndarray:
    """Whether ``cond`` holds at each of the steps ``at`` (see :class:`~dyncheck.checks.rules.Condition`)."""
    if cond.all:
        out = np.ones(at.size, bool)
        for part in cond.all:
            out &= _condition_mask(part, at, src, span)
        return out
    if cond.any:
        out = np.zeros(at.size, bool)
        for part in cond.any:
            out |= _condition_mask(part, at, src, span)
        return out
    if cond.detector == "absent":  # holds everywhere when no series matches (with a finite value), else nowhere
        recorded = any(np.isfinite(src.get(n)[1]).any() for n in src.match(cond.metrics, cond.exclude))
        return np.full(at.size, not recorded)
    det = DETECTORS[cond.detector]
    out = np.zeros(at.size, bool)
    whole = det.whole_run or cond.params.get("scope") in ("last", "median", "first", "min", "max")
    for s, mask in _condition_series(cond, det, src):
        if s.size == 0:
            continue
        if whole:
            if mask.any():
                return np.ones(at.size, bool)
            continue
        if cond.within > 0:
            true_steps = s[mask]
            lo = np.searchsorted(true_steps, at - cond.within, side="left")
            hi = np.searchsorted(true_steps, at + cond.within, side="right")
            out |= hi > lo
        else:
            idx = np.searchsorted(s, at, side="right") - 1
            out |= (idx >= 0) & mask[np.maximum(idx, 0)]
    return out


def _condition_series(cond: Condition, det: Any, src: "SeriesSource"):
    """(steps, mask) of the condition's detector on each matching series, or on its pair (the first match of
    each side; a side that is missing: no series, the condition does not hold)."""
    if cond.pair is not None:
        found = [src.match([p], cond.exclude) for p in cond.pair]
        if all(found):
            steps, mask, _, _ = det.fn(src.get(found[0][0]), src.get(found[1][0]), **cond.params)
            yield np.asarray(steps), mask
        return
    for name in src.match(cond.metrics, cond.exclude):
        s, v = src.get(name)
        if s.size == 0:
            continue
        mask, _, _ = det.fn(s, v, metric=name, **cond.params)
        yield s, mask


def _cut(steps: np.ndarray, values: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    i = int(np.searchsorted(steps, start, side="left"))
    return steps[i:], values[i:]


def _message(check: Check, fields: dict[str, Any]) -> str:
    """The finding's message: the check's template with ``fields`` (validated when the rule file was loaded;
    formatted safely here -- no attribute or index access, bounded widths, a spec that does not fit the value
    shows it plainly, a field the detector did not give stays as written)."""
    if not check.message:
        return f"{check.summary} ({fields['metric']}, step {fields['step']})"
    return render_message(check.message, fields)


def _finding(check: Check, metric: str, steps: np.ndarray, fired: np.ndarray, value: np.ndarray,
             extra: Mapping[str, Any], names: Sequence[str] | None = None) -> Finding | None:
    idx = np.flatnonzero(fired)
    if idx.size == 0:
        return None
    i = int(idx[0])
    v = float(value[i]) if value.size else float("nan")
    first, last = int(steps[i]), int(steps[idx[-1]])
    fields: dict[str, Any] = {"value": v, "step": first, "first_step": first, "last_step": last,
                              "steps": f"step {first}" if first == last else f"steps {first}-{last}",
                              "metric": metric, "check": check.id, "points": int(idx.size)}
    for k, arr in extra.items():
        a = np.asarray(arr)
        if names is not None and k in ("lowest", "highest"):
            fields[k] = names[int(a[i])]
        elif a.shape == value.shape:
            fields[k] = float(a[i])
    if names is not None and "lowest" in fields:
        metric = fields["lowest"]
        fields["metric"] = metric
    return Finding(check.id, check.severity, metric, int(steps[i]), int(steps[idx[-1]]), v,
                   _message(check, fields), check.hint, spans=_spans(steps, fired))


def _spans(steps: np.ndarray, fired: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Runs of consecutive fired points as (first step, last step)."""
    d = np.diff(np.concatenate([[0], fired.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1
    return tuple((int(steps[a]), int(steps[b])) for a, b in zip(starts, stops))


def _evaluate_check(check: Check, src: SeriesSource, span: tuple[int, int]) -> list[Finding] | Skipped:
    """The check's findings; an empty list when it was judged and did not fire; :class:`Skipped` with the reason
    when it could not be judged: its metrics were not recorded, or too little of them for its detector, its
    warm-up or its ``for:`` (:func:`_shortfall`), or a ``when:`` condition could not be judged. A finding is
    never dropped for lack of evidence: evidence only decides between "passed" and "skipped"."""
    det = DETECTORS[check.detector]
    params = check.params
    if det.kind == "pair":
        assert check.pair is not None
        found = [src.match([p], check.exclude) for p in check.pair]
        missing = [p for p, f in zip(check.pair, found) if not f]
        if missing:
            return Skipped(check.id, _missing_reason(missing, src))
        (a_name,), (b_name,) = found[0][:1], found[1][:1]
        steps, mask, value, extra = det.fn(src.get(a_name), src.get(b_name), **params)
        steps, mask = np.asarray(steps), np.asarray(mask, bool)
        f = _finding(check, b_name, steps, _fired(check, steps, mask, span, src), value, extra)
        if f:
            return [f]
        label = f"{a_name} and {b_name} (steps both have)" if not params.get("between") else b_name
        why = _shortfall(check, label, steps, None, span) or _blocked_unjudged(check, label, steps, mask, span,
                                                                                 src)
        return Skipped(check.id, why) if why else []
    names = src.match(check.metrics, check.exclude)
    if not names:
        return Skipped(check.id, _missing_reason(check.metrics, src))
    group_label = names[0] if len(names) == 1 else f"{', '.join(check.metrics)} ({len(names)} series)"
    if det.kind == "group":
        series = [(n, *src.get(n)) for n in names]
        steps, mask, value, extra = det.fn(series, **params)
        if steps.size == 0 and len(series) < params.get("min_series", 1):
            return Skipped(check.id, f"needs at least {params.get('min_series')} series matching "
                                     f"{', '.join(check.metrics)}; found {len(series)}")
        steps, mask = np.asarray(steps), np.asarray(mask, bool)
        f = _finding(check, check.metrics[0], steps, _fired(check, steps, mask, span, src), value, extra, names=names)
        if f:
            return [f]
        label = f"{group_label}, at steps they share" if len(names) > 1 else group_label
        why = _shortfall(check, label, steps, None, span) or _blocked_unjudged(check, label, steps, mask, span, src)
        return Skipped(check.id, why) if why else []
    out: list[Finding] = []
    whole = is_whole_run(check)
    judged = False
    short: list[tuple[int, str, np.ndarray, np.ndarray]] = []  # (points, name, steps, values) not judged
    blocked: list[str] = []
    until = _until_end(check, span)
    for n in names:
        s, v = src.get(n)
        if whole:  # the verdict is on the run after warm-up; other detectors see the warm-up as history
            s, v = _cut(s, v, _warm_start(check, span))
        if until < math.inf and s.size and s[-1] > until:  # ``until``: the detector sees the series up to there
            keep = int(np.searchsorted(s, until, side="right"))
            s, v = s[:keep], v[:keep]
        if s.size == 0:
            short.append((0, n, s, v))
            continue
        mask, value, extra = det.fn(s, v, metric=n, **params)
        f = _finding(check, n, s, _fired(check, s, mask, span, src), value, extra)
        if f:
            out.append(f)
            continue
        if judged:  # one series judged is enough for "passed"; the others need no more work
            continue
        if _shortfall(check, n, s, v, span, cut=whole) is not None:
            short.append((int(s.size), n, s, v))
            continue
        why = _blocked_unjudged(check, n, s, np.asarray(mask, bool), span, src)
        if why:
            blocked.append(why)
        else:
            judged = True
    if out or judged:
        return out
    if blocked:
        return Skipped(check.id, blocked[0])
    _, n, s, v = max(short, key=lambda t: t[0])
    return Skipped(check.id, _shortfall(check, group_label if len(names) > 1 else n, s, v, span, cut=whole)
                   or f"not enough of {group_label} to judge")


#: how to record a validation loss, by the run's ``meta["trainer"]["framework"]`` (Lightning's by default)
_VAL_LOSS_LIGHTNING = "log 'val_loss', or pass DynamicsMonitor(val_loss_key=...)"
_VAL_LOSS_HOW = {"plain loop": "call mon.log_val(loss) after each validation",
                 "transformers.Trainer": "give the Trainer an eval_dataset and an eval_strategy"}


def _missing_reason(patterns: Sequence[str], src: SeriesSource) -> str:
    """Why nothing matches: the likeliest cause, judged from what the run did record and what recorded it."""
    pats = ", ".join(patterns)
    if src.log_format is not None:  # another tool's log: the monitor's options below never applied
        return (f"no recorded metric matches {pats}: the imported log ({src.log_format}) has no such series (a "
                f"mapping file can map one of its names onto it)")
    has = lambda prefix: any(n.startswith(prefix) for n in src.names)  # noqa: E731
    if any(p.startswith("loss/val") for p in patterns):
        why = f"the module logs no validation loss ({_VAL_LOSS_HOW.get(src.framework, _VAL_LOSS_LIGHTNING)})"
    elif any(p.startswith("sharpness/threshold") for p in patterns) and has("sharpness/top_eig"):
        why = "the optimizer has no known stability threshold (2/lr is defined for SGD and momentum, not Adam)"
    elif any(p.startswith("sharpness/") for p in patterns):
        why = ("sharpness was not measured: sharpness_budget=0 or sharpness_every_n_steps=0, no probe batch (a "
               "plain loop needs probe_batch and sharpness_loss_fn), or a run too short or too slow per step for "
               "its time budget (runs under 200 steps may get no probe)")
    elif any(p.startswith(("noise/", "batch/size")) for p in patterns) and has("noise/"):
        why = ("the smoothed |G|² never came out positive, so B_simple is undefined (the gradient noise scale is "
               "far above the batch size, or the batches are not drawn at random)")
    elif any(p.startswith(("noise/", "batch/size")) for p in patterns):
        why = ("the gradient noise scale was not measured: noise_budget=0 or noise_every_n_steps=0, a batch "
               "without a leading batch dimension, or no probe loss (a plain loop needs probe_batch and "
               "sharpness_loss_fn)")
    elif any(p.startswith("act/saturated") for p in patterns) and has("act/"):
        why = "the model has no sigmoid/tanh-like modules (saturation applies to those only)"
    elif any(p.startswith("act/") for p in patterns):
        why = "activation statistics were not recorded (activations_every_n_steps=0, or no module matched)"
    elif any(p.split("/")[0] in ("grad_norm", "update_ratio", "weight_unchanged", "weight_norm") for p in patterns):
        why = "per-layer statistics were not recorded (is the run shorter than every_n_steps?)"
    else:
        why = "not recorded in this run"
    return f"no recorded metric matches {pats}: {why}"


def is_whole_run(check: Check) -> bool:
    """A check that gives one verdict over the whole run (no progress, plateau, median or last value)."""
    return DETECTORS[check.detector].whole_run or check.params.get("scope") in ("last", "median")


def evaluate(run: Any, rules: RuleSet | str | Sequence[str] | None = "default", *, final: bool = True,
             on_check: Callable[[Check, list[Finding] | Skipped], None] | None = None) -> CheckResult:
    """Evaluate ``rules`` (a :class:`RuleSet`, or sources for :func:`load_rules`) on ``run``: a
    :class:`~dyncheck.store.Run`, a path to one, or a mapping metric name -> (steps, values). ``final=False``
    (live, during training) leaves out the checks that judge the whole run (:func:`is_whole_run`)."""
    if isinstance(rules, RuleSet):
        ruleset = rules
    else:
        ruleset = load_rules(rules if rules is not None else "default")
    if isinstance(run, (str, bytes)) or hasattr(run, "__fspath__"):
        from ..store import open_run

        with open_run(run) as opened:
            return evaluate(opened, ruleset, final=final, on_check=on_check)
    src = SeriesSource(run)
    span = _run_span(src)
    checks = [c for c in ruleset if final or not is_whole_run(c)]
    result = CheckResult(checks={c.id: c for c in checks}, n_series=len(src.names))
    meta = getattr(run, "meta", None) if not isinstance(run, Mapping) else None
    if isinstance(meta, Mapping):
        status = meta.get("status")
        result.run_status = status if isinstance(status, str) and status else "unknown"
        result.run_info = {"last_step": span[1] if src.names else None}
        if isinstance(meta.get("exception"), Mapping):
            result.run_info["exception"] = dict(meta["exception"])
        errors = meta.get("measurement_errors")
        if isinstance(errors, list):
            result.measurement_errors = [e if isinstance(e, dict) else {"message": str(e)} for e in errors]
    for check in checks:
        outcome = _evaluate_check(check, src, span)
        if isinstance(outcome, Skipped) and result.measurement_errors:
            outcome = _failed_measurement_reason(check, outcome, result.measurement_errors)
        if isinstance(outcome, Skipped) and isinstance(meta, Mapping) and "activations" in meta:
            outcome = Skipped(outcome.check, activation_gap_reason(check.patterns, outcome.reason, meta))
        if on_check is not None:
            on_check(check, outcome)
        if isinstance(outcome, Skipped):
            result.skipped.append(outcome)
        elif outcome:
            result.findings.extend(outcome)
        else:
            result.passed.append(check.id)
    result.findings.sort(key=lambda f: (-_RANK[f.severity], f.first_step, f.check, f.metric))
    return result


#: the measurement (``measurement_errors[].measurement``) behind each metric family a check may read
_MEASURED_BY = {"sharpness/": "sharpness", "act/": "activations", "lr/": "lr", "weight_unchanged/": "weight_unchanged"}


def _failed_measurement_reason(check: Check, skipped: Skipped, errors: Sequence[Mapping[str, Any]]) -> Skipped:
    """A check skipped because a measurement it reads failed during training and was turned off says so (not that
    the run was too short or the option was off): the measurement, the step and the error."""
    wanted = {m for pat in check.patterns for prefix, m in _MEASURED_BY.items() if pat.startswith(prefix)}
    for e in errors:
        if e.get("measurement") in wanted and "metric" not in e and "layer" not in e:  # the whole measurement off
            step = e.get("step")
            at = f" at step {step}" if isinstance(step, int) else ""
            return Skipped(skipped.check, f"{e['measurement']} failed{at} and was turned off for the rest of the run "
                                          f"({e.get('error', 'error')}: {str(e.get('message', ''))[:400]}); see the "
                                          f"run's meta 'measurement_errors'")
    return skipped


def _run_span(src: SeriesSource) -> tuple[int, int]:
    """First and last step of the run, from the training loss when recorded (else from all series)."""
    names = ["loss/train"] if "loss/train" in src.names else src.names
    lo, hi = None, None
    for n in names:
        s, _ = src.get(n)
        if s.size:
            lo = int(s[0]) if lo is None else min(lo, int(s[0]))
            hi = int(s[-1]) if hi is None else max(hi, int(s[-1]))
    return (lo or 0, hi or 0)

