"""Accuracy and cost of the empirical NTK (dyncheck.measure.ntk) and of the weight-trajectory sketch
(dyncheck.measure.trajectory).

1. NTK accuracy: ``empirical_ntk`` (float32, batched backward; and one backward per example; and in parameter
   blocks of 1M Jacobian entries) against ``torch.func.jacrev`` (float64 Gram of the float32 Jacobian) on m = 32
   digits, and against jacrev of the model in float64: relative Frobenius error of K and of its top eigenvalue.
   Target 1e-5.
   NTK cost: seconds per probe (median of interleaved repeats) and the same in training steps (one SGD step of a
   batch of 32), against jacrev's.
2. PCA: the explained-variance ratios of the first 3 components and the principal angles between the PCA paths
   of the sketch (D coordinates) and of the full snapshots, on trajectories of real training (digits, SGD momentum).
   Target: ratios within 5 points, small angles.
3. Sketch overhead: seconds of one ``Sketch.take`` (D = 1024) against one training step, interleaved repeats,
   median ratio, for a small and a larger MLP.

Usage: ``python benchmarks/ntk_trajectory.py [--quick]`` (single-threaded).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev

from dyncheck.measure.ntk import empirical_ntk, kernel_stats
from dyncheck.measure.trajectory import Sketch, pca, principal_angles


def digits(n: int = 512, image: bool = False):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32) / 16
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return x, torch.tensor(d.target[:n])


def models(quick: bool):
    torch.manual_seed(0)
    out = [("mlp 64-64-32-10 tanh", nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(),
                                                   nn.Linear(32, 10)), False),
           ("cnn conv8-bn-conv16-fc (eval)", nn.Sequential(
               nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
               nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 10)), True)]
    if not quick:
        out.append(("mlp 64-512-512-10 relu", nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512),
                                                             nn.ReLU(), nn.Linear(512, 10)), False))
    return out


def jacrev_kernel(net, x):
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p):
        o = functional_call(net, p, (x,))
        return o.reshape(o.shape[0], -1).sum(1)

    jac = jacrev(f)(params)
    j = torch.cat([jac[k].reshape(x.shape[0], -1) for k in params], dim=1).double()
    return j @ j.T


def median_time(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():  # interleaved
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def ntk_table(quick: bool, m: int = 32) -> None:
    print(f"\n1. empirical NTK vs torch.func.jacrev, m = {m} probe examples (target: relative error <= 1e-5)")
    print(f"{'model':32s} {'params':>8s} {'rel err K':>10s} {'looped':>10s} {'blocks':>10s} {'vs f64':>10s} "
          f"{'top eig':>10s} {'s/probe':>9s} {'steps':>7s} {'jacrev s':>9s} {'jacrev/dc':>9s}")
    for name, net, image in models(quick):
        x, y = digits(image=image)
        net.eval()
        xp = x[:m]
        ref = jacrev_kernel(net, xp)
        ref64 = jacrev_kernel(copy.deepcopy(net).double(), xp.double())
        k = empirical_ntk(net, xp).kernel
        kl = empirical_ntk(net, xp, batched=False).kernel
        kb = empirical_ntk(net, xp, block_values=1_000_000).kernel
        rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
        top = abs(kernel_stats(k)[0] / kernel_stats(ref64)[0] - 1)
        f64 = float((k - ref64).norm() / ref64.norm())
        opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the timing does not change the model

        def step():
            net.train()
            loss = nn.functional.cross_entropy(net(x[:32]), y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            net.eval()

        t = median_time({"ntk": lambda: empirical_ntk(net, xp), "step": step,
                         "jacrev": lambda: jacrev_kernel(net, xp)}, 3 if quick else 9)
        n = sum(p.numel() for p in net.parameters())
        print(f"{name:32s} {n:8d} {rel(k):10.1e} {rel(kl):10.1e} {rel(kb):10.1e} {f64:10.1e} {top:10.1e} "
              f"{t['ntk']:9.4f} {t['ntk'] / t['step']:7.1f} {t['jacrev']:9.4f} {t['jacrev'] / t['ntk']:9.2f}")
    print("(rel err: ||K - K_jacrev||_F / ||K_jacrev||_F of the batched backward, of one backward per example "
          "('looped') and of 1M-entry parameter blocks; top eig: relative error of the top eigenvalue; steps: one "
          "probe in training steps of batch 32; vs f64: the float32 kernel against jacrev of the model in float64, "
          "top eig against that too)")


def trajectory(seed: int, net: nn.Module, image: bool, steps: int, every: int, dims):
    x, y = digits(image=image)
    torch.manual_seed(seed)
    for p in net.parameters():  # a fresh init per seed
        if p.dim() > 1:
            nn.init.kaiming_uniform_(p, a=5 ** 0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    params = list(net.parameters())
    sketches = {d: Sketch([p.numel() for p in params], d, seed=seed) for d in dims}
    full, sk = [], {d: [] for d in dims}
    for step in range(steps):
        if step % every == 0:
            full.append(torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy())
            for d, s in sketches.items():
                sk[d].append(s.take(params).numpy())
        i = (step * 32) % len(y)
        loss = nn.functional.cross_entropy(net(x[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return np.array(full), {d: np.array(v) for d, v in sk.items()}


def pca_table(quick: bool) -> None:
    print("\n2. trajectory PCA: sketch of D coordinates vs exact PCA of full snapshots (target: ratios within 5 "
          "points, small principal angles)")
    print(f"{'model':24s} {'params':>7s} {'D':>5s} {'seed':>4s} {'exact ratios (PC1-3)':>24s} "
          f"{'sketch ratios':>22s} {'max |diff|':>10s} {'angles (deg)':>20s}")
    cases = [("mlp 64-64-32-10", lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                                        nn.Linear(32, 10)), False)]
    if not quick:
        cases.append(("cnn 8-16 (20k)", lambda: nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 16, 32), nn.ReLU(), nn.Linear(32, 10)), True))
    dims = (256, 1024) if quick else (256, 1024, 4096)
    for name, make, image in cases:
        for seed in range(1 if quick else 3):
            full, sk = trajectory(seed, make(), image, 150 if quick else 450, 3, dims)
            exact = pca(full)
            for d in dims:
                ap = pca(sk[d])
                diff = np.abs(exact.ratios[:3] - ap.ratios[:3]).max()
                ang = np.degrees(principal_angles(exact.path, ap.path))
                fmt = lambda r: " ".join(f"{v:.3f}" for v in r[:3])  # noqa: E731
                print(f"{name:24s} {full.shape[1]:7d} {d:5d} {seed:4d} {fmt(exact.ratios):>24s} "
                      f"{fmt(ap.ratios):>22s} {diff:10.3f} {' '.join(f'{a:5.1f}' for a in ang):>20s}")


def overhead_table(quick: bool) -> None:
    print("\n3. sketch overhead per step: one Sketch.take (D = 1024) vs one training step (batch 32), median of "
          "interleaved repeats")
    print(f"{'model':26s} {'params':>9s} {'step s':>10s} {'take s':>10s} {'take/step':>10s}")
    cases = [("mlp 64-64-32-10", [64, 64, 32, 10]), ("mlp 64-1024-1024-10", [64, 1024, 1024, 10])]
    if not quick:
        cases.append(("mlp 64-2048x3-10", [64, 2048, 2048, 2048, 10]))
    x, y = digits()
    for name, sizes in cases:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        net = nn.Sequential(*layers[:-1])
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        params = list(net.parameters())
        sk = Sketch([p.numel() for p in params], 1024)

        def step():
            loss = nn.functional.cross_entropy(net(x[:32]), y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()

        t = median_time({"step": step, "take": lambda: sk.take(params)}, 20 if quick else 200)
        n = sum(p.numel() for p in params)
        print(f"{name:26s} {n:9d} {t['step']:10.2e} {t['take']:10.2e} {t['take'] / t['step']:10.4f}")


def store_table(quick: bool) -> None:
    import tempfile

    from dyncheck.monitor import Monitor, MonitorConfig

    print("\n4. the sketch in the run store: seconds per flush of D series (monitor.flush of 100 steps with a "
          "snapshot every 16 steps, the default for a 3200-step run; the snapshots are written every 8th flush), mean "
          "over interleaved repeats, against the same flush without the sketch, and the difference per training step "
          "at the default flush_every_n_steps=100")
    print(f"{'D':>6s} {'flush s (sketch)':>17s} {'flush s (none)':>15s} {'extra s/step':>13s}")
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    x = torch.randn(8, 64)
    for dim in (1024,) if quick else (256, 1024, 4096):
        mons = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, every in (("sketch", 16), ("none", 0)):
                mon = Monitor(MonitorConfig(sharpness_budget=0, ntk_budget=0, trajectory_every_n_steps=every,
                                            trajectory_dim=dim, every_n_steps=1000, flush_every_n_steps=1000))
                mon.start(module=net, optimizers=[opt], store_path=f"{tmp}/{name}.db", meta={}, every_n_steps=1000)
                mons[name] = mon
            step = {"sketch": 0, "none": 0}

            def hundred(name):
                mon = mons[name]
                for _ in range(100):
                    s = step[name]
                    mon.batch_start(s, (x,))
                    loss = net(x).sum()
                    loss.backward()
                    mon.before_optimizer_step(s, opt)
                    opt.zero_grad()
                    mon.batch_end(s, loss.detach(), stepped=True)
                    step[name] += 1

            times = {"sketch": [], "none": []}
            for _ in range(8 if quick else 48):  # a multiple of the 8 flushes between the sketch's writes
                for name in ("sketch", "none"):
                    hundred(name)
                    t = time.perf_counter()
                    mons[name].flush()
                    times[name].append(time.perf_counter() - t)
            for mon in mons.values():
                mon.finish("finished")
        a, b = statistics.mean(times["sketch"]), statistics.mean(times["none"])
        print(f"{dim:6d} {a:17.4f} {b:15.4f} {(a - b) / 100:13.2e}")


def self_time_table(quick: bool) -> None:
    """Seconds the new collectors themselves take in a Lightning run at the monitor's defaults: the NTK probes (the
    run's meta ``ntk_time_s``), the sketch's hooks (timed around them) and the monitor's flushes (the store writes
    of the sketch fall in them), against the same run with both off; a whole-run ratio is buried in machine noise
    on a shared 2-core host, these are not."""
    import sys
    import tempfile
    import warnings
    from pathlib import Path

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import make_cnn

    from dyncheck import DynamicsMonitor, open_run
    from dyncheck.collect.path import TrajectoryCollector
    from dyncheck.monitor import Monitor

    steps = 200 if quick else 1600
    x, y = digits(n=1797, image=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    clock = {"traj": 0.0, "flush": 0.0}

    def timed(fn, key):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                clock[key] += time.perf_counter() - t
        return wrapper

    orig = (TrajectoryCollector.step_start, TrajectoryCollector.before_flush, Monitor.flush)
    TrajectoryCollector.step_start = timed(orig[0], "traj")
    TrajectoryCollector.before_flush = timed(orig[1], "traj")
    Monitor.flush = timed(orig[2], "flush")
    rows: dict[str, list[tuple[float, ...]]] = {"defaults": [], "NTK + trajectory off": []}
    try:
        for _ in range(1 if quick else 3):
            for name in rows:
                kw = {} if name == "defaults" else {"ntk_budget": 0, "trajectory_every_n_steps": 0}
                with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pl.seed_everything(0, verbose=False)
                    model = make_cnn()
                    mon = DynamicsMonitor(dirpath=Path(tmp) / "run", rules=None, report=False, **kw)
                    tr = pl.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                                    devices=1, callbacks=[mon])
                    clock.update(traj=0.0, flush=0.0)
                    t = time.perf_counter()
                    tr.fit(model, loader)
                    fit_s = time.perf_counter() - t
                    with open_run(Path(tmp) / "run") as run:
                        meta = run.meta
                    rows[name].append((fit_s, meta.get("ntk_time_s", 0.0), meta.get("ntk_probes", 0), clock["traj"],
                                       clock["flush"], meta.get("sharpness_time_s", 0.0)))
    finally:
        TrajectoryCollector.step_start, TrajectoryCollector.before_flush, Monitor.flush = orig
    base = statistics.median(r[0] for r in rows["NTK + trajectory off"])
    base_flush = statistics.median(r[4] for r in rows["NTK + trajectory off"])
    print(f"\n5. self-time of the new collectors in a Lightning run at defaults: CNN (overhead.py), {steps} steps, "
          f"batch 64; medians of {len(rows['defaults'])} interleaved runs; shares of the fit without them "
          f"({base:.2f} s)")
    print(f"{'configuration':24s} {'fit s':>7s} {'NTK s':>7s} {'probes':>6s} {'sketch s':>9s} {'flush s':>8s} "
          f"{'NTK %':>6s} {'sketch %':>9s} {'flush +%':>9s}")
    for name, rs in rows.items():
        med = [statistics.median(r[i] for r in rs) for i in range(6)]
        print(f"{name:24s} {med[0]:7.2f} {med[1]:7.3f} {med[2]:6.0f} {med[3]:9.4f} {med[4]:8.3f} "
              f"{100 * med[1] / base:6.2f} {100 * med[3] / base:9.2f} {100 * (med[4] - base_flush) / base:9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small cases and few repeats (for tests)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ntk_table(args.quick)
    pca_table(args.quick)
    overhead_table(args.quick)
    store_table(args.quick)
    self_time_table(args.quick)


if __name__ == "__main__":
    main()
