"""Baselines: summarise a run as a few robust quantities, store them as YAML beside a test, compare a new run.

A quantity is a number with a direction (``lower`` or ``higher`` is better) and a tolerance. Comparison is
one-sided: only a change in the worse direction beyond the tolerance is a regression; a change in the better
direction passes and is reported as an improvement. Training is noisy, so every quantity is robust to single steps
(medians and means over many steps, in log space for losses) and tolerances are relative (a ratio for losses, an
absolute share for dead units). A baseline built from several runs (seeds) widens each tolerance to at least 3x the
spread it saw across them.

Findings are compared too: a check (warning or error) that fires now but did not in the baseline is a regression.

Trajectories (:mod:`dyncheck.trajectory`): the baseline also holds a band per tracked series (training and
validation loss, gradient norm, the per-layer gradient profile, sharpness) on a common step grid, and when the
training loss's first phase ended; a run whose loss stays above its band for a sustained span regresses even when
its end values pass (slower early learning that ends at the same loss). Files without a ``trajectories`` section
(written before) load and compare as before.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .checks.engine import _json_number
from .errors import BaselineRefused, ConfigError
from .trajectory import CELLS, MAX_CELLS, MIN_CELLS, POLICIES, SERIES, Band, PhaseTiming, TrajRow

__all__ = ["Quantity", "Baseline", "Row", "Comparison", "summarize", "make_baseline", "load_baseline",
           "compare", "format_comparison", "format_comparison_junit", "QUANTITIES", "BASELINE_VERSION",
           "BaselineRefused"]

BASELINE_VERSION = 1


@dataclass(frozen=True)
class Spec:
    """How a quantity is measured and judged: direction, tolerance kind (``ratio``: obtained/baseline may grow by
    this factor in the worse direction; ``abs``: by this much) and its default."""

    name: str
    better: str  # lower | higher
    kind: str  # ratio | abs
    tolerance: float
    doc: str


#: the quantities a baseline holds, with default tolerances. Set from seed-to-seed spread: over seeds 1-9 of the
#: example model against seed 0 the worst ratios were 1.45 (final), 1.23 (mean), 1.38 (val final), 1.41 (val best);
#: benchmarks/baseline_sensitivity.py measures them.
QUANTITIES: dict[str, Spec] = {s.name: s for s in (
    Spec("loss/train.final", "lower", "ratio", 1.75,
         "training loss at the end: geometric mean of the last 25% of steps"),
    Spec("loss/train.mean", "lower", "ratio", 1.4,
         "geometric mean of the training loss over the whole run (how fast it learned)"),
    Spec("loss/val.final", "lower", "ratio", 1.6, "validation loss at the end: geometric mean of the last 3 values"),
    Spec("loss/val.best", "lower", "ratio", 1.6, "lowest validation loss"),
    Spec("act/dead.max", "lower", "abs", 0.2,
         "largest share of dead units of any module, median over the second half of the run"),
)}

_FINAL_SHARE = 0.25


def _geomean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    if np.all(v > 0):
        return float(np.exp(np.mean(np.log(v))))
    return float(np.mean(v))


def summarize(run: Any) -> dict[str, float]:
    """The baseline quantities of a run (a :class:`~dyncheck.store.Run`); quantities whose metrics were not
    recorded are left out. A loss that went non-finite counts as infinitely bad."""
    names = set(run.metrics())
    out: dict[str, float] = {}
    if "loss/train" in names:
        v = run.series("loss/train").values
        if v.size:
            tail = v[-max(1, int(math.ceil(_FINAL_SHARE * v.size))):]
            out["loss/train.final"] = float("inf") if not np.all(np.isfinite(tail)) else _geomean(tail)
            out["loss/train.mean"] = float("inf") if not np.all(np.isfinite(v)) else _geomean(v)
    if "loss/val" in names:
        v = run.series("loss/val").values
        if v.size:
            out["loss/val.final"] = float("inf") if not np.all(np.isfinite(v[-3:])) else _geomean(v[-3:])
            fin = v[np.isfinite(v)]
            out["loss/val.best"] = float(fin.min()) if fin.size else float("inf")
    dead = [n for n in names if n.startswith("act/dead/")]
    if dead:
        meds = []
        for n in dead:
            v = run.series(n).values
            half = v[v.size // 2:]
            half = half[np.isfinite(half)]
            if half.size:
                meds.append(float(np.median(half)))
        if meds:
            out["act/dead.max"] = max(meds)
    return out


@dataclass
class Quantity:
    value: float
    better: str
    kind: str
    tolerance: float
    spread: float | None = None  # across the runs the baseline was built from (log units for ratios)
    doc: str = ""


@dataclass
class Baseline:
    quantities: dict[str, Quantity]
    findings: list[str]  # check ids (warning or error) that fired in the baseline run(s)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: series name -> band (empty for a baseline without trajectories); the training loss's first phase end
    trajectories: dict[str, Band] = field(default_factory=dict)
    phases: PhaseTiming | None = None

    def to_yaml(self) -> str:
        import yaml

        doc = {
            "dyncheck_baseline": BASELINE_VERSION,
            "created": self.info.get("created"),
            "runs": self.info.get("runs", []),
            "quantities": {
                name: {k: v for k, v in (("value", _num(q.value)), ("better", q.better),
                                          (q.kind, _num(q.tolerance)), ("spread", _num(q.spread)))
                       if v is not None}
                for name, q in self.quantities.items()},
            "findings": sorted(self.findings),
        }
        header = ("# dyncheck baseline: the run's dynamics a test compares against (dyncheck compare, pytest "
                  "--dyncheck-update-baselines).\n# Each quantity: value, which way is better, and its tolerance: "
                  "'ratio' (may get this many times worse) or 'abs' (by this much).\n# Edit a tolerance to "
                  "loosen or tighten a comparison; 'findings' are the checks that fired and may fire again.\n")
        if self.trajectories:
            doc["trajectories"] = {name: _band_doc(b) for name, b in self.trajectories.items()}
            header += ("# trajectories: a band (lo, hi per cell of the steps first..last) per series; a run out of "
                       "it for 'span' of the\n# cells in a row fails when 'fail' says so (above, below, either, "
                       "never); 'widen' loosens a band (a ratio\n# for log series, an amount otherwise).\n")
        if self.phases is not None:
            doc["phases"] = {"first": self.phases.first, "end": _num(self.phases.end),
                             "runs": _Flow(int(r) for r in self.phases.runs)}
        return header + yaml.dump(doc, Dumper=_dumper(), sort_keys=False, default_flow_style=False, width=100)


class _Flow(list):
    """A list written on wrapped lines ([a, b, ...]): a band's hundreds of numbers stay a few lines."""


