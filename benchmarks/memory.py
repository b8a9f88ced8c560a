"""Peak extra memory of the monitor on a ~100M-parameter model (CPU).

Model: an MLP 2048 -> 5500 x 4 layers -> 10 (102M float32 parameters, 390 MB), SGD without momentum (no
optimizer state), batch 8. Each configuration runs in a fresh child process (so that no allocator cache of an
earlier run hides memory): build the model, take the resident set size (RSS, ``/proc/self/statm``), then train
``--steps`` steps in a plain loop while a sampling thread reads the RSS every millisecond; the figure is the peak
RSS during training minus the RSS before it. ``plain`` trains without the monitor; the monitored runs drive the
framework-neutral :class:`dyncheck.monitor.Monitor` (the same code the Lightning callback drives) with every step a
per-layer step (``every_n_steps=1``), activations on, sharpness off (the Lanczos basis is a separate, documented
budget). "extra" = peak(monitored) - peak(plain). On CPU the host is the device, so RSS covers both the host
copies and the transient device tensors (on CUDA, ``torch.cuda.max_memory_allocated`` would tell them apart; see
``benchmarks/gpu_check.py``).

Run it against another checkout to compare (e.g. ``PYTHONPATH=/path/to/main python benchmarks/memory.py``): the
child processes import ``dyncheck`` from ``PYTHONPATH``.

Usage: ``python benchmarks/memory.py [--steps N] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent("""
    import json, os, sys, tempfile, threading, time
    import torch
    torch.set_num_threads(1)
    from torch import nn
    width, layers, steps, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    torch.manual_seed(0)
    mods = [nn.Linear(2048, width), nn.ReLU()]
    for _ in range(layers - 1):
        mods += [nn.Linear(width, width), nn.ReLU()]
    net = nn.Sequential(*mods, nn.Linear(width, 10))
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(8, 2048), torch.randint(0, 10, (8,))
    # one warm-up step outside the measurement: gradients and the allocator's first blocks exist in both modes
    nn.functional.cross_entropy(net(x), y).backward(); opt.step(); opt.zero_grad()
    mon = None
    if mode != "plain":
        from dyncheck.monitor import Monitor, MonitorConfig
        mon = Monitor(MonitorConfig(sharpness_budget=0, every_n_steps=1, activations_every_n_steps=1))
    base = rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    if mon is not None:
        mon.start(module=net, optimizers=[opt], store_path=os.path.join(tempfile.mkdtemp(), "run.db"), meta={},
                  every_n_steps=1)
    for step in range(steps):
        if mon is not None:
            mon.batch_start(step, (x, y))
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        if mon is not None:
            mon.before_optimizer_step(step, opt)
        opt.step()
        opt.zero_grad()
        if mon is not None:
            mon.batch_end(step, loss, stepped=True)
        peak[0] = max(peak[0], rss())
    if mon is not None:
        mon.finish("finished")
    seconds = time.perf_counter() - t
    stop.set(); th.join()
    import dyncheck
    print(json.dumps({"params": n_params, "base_mb": base / 2**20, "peak_extra_mb": (peak[0] - base) / 2**20,
                      "seconds": seconds, "dyncheck": os.path.dirname(dyncheck.__file__)}))
""")


def child(width: int, layers: int, steps: int, mode: str) -> dict:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "child.py")
        with open(script, "w") as f:
            f.write(CHILD)
        proc = subprocess.run([sys.executable, script, str(width), str(layers), str(steps), mode],
                              capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({mode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="a ~1M-parameter model, for a smoke run")
    args = ap.parse_args()
    width, layers = (500, 4) if args.quick else (5500, 4)
    rows = [(mode, child(width, layers, args.steps, mode)) for mode in ("plain", "monitor")]
    plain = rows[0][1]
    print(f"model: MLP 2048 -> {width} x {layers} -> 10, {plain['params']:,} float32 parameters "
          f"({plain['params'] * 4 / 2**20:.0f} MB); {args.steps} steps, every one a per-layer step; "
          f"dyncheck from {rows[1][1]['dyncheck']}")
    print(f"{'configuration':<12} {'RSS before MB':>14} {'peak extra MB':>14} {'vs model':>9} {'seconds':>8}")
    for mode, r in rows:
        extra = r["peak_extra_mb"] - (plain["peak_extra_mb"] if mode != "plain" else 0.0)
        shown = f"{r['peak_extra_mb']:.0f}" if mode == "plain" else f"{extra:+.0f}"
        print(f"{mode:<12} {r['base_mb']:>14.0f} {shown:>14} {extra / (plain['params'] * 4 / 2**20):>8.2f}x "
              f"{r['seconds']:>8.2f}")
    print("plain: peak RSS during training minus RSS before it; monitor: that minus plain's (the monitor's extra,"
          "\nhost and transient tensors together: on CPU the device is the host).")


if __name__ == "__main__":
    main()
