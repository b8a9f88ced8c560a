"""Each detector against synthetic series with known answers, including edge cases."""

import warnings

import numpy as np
import pytest

from dyncheck.checks.detectors import (
    divergence,
    growth,
    no_progress,
    nonfinite,
    opposite_trends,
    plateau,
    ratio,
    rolling_median_prev,
    held_for,
    spike,
    spread,
    threshold,
)

EMPTY = (np.array([], dtype=np.int64), np.array([]))


def test_held_for_counts_steps_not_points():
    m = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
    assert held_for(np.arange(8), m, 3).tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert held_for(np.arange(8), m, 1).tolist() == m.tolist()
    assert held_for(np.arange(0), np.zeros(0, bool), 3).size == 0
    # recorded every 10 steps: two consecutive points hold for 20 steps
    assert held_for(np.arange(0, 80, 10), m, 20).tolist() == [1, 1, 0, 1, 1, 1, 0, 0]
    assert held_for(np.arange(0, 80, 10), m, 30).tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    # the last point holds for the typical spacing
    assert held_for(np.arange(0, 80, 10), m, 10).tolist() == m.tolist()


def test_held_for_against_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        steps = np.cumsum(rng.integers(1, 20, n))
        m = rng.random(n) < rng.uniform(0.1, 0.9)
        k = int(rng.integers(1, 60))
        spacing = float(np.median(np.diff(steps))) if n > 1 else 1.0
        expect = np.zeros(n, bool)
        i = 0
        while i < n:  # each run of True points: from its first step to the step after its last point
            if not m[i]:
                i += 1
                continue
            j = i
            while j + 1 < n and m[j + 1]:
                j += 1
            end = steps[j + 1] if j + 1 < n else steps[-1] + spacing
            expect[i:j + 1] = k <= 1 or end - steps[i] >= k
            i = j + 1
        assert held_for(steps, m, k).tolist() == expect.tolist(), (steps, m, k)


def test_rolling_median_prev_matches_loop():
    rng = np.random.default_rng(0)
    v = rng.normal(size=50)
    v[10] = np.nan
    got = rolling_median_prev(v, 7)
    filled = v.copy()
    filled[10] = filled[9]  # a non-finite value counts as the last finite one before it
    for i in range(1, 50):
        assert got[i] == pytest.approx(np.median(filled[max(0, i - 7):i]))
    assert np.isnan(got[0])


def test_threshold_scopes():
    s, v = np.arange(5), np.array([0.0, 5.0, 1.0, 2.0, 7.0])
    assert threshold(s, v, above=4)[0].tolist() == [0, 1, 0, 0, 1]
    assert threshold(s, v, above=6, scope="last")[0].tolist() == [0, 0, 0, 0, 1]
    m, val, _ = threshold(s, v, below=3, scope="median")
    assert m.tolist() == [0, 0, 0, 0, 1] and val[-1] == 2.0
    assert threshold(*EMPTY, above=1, scope="last")[0].size == 0
    assert threshold(np.arange(3), np.array([np.nan, 1, 2]), above=0)[0].tolist() == [0, 1, 1]


def test_nonfinite_values_and_counts():
    s = np.arange(4)
    assert nonfinite(s, np.array([1, np.nan, np.inf, 2]), metric="loss/train")[0].tolist() == [0, 1, 1, 0]
    assert nonfinite(s, np.array([0, 0, 3, 0.0]), metric="grad_nonfinite/w")[0].tolist() == [0, 0, 1, 0]
    assert nonfinite(s, np.array([0, 0, 3, 0.0]), metric="loss/train")[0].tolist() == [0, 0, 0, 0]


def test_spike_short_excursion_only():
    rng = np.random.default_rng(1)
    v = 1.0 + 0.05 * rng.normal(size=100)
    v[40] = 8.0  # short spike
    v[80:] = 10.0  # a level shift to the end: not a spike
    mask, _, extra = spike(np.arange(100), v, window=20, factor=3.0)
    assert np.flatnonzero(mask).tolist() == [40]
    assert extra["ratio"][40] == pytest.approx(8.0 / np.median(v[20:40]))


def test_spike_ignores_noise_and_short_series():
    rng = np.random.default_rng(2)
    v = np.abs(1.0 + 0.3 * rng.normal(size=500))
    assert not spike(np.arange(500), v)[0].any()
    assert not spike(np.arange(1), np.array([5.0]))[0].any()
    assert not spike(np.arange(3), np.array([1.0, 1.0, 100.0]))[0].any()  # too little history


def test_divergence():
    v = np.array([3.0, 2.0, 1.0, 0.5, 0.4, 0.5, 2.0, 5.0, 9.0, 8.0])
    mask, _, extra = divergence(np.arange(10), v, window=1, factor=3.0, min_points=3)
    assert mask.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    # it must stay up to the end (at_end), else it is no divergence; NaN is the nonfinite detector's business
    assert not divergence(np.arange(10), np.concatenate([v[:9], [0.3]]), window=1, factor=3.0, min_points=3)[0].any()
    assert not divergence(np.arange(10), np.concatenate([v[:6], [np.nan] * 4]), window=1, min_points=3)[0].any()
    assert extra["best"][8] == 0.4
    # a steadily falling loss never diverges; constant series neither
    assert not divergence(np.arange(50), np.linspace(2, 0.01, 50))[0].any()
    assert not divergence(np.arange(50), np.full(50, 2.0))[0].any()


