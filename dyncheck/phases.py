"""Phases of training, detected from the loss curve alone (numpy only).

A loss curve is cut into at most six straight pieces (in log loss for positive losses): the cut that fits best,
with a penalty per piece so that noise does not buy extra pieces (BIC). Each piece is named by what the loss does
on it, relative to the run's whole descent:

- **rapid fitting**: the leading part of a descent, holding at least half of its drop, that falls at least twice
  as fast as the rest of it (the easy, dominant patterns first) -- or a descent that never slowed down before the
  run ended, when it fell 3x or more;
- **refinement**: still falls, more slowly;
- **stabilisation**: flat, near the best level the run reached (converged, or waiting for a learning-rate decay);
- **plateau**: flat while far above it, or a run whose loss barely moved at all;
- **instability**: the loss rises;
- **recovery**: the loss falls back after an instability, until it is down to where it was before.

A piece is flat when its fitted line moves less than 5% of the run's loss range (in log loss) and, for positive
losses, by less than a factor 1.5: a run that blew up by orders of magnitude has a range in which a 2x rise looks
small, yet a loss that doubles is no stabilisation. A step between two pieces (the drop of a staircase, a jump up
between two flat stretches) counts as the fall or rise it is. Adjacent pieces with the same name are merged
unless such a step lies between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Phase", "detect_phases", "PHASE_NAMES"]

PHASE_NAMES = ("rapid fitting", "refinement", "stabilisation", "plateau", "instability", "recovery")

_FLAT = 0.05  # a piece moving less than 5% of the run's loss range is flat
_RAPID = 2.0  # a falling piece at least this many times the run's average rate is rapid fitting
_NEAR_BEST = 0.35  # a flat piece within 35% of the range from the best level is stabilisation
_BARELY = 0.10  # a run whose smoothed loss fell less than 10% overall has no phases but one plateau
_FACTOR = float(np.log(1.5))  # a positive loss moving by this factor (in log) on a piece is never flat
_RAPID_ALONE = float(np.log(3.0))  # a descent with nothing after it is rapid fitting when it falls 3x or more


@dataclass(frozen=True)
class Phase:
    """One phase: its name and where it starts and ends (steps), with the smoothed loss at both ends."""

    name: str
    start: int
    end: int
    loss_start: float
    loss_end: float


def _bins(steps: np.ndarray, y: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Medians of runs of consecutive points (robust to spikes), with the first and last step of each run."""
    n = y.size
    edges = np.unique(np.linspace(0, n, min(points, n) + 1).astype(int))
    lo, hi = edges[:-1], edges[1:]
    med = np.array([np.median(y[a:b]) for a, b in zip(lo, hi)])
    centre = np.array([0.5 * (steps[a] + steps[b - 1]) for a, b in zip(lo, hi)])
    return centre, med, steps[lo], steps[hi - 1]


def _segment_costs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """cost[i, j]: squared error of the least-squares line through points i..j (inclusive); inf where j < i."""
    n = x.size
    c = [np.concatenate([[0.0], np.cumsum(a)]) for a in (np.ones(n), x, y, x * x, x * y, y * y)]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    s1, sx, sy, sxx, sxy, syy = (a[j + 1] - a[i] for a in c)
    with np.errstate(divide="ignore", invalid="ignore"):
        vxx = sxx - sx * sx / s1
        vxy = sxy - sx * sy / s1
        vyy = syy - sy * sy / s1
        cost = np.where(vxx > 1e-15, vyy - vxy * vxy / np.where(vxx > 1e-15, vxx, 1.0), vyy)
    cost = np.maximum(cost, 0.0)
    cost[j < i] = np.inf
    return cost


