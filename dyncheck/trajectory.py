"""Trajectory bands: a baseline of how a run got where it ended, not only of where it ended.

Each tracked series of the baseline run(s) is cut into ``CELLS`` equal cells over the steps all of them recorded
(fewer cells when a series has fewer points, e.g. validation losses); a cell's value is the median of the run's
points in the cell and ``SMOOTH`` of the grid on each side (2 cells of 100: robust to minibatch noise and single
spikes), in log10 for a series that is positive. The band of a cell spans the runs' values there, widened by a
margin and by a little slack in time:

- margin (per cell, in log10 or in the series' units): the largest of a floor (``FLOOR_LOG`` decades for a log
  series, ``FLOOR_LIN`` of the series' range otherwise), ``NOISE`` x the uncertainty of a run's cell median (its
  points' robust sd over the square root of their count: a single run, K=1, gets this much) and ``SEED`` x the
  spread across the runs in the cell (K >= 2);
- time slack: the band's edges are the envelope over +-``SHIFT`` of the grid (5 cells of 100), so that the steep
  early descent is not judged by a few steps of timing.

The constants are calibrated on the corpus (benchmarks/baseline_sensitivity.py): a band from seeds 0-1 of every
healthy scenario gives 0 false regressions on seeds 2-3.

A candidate leaves the band when its cell median is above ``hi`` or below ``lo``; it *regresses* only when it stays
out, in a failing direction, for a sustained span: at least ``span`` (default 10%) of the grid's cells in a row (and
never fewer than ``MIN_CELLS``). Each series has a policy, declared in the baseline file (``fail``): ``above``
(losses: higher is worse; below the band is reported as better), ``below``, ``either``, or ``never`` (report a
change, never fail: gradient norms and sharpness, whose level moves with harmless changes such as a learning-rate
schedule or batch size, and whose excursions the loss bands and the checks judge better).

Phase timing: the step at which the first phase of the training loss (usually rapid fitting,
:func:`dyncheck.phases.detect_phases`) ends, median over the baseline runs, is compared with the candidate's and
reported ("the rapid-fitting phase ended 40% later"). It never fails alone: phase boundaries come from a piecewise
fit and move with noise; a slower descent that matters shows in the loss band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

CELLS = 100
FLOOR_LOG = 0.2  # decades (x1.58): 0 false regressions of held-out healthy corpus seeds (0.16 gave 1)
FLOOR_LIN = 0.05  # of the series' range over the baseline runs
NOISE = 3.0
SMOOTH = 0.02
SEED = 0.5
SHIFT = 0.05
SPAN = 0.1
MIN_CELLS = 3
MAX_CELLS = 1000

#: tracked series and their default policy (what fails): name -> (fail, what it is)
SERIES: dict[str, tuple[str, str]] = {
    "loss/train": ("above", "training loss"),
    "loss/val": ("above", "validation loss"),
    "grad_norm/total": ("never", "global gradient norm"),
    "grad_norm/layers.median": ("never", "per-layer gradient profile: median over weight tensors of the norm"),
    "grad_norm/layers.spread": ("never", "per-layer gradient profile: decades between the largest and smallest "
                                         "weight tensor's gradient norm"),
    "sharpness/top_eig": ("never", "top Hessian eigenvalue"),
}
POLICIES = ("above", "below", "either", "never")
_LINEAR = {"grad_norm/layers.spread"}  # already in decades: banded as it is


@dataclass
class Band:
    """One series' band on its grid: ``first``..``last`` step cut into ``len(lo)`` equal cells; ``lo``/``hi`` in
    the series' units (log: compared in log10). ``widen``: extra slack a person grants (a ratio >= 1 for a log
    series, an amount >= 0 otherwise)."""

    name: str
    log: bool
    first: int
    last: int
    lo: list[float]
    hi: list[float]
    fail: str = "above"
    span: float = SPAN
    widen: float | None = None

    @property
    def cells(self) -> int:
        return len(self.lo)

    def edges(self) -> np.ndarray:
        return np.linspace(self.first, self.last, self.cells + 1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) in comparison space (log10 for a log series), widened."""
        lo, hi = np.asarray(self.lo, float), np.asarray(self.hi, float)
        if self.log:
            with np.errstate(divide="ignore"):
                lo, hi = np.log10(lo), np.log10(hi)
            w = math.log10(self.widen) if self.widen else 0.0
        else:
            w = self.widen or 0.0
        return lo - w, hi + w


