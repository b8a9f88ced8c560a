"""Fleet scale: ``dyncheck export --parquet`` over many runs, and a DuckDB query over the dataset it writes.

Writes ``--runs`` synthetic runs (default 1,000) through the store API (``RunWriter``): 20,000 training steps
each, recorded every 20 steps (1,000 points per series) -- training loss, validation loss (every 500 steps),
global gradient norm, learning rate, and 4 per-layer gradient norms and update ratios: 11 series, ~10,000 points
per run. Meta as the monitor writes it: status, optimizer (SGD / Adam / AdamW, with its lr), model class and size,
hyperparameters. One run in five has a loss spike of 300x (the default ``loss-spike`` check fires on it), at a step
drawn uniformly over the run; one in fifty is left ``running`` (the export records it, its verdict ``unjudged``).

Measured (single-threaded, ``torch.set_num_threads(1)``; repeats interleaved, median shown):

- export with the default checks (``ParquetExport.add`` per run: read, evaluate, buffer; Parquet written at the
  end): runs/s and series rows/s;
- export without checks (``--no-checks``): the reading and writing alone;
- the README's query ("every run in which loss-spike fired after step 10k, by optimizer") and a series query (the
  final training loss per optimizer, which reads only ``family=loss``), cold (a fresh DuckDB connection each time).

The query's answer is checked against what was injected (the runs whose spike lies after step 10,000).

Usage: ``python benchmarks/fleet_export.py [--runs N] [--repeats R] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyncheck.store import RunWriter  # noqa: E402

STEPS, EVERY = 20_000, 20
OPTIMIZERS = ("SGD", "Adam", "AdamW")
LAYERS = ("net.0.weight", "net.2.weight", "net.4.weight", "head.weight")

SPIKE_QUERY = """
SELECT r.optimizer, count(DISTINCT r.run_id) AS runs
FROM 'fleet/runs/*.parquet' AS r JOIN 'fleet/findings/*.parquet' AS f USING (run_id)
WHERE f.check_id = 'loss-spike' AND f.last_step > 10000
GROUP BY r.optimizer ORDER BY r.optimizer
"""
FINAL_LOSS_QUERY = """
SELECT r.optimizer, median(s.value) AS final_loss, count(DISTINCT s.run_id) AS runs
FROM read_parquet('fleet/series/*/*.parquet', hive_partitioning = true) AS s JOIN 'fleet/runs/*.parquet' AS r
  USING (run_id)