def test_growth():
    v = np.concatenate([np.full(20, 1.0), np.logspace(0, 5, 30)])
    mask, _, extra = growth(np.arange(50), v, factor=100.0)
    first = int(np.flatnonzero(mask)[0])
    assert v[first] > 100 and v[first - 1] <= 100
    assert not growth(np.arange(3), np.array([1.0, 1e9, 1e9]))[0].any()  # too short
    assert growth(np.arange(10), np.array([1.0] * 5 + [np.inf] * 5))[0][5:].all()


def test_no_progress():
    s = np.arange(100)
    flat = 2.3 + 0.01 * np.sin(s)
    m, val, _ = no_progress(s, flat)
    assert m.tolist() == [False] * 99 + [True] and abs(val[-1]) < 0.05
    assert not no_progress(s, np.linspace(2.3, 0.1, 100))[0].any()
    assert not no_progress(np.arange(3), np.ones(3))[0].any()  # too few points: no verdict


def test_plateau_premature_vs_converged():
    s = np.arange(200)
    stuck = np.concatenate([np.linspace(2.3, 1.5, 40), np.full(160, 1.5)])
    m, val, _ = plateau(s, stuck)
    assert m.sum() == 1 and val[m][0] == pytest.approx(1.5, rel=0.05)
    converged = np.concatenate([np.linspace(2.3, 0.01, 40), np.full(160, 0.01)])  # near zero: fine
    assert not plateau(s, converged)[0].any()
    assert not plateau(s, np.linspace(2.3, 0.2, 200))[0].any()  # steady progress
    assert not plateau(s, np.full(200, 2.3))[0].any()  # never progressed: that is no-progress


def test_ratio_aligns_on_common_steps():
    steps, mask, r, _ = ratio((np.array([0, 5, 10]), np.array([1.0, 19.0, 21.0])),
                              (np.array([5, 10, 15]), np.array([20.0, 20.0, 20.0])), above=1.0)
    assert steps.tolist() == [5, 10] and mask.tolist() == [False, True]
    assert r.tolist() == pytest.approx([0.95, 1.05])


def test_opposite_trends_overfitting():
    train = (np.arange(100), np.linspace(2.0, 0.05, 100))
    val_steps = np.arange(10, 101, 10)
    val_vals = np.array([1.5, 1.0, 0.8, 0.7, 0.75, 0.85, 0.95, 1.1, 1.2, 1.3])
    steps, mask, _, _ = opposite_trends(train, (val_steps, val_vals), rise=0.1)
    assert steps[mask].tolist() == [60, 70, 80, 90, 100]
    # both falling: nothing
    assert not opposite_trends(train, (val_steps, np.linspace(1.5, 0.5, 10)))[1].any()
    assert not opposite_trends(train, (np.array([10]), np.array([1.0])))[1].any()


def test_opposite_trends_of_negative_losses_measures_the_rise_on_the_magnitude():
    # a Poisson/Gaussian NLL below zero: -2.99 -> -2.97 is a 0.7% rise, not one of "more than 10% of -2.99"
    train = (np.arange(100), np.linspace(0.5, -3.5, 100))
    val_steps = np.arange(10, 101, 10)
    flat = np.array([0.0, -2.0, -2.9, -2.99, -2.98, -2.97, -2.97, -2.98, -2.97, -2.97])
    assert not opposite_trends(train, (val_steps, flat), rise=0.1)[1].any()
    # a real rise from a negative minimum: -3.0 -> -2.0 is 33% of |-3.0|
    up = np.array([0.0, -2.0, -2.9, -3.0, -2.8, -2.6, -2.4, -2.2, -2.1, -2.0])
    steps, mask, _, info = opposite_trends(train, (val_steps, up), rise=0.1)
    assert steps[mask].tolist() == [60, 70, 80, 90, 100]  # above -3.0 + 0.3 from step 60
    assert info["rise"][-1] == pytest.approx(1.0 / 3.0)
    # a negative training loss that keeps falling is "falling" (below its level at val's minimum by 10% of |it|)
    a_at = info["a"]
    assert (a_at[4:] < a_at[3]).all()


def test_spread_vanishing_layers():
    s = np.arange(10)
    series = [("g/first", s, np.full(10, 1e-6)), ("g/mid", s[::2], np.full(5, 1e-2)), ("g/last", s, np.ones(10))]
    steps, mask, r, extra = spread(series, below=1e-3)
    assert steps.tolist() == [0, 2, 4, 6, 8] and mask.all()
    assert r[0] == pytest.approx(1e-6) and extra["lowest"][0] == 0
    assert spread(series[:1])[1].size == 0
    healthy = [("a", s, np.full(10, 0.1)), ("b", s, np.full(10, 1.0))]
    assert not spread(healthy)[1].any()


# -- edge cases, every detector --------------------------------------------------------------------------------
from dyncheck.checks.detectors import DETECTORS  # noqa: E402

