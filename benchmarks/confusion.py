"""The default pack on the labelled scenario suite (dyncheck/scenarios.py): a confusion table.

    python benchmarks/confusion.py [--runs DIR] [--reuse] [--rules default ...] [NAME ...]

Trains every scenario (or those named) with the monitor, evaluates the rules on each run, and prints one row
per scenario and the table: faulty runs diagnosed with a correct id / missed; healthy runs clean / with a false
alarm (any warning or error; info findings such as edge-of-stability are not alarms). Findings on a faulty run
outside its expected and allowed ids are listed as "extra" (a misdiagnosis on top of the correct one).
``--reuse`` evaluates runs already in DIR instead of training again (to tune rules quickly).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dyncheck.checks.engine import evaluate
from dyncheck.checks.rules import load_rules
from dyncheck.scenarios import SCENARIOS, run_scenario
from dyncheck.store import STORE_FILENAME


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="scenarios (default: all)")
    ap.add_argument("--runs", help="directory for the runs (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="evaluate the runs already in --runs, train missing ones")
    ap.add_argument("--rules", nargs="+", default=["default"])
    ap.add_argument("--seed", type=int, default=0, help="seed of the runs (the pack was tuned on seed 0)")
    ap.add_argument("--every-n-steps", type=int, default=None,
                    help="override the scenarios' per-layer schedule (they use 10; the monitor's default is 50)")
    args = ap.parse_args()
    names = args.names or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    rules = load_rules(args.rules)
    tmp = None if args.runs else tempfile.TemporaryDirectory()
    out = Path(args.runs or tmp.name)  # type: ignore[union-attr]
    rows = []
    t_all = time.perf_counter()
    for name in names:
        sc = SCENARIOS[name]
        run_dir = out / name
        t = time.perf_counter()
        if not (args.reuse and (run_dir / STORE_FILENAME).exists()):
            kw: dict = {"rules": None}
            if args.every_n_steps:
                kw["every_n_steps"] = args.every_n_steps
            run_scenario(name, out, seed=args.seed, monitor_kwargs=kw)
        secs = time.perf_counter() - t
        result = evaluate(run_dir, rules)
        alarms = {f.check for f in result.findings if f.severity in ("error", "warning")}
        info = {f.check for f in result.findings if f.severity == "info"}
        found = alarms | info
        if sc.expected:
            verdict = "detected" if sc.expected <= found else "MISSED"
            extra = alarms - sc.expected - sc.allowed
        else:
            bad = alarms - sc.allowed
            verdict = "clean" if not bad else "FALSE ALARM"
            extra = bad
        rows.append((sc, verdict, found, extra, secs))
        print(f"{name:<32} {sc.family:<12} {verdict:<12} {secs:5.1f}s  expected={sorted(sc.expected)} "
              f"found={sorted(found)}" + (f" extra={sorted(extra)}" if extra else ""), flush=True)
    faulty = [r for r in rows if r[0].expected]
    healthy = [r for r in rows if not r[0].expected]
    detected = sum(r[1] == "detected" for r in faulty)
    clean = sum(r[1] == "clean" for r in healthy)
    extra_runs = sum(bool(r[3]) for r in faulty)
    families = sorted({r[0].family for r in healthy})
    print()
    print("                      | diagnosed (correct id) | missed | extra ids")
    print(f"faulty runs  ({len(faulty):>2})     | {detected:>22} | {len(faulty) - detected:>6} | {extra_runs:>9}")
    print("                      | clean                  | false alarm")
    print(f"healthy runs ({len(healthy):>2})     | {clean:>22} | {len(healthy) - clean:>6}")
    print(f"healthy families: {', '.join(families)}; total time {time.perf_counter() - t_all:.0f} s")
    if tmp is not None:
        tmp.cleanup()
    return 0 if detected == len(faulty) and clean == len(healthy) else 1


if __name__ == "__main__":
    sys.exit(main())
