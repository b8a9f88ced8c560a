"""Evaluation: checks x recorded series -> findings. Vectorised numpy; reads a run only through the store's reader
API (or any mapping of metric name -> (steps, values)), so it works after training, live, or from an artifact."""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .detectors import DETECTORS, held_for
from .rules import SEVERITIES, Check, Condition, RuleSet, load_rules

__all__ = ["Finding", "Skipped", "Diagnosis", "CheckResult", "diagnose", "evaluate", "SeriesSource"]

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
    """Findings, skipped checks and the ids of checks that ran and passed."""

    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def diagnoses(self) -> list[Diagnosis]:
        """The findings grouped under their root causes, the likeliest cause first (:func:`diagnose`)."""
        return diagnose(self.findings, self.checks)

    @property
    def status(self) -> str:
        """``fail`` if any error fired, ``warn`` if any warning, else ``pass`` (info findings do not count)."""
        sev = {f.severity for f in self.findings}
        return "fail" if "error" in sev else "warn" if "warning" in sev else "pass"

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in SEVERITIES}
        for f in self.findings:
            out[f.severity] += 1
        return out

    def at_or_above(self, severity: str) -> list[Finding]:
        """Findings at or above ``severity`` (``error``, ``warning`` or ``info``)."""
        return [f for f in self.findings if _RANK[f.severity] >= _RANK[severity]]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "diagnoses": [d.to_dict() for d in self.diagnoses],
                "findings": [f.to_dict() for f in self.findings],
                "skipped": [s.to_dict() for s in self.skipped], "passed": list(self.passed)}

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)


def _json_number(v: float | None) -> float | str | None:
    if v is None:
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


class SeriesSource:
    """Metric names and cached series from a :class:`~dyncheck.store.Run` or a mapping name -> (steps, values)."""

    def __init__(self, source: Any):
        self._src = source
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if isinstance(source, Mapping):
            self.names = sorted(source)
        else:
            self.names = sorted(source.metrics())

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
        pats, excl = list(patterns), list(exclude)
        return [n for n in self.names
                if any(fnmatch.fnmatchcase(n, p) for p in pats) and not any(fnmatch.fnmatchcase(n, e) for e in excl)]


# ----------------------------------------------------------------------------------------------------------------
def _warm_start(check: Check, run_span: tuple[int, int]) -> int:
    """The first step a check may fire at: warm-up steps, or a share of the run's span, after its start."""
    lo, hi = run_span
    return lo + max(check.warmup_steps, int(math.ceil(check.warmup_share * (hi - lo))))


def _fired(check: Check, steps: np.ndarray, mask: np.ndarray, span: tuple[int, int],
           src: "SeriesSource | None" = None) -> np.ndarray:
    """Where the check fires: the condition, where its ``when`` conditions hold and none of its ``unless`` ones,
    outside warm-up, held for ``for`` steps."""
    mask = mask & (steps >= _warm_start(check, span))
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
    det = DETECTORS[cond.detector]
    out = np.zeros(at.size, bool)
    whole = det.whole_run or cond.params.get("scope") in ("last", "median")
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


class _Format(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _message(check: Check, fields: dict[str, Any]) -> str:
    if not check.message:
        return f"{check.summary} ({fields['metric']}, step {fields['step']})"
    try:
        return check.message.format_map(_Format(fields))
    except (ValueError, TypeError):  # e.g. a number format applied to a name; keep the raw template
        return check.message


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
    det = DETECTORS[check.detector]
    params = check.params
    if det.kind == "pair":
        assert check.pair is not None
        found = [src.match([p], check.exclude) for p in check.pair]
        missing = [p for p, f in zip(check.pair, found) if not f]
        if missing:
            return Skipped(check.id, _missing_reason(missing, src.names))
        (a_name,), (b_name,) = found[0][:1], found[1][:1]
        steps, mask, value, extra = det.fn(src.get(a_name), src.get(b_name), **params)
        f = _finding(check, b_name, steps, _fired(check, steps, mask, span, src), value, extra)
        return [f] if f else []
    names = src.match(check.metrics, check.exclude)
    if not names:
        return Skipped(check.id, _missing_reason(check.metrics, src.names))
    if det.kind == "group":
        series = [(n, *src.get(n)) for n in names]
        steps, mask, value, extra = det.fn(series, **params)
        if steps.size == 0 and len(series) < params.get("min_series", 1):
            return Skipped(check.id, f"needs at least {params.get('min_series')} series matching "
                                     f"{', '.join(check.metrics)}; found {len(series)}")
        f = _finding(check, check.metrics[0], steps, _fired(check, steps, mask, span, src), value, extra, names=names)
        return [f] if f else []
    out: list[Finding] = []
    whole = is_whole_run(check)
    for n in names:
        s, v = src.get(n)
        if whole:  # the verdict is on the run after warm-up; other detectors see the warm-up as history
            s, v = _cut(s, v, _warm_start(check, span))
        if s.size == 0:
            continue
        mask, value, extra = det.fn(s, v, metric=n, **params)
        f = _finding(check, n, s, _fired(check, s, mask, span, src), value, extra)
        if f:
            out.append(f)
    return out


def _missing_reason(patterns: Sequence[str], names: Sequence[str]) -> str:
    """Why nothing matches: the likeliest cause, judged from what the run did record."""
    pats = ", ".join(patterns)
    has = lambda prefix: any(n.startswith(prefix) for n in names)  # noqa: E731
    if any(p.startswith("loss/val") for p in patterns):
        why = "the module logs no validation loss (log 'val_loss', or pass DynamicsMonitor(val_loss_key=...))"
    elif any(p.startswith("sharpness/threshold") for p in patterns) and has("sharpness/top_eig"):
        why = "the optimizer has no known stability threshold (2/lr is defined for SGD and momentum, not Adam)"
    elif any(p.startswith("sharpness/") for p in patterns):
        why = ("sharpness was not measured: the run was too short for the time budget (about 1000 steps at the "
               "default sharpness_budget), or sharpness_budget=0 / sharpness_every_n_steps=0")
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
    result = CheckResult(checks={c.id: c for c in checks})
    for check in checks:
        outcome = _evaluate_check(check, src, span)
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