EACH = [d for d in DETECTORS.values() if d.kind == "each"]
CASES = {
    "empty": (np.zeros(0, np.int64), np.zeros(0)),
    "single": (np.array([7]), np.array([1.5])),
    "two": (np.array([0, 1]), np.array([1.0, 100.0])),
    "constant": (np.arange(300), np.full(300, 0.7)),
    "nan-middle": (np.arange(300), np.where(np.arange(300) == 150, np.nan, 2.3 * np.exp(-np.arange(300) / 50))),
    "gaps": (np.array([0, 1, 2, 50, 51, 400, 401, 402, 9000, 9001] * 1).cumsum(), np.linspace(2.0, 0.5, 10)),
    "huge": (np.arange(100), np.full(100, 1e300)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("det", EACH, ids=lambda d: d.name)
def test_each_detector_edge_cases(det, case):
    steps, values = CASES[case]
    params = det.defaults() | ({"above": 1e6} if det.name == "threshold" else {})
    mask, value, extra = det.fn(steps, values, metric="loss/train", **params)
    assert mask.dtype == bool and mask.shape == values.shape and value.shape == values.shape
    for arr in extra.values():
        assert np.asarray(arr).shape == values.shape
    fired = set(np.flatnonzero(mask).tolist())
    expected = {
        ("nonfinite", "nan-middle"): {150},
        ("threshold", "huge"): set(range(100)),
        ("no_progress", "constant"): {299},  # a constant loss makes no progress: correct
        ("no_progress", "huge"): {99},
        ("step_change", "two"): {1},  # 1 -> 100: a step change of 100x
    }.get((det.name, case), set())
    if det.name == "present":  # "the run recorded this metric": one verdict at the last point of any finite series
        expected = {values.size - 1} if np.isfinite(values).any() else set()
    if (det.name, case) == ("trend", "nan-middle"):  # an exponential decay is falling, once two windows exist
        assert fired and min(fired) >= 2 * params["window"] - 1, sorted(fired)[:5]
        return
    if det.name == "improves_later" and case in ("nan-middle", "gaps"):  # falling series: improves after each point
        assert fired and values.size - 1 not in fired
        return
    assert fired == expected, (det.name, case, sorted(fired)[:10])


def test_pair_and_group_edge_cases():
    empty = (np.zeros(0, np.int64), np.zeros(0))
    one = (np.array([3]), np.array([1.0]))
    for d in (ratio, opposite_trends):
        for a, b in [(empty, empty), (one, one), (empty, one), (one, empty)]:
            steps, mask, value, _ = d(a, b)
            assert mask.shape == steps.shape == value.shape and not mask.any()
    steps, mask, r, _ = spread([("a", *empty), ("b", *empty)])
    assert steps.size == mask.size == r.size == 0
    # gaps: series recorded on different steps are compared where both exist
    steps, mask, r, _ = spread([("a", np.array([0, 10, 20]), np.array([1e-9, 1e-9, 1e-9])),
                                ("b", np.array([10, 20, 30]), np.array([1.0, 1.0, 1.0]))])
    assert steps.tolist() == [10, 20] and mask.all()
    # zeros (no gradient) and NaN are left out rather than called vanishing
    steps, mask, r, _ = spread([("a", np.arange(3), np.array([0.0, np.nan, 1e-9])),
                                ("b", np.arange(3), np.ones(3))])
    assert mask.tolist() == [False, False, True]


def test_spike_next_to_nan_and_huge_values():
    v = np.full(200, 1.0) + 0.01 * np.sin(np.arange(200))
    v[100] = np.nan  # a NaN is not a spike, and does not make its neighbours spikes
    assert not spike(np.arange(200), v)[0].any()
    v[150] = 1e300  # a huge finite jump that falls back is a spike
    assert np.flatnonzero(spike(np.arange(200), v)[0]).tolist() == [150]


def test_growth_smoothed_matches_full_rolling_median():
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.random(300) + 0.5, 20 + 5 * rng.random(100), rng.random(100) + 0.5])
    v[rng.choice(500, 20)] = 300.0  # isolated peaks: above the bound, but never half a window
    from dyncheck.checks.detectors import rolling_median

    mask, sm, _ = growth(np.arange(500), v, factor=10.0, bound=100.0, window=20)
    ref = rolling_median(v, 20)
    expected = (ref > 10 * np.median(v[:50])) | (ref > 100.0)
    expected[:50] = expected[:50] & (ref[:50] > 100.0)
    assert mask.tolist() == expected.tolist() and mask[320:400].all() and not mask[:300].any()
    assert np.allclose(sm[mask], ref[mask])


# -- detectors added with the calibration corpus ------------------------------------------------------------------
def test_spike_tail_judges_the_jump_against_the_runs_own_noise():
    from dyncheck.checks.detectors import spike

    rng = np.random.default_rng(3)
    n = 2000
    steps = np.arange(n)
    # a heavy-tailed batch-2 loss: mostly easy batches, and 5% that hold a hard sample (5-40x the level)
    noisy = 0.05 * np.exp(0.3 * rng.standard_normal(n)) * np.where(rng.random(n) < 0.05, rng.uniform(5, 40, n), 1)
    kw = dict(window=50, factor=5.0, min_jump=0.0, robust_z=0.0, max_duration=50, min_history=10)
    assert spike(steps, noisy, **kw)[0].any()  # without the tail rule its excursions look like spikes
    assert not spike(steps, noisy, tail=1.6, **kw)[0].any()
    # a clean run (5% noise) with one 100x bad batch: caught with the tail rule too, exactly there
    clean = 0.1 * np.exp(0.05 * rng.standard_normal(n))
    clean[1200] *= 100
    m = spike(steps, clean, tail=1.6, **kw)[0]
    assert np.flatnonzero(m).tolist() == [1200]
    # the same bad batch inside the heavy noise stands out only when it is far beyond it (1000x here)
    noisy2 = noisy.copy()
    noisy2[1200] = np.median(noisy) * 3000
    assert 1200 in np.flatnonzero(spike(steps, noisy2, tail=1.6, **kw)[0])


