"""Wall-time and memory overhead of ``DynamicsMonitor`` on CPU training (``torch.set_num_threads(1)`` unless
``--threads``).

Measures the ratio ``time(trainer.fit with the monitor) / time(trainer.fit without it)`` for two models trained on
scikit-learn's digits (no download):

(a) a small CNN (conv 1->16->32, 8x8 inputs, batch 64, SGD with momentum), several epochs over digits;
(b) an MLP 64 -> 2048 -> 2048 -> 2048 -> 10 (about 8.5M parameters, the exact count is printed), batch 128.

Configurations, run interleaved with the order rotated each repeat (A B C D, B C D A, ...) so that machine drift
and position effects hit all of them equally:

- ``plain``                   no callback
- ``monitor, defaults``       ``DynamicsMonitor(dirpath=tmp)`` (per-layer statistics and activations every
  ``trainer.log_every_n_steps`` = 50 steps, sharpness within a 2% time budget)
- ``monitor, no checks/report``  ``rules=None, report=False`` (measuring only)
- ``monitor, sharpness off``  ``DynamicsMonitor(dirpath=tmp, sharpness_budget=0)``
- ``monitor, NTK + trajectory off``  ``ntk_budget=0, trajectory_every_n_steps=0`` (the defaults before issue 15)
- ``monitor, probes + activations off`` and ``monitor, scalars only`` (``--breakdown``): all probes off and
  no activation statistics; and that with no per-layer step after step 0 (loss, learning rates and the global
  gradient norm of every step): where the cost without probes goes
- ``monitor, all every step`` (``--all-every-step``) ``every_n_steps=1, activations_every_n_steps=1`` and
  sharpness on a fixed schedule of every 10 steps: one probe is up to 20 Hessian-vector products (~8 training
  steps for the CNN, ~75 for the 8.5M MLP on this CPU), so probing every step would only measure the probe.

Only ``trainer.fit`` is timed (the Trainer, the model and the data are built outside the timed region; a fresh
model with the same seed for every run). Every configuration is run once untimed first (warm-up). The table
shows medians over the repeats and the ratio of medians to ``plain``; ``end s`` is the end of the fit's checks,
findings and report (``Evaluation.final``), ``sharp s`` the sharpness probes' seconds (from the run store), both
of the last timed run. A last table times the end of the fit on a short (320-step) CNN run.

Memory: a thread samples the resident set size (``/proc/self/statm``) every millisecond during ``trainer.fit``;
``peak MB`` is the peak minus the RSS before the fit, ``extra MB`` that minus plain's (median over repeats). On
CPU the device is the host, so this is host and device memory together; on CUDA (``benchmarks/gpu_check.py``)
``torch.cuda.max_memory_allocated`` tells the device's apart. ``benchmarks/memory.py`` measures the same on a
~100M-parameter model, where the model-size-dependent parts show.

Targets: <= 1.03x at defaults on the CNN over 3,000+ steps (sharpness budget included), <= 1.01x on the 8.5M MLP,
end of fit <= 0.1 s on a short run.

On a shared host whose speed drifts within seconds, fits timed one after the other spread too widely to resolve a
few percent (here consecutive plain fits took 8.0 s and 10.7 s); ``benchmarks/lockstep.py`` runs the plain and the
monitored fit in lockstep in one process instead (turns of 4 steps), which cancels that drift.

Usage: ``python benchmarks/overhead.py [--quick] [--repeats N] [--model cnn|mlp10m|both] [--breakdown]
[--all-every-step]``
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
import warnings

os.environ.setdefault("PL_DISABLE_FORK", "1")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dyncheck import DynamicsMonitor, open_run  # noqa: E402
from dyncheck._evaluation import Evaluation  # noqa: E402

TARGETS = {"cnn": 1.03, "mlp-8.5M": 1.01}  # at defaults
TARGET_END_S = 0.1
SHARP_EVERY = 10  # sharpness period in the "all every step" configuration
_END = {"s": 0.0}  # seconds of the last Evaluation.final (checks, findings, report at the end of the fit)
_final = Evaluation.final


def _timed_final(self, *args, **kwargs):
    t = time.perf_counter()
    try:
        return _final(self, *args, **kwargs)
    finally:
        _END["s"] = time.perf_counter() - t


Evaluation.final = _timed_final
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _PeakRSS:
    """Samples the RSS every millisecond in a thread: ``peak`` - ``base`` is the growth while it ran."""

    def __enter__(self) -> "_PeakRSS":
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._th.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20

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
    "monitor, no checks/report": {"rules": None, "report": False},
    "monitor, sharpness off": {"sharpness_budget": 0},
    "monitor, NTK + trajectory off": {"ntk_budget": 0, "trajectory_every_n_steps": 0},
    "monitor, noise scale off": {"noise_budget": 0},
    "monitor, all probes off": {"sharpness_budget": 0, "noise_budget": 0, "ntk_budget": 0,
                                "trajectory_every_n_steps": 0, "rules": None, "report": False},
}
_PROBES_OFF = {"sharpness_budget": 0, "noise_budget": 0, "ntk_budget": 0, "trajectory_every_n_steps": 0,
               "rules": None, "report": False}
#: ``--breakdown``: with ``all probes off``, where the rest goes -- the activation statistics of the per-layer steps,
#: the other per-layer statistics (one per-layer step only, at step 0), and the per-step scalars
BREAKDOWN = {
    "monitor, probes + activations off": {**_PROBES_OFF, "activations_every_n_steps": 0},
    "monitor, scalars only": {**_PROBES_OFF, "activations_every_n_steps": 0, "every_n_steps": 10 ** 9},
}
ALL_EVERY_STEP = {f"monitor, all every step (sharp every {SHARP_EVERY})": {
    "every_n_steps": 1, "activations_every_n_steps": 1, "sharpness_every_n_steps": SHARP_EVERY}}


def loader(model: str) -> DataLoader:
    """The benchmark's data for ``model`` ("cnn": 8x8 digit images, batch 64; "mlp10m": flat, batch 128)."""
    x, y = digits(flat=model != "cnn")
    return DataLoader(TensorDataset(x, y), batch_size=64 if model == "cnn" else 128, shuffle=False)


