"""Where the monitor's overhead goes: the share of training time spent inside dyncheck, by hook and by function,
from a sampling profiler (``py-spy``, which samples the process from outside: no instrumentation, native calls
attributed to the Python frame that made them). py-spy stops the process for each sample so that every stack is
consistent; this slows the fit but not one part of it more than another. At 100 samples a second (the default)
the fit here ran 1.1x slower; at 500 it ran 1.7x slower on a quiet host and, on a busy one, fell minutes behind
(py-spy says so: "behind in sampling"; this script passes that on). ``--nonblocking``
sampling was tried and rejected: on the same configuration it put 12.9% inside dyncheck where blocking sampling put
9.0%, with torn stacks (some start inside dyncheck's own functions, with no hook above them).

Why beside ``overhead.py``: the wall-time ratio of two fits is the target, but on a shared or throttled machine
the speed of the host drifts by tens of percent within minutes (measured here: the same plain fit at 5.9 and 8.0
ms a step ten minutes apart), so a 3% ratio needs many interleaved repeats to resolve. The share of samples inside
dyncheck is measured within one fit, is insensitive to that drift, and says which part to make cheaper.

Runs the digits CNN of ``overhead.py`` (same model, data and Trainer settings) for ``--steps`` optimizer steps with
``DynamicsMonitor(**CONFIG)`` in a child process under ``py-spy record`` and prints:

- the share of the fit's samples (those under ``Trainer.fit``) whose stack holds a dyncheck frame;
- that share by the outermost dyncheck frame (the trainer hook or the forward hook that entered dyncheck);
- and by the innermost dyncheck function (what dyncheck itself was doing, including the torch calls it made).

The end of the fit (checks, findings, report) is part of the fit here, as it is in ``overhead.py``.

Usage: ``python benchmarks/attribution.py [--steps 3000] [--config defaults|probes-off|no-checks] [--rate 100]
[--timeout 1800]``
Needs ``pip install py-spy`` (not a dependency of dyncheck: a profiler for this benchmark only).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

#: the configurations of ``overhead.py`` this script can run, by a short name
CONFIGS = {"defaults": "monitor, defaults", "no-checks": "monitor, no checks/report",
           "probes-off": "monitor, all probes off"}
_FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^():]*):(?P<line>\d+)\)$")


def _child(steps: int, config: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import overhead as ob

    torch.set_num_threads(1)
    x, y = ob.digits(flat=False)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, drop_last=True)
    kw = ob.CONFIGS[CONFIGS[config]]
    ob.one_run(ob.make_cnn, loader, 50, kw)  # warm-up: imports, first-call costs
    seconds, info = ob.one_run(ob.make_cnn, loader, steps, kw)
    print(f"fit: {steps} steps, {1000 * seconds / steps:.3f} ms a step; sharpness probes {info.get('probes')} "
          f"({info.get('sharp_s')} s); end of fit {info.get('end_s', 0.0):.3f} s", flush=True)


def _dyncheck_function(frame: str) -> str | None:
    """``"function (file)"`` for a frame of dyncheck's own code (the benchmarks excluded), else None."""
    m = _FRAME.match(frame)
    if m is None or "benchmarks" in m["file"]:
        return None
    return f"{m['fn']} ({m['file']})" if m["file"].startswith("dyncheck/") or "/dyncheck/" in m["file"] else None


def attribute(raw_path: str, top: int = 15) -> dict:
    """Shares from py-spy's raw (collapsed-stack) output: ``{"fit": samples, "dyncheck": share, "outer": [...],
    "inner": [...]}``. Samples of every fit in the file count (the child's 50-step warm-up fit is a small part of
    them); samples outside a fit (imports, building the model) do not."""
    total = inside = 0
    outer: collections.Counter = collections.Counter()
    inner: collections.Counter = collections.Counter()
    for line in open(raw_path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if not any(f.startswith("Trainer.fit ") for f in frames):
            continue
        n = int(count)
        total += n
        ours = [f for f in map(_dyncheck_function, frames) if f is not None]
        if ours:
            inside += n
            outer[ours[0]] += n
            inner[ours[-1]] += n
    return {"fit": total, "dyncheck": inside / total if total else float("nan"),
            "outer": [(k, v / total) for k, v in outer.most_common(top)],
            "inner": [(k, v / total) for k, v in inner.most_common(top)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="defaults")
    ap.add_argument("--rate", type=int, default=100, help="samples a second (100)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds the profiled fit may take (1800)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.steps, args.config)
        return 0
    spy = shutil.which("py-spy")
    if spy is None:
        print("attribution.py needs py-spy: pip install py-spy")
        return 2
    with tempfile.TemporaryDirectory(prefix="dyncheck-attr-") as tmp:
        raw = os.path.join(tmp, "raw.txt")
        cmd = [spy, "record", "--rate", str(args.rate), "--format", "raw", "--output", raw, "--",
               sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps), "--config",
               args.config]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"the profiled fit took more than {args.timeout:g} s (--timeout); try a lower --rate or --steps")
            return 1
        print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("fit:")))
        if "behind in sampling" in proc.stderr:
            print("py-spy fell behind in sampling (a busy host): the shares below may be off; try a lower --rate")
        if proc.returncode != 0 or not os.path.exists(raw):
            print(proc.stderr[-3000:])
            return 1
        res = attribute(raw)
    print(f"config {args.config}: {res['fit']} samples in trainer.fit, {res['dyncheck']:.2%} inside dyncheck "
          f"(a {1 / (1 - res['dyncheck']):.3f}x ratio if nothing else changed)")
    print("\nby the frame that entered dyncheck (hook):")
    for k, v in res["outer"]:
        print(f"  {v:7.2%}  {k}")
    print("\nby the innermost dyncheck function:")
    for k, v in res["inner"]:
        print(f"  {v:7.2%}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
