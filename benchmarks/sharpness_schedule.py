"""The sharpness schedule at defaults on the digits CNN of ``benchmarks/overhead.py``: where the probes land, how
evenly, what they cost, and the monitor's wall-time overhead.

For runs of 300, 1000 and 3000 optimizer steps (``max_steps``; the CNN, batch 64, SGD with momentum, as in
``overhead.py``) three configurations are run interleaved, the order rotated each repeat:

- ``plain``          no callback
- ``defaults``       ``DynamicsMonitor(dirpath=tmp)`` (sharpness within ``sharpness_budget=0.02``, with the floor
  of 8 probes for runs of >= 200 steps, capped at 10% of the training time and 2 s)
- ``sharpness off``  ``DynamicsMonitor(dirpath=tmp, sharpness_budget=0)``, to separate the sharpness share

Printed per length: the probe steps of the last ``defaults`` run, spacing statistics (min / mean / max gap, the
coefficient of variation of the gaps after the first), the products per probe (first = cold, then warm-started),
the sharpness time share *inside* the run (``sharpness_time_s / (duration_s - sharpness_time_s)``, from the run
store; insensitive to machine load) and the wall-time ratios to ``plain`` (median of the repeats, and the median of
per-repeat ratios; both sensitive to other processes on the machine).

Usage: ``python benchmarks/sharpness_schedule.py [--repeats N] [--steps 300 1000 3000] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("PL_DISABLE_FORK", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import overhead  # noqa: E402
from overhead import digits, make_cnn  # noqa: E402  (same model, data, warnings and log levels)

CONFIGS = {"plain": None, "defaults": {}, "sharpness off": {"sharpness_budget": 0}}


def _schedule_info(run) -> dict:
    info = {"meta": run.meta}
    if "sharpness/top_eig" in run:
        info["steps"] = run.series("sharpness/top_eig").steps.astype(int).tolist()
        info["n_hvp"] = run.series("sharpness/n_hvp").values.astype(int).tolist()
    return info


def one_run(loader, max_steps: int, monitor_kw: dict | None) -> tuple[float, dict]:
    return overhead.one_run(make_cnn, loader, max_steps, monitor_kw, inspect=_schedule_info)


def bench(loader, max_steps: int, repeats: int) -> dict:
    names = list(CONFIGS)
    times: dict[str, list[float]] = {n: [] for n in names}
    infos: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sec, info = one_run(loader, max_steps, CONFIGS[name])
            times[name].append(sec)
            infos[name].append(info)
    base = statistics.median(times["plain"])
    out = {"steps": max_steps, "times": times, "infos": infos}
    for name in names:
        out[f"ratio/{name}"] = statistics.median(times[name]) / base
        out[f"paired/{name}"] = statistics.median(t / b for t, b in zip(times[name], times["plain"]))
    return out


def report(res: dict) -> None:
    T = res["steps"]
    last = res["infos"]["defaults"][-1]
    steps = last.get("steps", [])
    meta = last["meta"]
    facts = meta.get("sharpness_schedule", {})
    shares = [i["meta"]["sharpness_time_s"] / max(i["meta"]["duration_s"] - i["meta"]["sharpness_time_s"], 1e-9)
              for i in res["infos"]["defaults"]]
    counts = [len(i.get("steps", [])) for i in res["infos"]["defaults"]]
    print(f"\n== {T} steps: {len(steps)} probes (per repeat: {counts}), first at step "
          f"{steps[0] if steps else None} ({100 * steps[0] / T if steps else float('nan'):.1f}% of the run)")
    print(f"  probe steps: {steps}")
    if len(steps) > 1:
        gaps = np.diff(steps)
        cv = float(np.std(gaps[1:]) / np.mean(gaps[1:])) if len(gaps) > 1 else 0.0
        print(f"  gaps: min {gaps.min()}, mean {gaps.mean():.1f}, max {gaps.max()}; first gap {gaps[0]}, "
              f"coefficient of variation of the others {cv:.3f}")
    print(f"  products per probe: {last.get('n_hvp')}")
    print(f"  schedule facts: {facts}")
    print(f"  sharpness time share inside the run: median {100 * statistics.median(shares):.2f}% "
          f"(repeats: {', '.join(f'{100 * s:.2f}%' for s in shares)}); sharpness {meta['sharpness_time_s']:.3f}s "
          f"of {meta['duration_s']:.3f}s in the last run")
    med = {n: statistics.median(t) for n, t in res["times"].items()}
    print("  wall time, median: " + ", ".join(f"{n} {med[n]:.2f}s" for n in CONFIGS))
    print("  ratio to plain (of medians / paired): " + ", ".join(
        f"{n} {res[f'ratio/{n}']:.3f}x / {res[f'paired/{n}']:.3f}x" for n in CONFIGS if n != "plain"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 1000, 3000])
    ap.add_argument("--quick", action="store_true", help="one repeat of 300 steps")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.steps = 1, [300]
    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (other processes on these cores skew wall-time ratios, "
          f"not the in-run share)")
    print(f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, threads {torch.get_num_threads()}, "
          f"{args.repeats} repeats interleaved")
    x, y = digits(flat=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    for name, kw in CONFIGS.items():  # warm-up, untimed
        one_run(loader, 5, kw)
    for T in args.steps:
        report(bench(loader, T, args.repeats))
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