@dataclass
class PhaseTiming:
    first: str  # the baseline's first phase name
    end: float  # median step it ended at
    runs: list[int] = field(default_factory=list)
    start: int = 0  # the grid's first step (relative changes are measured from it)


@dataclass(frozen=True)
class TrajRow:
    """One series judged: status ``ok``, ``regressed``, ``better`` (out in the good direction), ``changed`` (out
    where the policy does not fail), ``missing`` or ``short`` (the candidate does not cover the grid)."""

    series: str
    status: str
    text: str
    direction: str | None = None
    start: int | None = None
    end: int | None = None
    share: float | None = None


# -- series of a run --------------------------------------------------------------------------------------------------
def run_series(run: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The tracked series a run recorded (steps, values), with the per-layer gradient profile derived from
    ``grad_norm/<tensor>.weight`` (or every ``grad_norm/*`` tensor when none is named ``*.weight``)."""
    names = set(run.metrics())
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for n in ("loss/train", "loss/val", "grad_norm/total", "sharpness/top_eig"):
        if n in names:
            s = run.series(n)
            if s.steps.size:
                out[n] = (np.asarray(s.steps, np.int64), np.asarray(s.values, float))
    layers = sorted(n for n in names if n.startswith("grad_norm/") and n.endswith(".weight"))
    if not layers:
        layers = sorted(n for n in names if n.startswith("grad_norm/") and n != "grad_norm/total"
                        and not n.startswith("grad_norm/layers."))
    if len(layers) >= 2:
        per = [run.series(n) for n in layers]
        common = per[0].steps
        for s in per[1:]:
            common = np.intersect1d(common, s.steps)
        if common.size:
            mat = np.stack([s.values[np.searchsorted(s.steps, common)] for s in per]).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                lg = np.where(np.isfinite(mat) & (mat > 0), np.log10(np.where(mat > 0, mat, 1.0)), np.nan)
            ok = np.isfinite(lg).sum(axis=0) >= 2
            if ok.any():
                lgo = lg[:, ok]
                out["grad_norm/layers.median"] = (common[ok], 10 ** np.nanmedian(lgo, axis=0))
                out["grad_norm/layers.spread"] = (common[ok], np.nanmax(lgo, axis=0) - np.nanmin(lgo, axis=0))
    return out


def _transform(v: np.ndarray, log: bool) -> np.ndarray:
    """Comparison space: log10 for a log series; a NaN (a loss that went non-finite) counts as +inf, a value <= 0
    of a log series as -inf."""
    v = np.where(np.isnan(v), np.inf, v)
    if not log:
        return v
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), -np.inf)


def _window(g: int) -> int:
    """Half-width, in cells, of the window a cell's value is the median over (2 cells of 100 on each side)."""
    return int(SMOOTH * g)


def _cells(steps: np.ndarray, v: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: the median of the points in the cell and the ``_window`` cells on each side, the uncertainty of
    that median (1.2533 x the robust sd, 1.4826 MAD, over sqrt(points)), and the count of the cell's own points
    (median NaN where the window holds none)."""
    g = edges.size - 1
    h = _window(g)
    inside = (steps >= edges[0]) & (steps <= edges[-1])
    steps, v = steps[inside], v[inside]
    idx = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, g - 1)
    med, sd, cnt = np.full(g, np.nan), np.full(g, np.nan), np.zeros(g, int)
    order = np.argsort(idx, kind="stable")
    idx, v = idx[order], v[order]
    bounds = np.searchsorted(idx, np.arange(g + 1))
    cnt = np.diff(bounds)
    for c in range(g):
        a, b = bounds[max(0, c - h)], bounds[min(g, c + h + 1)]
        if b > a:
            x = v[a:b]
            med[c] = float(np.median(x))
            fin = x[np.isfinite(x)]
            sd[c] = (1.2533 * 1.4826 * float(np.median(np.abs(fin - np.median(fin)))) / math.sqrt(fin.size)
                     if fin.size > 1 else 0.0)
    return med, sd, cnt


def _fill(y: np.ndarray) -> np.ndarray:
    """NaN cells filled by linear interpolation from their neighbours."""
    ok = np.isfinite(y)
    if ok.all() or not ok.any():
        return y
    x = np.arange(y.size)
    return np.interp(x, x[ok], y[ok])


def _envelope(y: np.ndarray, w: int, fn: Any) -> np.ndarray:
    if w <= 0:
        return y
    pad = np.pad(y, w, mode="edge")
    return fn(np.lib.stride_tricks.sliding_window_view(pad, 2 * w + 1), axis=1)


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def make_band(name: str, series: Sequence[tuple[np.ndarray, np.ndarray]], *, cells: int = CELLS,
              fail: str | None = None) -> Band | None:
    """The band of one series from K runs' (steps, values); None when it cannot be banded (the runs share fewer
    than ``MIN_CELLS`` + 1 points, or a baseline run's series is not finite there)."""
    first = max(int(s[0]) for s, _ in series)
    last = min(int(s[-1]) for s, _ in series)
    if last <= first:
        return None
    n_pts = min(int(np.count_nonzero((s >= first) & (s <= last))) for s, _ in series)
    g = min(cells, n_pts)
    if g < MIN_CELLS + 1:
        return None
    inside = [v[(s >= first) & (s <= last)] for s, v in series]
    if not all(np.all(np.isfinite(v)) for v in inside):
        return None
    log = name not in _LINEAR and all(np.all(v > 0) for v in inside)
    edges = np.linspace(first, last, g + 1)
    meds, sds = [], []
    for s, v in series:
        m, sd, _ = _cells(s, _transform(v, log), edges)
        meds.append(_fill(m))
        sds.append(_fill(sd))
    med, sd = np.array(meds), np.array(sds)
    lo, hi = med.min(axis=0), med.max(axis=0)
    if log:
        floor = FLOOR_LOG
    else:
        allv = np.concatenate(inside)
        floor = FLOOR_LIN * max(float(np.percentile(allv, 95) - np.percentile(allv, 5)), 1e-12)
    margin = np.maximum.reduce([np.full(g, floor), NOISE * np.median(sd, axis=0), SEED * (hi - lo)])
    w = int(math.ceil(SHIFT * g))
    margin = _envelope(margin, w, np.max)
    lo, hi = _envelope(lo, w, np.min) - margin, _envelope(hi, w, np.max) + margin
    if log:
        lo, hi = 10 ** lo, 10 ** hi
    lo_l = [_round(x) for x in lo]
    hi_l = [max(_round(x), a) for x, a in zip(hi, lo_l)]
    return Band(name, log, first, last, lo_l, hi_l, fail or SERIES.get(name, ("never", ""))[0])


def first_phase_end(steps: np.ndarray, values: np.ndarray) -> tuple[str, int] | None:
    """(name, end step) of the training loss's first phase; the run's last step when it has one phase only."""
    from .phases import detect_phases

    fin = np.isfinite(values)
    if fin.sum() < 20:
        return None
    phases = detect_phases(steps[fin], values[fin])
    if not phases:
        return None
    return phases[0].name, int(phases[0].end)


def make_trajectories(per_run: Sequence[dict[str, tuple[np.ndarray, np.ndarray]]], *, cells: int = CELLS
                      ) -> tuple[dict[str, Band], PhaseTiming | None]:
    bands: dict[str, Band] = {}
    for name in SERIES:
        if all(name in r for r in per_run):
            b = make_band(name, [r[name] for r in per_run], cells=cells)
            if b is not None:
                bands[name] = b
    timing = None
    if "loss/train" in bands and all("loss/train" in r for r in per_run):
        ends = [first_phase_end(*r["loss/train"]) for r in per_run]
        if all(e is not None for e in ends):
            names = [e[0] for e in ends]
            first = max(set(names), key=names.count)
            steps = [e[1] for e in ends]
            timing = PhaseTiming(first, float(np.median(steps)), steps, bands["loss/train"].first)
    return bands, timing


# -- judging ----------------------------------------------------------------------------------------------------------
def _longest(mask: np.ndarray) -> tuple[int, int]:
    """(length, start index) of the longest run of True."""
    best, start, cur, cur_start = 0, 0, 0, 0
    for i, m in enumerate(mask):
        if m:
            if cur == 0:
                cur_start = i
            cur += 1
            if cur > best:
                best, start = cur, cur_start
        else:
            cur = 0
    return best, start


def _steps(x: float) -> str:
    return f"{int(round(x)):,}"


def judge(band: Band, steps: np.ndarray | None, values: np.ndarray | None, run_last: int | None = None) -> TrajRow:
    """Judge a candidate's series against a band (``steps`` None: the candidate did not record it). ``run_last``:
    the run's last recorded step (of any tracked series): a run that ends before 90% of the band's steps is too
    short to judge; a sparse series (sharpness probes) whose own last point is earlier in a run that went on is
    judged on the cells it has."""
    name, g = band.name, band.cells
    if steps is None or values is None or steps.size == 0:
        return TrajRow(name, "missing", f"{name}: not recorded by the run (the baseline has a band for it)")
    edges = band.edges()
    med, _, cnt = _cells(np.asarray(steps, np.int64), _transform(np.asarray(values, float), band.log), edges)
    has = cnt > 0
    last = int(steps.max()) if run_last is None else max(int(run_last), int(steps.max()))
    covered = last - band.first
    needed = band.last - band.first
    if last < band.first + 0.9 * needed or has.sum() < (0.5 * g if g >= 20 else MIN_CELLS):
        return TrajRow(name, "short", f"{name}: the run covers steps {_steps(steps.min())}-{_steps(last)} "
                       f"({max(covered, 0) / needed:.0%} of the baseline's {_steps(band.first)}-{_steps(band.last)}, "
                       f"{int(has.sum())} of {g} cells): too short to compare its trajectory", share=None)
    lo, hi = band.bounds()
    valid = np.flatnonzero(has)
    m = med[valid]
    need = max(MIN_CELLS, int(math.ceil(band.span * g - 1e-9)))
    found = []
    for direction, mask in (("above", m > hi[valid]), ("below", m < lo[valid])):
        length, at = _longest(mask)
        if length >= need:
            a, b = valid[at], valid[at + length - 1]
            found.append((length, direction, int(round(edges[a])), int(round(edges[b + 1]))))
    if not found:
        out = int(np.count_nonzero((m > hi[valid]) | (m < lo[valid])))
        return TrajRow(name, "ok", f"{name}: within the band ({out} of {valid.size} cells out, none for "
                       f"{need} in a row)")
    found.sort(reverse=True)
    fails = [f for f in found if band.fail in (f[1], "either")]
    length, direction, a, b = fails[0] if fails else found[0]
    if fails:
        status = "regressed"
    elif band.fail == "above" and direction == "below" or band.fail == "below" and direction == "above":
        status = "better"
    else:
        status = "changed"
    share = length / g
    text = (f"{name} {direction} the band from step {_steps(a)} to {_steps(b)} "
            f"({share:.0%} of the run)")
    return TrajRow(name, status, text, direction, a, b, share)


def judge_timing(timing: PhaseTiming, steps: np.ndarray | None, values: np.ndarray | None) -> str | None:
    """'the rapid-fitting phase ended 40% later (step 1,200; baseline 860)', or None when it cannot be said. The
    candidate's phase is its first one of the baseline's first phase's name (a run that sat on a plateau first
    and then fitted rapidly is compared by when its rapid fitting ended)."""
    from .phases import detect_phases

    if steps is None or values is None:
        return None
    steps, values = np.asarray(steps), np.asarray(values, float)
    fin = np.isfinite(values)
    if fin.sum() < 20:
        return None
    phases = detect_phases(steps[fin], values[fin])
    what = timing.first.replace(" ", "-")
    same = [ph for ph in phases if ph.name == timing.first]
    if not same:
        names = ", ".join(ph.name for ph in phases) or "none"
        return f"the run has no {what} phase (its phases: {names}; baseline: {what} ended at step " \
               f"{_steps(timing.end)})"
    end = same[0].end
    base = timing.end - timing.start
    if base <= 0:
        return None
    rel = (end - timing.start) / base - 1
    how = "at the same time" if abs(rel) < 0.05 else f"{abs(rel):.0%} {'later' if rel > 0 else 'earlier'}"
    return f"the {what} phase ended {how} (step {_steps(end)}; baseline {_steps(timing.end)})"