_DUMPER: list[type] = []


def _dumper() -> type:
    """yaml.SafeDumper writing :class:`_Flow` lists in flow style."""
    if not _DUMPER:
        import yaml

        class Dumper(yaml.SafeDumper):
            pass

        Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v,
                                                                         flow_style=True))
        _DUMPER.append(Dumper)
    return _DUMPER[0]


def _band_doc(b: Band) -> dict[str, Any]:
    doc: dict[str, Any] = {"log": b.log, "steps": _Flow([int(b.first), int(b.last)]), "fail": b.fail,
                           "span": _num(b.span)}
    if b.widen is not None:
        doc["widen"] = _num(b.widen)
    doc["lo"], doc["hi"] = _Flow(b.lo), _Flow(b.hi)
    return doc


def _num(v: float | None) -> float | str | None:
    """A number for YAML/JSON: 6 significant digits, non-finite values spelled as the check output spells them."""
    return float(f"{v:.6g}") if v is not None and math.isfinite(v) else _json_number(v)


def _findings_of(run: Any, rules: Any, result: Any = None) -> list[str]:
    """Ids of the checks (warning or error) that fired; ``result``: the run's CheckResult if already evaluated."""
    if result is None:
        from .checks import evaluate

        result = evaluate(run, rules if rules is not None else "default")
    return sorted({f.check for f in result.at_or_above("warning")})


def _unfinished(run: Any) -> str | None:
    """How a run that did not finish ended (``crashed at step 11 (RuntimeError: boom)``), else None. A store that
    records no status (not written by DynamicsMonitor) counts as finished."""
    meta = run.meta
    status = meta.get("status")
    if not status or status == "finished":
        return None
    steps = run.series("loss/train").steps if "loss/train" in run else np.zeros(0, np.int64)
    at = f" at step {int(steps[-1])}" if steps.size else ""
    exc = meta.get("exception") or {}
    what = f" ({exc.get('type')}: {exc.get('message')})" if isinstance(exc, dict) and exc.get("type") else ""
    return f"{status}{at}{what}"