def test_spike_tail_rank_against_the_runs_other_excursions():
    from dyncheck.checks.detectors import _log_ratio, _other_peaks_level, _peaks, _rolling, _top_peaks, spike

    # peaks: greedy non-maximum suppression, against a brute force over all subsets' definition (largest first,
    # each more than sep from every larger kept one)
    rng = np.random.default_rng(5)
    for _ in range(30):
        r = rng.normal(size=int(rng.integers(1, 120)))
        r[rng.random(r.size) < 0.1] = np.nan
        sep = int(rng.integers(0, 10))
        kept = []
        for i in sorted(np.flatnonzero(np.isfinite(r)), key=lambda i: -r[i]):
            if all(abs(i - j) > sep for j, _ in kept):
                kept.append((int(i), float(r[i])))
        assert _peaks(r, sep, 5) == kept[:5]
    r = np.full(100, np.nan)
    r[[10, 12, 40, 70, 90]] = [5.0, 4.0, 3.0, 2.0, 1.0]
    # at 10 (its own excursion, 10 and 12, left out): the others are 3, 2, 1 -> 2nd largest 2
    peaks = _peaks(r, 5, 10)
    assert _other_peaks_level(peaks, np.array([10, 40]), 5, 2).tolist() == [2.0, 2.0]
    assert _other_peaks_level(peaks, np.array([10]), 5, 9).tolist() == [1.0]  # fewer peaks: the smallest
    assert _other_peaks_level(_peaks(np.zeros(50), 5, 9), np.array([3]), 5, 1).tolist() == [np.log10(2)]
    # the bounded search finds the same peaks as the log-ratios computed everywhere
    for seed in range(20):
        g = np.random.default_rng(seed)
        n = int(g.integers(50, 6000))
        v = np.exp(g.standard_normal(n) * g.uniform(0.05, 1.5)) * np.where(g.random(n) < 0.05, 30, 1)
        v[g.random(n) < 0.02] = np.nan
        low = _rolling(v, 50, np.min, include_current=False)
        k = int(g.integers(1, 12))
        assert _top_peaks(v, 50, low, 50, k) == _peaks(_log_ratio(v, 50), 50, k, pool=n)

    n = 3000
    steps = np.arange(n)
    kw = dict(window=50, factor=5.0, min_jump=0.0, robust_z=0.0, max_duration=50, min_history=10, tail=2.0,
              tail_rank=3)
    # heavy-tailed noise (5% of batches 5-40x the level): its largest jumps are alike, none stands out -- at any
    # length (a quantile reference drifts away from the maximum as the run gets longer)
    for length in (500, 3000):
        for seed in range(5):
            g = np.random.default_rng(seed)
            noisy = 0.05 * np.exp(0.3 * g.standard_normal(length)) * np.where(g.random(length) < 0.05,
                                                                               g.uniform(5, 40, length), 1)
            assert not spike(np.arange(length), noisy, **kw)[0].any()
    # two 100x bad batches in a clean run: both found (the other one is not the reference)
    clean = 0.1 * np.exp(0.05 * rng.standard_normal(n))
    clean[[900, 2100]] *= 100
    assert np.flatnonzero(spike(steps, clean, **kw)[0]).tolist() == [900, 2100]
    # a 3000x bad batch inside the heavy noise stands out
    g = np.random.default_rng(9)
    noisy = 0.05 * np.exp(0.3 * g.standard_normal(n)) * np.where(g.random(n) < 0.05, g.uniform(5, 40, n), 1)
    noisy[1500] = np.median(noisy) * 3000
    assert np.flatnonzero(spike(steps, noisy, **kw)[0]).tolist() == [1500]


def test_collapse_only_when_it_stays_low_from_early_on():
    from dyncheck.checks.detectors import collapse

    steps = np.arange(1000)
    bug = np.where(steps < 150, 0.1, 1e-6)  # a schedule stepped per batch: 1e-5 of the peak after 15%
    m, rel, extra = collapse(steps, bug, below=1e-3, early=0.5)
    assert np.flatnonzero(m)[0] == 150 and m[150:].all() and rel[500] == pytest.approx(1e-5)
    cosine = 0.1 * 0.5 * (1 + np.cos(np.pi * steps / 999))  # reaches 0 only at the very end
    assert not collapse(steps, cosine, below=1e-3, early=0.5)[0].any()
    restarts = 0.1 * 0.5 * (1 + np.cos(np.pi * (steps % 250) / 250))  # dips to ~0 at each restart, comes back
    assert not collapse(steps, restarts, below=1e-3, early=0.5)[0].any()
    late = np.where(steps < 700, 0.1, 1e-6)  # a late cut (fine-tuning tail) is not early
    assert not collapse(steps, late, below=1e-3, early=0.5)[0].any()
    # MultiStepLR(milestones=[30, 60, 90], gamma=0.1) meant per epoch, stepped per batch: exactly 1e-3 of the
    # peak from step 90 on -- in float64 a hair above it (0.1 * 0.1 * 0.1 * 0.1 = 1.0000000000000003e-4)
    lr, multistep = 0.1, []
    for s in steps:
        multistep.append(lr)
        lr = lr * 0.1 if s + 1 in (30, 60, 90) else lr
    m = collapse(steps, np.array(multistep), below=1e-3, early=0.5)[0]
    assert np.flatnonzero(m)[0] == 90 and m[90:].all()
    two = np.where(steps < 90, 0.1, 0.1 * 0.1 * 0.1 * 1.1)  # 1.1e-3 of the peak: not down to the threshold
    assert not collapse(steps, two, below=1e-3, early=0.5)[0].any()


def test_improves_later_against_brute_force():
    from dyncheck.checks.detectors import improves_later

    rng = np.random.default_rng(5)
    for _ in range(50):
        v = np.cumsum(rng.normal(-0.01, 0.05, 20)) + 2.0
        m, _, _ = improves_later(np.arange(20), v, min_improvement=0.1)
        for i in range(20):
            later = v[i + 1:].min() if i < 19 else np.inf
            gain = v[i] - later
            want = gain > 0.1 * max(v[0] - v[i], 0) and gain > 0.01 * abs(v[i])
            assert m[i] == want, (i, v)


