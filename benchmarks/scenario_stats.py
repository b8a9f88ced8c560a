"""Key statistics of the labelled scenarios (``dyncheck.scenarios``), for tuning the default checks' thresholds.

Runs every scenario (or those named), one after the other, and prints per scenario:

- ``time``: wall seconds of the run; ``nf``: non-finite training losses; ``vacc``: last validation accuracy
- ``loss/train``: first, min, last; ``early``/``late``: medians of the first and last 10% of steps
- ``loss/val``: min, last, and ``rise`` = last/min - 1
- ``grad_norm/total``: max, median, ``max/early`` = max / median of the first 10% of steps, ``late/early`` =
  median of the last 10% / median of the first 10%
- ``lay.min``, ``lay.med``: min and median over steps of (smallest / largest per-layer gradient norm), weight
  tensors only (those with 2+ dimensions)
- ``dead``, ``sat``: max over modules of the median of ``act/dead`` / ``act/saturated`` over the second half
- ``upd_min``, ``upd_max``: min and max over weight tensors of each one's median ``update_ratio``
- ``unchanged``: parameters still bit-identical to their initial value at the end
- ``sharp/thr``: max over probes of ``sharpness/top_eig / sharpness/threshold`` (and max top_eig)

Usage: ``python benchmarks/scenario_stats.py [NAME ...] [--out DIR] [--json FILE] [--seed N]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
import warnings

import numpy as np

import dyncheck
from dyncheck.scenarios import SCENARIOS, run_scenario


def _f(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else float("nan")


def _med(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _head_tail(v: np.ndarray, share: float = 0.1) -> tuple[float, float]:
    k = max(1, int(len(v) * share))
    return _med(v[:k]), _med(v[-k:])


def stats(run_dir, seconds: float) -> dict:
    run = dyncheck.open_run(run_dir)
    weights = {p["name"] for p in run.meta["model"]["parameters"] if len(p["shape"]) >= 2 and p["trainable"]}
    out: dict = {"time_s": round(seconds, 2), "status": run.meta["status"]}
    loss = run.series("loss/train").values
    early, late = _head_tail(loss)
    fin = loss[np.isfinite(loss)]
    out["nonfinite_loss"] = int((~np.isfinite(loss)).sum())
    out["train"] = {"first": _f(loss[0]), "min": _f(fin.min() if fin.size else None), "last": _f(loss[-1]),
                    "early": early, "late": late}
    if "loss/val" in run:
        val = run.series("loss/val").values
        vmin = _f(np.nanmin(val)) if np.isfinite(val).any() else float("nan")
        out["val"] = {"min": vmin, "last": _f(val[-1]), "rise": _f(val[-1] / vmin - 1), "n": int(len(val))}
    if "logged/val_acc" in run:
        out["val_acc"] = _f(run.series("logged/val_acc").values[-1])
    gn = run.series("grad_norm/total").values
    g_early, g_late = _head_tail(gn)
    g_max = _f(np.nanmax(gn)) if np.isfinite(gn).any() else float("nan")
    out["grad"] = {"max": g_max, "median": _med(gn), "early": g_early, "late": g_late,
                   "max_over_early": g_max / g_early, "late_over_early": g_late / g_early}
    layer = [run.series(f"grad_norm/{n}").values for n in sorted(weights) if f"grad_norm/{n}" in run]
    if layer:
        n = min(len(v) for v in layer)
        mat = np.stack([v[:n] for v in layer])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps of a NaN run
            ratio = np.nanmin(mat, axis=0) / np.nanmax(mat, axis=0)
        out["layer_gn_ratio_min"] = _f(np.nanmin(ratio)) if np.isfinite(ratio).any() else float("nan")
        out["layer_gn_ratio_median"] = _med(ratio)
    for stat, key in (("dead", "dead"), ("saturated", "sat")):
        best, where = float("nan"), None
        for name in run.metrics(f"act/{stat}/*"):
            v = run.series(name).values
            m = _med(v[len(v) // 2:])
            if np.isfinite(m) and not (m <= best):
                best, where = m, name.split("/", 2)[2]
        out[key] = {"max_median_2nd_half": best, "module": where}
    upd = {n: _med(run.series(f"update_ratio/{n}").values) for n in weights if f"update_ratio/{n}" in run}
    upd = {k: v for k, v in upd.items() if np.isfinite(v)}
    if upd:
        lo, hi = min(upd, key=upd.get), max(upd, key=upd.get)
        out["update_ratio"] = {"min": upd[lo], "min_param": lo, "max": upd[hi], "max_param": hi}
    unchanged = []
    for name in run.metrics("weight_unchanged/*"):
        if run.series(name).values[-1] == 1:
            unchanged.append(name.split("/", 1)[1])
    out["unchanged"] = unchanged
    if "sharpness/top_eig" in run:
        eig = run.series("sharpness/top_eig")
        out["sharpness"] = {"max_top_eig": _f(np.nanmax(eig.values)), "n": int(len(eig))}
        if "sharpness/threshold" in run:
            thr = run.series("sharpness/threshold")
            common, i, j = np.intersect1d(eig.steps, thr.steps, return_indices=True)
            r = eig.values[i] / thr.values[j]
            out["sharpness"]["max_over_threshold"] = _f(np.nanmax(r))
            out["sharpness"]["threshold"] = _f(thr.values[-1])
            # share of probes in the second half at >= 90% of the threshold
            half = r[len(r) // 2:]
            out["sharpness"]["share_ge_0.9_2nd_half"] = _f(np.mean(half >= 0.9)) if half.size else float("nan")
    run.close()
    return out


def _g(x, width: int = 8) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-".rjust(width)
    if isinstance(x, int):
        return str(x).rjust(width)
    ax = abs(x)
    s = f"{x:.3g}" if (ax >= 1e-3 and ax < 1e4) or ax == 0 else f"{x:.1e}"
    return s.rjust(width)


COLUMNS = [  # (header, width, value)
    ("time", 5, lambda s: s["time_s"]), ("nf", 4, lambda s: s["nonfinite_loss"]),
    ("vacc", 5, lambda s: s.get("val_acc")), ("|", 1, None),
    ("tr.first", 8, lambda s: s["train"]["first"]), ("tr.min", 8, lambda s: s["train"]["min"]),
    ("tr.last", 8, lambda s: s["train"]["last"]), ("early", 8, lambda s: s["train"]["early"]),
    ("late", 8, lambda s: s["train"]["late"]), ("|", 1, None),
    ("val.min", 8, lambda s: s.get("val", {}).get("min")), ("val.last", 8, lambda s: s.get("val", {}).get("last")),
    ("rise", 7, lambda s: s.get("val", {}).get("rise")), ("|", 1, None),
    ("gn.max", 8, lambda s: s["grad"]["max"]), ("gn.med", 8, lambda s: s["grad"]["median"]),
    ("max/early", 9, lambda s: s["grad"]["max_over_early"]), ("late/early", 10, lambda s: s["grad"]["late_over_early"]),
    ("|", 1, None),
    ("lay.min", 8, lambda s: s.get("layer_gn_ratio_min")), ("lay.med", 8, lambda s: s.get("layer_gn_ratio_median")),
    ("dead", 6, lambda s: s["dead"]["max_median_2nd_half"]), ("sat", 6, lambda s: s["sat"]["max_median_2nd_half"]),
    ("|", 1, None),
    ("upd.min", 8, lambda s: s.get("update_ratio", {}).get("min")),
    ("upd.max", 8, lambda s: s.get("update_ratio", {}).get("max")), ("|", 1, None),
    ("sharp/thr", 9, lambda s: s.get("sharpness", {}).get("max_over_threshold")),
    ("shp>=.9", 7, lambda s: s.get("sharpness", {}).get("share_ge_0.9_2nd_half")), ("|", 1, None),
]


def table(results: dict) -> str:
    head = f"{'scenario':31} {'exp':>3} " + " ".join(h.rjust(w) for h, w, _ in COLUMNS) + " unchanged"
    lines = [head, "-" * len(head)]
    for name, s in results.items():
        cells = [("|" if f is None else _g(f(s), w)) for h, w, f in COLUMNS]
        lines.append(f"{name:31} {('ok' if SCENARIOS[name].healthy else 'bad'):>3} " + " ".join(cells)
                     + " " + (",".join(s["unchanged"]) or "-"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="scenarios to run (default: all)")
    ap.add_argument("--out", help="directory for the runs (default: a temporary one)")
    ap.add_argument("--json", help="also write all statistics to this JSON file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = args.names or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        t_all = time.perf_counter()
        for name in names:
            t0 = time.perf_counter()
            run_dir = run_scenario(name, out, seed=args.seed)
            dt = time.perf_counter() - t0
            results[name] = stats(run_dir, dt)
            results[name]["expected"] = sorted(SCENARIOS[name].expected)
            results[name]["allowed"] = sorted(SCENARIOS[name].allowed)
            print(f"{name}: {dt:.1f} s", flush=True)
        total = time.perf_counter() - t_all
    print()
    print(table(results))
    print(f"\n{len(names)} scenarios in {total:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"seed": args.seed, "total_s": round(total, 2), "scenarios": results}, fh, indent=1)
        print(f"statistics written to {args.json}")


if __name__ == "__main__":
    main()
