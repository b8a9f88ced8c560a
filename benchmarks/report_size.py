"""Size and speed of the HTML report for a big run: 10k steps, 50 layers (targets: <= 6 MB, rendered in <= 2 s).

    python benchmarks/report_size.py [--steps 10000] [--layers 50] [--every 1] [--repeats 5] [--no-browser]

The run is written straight into a store, as the monitor would record it: loss, learning rate and global gradient
norm every step, validation loss every 500 steps, and for each of the 50 layers (a weight and a bias each: 100
parameters) gradient norm, weight norm, update ratio, non-finite count and unchanged flag, plus the 6 activation
statistics per layer, every ``--every`` steps (default 1: the worst case; the monitor's default is every N), and
sharpness every 100 steps. A loss spike, a layer that dies and a vanishing-gradient layer are planted so that the
report has findings with evidence charts.

Prints (median of ``--repeats``): the time to build and write the report (Python), the file size (total and
without the inlined plotly.js), and the time until every chart has rendered in headless Chromium, measured by
the page itself (``performance.now()`` when the last ``Plotly.newPlot`` resolves, from navigation start).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dyncheck.names import ACTIVATION_STATS
from dyncheck.report import write_report
from dyncheck.store import RunWriter, open_run

MB = 1_000_000


def make_run(path: Path, steps: int, layers: int, every: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    s = np.arange(steps, dtype=np.int64)
    loss = (2.3 * np.exp(-s / (steps / 8)) + 0.05) * np.exp(0.15 * rng.standard_normal(steps))
    loss[steps // 2] *= 40  # a spike
    ps = s[::every]
    n = ps.size
    with RunWriter(path / "run.db") as w:
        w.write({"loss/train": (s, loss), "lr/SGD/pg0": (s, 0.1 * 0.5 * (1 + np.cos(np.pi * s / steps))),
                 "grad_norm/total": (s, np.abs(1 + 0.3 * rng.standard_normal(steps)))})
        w.write({"loss/val": (s[499::500], 2.3 * np.exp(-s[499::500] / (steps / 8)) + 0.1)})
        for i in range(layers):
            scale = 1e-7 if i == 0 else 10 ** rng.uniform(-2, 0)  # layer 0: vanishing gradients
            for kind in ("weight", "bias"):
                p = f"model.layers.{i}.{kind}"
                w.write({f"grad_norm/{p}": (ps, scale * np.exp(0.3 * rng.standard_normal(n))),
                         f"weight_norm/{p}": (ps, np.linspace(3, 4, n)),
                         f"update_ratio/{p}": (ps, 10 ** rng.uniform(-3.5, -2.5, n)),
                         f"grad_nonfinite/{p}": (ps, np.zeros(n)),
                         f"weight_unchanged/{p}": (ps, np.zeros(n))})
            m = f"model.layers.{i}.act"
            dead = np.clip(0.1 + 0.05 * rng.standard_normal(n), 0, 1)
            if i == 7:
                dead[n // 3:] = 0.97  # a layer that dies
            stats = {"mean": rng.random(n), "std": rng.random(n), "max_abs": 1 + rng.random(n), "nonfinite":
                     np.zeros(n), "dead": dead, "saturated": np.clip(0.02 * rng.random(n), 0, 1)}
            w.write({f"act/{k}/{m}": (ps, stats[k]) for k in ACTIVATION_STATS})
        sh = s[::100]
        w.write({"sharpness/top_eig": (sh, np.minimum(5 + sh / 200, 19)), "sharpness/threshold": (sh, np.full(sh.size,
                                                                                                         20.0))})
        w.set_meta(status="finished", started=time.time() - 3600, duration_s=3600.0, start_step=0,
                   model={"class": "bench.DeepMLP", "n_parameters": layers * 4160, "n_trainable": layers * 4160,
                          "parameters": [{"name": f"model.layers.{i}.{k}", "shape": [64, 64] if k == "weight"
                                          else [64], "numel": 4096 if k == "weight" else 64, "trainable": True}
                                         for i in range(layers) for k in ("weight", "bias")]})


def browser_render_ms(path: Path, repeats: int) -> list[tuple[float, float]] | str:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "playwright not installed"
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        return "no chromium on PATH"
    out = []
    with sync_playwright() as p:
        for _ in range(repeats):  # a fresh browser each time: a cold load, as when a person opens the file
            b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu",
                                                             "--disable-background-networking"])
            page = b.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(path.resolve().as_uri())
            page.wait_for_function("document.body.dataset.chartsRendered !== undefined", timeout=60_000)
            ms = float(page.get_attribute("body", "data-render-ms"))
            js_ms = float(page.get_attribute("body", "data-plotly-ms"))
            rendered = page.get_attribute("body", "data-charts-rendered")
            expected = page.get_attribute("body", "data-charts-expected")
            if errors or rendered != expected:
                raise SystemExit(f"the report did not render cleanly: {rendered}/{expected} charts, errors {errors}")
            out.append((ms, js_ms))
            b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=50)
    ap.add_argument("--every", type=int, default=1, help="per-layer statistics every this many steps (1)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t = time.perf_counter()
        make_run(run_dir, args.steps, args.layers, args.every)
        with open_run(run_dir) as run:
            n_metrics, n_values = len(run.metrics()), sum(len(run.series(m)) for m in run.metrics())
        print(f"run: {args.steps} steps, {args.layers} layers, per-layer statistics every {args.every} step(s): "
              f"{n_metrics} series, {n_values / 1e6:.1f}M values (written in {time.perf_counter() - t:.1f} s)")
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            path = write_report(run_dir)
            times.append(time.perf_counter() - t)
        size = path.stat().st_size
        from plotly.offline import get_plotlyjs

        js = len(get_plotlyjs().encode("utf-8"))
        print(f"build + write (python, default checks included): median {statistics.median(times):.2f} s "
              f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} repeats)")
        print(f"file size: {size / MB:.2f} MB  (plotly.js {js / MB:.2f} MB + report {(size - js) / MB:.2f} MB)"
              f"   target <= 6 MB: {'met' if size <= 6 * MB else 'NOT MET'}")
        if not args.no_browser:
            ms = browser_render_ms(path, args.repeats)
            if isinstance(ms, str):
                print(f"browser render: skipped ({ms})")
            else:
                total = [t for t, _ in ms]
                med = statistics.median(total) / 1000
                print(f"rendered in headless chromium, cold (a fresh browser per load; navigation start -> last "
                      f"chart drawn): median {med:.2f} s (min {min(total) / 1000:.2f}, max {max(total) / 1000:.2f}, "
                      f"{len(ms)} loads)   target <= 2 s: {'met' if med <= 2 else 'NOT MET'}")
                print(f"  of which parsing and running the inlined plotly.js: median "
                      f"{statistics.median([j for _, j in ms]) / 1000:.2f} s")


if __name__ == "__main__":
    main()
