"""Generic detectors: vectorised numpy over (steps, values) series. No torch, no files, no rules.

Every detector returns, per input series, a boolean ``mask`` (the condition holds at that point) and a ``value``
array (what a message shows at that point). The engine then applies warm-up exclusion and persistence (``for``).

Detector kinds:
- *each*: applied to every matched series alone (``threshold``, ``nonfinite``, ``spike``, ``divergence``,
  ``growth``, ``no_progress``, ``plateau``).
- *pair*: two metrics ``a`` and ``b`` aligned on common steps (``ratio``, ``opposite_trends``).
- *group*: all matched series at once, aligned on common steps (``spread``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Hit", "DETECTORS", "Detector", "runs_at_least", "rolling_median_prev"]


@dataclass
class Hit:
    """Where a condition holds on one series: ``mask`` and ``value`` have one entry per step in ``steps``."""

    metric: str
    steps: np.ndarray
    mask: np.ndarray
    value: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Detector:
    name: str
    kind: str  # each | pair | group
    fn: Callable[..., Any]
    params: dict[str, tuple[type | tuple[type, ...], Any]]  # name -> (types, default); default ... = required
    doc: str


def runs_at_least(mask: np.ndarray, n: int) -> np.ndarray:
    """Points of ``mask`` that belong to a run of at least ``n`` consecutive True values (Prometheus ``for``)."""
    mask = np.asarray(mask, dtype=bool)
    if n <= 1 or mask.size == 0:
        return mask.copy()
    padded = np.concatenate([[False], mask, [False]])
    d = np.diff(padded.astype(np.int8))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    out = np.zeros_like(mask)
    for s, e in zip(starts, ends):
        if e - s >= n:
            out[s:e] = True
    return out


def rolling_median_prev(values: np.ndarray, window: int) -> np.ndarray:
    """Median of the previous ``window`` finite values before each point (NaN where fewer than 1 exist)."""
    v = np.asarray(values, dtype=float)
    n = v.size
    out = np.full(n, np.nan)
    if n < 2 or window < 1:
        return out
    # windows over a padded array: row i holds v[i-window : i]
    pad = np.concatenate([np.full(window, np.nan), v])
    idx = np.arange(n)[:, None] + np.arange(window)[None, :]
    win = pad[idx]
    win = np.where(np.isfinite(win), win, np.nan)
    with np.errstate(all="ignore"), _quiet():
        out = np.nanmedian(win, axis=1)
    return out


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


# -- each ---------------------------------------------------------------------------------------------------------
def threshold(steps, values, *, above=None, below=None, scope="each", **_):
    """Values above ``above`` or below ``below``. ``scope``: ``each`` point, only the ``last`` point, or the
    ``median`` of the series (one verdict, reported at the last step)."""
    v = np.asarray(values, dtype=float)
    if scope == "last":
        v_eval = np.full(v.size, np.nan)
        if v.size:
            v_eval[-1] = v[-1]
    elif scope == "median":
        v_eval = np.full(v.size, np.nan)
        finite = v[np.isfinite(v)]
        if finite.size:
            v_eval[-1] = np.median(finite)
    else:
        v_eval = v
    with np.errstate(invalid="ignore"):
        mask = np.zeros(v.size, dtype=bool)
        if above is not None:
            mask |= v_eval > above
        if below is not None:
            mask |= v_eval < below
    return mask, v_eval, {}


def nonfinite(steps, values, *, metric="", **_):
    """NaN or Inf values; for counts of non-finite values (metric names containing ``nonfinite``): positive."""
    v = np.asarray(values, dtype=float)
    mask = ~np.isfinite(v)
    if "nonfinite" in metric:
        with np.errstate(invalid="ignore"):
            mask |= v > 0
    return mask, v, {}


def spike(steps, values, *, window=20, factor=3.0, max_duration=5, min_history=5, **_):
    """A jump above ``factor`` times the median of the previous ``window`` values that falls back below it within
    ``max_duration`` points (longer excursions are divergence, not spikes)."""
    v = np.asarray(values, dtype=float)
    level = rolling_median_prev(v, window)
    history = np.minimum(np.arange(v.size), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        above = (v > factor * level) & (level > 0) & (history >= min_history) & np.isfinite(v)
    mask = np.zeros_like(above)
    padded = np.concatenate([[False], above, [False]])
    d = np.diff(padded.astype(np.int8))
    for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        if e - s <= max_duration and e < v.size:  # short and recovered before the end
            mask[s:e] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = v / level
    return mask, v, {"level": level, "ratio": ratio}


def divergence(steps, values, *, factor=3.0, min_points=5, **_):
    """Values more than ``factor`` times the best (lowest) finite value so far, or non-finite after finite ones."""
    v = np.asarray(values, dtype=float)
    fin = np.where(np.isfinite(v), v, np.inf)
    best = np.minimum.accumulate(fin) if v.size else fin
    idx = np.arange(v.size)
    with np.errstate(invalid="ignore", over="ignore"):
        mask = ((v > factor * best) | (~np.isfinite(v) & np.isfinite(best))) & (idx >= min_points) & (best > 0)
        ratio = v / best
    return mask, v, {"best": best, "ratio": ratio}


def growth(steps, values, *, factor=100.0, baseline=0.1, min_points=5, **_):
    """Values more than ``factor`` times the median of the first ``baseline`` share of the series."""
    v = np.asarray(values, dtype=float)
    if v.size < min_points:
        return np.zeros(v.size, bool), v, {}
    k = max(1, int(np.ceil(baseline * v.size)))
    first = v[:k][np.isfinite(v[:k])]
    if not first.size or np.median(first) <= 0:
        return np.zeros(v.size, bool), v, {}
    base = float(np.median(first))
    with np.errstate(invalid="ignore", over="ignore"):
        mask = (v > factor * base) | np.isinf(v)
        mask[:k] = False
    return mask, v, {"baseline": np.full(v.size, base), "ratio": v / base}


def no_progress(steps, values, *, min_improvement=0.1, share=0.1, min_points=10, **_):
    """The median of the last ``share`` of the series improves (decreases) on the median of the first ``share`` by
    less than ``min_improvement`` of it. One verdict, reported at the last step."""
    v = np.asarray(values, dtype=float)
    mask = np.zeros(v.size, bool)
    out = np.full(v.size, np.nan)
    fin = v[np.isfinite(v)]
    if fin.size < min_points:
        return mask, out, {}
    k = max(1, int(np.ceil(share * fin.size)))
    first, last = float(np.median(fin[:k])), float(np.median(fin[-k:]))
    improvement = (first - last) / abs(first) if first != 0 else 0.0
    mask[-1] = improvement < min_improvement
    out[-1] = improvement
    return mask, out, {"first": np.full(v.size, first), "last": np.full(v.size, last)}


def plateau(steps, values, *, early=0.35, min_improvement=0.02, min_early_progress=0.05, min_level=0.3,
            share=0.1, min_points=20, **_):
    """A premature plateau: the series improved in its first ``early`` share, then its best value in the rest is
    within ``min_improvement`` (relative) of the value reached by then, while still above ``min_level`` times the
    initial level. One verdict, at the step where the plateau began."""
    v = np.asarray(values, dtype=float)
    mask = np.zeros(v.size, bool)
    out = np.full(v.size, np.nan)
    fin_idx = np.flatnonzero(np.isfinite(v))
    if fin_idx.size < min_points:
        return mask, out, {}
    f = v[fin_idx]
    k = max(1, int(np.ceil(share * f.size)))
    start = float(np.median(f[:k]))
    cut = int(early * f.size)
    at_cut = float(np.median(f[max(0, cut - k): cut + 1]))
    later_best = float(np.median(f[-k:]))
    best_later = min(later_best, float(np.min(f[cut:])) if f[cut:].size else at_cut)
    if start <= 0:
        return mask, out, {}
    early_progress = (start - at_cut) / start
    later_progress = (at_cut - best_later) / at_cut if at_cut > 0 else 0.0
    if early_progress >= min_early_progress and later_progress < min_improvement and at_cut > min_level * start:
        i = fin_idx[cut]
        mask[i] = True
        out[i] = at_cut
    return mask, out, {}


# -- pair ---------------------------------------------------------------------------------------------------------
def _align(a, b):
    (sa, va), (sb, vb) = a, b
    common, ia, ib = np.intersect1d(sa, sb, return_indices=True)
    return common, np.asarray(va, float)[ia], np.asarray(vb, float)[ib]


def ratio(a, b, *, above=None, below=None, **_):
    """a / b above ``above`` or below ``below``, on the steps both were recorded."""
    steps, va, vb = _align(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = va / vb
        mask = np.zeros(r.size, bool)
        if above is not None:
            mask |= r >= above
        if below is not None:
            mask |= r <= below
    return steps, mask, r, {"a": va, "b": vb}


def opposite_trends(a, b, *, rise=0.1, fall=0.0, min_points=3, **_):
    """``b`` rose more than ``rise`` (relative) above its minimum while ``a`` kept falling: at each point after
    b's minimum, b > (1 + rise) min(b) and a is below its value at b's minimum by more than ``fall`` (relative).
    ``a`` is taken at the steps where ``b`` was recorded (its last value at or before each)."""
    sa, va = np.asarray(a[0]), np.asarray(a[1], float)
    sb, vb = np.asarray(b[0]), np.asarray(b[1], float)
    mask = np.zeros(sb.size, bool)
    if sb.size < min_points or sa.size == 0:
        return sb, mask, vb, {}
    # a smoothed at b's steps: median of a's values in (previous b step, this b step]
    edges = np.concatenate([[sa.min() - 1], sb])
    a_at = np.full(sb.size, np.nan)
    for i in range(sb.size):
        sel = va[(sa > edges[i]) & (sa <= edges[i + 1])]
        sel = sel[np.isfinite(sel)]
        if sel.size:
            a_at[i] = np.median(sel)
    fin = np.isfinite(vb)
    if not fin.any():
        return sb, mask, vb, {}
    imin = int(np.nanargmin(np.where(fin, vb, np.nan)))
    bmin, amin = vb[imin], a_at[imin]
    with np.errstate(invalid="ignore"):
        mask = (np.arange(sb.size) > imin) & (vb > (1 + rise) * bmin) & (a_at < (1 - fall) * amin)
    return sb, mask, vb, {"b_min": np.full(sb.size, bmin), "a": a_at}


# -- group --------------------------------------------------------------------------------------------------------
def spread(series, *, below=1e-3, min_series=2, **_):
    """Across the matched series at each common step: min / max below ``below`` (orders of magnitude apart)."""
    if len(series) < min_series:
        return np.array([], dtype=np.int64), np.zeros(0, bool), np.zeros(0), {}
    steps = series[0][1]
    for _, s, _ in series[1:]:
        steps = np.intersect1d(steps, s)
    mat = np.stack([np.asarray(v, float)[np.searchsorted(s, steps)] for _, s, v in series])
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        lo, hi = np.nanmin(mat, axis=0), np.nanmax(mat, axis=0)
        r = lo / hi
        mask = (r < below) & (hi > 0)
    argmin = np.nanargmin(np.where(np.isfinite(mat), mat, np.inf), axis=0) if mat.size else np.zeros(0, int)
    return steps, mask, r, {"lowest": argmin}


_NUM = (int, float)
REQUIRED = ...

DETECTORS: dict[str, Detector] = {d.name: d for d in [
    Detector("threshold", "each", threshold,
             {"above": (_NUM, None), "below": (_NUM, None), "scope": (str, "each")}, threshold.__doc__ or ""),
    Detector("nonfinite", "each", nonfinite, {}, nonfinite.__doc__ or ""),
    Detector("spike", "each", spike, {"window": (int, 20), "factor": (_NUM, 3.0), "max_duration": (int, 5),
                                      "min_history": (int, 5)}, spike.__doc__ or ""),
    Detector("divergence", "each", divergence, {"factor": (_NUM, 3.0), "min_points": (int, 5)},
             divergence.__doc__ or ""),
    Detector("growth", "each", growth, {"factor": (_NUM, 100.0), "baseline": (_NUM, 0.1), "min_points": (int, 5)},
             growth.__doc__ or ""),
    Detector("no_progress", "each", no_progress, {"min_improvement": (_NUM, 0.1), "share": (_NUM, 0.1),
                                                  "min_points": (int, 10)}, no_progress.__doc__ or ""),
    Detector("plateau", "each", plateau, {"early": (_NUM, 0.35), "min_improvement": (_NUM, 0.02),
                                          "min_early_progress": (_NUM, 0.05), "min_level": (_NUM, 0.3),
                                          "share": (_NUM, 0.1), "min_points": (int, 20)}, plateau.__doc__ or ""),
    Detector("ratio", "pair", ratio, {"above": (_NUM, None), "below": (_NUM, None)}, ratio.__doc__ or ""),
    Detector("opposite_trends", "pair", opposite_trends, {"rise": (_NUM, 0.1), "fall": (_NUM, 0.0),
                                                          "min_points": (int, 3)}, opposite_trends.__doc__ or ""),
    Detector("spread", "group", spread, {"below": (_NUM, 1e-3), "min_series": (int, 2)}, spread.__doc__ or ""),
]}
