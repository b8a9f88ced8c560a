"""Trajectory bands of a baseline: the band against brute force, the sustained-excursion rule on synthetic series
with known answers, policies, missing and short candidates, the YAML section (round trip, strict errors with
lines, old files), and real small Trainer fits: slower early learning that ends at the same loss is caught while
the end values pass; other seeds of the same setup pass."""

import math

import numpy as np
import pytest

from dyncheck import ConfigError
from dyncheck import trajectory as T
from dyncheck.baseline import compare, format_comparison, format_comparison_junit, load_baseline, make_baseline
from dyncheck.store import RunWriter


def write_run(path, series, status="finished"):
    with RunWriter(path / "run.db") as w:
        w.write(series)
        w.set_meta(status=status)
    return path


def curve(n=400, tau=60.0, floor=0.05, noise=0.0, seed=0, slow=False):
    """An exponential descent 2.3 -> floor with log-normal noise; ``slow``: time runs at a quarter speed over the first
    quarter, then catches up by the middle (slower early learning that ends at the same loss)."""
    s = np.arange(n)
    q = n / 4
    t = np.interp(s, [0, q, 2 * q, n], [0, q / 4, 2 * q, n]) if slow else s
    v = 2.3 * np.exp(-t / tau) + floor
    if noise:
        v = v * np.exp(np.random.default_rng(seed).normal(0, noise, n))
    return s, v


# -- the band against brute force ----------------------------------------------------------------------------------
def brute_band(series, g, log=True):
    first = max(s[0] for s, _ in series)
    last = min(s[-1] for s, _ in series)
    edges = np.linspace(first, last, g + 1)
    h = int(T.SMOOTH * g)
    meds, sds = [], []
    for s, v in series:
        y = np.log10(v) if log else v
        cell = np.array([min(int(np.searchsorted(edges, x, side="right")) - 1, g - 1) for x in s])
        m, u = [], []
        for c in range(g):
            pts = y[(cell >= c - h) & (cell <= c + h)]
            m.append(np.median(pts))
            mad = np.median(np.abs(pts - np.median(pts)))
            u.append(1.2533 * 1.4826 * mad / math.sqrt(pts.size))
        meds.append(m)
        sds.append(u)
    meds, sds = np.array(meds), np.array(sds)
    lo, hi = meds.min(0), meds.max(0)
    margin = np.maximum(np.maximum(T.FLOOR_LOG, T.NOISE * np.median(sds, 0)), T.SEED * (hi - lo))
    w = math.ceil(T.SHIFT * g)
    env = [slice(max(0, c - w), min(g, c + w + 1)) for c in range(g)]
    margin = np.array([margin[e].max() for e in env])
    lo = np.array([lo[e].min() for e in env]) - margin
    hi = np.array([hi[e].max() for e in env]) + margin
    return 10 ** lo, 10 ** hi


def test_band_against_brute_force():
    runs = [curve(noise=0.2, seed=k, tau=50 + 10 * k) for k in range(3)]
    band = T.make_band("loss/train", runs, cells=50)
    lo, hi = brute_band(runs, 50)
    assert band.log and band.cells == 50 and (band.first, band.last) == (0, 399)
    np.testing.assert_allclose(band.lo, lo, rtol=1e-3)
    np.testing.assert_allclose(band.hi, hi, rtol=1e-3)


def test_band_grid_is_the_shared_range_and_few_points_mean_few_cells():
    a = (np.arange(0, 300), np.linspace(1, 0.1, 300))
    b = (np.arange(20, 400), np.linspace(1, 0.1, 380))
    band = T.make_band("loss/train", [a, b])
    assert (band.first, band.last) == (20, 299) and band.cells == T.CELLS
    val = [(np.arange(0, 400, 40), np.linspace(1, 0.5, 10))] * 2
    assert T.make_band("loss/val", val).cells == 10
    assert T.make_band("loss/val", [(np.arange(3), np.ones(3))]) is None  # too few points to band
    assert T.make_band("loss/train", [(np.arange(10), np.r_[np.ones(9), np.nan])]) is None


