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

from dataclasses import dataclass
from typing import Any, Callable

import bottleneck as bn
import numpy as np

__all__ = ["DETECTORS", "Detector", "held_for", "rolling_median", "rolling_median_prev"]



@dataclass(frozen=True)
class Detector:
    """A generic detector: ``params`` maps each parameter to (JSON schema, default); ``fields`` are the extra
    values a check's message template may name (besides value, step, first_step, last_step, metric, check)."""

    name: str
    kind: str  # each | pair | group
    fn: Callable[..., Any]
    params: dict[str, tuple[dict[str, Any], Any]]
    fields: tuple[str, ...] = ()
    whole_run: bool = False  # one verdict over the whole run: not evaluated live, before the run has ended

    @property
    def doc(self) -> str:
        return " ".join((self.fn.__doc__ or "").split())

    def defaults(self) -> dict[str, Any]:
        return {k: d for k, (_, d) in self.params.items()}


def held_for(steps: np.ndarray, mask: np.ndarray, n_steps: int) -> np.ndarray:
    """Points of ``mask`` in a run of consecutive True points that lasts at least ``n_steps`` steps (Prometheus
    ``for``). A point holds from its step until the next recorded step; the last point of a series for the typical
    spacing of the series. So ``n_steps`` means the same whether a metric is recorded every step or every 50."""
    mask = np.asarray(mask, dtype=bool)
    steps = np.asarray(steps)
    if n_steps <= 1 or mask.size == 0 or not mask.any():
        return mask.copy()
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    # a run holds until the next recorded step; the last point, for the series' typical spacing (only needed when
    # a run reaches the end: a median over the whole series is not free on long runs)
    ends = np.empty(stops.size, dtype=float)
    inner = stops < mask.size
    ends[inner] = steps[stops[inner]]
    if not inner.all():
        spacing = float(bn.median(np.diff(steps))) if steps.size > 1 else 1.0
        ends[~inner] = steps[-1] + spacing
    long = ends - steps[starts] >= n_steps
    marks = np.zeros(mask.size + 1, np.int32)
    np.add.at(marks, starts[long], 1)
    np.add.at(marks, stops[long], -1)
    return np.cumsum(marks[:-1]) > 0


def _ffill(values: np.ndarray) -> np.ndarray:
    """Non-finite values replaced by the last finite value before them (NaN before the first)."""
    v = np.asarray(values, dtype=float)
    fin = np.isfinite(v)
    if fin.all() or v.size == 0:
        return v.copy()
    idx = np.where(fin, np.arange(v.size), -1)
    np.maximum.accumulate(idx, out=idx)
    out = np.where(idx >= 0, v[np.maximum(idx, 0)], np.nan)
    return out


def _windows(values: np.ndarray, window: int, include_current: bool) -> np.ndarray:
    """Row i: the ``window`` values ending at i (inclusive) or just before i, non-finite values forward-filled
    and NaN before the start (a view, no copy)."""
    v = _ffill(values)
    pad = np.concatenate([np.full(window, np.nan), v])
    win = np.lib.stride_tricks.sliding_window_view(pad, window)  # win[k] = pad[k : k + window]
    return win[1:] if include_current else win[:-1]


def _rolling_mad(values: np.ndarray, window: int, at: np.ndarray) -> np.ndarray:
    """Median absolute deviation of the previous ``window`` values, at the indices ``at``."""
    win = _windows(values, window, False)[at]
    with _quiet():
        med = np.nanmedian(win, axis=1, keepdims=True)
        return np.nanmedian(np.abs(win - med), axis=1)


def _rolling(values: np.ndarray, window: int, fn: Callable[..., np.ndarray], *, include_current: bool,
             at: np.ndarray | None = None) -> np.ndarray:
    """``fn(windows, axis=1)`` over trailing windows of ``window`` values (shorter at the start). Non-finite values
    are forward-filled first, so one NaN does not poison a window. NaN where no value exists yet."""
    n = np.asarray(values).size
    if n == 0 or window < 1:
        return np.full(n if at is None else len(at), np.nan)
    move = _MOVING.get(fn)
    if move is not None and (at is None or len(at) * window > n):
        # bottleneck's moving-window kernels (O(n log window) in C); min_count=1 gives the shorter windows at
        # the start and ignores NaN before the first finite value, like the nan-aware reduction below
        full_out = move(_ffill(values), window=min(window, n), min_count=1)
        if not include_current:
            full_out = np.concatenate([[np.nan], full_out[:-1]])
        return full_out if at is None else full_out[at]
    # windows that hold NaN (short ones at the start, or before the first finite value) take the slower
    # nan-aware reduction, full windows the fast one
    win = _windows(values, window, include_current)
    if at is not None:
        win = win[at]
    full = np.isfinite(win).all(axis=1)
    out = np.full(len(win), np.nan)
    if full.any():
        out[full] = fn(win[full], axis=1)
    part = ~full
    if part.any():
        with _quiet():
            out[part] = _NAN_AWARE[fn](win[part], axis=1)
    return out


_NAN_AWARE: dict[Callable[..., Any], Callable[..., Any]] = {np.median: np.nanmedian, np.min: np.nanmin}
_MOVING: dict[Callable[..., Any], Callable[..., Any]] = {np.median: bn.move_median, np.min: bn.move_min}


def rolling_median_prev(values: np.ndarray, window: int) -> np.ndarray:
    """Median of the previous ``window`` values before each point (NaN where none exists)."""
    return _rolling(values, window, np.median, include_current=False)


