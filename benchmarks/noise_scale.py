"""Accuracy and cost of dyncheck's gradient noise scale against exact per-example gradients.

For three small networks, at fixed weights (after 30 SGD steps), the exact |G|², tr(Σ) and B_simple =
tr(Σ)/|G|² over a population (the whole training set, 1000 examples) come from per-example gradients
(``torch.func.vmap(grad)``, float64 sums). Two probes run on random batches drawn from the population:

- ``8/8``: ``micro_batch_sq_norms`` with all 8 micro-batches, their mean as the big batch;
- ``4/8``: NoiseScaleCollector's probe with the plain-loop and Hugging Face adapters: 4 of the 8 micro-batches,
  their mean as the big batch (B_big = B/2);
- ``2/8+step``: its probe with the Lightning callback, which reads the step's gradient before clipping: 2 of the
  8 micro-batches against the whole batch's gradient (which the training step computes anyway).

Columns: the median relative error of a single probe's tr(Σ) and |G|² (a single |G|² is often negative: one
probe cannot resolve |G|² when the batch is far below B_simple); the relative error of the mean estimates over
all probes and of their ratio (the estimates are unbiased: the target is within 10%), with two standard errors of
the mean |G|² (the statistical resolution of the check); the median relative error of the smoothed B_simple
(``NoiseEMA(0.95)``, the monitor's default) after the first 40 probes (what a run at these weights would show).

Cost: seconds of each probe, and of the gradient-accumulation source (a copy of the gradients and a squared norm
per micro-batch, 8 micro-batches), against one training step (forward, backward, SGD step) on the same batch,
medians of interleaved repeats, one thread.

Overhead (``--overhead``): wall time of ``trainer.fit`` of the small CNN of ``benchmarks/overhead.py`` (digits,
batch 64) plain, with the monitor at its defaults (noise scale on its 1% budget, sharpness on its 2%) and with
``noise_budget=0``, checks and report off in both, configurations interleaved, ratio of medians.

Usage: ``python benchmarks/noise_scale.py [--quick] [--overhead]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dyncheck.measure.noise import NoiseEMA, micro_batch_sq_norms, two_batch_estimates  # noqa: E402


def _moons():
    from sklearn.datasets import make_moons

    x, y = make_moons(1000, noise=0.2, random_state=0)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def _digits(image: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:1000], dtype=torch.float32) / 16.0
    return (x.reshape(-1, 1, 8, 8) if image else x), torch.tensor(d.target[:1000])


def cases():
    torch.manual_seed(0)
    # (name, net, data, batch, probes x): moons' noise scale is ~750 after warm-up: larger batches, and 4x the
    # probes, to resolve its |G|² to a few percent
    yield "tanh MLP, moons", nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                                           nn.Linear(64, 2)), _moons(), 512, 4
    yield "ReLU MLP, digits", nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)), _digits(False), 64, 1
    yield "CNN, digits", nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                       nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 10)), \
        _digits(True), 64, 1


def _loss(net):
    return lambda mb: nn.functional.cross_entropy(net(mb[0]), mb[1])


def exact(net, x, y):
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, xi, yi):
        return nn.functional.cross_entropy(functional_call(net, p, (xi[None],)), yi[None])

    g2, tr = 0.0, 0.0
    per = vmap(grad(f), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([per[k].reshape(len(x), -1) for k in params], 1).double()
    mean = flat.mean(0)
    g2 = float(mean @ mean)
    tr = float(((flat - mean) ** 2).sum(1).mean())
    return g2, tr


def warm_up(net, x, y, steps=30, lr=0.1, batch=64):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def rel(a, b):
    return abs(a - b) / abs(b)


def _full_sq(net, xb, yb):
    g = torch.autograd.grad(nn.functional.cross_entropy(net(xb), yb), list(net.parameters()))
    return float(sum((t.double() ** 2).sum() for t in g))


def accuracy(net, x, y, batch, probes, variant):
    """Rows of (|G|², tr(Σ)) estimates over ``probes`` random batches. ``variant``: ``"8/8"`` all micro-batches,
    their mean as the big batch (``micro_batch_sq_norms``); ``"4/8"`` the collector's probe (4 of them);
    ``"2/8+step"``: 2 of the 8 micro-batches against the whole batch's gradient."""
    gen = torch.Generator().manual_seed(0)
    params = list(net.parameters())
    ests = []
    for _ in range(probes):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        xb, yb = x[idx], y[idx]
        if variant == "8/8":
            s, b, bs, bb = micro_batch_sq_norms(_loss(net), [xb, yb], params, 8, gen)
        elif variant == "4/8":
            s, b, bs, bb = micro_batch_sq_norms(_loss(net), [xb, yb], params, 8, gen, evaluate=4)
        else:
            s, _, bs, _ = micro_batch_sq_norms(_loss(net), [xb, yb], params, 8, gen, evaluate=2, big=False)
            b, bb = _full_sq(net, xb, yb), batch
        ests.append(two_batch_estimates(s, b, bs, bb))
    return np.array(ests)


