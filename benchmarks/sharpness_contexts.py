"""Accuracy and cost of each sharpness probe context against the exact float32 eager value.

The probe tries its contexts in order (dyncheck.measure.probe): exact double backward with the math SDPA backend and
torch.compile forced eager, under the training precision; then a float32 central finite difference of first-order
gradients (``fd_hvp_operator``). This prints, per model and context, the top eigenvalue the probe finds as the
monitor runs it (Lanczos, ``max_iter=20``, ``tol=1e-4``, a seeded start vector), its relative error against the
reference -- exact double backward in float32, eager, math attention, Lanczos to convergence (``max_iter=60``,
``tol=1e-7``) -- the Hessian-vector products used and the probe's time (median of interleaved repeats; ratio to the
exact math-SDPA probe of the same model).

Contexts:

- ``exact-math-sdpa``: double backward, math attention (the fused CPU kernel has no double backward);
- ``force_eager``: the same on the model wrapped in ``torch.compile`` (aot_autograd has no double backward;
  ``torch.compiler.set_stance("force_eager")`` runs its eager code);
- ``fd``: the finite difference, float32, ``eps = rel_step ||w|| / ||v||`` at the default ``FD_REL_STEP``
  (1e-5) and, for comparison, at 1e-4 and 1e-6; ``fd-reentrant``: the same through reentrant gradient
  checkpointing (gradients by ``loss.backward()``);
- ``bf16-autocast``: double backward with the forward under CPU bf16 autocast (bf16-mixed training): the Hessian
  of the bf16 loss, whose distance from the float32 value is the precision's, not the probe's.

Models: a tiny random-init HF GPT-2 (2 layers, 32 wide, no dropout), the same after 30 Adam steps, an
``nn.TransformerEncoder`` (GELU), a ReLU CNN on digits-sized inputs (kinks: the finite difference's hard case).

Usage: ``python benchmarks/sharpness_contexts.py [--quick] [--repeats N]`` (``--quick``: one repeat, no
torch.compile, fewer models; what the test suite runs).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from dyncheck.measure.probe import eager_math
from dyncheck.measure.sharpness import (
    FD_CHECK_RTOL,
    FD_REL_STEP,
    fd_hvp_operator,
    fd_smoothness_check,
    hvp_operator,
    lanczos_top_eig,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MAX_ITER, TOL = 20, 1e-4


def gpt2(trained: bool = False, checkpointing: bool = False):
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, attn_pdrop=0,
                                  resid_pdrop=0, embd_pdrop=0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    if trained:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(30):
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    return model, lambda m: m(input_ids=ids, labels=ids).loss


def encoder():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                                                           activation="gelu"), 2,
                                                enable_nested_tensor=False), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 8, 16, generator=g), torch.randn(8, 8, 1, generator=g)
    return model, lambda m: nn.functional.mse_loss(m(x), y)


def cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 16, 10))
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)
    return model, lambda m: nn.functional.cross_entropy(m(x), y)


def big_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10))
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(128, 1, 8, 8, generator=g), torch.randint(0, 10, (128,), generator=g)
    return model, lambda m: nn.functional.cross_entropy(m(x), y)


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(64, 16, generator=g), torch.randn(64, 1, generator=g)
    return model, lambda m: nn.functional.mse_loss(m(x), y)


def top_eig(matvec, n: int, max_iter: int = MAX_ITER, tol: float = TOL):
    return lanczos_top_eig(matvec, n, max_iter=max_iter, tol=tol, generator=torch.Generator().manual_seed(0))


def exact_probe(model: nn.Module, loss: Callable, autocast: bool = False, **kw):
    params = [p for p in model.parameters() if p.requires_grad]
    with eager_math():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = loss(model)
        matvec, n = hvp_operator(value, params)
        return top_eig(matvec, n, **kw)


def fd_probe(model: nn.Module, loss: Callable, rel_step: float = FD_REL_STEP):
    """The finite-difference probe and the monitor's check along its eigenvector (``r.check``: the relative
    disagreement of v'Hv at the step and a quarter of it; above FD_CHECK_RTOL the monitor records nothing)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with eager_math():
        matvec, n = fd_hvp_operator(lambda: loss(model), params, rel_step=rel_step)
        r = top_eig(matvec, n)
        q, q4 = fd_smoothness_check(matvec, r.vector)
    r.check = abs(q - q4) / max(abs(q), abs(q4), 1e-30)
    return r


