"""Accuracy and cost of dyncheck's gradient noise scale against exact per-example gradients.

For three small networks, at fixed weights (after a few SGD steps), the exact |G|², tr(Σ) and B_simple =
tr(Σ)/|G|² over a population (the whole training set) come from per-example gradients (``torch.func.vmap(grad)``,
float64 sums). The monitor's probe (``micro_batch_sq_norms``: a batch of B split in 8 micro-batches, then
``two_batch_estimates``) runs on R random batches of B drawn from the population:

- ``1 probe``: the median relative error of a single probe's tr(Σ) and |G|² (a single |G|² is often negative:
  one probe cannot resolve |G|² when B is far below B_simple);
- ``mean of R``: the relative error of the mean estimates and of their ratio (unbiased: this is the target,
  within 10%);
- ``EMA 0.95``: the median relative error of the smoothed B_simple (``NoiseEMA(0.95)``, the monitor's default)
  over the probes after the first 40 (what a run at these weights would show).

Cost: seconds of one probe against one training step (forward, backward, SGD step) on the same batch, and of the
gradient-accumulation source (a copy of the gradients and a squared norm per micro-batch), medians of
interleaved repeats.

Usage: ``python benchmarks/noise_scale.py [--quick]``
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
    yield "tanh MLP, moons", nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                                           nn.Linear(64, 2)), _moons()
    yield "ReLU MLP, digits", nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)), _digits(False)
    yield "CNN, digits", nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                       nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 10)), _digits(True)


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


def timings(net, x, y, batch, repeats):
    """Median seconds of (training step, probe, accumulation bookkeeping for 8 micro-batches), interleaved."""
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the weights stay, the work is the same
    params = list(net.parameters())
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, len(x), (batch,), generator=gen)
    xb, yb = x[idx], y[idx]
    step_t, probe_t, acc_t = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
        step_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        micro_batch_sq_norms(_loss(net), [xb, yb], params, 8, gen)
        probe_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        prev = None
        with torch.no_grad():
            for _ in range(8):  # what NoiseScaleCollector.batch does per micro-batch
                grads = [p.grad for p in params]
                d = grads if prev is None else torch._foreach_sub(grads, prev)
                torch.stack([torch.linalg.vector_norm(g) ** 2 for g in d]).sum()
                prev = [g.clone() for g in grads]
        acc_t.append(time.perf_counter() - t)
    return statistics.median(step_t), statistics.median(probe_t), statistics.median(acc_t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer probes and repeats")
    args = ap.parse_args()
    torch.set_num_threads(1)
    (probes, repeats), batch = ((100, 10) if args.quick else (400, 30)), 64
    rows = []
    for name, net, (x, y) in cases():
        warm_up(net, x, y)
        g2, tr = exact(net, x, y)
        gen = torch.Generator().manual_seed(0)
        ests = []
        for _ in range(probes):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            s, b, bs, bb = micro_batch_sq_norms(_loss(net), [x[idx], y[idx]], list(net.parameters()), 8, gen)
            ests.append(two_batch_estimates(s, b, bs, bb))
        e_g2, e_tr = np.array(ests).T
        ema, smoothed = NoiseEMA(0.95), []
        for i, (a, b) in enumerate(ests):
            ema.update(a, b)
            if i >= 40 and ema.b_simple is not None:
                smoothed.append(ema.b_simple)
        b_exact = tr / g2
        step_s, probe_s, acc_s = timings(net, x, y, batch, repeats)
        rows.append((name, sum(p.numel() for p in net.parameters()), b_exact,
                     float(np.median([rel(v, tr) for v in e_tr])), float(np.median([rel(v, g2) for v in e_g2])),
                     float(np.mean(e_g2 < 0)),
                     rel(e_tr.mean(), tr), rel(e_g2.mean(), g2), rel(e_tr.mean() / e_g2.mean(), b_exact),
                     float(np.median([rel(v, b_exact) for v in smoothed])) if smoothed else float("nan"),
                     probe_s / step_s, acc_s / step_s, step_s * 1e3))
    print(f"batch {batch} split in 8 micro-batches; {probes} probes per case; relative errors against exact "
          "per-example gradients over the population\n")
    head = ("case", "params", "B exact", "1 probe trΣ", "1 probe |G|²", "|G|²<0", f"mean of {probes}: trΣ",
            "|G|²", "B_simple", "EMA 0.95 B", "probe/step", "accum/step", "step ms")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(f"{r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1%} | {r[4]:.0%} | {r[5]:.0%} | {r[6]:.1%} | {r[7]:.1%} | "
              f"{r[8]:.1%} | {r[9]:.0%} | {r[10]:.2f}x | {r[11]:.2f}x | {r[12]:.2f}")
    worst = max(max(r[6], r[7], r[8]) for r in rows)
    print(f"\ntarget: mean estimates within 10% of exact -- worst {worst:.1%}: {'met' if worst <= 0.10 else 'MISSED'}")


if __name__ == "__main__":
    main()