def make_baseline(runs: Sequence[Any], *, rules: Any = "default", results: Sequence[Any] | None = None,
                  allow_unfinished: bool = False, trajectories: bool = True, cells: int = CELLS) -> Baseline:
    """A baseline from one or more runs (open :class:`~dyncheck.store.Run` objects or paths). With several runs
    each quantity is their median, and its tolerance at least 3x their spread (std of log values for ratios).
    ``results``: the runs' CheckResults if already evaluated (else ``rules`` are evaluated). ``trajectories``:
    also band the tracked series on a grid of up to ``cells`` cells (:mod:`dyncheck.trajectory`).

    Raises :class:`BaselineRefused` for a run that did not finish (its losses are not those of the run a test
    trains; ``allow_unfinished=True`` takes it as it is) and when no quantity could be measured (no loss, no
    activation statistics recorded): a baseline that holds nothing would pass every comparison."""
    from .store import Run, open_run

    if not runs:
        raise ConfigError("make_baseline: needs at least one run")
    from .trajectory import make_trajectories, run_series

    summaries, findings, names, per_run = [], set(), [], []
    for r, result in zip(runs, results if results is not None else [None] * len(runs)):
        with (contextlib.nullcontext(r) if isinstance(r, Run) else open_run(r)) as run:
            ended = _unfinished(run)
            if ended and not allow_unfinished:
                raise BaselineRefused(f"{run.dir}: the run did not finish ({ended}); a baseline must come from a "
                                      f"finished run", unfinished=True)
            summaries.append(summarize(run))
            if trajectories:
                per_run.append(run_series(run))
            findings |= set(_findings_of(run, rules, result))
            names.append(str(run.dir))
    quantities: dict[str, Quantity] = {}
    for name, spec in QUANTITIES.items():
        vals = np.array([s[name] for s in summaries if name in s], dtype=float)
        if vals.size == 0:
            continue
        value = float(np.median(vals))
        tol, spread = spec.tolerance, None
        if vals.size > 1 and np.all(np.isfinite(vals)):
            if spec.kind == "ratio" and np.all(vals > 0):
                spread = float(np.std(np.log(vals), ddof=1))
                tol = max(tol, float(np.exp(3 * spread)))
            elif spec.kind == "abs":
                spread = float(np.std(vals, ddof=1))
                tol = max(tol, 3 * spread)
        quantities[name] = Quantity(value, spec.better, spec.kind, tol, spread, spec.doc)
    if not quantities:
        raise BaselineRefused(f"{', '.join(names)}: no baseline quantity could be measured (it needs loss/train, "
                              f"loss/val or act/dead/* series; the run{'s' if len(names) > 1 else ''} recorded "
                              f"none of them); a baseline with 0 quantities would pass every comparison")
    info = {"created": _dt.datetime.now(tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "runs": names}
    bands, timing = make_trajectories(per_run, cells=cells) if trajectories else ({}, None)
    return Baseline(quantities, sorted(findings), info, trajectories=bands, phases=timing)


def _duplicate_keys(node: Any, path: str = "") -> list[tuple[int, str, int]]:
    """(line, dotted key, line of its first occurrence) of every key given twice in one mapping of a composed
    YAML document (the safe loader silently keeps the last one)."""
    import yaml

    out: list[tuple[int, str, int]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for k, v in node.value:
            key = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
            where = f"{path}.{key}" if path else key
            if key in first:
                out.append((k.start_mark.line + 1, where, first[key]))
            else:
                first[key] = k.start_mark.line + 1
            out += _duplicate_keys(v, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(v, f"{path}[{i}]")
    return out


def load_baseline(path: str | os.PathLike) -> Baseline:
    """Read a baseline file; a malformed one raises :class:`ConfigError` naming the file, the key and what was
    expected, with the line and column: duplicate keys, unknown quantities or keys, values that are not numbers,
    tolerances that are not finite (``.nan`` would make every comparison pass) or out of range. The file is read
    within the limits of every YAML input (README, "Input limits": 1 MB of UTF-8 text, 50 levels, 10,000 values,
    integers of at most 100 digits); a file beyond them, a binary file (``--baseline run.db``) or invalid YAML is
    a ConfigError too, never a traceback."""
    from .checks.rules import read_yaml

    p = Path(path)
    yd = read_yaml(p, str(p), what="baseline")  # YamlInputError (a ConfigError): file:line:column: what

    def at(*keys: Any) -> str:
        line, col = yd.position(keys)
        return f" (line {line}, column {col})"

    dups = _duplicate_keys(yd.root)
    if dups:
        raise ConfigError("\n".join(f"{p}:{line}: duplicate key '{key}' (first given at line {first}); each key "
                                    f"may appear once" for line, key, first in dups))
    doc = yd.data
    version = doc.get("dyncheck_baseline") if isinstance(doc, dict) else None
    if type(version) is not int or version != BASELINE_VERSION:
        raise ConfigError(f"{p}: not a dyncheck baseline (expected 'dyncheck_baseline: {BASELINE_VERSION}' at the "
                          f"top; write one with: dyncheck baseline RUN -o {p})")
    raw = doc.get("quantities") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: 'quantities' must be a mapping of quantity name -> {{value, better, ratio|abs}}"
                          + at("quantities"))
    quantities = {}
    for name, q in raw.items():
        where = f"{p}: quantities.{name}"
        here = ("quantities", name)
        if name not in QUANTITIES:
            raise ConfigError(f"{where}: unknown quantity; expected one of: {', '.join(QUANTITIES)}"
                              + _at_key(yd, here))
        if not isinstance(q, dict):
            raise ConfigError(f"{where}: expected a mapping with value, better and ratio or abs" + at(*here))
        unknown = set(q) - {"value", "better", "ratio", "abs", "spread"}
        if unknown:
            first = sorted(unknown)[0]
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; expected value, better, "
                              f"ratio or abs, spread" + _at_key(yd, (*here, first)))
        spec = QUANTITIES[name]
        kinds = [k for k in ("ratio", "abs") if k in q]
        if len(kinds) > 1:
            raise ConfigError(f"{where}: give one tolerance, 'ratio' or 'abs', not both" + at(*here))
        kind = kinds[0] if kinds else spec.kind
        tol = _float(q.get(kind, spec.tolerance), f"{where}.{kind}", at(*here, kind))
        expected = "a ratio >= 1" if kind == "ratio" else "a value >= 0"
        if not math.isfinite(tol):
            raise ConfigError(f"{where}.{kind}: expected {expected}, got {_shown(q.get(kind))} (a tolerance must "
                              f"be a finite number: a non-finite one would let any change pass or fail)"
                              + at(*here, kind))
        if (kind == "ratio" and tol < 1) or (kind == "abs" and tol < 0):
            raise ConfigError(f"{where}.{kind}: expected {expected}, got {_shown(q.get(kind))}" + at(*here, kind))
        better = q.get("better", spec.better)
        if better not in ("lower", "higher"):
            raise ConfigError(f"{where}.better: expected 'lower' or 'higher', got {_shown(better)}"
                              + at(*here, "better"))
        if "value" not in q:
            raise ConfigError(f"{where}: missing 'value'" + at(*here))
        value = _float(q["value"], f"{where}.value", at(*here, "value"))
        if math.isnan(value):
            raise ConfigError(f"{where}.value: expected a number (inf for a run that diverged), got "
                              f"{_shown(q['value'])}" + at(*here, "value"))
        spread = q.get("spread")
        spread_f = None if spread is None else _float(spread, f"{where}.spread", at(*here, "spread"))
        if spread_f is not None and not (math.isfinite(spread_f) and spread_f >= 0):
            raise ConfigError(f"{where}.spread: expected a finite value >= 0 (or no spread), got {_shown(spread)}"
                              + at(*here, "spread"))
        quantities[name] = Quantity(value, better, kind, tol, spread_f, spec.doc)
    if not quantities:
        raise ConfigError(f"{p}: 'quantities' is empty: a baseline with no quantity would pass every comparison; "
                          f"expected at least one of: {', '.join(QUANTITIES)} (write one with: dyncheck baseline "
                          f"RUN -o {p})")
    findings = doc.get("findings") or []
    if not isinstance(findings, list) or not all(isinstance(f, str) for f in findings):
        raise ConfigError(f"{p}: 'findings' must be a list of check ids" + at("findings"))
    runs = doc.get("runs") or []
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        raise ConfigError(f"{p}: 'runs' must be a list of run names (strings)" + at("runs"))
    created = doc.get("created")
    if created is not None and not isinstance(created, (str, _dt.date)):
        raise ConfigError(f"{p}: 'created' must be a date or a text such as '2026-01-31 12:00 UTC', got "
                          f"{_shown(created)}" + at("created"))
    bands = _load_trajectories(doc, p, at, yd)
    timing = _load_phases(doc, p, at)
    return Baseline(quantities, list(findings), {"created": None if created is None else str(created),
                                                 "runs": list(runs)}, path=p, trajectories=bands, phases=timing)


def _load_trajectories(doc: dict, p: Path, at: Any, yd: Any) -> dict[str, Band]:
    """The ``trajectories`` section, validated: series -> {log, steps: [first, last], fail, span, widen, lo, hi}."""
    raw = doc.get("trajectories")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: 'trajectories' must be a mapping of series name -> {{log, steps, fail, span, lo, "
                          f"hi}}" + at("trajectories"))
    bands: dict[str, Band] = {}
    for name, t in raw.items():
        where, here = f"{p}: trajectories.{name}", ("trajectories", name)
        if name not in SERIES:
            raise ConfigError(f"{where}: unknown series; expected one of: {', '.join(SERIES)}" + _at_key(yd, here))
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: expected a mapping with log, steps, fail, span, lo and hi" + at(*here))
        unknown = set(t) - {"log", "steps", "fail", "span", "widen", "lo", "hi"}
        if unknown:
            first = sorted(unknown, key=str)[0]
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected log, steps, "
                              f"fail, span, widen, lo, hi" + _at_key(yd, (*here, first)))
        for key in ("log", "steps", "lo", "hi"):
            if key not in t:
                raise ConfigError(f"{where}: missing '{key}'" + at(*here))
        log = t["log"]
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: expected true or false, got {_shown(log)}" + at(*here, "log"))
        steps = t["steps"]
        if (not isinstance(steps, list) or len(steps) != 2 or not all(type(s) is int for s in steps)
                or not 0 <= steps[0] < steps[1] <= 10 ** 15):
            raise ConfigError(f"{where}.steps: expected [first, last], two whole steps with 0 <= first < last, got "
                              f"{_shown(steps)}" + at(*here, "steps"))
        fail = t.get("fail", SERIES[name][0])
        if fail not in POLICIES:
            raise ConfigError(f"{where}.fail: expected one of {', '.join(POLICIES)}, got {_shown(fail)}"
                              + at(*here, "fail"))
        span = _float(t.get("span", 0.1), f"{where}.span", at(*here, "span"))
        if not (0 < span <= 1):
            raise ConfigError(f"{where}.span: expected a share of the cells, 0 < span <= 1, got "
                              f"{_shown(t.get('span'))}" + at(*here, "span"))
        widen = t.get("widen")
        widen_f = None if widen is None else _float(widen, f"{where}.widen", at(*here, "widen"))
        if widen_f is not None and not (math.isfinite(widen_f) and widen_f >= (1 if log else 0)):
            raise ConfigError(f"{where}.widen: expected {'a ratio >= 1' if log else 'a finite value >= 0'}, got "
                              f"{_shown(widen)}" + at(*here, "widen"))
        arrays = {}
        for key in ("lo", "hi"):
            v = t[key]
            if not isinstance(v, list) or not MIN_CELLS + 1 <= len(v) <= MAX_CELLS:
                raise ConfigError(f"{where}.{key}: expected a list of {MIN_CELLS + 1} to {MAX_CELLS} numbers, got "
                                  f"{_shown(v) if not isinstance(v, list) else f'{len(v)} values'}" + at(*here, key))
            nums = []
            for i, x in enumerate(v):
                f = _float(x, f"{where}.{key}[{i}]", at(*here, key, i))
                if not math.isfinite(f) or (log and f <= 0):
                    raise ConfigError(f"{where}.{key}[{i}]: expected a finite number{' > 0 (log: true)' if log else ''}"
                                      f", got {_shown(x)}" + at(*here, key, i))
                nums.append(f)
            arrays[key] = nums
        if len(arrays["lo"]) != len(arrays["hi"]):
            raise ConfigError(f"{where}: 'lo' has {len(arrays['lo'])} values and 'hi' {len(arrays['hi'])}; expected "
                              f"one of each per cell" + at(*here, "hi"))
        for i, (a, b) in enumerate(zip(arrays["lo"], arrays["hi"])):
            if a > b:
                raise ConfigError(f"{where}.hi[{i}]: expected hi >= lo in every cell, got lo {a:g} > hi {b:g}"
                                  + at(*here, "hi", i))
        bands[name] = Band(name, log, steps[0], steps[1], arrays["lo"], arrays["hi"], fail, span, widen_f)
    return bands


def _load_phases(doc: dict, p: Path, at: Any) -> PhaseTiming | None:
    raw = doc.get("phases")
    if raw is None:
        return None
    from .phases import PHASE_NAMES

    if not isinstance(raw, dict) or set(raw) - {"first", "end", "runs"} or "first" not in raw or "end" not in raw:
        raise ConfigError(f"{p}: 'phases' must be a mapping with first (a phase name), end (a step) and runs (the "
                          f"baseline runs' end steps)" + at("phases"))
    if raw["first"] not in PHASE_NAMES:
        raise ConfigError(f"{p}: phases.first: expected one of {', '.join(PHASE_NAMES)}, got {_shown(raw['first'])}"
                          + at("phases", "first"))
    end = _float(raw["end"], f"{p}: phases.end", at("phases", "end"))
    if not (math.isfinite(end) and 0 <= end <= 1e15):
        raise ConfigError(f"{p}: phases.end: expected a step >= 0, got {_shown(raw['end'])}" + at("phases", "end"))
    runs = raw.get("runs") or []
    if not isinstance(runs, list) or not all(type(r) is int for r in runs):
        raise ConfigError(f"{p}: phases.runs: expected a list of whole steps" + at("phases", "runs"))
    start = int(doc["trajectories"]["loss/train"]["steps"][0]) if "loss/train" in (doc.get("trajectories") or {}) \
        else 0
    return PhaseTiming(raw["first"], end, list(runs), start)


def _at_key(yd: Any, keys: tuple[Any, ...]) -> str:
    line, col = yd.position(keys, key=True)
    return f" (line {line}, column {col})"


def _shown(v: Any) -> str:
    """A value as the file spells it (YAML's .nan / .inf for non-finite floats), cut to 80 characters."""
    if isinstance(v, float) and not math.isfinite(v):
        return ".nan" if math.isnan(v) else (".inf" if v > 0 else "-.inf")
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _float(v: Any, where: str, position: str = "") -> float:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {_shown(v)}{position}")
    try:
        return float(v)
    except OverflowError:  # an integer beyond float's range (the reader allows 100 digits)
        raise ConfigError(f"{where}: expected a number up to about 1e308, got an integer of {len(str(abs(v)))} "
                          f"digits{position}") from None


@dataclass(frozen=True)
class Row:
    """One quantity compared: ``status`` is ``ok``, ``better``, ``regressed`` or ``missing`` (in the baseline,
    not in the run)."""

    quantity: str
    baseline: float
    obtained: float | None
    tolerance: str
    status: str
    change: str


@dataclass
class Comparison:
    rows: list[Row]
    new_findings: list[Any]  # Finding objects of checks that did not fire in the baseline
    gone_findings: list[str]  # check ids that fired in the baseline and no longer do
    baseline_path: Path | None = None
    #: the run's ``meta["status"]`` (``unknown`` when the store records none); ``run_ended``: how a run that did
    #: not finish ended (``crashed at step 11 (RuntimeError: boom)``), None when it finished
    run_status: str | None = None
    run_ended: str | None = None
    n_series: int | None = None
    #: trajectory bands judged (empty when the baseline holds none), and the phase-timing remark
    trajectories: list[TrajRow] = field(default_factory=list)
    phase_timing: str | None = None
    #: series name -> the band's policy (what fails), for :attr:`regressions`
    policies: dict[str, str] = field(default_factory=dict)

    def not_judged(self, allow_unfinished: bool = False) -> str | None:
        """Why the comparison is no verdict (None when it is): the run holds no series, or -- unless
        ``allow_unfinished`` -- it did not finish (a partial run's losses are not comparable with a whole run's)."""
        reasons = []
        if self.n_series == 0:
            reasons.append("the run holds no recorded series")
        if self.run_ended and not allow_unfinished:
            reasons.append(f"the run did not finish: {self.run_ended}")
        return "; ".join(reasons) or None

    def verdict(self, allow_unfinished: bool = False) -> str:
        """``unjudged`` when :meth:`not_judged`, else :attr:`status`."""
        return "unjudged" if self.not_judged(allow_unfinished) else self.status

    @property
    def regressions(self) -> list[str]:
        return ([r.quantity for r in self.rows if r.status in ("regressed", "missing")]
                + [f"trajectory {t.series}" for t in self.trajectories if t.status == "regressed"
                   or (t.status in ("missing", "short") and self.policies.get(t.series, "above") != "never")]
                + sorted({f.check for f in self.new_findings}))

    @property
    def status(self) -> str:
        return "fail" if self.regressions else "pass"

    @property
    def improvements(self) -> list[str]:
        return ([r.quantity for r in self.rows if r.status == "better"]
                + [f"trajectory {t.series}" for t in self.trajectories if t.status == "better"]
                + list(self.gone_findings))

    @property
    def changes(self) -> list[str]:
        """Series out of their band where their policy does not fail (reported, not failing)."""
        return [f"trajectory {t.series}" for t in self.trajectories if t.status == "changed"
                or (t.status in ("missing", "short") and self.policies.get(t.series, "above") == "never")]

    def to_dict(self, allow_unfinished: bool = False) -> dict[str, Any]:
        return {"status": self.verdict(allow_unfinished), "run_status": self.run_status,
                "not_judged": self.not_judged(allow_unfinished),
                "regressions": self.regressions, "improvements": self.improvements,
                "quantities": [{"quantity": r.quantity, "baseline": _num(r.baseline), "obtained": _num(r.obtained),
                                "tolerance": r.tolerance, "status": r.status, "change": r.change}
                               for r in self.rows],
                "new_findings": [f.to_dict() for f in self.new_findings], "gone_findings": self.gone_findings,
                "trajectories": [{"series": t.series, "status": t.status, "direction": t.direction,
                                  "start": t.start, "end": t.end, "share": None if t.share is None
                                  else round(t.share, 4), "policy": self.policies.get(t.series),
                                  "message": t.text} for t in self.trajectories],
                "phase_timing": self.phase_timing, "changes": self.changes}


def _judge(q: Quantity, obtained: float) -> tuple[str, str]:
    """(status, change) of one quantity: worse beyond the tolerance regresses, better beyond it improves."""
    if not (isinstance(q.tolerance, (int, float)) and math.isfinite(q.tolerance)) or math.isnan(q.value):
        raise ConfigError(f"baseline quantity: tolerance {q.tolerance!r} and value {q.value!r}: expected a finite "
                          f"tolerance and a value that is a number (a NaN compares as 'ok' with anything)")
    if not math.isfinite(obtained):
        return ("regressed" if q.better == "lower" else "better"), "non-finite"
    if q.kind == "ratio":
        if q.value <= 0 or obtained <= 0:
            worse = obtained - q.value if q.better == "lower" else q.value - obtained
            return ("regressed" if worse > 0 else "ok"), f"{obtained - q.value:+.3g}"
        ratio = obtained / q.value
        worse = ratio if q.better == "lower" else 1 / ratio
        change = f"x{ratio:.3g}"
        if worse > q.tolerance:
            return "regressed", change
        if worse < 1 / q.tolerance:
            return "better", change
        return "ok", change
    diff = obtained - q.value
    worse = diff if q.better == "lower" else -diff
    change = f"{diff:+.3g}"
    if worse > q.tolerance:
        return "regressed", change
    if worse < -q.tolerance:
        return "better", change
    return "ok", change


def compare(run: Any, baseline: Baseline, *, rules: Any = "default", result: Any = None) -> Comparison:
    """Compare a run (a :class:`~dyncheck.store.Run` or a path) with a baseline. ``result``: the run's
    :class:`CheckResult` if already evaluated."""
    from .store import Run, open_run

    if not isinstance(run, Run):
        with open_run(run) as opened:
            return compare(opened, baseline, rules=rules, result=result)
    got = summarize(run)
    rows = []
    for name, q in baseline.quantities.items():
        tol = f"x{q.tolerance:.3g}" if q.kind == "ratio" else f"±{q.tolerance:.3g}"
        if name not in got:
            rows.append(Row(name, q.value, None, tol, "missing", "not recorded"))
            continue
        status, change = _judge(q, got[name])
        rows.append(Row(name, q.value, got[name], tol, status, change))
    if result is None:
        from .checks import evaluate

        result = evaluate(run, rules if rules is not None else "default")
    known = set(baseline.findings)
    new = [f for f in result.at_or_above("warning") if f.check not in known]
    gone = sorted(known - {f.check for f in result.at_or_above("warning")})
    status = run.meta.get("status")
    traj, timing_text = [], None
    if baseline.trajectories or baseline.phases is not None:
        from .trajectory import judge, judge_timing, run_series

        series = run_series(run)
        last = max((int(st[-1]) for st, _ in series.values() if st.size), default=None)
        traj = [judge(b, *series.get(name, (None, None)), run_last=last) for name, b in baseline.trajectories.items()]
        if baseline.phases is not None:
            timing_text = judge_timing(baseline.phases, *series.get("loss/train", (None, None)))
    return Comparison(rows, new, gone, baseline.path, run_status=status if isinstance(status, str) and status
                      else "unknown", run_ended=_unfinished(run), n_series=len(run.metrics()),
                      trajectories=traj, phase_timing=timing_text,
                      policies={n: b.fail for n, b in baseline.trajectories.items()})


def format_comparison(cmp: Comparison, *, title: str = "", allow_unfinished: bool = False) -> str:
    """The comparison as a small table, then the new findings with their hints. A comparison that is no verdict
    (:meth:`Comparison.not_judged`) says so first; the table is shown for information."""
    head = f"dyncheck compare {title}".rstrip()
    verdict = ("REGRESSED: " + ", ".join(cmp.regressions)) if cmp.regressions else "no regression"
    reg = [t for t in cmp.trajectories if t.status == "regressed"]
    if reg:
        verdict += " (" + "; ".join(t.text for t in reg) + (f"; {cmp.phase_timing}" if cmp.phase_timing else "") + ")"
    if cmp.improvements and not cmp.regressions:
        verdict += " (better than the baseline: " + ", ".join(cmp.improvements) + ")"
    why = cmp.not_judged(allow_unfinished)
    if why:
        verdict = f"NOT JUDGED: {why} (what it recorded: {verdict})"
    lines = [f"{head} -- {verdict}"]
    if cmp.run_status is not None:
        lines.append(f"  run: {cmp.run_ended or _status_text(cmp.run_status)}"
                     + ("  (judged on what it recorded before it stopped: unfinished runs allowed)"
                        if cmp.run_ended and not why else ""))
    w = max([len(r.quantity) for r in cmp.rows] + [8])
    lines.append(f"  {'quantity':<{w}}  {'baseline':>10}  {'obtained':>10}  {'change':>9}  {'tolerance':>9}  status")
    for r in cmp.rows:
        got = "—" if r.obtained is None else f"{r.obtained:.4g}"
        mark = {"regressed": "REGRESSED", "missing": "MISSING", "better": "better", "ok": "ok"}[r.status]
        lines.append(f"  {r.quantity:<{w}}  {r.baseline:>10.4g}  {got:>10}  {r.change:>9}  {r.tolerance:>9}  {mark}")
    if cmp.trajectories:
        lines.append("  trajectories (band per series; out of it for a sustained span):")
        mark = {"regressed": "REGRESSED", "missing": "MISSING", "short": "NOT JUDGED", "better": "better",
                "changed": "changed", "ok": "ok"}
        for t in cmp.trajectories:
            fails = t.status == "regressed" or (t.status in ("missing", "short")
                                                and cmp.policies.get(t.series, "above") != "never")
            status = mark[t.status] if fails or t.status not in ("missing", "short") else mark[t.status].lower()
            lines.append(f"    {status:<10} {t.text}")
        if cmp.phase_timing:
            lines.append(f"    {'timing':<10} {cmp.phase_timing}")
    for f in cmp.new_findings:
        lines.append(f"  NEW {f.severity.upper()} {f.check} ({f.metric}, step {f.first_step}): {f.message}")
        if f.hint:
            lines.append(f"      hint: {f.hint}")
    for cid in cmp.gone_findings:
        lines.append(f"  fixed: {cid} fired in the baseline and no longer does")
    return "\n".join(lines)


def _status_text(status: str) -> str:
    return "status not recorded (the store was not written by DynamicsMonitor)" if status == "unknown" else status


def format_comparison_junit(cmp: Comparison, name: str, *, allow_unfinished: bool = False) -> str:
    """One JUnit testcase per quantity (failed when it regressed) and one for new findings; the run's status as
    a suite property (``run_status``), and a leading failing ``run`` case when the comparison is no verdict."""
    import xml.etree.ElementTree as ET

    why = cmp.not_judged(allow_unfinished)
    suite = ET.Element("testsuite", name=name, tests=str(len(cmp.rows) + 1 + bool(why) + len(cmp.trajectories)))
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="run_status", value=str(cmp.run_status or "not recorded"))
    ET.SubElement(props, "property", name="verdict", value=cmp.verdict(allow_unfinished))
    if why:
        case = ET.SubElement(suite, "testcase", classname=name, name="run")
        ET.SubElement(case, "failure", type="not-judged", message=f"not judged: {why}").text = \
            f"run: {cmp.run_ended or cmp.run_status}\nnot judged: {why}"
    for r in cmp.rows:
        case = ET.SubElement(suite, "testcase", classname=name, name=r.quantity)
        detail = f"baseline {r.baseline:.4g}, obtained {r.obtained}, change {r.change}, tolerance {r.tolerance}"
        if r.status in ("regressed", "missing"):
            ET.SubElement(case, "failure", message=f"{r.quantity} {r.status}").text = detail
        else:
            ET.SubElement(case, "system-out").text = f"{r.status}: {detail}"
    failing = set(cmp.regressions)
    for t in cmp.trajectories:
        case = ET.SubElement(suite, "testcase", classname=name, name=f"trajectory {t.series}")
        if f"trajectory {t.series}" in failing:
            ET.SubElement(case, "failure", message=f"trajectory {t.series} {t.status}").text = t.text
        else:
            ET.SubElement(case, "system-out").text = f"{t.status}: {t.text}"
    case = ET.SubElement(suite, "testcase", classname=name, name="new findings")
    if cmp.new_findings:
        ET.SubElement(case, "failure", message=", ".join(sorted({f.check for f in cmp.new_findings}))).text = \
            "\n".join(f"{f.check} ({f.metric}, step {f.first_step}): {f.message}" for f in cmp.new_findings)
    suite.set("failures", str(sum(1 for c in suite if c.find("failure") is not None)))
    return ET.tostring(suite, encoding="unicode")
