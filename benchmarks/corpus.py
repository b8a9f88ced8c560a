"""The default pack judged on the calibration corpus: per-check false-alarm rates and recall, tuned and held-out
seeds reported apart.

    python benchmarks/corpus.py [--runs DIR] [--reuse] [--seeds 0 1 ... 11] [--tune-seeds 0 1 ... 9] [--jobs 2]
                                [--rules default ...] [--only NAME ...] [--show all|fail] [--gate]

Every scenario of ``dyncheck/scenarios`` (the original suite plus ``corpus_healthy`` and ``corpus_faults``) is
trained once per seed with the monitor at its **defaults** (as a user attaches it), into ``DIR/<name>-s<seed>``.
The rules are then evaluated on every run. Thresholds are meant to be tuned on the ``--tune-seeds`` and judged on
the others, so the two halves are printed apart; the held-out half is what counts.

- A healthy run has a **false alarm** when any warning or error fires (info findings, e.g. edge-of-stability, are
  not alarms). The per-check table gives, for each check, the share of healthy runs it fired on.
- A faulty run is **diagnosed** when one of its ``expected`` ids (its root causes) fired; the **first diagnosis is
  correct** when the first of ``CheckResult.diagnoses`` is one of them. ``diagnoses`` counts the diagnoses at
  warning or error (the target is at most two).
- Recall per check: among faulty runs that expect the id, the share where it fired.

``--gate`` judges the faults the pack misses the way a team's CI would: it trains each one's fixed variant (the
same setup with the bug repaired) for two seeds of the same half, makes a baseline from one and compares the
faulty run with it (caught when it regresses) and the other fixed run (a false regression when that fails). A loss
that settles at the wrong level (softmax applied twice, a ReLU on a regression head, symmetric initialisation) is
invisible without a reference; against the intended run's baseline it is a regression.

``--reuse`` keeps runs already in DIR whose scenario code has not changed since (re-evaluates only), which makes
tuning rules fast. Training uses one thread
per process; ``--jobs`` processes train in parallel. Exit status 0 when the held-out half meets the targets (no
false alarm, every fault diagnosed, the first diagnosis correct for >= 90%).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dyncheck.checks.engine import evaluate  # noqa: E402
from dyncheck.checks.rules import load_rules  # noqa: E402
from dyncheck.scenarios import SCENARIOS  # noqa: E402
from dyncheck.store import STORE_FILENAME  # noqa: E402

ALARM = ("error", "warning")
STAMP = "scenario.sha"  # beside each run: a hash of its scenario's source, so --reuse retrains changed ones


def _stamp(name: str) -> str:
    import hashlib
    import inspect

    sc = SCENARIOS[name]
    src = inspect.getsource(sc.build) + repr((sorted(sc.expected), sorted(sc.allowed), sorted(sc.monitor.items())))
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def _run_name(name: str, seed: int, fixed: bool = False) -> str:
    return f"{name}{'-fixed' if fixed else ''}-s{seed}"


def _fresh(run_dir: Path, name: str) -> bool:
    stamp = run_dir / STAMP
    return (run_dir / STORE_FILENAME).exists() and stamp.exists() and stamp.read_text().strip() == _stamp(name)


def _train(job: tuple) -> tuple[str, int, float, str]:
    name, seed, out, *rest = job
    fixed = bool(rest and rest[0])
    import warnings

    import torch

    torch.set_num_threads(1)
    from dyncheck.scenarios import run_scenario

    t = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_dir = run_scenario(name, out, seed=seed, at_defaults=True, run_name=_run_name(name, seed, fixed),
                                   monitor_kwargs={"rules": None, "report": False}, fixed=fixed)
        (run_dir / STAMP).write_text(_stamp(name))
        err = ""
    except Exception as e:  # a scenario that cannot train is reported, not fatal for the table
        err = f"{type(e).__name__}: {e}"
    return name, seed, time.perf_counter() - t, err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", help="directory for the runs (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="keep runs already in --runs; train only missing ones")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(12)))
    ap.add_argument("--tune-seeds", type=int, nargs="*", default=list(range(10)),
                    help="seeds the rules were tuned on (reported apart from the held-out ones)")
    ap.add_argument("--jobs", type=int, default=2, help="training processes in parallel")
    ap.add_argument("--rules", nargs="+", default=["default"])
    ap.add_argument("--only", nargs="+", default=None, help="only these scenarios")
    ap.add_argument("--show", choices=["all", "fail"], default="fail", help="which runs to list one per line")
    ap.add_argument("--no-train", action="store_true", help="evaluate only the runs already in --runs")
    ap.add_argument("--gate", action="store_true",
                    help="for faults the pack misses: train the fixed variant and judge the faulty run with the "
                         "gate against a baseline of the fixed run of another seed")
    args = ap.parse_args()
    names = args.only or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios {unknown}")
    rules = load_rules(args.rules)
    tmp = None if args.runs else tempfile.TemporaryDirectory()
    out = Path(args.runs or tmp.name)  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)

    jobs = [(n, s, str(out)) for n in names for s in args.seeds
            if not (args.reuse and _fresh(out / f"{n}-s{s}", n))]
    t0 = time.perf_counter()
    failed: dict[tuple[str, int], str] = {}
    if args.no_train:
        jobs = []
    if jobs:
        print(f"training {len(jobs)} runs with {args.jobs} processes ...", flush=True)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for name, seed, secs, err in pool.map(_train, jobs):
                if err:
                    failed[(name, seed)] = err
                    print(f"  {name}-s{seed}: FAILED TO TRAIN: {err}", flush=True)
    t_train = time.perf_counter() - t0

    rows = []
    t1 = time.perf_counter()
    for name in names:
        sc = SCENARIOS[name]
        for seed in args.seeds:
            run_dir = out / f"{name}-s{seed}"
            if (name, seed) in failed or not (run_dir / STORE_FILENAME).exists():
                continue
            res = evaluate(run_dir / STORE_FILENAME, rules)
            alarms = sorted({f.check for f in res.findings if f.severity in ALARM})
            found = {f.check for f in res.findings}
            diags = [d for d in res.diagnoses if d.severity in ALARM] or res.diagnoses
            rows.append({"name": name, "seed": seed, "sc": sc, "alarms": alarms, "found": found,
                         "diagnoses": [d.check for d in diags],
                         "n_diag": sum(d.severity in ALARM for d in res.diagnoses)})
    t_eval = time.perf_counter() - t1

    ok = True
    for split, seeds in (("tuned", set(args.tune_seeds)), ("held-out", set(args.seeds) - set(args.tune_seeds))):
        part = [r for r in rows if r["seed"] in seeds]
        if not part:
            continue
        ok_split = _report(split, part, rules, args.show)
        if split == "held-out":
            ok = ok_split
    if args.gate:
        _gate(rows, out, args, rules)
    print(f"\n{len(rows)} runs; training {t_train:.0f} s, evaluation {t_eval:.1f} s")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


def _gate(rows: list[dict], out: Path, args: argparse.Namespace, rules) -> None:
    """The faults the pack missed, judged by the gate: a baseline of the *fixed* run of another seed of the same
    half (what a team would have committed), compared with the faulty run (caught when it regresses) and with the
    fixed run of the same seed (a false regression when that fails)."""
    from dyncheck.baseline import compare, make_baseline

    missed = [r for r in rows if r.get("verdict") == "MISSED" and r["sc"].has_fix]
    if not missed:
        print("\n=== gate: no missed fault with a fixed variant ===")
        return
    halves = [set(args.tune_seeds), set(args.seeds) - set(args.tune_seeds)]
    partner = {}
    for r in missed:
        half = sorted(next(h for h in halves if r["seed"] in h))
        others = [s for s in half if s != r["seed"]] or [r["seed"]]
        partner[(r["name"], r["seed"])] = others[0]
    need = sorted({(r["name"], s) for r in missed for s in (r["seed"], partner[(r["name"], r["seed"])])})
    jobs = [(n, s, str(out), True) for n, s in need
            if not (args.reuse and _fresh(out / _run_name(n, s, True), n)) and not args.no_train]
    if jobs:
        print(f"\ntraining {len(jobs)} fixed runs for the gate ...", flush=True)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for name, seed, _, err in pool.map(_train, jobs):
                if err:
                    print(f"  {name}-fixed-s{seed}: FAILED TO TRAIN: {err}", flush=True)
    print("\n=== gate: faults the pack missed, against a baseline of the fixed run of another seed ===")
    for split, half in zip(("tuned", "held-out"), halves):
        part = [r for r in missed if r["seed"] in half]
        caught = false_reg = judged = 0
        for r in part:
            base_dir = out / _run_name(r["name"], partner[(r["name"], r["seed"])], True)
            own_fix = out / _run_name(r["name"], r["seed"], True)
            if not ((base_dir / STORE_FILENAME).exists() and (own_fix / STORE_FILENAME).exists()):
                print(f"  {r['name']}-s{r['seed']:<4} no fixed runs (train without --no-train)")
                continue
            judged += 1
            base = make_baseline([base_dir / STORE_FILENAME], rules=rules)
            bad = compare(out / _run_name(r["name"], r["seed"]) / STORE_FILENAME, base, rules=rules)
            good = compare(own_fix / STORE_FILENAME, base, rules=rules)
            caught += bad.status == "fail"
            false_reg += good.status == "fail"
            print(f"  {split:<8} {r['name'] + '-s' + str(r['seed']):<40} faulty: {bad.status:<4} "
                  f"{', '.join(bad.regressions) or '-':<36} fixed: {good.status:<4} "
                  f"{', '.join(good.regressions) or ''}")
        if judged:
            print(f"  {split}: caught {caught}/{judged}; false regressions of the fixed runs {false_reg}/{judged}")


def _report(split: str, rows: list[dict], rules, show: str) -> bool:
    healthy = [r for r in rows if r["sc"].healthy]
    faulty = [r for r in rows if not r["sc"].healthy]
    print(f"\n=== {split} seeds: {len(healthy)} healthy runs, {len(faulty)} faulty runs ===")
    for r in rows:
        sc = r["sc"]
        if sc.healthy:
            bad = [a for a in r["alarms"] if a not in sc.allowed]
            verdict = "FALSE ALARM" if bad else "clean"
        else:
            diagnosed = bool(sc.expected & r["found"])
            first_ok = bool(r["diagnoses"]) and r["diagnoses"][0] in sc.expected
            verdict = ("MISSED" if not diagnosed else "FIRST WRONG" if not first_ok
                       else "TOO MANY" if r["n_diag"] > 2 else "diagnosed")
        r["verdict"] = verdict
        if show == "all" or verdict not in ("clean", "diagnosed"):
            print(f"  {r['name'] + '-s' + str(r['seed']):<46} {verdict:<11} expected={sorted(sc.expected)} "
                  f"diagnoses={r['diagnoses']} alarms={r['alarms']}")
    # per check
    ids = [c.id for c in rules]
    print(f"\n  {'check':<24} {'false alarms (healthy)':>24} {'recall (faults expecting it)':>30}")
    for cid in ids:
        fa = sum(cid in r["alarms"] and cid not in r["sc"].allowed for r in healthy)
        exp = [r for r in faulty if cid in r["sc"].expected]
        rec = sum(cid in r["found"] for r in exp)
        rec_s = f"{rec}/{len(exp)} ({rec / len(exp):.0%})" if exp else "-"
        print(f"  {cid:<24} {f'{fa}/{len(healthy)} ({fa / max(1, len(healthy)):.0%})':>24} {rec_s:>30}")
    clean = sum(r["verdict"] == "clean" for r in healthy)
    diagnosed = sum(bool(r["sc"].expected & r["found"]) for r in faulty)
    first = sum(bool(r["diagnoses"]) and r["diagnoses"][0] in r["sc"].expected for r in faulty)
    nd = [r["n_diag"] for r in faulty]
    print(f"\n  healthy runs without a false alarm: {clean}/{len(healthy)}")
    if faulty:
        print(f"  faulty runs diagnosed:              {diagnosed}/{len(faulty)}")
        print(f"  first diagnosis correct:            {first}/{len(faulty)} ({first / len(faulty):.0%})")
        print(f"  diagnoses per faulty run:           median {statistics.median(nd):g}, max {max(nd)}, "
              f"<= 2 on {sum(n <= 2 for n in nd)}/{len(nd)}")
    return clean == len(healthy) and diagnosed == len(faulty) and (not faulty or first >= 0.9 * len(faulty))


if __name__ == "__main__":
    sys.exit(main())
