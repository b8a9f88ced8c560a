"""Write and read throughput of the run store (``dyncheck.store``).

Writes 100 metrics x 100,000 steps (10M values) with ``RunWriter.write_block(names, steps, values)``:

- ``blocks of 100 steps``     one call per 100 steps (the monitor flushes every 100 steps by default);
- ``blocks of 10,000 steps``  a few big blocks;
- ``blocks of 1 step``        one call per step (``flush_every_n_steps=1``), on fewer steps (the rate is per value).

Timed: opening the writer, all writes, and ``close()`` (which checkpoints the WAL into the file); the close share
is shown separately. Read-back: ``open_run(path).series(name)`` for every metric of each file written (from the
OS page cache, since the file was just written). Configurations are interleaved (A, B, C, A, B, C, ...); the table
shows medians over the repeats, the values per second, and the file size per value (8 bytes step + 8 bytes value
is the payload).

Target: >= 1M values/s written.

Usage: ``python benchmarks/store_throughput.py [--quick] [--repeats N]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from dyncheck.store import RunWriter, open_run

TARGET_VALUES_PER_S = 1e6


def write_run(path: str, names: list[str], values: np.ndarray, block: int) -> tuple[float, float]:
    """Write ``values`` (steps x metrics) in blocks of ``block`` steps; returns (total seconds, close seconds)."""
    n_steps = values.shape[0]
    steps = np.arange(n_steps, dtype=np.int64)
    t0 = time.perf_counter()
    writer = RunWriter(path, mode="w")
    for i in range(0, n_steps, block):
        writer.write_block(names, steps[i:i + block], values[i:i + block])
    t1 = time.perf_counter()
    writer.close()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def read_run(path: str, names: list[str]) -> tuple[float, int]:
    """Read every metric's series; returns (seconds, values read)."""
    t0 = time.perf_counter()
    total = 0
    with open_run(path) as run:
        for name in names:
            total += len(run.series(name))
    return time.perf_counter() - t0, total


def fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    n_metrics = 100
    n_steps = 2_000 if args.quick else 100_000
    n_steps_small = 500 if args.quick else 5_000
    configs = {  # label: (block size in steps, steps written)
        "blocks of 100 steps": (100, n_steps),
        f"blocks of {min(10_000, n_steps):,} steps": (min(10_000, n_steps), n_steps),
        "blocks of 1 step": (1, n_steps_small),  # flush_every_n_steps=1
    }

    rng = np.random.default_rng(0)
    names = [f"grad_norm/layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}" for i in range(n_metrics)]
    values = rng.standard_normal((n_steps, n_metrics))
    values[::97, 3] = np.nan  # some non-finite values, as real runs have
    values[::89, 5] = np.inf

    tmp = tempfile.mkdtemp(prefix="dyncheck-store-bench-")
    print(f"{n_metrics} metrics; run store files in {tmp}; {repeats} repeats, configurations interleaved")
    w_times: dict[str, list[float]] = {c: [] for c in configs}
    c_times: dict[str, list[float]] = {c: [] for c in configs}
    r_times: dict[str, list[float]] = {c: [] for c in configs}
    sizes: dict[str, int] = {}
    try:
        # warm-up (untimed): imports, SQLite first use, page cache for the tmp directory
        write_run(os.path.join(tmp, "warm.db"), names, values[:200], 100)
        for r in range(repeats):
            for label, (block, steps) in configs.items():
                path = os.path.join(tmp, f"run{list(configs).index(label)}.db")
                total, close = write_run(path, names, values[:steps], block)
                w_times[label].append(total)
                c_times[label].append(close)
                sizes[label] = sum(os.path.getsize(path + sfx) for sfx in ("", "-wal") if os.path.exists(path + sfx))
            for label, (block, steps) in configs.items():  # read back what this repeat wrote
                path = os.path.join(tmp, f"run{list(configs).index(label)}.db")
                sec, n_read = read_run(path, names)
                r_times[label].append(sec)
                if n_read != steps * n_metrics:
                    raise RuntimeError(f"{label}: read {n_read} values, wrote {steps * n_metrics}")
            print(f"  repeat {r + 1}/{repeats}: write " + ", ".join(f"{w[-1]:.2f}s" for w in w_times.values())
                  + " | read " + ", ".join(f"{t[-1]:.2f}s" for t in r_times.values()), flush=True)
        # correctness of the round trip (once, untimed): every value back, NaN and Inf included
        label = next(iter(configs))
        with open_run(os.path.join(tmp, "run0.db")) as run:
            for j in (0, 3, 5, n_metrics - 1):
                s = run.series(names[j])
                if not (np.array_equal(s.steps, np.arange(n_steps)) and
                        np.array_equal(s.values, values[:, j], equal_nan=True)):
                    raise RuntimeError(f"round trip of {names[j]} ({label}) lost values")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    head = f"{'configuration':<24} {'values':>11} {'calls':>7} {'write s':>8} {'close s':>8} {'values/s':>9} " \
           f"{'read s':>7} {'read values/s':>13} {'ms/series':>9} {'file MB':>8} {'B/value':>8}  target"
    print("\n" + head)
    print("-" * len(head))
    for label, (block, steps) in configs.items():
        n_values = steps * n_metrics
        w, c, rd = (statistics.median(x[label]) for x in (w_times, c_times, r_times))
        rate = n_values / w
        ok = "ok" if rate >= TARGET_VALUES_PER_S else "MISSED"
        if block == 1:  # a worst case for reference (flush_every_n_steps=1), not what the target is about
            ok = "(reference: " + ("above" if rate >= TARGET_VALUES_PER_S else "below") + ")"
        print(f"{label:<24} {n_values:>11,} {-(-steps // block):>7,} {w:>8.3f} {c:>8.3f} {fmt_rate(rate):>9} "
              f"{rd:>7.3f} {fmt_rate(n_values / rd):>13} {1e3 * rd / n_metrics:>9.2f} {sizes[label] / 1e6:>8.1f} "
              f"{sizes[label] / n_values:>8.1f}  >= {fmt_rate(TARGET_VALUES_PER_S)}/s {ok}")
    print("write s = open + all write_block calls + close (median); close s = its close() share; read s = "
          "open_run + series() of every metric.")


if __name__ == "__main__":
    main()