def timings(net, x, y, batch, repeats):
    """Median seconds of (training step, probe 8/8, probe 4/8, accumulation bookkeeping of 8 micro-batches,
    probe 2/8 + the step gradient's norm), interleaved."""
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the weights stay, the work is the same
    params = list(net.parameters())
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, len(x), (batch,), generator=gen)
    xb, yb = x[idx], y[idx]
    times: list[list[float]] = [[], [], [], [], []]
    for _ in range(repeats):
        t = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
        times[0].append(time.perf_counter() - t)
        t = time.perf_counter()
        micro_batch_sq_norms(_loss(net), [xb, yb], params, 8, gen)
        times[1].append(time.perf_counter() - t)
        t = time.perf_counter()
        micro_batch_sq_norms(_loss(net), [xb, yb], params, 8, gen, evaluate=4)
        times[2].append(time.perf_counter() - t)
        t = time.perf_counter()
        micro_batch_sq_norms(_loss(net), [xb, yb], params, 8, gen, evaluate=2, big=False)
        with torch.no_grad():  # the step's gradient's squared norm, as the collector takes it
            torch.stack([torch.linalg.vector_norm(p.grad) ** 2 for p in params]).sum().item()
        times[4].append(time.perf_counter() - t)
        t = time.perf_counter()
        prev = None
        with torch.no_grad():
            for _ in range(8):  # what NoiseScaleCollector.batch does per micro-batch
                grads = [p.grad for p in params]
                d = grads if prev is None else torch._foreach_sub(grads, prev)
                torch.stack([torch.linalg.vector_norm(g) ** 2 for g in d]).sum()
                prev = [g.clone() for g in grads]
        times[3].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def overhead(steps: int, repeats: int) -> None:
    """Ratio of medians of ``trainer.fit`` wall time, interleaved (order rotated each repeat)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import digits as overhead_digits
    from overhead import make_cnn, one_run
    from torch.utils.data import DataLoader, TensorDataset

    x, y = overhead_digits(flat=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    configs = {"plain": None, "monitor, defaults (noise on)": {"rules": None, "report": False},
               "monitor, noise_budget=0": {"rules": None, "report": False, "noise_budget": 0}}

    def info(run):
        sched = run.meta.get("noise_schedule") or {}
        return {"noise": sched.get("measurements", 0), "noise_s": run.meta.get("noise_time_s", 0.0),
                "sharp": run.meta.get("sharpness_probes")}

    for kw in configs.values():  # warm-up
        one_run(make_cnn, loader, 3, kw, inspect=info)
    times: dict[str, list[float]] = {k: [] for k in configs}
    infos: dict[str, dict] = {}
    names = list(configs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t, inf = one_run(make_cnn, loader, steps, configs[name], inspect=info)
            times[name].append(t)
            infos[name] = inf
    base = statistics.median(times["plain"])
    print(f"Overhead: small CNN, digits, batch 64, {steps} steps, {repeats} repeats interleaved, one thread\n")
    print("configuration | median s | ratio to plain | noise measurements | noise s | sharpness probes")
    print("--- | --- | --- | --- | --- | ---")
    for name in names:
        med = statistics.median(times[name])
        inf = infos[name]
        print(f"{name} | {med:.2f} | {med / base:.3f}x | {inf.get('noise', '-')} | "
              f"{inf.get('noise_s', 0.0) or 0.0:.3f} | {inf.get('sharp', '-')}")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer probes and repeats")
    ap.add_argument("--overhead", action="store_true", help="also time a Lightning fit with and without it")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.overhead:
        overhead(steps=600 if args.quick else 2000, repeats=3 if args.quick else 5)
    probes, repeats = (200, 10) if args.quick else (1000, 30)
    acc_rows, cost_rows = [], []
    for name, net, (x, y), batch, more in cases():
        warm_up(net, x, y)
        n_probes = probes * more
        g2, tr = exact(net, x, y)
        b_exact = tr / g2
        for variant in ("8/8", "4/8", "2/8+step"):
            e_g2, e_tr = accuracy(net, x, y, batch, n_probes, variant).T
            ema, smoothed = NoiseEMA(0.95), []
            for i, (a, b) in enumerate(zip(e_g2, e_tr)):
                ema.update(a, b)
                if i >= 40 and ema.b_simple is not None:
                    smoothed.append(ema.b_simple)
            se_g2 = e_g2.std() / np.sqrt(n_probes) / g2
            acc_rows.append((f"{name} ({n_probes} probes)", batch, b_exact, variant,
                             float(np.median([rel(v, tr) for v in e_tr])), float(np.median([rel(v, g2) for v in e_g2])),
                             float(np.mean(e_g2 < 0)), rel(e_tr.mean(), tr), rel(e_g2.mean(), g2), 2 * se_g2,
                             rel(e_tr.mean() / e_g2.mean(), b_exact),
                             float(np.median([rel(v, b_exact) for v in smoothed])) if smoothed else float("nan")))
        step_s, full_s, probe_s, acc_s, step_probe_s = timings(net, x, y, batch, repeats)
        cost_rows.append((name, sum(p.numel() for p in net.parameters()), batch, step_s * 1e3, full_s / step_s,
                          probe_s / step_s, step_probe_s / step_s, acc_s / step_s))
    print("Accuracy: at fixed weights; relative errors against exact per-example "
          "gradients over the population (8/8: all 8 micro-batches, their mean as the big batch; 4/8: the "
          "collector's probe in a plain loop or the HF Trainer, 4 of them; 2/8+step: its probe under Lightning, 2 "
          "micro-batches against the whole batch's gradient)\n")
    head = ("case", "batch", "B exact", "probe", "1 probe trΣ", "1 probe |G|²", "|G|²<0", "mean of all: trΣ",
            "|G|²", "(2 s.e.)", "B_simple", "EMA 0.95 B")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in acc_rows:
        print(f"{r[0]} | {r[1]} | {r[2]:.1f} | {r[3]} | {r[4]:.0%} | {r[5]:.0%} | {r[6]:.0%} | {r[7]:.1%} | "
              f"{r[8]:.1%} | {r[9]:.1%} | {r[10]:.1%} | {r[11]:.0%}")
    print("\nCost per measurement, relative to one training step on the same batch (medians of interleaved "
          f"repeats, {repeats} each, one thread)\n")
    head = ("case", "params", "batch", "step ms", "probe 8/8", "4/8 (loop, HF)", "2/8+step (Lightning)",
            "accumulation (8 micro)")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in cost_rows:
        print(f"{r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f}x | {r[5]:.2f}x | {r[6]:.2f}x | {r[7]:.2f}x")
    worst = max(max(r[7], r[8], r[10]) for r in acc_rows)
    print(f"\ntarget: mean estimates within 10% of exact -- worst {worst:.1%}: {'met' if worst <= 0.10 else 'MISSED'}")


if __name__ == "__main__":
    main()