# -- the sustained-excursion rule ----------------------------------------------------------------------------------
def flat_band(fail="above", cells=100):
    return T.Band("loss/train", True, 0, 1000, [0.5] * cells, [2.0] * cells, fail)


def step_series(out_cells, level, cells=100, start_cell=30):
    """Value 1 (inside [0.5, 2]) everywhere but ``level`` on ``out_cells`` cells from ``start_cell``."""
    s = np.arange(0, 1000)
    v = np.ones(s.size)
    edges = np.linspace(0, 1000, cells + 1)
    v[(s >= edges[start_cell]) & (s < edges[start_cell + out_cells])] = level
    return s, v


@pytest.mark.parametrize("out_cells, status", [(9, "ok"), (10, "regressed"), (40, "regressed")])
def test_sustained_rule_needs_a_tenth_of_the_grid_in_a_row(out_cells, status):
    row = T.judge(flat_band(), *step_series(out_cells, 5.0))
    assert row.status == status, row
    if status == "regressed":
        assert row.direction == "above" and row.start == 300 and row.end == 300 + 10 * out_cells
        assert row.share == pytest.approx(out_cells / 100)
        assert f"loss/train above the band from step 300 to {300 + 10 * out_cells:,}" in row.text


def test_two_short_excursions_do_not_add_up():
    s, v = step_series(6, 5.0)
    v[700:760] = 5.0
    assert T.judge(flat_band(), s, v).status == "ok"


@pytest.mark.parametrize("fail, level, status", [
    ("above", 5.0, "regressed"), ("above", 0.1, "better"), ("below", 0.1, "regressed"), ("below", 5.0, "better"),
    ("either", 0.1, "regressed"), ("either", 5.0, "regressed"), ("never", 5.0, "changed"), ("never", 0.1, "changed"),
])
def test_policy_decides_what_fails(fail, level, status):
    row = T.judge(flat_band(fail), *step_series(30, level))
    assert row.status == status
    assert row.direction == ("above" if level > 1 else "below")


def test_widen_and_span_loosen_a_band():
    s, v = step_series(30, 3.0)
    assert T.judge(flat_band(), s, v).status == "regressed"
    b = flat_band()
    b.widen = 1.6
    assert T.judge(b, s, v).status == "ok"
    b = flat_band()
    b.span = 0.5
    assert T.judge(b, s, v).status == "ok"


def test_non_finite_candidate_is_above_and_missing_or_short_is_said():
    s, v = step_series(0, 1.0)
    v[500:] = np.nan
    assert T.judge(flat_band(), s, v).status == "regressed"
    assert T.judge(flat_band(), None, None).status == "missing"
    row = T.judge(flat_band(), s[:600], v[:600])
    assert row.status == "short" and "covers steps 0-599 (60% of the baseline's 0-1,000" in row.text


# -- through make_baseline / compare on synthetic stores ----------------------------------------------------------
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("traj")

    def make(name, **kw):
        s, v = curve(noise=0.15, **kw)
        g = np.exp(-s / 200) + 0.1
        return write_run(tmp / name, {"loss/train": (s, v), "grad_norm/total": (s, g),
                                      "loss/val": (s[::40], v[::40] * 1.1)})
    return {"a": make("a", seed=0), "b": make("b", seed=1), "c": make("c", seed=2), "d": make("d", seed=3),
            "slow": make("slow", seed=4, slow=True), "tmp": tmp}


def test_slower_early_learning_is_caught_by_the_trajectory_not_the_end_values(stores):
    base = make_baseline([stores["a"], stores["b"]], rules=None)
    assert set(base.trajectories) == {"loss/train", "loss/val", "grad_norm/total"}
    assert base.trajectories["grad_norm/total"].fail == "never"
    for healthy in ("c", "d"):
        cmp = compare(stores[healthy], base, rules=None)
        assert cmp.regressions == [], format_comparison(cmp)
    cmp = compare(stores["slow"], base, rules=None)
    assert all(r.status == "ok" for r in cmp.rows), cmp.rows  # the end values pass
    assert "trajectory loss/train" in cmp.regressions
    text = format_comparison(cmp)
    assert "loss/train above the band from step" in text and "REGRESSED: trajectory loss/train" in text
    assert "trajectory loss/train" in format_comparison_junit(cmp, "x")
    assert cmp.to_dict()["trajectories"][0]["series"] == "loss/train"