def make_trainer(max_steps: int, callbacks: list, root: str, accelerator: str = "cpu") -> pl.Trainer:
    """The Trainer every timed fit uses: no logger, checkpoints, progress bar, summary or validation."""
    return pl.Trainer(
        max_steps=max_steps, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator=accelerator, devices=1, limit_val_batches=0, num_sanity_val_steps=0,
        default_root_dir=root, callbacks=callbacks,
    )


def _store_info(run) -> dict:
    meta = run.meta
    return {"probes": meta.get("sharpness_probes"), "sharp_s": meta.get("sharpness_time_s"),
            "metrics": len(run.metrics()), "end_s": _END["s"]}


def one_run(make_model, loader, max_steps: int, monitor_kw: dict | None, seed: int = 0,
            inspect=_store_info, accelerator: str = "cpu") -> tuple[float, dict]:
    """Time one ``trainer.fit``; returns (seconds, ``inspect(run)`` of the run store, {} without a monitor)."""
    tmp = tempfile.mkdtemp(prefix="dyncheck-overhead-")
    try:
        torch.manual_seed(seed)
        model = make_model()
        callbacks = [] if monitor_kw is None else [DynamicsMonitor(dirpath=tmp, **monitor_kw)]
        trainer = make_trainer(max_steps, callbacks, tmp, accelerator)
        gc.collect()
        _END["s"] = 0.0
        with _PeakRSS() as mem:
            t = time.perf_counter()
            trainer.fit(model, train_dataloaders=loader)
            elapsed = time.perf_counter() - t
        assert trainer.global_step == max_steps, (trainer.global_step, max_steps)
        info = {}
        if monitor_kw is not None:
            with open_run(tmp) as run:
                info = inspect(run)
        info["peak_mb"] = mem.growth_mb
        return elapsed, info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench(label: str, make_model, loader, max_steps: int, repeats: int, configs: dict = CONFIGS) -> list[dict]:
    torch.manual_seed(0)
    n_params = sum(p.numel() for p in make_model().parameters())
    print(f"\n== {label}: {n_params:,} parameters, {max_steps} steps per run, batch {loader.batch_size}, "
          f"{len(loader)} steps per epoch, {repeats} repeats (interleaved)", flush=True)
    for name, kw in configs.items():  # warm-up, untimed and short (reaches a sharpness probe at step 0)
        one_run(make_model, loader, min(max_steps, 3), kw)
    times: dict[str, list[float]] = {name: [] for name in configs}
    peaks: dict[str, list[float]] = {name: [] for name in configs}
    infos: dict[str, dict] = {}
    names = list(configs)
    for r in range(repeats):
        # rotate the order each repeat so that no configuration always follows the same one
        for name in names[r % len(names):] + names[: r % len(names)]:
            kw = configs[name]
            sec, info = one_run(make_model, loader, max_steps, kw)
            times[name].append(sec)
            peaks[name].append(info["peak_mb"])
            infos[name] = info
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names), flush=True)
    base = statistics.median(times["plain"])
    base_mb = statistics.median(peaks["plain"])
    rows = []
    for name in configs:
        med = statistics.median(times[name])
        # ratio of medians, and the median of the per-repeat ratios (both shown: they should agree)
        per_rep = statistics.median(t / b for t, b in zip(times[name], times["plain"]))
        peak = statistics.median(peaks[name])
        rows.append({"model": label, "config": name, "median_s": med, "ms_per_step": 1e3 * med / max_steps,
                     "ratio": med / base, "ratio_paired": per_rep, "info": infos[name], "peak_mb": peak,
                     "extra_mb": peak - base_mb})
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'model':<10} {'configuration':<34} {'median s':>9} {'ms/step':>8} {'ratio':>7} {'paired':>7} " \
           f"{'probes':>6} {'sharp s':>8} {'end s':>6} {'peak MB':>8} {'extra MB':>8}  target"
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        info = r["info"]
        target = ""
        if r["config"] == "monitor, defaults" and r["model"] in TARGETS:
            goal = TARGETS[r["model"]]
            target = f"<= {goal:.2f}x {'ok' if r['ratio'] <= goal else 'MISSED'}"
        mon = "probes" in info
        probes = str(info.get("probes")) if mon else ""
        sharp = f"{info.get('sharp_s', 0):.3f}" if mon else ""
        end = f"{info.get('end_s', 0):.3f}" if mon else ""
        extra = f"{r['extra_mb']:+.1f}" if mon else ""
        print(f"{r['model']:<10} {r['config']:<34} {r['median_s']:>9.3f} {r['ms_per_step']:>8.2f} "
              f"{r['ratio']:>6.3f}x {r['ratio_paired']:>6.3f}x {probes:>6} {sharp:>8} {end:>6} "
              f"{r['peak_mb']:>8.1f} {extra:>8}  {target}")
    print("ratio = median(config) / median(plain); paired = median over repeats of config/plain in the same repeat;"
          "\nprobes / sharp s = sharpness probes and their seconds, end s = checks + findings + report at the end of "
          "the fit,\nin the last timed run; peak MB = RSS growth during the fit (median), extra MB = that minus "
          "plain's.")


