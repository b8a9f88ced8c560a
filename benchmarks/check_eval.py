"""How long the default pack takes on a big run: 100 series x 100k steps (target: <= 0.2 s).

    python benchmarks/check_eval.py [--series 100] [--steps 100000] [--repeats 7]

The series are what a long run records: training loss and global gradient norm every step, validation loss
every 1000 steps, and per-layer gradient norms, update ratios, dead and saturated shares -- all at every step
here (the worst case; the monitor records per-layer statistics every N steps by default). Some are noisy, one
layer is dead, one spike and one NaN stretch are planted so that detectors do real work. Prints the median
evaluation time of the in-memory series (the engine), and of reading the same run from a store file plus
evaluating (what `dyncheck check` does).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dyncheck.checks.engine import evaluate
from dyncheck.checks.rules import load_rules
from dyncheck.store import RunWriter, open_run


def make_series(n_series: int, n_steps: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    s = np.arange(n_steps, dtype=np.int64)
    loss = 2.3 * np.exp(-s / (n_steps / 5)) + 0.1 + 0.05 * rng.standard_normal(n_steps) ** 2
    loss[n_steps // 2: n_steps // 2 + 3] = 3.0  # a spike
    loss[int(n_steps * 0.9): int(n_steps * 0.9) + 10] = np.nan  # a NaN stretch
    out = {"loss/train": (s, loss), "grad_norm/total": (s, 1 + 0.3 * rng.random(n_steps))}
    sv = s[::1000]
    out["loss/val"] = (sv, 2.3 * np.exp(-sv / (n_steps / 5)) + 0.15)
    kinds = ["grad_norm/{}.weight", "update_ratio/{}.weight", "act/dead/{}", "act/saturated/{}"]
    i = 0
    while len(out) < n_series:
        kind = kinds[i % len(kinds)]
        layer = f"layer{i // len(kinds)}"
        base = {"grad_norm": 0.5, "update_ratio": 1e-3, "act/dead": 0.2, "act/saturated": 0.1}
        level = next(v for k, v in base.items() if kind.startswith(k))
        v = level * (1 + 0.2 * rng.standard_normal(n_steps))
        if kind.startswith("act/dead") and i // len(kinds) == 3:
            v = np.full(n_steps, 0.97)  # a dead layer
        out[kind.format(layer)] = (s, v)
        i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rules = load_rules("default")
    series = make_series(args.series, args.steps)
    n_values = sum(v.size for _, v in series.values())
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        result = evaluate(series, rules)
        times.append(time.perf_counter() - t)
    # per-check cost, to see where the time goes
    per_check: dict[str, float] = {}
    last = [time.perf_counter()]

    def on_check(check, outcome):
        now = time.perf_counter()
        per_check[check.id] = now - last[0]
        last[0] = now

    last[0] = time.perf_counter()
    evaluate(series, rules, on_check=on_check)
    with tempfile.TemporaryDirectory() as d:
        with RunWriter(Path(d) / "run.db") as w:
            for name, (s, v) in series.items():
                for k in range(0, s.size, 10_000):
                    w.write({name: (s[k:k + 10_000], v[k:k + 10_000])})
        store_times = []
        for _ in range(max(3, args.repeats // 2)):
            t = time.perf_counter()
            with open_run(d) as run:
                evaluate(run, rules)
            store_times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"series: {len(series)}, steps: {args.steps}, values: {n_values / 1e6:.1f}M, checks: {len(rules)}")
    print(f"findings: {sorted({f.check for f in result.findings})}")
    print(f"evaluate (in memory)   median {med:.3f} s  min {min(times):.3f}  max {max(times):.3f}  "
          f"(target <= 0.2 s: {'met' if med <= 0.2 else 'MISSED'})")
    print(f"read store + evaluate  median {statistics.median(store_times):.3f} s")
    print("slowest checks: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in
                                         sorted(per_check.items(), key=lambda kv: -kv[1])[:5]))


if __name__ == "__main__":
    main()
