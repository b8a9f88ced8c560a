"""How sensitive `dyncheck compare` is: a baseline from seed 0 of the example model (examples/ci_example), then
other seeds (which must pass) and real degradations (which must fail, naming what regressed).

    python benchmarks/baseline_sensitivity.py [--seeds 9]

Prints, per run, the verdict and the regressed quantities or findings, and for the seeds the worst ratio seen per
quantity (how much of each default tolerance seed noise uses up).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=9, help="seeds 1..N are compared with seed 0 (9)")
    args = ap.parse_args()
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
