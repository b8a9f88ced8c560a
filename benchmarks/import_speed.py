"""Import throughput (``dyncheck import``) per format, on logs of 100,000 steps.

Each log is written once by the format's writer where one exists here (TensorBoard's ``SummaryWriter`` for event
files; ``csv``/``json`` in the exact layouts of Lightning's ``CSVLogger``, HF's ``trainer_state.json`` and W&B's
history exports), with the columns a real run has: training loss, learning rate and gradient norm every step,
epoch, and a validation loss every 1,000 steps (TensorBoard: plus one 10,000-value histogram every 1,000 steps).
Timed: ``import_log(source, run_dir)`` from the file to a closed ``run.db`` -- reading, mapping, sorting and
writing. Medians over the repeats (formats interleaved); rows/s counts log rows (steps) per second, values/s the
values imported.

Usage: ``python benchmarks/import_speed.py [--steps N] [--repeats N]``
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from dyncheck.importers import import_log


def _loss(i: int) -> float:
    return 2.0 * math.exp(-i / 20_000) + 0.05 * math.sin(i)


def write_logs(root: Path, n: int) -> dict[str, Path]:
    out = {}
    p = root / "metrics.csv"
    with open(p, "w", newline="") as f:  # Lightning CSVLogger: sorted columns, sparse cells
        w = csv.writer(f)
        w.writerow(["epoch", "grad_2.0_norm_total", "lr-AdamW", "step", "train_loss", "val_loss"])
        for i in range(n):
            w.writerow([i // 1000, 1.0 + 0.1 * math.cos(i), 1e-3, i, _loss(i), ""])
            if i % 1000 == 999:
                w.writerow([i // 1000, "", "", i, "", _loss(i) + 0.1])
    out["lightning-csv"] = p
    p = root / "trainer_state.json"
    hist = []
    for i in range(1, n + 1):
        hist.append({"epoch": i / 1000, "grad_norm": 1.0 + 0.1 * math.cos(i), "learning_rate": 1e-3, "loss": _loss(i),
                     "step": i})
        if i % 1000 == 0:
            hist.append({"epoch": i / 1000, "eval_loss": _loss(i) + 0.1, "eval_runtime": 1.0, "step": i})
    hist.append({"epoch": n / 1000, "step": n, "total_flos": 1.0, "train_loss": 1.0, "train_runtime": 100.0})
    p.write_text(json.dumps({"global_step": n, "max_steps": n, "log_history": hist}, indent=2))
    out["hf-trainer-state"] = p
    p = root / "history.jsonl"
    with open(p, "w") as f:
        for i in range(n):
            row = {"_step": i, "_runtime": i * 0.1, "_timestamp": 1.7e9 + i * 0.1, "train/loss": _loss(i),
                   "train/learning_rate": 1e-3, "train/grad_norm": 1.0 + 0.1 * math.cos(i), "train/epoch": i / 1000,
                   "train/global_step": i}
            if i % 1000 == 999:
                row["eval/loss"] = _loss(i) + 0.1
            f.write(json.dumps(row) + "\n")
    out["wandb-jsonl"] = p
    p = root / "history.csv"
    keys = ["_step", "_runtime", "_timestamp", "eval/loss", "train/epoch", "train/global_step", "train/grad_norm",
            "train/learning_rate", "train/loss"]
    with open(p, "w", newline="") as f:  # run.history().to_csv(): the index, then the keys
        w = csv.writer(f)
        w.writerow(["", *keys])
        for i in range(n):
            w.writerow([i, i, i * 0.1, 1.7e9 + i * 0.1, _loss(i) + 0.1 if i % 1000 == 999 else "", i / 1000, i,
                        1.0 + 0.1 * math.cos(i), 1e-3, _loss(i)])
    out["wandb-csv"] = p
    try:
        import torch
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return out
    d = root / "tb"
    w = SummaryWriter(str(d))
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        w.add_scalar("train/loss", _loss(i), i)
        w.add_scalar("train/learning_rate", 1e-3, i)
        w.add_scalar("train/grad_norm", 1.0 + 0.1 * math.cos(i), i)
        w.add_scalar("train/epoch", i / 1000, i)
        if i % 1000 == 999:
            w.add_scalar("eval/loss", _loss(i) + 0.1, i)
            w.add_histogram("encoder.weight", torch.randn(100, 100, generator=g), i)
    w.close()
    out["tensorboard"] = d
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dyncheck-import-bench-"))
    try:
        t0 = time.perf_counter()
        logs = write_logs(root, args.steps)
        print(f"wrote {len(logs)} logs of {args.steps:,} steps in {time.perf_counter() - t0:.1f} s\n")
        times: dict[str, list[float]] = {k: [] for k in logs}
        points: dict[str, int] = {}
        for r in range(args.repeats):
            for fmt, src in logs.items():
                run = root / f"run-{fmt}-{r}"
                t = time.perf_counter()
                summary = import_log(src, run)
                times[fmt].append(time.perf_counter() - t)
                points[fmt] = summary.points
                shutil.rmtree(run)
        size = {k: (sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size)
                for k, p in logs.items()}
        print(f"{'format':<18} {'file MB':>8} {'seconds':>8} {'rows/s':>10} {'values/s':>11} {'MB/s':>6}")
        for fmt in logs:
            s = statistics.median(times[fmt])
            print(f"{fmt:<18} {size[fmt] / 1e6:8.1f} {s:8.2f} {args.steps / s:10,.0f} {points[fmt] / s:11,.0f} "
                  f"{size[fmt] / 1e6 / s:6.1f}")
        print(f"\nmedian of {args.repeats} imports each; rows = steps of the log")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
