"""How sensitive `dyncheck compare` is: a baseline from seed 0 of the example model (examples/ci_example), then
other seeds (which must pass) and real degradations (which must fail, naming what regressed).

    python benchmarks/baseline_sensitivity.py [--seeds 9] [--corpus /work/corpus] [--only example|corpus]

Prints, per run, the verdict and the regressed quantities or findings, and for the seeds the worst ratio seen per
quantity (how much of each default tolerance seed noise uses up).

With ``--corpus DIR`` (already-trained corpus runs, DIR/<scenario>-s<seed>): trajectory bands against end values.
A baseline from seeds 0-1 of every healthy scenario (``healthy-*``, ``*-fixed``) judges its held-out seeds 2-3
(false regressions: target 0; a single-seed baseline from seed 0 judging seeds 1-3 is shown too); degradations are
judged against the healthy baseline: each fault's runs against its fixed variant, and synthetic degradations of a
held-out seed (written to a temporary store): its time slowed to a third over the first quarter of the run and
caught up by the middle (slower early learning that ends at the same loss), and a loss bump x2 over 60-80% of the
run that recovers. For each: how many end values and how many trajectories catch it, and how many only the
trajectories catch. Findings (checks) are left out: this compares the two ways of judging the dynamics.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "ci_example"))

from model import train  # noqa: E402

from dyncheck import DynamicsMonitor  # noqa: E402
from dyncheck.baseline import compare, make_baseline  # noqa: E402

DEGRADATIONS = {
    "learning rate x10": {"lr": 0.5},
    "BatchNorm removed": {"norm": False},
    "init 100x too small": {"init_gain": 0.01},
    "init 10x too small": {"init_gain": 0.1},
    "init 10x too large": {"init_gain": 10.0},
    "first layer frozen (not in optimizer)": {"freeze_first": True},
    "label noise 30%": {"label_noise": 0.3},
    "label noise 50%": {"label_noise": 0.5},
}


class _NoFindings:
    """A CheckResult stand-in with no findings: the corpus comparison judges the dynamics only."""

    def at_or_above(self, severity: str) -> list:
        return []


def _verdicts(cmp) -> tuple[bool, bool]:
    """(caught by an end value, caught by a trajectory) of a comparison."""
    regs = cmp.regressions
    return (any(not r.startswith("trajectory ") for r in regs), any(r.startswith("trajectory ") for r in regs))


def _warp(steps, values, kind: str):
    """A synthetic degradation of one series: ``slow`` (time at a third over the first quarter, caught up by the
    middle: nearest recorded point, so the minibatch noise stays), ``bump`` (x2 over 60-80% of the run)."""
    import numpy as np

    a, b = float(steps[0]), float(steps[-1])
    q = (b - a) / 4
    if kind == "slow":
        phi = np.interp(steps, [a, a + q, a + 2 * q, b], [a, a + q / 3, a + 2 * q, b])
        idx = np.clip(np.searchsorted(steps, phi), 0, steps.size - 1)
        return values[idx]
    frac = (steps - a) / max(b - a, 1.0)
    return np.where((frac >= 0.6) & (frac < 0.8), values * 2.0, values)


def corpus_table(corpus: Path) -> None:
    import numpy as np

    from dyncheck import open_run
    from dyncheck.store import RunWriter

    def path(name: str, seed: int) -> Path:
        return corpus / f"{name}-s{seed}"

    names = sorted({p.name.rsplit("-s", 1)[0] for p in corpus.iterdir() if (p / "run.db").exists()})
    complete = [n for n in names if all((path(n, s) / "run.db").exists() for s in range(4))]
    healthy = [n for n in complete if n.startswith("healthy-") or n.endswith("-fixed")]
    none = _NoFindings()
    bases = {}
    rows = []
    changed: dict[str, int] = {}
    for k, judged in ((2, (2, 3)), (1, (1, 2, 3))):
        end_false = traj_false = n = 0
        names_false: list[str] = []
        for name in healthy:
            base = make_baseline([path(name, s) for s in range(k)], rules=None, results=[none] * k)
            if k == 2:
                bases[name] = base
            for seed in judged:
                cmp = compare(path(name, seed), base, rules=None, result=none)
                e, t = _verdicts(cmp)
                for c in cmp.changes if k == 2 else ():
                    changed[c] = changed.get(c, 0) + 1
                n += 1
                end_false += e
                traj_false += t
                if t:
                    names_false.append(f"{name}-s{seed}")
        rows.append((f"healthy held-out seeds, baseline from {k} seed{'s' if k > 1 else ''}", n, end_false,
                     traj_false, None, ", ".join(names_false[:4]) + (" ..." if len(names_false) > 4 else "")))
    print(f"corpus: {corpus} ({len(healthy)} healthy scenarios with seeds 0-3)\n")
    head = f"{'runs judged':<58} {'n':>4} {'end values':>11} {'trajectories':>13} {'only traj.':>11}"
    print(head)
    print("-" * len(head))
    for label, n, e, t, only, _ in rows:
        print(f"{label:<58} {n:>4} {e:>11} {t:>13} {'':>11}   (false regressions)")
    print("  reported, not failing (policy 'never'), on the 2-seed baseline's held-out seeds: "
          + (", ".join(f"{c[len('trajectory '):]} {n}" for c, n in sorted(changed.items())) or "none"))
    faults = [n[: -len("-fixed")] for n in healthy if n.endswith("-fixed") and n[: -len("-fixed")] in names]
    examples: list[str] = []
    deg = []
    for fault in faults:
        base = bases[f"{fault}-fixed"]
        got = [_verdicts(compare(path(fault, s), base, rules=None, result=none))
               for s in range(4) if (path(fault, s) / "run.db").exists()]
        deg.append((f"fault vs fixed: {fault}", got))
    with tempfile.TemporaryDirectory() as tmp:
        for kind, label in (("slow", "synthetic slow start, same end (healthy s2)"),
                            ("bump", "synthetic loss bump x2 over 60-80% (healthy s2)")):
            got = []
            for name in healthy:
                d = Path(tmp) / f"{kind}-{name}"
                with open_run(path(name, 2)) as run, RunWriter(d / "run.db") as w:
                    for metric in run.metrics():
                        ser = run.series(metric)
                        v = ser.values
                        if kind == "slow" or metric in ("loss/train", "loss/val"):
                            v = _warp(ser.steps, v, kind) if ser.steps.size > 1 else v
                        w.write({metric: (ser.steps, np.asarray(v, float))})
                    w.set_meta(status="finished")
                cmp = compare(d, bases[name], rules=None, result=none)
                got.append(_verdicts(cmp))
                if kind == "slow" and got[-1] == (False, True) and len(examples) < 3:
                    reg = [t.text for t in cmp.trajectories if t.status == "regressed"]
                    examples.append(f"  {name} slowed: " + "; ".join(reg)
                                    + (f"; {cmp.phase_timing}" if cmp.phase_timing else ""))
            deg.append((label, got))
    total = [0, 0, 0, 0]
    for label, got in deg:
        e = sum(g[0] for g in got)
        t = sum(g[1] for g in got)
        only = sum(g[1] and not g[0] for g in got)
        if label.startswith("fault"):
            total = [total[0] + len(got), total[1] + e, total[2] + t, total[3] + only]
        else:
            print(f"{label:<58} {len(got):>4} {e:>11} {t:>13} {only:>11}   (caught)")
    print(f"{'faults vs their fixed variant (' + str(len(faults)) + ' scenarios, all seeds)':<58} {total[0]:>4} "
          f"{total[1]:>11} {total[2]:>13} {total[3]:>11}   (caught)")
    for label, got in deg:
        if label.startswith("fault"):
            print(f"  {label[len('fault vs fixed: '):]:<56} {len(got):>4} {sum(g[0] for g in got):>11} "
                  f"{sum(g[1] for g in got):>13} {sum(g[1] and not g[0] for g in got):>11}")
    if examples:
        print("\nwhat a trajectory-only catch says:")
        print("\n".join(examples))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=9, help="seeds 1..N are compared with seed 0 (9)")
    ap.add_argument("--corpus", type=Path, default=None, help="corpus runs DIR/<scenario>-s<seed>: trajectory "
                    "bands against end values on held-out seeds and degradations")
    ap.add_argument("--only", choices=("example", "corpus"), default=None, help="run one part only")
    args = ap.parse_args()
    if args.only == "corpus" and args.corpus is None:
        ap.error("--only corpus needs --corpus DIR")
    if args.corpus is not None and args.only != "example":
        corpus_table(args.corpus)
        if args.only == "corpus":
            return
        print()
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        def run(name: str, seed: int = 0, **options) -> Path:
            d = Path(tmp) / name.replace(" ", "_")
            train(DynamicsMonitor(dirpath=d, every_n_steps=10, report=False, rules=None), seed=seed, root=d,
                  **options)
            return d

        base = make_baseline([run("seed0")])
        worst: dict[str, float] = {}
        passed = 0
        for seed in range(1, args.seeds + 1):
            cmp = compare(run(f"seed{seed}", seed), base)
            passed += not cmp.regressions
            for r in cmp.rows:
                if r.obtained is not None and r.baseline > 0 and r.change.startswith("x"):
                    worst[r.quantity] = max(worst.get(r.quantity, 0.0), r.obtained / r.baseline)
            print(f"seed {seed}: {'pass' if not cmp.regressions else 'FAIL ' + ', '.join(cmp.regressions)}",
                  flush=True)
        print(f"\nseeds passing: {passed}/{args.seeds}")
        for q, ratio in worst.items():
            print(f"  worst ratio to the baseline, {q:<18} x{ratio:.2f}  (tolerance x{base.quantities[q].tolerance:g})")
        print()
        caught = 0
        for name, options in DEGRADATIONS.items():
            cmp = compare(run(name, **options), base)
            caught += bool(cmp.regressions)
            print(f"{name:<40} {'caught: ' + ', '.join(cmp.regressions) if cmp.regressions else 'MISSED'}",
                  flush=True)
        print(f"\ndegradations caught: {caught}/{len(DEGRADATIONS)}")


if __name__ == "__main__":
    main()