def _best_cuts(cost: np.ndarray, k: int, min_len: int) -> tuple[float, list[int]]:
    """Optimal split of points 0..n-1 into ``k`` runs of at least ``min_len`` points: (error, start indices)."""
    n = cost.shape[0]
    idx = np.arange(n)
    ok = (idx[None, :] - idx[:, None] + 1) >= min_len
    seg = np.where(ok, cost, np.inf)
    best = seg[0].copy()  # best[j]: error of points 0..j in one piece
    back: list[np.ndarray] = []
    for _ in range(1, k):
        # new[j] = min over i of best[i - 1] + seg[i, j]
        cand = np.concatenate([[np.inf], best[:-1]])[:, None] + seg
        arg = np.argmin(cand, axis=0)
        best = cand[arg, idx]
        back.append(arg)
    starts = [0]
    j = n - 1
    for arg in reversed(back):
        i = int(arg[j])
        starts.append(i)
        j = i - 1
    return float(best[n - 1]), sorted(set(starts))


def _name_falls(pieces: list[tuple[str, int, int, float, float]], avg_rate: float,
                log_drops: list[float] | None = None) -> list[str]:
    """Names of falling pieces: in each run of consecutive falling pieces, the leading pieces that make at least
    half of the run's drop are *rapid fitting* when they fall at least ``_RAPID`` times as fast as the rest of the
    run (or, for a run of one piece, as the whole training run on average, or -- a descent that never slowed down
    -- when it falls by ``_RAPID_ALONE`` in log loss, ``log_drops`` giving each piece's); the rest is
    *refinement*."""
    names = ["instability" if k == "rise" else "" for k, *_ in pieces]
    i = 0
    while i < len(pieces):
        if pieces[i][0] != "fall":
            i += 1
            continue
        j = i
        while j < len(pieces) and pieces[j][0] == "fall":
            j += 1
        run = pieces[i:j]
        total = sum(p[3] for p in run)
        lead, acc = 0, 0.0
        while lead < len(run) and acc < 0.5 * total:
            acc += run[lead][3]
            lead += 1
        lead = max(lead, 1)  # a run whose total drop is not positive (overflowing values): its first piece
        acc = sum(p[3] for p in run[:lead])
        span = sum(p[4] for p in run[:lead])
        rate_lead = acc / span if span > 0 else 0.0
        rest = run[lead:]
        ref = (sum(p[3] for p in rest) / sum(p[4] for p in rest)) if rest else avg_rate
        rapid = rate_lead >= _RAPID * max(ref, 1e-12)
        if not rest and log_drops is not None and j == len(pieces):  # still falling as fast when the run ended
            rapid = rapid or sum(log_drops[i:j]) >= _RAPID_ALONE
        for k in range(i, j):
            names[k] = "rapid fitting" if rapid and k < i + lead else "refinement"
        i = j
    return names


def _jump(change: float, log_range: float | None) -> int:
    """+1 / -1 when a change of the normalised level between two pieces is a rise / fall of its own (more than
    twice the flat tolerance, or, for positive losses, a factor 1.5), else 0."""
    big = abs(change) > 2 * _FLAT or (log_range is not None and abs(change) * log_range >= _FACTOR)
    return (1 if change > 0 else -1) if big else 0


