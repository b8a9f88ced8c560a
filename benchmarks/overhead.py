"""Wall-time overhead of ``DynamicsMonitor`` on CPU training.

Measures the ratio ``time(trainer.fit with the monitor) / time(trainer.fit without it)`` for two models trained on
scikit-learn's digits (no download):

(a) a small CNN (conv 1->16->32, 8x8 inputs, batch 64, SGD with momentum), several epochs over digits;
(b) an MLP 64 -> 2048 -> 2048 -> 2048 -> 10 (about 8.5M parameters, the exact count is printed), batch 128.

Configurations, run interleaved with the order rotated each repeat (A B C D, B C D A, ...) so that machine drift
and position effects hit all of them equally:

- ``plain``                   no callback
- ``monitor, defaults``       ``DynamicsMonitor(dirpath=tmp)`` (per-layer statistics and activations every
  ``trainer.log_every_n_steps`` = 50 steps, sharpness within a 2% time budget)
- ``monitor, sharpness off``  ``DynamicsMonitor(dirpath=tmp, sharpness_budget=0)``
- ``monitor, all every step`` ``every_n_steps=1, activations_every_n_steps=1`` and sharpness on a fixed schedule of
  every 10 steps: one probe is up to 20 Hessian-vector products (~8 training steps for the CNN, ~75 for the
  8.5M MLP on this CPU), so probing every step would only measure the probe.

Only ``trainer.fit`` is timed (the Trainer, the model and the data are built outside the timed region; a fresh
model with the same seed for every run). Every configuration is run once untimed first (warm-up). The table
shows medians over the repeats and the ratio of medians to ``plain``.

Target: <= 1.03x at defaults.

Usage: ``python benchmarks/overhead.py [--quick] [--repeats N] [--model cnn|mlp10m|both]``
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("PL_DISABLE_FORK", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dyncheck import DynamicsMonitor, open_run  # noqa: E402

TARGET_DEFAULT_RATIO = 1.03
SHARP_EVERY = 10  # sharpness period in the "all every step" configuration

for _name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available but not used.*")
warnings.filterwarnings("ignore", ".*The number of training batches.*")


# ----------------------------------------------------------------------------------------------------------------
# models and data
# ----------------------------------------------------------------------------------------------------------------
def digits(flat: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    x = x if flat else x.reshape(-1, 1, 8, 8)
    return x, torch.tensor(d.target, dtype=torch.long)


class _Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float, momentum: float) -> None:
        super().__init__()
        self.net = net
        self.lr, self.momentum = lr, momentum

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def make_cnn() -> pl.LightningModule:
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )
    return _Classifier(net, lr=0.05, momentum=0.9)


def make_mlp10m() -> pl.LightningModule:
    net = nn.Sequential(
        nn.Linear(64, 2048), nn.ReLU(),
        nn.Linear(2048, 2048), nn.ReLU(),
        nn.Linear(2048, 2048), nn.ReLU(),
        nn.Linear(2048, 10),
    )
    return _Classifier(net, lr=0.01, momentum=0.9)


# ----------------------------------------------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------------------------------------------
CONFIGS = {
    "plain": None,
    "monitor, defaults": {},
    "monitor, sharpness off": {"sharpness_budget": 0},
    f"monitor, all every step (sharp every {SHARP_EVERY})": {
        "every_n_steps": 1, "activations_every_n_steps": 1, "sharpness_every_n_steps": SHARP_EVERY},
}


def _store_info(run) -> dict:
    meta = run.meta
    return {"probes": meta.get("sharpness_probes"), "sharp_s": meta.get("sharpness_time_s"),
            "metrics": len(run.metrics())}


def one_run(make_model, loader, max_steps: int, monitor_kw: dict | None, seed: int = 0,
            inspect=_store_info) -> tuple[float, dict]:
    """Time one ``trainer.fit``; returns (seconds, ``inspect(run)`` of the run store, {} without a monitor)."""
    tmp = tempfile.mkdtemp(prefix="dyncheck-overhead-")
    try:
        torch.manual_seed(seed)
        model = make_model()
        callbacks = [] if monitor_kw is None else [DynamicsMonitor(dirpath=tmp, **monitor_kw)]
        trainer = pl.Trainer(
            max_steps=max_steps, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=0, num_sanity_val_steps=0,
            default_root_dir=tmp, callbacks=callbacks,
        )
        gc.collect()
        t = time.perf_counter()
        trainer.fit(model, train_dataloaders=loader)
        elapsed = time.perf_counter() - t
        assert trainer.global_step == max_steps, (trainer.global_step, max_steps)
        info = {}
        if monitor_kw is not None:
            with open_run(tmp) as run:
                info = inspect(run)
        return elapsed, info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench(label: str, make_model, loader, max_steps: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    n_params = sum(p.numel() for p in make_model().parameters())
    print(f"\n== {label}: {n_params:,} parameters, {max_steps} steps per run, batch {loader.batch_size}, "
          f"{len(loader)} steps per epoch, {repeats} repeats (interleaved)", flush=True)
    for name, kw in CONFIGS.items():  # warm-up, untimed and short (reaches a sharpness probe at step 0)
        one_run(make_model, loader, min(max_steps, 3), kw)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    infos: dict[str, dict] = {}
    names = list(CONFIGS)
    for r in range(repeats):
        # rotate the order each repeat so that no configuration always follows the same one
        for name in names[r % len(names):] + names[: r % len(names)]:
            kw = CONFIGS[name]
            sec, info = one_run(make_model, loader, max_steps, kw)
            times[name].append(sec)
            infos[name] = info
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names), flush=True)
    base = statistics.median(times["plain"])
    rows = []
    for name in CONFIGS:
        med = statistics.median(times[name])
        # ratio of medians, and the median of the per-repeat ratios (both shown: they should agree)
        per_rep = statistics.median(t / b for t, b in zip(times[name], times["plain"]))
        rows.append({"model": label, "config": name, "median_s": med, "ms_per_step": 1e3 * med / max_steps,
                     "ratio": med / base, "ratio_paired": per_rep, "info": infos[name]})
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'model':<12} {'configuration':<42} {'median s':>9} {'ms/step':>8} {'ratio':>7} {'paired':>7} " \
           f"{'probes':>6} {'sharp s':>8}  target"
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        info = r["info"]
        target = ""
        if r["config"] == "monitor, defaults":
            ok = r["ratio"] <= TARGET_DEFAULT_RATIO
            target = f"<= {TARGET_DEFAULT_RATIO:.2f}x {'ok' if ok else 'MISSED'}"
        probes = "" if not info else str(info.get("probes"))
        sharp = "" if not info else f"{info.get('sharp_s', 0):.3f}"
        print(f"{r['model']:<12} {r['config']:<42} {r['median_s']:>9.3f} {r['ms_per_step']:>8.2f} "
              f"{r['ratio']:>6.3f}x {r['ratio_paired']:>6.3f}x {probes:>6} {sharp:>8}  {target}")
    print("ratio = median(config) / median(plain); paired = median over repeats of config/plain in the same repeat;"
          "\nprobes / sharp s = sharpness probes and their total seconds in the last timed run (from the run store).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--model", choices=("cnn", "mlp10m", "both"), default="both")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    cnn_steps, mlp_steps = (30, 4) if args.quick else (1200, 30)

    print(f"load average at start: {os.getloadavg()[0]:.2f} (another process on these cores skews the timings)")
    print(f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, torch.get_num_threads() = "
          f"{torch.get_num_threads()}, os.cpu_count() = {os.cpu_count()}")
    rows = []
    if args.model in ("cnn", "both"):
        x, y = digits(flat=False)
        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
        rows += bench("cnn", make_cnn, loader, cnn_steps, repeats)
    if args.model in ("mlp10m", "both"):
        x, y = digits(flat=True)
        loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=False)
        rows += bench("mlp-8.5M", make_mlp10m, loader, mlp_steps, repeats)
    print_table(rows)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