def test_missing_series_fails_only_where_its_policy_can(stores, tmp_path):
    base = make_baseline([stores["a"]], rules=None)
    s, v = curve()
    only_loss = write_run(tmp_path / "l", {"loss/train": (s, v), "loss/val": (s[::40], v[::40] * 1.1)})
    cmp = compare(only_loss, base, rules=None)
    assert cmp.regressions == [] and cmp.changes == ["trajectory grad_norm/total"]
    no_val = write_run(tmp_path / "nv", {"loss/train": (s, v)})
    cmp = compare(no_val, base, rules=None)
    assert "trajectory loss/val" in cmp.regressions and "MISSING" in format_comparison(cmp)
    short = write_run(tmp_path / "short", {"loss/train": (s[:150], v[:150]), "loss/val": (s[:150:40], v[:150:40])})
    assert "trajectory loss/train" in compare(short, base, rules=None).regressions


# -- the YAML section ------------------------------------------------------------------------------------------------
def test_yaml_round_trip_is_small_and_readable(stores, tmp_path):
    base = make_baseline([stores["a"], stores["b"]], rules=None)
    path = tmp_path / "b.yaml"
    path.write_text(base.to_yaml())
    text = path.read_text()
    assert "trajectories:\n  loss/train:\n    log: true\n    steps: [0, 399]\n    fail: above\n    span: 0.1\n" in text
    assert "phases:\n  first: " in text and len(text.splitlines()) < 200
    again = load_baseline(path)
    for name, b in base.trajectories.items():
        assert again.trajectories[name].lo == b.lo and again.trajectories[name].hi == b.hi
        assert all(len(f"{x:.10g}".lstrip("-0.").replace(".", "").rstrip("0")) <= 4 for x in b.lo[:20])
    assert again.phases.end == base.phases.end
    assert compare(stores["slow"], again, rules=None).regressions == ["trajectory loss/train"]