def test_spread_min_share_and_median_reference():
    base = np.arange(10)
    one_odd = [("a", base, np.full(10, 1e-6))] + [(f"b{i}", base, np.full(10, 1.0)) for i in range(9)]
    assert spread(one_odd, below=1e-4)[1].all()  # the smallest against the largest
    assert not spread(one_odd, below=1e-4, min_share=0.25)[1].any()  # one odd parameter of ten is no pattern
    half = [(f"a{i}", base, np.full(10, 1e-6)) for i in range(5)] + [(f"b{i}", base, np.full(10, 1.0))
                                                                    for i in range(5)]
    assert spread(half, below=1e-4, min_share=0.25)[1].all()
    # against the median: a single fast head does not make the others look slow
    head = [(f"a{i}", base, np.full(10, 1e-3)) for i in range(5)] + [("head", base, np.full(10, 10.0))]
    assert spread(head, below=1e-3)[1].all() and not spread(head, below=1e-3, reference="median")[1].any()


def test_rolling_kernels_match_the_windowed_reference():
    """The moving-window kernels (bottleneck) against the plain windowed nan-aware reductions, with NaN and Inf
    (forward-filled), windows longer than the series, and at given indices."""
    from dyncheck.checks import detectors as D

    rng = np.random.default_rng(0)
    for _ in range(300):
        n, w = int(rng.integers(1, 300)), int(rng.integers(1, 400))
        v = rng.normal(size=n)
        if rng.random() < 0.5:
            v[rng.random(n) < 0.2] = np.nan
        if rng.random() < 0.2:
            v[rng.random(n) < 0.1] = np.inf
        for fn in (np.median, np.min):
            for inc in (True, False):
                with D._quiet():
                    ref = D._NAN_AWARE[fn](D._windows(v, w, inc), axis=1)
                np.testing.assert_allclose(D._rolling(v, w, fn, include_current=inc), ref, equal_nan=True)
                at = np.flatnonzero(rng.random(n) < 0.5)
                np.testing.assert_allclose(D._rolling(v, w, fn, include_current=inc, at=at), ref[at], equal_nan=True)


