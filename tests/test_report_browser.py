"""The report in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Every chart must render, the console must stay free of errors, no request may leave the file (no CDN), and a module
named ``<script>alert(1)</script>`` must not run. Screenshots are saved under ``reports/screenshots/`` for a person
to look at. Skips, saying why, only where no Chromium can be found (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dyncheck.report import REPORT_FILENAME
from dyncheck.scenarios import run_scenario

SHOTS = Path(__file__).resolve().parent.parent / "reports" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_path() -> str | None:
    for name in (os.environ.get("DYNCHECK_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found: install Debian's chromium (apt-get install -y chromium) or set "
                    "DYNCHECK_CHROMIUM to a Chromium/Chrome executable; .ci/run installs it")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        yield b
        b.close()


def open_report(browser, path: Path, shot: str) -> dict:
    """Load a report, wait for every chart, screenshot it; return what happened on the way."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen: dict = {"console": [], "errors": [], "dialogs": [], "requests": []}
    page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("request", lambda r: seen["requests"].append(r.url) if not r.url.startswith(("file:", "data:"))
            else None)
    page.goto(path.resolve().as_uri())
    page.wait_for_function("document.body.dataset.chartsRendered !== undefined", timeout=30_000)
    seen["expected"] = int(page.get_attribute("body", "data-charts-expected"))
    seen["rendered"] = int(page.get_attribute("body", "data-charts-rendered"))
    # every chart div holds a plotly figure with all its traces drawn, at a visible size
    seen["charts"] = page.evaluate("""() => Array.from(document.querySelectorAll('div.chart')).map(div => {
        const spec = document.querySelector(`script[data-chart="${div.id}"]`);
        const want = JSON.parse(spec.textContent).data.length;
        return {id: div.id, svg: !!div.querySelector('svg.main-svg'), traces: (div._fullData || []).length,
                want: want, height: div.getBoundingClientRect().height,
                drawn: div.querySelectorAll('.scatterlayer .trace, .heatmaplayer .hm, .imagelayer image').length};
    })""")
    seen["verdict"] = page.inner_text("#verdict")
    seen["text"] = page.inner_text("body")
    seen["chart_text"] = page.evaluate(
        "() => Array.from(document.querySelectorAll('div.chart svg text')).map(t => t.textContent)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{shot}.png"))
    page.screenshot(path=str(SHOTS / f"{shot}-full.png"), full_page=True)
    page.close()
    return seen


def assert_clean(seen: dict) -> None:
    assert seen["rendered"] == seen["expected"] > 0
    assert seen["console"] == [] and seen["errors"] == [], (seen["console"], seen["errors"])
    assert seen["requests"] == [], f"the report fetched {seen['requests']}"
    assert seen["dialogs"] == [], f"a script from the data ran: {seen['dialogs']}"
    for c in seen["charts"]:
        assert c["svg"] and c["traces"] == c["want"] > 0 and c["drawn"] > 0 and c["height"] > 150, c


def test_faulty_run_report_renders_cleanly(browser, tmp_path):
    run_dir = run_scenario("lr-too-high-divergence", tmp_path)
    seen = open_report(browser, run_dir / REPORT_FILENAME, "lr-too-high-divergence")
    assert_clean(seen)
    assert seen["verdict"].startswith("FAIL") and "loss-divergence" in seen["verdict"]
    assert any(c["id"] == "chart-finding-0" for c in seen["charts"])


def test_many_layer_run_renders_heat_maps(browser, tmp_path):
    run_dir = run_scenario("vanishing-deep-sigmoid", tmp_path)  # 12 layers: 24 parameters -> heat maps
    seen = open_report(browser, run_dir / REPORT_FILENAME, "vanishing-deep-sigmoid")
    assert_clean(seen)
    assert "vanishing-gradients" in seen["verdict"]


def test_script_named_module_does_not_run(browser, tmp_path):
    from test_report import EVIL, train_evil_named

    seen = open_report(browser, train_evil_named(tmp_path) / REPORT_FILENAME, "escaped-module-name")
    assert_clean(seen)  # includes: no alert() dialog
    assert seen["verdict"].startswith("PASS")
    # shown as text: in the parameter table, and in chart legends (plotly would swallow an unescaped tag)
    assert f"net.{EVIL}.weight" in seen["text"]
    assert any(f"net.{EVIL}.weight" in t for t in seen["chart_text"]), seen["chart_text"][:20]


def test_crashed_run_shows_the_partial_banner(browser, tmp_path):
    from test_report import synthetic_run

    run = synthetic_run(tmp_path / "r", status="crashed",
                        extra_meta={"exception": {"type": "RuntimeError", "message": "CUDA out of memory"}})
    from dyncheck.report import write_report

    seen = open_report(browser, write_report(run), "crashed-run")
    assert_clean(seen)
    assert seen["verdict"].startswith("CRASHED")