def test_old_baseline_without_trajectories_compares_as_before(stores, tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(make_baseline([stores["a"]], rules=None, trajectories=False).to_yaml())
    assert "trajectories" not in path.read_text()
    old = load_baseline(path)
    assert old.trajectories == {} and old.phases is None
    cmp = compare(stores["slow"], old, rules=None)
    assert cmp.trajectories == [] and cmp.regressions == [] and "trajectories" not in format_comparison(cmp)


@pytest.mark.parametrize("old, new, message", [
    ("    fail: above\n", "    fail: up\n", r"trajectories\.loss/train\.fail: expected one of above, below, either, "
                                            r"never, got 'up' \(line \d+, column 11\)"),
    ("    span: 0.1\n", "    span: 0\n", r"trajectories\.loss/train\.span: expected a share of the cells"),
    ("    span: 0.1\n", "    span: 0.1\n    widen: 0.5\n", r"loss/train\.widen: expected a ratio >= 1"),
    ("    span: 0.1\n", "    span: 0.1\n    width: 2\n", r"unknown key\(s\) width; expected log, steps"),
    ("    log: true\n", "    log: yes please\n", r"trajectories\.loss/train\.log: expected true or false"),
    ("    steps: [0, 399]\n", "    steps: [399, 0]\n", r"trajectories\.loss/train\.steps: expected \[first, last\]"),
    ("  loss/train:\n    log", "  loss/tr:\n    log", r"trajectories\.loss/tr: unknown series; expected one of"),
    ("    lo: [", "    lo: [.nan, ", r"trajectories\.loss/train\.lo\[0\]: expected a finite number > 0 \(log: true\)"),
    ("    lo: [", "    lo: [-1, ", r"trajectories\.loss/train\.lo\[0\]: expected a finite number > 0"),
    ("    lo: [", "    lo: [1000, ", r"has 101 values and 'hi' 100"),
    ("    lo: [", "    lo: [abc, ", r"trajectories\.loss/train\.lo\[0\]: expected a number, got 'abc'"),
    ("    lo: [", "    lo: [1000.0, 1000.0, ", r"has 102 values"),
    ("phases:\n  first: ", "phases:\n  first: warp ", r"phases\.first: expected one of rapid fitting"),
])
def test_trajectory_section_errors_name_file_key_and_line(stores, tmp_path, old, new, message):
    path = tmp_path / "b.yaml"
    text = make_baseline([stores["a"]], rules=None).to_yaml()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as e:
        load_baseline(path)
    assert str(path) in str(e.value) and "(line " in str(e.value)


def test_lo_above_hi_is_refused(stores, tmp_path):
    path = tmp_path / "b.yaml"
    text = make_baseline([stores["a"]], rules=None).to_yaml()
    i = text.index("    hi: [")
    path.write_text(text[:i] + "    hi: [1.0e-09, " + text[i + len("    hi: [") :].split(", ", 1)[1])
    with pytest.raises(ConfigError, match=r"loss/train\.hi\[0\]: expected hi >= lo in every cell"):
        load_baseline(path)


# -- real small Trainer fits -------------------------------------------------------------------------------------------
from tinyfit import fit  # noqa: E402  (a tiny regression MLP, 100 steps, about a second)


def test_real_fits_other_seeds_pass_and_a_slow_start_is_caught(tmp_path):
    base = make_baseline([fit(tmp_path / "s0")], rules=None)
    assert {"loss/train", "grad_norm/total", "grad_norm/layers.median"} <= set(base.trajectories)
    for seed in (1,):
        cmp = compare(fit(tmp_path / f"s{seed}", seed=seed), base, rules=None)
        assert cmp.regressions == [], format_comparison(cmp)
    cmp = compare(fit(tmp_path / "slow", delay=8), base, rules=None)
    assert all(r.status == "ok" for r in cmp.rows), format_comparison(cmp)  # end values pass ...
    assert cmp.regressions == ["trajectory loss/train"], format_comparison(cmp)  # ... the trajectory does not
    row = next(t for t in cmp.trajectories if t.series == "loss/train")
    assert row.direction == "above" and row.start < 20


def test_the_readme_trajectory_baseline_loads_and_judges(tmp_path):
    """The complete small baseline shown in README ("Trajectories") loads as shown and judges a run."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = next(b.split("\n", 1)[1] for b in readme.split("```yaml")[1:] if "trajectories:" in b.split("```")[0])
    path = tmp_path / "readme.yaml"
    path.write_text(block.split("```")[0])
    base = load_baseline(path)
    assert base.trajectories["loss/train"].widen == 1.2 and base.trajectories["grad_norm/total"].fail == "never"
    assert base.phases.first == "rapid fitting" and base.phases.end == 61
    s, v = curve(n=300)
    run = write_run(tmp_path / "run", {"loss/train": (s, v)})
    cmp = compare(run, base, rules=None)
    assert [t.status for t in cmp.trajectories] == ["ok", "missing"] and cmp.regressions == []
    assert "trajectory grad_norm/total" in cmp.changes


def test_cli_baseline_and_compare_with_trajectories(stores, tmp_path, capsys):
    import json

    from dyncheck.cli import main

    b = tmp_path / "base.yaml"
    assert main(["baseline", str(stores["a"]), str(stores["b"]), "-o", str(b), "--rules", "default"]) == 0
    assert "trajectories: loss/train, loss/val, grad_norm/total" in capsys.readouterr().out
    assert main(["compare", str(stores["c"]), "--baseline", str(b)]) == 0
    capsys.readouterr()
    assert main(["compare", str(stores["slow"]), "--baseline", str(b), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["regressions"] == ["trajectory loss/train"]
    row = doc["trajectories"][0]
    assert row["status"] == "regressed" and row["direction"] == "above" and row["policy"] == "above"
    assert main(["baseline", str(stores["a"]), "-o", str(b), "--no-trajectories"]) == 0
    assert "trajectories" not in b.read_text()
    assert main(["compare", str(stores["slow"]), "--baseline", str(b)]) == 0