def rolling_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median of the last ``window`` values up to and including each point."""
    return _rolling(values, window, np.median, include_current=True)


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _initial_level(v: np.ndarray, k: int = 10) -> float:
    fin = v[np.isfinite(v)]
    return float(np.median(fin[:k])) if fin.size else float("nan")


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs of the runs of True in ``mask`` (end exclusive)."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


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
        if finite.size and _median_may_pass(finite, above, below):
            v_eval[-1] = bn.median(finite)
    else:
        v_eval = v
    with np.errstate(invalid="ignore"):
        mask = np.zeros(v.size, dtype=bool)
        if above is not None:
            mask |= v_eval > above
        if below is not None:
            mask |= v_eval < below
    return mask, v_eval, {}


def _median_may_pass(x: np.ndarray, above: float | None, below: float | None) -> bool:
    """Whether the median of ``x`` may be above ``above`` or below ``below``, decided by counting (O(n), no
    partition): more than half the values beyond the bound decide yes, fewer than half no; exactly half (an even
    count) needs the median itself."""
    m = x.size
    for bound, beyond in ((above, np.greater), (below, np.less)):
        if bound is not None:
            c = int(np.count_nonzero(beyond(x, bound)))
            if 2 * c >= m:
                return True
    return False


def nonfinite(steps, values, *, metric="", **_):
    """NaN or Inf values; for counts of non-finite values (metric names containing ``nonfinite``): positive."""
    v = np.asarray(values, dtype=float)
    mask = ~np.isfinite(v)
    if "nonfinite" in metric:
        with np.errstate(invalid="ignore"):
            mask |= v > 0
    return mask, v, {}


def spike(steps, values, *, window=20, factor=3.0, min_jump=0.0, robust_z=0.0, max_duration=10, min_history=5,
          tail=0.0, tail_quantile=0.99, tail_rank=0, recover=0.0, **_):
    """A jump to more than ``factor`` times the median of the previous ``window`` values (the recent level) that
    falls back under that within ``max_duration`` points -- longer excursions are divergence, not spikes. The jump
    must also exceed ``min_jump`` times the series' initial level (so tiny absolute wiggles of a loss near zero do
    not count) and ``robust_z`` robust standard deviations (1.4826 MAD) of the recent values (so batch-to-batch
    noise does not count). With ``tail`` > 0 the jump must also stand out of the run's own heavy tail: its log-ratio
    to the recent level must exceed ``tail`` times the ``tail_quantile`` of all the run's log-ratios (a batch-2 SGD
    run whose per-batch loss often jumps 20x must jump far beyond that; a clean run's 99th percentile is ~2x). With
    ``tail_rank`` k > 0 the reference is instead the k-th largest of the run's *other* excursions (peaks of the
    log-ratio more than ``max_duration`` points from the jump): a jump stands out of the run's own largest ones,
    whatever the run's length (a quantile's distance to the maximum grows with the number of points), and up to k
    genuine spikes do not hide one another. Both references are at least log10(2). With ``recover`` r > 0 an
    excursion also counts as fallen back once it has undone the share r of its jump in log scale (below ``level *
    (peak / level) ** (1 - r)``): a loss thrown up 10,000x by a corrupt batch that is back within 100x in a dozen
    steps, then takes a hundred more to settle, was a spike -- not a divergence."""
    v = np.asarray(values, dtype=float)
    # v > factor x median(window) implies v > factor x min(window): medians are needed only at those points
    low = _rolling(v, window, np.min, include_current=False)
    with np.errstate(invalid="ignore"):
        candidates = np.flatnonzero(v > factor * low)
    level = np.full(v.size, np.nan)
    if candidates.size:
        level[candidates] = _rolling(v, window, np.median, include_current=False, at=candidates)
    history = np.minimum(np.arange(v.size), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        jump = v - level
        above = (v > factor * level) & (level > 0) & (history >= min_history) & np.isfinite(v)
        if min_jump > 0:
            above &= jump > min_jump * _initial_level(v)
        if robust_z > 0 and above.any():
            idx = np.flatnonzero(above)
            mad = np.full(v.size, np.nan)
            mad[idx] = _rolling_mad(v, window, idx)
            above &= jump > robust_z * 1.4826 * mad
        if tail > 0 and above.any():
            if tail_rank > 0:
                idx = np.flatnonzero(above)
                peaks = _top_peaks(v, window, low, max_duration, tail_rank + 8)
                r_idx = np.log10(v[idx] / level[idx])
                above[idx] = r_idx > tail * _other_peaks_level(peaks, idx, max_duration, tail_rank)
            else:
                above &= _log_ratio(v, window) > tail * _tail_level(v, window, tail_quantile)
    mask = np.zeros_like(above)
    for s, _ in _runs(above):
        # the excursion lasts until the value falls back under factor x the level from before the jump; the
        # rolling level itself would adapt to a lasting shift and make it look short
        tail = v[s + 1: s + max_duration + 1]
        lim = factor * level[s]
        if recover > 0:
            seg = v[s: s + max_duration + 1]
            peak = np.max(seg[np.isfinite(seg)], initial=-np.inf)
            if peak > lim:
                lim = max(lim, level[s] * (peak / level[s]) ** (1.0 - recover))
        back = np.flatnonzero(np.isfinite(tail) & (tail <= lim))
        if back.size:
            mask[s: s + 1 + int(back[0])] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = v / level
    return mask, v, {"level": level, "ratio": ratio}


def oscillation(steps, values, *, window=50, factor=10.0, min_count=10, max_spacing=100, min_autocorr=0.3,
                min_jump=0.0, **_):
    """Repeated swings: the series jumps to more than ``factor`` times its recent level (the median of the
    previous ``window`` values) at least ``min_count`` times and on average at least once every ``max_spacing``
    points (a long run's handful of genuine spikes is no oscillation), and its log deviations from that level are
    serially correlated (lag-1 autocorrelation at least ``min_autocorr``): each swing decays over several points
    -- a loss driven up and pulled down again, as by data served in blocks of one class -- instead of independent
    batch-to-batch noise, which in a batch-2 SGD run jumps as often but is uncorrelated from one step to the
    next. With ``min_jump`` a jump counts only when it rises more than that share of the series' initial level
    above the recent level (a loss near zero whose batch noise jumps 10x, 1e-3 to 1e-2, does not swing).
    Holds at the points of every jump once both hold over the series up to there."""
    v = np.asarray(values, dtype=float)
    n = v.size
    mask = np.zeros(n, bool)
    count = np.zeros(n)
    auto = np.full(n, np.nan)
    if n < 2 * window:
        return mask, count, {"count": count, "autocorr": auto}
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(v > 0, np.log10(v), np.nan)
        low = _rolling(v, window, np.min, include_current=False)
        cand = np.flatnonzero(v > factor * low)
        up = np.zeros(n, bool)
        if cand.size:
            level = _rolling(v, window, np.median, include_current=False, at=cand)
            up[cand] = v[cand] > factor * level
            if min_jump > 0:
                up[cand] &= v[cand] - level > min_jump * _initial_level(v)
    up[:window] = False
    starts = up & ~np.concatenate([[False], up[:-1]])
    count = np.cumsum(starts).astype(float)
    if count[-1] < min_count:  # too few jumps anywhere: the autocorrelation (a rolling median) is not needed
        return mask, count, {"count": count, "autocorr": auto}
    # deviations from the trailing median (in log10), their lag-1 autocorrelation up to each point
    r = x - rolling_median_prev(x, window)
    ok = np.isfinite(r)
    r0 = np.where(ok, r, 0.0)
    both = ok & np.concatenate([[False], ok[:-1]])
    prev = np.concatenate([[0.0], r0[:-1]])
    c = np.cumsum
    nb = c(both)
    with np.errstate(invalid="ignore", divide="ignore"):
        sx, sy = c(np.where(both, r0, 0)), c(np.where(both, prev, 0))
        sxx, syy = c(np.where(both, r0 * r0, 0)), c(np.where(both, prev * prev, 0))
        sxy = c(np.where(both, r0 * prev, 0))
        cov = sxy / nb - (sx / nb) * (sy / nb)
        varx, vary = sxx / nb - (sx / nb) ** 2, syy / nb - (sy / nb) ** 2
        auto = np.where((nb >= window) & (varx > 0) & (vary > 0), cov / np.sqrt(varx * vary), np.nan)
        spacing = (np.arange(n) + 1 - window) / np.maximum(count, 1)
        mask = starts & (count >= min_count) & (spacing <= max_spacing) & (auto >= min_autocorr)
    return mask, count, {"count": count, "autocorr": auto}


def _log_ratio(v: np.ndarray, window: int) -> np.ndarray:
    """log10 of each value over the median of the ``window`` values before it (NaN where undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log10(v / rolling_median_prev(v, window))


def _peaks(r: np.ndarray, sep: int, k: int, pool: int = 256) -> list[tuple[int, float]]:
    """The largest values of ``r`` at least ``sep`` points apart (greedy non-maximum suppression over the
    ``pool`` largest points), largest first, at most ``k``."""
    fin = np.flatnonzero(np.isfinite(r))
    if fin.size == 0:
        return []
    top = fin[np.argsort(r[fin])[::-1][:pool]] if fin.size > pool else fin[np.argsort(r[fin])[::-1]]
    kept: list[tuple[int, float]] = []
    for i in top:
        if all(abs(int(i) - j) > sep for j, _ in kept):
            kept.append((int(i), float(r[i])))
            if len(kept) >= k:
                break
    return kept


def _top_peaks(v: np.ndarray, window: int, low: np.ndarray, sep: int, k: int) -> list[tuple[int, float]]:
    """``_peaks`` of the log-ratios to the rolling median of the previous ``window`` values, computed without
    that median everywhere (the costly part on long runs): the ratio to the rolling minimum ``low`` bounds each
    log-ratio from above, so exact ones are needed only for the points with the largest bounds -- as many as it
    takes for the k-th peak to exceed every bound left out (then no point left out can be among the k)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(low > 0, np.log10(v / low), np.inf)
    fin = np.flatnonzero(np.isfinite(v) & ~np.isnan(u))
    if fin.size == 0:
        return []
    order = fin[np.argsort(-u[fin], kind="stable")]
    m = min(order.size, 1024)
    while True:
        pool = order[:m]
        r = np.full(v.size, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            r[pool] = np.log10(v[pool] / _rolling(v, window, np.median, include_current=False, at=pool))
        peaks = _peaks(r, sep, k, pool=m)
        if m >= order.size or (len(peaks) >= k and u[order[m]] <= peaks[-1][1]):
            return peaks
        m = min(order.size, 4 * m)


def _other_peaks_level(peaks: list[tuple[int, float]], at: np.ndarray, sep: int, rank: int) -> np.ndarray:
    """At each index of ``at``: the ``rank``-th largest of ``peaks`` (index, value; largest first) more than
    ``sep`` points away from it (its own excursion left out), at least log10(2); where fewer peaks remain, the
    smallest of them (or log10(2))."""
    floor = float(np.log10(2.0))
    out = np.full(at.size, floor)
    for n, i in enumerate(at):
        others = [val for j, val in peaks if abs(j - int(i)) > sep]
        if others:
            out[n] = max(others[min(rank, len(others)) - 1], floor)
    return out


def _tail_level(v: np.ndarray, window: int, q: float) -> float:
    """The ``q`` quantile of the run's upward log-ratios to their recent level (its ordinary excursions), at least
    log10(2) so that a nearly noise-free run does not make every small bump look extreme."""
    r = _log_ratio(v, window)
    r = r[np.isfinite(r)]
    return max(float(np.quantile(r, q)) if r.size else 0.0, float(np.log10(2.0)))


def divergence(steps, values, *, window=10, factor=2.0, lost=0.5, at_end=True, min_points=10, tail_points=0,
               beyond=0.0, beyond_factor=10.0, undone=0.0, **_):
    """The smoothed series (median of the last ``window`` points) climbs above ``factor`` times its best (lowest)
    value so far and has given back more than ``lost`` of the progress made from its initial level to that best
    (non-finite values are the ``nonfinite`` detector's business). With ``at_end`` only the excursion that lasts to
    the end of the series counts (it diverged and stayed there). With ``tail_points`` k > 0, a run that ends while
    it blows up counts too, before the smoothed series has caught up: each of the last k raw values is above
    ``factor`` times the best smoothed value before them, and their median has given back more than ``lost``. With
    ``beyond`` q > 0 the climb must also stand out of the run's own noise: the smoothed value (the tail's median)
    above the q-quantile of every value before the excursion began. The lowest of many rolling medians sits in a
    noisy series' low tail (and a median of its first few points is noise): a loss at its noise floor that drifts
    back from such a dip to its usual level has not diverged. A climb to ``beyond_factor`` times the best counts
    whatever came before (a run that blew up at its first steps has only the blow-up before it). With ``undone`` p >
    0 a climb also counts without reaching ``factor`` when it gave back (nine tenths of) the progress the run made:
    the smoothed series back at where it started (the first 5 points' median, not above the first point) after a best,
    on a coarse rolling median of a twentieth of the series, at least the share p below it (a gradient accumulation
    that forgets to divide the loss: 1.39 -> 0.8 and back to chance, 1.7x its best)."""
    v = np.asarray(values, dtype=float)
    n = v.size
    if n < min_points:
        return np.zeros(n, bool), v, {}
    sm = rolling_median(v, window)
    fin_sm = np.where(np.isfinite(sm), sm, np.inf)
    best = np.minimum.accumulate(fin_sm)
    initial = _initial_level(v, window)
    idx = np.arange(n)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mask = (sm > factor * best) & (sm - best > lost * (initial - best)) & (best > 0) & np.isfinite(best)
        mask &= np.isfinite(v) & (idx >= min_points - 1)
        ratio = sm / best
    tail = tail_points
    tail_hit = False
    if tail and n >= max(min_points, tail + window):
        last = v[n - tail:]
        ref = best[n - tail - 1]  # the best the smoothed series reached before the tail
        with np.errstate(invalid="ignore", over="ignore"):
            if (ref > 0 and np.isfinite(ref) and np.all(np.isfinite(last)) and np.all(last > factor * ref)
                    and np.median(last) - ref > lost * (initial - ref)):
                mask[n - tail:] = True
                tail_hit = True
                best = best.copy()
                best[n - tail:] = ref
                ratio = np.where(mask, v / ref, ratio)
    if undone > 0 and n >= 2 * window:
        start = max(initial, min(float(v[0]), float(np.nanmedian(v[:5])))) if np.isfinite(v[0]) else initial
        w = max(window, n // 20)
        coarse = rolling_median(v, w)
        coarse[: w - 1] = np.nan
        if np.isfinite(coarse).any():
            b = int(np.nanargmin(coarse))
            cbest = coarse[b]
            if 0 < cbest <= (1.0 - undone) * start:
                with np.errstate(invalid="ignore"):
                    back = (idx > b) & (sm >= start - 0.1 * (start - cbest)) & np.isfinite(v)  # 90% given back
                mask |= back
    if beyond > 0 and mask.any():
        climb = sm.copy()
        if tail_hit:  # the tail's median stands for the smoothed values the median has not caught up with yet
            climb[n - tail:] = np.median(v[n - tail:])
        keep = np.zeros(n, bool)
        for a, b in _runs(mask):
            if tail_hit and b == n:
                a = min(a, n - tail)
            before = v[:a][np.isfinite(v[:a])]
            if before.size:
                keep[a:b] = climb[a:b] > np.quantile(before, beyond)
        with np.errstate(invalid="ignore", divide="ignore"):
            keep |= climb > beyond_factor * best  # a climb this far above the best is beyond any noise floor
        mask &= keep
    if at_end:
        runs = _runs(mask)
        mask = np.zeros(n, bool)
        if runs and runs[-1][1] == n:
            mask[runs[-1][0]:] = True
    return mask, v, {"best": best, "ratio": ratio, "smoothed": sm, "initial": np.full(n, initial)}


def growth(steps, values, *, factor=100.0, bound=None, window=1, peak_factor=None, baseline=0.1, min_points=5,
           early_peaks=False, **_):
    """The series, smoothed by a rolling median of ``window`` points (so more than half of them must agree),
    above ``factor`` times the median of its first ``baseline`` share, or above the absolute ``bound``; or a
    single raw value above ``peak_factor`` times that early level. Infinite values always count. With
    ``early_peaks`` a raw peak counts inside the baseline share too (its median stands, a few peaks do not move
    it) when the series started at most ``factor`` times that level: a learning rate that blows the gradients
    up 100x in the first steps and kills the network leaves no peak after them (gradients that start 300x
    higher and decay, as from an initialisation too large for a tanh net, did not blow up). After a start above
    that, an early peak counts when it is also ``peak_factor`` times the first value: gradients that start high
    and then blow up further (raw inputs of scale 1e4: 6e3 at the first step, 5e10 two steps later)."""
    v = np.asarray(values, dtype=float)
    n = v.size
    if n < min_points:
        return np.zeros(n, bool), v, {}
    k = max(1, int(np.ceil(baseline * n)))
    first = v[:k][np.isfinite(v[:k])]
    base = float(np.median(first)) if first.size else float("nan")
    sm = v
    if window > 1:
        # the median of a window exceeds T only if at least half its values do: count those (O(n)), and take
        # exact medians only there
        limits = [x for x in (factor * base if base > 0 else None, bound) if x is not None]
        sm = np.full(n, np.nan)
        if limits:
            with np.errstate(invalid="ignore"):
                over = np.concatenate([[0], np.cumsum(_ffill(v) > min(limits))])
            count = over[1:] - over[np.maximum(np.arange(1, n + 1) - window, 0)]
            cand = np.flatnonzero(count >= window - window // 2)
            if cand.size:
                sm[cand] = _rolling(v, window, np.median, include_current=True, at=cand)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mask = np.isinf(v)
        if base > 0:
            grown = sm > factor * base
            grown[:k] = False
            if peak_factor is not None:
                peaks = v > peak_factor * base
                if not early_peaks:
                    peaks[:k] = False
                elif not v[0] <= factor * base:  # an abnormal start: only peaks that far above the first value
                    peaks[:k] &= v[:k] > peak_factor * v[0]
                grown |= peaks
            mask |= grown
        if bound is not None:
            mask |= sm > bound
    shown = np.where(np.isnan(sm), v, sm)  # a point that fired as infinite (or a raw peak) shows its own value
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ratio = shown / base if base > 0 else np.full(n, np.nan)  # (of what is shown: a raw peak's own ratio)
    return mask, shown, {"baseline": np.full(n, base), "ratio": ratio}


def no_progress(steps, values, *, min_improvement=0.1, share=0.1, head=0, min_points=10, **_):
    """The median of the last ``share`` of the series improves (decreases) on the median of the first ``share`` by
    less than ``min_improvement`` of it. With ``head`` k > 0 the start is the higher of that median and the median
    of the first k points (but not above the first point: a loss that blew up at its first steps did not start
    there): a loss that falls fast within the first share (full-batch GD drops most of the way in a few dozen
    steps) made its progress inside the first median. One verdict, reported at the last step."""
    v = np.asarray(values, dtype=float)
    mask = np.zeros(v.size, bool)
    out = np.full(v.size, np.nan)
    fin = v[np.isfinite(v)]
    if fin.size < min_points:
        return mask, out, {}
    k = max(1, int(np.ceil(share * fin.size)))
    first, last = float(np.median(fin[:k])), float(np.median(fin[-k:]))
    if head > 0:  # not above the first value: a loss that blew up at its first steps did not start there
        first = max(first, min(float(fin[0]), float(np.median(fin[:head]))))
    improvement = (first - last) / abs(first) if first != 0 else 0.0
    mask[-1] = improvement < min_improvement
    out[-1] = improvement
    return mask, out, {"first": np.full(v.size, first), "last": np.full(v.size, last)}


def plateau(steps, values, *, early=0.35, min_improvement=0.1, min_early_progress=0.2, min_level=0.2,
            share=0.1, min_points=20, **_):
    """A premature plateau: the series made progress, then stopped improving early and never resumed. On medians
    of consecutive blocks of ``share`` of the points, the plateau begins at the first block, at least
    ``min_early_progress`` (relative) below the start, after which the series never gets lower by more than
    ``min_improvement`` times the progress made up to then. It is premature if it begins within the first
    ``early`` share of the series at a level above ``min_level`` times the start (not converged near zero).
    One verdict, at the step where the plateau began."""
    v = np.asarray(values, dtype=float)
    mask = np.zeros(v.size, bool)
    out = np.full(v.size, np.nan)
    fin_idx = np.flatnonzero(np.isfinite(v))
    if fin_idx.size < min_points:
        return mask, out, {}
    f = v[fin_idx]
    k = max(1, int(np.ceil(share * f.size)))
    nb = f.size // k
    offset = f.size - nb * k  # blocks aligned to the end, so the last block holds the last points
    med = np.median(f[offset:].reshape(nb, k), axis=1)
    start = float(np.median(f[:k]))
    if nb < 3 or start <= 0:
        return mask, out, {}
    future_best = np.minimum.accumulate(med[::-1])[::-1]
    progress = start - med
    flat = (med - future_best < min_improvement * progress) & (progress >= min_early_progress * start)
    if not flat.any():
        return mask, out, {}
    b0 = int(np.argmax(flat))
    level = float(med[b0])
    begins = offset + b0 * k
    if begins <= early * f.size and level > min_level * start:
        i = fin_idx[begins]
        mask[i] = True
        out[i] = level
    return mask, out, {"initial": np.full(v.size, start)}


def collapse(steps, values, *, below=1e-3, early=0.5, **_):
    """The value falls to ``below`` times its running maximum or lower before the first ``early`` share of the
    run's steps and stays there to the end (a learning rate that a mis-stepped schedule drove to ~0; a cosine that
    reaches 0 at the end, or a warm restart's dip, does not count). Reported at the step it first fell. "At or
    below", with a rounding allowance: three x0.1 milestones of a MultiStepLR land on 1e-3 of the peak, which
    in float64 is 0.1 * 0.1 * 0.1 * 0.1 = 1.0000000000000003e-4 -- above 1e-3 * 0.1."""
    v = np.asarray(values, dtype=float)
    s = np.asarray(steps)
    mask = np.zeros(v.size, bool)
    out = np.full(v.size, np.nan)
    if v.size < 3:
        return mask, out, {}
    peak = np.maximum.accumulate(np.where(np.isfinite(v), v, -np.inf))
    with np.errstate(invalid="ignore", divide="ignore"):
        low = (v <= below * peak * (1 + 1e-5)) & (peak > 0)
        rel = v / peak
    # stays low to the end: the last point that is not low
    not_low = np.flatnonzero(~low)
    first = int(not_low[-1]) + 1 if not_low.size else 0
    if first < v.size and s[first] - s[0] <= early * (s[-1] - s[0]):
        mask[first:] = True
    out[:] = rel
    return mask, out, {"peak": peak}


def improves_later(steps, values, *, min_improvement=0.1, min_points=4, **_):
    """At each point: the series later gets lower than it is there by more than ``min_improvement`` of the
    progress it made up to there (from its first value), and by more than 1% of its value -- it is still
    improving after that point (e.g. a validation loss that keeps falling while the training loss looks flat)."""
    v = np.asarray(values, dtype=float)
    mask = np.zeros(v.size, bool)
    if np.isfinite(v).sum() < min_points:
        return mask, v, {}
    w = np.where(np.isfinite(v), v, np.inf)
    later_best = np.concatenate([np.minimum.accumulate(w[::-1])[::-1][1:], [np.inf]])
    start = float(v[np.isfinite(v)][0])
    with np.errstate(invalid="ignore"):
        gain = v - later_best
        mask = (gain > min_improvement * np.maximum(start - v, 0)) & (gain > 0.01 * np.abs(v)) & np.isfinite(v)
    return mask, gain, {}


def present(steps, values, **_):
    """The series was recorded with at least one finite value (for conditions: "the run has this metric", e.g. an
    adaptive optimizer's learning rate ``lr/Adam*``). One verdict, at the last step."""
    v = np.asarray(values, dtype=float)
    mask = np.zeros(v.size, bool)
    if v.size and np.isfinite(v).any():
        mask[-1] = True
    return mask, v, {}


def absent(steps, values, **_):
    """For conditions: the run has no such metric (no matching series with a finite value) -- e.g. a condition
    that needs the output's facts only where they were measured, and holds for a run imported without them. The
    engine judges it on the whole run; on a recorded series it never holds."""
    return np.zeros(np.asarray(values).size, bool), np.asarray(values, dtype=float), {}


def step_change(steps, values, *, factor=2.0, direction="both", **_):
    """The value changes from one point to the next by at least ``factor`` (up, down or ``both``): schedule events
    such as a step decay, a warm restart or a plateau-triggered cut of the learning rate. Values <= 0 count as a
    change when the other side is positive (a restart from exactly 0)."""
    v = np.asarray(values, dtype=float)
    mask = np.zeros(v.size, bool)
    if v.size < 2:
        return mask, v, {}
    prev, cur = v[:-1], v[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cur / prev
        up = (r >= factor) | ((prev <= 0) & (cur > 0))
        down = (r <= 1.0 / factor) | ((cur <= 0) & (prev > 0))
    sel = {"up": up, "down": down, "both": up | down}[direction]
    mask[1:] = sel & np.isfinite(cur) & np.isfinite(prev)
    return mask, v, {}


def trend(steps, values, *, direction="falling", window=50, z=3.0, min_change=0.0, log=True, since="window",
          **_):
    """Whether the series is significantly ``falling`` or ``rising`` at each point, judged against its own noise.

    The median of the last ``window`` points is compared with the median of a reference: the ``window`` points
    before them (``since: window``, a trailing trend) or the first ``window`` points of the series
    (``since: start``, the change since the run began). The change counts when it exceeds ``z`` standard errors
    (from the robust spread, 1.4826 MAD, of the points' deviations from their rolling median) and ``min_change``
    (relative; on ``log`` values, a change of log10). With ``log`` the series is taken as log10 (positive values;
    losses and norms move multiplicatively)."""
    v = np.asarray(values, dtype=float)
    n = v.size
    mask = np.zeros(n, bool)
    out = np.full(n, np.nan)
    if n < 2 * window:  # two full windows that do not overlap
        return mask, out, {}
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(v > 0, np.log10(v), np.nan) if log else v.copy()
    recent = rolling_median(x, window)
    if since == "start":
        fin = x[:window][np.isfinite(x[:window])]
        ref = np.full(n, float(np.median(fin)) if fin.size else np.nan)
    else:
        ref = np.concatenate([np.full(window, np.nan), recent[:-window]])
    # noise: deviations from the rolling median, robust spread over the whole series (one scale per run)
    dev = x - recent
    dev = dev[np.isfinite(dev)]
    sigma = 1.4826 * float(np.median(np.abs(dev - np.median(dev)))) if dev.size else float("nan")
    se = 1.2533 * sigma * np.sqrt(2.0 / window)  # standard error of the difference of two medians of `window`
    change = recent - ref
    if not log:
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = change / np.abs(ref)
    else:
        rel = change
    with np.errstate(invalid="ignore"):
        if direction == "falling":
            mask = (change < -z * se) & (rel < -min_change)
        else:
            mask = (change > z * se) & (rel > min_change)
    mask[: 2 * window - 1] = False
    mask &= np.isfinite(change)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        factor = 10.0 ** change if log else recent / ref
        shown = (10.0 ** ref, 10.0 ** recent) if log else (ref, recent)
    # reference / recent as the series' own values (not log10), factor = recent / reference
    return mask, change, {"reference": shown[0], "recent": shown[1], "factor": factor}


# -- pair ---------------------------------------------------------------------------------------------------------
def _align(a, b):
    (sa, va), (sb, vb) = a, b
    common, ia, ib = np.intersect1d(sa, sb, return_indices=True)
    return common, np.asarray(va, float)[ia], np.asarray(vb, float)[ib]


def _median_between(sa: np.ndarray, va: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """``a`` at each of b's steps: the median of its finite values after b's previous step, up to and including
    this one (per-batch noise averages out between two validations); NaN where there are none."""
    hi = np.searchsorted(sa, sb, side="right")
    lo = np.concatenate([[0], hi[:-1]])
    out = np.full(sb.size, np.nan)
    for i in range(sb.size):
        sel = va[lo[i]:hi[i]]
        sel = sel[np.isfinite(sel)]
        if sel.size:
            out[i] = np.median(sel)
    return out


def ratio(a, b, *, above=None, below=None, between=False, hold=False, to_end=0.0, scope="each", **_):
    """a / b at or above ``above`` or at or below ``below``, on the steps both were recorded -- or, with
    ``between``, at b's steps with ``a`` the median of its values since b's previous point (a per-batch series
    against a per-validation one); with ``hold`` as well, a point of b with no value of ``a`` since the previous one
    takes a's latest value before it (a level recorded less often than b, such as ``output/chance_loss`` on the
    per-layer schedule against validations). ``to_end`` (a share): only the stretch of consecutive points that
    reaches the last point counts, and only when it covers at least that share of the points (it held, and holds at
    the end). ``scope: first``: only the first point with a finite ratio is judged (where a quantity started out);
    ``scope: min`` / ``max``: only the point with the lowest / highest finite ratio (``max`` with ``below``: the
    ratio stayed at or below it all run)."""
    if between:
        sa, va = np.asarray(a[0]), np.asarray(a[1], float)
        steps, vb = np.asarray(b[0]), np.asarray(b[1], float)
        med = _median_between(sa, va, steps) if sa.size else np.full(steps.size, np.nan)
        fin = np.isfinite(va)
        if hold and fin.any():  # a's last finite point at or before each of b's steps, where none fell between
            sf, vf = sa[fin], va[fin]
            latest = np.searchsorted(sf, steps, side="right") - 1
            med = np.where(np.isfinite(med) | (latest < 0), med, vf[np.maximum(latest, 0)])
        va = med
    else:
        steps, va, vb = _align(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = va / vb
        mask = np.zeros(r.size, bool)
        if above is not None:
            mask |= r >= above
        if below is not None:
            mask |= r <= below
    if to_end > 0:
        runs = _runs(mask)
        mask = np.zeros(r.size, bool)
        if runs and runs[-1][1] == r.size and runs[-1][1] - runs[-1][0] >= max(1.0, to_end * r.size):
            mask[runs[-1][0]:] = True
    if scope != "each":
        fin = np.flatnonzero(np.isfinite(r))
        keep = np.zeros(r.size, bool)
        if fin.size:
            at = fin[0] if scope == "first" else fin[np.argmin(r[fin])] if scope == "min" else fin[np.argmax(r[fin])]
            keep[at] = mask[at]
        mask = keep
    return steps, mask, r, {"a": va, "b": vb}


def opposite_trends(a, b, *, rise=0.1, min_rise=0.0, fall=0.0, min_points=3, min_run=1, at_end=False, **_):
    """``b`` rose while ``a`` kept falling: at each point after b's minimum, b is above its minimum by more than
    ``rise`` of its magnitude and by more than ``min_rise`` times a's initial level (absolute scale), while ``a`` is
    lower than it was at b's minimum by more than ``fall`` of its magnitude -- for at least ``min_run``
    consecutive points of b and, with ``at_end``, up to b's last point (it rose and stayed up). ``a`` is taken at
    b's steps as the median of its values since b's previous point (so per-batch noise averages out)."""
    sa, va = np.asarray(a[0]), np.asarray(a[1], float)
    sb, vb = np.asarray(b[0]), np.asarray(b[1], float)
    mask = np.zeros(sb.size, bool)
    if sb.size < min_points or sa.size == 0:
        return sb, mask, vb, {}
    a_at = _median_between(sa, va, sb)
    fin = np.isfinite(vb)
    if not fin.any():
        return sb, mask, vb, {}
    imin = int(np.nanargmin(np.where(fin, vb, np.nan)))
    bmin, amin = vb[imin], a_at[imin]
    a0 = _initial_level(va)
    with np.errstate(invalid="ignore", divide="ignore"):
        # shares of |level|: a loss that goes negative (a Gaussian or Poisson NLL) rises from -2.99 to -2.97 by
        # 0.7%, not by "more than 5% of -2.99" (which every value above -3.14 is)
        mask = ((np.arange(sb.size) > imin) & (vb > bmin + rise * abs(bmin)) & (vb - bmin > min_rise * abs(a0))
                & (a_at < amin - fall * np.abs(amin)))
        rel = (vb - bmin) / abs(bmin)
    runs = [(s, e) for s, e in _runs(mask) if e - s >= min_run and (not at_end or e == sb.size)]
    mask = np.zeros(sb.size, bool)
    for s, e in runs:
        mask[s:e] = True
    return sb, mask, vb, {"b_min": np.full(sb.size, bmin), "a": a_at, "rise": rel}


def stalled_while_falling(a, b, *, fall=10.0, min_improvement=0.1, min_points=4, **_):
    """``b`` never improved while ``a`` fell: at b's points after its first, ``a`` (the median of its values since
    b's previous point) is below 1/``fall`` of what it was at b's first point, while ``b`` has never got below
    (1 - ``min_improvement``) of its first value -- and never does, to its last point (a validation loss that
    improves late, as in grokking, is not stalled). Measured from the first validation, not from step 0: a run whose
    validation converges within the first epoch has a training loss that converges with it."""
    sa, va = np.asarray(a[0]), np.asarray(a[1], float)
    sb, vb = np.asarray(b[0]), np.asarray(b[1], float)
    mask = np.zeros(sb.size, bool)
    if sb.size < min_points or sa.size == 0 or not np.isfinite(vb[0]) or vb[0] <= 0:
        return sb, mask, vb, {}
    a_at = _median_between(sa, va, sb)
    a_ref = a_at[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        best = np.fmin.accumulate(vb)
        stalled = best > (1 - min_improvement) * vb[0]
        if stalled[-1]:
            mask = (np.arange(sb.size) > 0) & stalled & (a_at < a_ref / fall) & (a_ref > 0)
        fell = a_ref / a_at
    return sb, mask, vb, {"a": a_at, "b0": np.full(sb.size, vb[0]), "fall": fell}


# -- group --------------------------------------------------------------------------------------------------------
def _group_key(name: str, depth: int) -> str:
    """The first ``depth`` '/'-components of a series name, a ``-<n>`` suffix of the last one dropped
    (``lr/SGD-1/pg0`` and ``lr/SGD/pg3`` -> ``lr/SGD``: two optimizers of one class)."""
    parts = name.split("/")[:depth]
    if parts:
        head, sep, tail = parts[-1].rpartition("-")
        if sep and head and tail.isdigit():
            parts[-1] = head
    return "/".join(parts)


def _spread_grouped(series, group, **kw):
    """:func:`spread` within each group of series (:func:`_group_key`), at the steps every group has; at each
    step the group furthest apart decides (its lowest and highest series, indexed in ``series``)."""
    groups: dict[str, list[int]] = {}
    for i, (name, _, _) in enumerate(series):
        groups.setdefault(_group_key(name, group), []).append(i)
    parts = []
    for idx in groups.values():
        st, m, r, info = spread([series[i] for i in idx], **kw)
        if st.size:
            parts.append((idx, st, m, r, info))
    if not parts:
        return np.array([], dtype=np.int64), np.zeros(0, bool), np.zeros(0), {}
    steps = parts[0][1]
    for _, st, _, _, _ in parts[1:]:
        steps = np.intersect1d(steps, st)
    n = steps.size
    mask, r = np.zeros(n, bool), np.full(n, np.inf)
    lo_idx, hi_idx = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for idx, st, m, rr, info in parts:
        at = np.searchsorted(st, steps)
        g_r = np.where(np.isfinite(rr[at]), rr[at], np.inf)
        better = (m[at] & ~mask) | ((m[at] == mask) & (g_r < r))  # a firing group first, then the lowest ratio
        mask |= m[at]
        r = np.where(better, g_r, r)
        ix = np.asarray(idx)
        lo_idx = np.where(better, ix[info["lowest"][at]], lo_idx)
        hi_idx = np.where(better, ix[info["highest"][at]], hi_idx)
    r = np.where(np.isfinite(r), r, np.nan)
    return steps, mask, r, {"lowest": lo_idx, "highest": hi_idx}


def spread(series, *, below=1e-3, min_series=2, reference="max", min_share=0.0, group=0, **_):
    """Across the matched series at each common step: the smallest positive value over the ``reference`` (the
    largest, or the ``median`` of the series) is below ``below`` (orders of magnitude apart), and at least
    ``min_share`` of the series are that far below it (one odd parameter is not a pattern of the network). Zeros
    are left out: parameters without gradient are another check. ``group`` k > 0: series are compared only with
    those whose names agree on their first k '/'-components (``lr/<Optimizer>``: an Adam lr and an SGD lr are
    not on one scale)."""
    if group:
        return _spread_grouped(series, group, below=below, min_series=min_series, reference=reference,
                               min_share=min_share)
    if len(series) < min_series:
        return np.array([], dtype=np.int64), np.zeros(0, bool), np.zeros(0), {}
    steps = np.asarray(series[0][1])
    for _, s, _ in series[1:]:
        if not (len(s) == len(steps) and np.array_equal(s, steps)):
            steps = np.intersect1d(steps, s)
    vals = [np.asarray(v, float) if len(s) == len(steps) else np.asarray(v, float)[np.searchsorted(s, steps)]
            for _, s, v in series]
    # one pass per series with running extremes (no series x steps matrix: long runs have many layers)
    n = steps.size
    lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
    n_ok = np.zeros(n, np.int64)
    with np.errstate(invalid="ignore"):
        for v in vals:
            ok = (v > 0) & (v < np.inf)  # NaN compares False
            np.minimum(lo, np.where(ok, v, np.inf), out=lo)
            np.maximum(hi, np.where(ok, v, -np.inf), out=hi)
            n_ok += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        if reference == "median":
            with _quiet():
                ref = np.nanmedian(np.stack([np.where((v > 0) & (v < np.inf), v, np.nan) for v in vals]), axis=0)
        else:
            ref = hi
        r = lo / ref
        mask = (r < below) & (n_ok >= min_series)
        if min_share > 0 and mask.any():
            n_low = np.zeros(n, np.int64)
            for v in vals:
                n_low += (v > 0) & (v < np.inf) & (v < below * ref)
            mask &= n_low >= np.maximum(1, np.ceil(min_share * n_ok))
    # which series are lowest and highest: needed only where the check can fire
    lo_idx, hi_idx = np.zeros(n, np.int64), np.zeros(n, np.int64)
    at = np.flatnonzero(mask)
    if at.size:
        sub = np.stack([v[at] for v in vals])
        ok = (sub > 0) & (sub < np.inf)
        lo_idx[at] = np.argmin(np.where(ok, sub, np.inf), axis=0)
        hi_idx[at] = np.argmax(np.where(ok, sub, -np.inf), axis=0)
    return steps, mask, r, {"lowest": lo_idx, "highest": hi_idx}


_NUM: dict[str, Any] = {"type": "number"}
_POS: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
_SHARE: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 1}
_NULLNUM: dict[str, Any] = {"type": ["number", "null"]}

DETECTORS: dict[str, Detector] = {d.name: d for d in [
    Detector("threshold", "each", threshold,
             {"above": (_NULLNUM, None), "below": (_NULLNUM, None),
              "scope": ({"enum": ["each", "last", "median"]}, "each")}),
    Detector("nonfinite", "each", nonfinite, {}),
    Detector("spike", "each", spike,
             {"window": (_COUNT, 20), "factor": (_POS, 3.0), "min_jump": ({"type": "number", "minimum": 0}, 0.0),
              "robust_z": ({"type": "number", "minimum": 0}, 0.0), "max_duration": (_COUNT, 10),
              "min_history": (_COUNT, 5), "tail": ({"type": "number", "minimum": 0}, 0.0),
              "tail_quantile": ({"type": "number", "minimum": 0.5, "maximum": 1}, 0.99),
              "tail_rank": ({"type": "integer", "minimum": 0}, 0), "recover": (_SHARE, 0.0)}, ("level", "ratio")),
    Detector("oscillation", "each", oscillation,
             {"window": (_COUNT, 50), "factor": ({"type": "number", "exclusiveMinimum": 1}, 10.0),
              "min_count": (_COUNT, 10), "max_spacing": (_POS, 100),
              "min_autocorr": ({"type": "number", "minimum": -1, "maximum": 1}, 0.3),
              "min_jump": ({"type": "number", "minimum": 0}, 0.0)},
             ("count", "autocorr")),
    Detector("divergence", "each", divergence,
             {"window": (_COUNT, 10), "factor": (_POS, 2.0), "lost": (_SHARE, 0.5),
              "at_end": ({"type": "boolean"}, True), "min_points": (_COUNT, 10),
              "tail_points": ({"type": "integer", "minimum": 0}, 0), "beyond": (_SHARE, 0.0),
              "beyond_factor": (_POS, 10.0), "undone": (_SHARE, 0.0)},
             ("best", "ratio", "smoothed", "initial")),
    Detector("growth", "each", growth,
             {"factor": (_POS, 100.0), "bound": ({"type": ["number", "null"]}, None), "window": (_COUNT, 1),
              "peak_factor": ({"type": ["number", "null"]}, None), "baseline": (_SHARE, 0.1), "min_points": (_COUNT, 5),
              "early_peaks": ({"type": "boolean"}, False)}, ("baseline", "ratio")),
    Detector("no_progress", "each", no_progress,
             {"min_improvement": (_NUM, 0.1), "share": (_SHARE, 0.1), "head": ({"type": "integer", "minimum": 0}, 0),
              "min_points": (_COUNT, 10)},
             ("first", "last"), whole_run=True),
    Detector("plateau", "each", plateau,
             {"early": (_SHARE, 0.35), "min_improvement": (_NUM, 0.1), "min_early_progress": (_NUM, 0.2),
              "min_level": (_NUM, 0.2), "share": (_SHARE, 0.1), "min_points": (_COUNT, 20)}, ("initial",),
             whole_run=True),
    Detector("collapse", "each", collapse, {"below": (_POS, 1e-3), "early": (_SHARE, 0.5)}, ("peak",)),
    Detector("improves_later", "each", improves_later,
             {"min_improvement": ({"type": "number", "minimum": 0}, 0.1), "min_points": (_COUNT, 4)}),
    Detector("present", "each", present, {}, whole_run=True),
    Detector("absent", "each", absent, {}, whole_run=True),
    Detector("step_change", "each", step_change,
             {"factor": ({"type": "number", "exclusiveMinimum": 1}, 2.0),
              "direction": ({"enum": ["up", "down", "both"]}, "both")}),
    Detector("trend", "each", trend,
             {"direction": ({"enum": ["falling", "rising"]}, "falling"), "window": (_COUNT, 50),
              "z": ({"type": "number", "minimum": 0}, 3.0), "min_change": ({"type": "number", "minimum": 0}, 0.0),
              "log": ({"type": "boolean"}, True), "since": ({"enum": ["window", "start"]}, "window")},
             ("reference", "recent", "factor")),
    Detector("ratio", "pair", ratio, {"above": (_NULLNUM, None), "below": (_NULLNUM, None),
                                      "between": ({"type": "boolean"}, False), "hold": ({"type": "boolean"}, False),
                                      "to_end": (_SHARE, 0.0),
                                      "scope": ({"enum": ["each", "first", "min", "max"]}, "each")},
             ("a", "b")),
    Detector("opposite_trends", "pair", opposite_trends,
             {"rise": (_NUM, 0.1), "min_rise": (_NUM, 0.0), "fall": (_NUM, 0.0), "min_points": (_COUNT, 3),
              "min_run": (_COUNT, 1), "at_end": ({"type": "boolean"}, False)},
             ("b_min", "a", "rise")),
    Detector("stalled_while_falling", "pair", stalled_while_falling,
             {"fall": ({"type": "number", "exclusiveMinimum": 1}, 10.0), "min_improvement": (_SHARE, 0.1),
              "min_points": (_COUNT, 4)}, ("a", "b0", "fall")),
    Detector("spread", "group", spread, {"below": (_POS, 1e-3), "min_series": (_COUNT, 2),
                                         "reference": ({"enum": ["max", "median"]}, "max"),
                                         "min_share": (_SHARE, 0.0),
                                         "group": ({"type": "integer", "minimum": 0}, 0)},
             ("lowest", "highest")),
]}
