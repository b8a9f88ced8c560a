"""The labelled scenario suite (``dyncheck.scenarios``): short real training runs, healthy or with one known fault.

    python examples/scenarios.py --list                       # name, family, expected (and allowed) check ids
    python examples/scenarios.py dying-relu overfitting       # train them; prints each run directory
    python examples/scenarios.py --all --out runs/scenarios   # every scenario (about a minute on 2 CPU cores)

Each run writes ``<out>/<name>/run.db``; read it with ``dyncheck.open_run(dir)``. Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import logging
import time

from dyncheck.scenarios import SCENARIOS, run_scenario


def _ids(ids: frozenset[str]) -> str:
    return ", ".join(sorted(ids)) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="scenarios to run")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--all", action="store_true", help="run every scenario")
    ap.add_argument("--out", default="runs/scenarios", help="parent directory of the runs (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="show Lightning's progress bar")
    args = ap.parse_args()

    if args.list or not (args.names or args.all):
        width = max(map(len, SCENARIOS))
        print(f"{'name':{width}}  {'family':11}  expected (allowed)")
        for sc in SCENARIOS.values():
            allowed = f"  ({_ids(sc.allowed)})" if sc.allowed else ""
            print(f"{sc.name:{width}}  {sc.family:11}  {_ids(sc.expected)}{allowed}")
            print(f"{'':{width}}  {'':11}  {sc.summary}")
        if not args.list:
            print("\nname scenarios to run them, or --all")
        return
    names = list(SCENARIOS) if args.all else args.names
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; see --list")
    for logger in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        run_dir = run_scenario(name, args.out, seed=args.seed, progress_bar=args.progress)
        sc = SCENARIOS[name]
        print(f"{name}: {run_dir}  ({time.perf_counter() - t0:.1f} s; expected: {_ids(sc.expected)})", flush=True)
    if len(names) > 1:
        print(f"{len(names)} scenarios in {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