WHERE s.family = 'loss' AND s.metric = 'loss/train' AND s.step >= r.last_step - 1000
GROUP BY r.optimizer ORDER BY r.optimizer
"""


def write_fleet(root: Path, n: int, seed: int = 0) -> dict[str, set[str]]:
    """``n`` synthetic runs under ``root``; returns, per optimizer, the run ids whose spike lies after step
    10,000 (what the README's query must answer)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(0, STEPS, EVERY, dtype=np.int64)
    val_steps = np.arange(499, STEPS, 500, dtype=np.int64)
    late: dict[str, set[str]] = {o: set() for o in OPTIMIZERS}
    for i in range(n):
        opt = OPTIMIZERS[i % 3]
        lr = float(10 ** rng.uniform(-4, -1))
        d = root / f"sweep-{i // 100}" / f"run-{i:05d}"
        d.mkdir(parents=True)
        tau = rng.uniform(2_000, 8_000)
        loss = 2.3 * np.exp(-steps / tau) + 0.05 + 0.02 * rng.standard_normal(steps.size) ** 2
        if i % 5 == 0:
            k = int(rng.integers(steps.size // 10, steps.size - 10))
            loss[k] *= 300.0
            if steps[k] > 10_000:
                late[opt].add(str(d))
        status = "running" if i % 50 == 1 else "finished"
        series = {"loss/train": (steps, loss),
                  "loss/val": (val_steps, 2.3 * np.exp(-val_steps / tau) + 0.08),
                  "grad_norm/total": (steps, 1.0 + 0.1 * rng.standard_normal(steps.size) ** 2),
                  f"lr/{opt}/pg0": (steps, np.full(steps.size, lr))}
        for j, layer in enumerate(LAYERS):
            g = (0.3 + 0.1 * j) * (1.0 + 0.1 * rng.standard_normal(steps.size) ** 2)
            series[f"grad_norm/{layer}"] = (steps, g)
            series[f"update_ratio/{layer}"] = (steps, lr * g)
        with RunWriter(d / "run.db", sync_every_s=3600) as w:  # no fsync per write: the benchmark is the export
            w.write(series)
            w.set_meta(status=status, host="bench", started=1.7e9 + i, ended=1.7e9 + i + 600.0, duration_s=600.0,
                       model={"class": "MLP" if i % 2 else "ResNet", "n_parameters": 10_000 * (1 + i % 7),
                              "n_trainable": 10_000 * (1 + i % 7)},
                       optimizers=[{"name": opt, "class": opt, "param_groups": [
                           {"lr": lr, "weight_decay": 0.01 if opt == "AdamW" else 0.0,
                            **({"momentum": 0.9} if opt == "SGD" else {"betas": [0.9, 0.999]})}]}],
                       hyperparameters={"batch_size": 32 * (1 + i % 4), "width": 64, "seed": i},
                       trainer={"max_steps": STEPS, "precision": "32-true", "world_size": 1})
    return late


def export(runs: list[Path], out: Path, checks: bool) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, series rows) of one export."""
    from dyncheck.export import ParquetExport
    from dyncheck.store import open_run

    t0, c0 = time.perf_counter(), time.process_time()
    with ParquetExport(out, rules="default" if checks else None) as exp:
        for r in runs:
            with open_run(r) as run:
                exp.add(str(r), run)
    return time.perf_counter() - t0, time.process_time() - c0, exp.summary.rows


def query(sql: str, cwd: Path) -> tuple[float, list[tuple]]:
    import duckdb

    here = os.getcwd()
    os.chdir(cwd)
    try:
        t0 = time.perf_counter()
        con = duckdb.connect()
        con.execute("SET threads TO 1")
        rows = con.sql(sql).fetchall()
        dt = time.perf_counter() - t0
        con.close()
    finally:
        os.chdir(here)
    return dt, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep", metavar="DIR", help="write the runs and the dataset here and keep them")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from dyncheck.runs import walk_runs

    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="dyncheck-fleet-"))
    try:
        t0 = time.perf_counter()
        late = write_fleet(root / "runs", a.runs)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs = walk_runs(root / "runs")
        t_walk = time.perf_counter() - t0
        print(f"{len(runs)} synthetic runs written in {t_write:.1f} s through RunWriter; found by walking the "
              f"tree in {t_walk * 1e3:.0f} ms")
        times: dict[str, list[float]] = {"no checks": [], "checks": []}  # checks last: the queries need findings
        cpu: dict[str, list[float]] = {k: [] for k in times}
        rows = 0
        for _ in range(a.repeats):
            for label in times:  # interleaved
                dt, ct, rows = export(runs, root / "fleet", checks=label == "checks")
                times[label].append(dt)
                cpu[label].append(ct)
        size = sum(f.stat().st_size for f in (root / "fleet").rglob("*.parquet"))
        db = sum(f.stat().st_size for f in (root / "runs").rglob("run.db"))
        print(f"series rows: {rows:,}; dataset {size / 1e6:.1f} MB of Parquet (zstd) for {db / 1e6:.1f} MB of "
              f"run stores")
        print(f"{'export':<22} {'wall s':>7} {'runs/s':>7} {'rows/s':>11}   {'CPU s':>6} {'runs/CPU s':>10} "
              f"{'rows/CPU s':>11}")
        for label, ts in times.items():
            m, c = statistics.median(ts), statistics.median(cpu[label])
            print(f"{'--parquet, ' + label:<22} {m:>7.2f} {len(runs) / m:>7.0f} {rows / m:>11,.0f}   {c:>6.2f} "
                  f"{len(runs) / c:>10.0f} {rows / c:>11,.0f}")
        for name, sql in (("loss-spike after 10k, by optimizer", SPIKE_QUERY),
                          ("final loss by optimizer (series)", FINAL_LOSS_QUERY)):
            qt = []
            for _ in range(a.repeats):
                dt, got = query(sql, root)
                qt.append(dt)
            print(f"query {name}: {statistics.median(qt) * 1e3:.0f} ms (median of {a.repeats}, cold connection, "
                  f"1 thread): {got}")
            if sql is SPIKE_QUERY:
                expected = [(o, len(late[o])) for o in sorted(late) if late[o]]
                print(f"  injected spikes after step 10,000: {expected} -> "
                      f"{'matches' if sorted(got) == expected else 'DIFFERS'}")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
