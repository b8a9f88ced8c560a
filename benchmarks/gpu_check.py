"""The monitor on a CUDA GPU, in one script of a few minutes:

1. overhead at defaults, side by side with plain training (same models as ``benchmarks/overhead.py``: the digits
   CNN and the 8.5M MLP), median of interleaved repeats, with peak extra device memory
   (``torch.cuda.max_memory_allocated``) and peak extra host RSS;
2. the monitored steps under ``torch.cuda.set_sync_debug_mode("error")``: no host synchronisation on any step
   between flushes (the flush itself, one transfer per ``flush_every_n_steps``, is the monitor's one sync, so the
   check runs with flushes beyond the checked steps; per-layer and activation steps included);
3. sharpness through the flash and memory-efficient SDPA kernels: a small transformer block probed with
   ``torch.nn.attention.sdpa_kernel`` forcing each backend (double backward is not implemented by every kernel:
   the monitor must then turn sharpness off with one warning, never break the training), compared with the math
   backend.

Without CUDA (``torch.cuda.is_available()`` false) it says so and exits 0: the CPU figures are
``benchmarks/overhead.py`` and ``benchmarks/memory.py``.

Usage: ``python benchmarks/gpu_check.py [--repeats N] [--cnn-steps N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("PL_DISABLE_FORK", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch import nn  # noqa: E402


def overhead(repeats: int, cnn_steps: int, mlp_steps: int) -> None:
    import overhead as ov  # the CPU benchmark's models, data and timing
    from torch.utils.data import DataLoader, TensorDataset

    def run(make, loader, steps, kw):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        sec, info = ov.one_run(make, loader, steps, kw, accelerator="gpu")
        info["device_mb"] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
        return sec, info

    for label, make, flat, bs, steps in (("cnn", ov.make_cnn, False, 64, cnn_steps),
                                         ("mlp-8.5M", ov.make_mlp10m, True, 128, mlp_steps)):
        x, y = ov.digits(flat=flat)
        loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=False)
        configs = {"plain": None, "monitor, defaults": {}}
        for kw in configs.values():
            run(make, loader, 3, kw)  # warm-up
        times = {k: [] for k in configs}
        infos: dict = {}
        for r in range(repeats):
            for name in list(configs)[r % 2:] + list(configs)[: r % 2]:
                sec, info = run(make, loader, steps, configs[name])
                times[name].append(sec)
                infos[name] = info
        base = statistics.median(times["plain"])
        for name in configs:
            med = statistics.median(times[name])
            i = infos[name]
            print(f"{label:<9} {name:<18} {med:8.3f} s  {1e3 * med / steps:7.3f} ms/step  {med / base:6.3f}x  "
                  f"peak device MB {i['device_mb']:8.1f} (plain {infos['plain']['device_mb']:.1f})  "
                  f"peak host MB {i['peak_mb']:7.1f}  probes {i.get('probes', '')}  end s {i.get('end_s', 0):.3f}",
                  flush=True)


def sync_free(steps: int = 120) -> None:
    """Every monitored step (per-layer and activation steps included) under sync debug mode "error"."""
    from dyncheck.monitor import Monitor, MonitorConfig

    dev = torch.device("cuda")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 1, 8, 8, device=dev), torch.randint(0, 10, (64,), device=dev)
    tmp = tempfile.mkdtemp()
    mon = Monitor(MonitorConfig(flush_every_n_steps=10 ** 9, sharpness_budget=0, every_n_steps=10))
    mon.start(module=net, optimizers=[opt], store_path=os.path.join(tmp, "run.db"), meta={}, every_n_steps=10)
    step = 0
    for step in range(steps):
        if step == 1:
            torch.cuda.set_sync_debug_mode("error")  # the first step plans (NormPlan.probe may look at the host)
        mon.batch_start(step, (x, y))
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        mon.before_optimizer_step(step, opt)
        opt.step()
        opt.zero_grad()
        mon.batch_end(step, loss, stepped=True)
    torch.cuda.set_sync_debug_mode("default")
    mon.finish("finished")
    print(f"sync-free: {steps - 1} monitored steps (every 10th per-layer and activations) ran under "
          f"set_sync_debug_mode('error') without a host synchronisation", flush=True)


def sharpness_backends() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dyncheck.measure.sharpness import hvp_operator, lanczos_top_eig

    dev = torch.device("cuda")
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, d: int = 64, heads: int = 4) -> None:
            super().__init__()
            self.qkv, self.out, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(a.transpose(1, 2).reshape(b, t, d))

    for dtype in (torch.float16, torch.bfloat16):
        model = Block().to(dev, dtype)
        x = torch.randn(8, 128, 64, device=dev, dtype=dtype)
        params = list(model.parameters())
        values = {}
        for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    loss = model(x).float().square().mean()
                    matvec, n = hvp_operator(loss, params)
                    res = lanczos_top_eig(matvec, n, max_iter=20, tol=1e-4)
                values[backend.name] = f"{res.value:.5g} ({res.n_hvp} products)"
            except Exception as exc:  # noqa: BLE001 - what each kernel supports is the finding
                values[backend.name] = f"unsupported: {type(exc).__name__}: {str(exc)[:100]}"
        print(f"sharpness {str(dtype):<15} " + "; ".join(f"{k} {v}" for k, v in values.items()), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cnn-steps", type=int, default=3200)
    ap.add_argument("--mlp-steps", type=int, default=300)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here (torch.cuda.is_available() is False); nothing measured. "
              "The CPU figures are benchmarks/overhead.py and benchmarks/memory.py.")
        return 0
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    t = time.perf_counter()
    sync_free()
    sharpness_backends()
    overhead(args.repeats, args.cnn_steps, args.mlp_steps)
    print(f"gpu_check: {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
