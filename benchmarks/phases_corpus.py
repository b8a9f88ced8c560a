"""Phases of training on the calibration corpus: how often a label contradicts what the loss does on it.

    python benchmarks/phases_corpus.py --runs DIR      (runs trained by benchmarks/corpus.py)

For every run's training loss, ``detect_phases`` labels the curve; each phase is then judged against the loss
itself (medians of the first and last 10% of the phase's points, at least 3): a *stabilisation* or *plateau* must not move
by 1.5x or more, an *instability* must rise, *rapid fitting*, *refinement* and *recovery* must fall, and a
*refinement* never directly follows an *instability* (that fall is recovery). Prints the label counts and every
contradiction.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from dyncheck.phases import detect_phases
from dyncheck.store import STORE_FILENAME, open_run


def _ends(steps: np.ndarray, values: np.ndarray, start: int, end: int) -> tuple[float, float]:
    sel = (steps >= start) & (steps <= end) & np.isfinite(values)
    v = values[sel]
    k = max(3, v.size // 10)
    return float(np.median(v[:k])), float(np.median(v[-k:]))


def judge(steps: np.ndarray, values: np.ndarray) -> tuple[list, list[str]]:
    phases = detect_phases(steps, values)
    problems = []
    for prev, p in zip([None] + phases[:-1], phases):
        a, b = _ends(steps, values, p.start, p.end)
        if not (np.isfinite(a) and np.isfinite(b)) or a <= 0 or b <= 0:
            continue
        r = b / a
        if p.name in ("stabilisation", "plateau") and not 1 / 1.5 < r < 1.5:
            problems.append(f"{p.name} {p.start}-{p.end} moves x{r:.3g}")
        if p.name == "instability" and r <= 1.0:
            problems.append(f"instability {p.start}-{p.end} does not rise (x{r:.3g})")
        if p.name in ("rapid fitting", "refinement", "recovery") and r >= 1.0:
            problems.append(f"{p.name} {p.start}-{p.end} does not fall (x{r:.3g})")
        if p.name == "refinement" and prev is not None and prev.name == "instability":
            problems.append(f"refinement {p.start}-{p.end} right after an instability")
    return phases, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="directory of runs (benchmarks/corpus.py --runs DIR)")
    args = ap.parse_args()
    dirs = sorted(p.parent for p in Path(args.runs).glob(f"*/{STORE_FILENAME}"))
    labels: Counter[str] = Counter()
    bad = 0
    t0 = time.perf_counter()
    for d in dirs:
        with open_run(d) as run:
            if "loss/train" not in run.metrics():
                continue
            s = run.series("loss/train")
            phases, problems = judge(np.asarray(s.steps), np.asarray(s.values, dtype=float))
        labels.update(p.name for p in phases)
        if problems:
            bad += 1
            print(f"  {d.name:<46} {' | '.join(problems)}")
    secs = time.perf_counter() - t0
    print(f"\n{len(dirs)} runs, {sum(labels.values())} phases: "
          + ", ".join(f"{k} {v}" for k, v in labels.most_common()))
    print(f"runs with a label that contradicts the loss: {bad}/{len(dirs)}  ({secs:.1f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