def _spread_reference(series, below, min_series, reference, min_share):
    """spread written as a plain series x steps matrix (the definition)."""
    steps = series[0][1]
    for _, s, _ in series[1:]:
        steps = np.intersect1d(steps, s)
    mat = np.stack([np.asarray(v, float)[np.searchsorted(s, steps)] for _, s, v in series])
    ok = np.isfinite(mat) & (mat > 0)
    lo = np.where(ok, mat, np.inf).min(axis=0)
    hi = np.where(ok, mat, -np.inf).max(axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.nanmedian(np.where(ok, mat, np.nan), axis=0) if reference == "median" else hi
        r = lo / ref
        mask = (r < below) & (ok.sum(axis=0) >= min_series)
        if min_share > 0:
            mask &= (ok & (mat < below * ref)).sum(axis=0) >= np.maximum(1, np.ceil(min_share * ok.sum(axis=0)))
    lowest = np.argmin(np.where(ok, mat, np.inf), axis=0)
    highest = np.argmax(np.where(ok, mat, -np.inf), axis=0)
    return steps, mask, r, lowest, highest


def test_spread_against_the_matrix_definition():
    from dyncheck.checks.detectors import spread

    rng = np.random.default_rng(4)
    for _ in range(200):
        k, n = int(rng.integers(1, 8)), int(rng.integers(1, 60))
        series = []
        for j in range(k):
            s = np.sort(rng.choice(80, n, replace=False)) if rng.random() < 0.3 else np.arange(n)
            v = 10.0 ** rng.uniform(-7, 1, s.size)
            v[rng.random(s.size) < 0.1] = 0.0
            v[rng.random(s.size) < 0.05] = np.nan
            v[rng.random(s.size) < 0.03] = np.inf
            series.append((f"s{j}", s, v))
        kw = dict(below=10.0 ** rng.uniform(-5, -1), min_series=int(rng.integers(1, 4)),
                  reference=str(rng.choice(["max", "median"])), min_share=float(rng.choice([0.0, 0.3])))
        if k < kw["min_series"]:
            continue
        steps, mask, r, extra = spread(series, **kw)
        rs, rmask, rr, lowest, highest = _spread_reference(series, **kw)
        assert np.array_equal(steps, rs) and mask.tolist() == rmask.tolist()
        np.testing.assert_allclose(r[mask], rr[mask])
        assert extra["lowest"][mask].tolist() == lowest[mask].tolist()
        assert extra["highest"][mask].tolist() == highest[mask].tolist()


def test_spread_within_groups_against_a_per_group_reference():
    from dyncheck.checks.detectors import _group_key, spread

    assert _group_key("lr/SGD-1/pg0", 2) == "lr/SGD" == _group_key("lr/SGD/pg3", 2)
    assert _group_key("lr/AdamW/pg0", 2) == "lr/AdamW" and _group_key("lr/my-opt/pg0", 2) == "lr/my-opt"
    # an AdamW body at 1e-3 beside an SGD head at 1.0: no spread within a class
    s = np.arange(20)
    mixed = [("lr/AdamW/pg0", s, np.full(20, 1e-3)), ("lr/SGD/pg0", s, np.ones(20))]
    assert spread(mixed, below=1e-2)[1].all() and not spread(mixed, below=1e-2, group=2)[1].any()
    # two SGD optimizers (SGD and SGD-1) are one class: their spread counts
    two_sgd = mixed + [("lr/SGD-1/pg0", s, np.full(20, 1e-6))]
    _, m, r, info = spread(two_sgd, below=1e-2, group=2)
    assert m.all() and r == pytest.approx(1e-6) and set(info["lowest"]) == {2} and set(info["highest"]) == {1}
    rng = np.random.default_rng(5)
    for _ in range(200):  # brute force: per step, the firing group with the lowest ratio (else the lowest ratio)
        names = [f"lr/{rng.choice(['A', 'B', 'B-1', 'C'])}/pg{j}" for j in range(int(rng.integers(2, 7)))]
        n = int(rng.integers(1, 30))
        series = [(nm, np.arange(n), 10.0 ** rng.uniform(-6, 0, n)) for nm in names]
        kw = dict(below=10.0 ** rng.uniform(-4, -1), min_series=2)
        steps, mask, r, info = spread(series, group=2, **kw)
        groups = {}
        for i, (nm, _, _) in enumerate(series):
            groups.setdefault(_group_key(nm, 2), []).append(i)
        fit = [(idx, spread([series[i] for i in idx], **kw)) for idx in groups.values() if len(idx) >= 2]
        if not fit:
            assert steps.size == 0
            continue
        for t in range(n):
            cands = [(not g[1][t], g[2][t], idx[g[3]["lowest"][t]]) for idx, g in fit]
            firing, ratio_t, low = min(cands)
            assert mask[t] == (not firing) and r[t] == pytest.approx(ratio_t) and info["lowest"][t] == low


def test_threshold_median_scope_decided_by_counting_matches_the_median():
    rng = np.random.default_rng(8)
    for _ in range(500):
        n = int(rng.integers(1, 12))
        v = rng.choice([0.5, 1.0, 1.5, 2.0], n) if rng.random() < 0.5 else rng.normal(size=n)
        v[rng.random(n) < 0.1] = np.nan
        above = [0.5, 1.0, 1.25, None][int(rng.integers(4))]
        below = [1.0, 1.5, 0.0, None][int(rng.integers(4))]
        mask, val, _ = threshold(np.arange(n), v, above=above, below=below, scope="median")
        fin = v[np.isfinite(v)]
        med = np.median(fin) if fin.size else np.nan
        expect = bool(fin.size) and ((above is not None and med > above) or (below is not None and med < below))
        assert mask.any() == expect, (v, above, below)
        if expect:
            assert mask.tolist() == [False] * (n - 1) + [True] and val[-1] == med


def test_stalled_while_falling_known_answers():
    from dyncheck.checks.detectors import stalled_while_falling

    steps = np.arange(1000)
    vs = np.arange(99, 1000, 100)  # ten validations
    train = 2.3 * np.exp(-steps / 100) + 1e-3  # falls ~1000x, most of it after the first validation
    flat = np.full(vs.size, 2.3)
    s, m, v, extra = stalled_while_falling((steps, train), (vs, flat))
    # fires from the validation where training has fallen 10x below its level at the first one (step 99: ~0.85)
    first = int(np.argmax(extra["a"] < extra["a"][0] / 10))
    assert np.flatnonzero(m).tolist() == list(range(first, vs.size)) and first >= 1
    assert extra["fall"][-1] > 10 and extra["b0"][0] == 2.3
    # validation that improves by a tenth at some point -- even late, as in grokking -- is not stalled
    late = flat.copy()
    late[-1] = 0.5
    assert not stalled_while_falling((steps, train), (vs, late))[1].any()
    assert not stalled_while_falling((steps, train), (vs, flat * np.linspace(1, 0.88, vs.size)))[1].any()
    # ... nor is a validation loss that converged before its first point while training converges with it
    conv = 0.3 + 2.0 * np.exp(-steps / 20)  # train ~0.3 from step 99 on: no further 10x
    assert not stalled_while_falling((steps, conv), (vs, np.full(vs.size, 0.35)))[1].any()
    # too few validations, no training loss, a zero first validation: nothing
    assert not stalled_while_falling((steps, train), (vs[:3], flat[:3]))[1].any()
    assert not stalled_while_falling((steps[:0], train[:0]), (vs, flat))[1].any()
    assert not stalled_while_falling((steps, train), (vs, np.zeros(vs.size)))[1].any()
    # NaN validation points do not count as improvement
    nan = flat.copy()
    nan[3] = np.nan
    assert stalled_while_falling((steps, train), (vs, nan))[1][-1]


def _sawtooth(n: int, period: int, rng: np.random.Generator) -> np.ndarray:
    """A low level (0.05) with a jump to ~2.0 every ``period`` points that decays by half each point after."""
    v = 0.05 * np.exp(0.1 * rng.standard_normal(n))
    for s in range(period, n, period):
        for k in range(period):
            if s + k < n:
                v[s + k] = max(v[s + k], 2.0 * 0.5 ** k)
    return v


def _oscillation_reference(v: np.ndarray, window: int, factor: float, i: int) -> tuple[int, float]:
    """Count of jump starts (> factor x median of the previous ``window``) after the first window, up to point
    i, and the lag-1 Pearson autocorrelation of log10 deviations from the previous-window median -- by loops."""
    x = np.log10(v)
    up = [j >= window and v[j] > factor * np.median(v[j - window:j]) for j in range(v.size)]
    count = sum(1 for j in range(window, i + 1) if up[j] and not up[j - 1])
    r = np.array([x[j] - np.median(x[max(0, j - window):j]) if j > 0 else np.nan for j in range(v.size)])
    pairs = [(r[j], r[j - 1]) for j in range(2, i + 1)]
    a, b = np.array(pairs).T
    return count, float(np.corrcoef(a, b)[0, 1])


def test_oscillation_known_answers():
    from dyncheck.checks.detectors import oscillation

    rng = np.random.default_rng(0)
    saw = _sawtooth(1000, 12, rng)
    mask, count, f = oscillation(np.arange(1000), saw)
    assert mask.any()
    first = int(np.flatnonzero(mask)[0])
    assert count[first] == 10 and f["autocorr"][first] >= 0.3
    assert all(saw[i] > 1.0 for i in np.flatnonzero(mask))  # it holds at the jumps
    # brute-force reference for the count and the autocorrelation at the end
    c, a = _oscillation_reference(saw, 50, 10.0, 999)
    assert count[-1] == c and f["autocorr"][-1] == pytest.approx(a, abs=1e-9)
    # independent heavy-tailed noise jumps 10x just as often, but is not serially correlated
    noise = np.exp(1.3 * rng.standard_normal(3000))
    m, cnt, f2 = oscillation(np.arange(3000), noise)
    assert cnt[-1] >= 30 and abs(f2["autocorr"][-1]) < 0.3 and not m.any()
    # a handful of decaying spikes in a long run is no oscillation (fewer than 10, or too far apart)
    few = _sawtooth(3000, 400, rng)
    assert not oscillation(np.arange(3000), few)[0].any()
    sparse = _sawtooth(20000, 800, rng)
    m, cnt, _ = oscillation(np.arange(20000), sparse)
    assert cnt[-1] >= 20 and not m.any()
    assert oscillation(np.arange(20000), sparse, max_spacing=1000)[0].any()
    # min_jump: a jump counts only when it rises that share of the initial level above the recent level. A loss
    # near zero whose swings are 10x but tiny in absolute terms (1e-3 -> 1e-2) does not swing; the same shape
    # scaled up to the loss's own start does
    low = 1e-3 * saw / saw[-200:].min()
    low[:10] = 2.3  # where the loss started
    assert oscillation(np.arange(1000), low)[0].any()
    assert not oscillation(np.arange(1000), low, min_jump=0.25)[0].any()
    big = saw.copy()
    big[:10] = 2.0  # started where its jumps go: each jump rises ~2, far above a quarter of that
    np.testing.assert_array_equal(oscillation(np.arange(1000), big, min_jump=0.25)[0],
                                  oscillation(np.arange(1000), big)[0])
    # a smooth falling curve: its deviations are correlated, but it never jumps
    smooth = 2.0 * np.exp(-np.arange(1000) / 200.0)
    assert not oscillation(np.arange(1000), smooth)[0].any()
    # too short for two windows, NaN and non-positive values
    assert not oscillation(np.arange(60), saw[:60])[0].any()
    holes = saw.copy()
    holes[::7] = np.nan
    holes[5::11] = 0.0
    m, _, _ = oscillation(np.arange(1000), holes)
    assert m.any()


def test_ratio_scope_first_judges_the_first_finite_point_only():
    a = (np.array([0, 10, 20, 30]), np.array([np.nan, 5.0, 1.0, 9.0]))
    b = (np.array([0, 10, 20, 30]), np.full(4, 4.0))
    steps, mask, r, _ = ratio(a, b, above=1.0, scope="first")
    assert mask.tolist() == [False, True, False, False]  # 5/4 at step 10; the later 9/4 is not looked at
    _, mask, _, _ = ratio(a, b, below=0.5, scope="first")
    assert not mask.any()  # 1/4 at step 20 is below 0.5, but the first finite point (5/4) is not
    _, mask, _, _ = ratio(a, b, below=0.5)
    assert mask.tolist() == [False, False, True, False]


# -- conditions on the run's own noise (issue 11: fresh held-out runs) ---------------------------------------------
def _floor_noise(n=1000, seed=0):
    """A loss at its floor: log-normal batch noise around 1e-3 (batch losses from 1e-5 to 5e-2)."""
    rng = np.random.default_rng(seed)
    return 1e-3 * np.exp(rng.normal(0.0, 1.5, n))


def test_divergence_beyond_the_runs_own_noise():
    v = _floor_noise()
    v[:3] = [5e-4, 2e-4, 4e-4]  # the first medians sit in the noise's low tail
    params = dict(window=20, factor=2.0, lost=0.5, at_end=True, min_points=20, tail_points=10)
    s = np.arange(v.size)
    v[-30:] = np.median(v) * 1.0  # back at its usual level after a low dip: no divergence beyond the noise
    assert divergence(s, v, **params)[0].any()  # the best-so-far reference alone calls it one
    assert not divergence(s, v, **params, beyond=0.75)[0].any()
    climbed = v.copy()
    climbed[-100:] = np.geomspace(2e-3, 2.0, 100)  # a real climb out of the floor to 2.0
    m = divergence(s, climbed, **params, beyond=0.75)[0]
    assert m[-1] and m[-100:].sum() > 10 and not m[:-100].any()
    # a blow-up at the first steps has only itself before it: 10x the best counts whatever came before
    early = np.concatenate([[2.3, 15.0, 14.0, 6.5, 13.9], np.full(25, 30.0)])
    assert divergence(np.arange(30), early, **params, beyond=0.75)[0][-10:].all()
    assert not divergence(np.arange(30), early, **params, beyond=0.75, beyond_factor=20.0)[0].any()


def test_no_progress_head_counts_a_fast_first_drop():
    s = np.arange(1500)
    v = 0.46 + 0.85 * np.exp(-s / 15.0)  # full-batch GD: 1.31 -> 0.47 within the first 75 steps, then flat
    m, val, extra = no_progress(s, v, share=0.1, min_points=20)
    assert m[-1] and val[-1] < 0.1  # the first tenth's median holds the drop
    m, val, extra = no_progress(s, v, share=0.1, head=5, min_points=20)
    assert not m.any() and val[-1] == pytest.approx((np.median(v[:5]) - np.median(v[-150:])) / np.median(v[:5]))
    blow = np.full(1500, 2.35)
    blow[1:10] = [30.0, 160.0, 400.0, 90.0, 12.0, 8.0, 5.0, 3.0, 2.6]  # blown up, then stuck at chance
    m, val, _ = no_progress(s, blow, share=0.1, head=5, min_points=20)
    assert m[-1] and val[-1] == pytest.approx(0.0)  # the start is not above the first point


def test_spike_recover_counts_a_slow_tail_after_a_huge_jump():
    rng = np.random.default_rng(0)
    v = 0.04 * np.exp(rng.normal(0.0, 0.2, 1500))
    peak = np.geomspace(800.0, 0.05, 80)  # a corrupt batch: 20,000x, back within 100x in ~20 steps, settled in 80
    v[800:880] = peak
    s = np.arange(v.size)
    params = dict(window=50, factor=5.0, min_jump=0.5, robust_z=12.0, max_duration=50, min_history=10)
    assert not spike(s, v, **params)[0].any()  # still above 5x the level after 50 steps
    m = spike(s, v, **params, recover=0.5)[0]
    assert m[800] and not m[:800].any() and not m[860:].any()
    lasting = v.copy()
    lasting[800:] = 800.0  # no fall at all: not a spike, whatever the share
    assert not spike(s, lasting, **params, recover=0.5)[0].any()


def test_growth_early_peaks_after_a_normal_start_only():
    rng = np.random.default_rng(0)
    g = 0.2 * np.exp(rng.normal(0.0, 0.3, 1000))
    g[:4] = [0.55, 1.2, 0.6, 1.1]
    g[4:11] = [3.0, 6.0, 16.0, 5.0, 7.0, 20.0, 37.0]  # blown up within the first tenth (the baseline share)
    s = np.arange(g.size)
    params = dict(factor=10.0, bound=100.0, window=20, peak_factor=50.0, baseline=0.1, min_points=20)
    assert not growth(s, g, **params)[0].any()
    m = growth(s, g, **params, early_peaks=True)[0]
    assert np.flatnonzero(m).tolist() == [6, 9, 10]  # the raw peaks above 50x the early level (0.2)
    high_start = g.copy()
    high_start[:20] = np.geomspace(900.0, 1.0, 20)  # an initialisation too large: high at once, then decaying
    # no early peak counts (what fires is the absolute bound on the smoothed series, as without early_peaks)
    np.testing.assert_array_equal(growth(s, high_start, **params, early_peaks=True)[0],
                                  growth(s, high_start, **params)[0])
    # a high start that then blows up further (raw inputs of scale 1e4): peaks 50x the first value count
    raw = g.copy()
    raw[:12] = [6.4e3, 1.6e6, 5e10, 0.07, 0.1, 0.1, 8e10, 0.16, 0.15, 0.06, 0.16, 0.17]
    raw[12:] = 0.1 * np.exp(rng.normal(0.0, 0.3, 988))
    m = growth(s, raw, **params, early_peaks=True)[0]
    assert np.flatnonzero(m[:100]).tolist() == [1, 2, 6]  # 1.6e6, 5e10, 8e10 > 50 x 6.4e3; not the first value
    assert not growth(s, raw, **params)[0][:100].any()  # without early_peaks none counts
    # the ratio said of a raw peak is its own (the smoothed median is undefined there): no "nanx" in a message
    m, shown, extra = growth(s, raw, **params, early_peaks=True)
    base = float(np.median(raw[:100]))
    assert extra["ratio"][2] == pytest.approx(5e10 / base) and shown[2] == 5e10


def test_ratio_scope_min_and_max_judge_one_point():
    s = np.arange(5)
    a, b = (s, np.array([2.3, 2.3, 2.3, 2.3, 2.3])), (s, np.array([2.4, 2.35, 2.2, 2.5, 2.6]))
    _, m, r, _ = ratio(a, b, below=1.031, scope="max")  # chance / val: never more than 3% above chance
    assert m.tolist() == [False, False, False, False, False]  # val reached 2.2 < 0.97 x 2.3 at step 2
    b2 = (s, np.array([2.4, 2.35, 2.33, 2.5, 2.6]))
    _, m, r, _ = ratio(a, b2, below=1.031, scope="max")
    assert m.tolist() == [False, False, True, False, False]  # judged at the highest ratio only
    _, m, r, _ = ratio(a, b2, above=0.88, scope="min")  # the lowest ratio, 2.3 / 2.6, is above 0.88
    assert m.sum() == 1 and m[4]


def test_divergence_undone_counts_all_progress_given_back():
    rng = np.random.default_rng(0)
    s = np.arange(1200)
    base = np.where(s < 150, 1.39 - 0.55 * s / 150, np.where(s < 400, 0.84 + 0.55 * (s - 150) / 250, 1.39))
    v = base * np.exp(rng.normal(0.0, 0.05, s.size))  # 1.39 -> 0.84 -> back to chance, 1.65x its best
    params = dict(window=20, factor=2.0, lost=0.5, at_end=True, min_points=20, tail_points=10, beyond=0.75)
    assert not divergence(s, v, **params)[0].any()  # short of 2x its best
    m = divergence(s, v, **params, undone=0.3)[0]
    assert m[-1] and m[450:].all() and not m[:300].any()
    part = np.where(s < 400, base, 1.2) * np.exp(rng.normal(0.0, 0.05, s.size))  # back only part of the way
    assert not divergence(s, part, **params, undone=0.3)[0].any()
    small = 1.39 - 0.2 * np.minimum(s, 150) / 150 + 0.2 * np.clip((s - 150) / 250, 0, 1)  # fell 14% only
    assert not divergence(s, small * np.exp(rng.normal(0.0, 0.05, s.size)), **params, undone=0.3)[0].any()
