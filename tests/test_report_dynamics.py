"""The report's NTK and trajectory sections (synthetic runs with known answers), and the lazy-wide / rich-narrow demo
scenarios end to end (real Trainer, monitor, default checks, report)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from dyncheck import evaluate, open_run
from dyncheck.report import render_report
from dyncheck.report._dynamics import LAZY_BELOW, RICH_ABOVE, ntk_verdict
from dyncheck.store import RunWriter

N = 200


def _run(path, *, ntk=None, traj=None, meta=None):
    s = np.arange(N)
    with RunWriter(path / "run.db") as w:
        w.write({"loss/train": (s, 2.3 * np.exp(-s / 40) + 0.05), "lr/SGD/pg0": (s, np.full(N, 0.1))})
        if ntk is not None:
            steps = np.arange(0, N, 20)
            w.write({"ntk/distance": (steps, ntk), "ntk/top_eig": (steps, np.full(len(steps), 5.0)),
                     "ntk/top_eig_share": (steps, np.linspace(0.5, 0.9, len(steps))),
                     "ntk/velocity": (steps[1:], np.abs(np.diff(ntk)) + 1e-4)})
        if traj is not None:
            steps, mat = traj
            w.write({f"traj/c{i}": (steps, mat[:, i]) for i in range(mat.shape[1])})
        w.set_meta(status="finished", started=1.7e9, duration_s=3.0, start_step=0, **(meta or {}))
    return path


def _section(text: str, sid: str) -> str:
    i = text.index(f'<section id="{sid}">')
    return text[i: text.index("</section>", i)]


def _specs(text: str) -> dict[str, dict]:
    return {k: json.loads(v) for k, v in
            re.findall(r'<script type="application/json" data-chart="([^"]+)">(.*?)</script>', text, re.S)}


def test_verdict_thresholds():
    assert ntk_verdict(0.001) == "lazy" and ntk_verdict(0.5) == "rich" and ntk_verdict(0.1) == "in between"
    assert ntk_verdict(LAZY_BELOW / 2) == "lazy" and ntk_verdict(RICH_ABOVE * 1.01) == "rich"


def test_rich_run_says_rich_with_its_chart_and_where_the_kernel_moved_fastest(tmp_path):
    d = np.array([0, 0.3, 0.45, 0.5, 0.52, 0.53, 0.53, 0.54, 0.54, 0.55])
    text = render_report(_run(tmp_path, ntk=d), rules=None)
    sec = _section(text, "ntk")
    assert "This run is rich" in sec and "0.55" in sec and "between steps 0 and 20" in sec
    assert "concentrated on its top direction" in sec
    fig = _specs(text)["chart-ntk"]
    assert [t["name"] for t in fig["data"]][:2] == ["distance from initialisation", "velocity (between measurements)"]


def test_lazy_run_says_lazy(tmp_path):
    text = render_report(_run(tmp_path, ntk=np.linspace(0, 0.004, 10)), rules=None)
    sec = _section(text, "ntk")
    assert "This run is lazy" in sec and "training has not got far" not in sec  # the loss fell 40x


def test_absent_quantities_say_why(tmp_path):
    (tmp_path / "a").mkdir()
    text = render_report(_run(tmp_path / "a"), rules=None)
    assert "The NTK was not measured: ntk_budget=0" in _section(text, "ntk")
    assert "The weight sketch was not recorded (trajectory_every_n_steps=0" in _section(text, "trajectory")
    (tmp_path / "b").mkdir()
    errs = [{"measurement": "ntk", "error": "MeasureError", "message": "the NTK output must be 1-d", "step": 0}]
    text = render_report(_run(tmp_path / "b", meta={"measurement_errors": errs, "ntk": {"off": None}}), rules=None)
    assert "the measurement failed and was turned off (MeasureError: the NTK output must be 1-d)" in text
    (tmp_path / "c").mkdir()
    text = render_report(_run(tmp_path / "c", ntk=np.r_[0.0, np.full(9, np.nan)]), rules=None)
    assert "Only the reference kernel was measured" in _section(text, "ntk")
    (tmp_path / "d").mkdir()
    text = render_report(_run(tmp_path / "d", meta={"ntk": {"off": "the module has no forward() of its own"}}),
                         rules=None)
    assert "The NTK was not measured: the module has no forward() of its own." in _section(text, "ntk")


def test_pca_path_and_variance_bars_of_a_known_trajectory(tmp_path):
    # a path along two known directions (an arc), plus small noise; one sketch is non-finite
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 40)
    u, v = np.zeros(50), np.zeros(50)
    u[0], v[1] = 1.0, 1.0
    mat = np.outer(np.cos(t), u) * 3 + np.outer(np.sin(t), v) + rng.normal(0, 1e-4, (40, 50))
    mat[7, 3] = np.nan
    steps = np.arange(0, 200, 5)
    text = render_report(_run(tmp_path, traj=(steps, mat), meta={"trajectory": {"of_parameters": 5000,
                                                                                "every_n_steps": 5}}), rules=None)
    sec = _section(text, "trajectory")
    assert "Antognini" in sec and "1 sketch(es) with non-finite weights are left out" in sec
    assert "The first two components hold 100% of the motion" in sec and "39 sketches of 50 of the 5000" in sec
    specs = _specs(text)
    path = specs["chart-traj-path"]["data"][0]
    assert path["type"] == "scatter" and path["marker"]["colorscale"] and path["name"] == "path"
    bars = specs["chart-traj-variance"]["data"][0]
    assert bars["type"] == "bar" and bars["x"][:3] == ["PC1", "PC2", "PC3"]


@pytest.mark.parametrize("name, verdict", [("lazy-wide", "lazy"), ("rich-narrow", "rich")])
def test_demo_scenarios_show_their_regime(name, verdict, tmp_path):
    from dyncheck.scenarios import SCENARIOS, run_scenario

    run_dir = run_scenario(name, tmp_path, monitor_kwargs={"rules": None, "report": False})
    result = evaluate(run_dir, "default")
    assert not [f.message for f in result.findings if f.severity != "info"]  # healthy
    assert not SCENARIOS[name].expected
    with open_run(run_dir) as run:
        dist = run.series("ntk/distance")
        loss = run.series("loss/train").values
        assert len(dist) == 12 and len(run.metrics("traj/c*")) == 1024
    assert loss[-20:].mean() < loss[:5].mean() / 3  # both learn
    assert ntk_verdict(float(dist.values[-1])) == verdict
    text = render_report(run_dir, rules=None)
    assert f"This run is {verdict}" in _section(text, "ntk")
    assert 'data-chart="chart-traj-path"' in text


def test_dynamics_sections_render_in_a_browser(tmp_path):
    from test_report_browser import ARGS, assert_clean, chromium_path, open_report

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found (see tests/test_report_browser.py)")
    from dyncheck.report import write_report
    from dyncheck.scenarios import run_scenario

    run_dir = run_scenario("rich-narrow", tmp_path, monitor_kwargs={"rules": None, "report": False})
    path = write_report(run_dir)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        try:
            seen = open_report(b, path, "rich-narrow")
        finally:
            b.close()
    assert_clean(seen)
    ids = {c["id"] for c in seen["charts"]}
    assert {"chart-ntk", "chart-traj-path", "chart-traj-variance"} <= ids
    assert "This run is rich" in seen["text"] and "Antognini" in seen["text"]