def timed(fn: Callable, repeats: int) -> tuple[object, list[float]]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    cases: dict[str, tuple] = {"gpt2 (init)": gpt2()}
    if not args.quick:
        cases.update({"gpt2 (30 Adam steps)": gpt2(trained=True), "TransformerEncoder": encoder(), "ReLU CNN": cnn(),
                      "ReLU CNN (32 wide)": big_cnn()})
    rows = []
    for name, (model, loss) in cases.items():
        ref = exact_probe(model, loss, max_iter=60, tol=1e-7).value
        contexts: dict[str, Callable] = {
            "exact-math-sdpa": lambda m=model, f=loss: exact_probe(m, f),
            "fd (1e-5, default)": lambda m=model, f=loss: fd_probe(m, f),
            "fd (1e-4)": lambda m=model, f=loss: fd_probe(m, f, 1e-4),
            "fd (1e-6)": lambda m=model, f=loss: fd_probe(m, f, 1e-6),
            "bf16-autocast": lambda m=model, f=loss: exact_probe(m, f, autocast=True),
        }
        if name.startswith("gpt2"):
            ck, ck_loss = gpt2(trained="Adam" in name, checkpointing=True)
            contexts["fd-reentrant (1e-5)"] = lambda m=ck, f=ck_loss: fd_probe(m, f)
        times: dict[str, list[float]] = {k: [] for k in contexts}
        results: dict[str, object] = {}
        for _ in range(repeats):  # interleaved: one of each per round
            for key, fn in contexts.items():
                results[key], t = timed(fn, 1)
                times[key] += t
        base = statistics.median(times["exact-math-sdpa"])
        for key in contexts:
            r = results[key]
            med = statistics.median(times[key])
            rows.append((name, key, ref, r.value, abs(r.value - ref) / abs(ref), r.n_hvp, med, med / base,
                         getattr(r, "check", None)))
    if not args.quick:  # torch.compile: the exact probe forced eager against the eager model's reference
        model, loss = mlp()
        ref = exact_probe(model, loss, max_iter=60, tol=1e-7).value
        compiled = torch.compile(copy.deepcopy(model))
        loss(compiled).backward()  # compile it, as training would
        try:
            params = list(compiled.parameters())
            matvec, n = hvp_operator(loss(compiled), params)
            matvec(torch.ones(n))
            plain = "works"
        except RuntimeError as exc:
            plain = f"fails: {str(exc)[:70]}"
        ctx = {"exact force_eager": lambda: exact_probe(compiled, loss), "fd (compiled, eager)":
               lambda: fd_probe(compiled, loss), "exact eager model": lambda: exact_probe(model, loss)}
        times = {k: [] for k in ctx}
        results = {}
        for _ in range(repeats):
            for key, fn in ctx.items():
                results[key], t = timed(fn, 1)
                times[key] += t
        base = statistics.median(times["exact eager model"])
        for key in ctx:
            r, med = results[key], statistics.median(times[key])
            rows.append(("compiled MLP", key, ref, r.value, abs(r.value - ref) / abs(ref), r.n_hvp, med, med / base,
                         getattr(r, "check", None)))
        print(f"torch.compile without force_eager: double backward {plain}")
    print(f"\n{'model':<22} {'context':<22} {'reference':>11} {'probe':>11} {'rel err':>9} {'HVPs':>5} "
          f"{'probe ms':>9} {'cost x':>7}  FD check")
    for name, key, ref, val, err, nh, med, ratio, check in rows:
        verdict = "" if check is None else f"{check:.1e} " + ("recorded" if check <= FD_CHECK_RTOL else "REFUSED")
        print(f"{name:<22} {key:<22} {ref:>11.6g} {val:>11.6g} {err:>9.1e} {nh:>5d} {1e3 * med:>9.1f} {ratio:>7.2f}  "
              f"{verdict}")
    print(f"\n(cost x: the probe's median time over {repeats} interleaved repeat(s), relative to the exact math-SDPA "
          "probe of the same model; compiled MLP: to the exact probe of the eager model. FD check: the relative "
          "disagreement of v'Hv at the step and a quarter of it along the eigenvector (2 more products, not in the "
          f"time); above {FD_CHECK_RTOL:g} the monitor records nothing)")


if __name__ == "__main__":
    main()