def detect_phases(steps: np.ndarray, values: np.ndarray, *, max_phases: int = 6, points: int = 200) -> list[Phase]:
    """Phases of a (training) loss curve; an empty list for fewer than 10 finite points."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=float)
    fin = np.isfinite(values)
    steps, values = steps[fin], values[fin]
    if values.size < 10:
        return []
    positive = bool(np.all(values > 0))
    y_all = np.log(values) if positive else values
    xc, y, first, last = _bins(steps, y_all, points)
    back = np.exp if positive else (lambda v: v)
    n = y.size
    head, tail = float(np.median(y[: max(1, n // 20)])), float(np.median(y[-max(1, n // 20):]))
    start_loss, end_loss = float(back(head)), float(back(tail))
    lo, hi = float(y.min()), float(y.max())
    scale = abs(start_loss) if abs(start_loss) > 1e-12 else 1.0
    if abs(start_loss - end_loss) < _BARELY * scale or hi - lo < 1e-12:
        name = "instability" if end_loss > start_loss + _BARELY * scale else "plateau"
        return [Phase(name, int(first[0]), int(last[-1]), start_loss, end_loss)]

    x = (xc - xc[0]) / max(xc[-1] - xc[0], 1e-12)
    with np.errstate(over="ignore", invalid="ignore"):  # values near the float range (a diverged run)
        yn = (y - lo) / (hi - lo)
    if not np.all(np.isfinite(yn)):
        yn = np.nan_to_num(yn, nan=0.5, posinf=1.0, neginf=0.0)
    cost = _segment_costs(x, yn)
    min_len = max(3, n // 20)
    best: tuple[float, list[int]] | None = None
    for k in range(1, max_phases + 1):
        if k * min_len > n:
            break
        err, starts = _best_cuts(cost, k, min_len)
        bic = n * np.log(max(err / n, 1e-4)) + 3 * k * np.log(n)
        if best is None or bic < best[0]:
            best = (bic, starts)
    assert best is not None
    starts = best[1]
    bounds = list(zip(starts, starts[1:] + [n]))
    avg_rate = (yn[0] - yn[-1]) if yn[0] > yn[-1] else 1.0  # normalised drop per unit of normalised time
    pieces = []  # (kind, start, stop, drop, duration)
    log_drops = []  # each piece's fitted fall in log loss (positive losses; 0 otherwise)
    fitted = []  # each piece's fitted line at its first and last point (normalised)
    for a, b in bounds:
        xs, ys = x[a:b], yn[a:b]
        slope, icpt = np.polyfit(xs, ys, 1) if b - a > 1 else (0.0, ys[0])
        drop = float((slope * xs[0] + icpt) - (slope * xs[-1] + icpt))
        log_drop = drop * (hi - lo) if positive and np.isfinite(hi - lo) else 0.0
        kind = ("rise" if drop < -_FLAT * 2 or log_drop <= -_FACTOR else
                "fall" if drop >= _FLAT or log_drop >= _FACTOR else "flat")
        pieces.append((kind, a, b, drop, max(float(xs[-1] - xs[0]), 1e-12)))
        log_drops.append(log_drop)
        fitted.append((float(slope * xs[0] + icpt), float(slope * xs[-1] + icpt)))
    names = _name_falls(pieces, avg_rate, log_drops if positive else None)
    seen_descent = False
    before_rise: float | None = None  # after an instability: the level the loss had before it (normalised)
    named: list[tuple[str, int, int]] = []
    prev_end, prev_kind = 0.0, ""
    for (kind, a, b, _, _), name, (fit_a, fit_b) in zip(pieces, names, fitted):
        # a step between two flat pieces (a staircase's drop, a jump up between two flat stretches) counts as
        # the descent or rise it is, and keeps the pieces apart
        start_level = fit_a
        both_flat = prev_kind == "flat" and kind == "flat"  # between sloped pieces a gap is the fit's, not a step
        jump = _jump(start_level - prev_end, hi - lo if positive else None) if both_flat else 0
        if jump > 0 and before_rise is None:
            before_rise = float(np.min(yn[:a]))
        elif jump < 0:
            seen_descent = True
        if kind == "rise":
            if before_rise is None:
                before_rise = float(np.min(yn[:a])) if a > 0 else float(yn[0])
        elif kind == "fall":
            seen_descent = True
            if before_rise is not None:
                name = "recovery"
                if float(np.median(yn[max(a, b - 3):b])) <= before_rise + _FLAT:
                    before_rise = None  # back where it was: what follows is ordinary training again
        elif kind == "flat":
            near_best = float(np.median(yn[a:b])) <= _NEAR_BEST
            if before_rise is not None and start_level <= before_rise + _FLAT:
                before_rise = None  # a jump up and straight back down: flat again where it was
            name = "stabilisation" if seen_descent and near_best and before_rise is None else "plateau"
        if named and named[-1][0] == name and jump == 0:
            named[-1] = (name, named[-1][1], b)
        else:
            named.append((name, a, b))
        prev_end, prev_kind = fit_b, kind
    out = []
    for name, a, b in named:
        ya = float(np.median(y[a: min(b, a + 3)]))
        yb = float(np.median(y[max(a, b - 3): b]))
        out.append(Phase(name, int(first[a]), int(last[b - 1]), float(back(ya)), float(back(yb))))
    return out