def bench_end(loader, repeats: int) -> None:
    """The end of the fit (checks, findings.json, report) after a short run of the CNN, at defaults."""
    ends = []
    for _ in range(repeats):
        _, info = one_run(make_cnn, loader, 320, {})
        ends.append(info["end_s"])
    med = statistics.median(ends)
    print(f"\nend of fit after a 320-step CNN run at defaults (checks, findings.json, report.html): median {med:.3f} s "
          f"over {repeats} runs (min {min(ends):.3f}, max {max(ends):.3f})  target <= {TARGET_END_S} s "
          f"{'ok' if med <= TARGET_END_S else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--model", choices=("cnn", "mlp10m", "both"), default="both")
    ap.add_argument("--all-every-step", action="store_true", help="also time everything measured every step")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the monitor without activation statistics and with the per-step scalars only")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    ap.add_argument("--cnn-steps", type=int, default=None)
    ap.add_argument("--mlp-steps", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    cnn_steps, mlp_steps = (30, 4) if args.quick else (3200, 60)
    cnn_steps = args.cnn_steps or cnn_steps
    mlp_steps = args.mlp_steps or mlp_steps
    configs = {**CONFIGS, **(BREAKDOWN if args.breakdown else {}),
               **(ALL_EVERY_STEP if args.all_every_step else {})}

    print(f"load average at start: {os.getloadavg()[0]:.2f} (another process on these cores skews the timings)")
    print(f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, torch.get_num_threads() = "
          f"{torch.get_num_threads()}, os.cpu_count() = {os.cpu_count()}")
    rows = []
    if args.model in ("cnn", "both"):
        rows += bench("cnn", make_cnn, loader("cnn"), cnn_steps, repeats, configs)
    if args.model in ("mlp10m", "both"):
        rows += bench("mlp-8.5M", make_mlp10m, loader("mlp10m"), mlp_steps, repeats, configs)
    print_table(rows)
    if args.model in ("cnn", "both"):
        bench_end(loader("cnn"), 2 if args.quick else 3)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
