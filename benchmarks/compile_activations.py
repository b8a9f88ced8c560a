"""Per-step overhead of the monitor on a ``torch.compile``-d model next to the same model in eager mode, and whether
the monitor makes dynamo recompile (CPU, ``torch.set_num_threads(1)``).

A plain training loop (the framework-neutral :class:`~dyncheck.monitor.Monitor`, as the adapters drive it: no
Lightning overhead in the figures) trains an MLP on a fixed random batch. Configurations, each on its own model
instance (same seed), run interleaved with the order rotated each repeat:

- ``eager``                  no monitor
- ``eager, hooks off``       no monitor, the monitor's activation hooks registered and switched off (the cost of
  keeping them registered for the whole fit, on the steps that do not measure)
- ``eager + monitor``        ``Monitor`` with per-layer statistics and activations every ``--every`` steps
- ``eager + monitor, act/1``  activations every step (the worst case: statistics in every forward)
- ``compiled``, ``compiled, hooks off``, ... the same on ``torch.compile(model)``

Each configuration is warmed up first (compiling, and for the monitor one measuring and one plain step, so both of
its graphs exist); each repeat then times ``--steps`` steps inside one monitored fit (``start`` and ``finish``
outside the timed region). The table shows the median per-step time over the repeats, the ratio to the same mode
without the monitor, the graphs dynamo compiled in the warm-up and during the timed steps (``torch._dynamo`` counters
``stats.unique_graphs``: 0 during the timed steps means no recompiles), and the activation steps recorded out of
those the schedule asked for.

Usage (from the repository root; ``PYTHONPATH=.`` unless the package is installed from this checkout):
``python benchmarks/compile_activations.py [--steps N] [--repeats N] [--every N] [--width N] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch._dynamo as dynamo
from torch import nn

from dyncheck import open_run
from dyncheck.measure.activations import ActivationRecorder, select_modules
from dyncheck.monitor import Monitor, MonitorConfig


def _graphs() -> int:
    return int(dynamo.utils.counters["stats"]["unique_graphs"])


class Config:
    """One configuration: its model, optimizer and data, and a method that trains ``n`` steps."""

    def __init__(self, name: str, *, compiled: bool, act_every: int | None, every: int, width: int,
                 hooks_off: bool = False) -> None:
        self.name, self.compiled, self.act_every, self.every = name, compiled, act_every, every
        torch.manual_seed(0)
        # a class of its own per configuration: dynamo shares one graph between instances of a class, traced with
        # the hooks the first one had (none), and does not guard on hooks (see dyncheck.collect.activations)
        cls = type(f"MLP_{len(name)}_{compiled}_{act_every}", (nn.Sequential,), {})
        self.model = cls(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.GELU(),
                                   nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))
        if hooks_off:  # the monitor's hooks, registered and switched off: what they cost on the other steps
            ActivationRecorder(select_modules(self.model), active=False).attach()
        self.forward = torch.compile(self.model) if compiled else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g)
        self.step = 0
        self.times: list[float] = []
        self.warmup_graphs = 0
        self.timed_graphs = 0
        self.recorded: list[int] = []  # activation steps recorded / asked for, per fit
        self.asked: list[int] = []

    def fit(self, n: int, *, timed: bool) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="dyncheck-bench-"))
        mon = None
        if self.act_every is not None:
            mon = Monitor(MonitorConfig(sharpness_budget=0, activations_every_n_steps=self.act_every,
                                        flush_every_n_steps=100))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mon.start(module=self.forward, optimizers=[self.opt], store_path=tmp / "run.db", meta={},
                          every_n_steps=self.every, planned_steps=n)
        first = self.step
        g0, t0 = _graphs(), time.perf_counter()
        for _ in range(n):
            s = self.step
            if mon is not None:
                mon.batch_start(s, (self.x, self.y))
            loss = nn.functional.cross_entropy(self.forward(self.x), self.y)
            loss.backward()
            if mon is not None:
                mon.before_optimizer_step(s, self.opt)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if mon is not None:
                mon.batch_end(s, loss.detach(), stepped=True)
            self.step += 1
        elapsed = time.perf_counter() - t0
        graphs = _graphs() - g0
        if mon is not None:
            mon.finish("finished")
            with open_run(tmp / "run.db") as run:
                name = "act/mean/0"
                got = run.series(name).steps.tolist() if name in run.metrics("act/mean/*") else []
            asked = [s for s in range(first, self.step) if s // self.act_every != (s - 1) // self.act_every or
                     s == first] if self.act_every else []
            if timed:
                self.recorded.append(len(set(got) & set(asked)))
                self.asked.append(len(asked))
        shutil.rmtree(tmp, ignore_errors=True)
        if timed:
            self.times.append(elapsed / n)
            self.timed_graphs += graphs
        else:
            self.warmup_graphs += graphs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--every", type=int, default=10, help="per-layer statistics and activations every N steps")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="60 steps, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = 60, 3
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    configs = []
    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        configs += [Config(mode, compiled=compiled, act_every=None, every=args.every, width=args.width),
                    Config(f"{mode}, hooks off", compiled=compiled, act_every=None, every=args.every,
                           width=args.width, hooks_off=True),
                    Config(f"{mode} + monitor", compiled=compiled, act_every=args.every, every=args.every,
                           width=args.width),
                    Config(f"{mode} + monitor, act/1", compiled=compiled, act_every=1, every=args.every,
                           width=args.width)]
    t = time.perf_counter()
    for c in configs:  # compile, and both of the monitor's graphs (a measuring and a plain step)
        c.fit(max(2, args.every + 1), timed=False)
    print(f"warm-up (compiling) {time.perf_counter() - t:.1f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), MLP width {args.width}, batch 128")
    for r in range(args.repeats):
        k = r % len(configs)
        for c in configs[k:] + configs[:k]:
            c.fit(args.steps, timed=True)
    base = {False: statistics.median(configs[0].times), True: statistics.median(configs[4].times)}
    print(f"\n{args.steps} steps x {args.repeats} interleaved repeats; monitor every {args.every} steps\n")
    print(f"{'configuration':<28} {'ms/step':>8} {'x same mode':>11} {'x eager':>8} {'graphs warm-up':>14} "
          f"{'graphs timed':>12} {'act steps':>10}")
    for c in configs:
        med = statistics.median(c.times)
        acts = f"{sum(c.recorded)}/{sum(c.asked)}" if c.act_every is not None else "-"
        print(f"{c.name:<28} {med * 1e3:8.3f} {med / base[c.compiled]:10.3f}x {med / base[False]:7.3f}x "
              f"{c.warmup_graphs:14d} {c.timed_graphs:12d} {acts:>10}")
    print("\ngraphs timed = 0: no recompiles while training (dynamo guards on the recorder's flag: one graph with "
          "the statistics, one without, both compiled in the warm-up)")


if __name__ == "__main__":
    main()
