"""Accuracy of dyncheck's sharpness estimate against the exact top Hessian eigenvalue.

For small networks (a dense Hessian is affordable: < ~3000 parameters) this compares

- ``lanczos_top_eig`` (through ``hvp_operator``, float32, as the monitor runs it) with ``max_iter=30`` and the
  default ``tol=1e-4`` (and, for comparison, ``tol=1e-3``);
- the same with ``max_iter=20`` (the monitor's default ``sharpness_max_iter``) and without reorthogonalisation
  (what the monitor does when ``n * max_iter > 64M``);
- ``power_iteration_top_eig`` with ``max_iter=1000, tol=1e-3``;

against the exact largest *algebraic* eigenvalue of the dense Hessian (computed with ``torch.func`` --
forward-over-reverse, as ``torch.func.hessian``, in column chunks to bound memory -- over a flat float64 parameter
vector through ``torch.func.functional_call``, then ``torch.linalg.eigvalsh`` in float64).

Cases:

(a) tanh MLP on make_moons at initialisation;
(b) ReLU MLP on a digits subset after a few hundred full-batch GD steps;
(c) tiny CNN on a digits subset at initialisation;
(d1) "edge of stability", close top eigenvalues: two copies of (a) whose second loss is scaled by 0.995, so the
     Hessian is blockdiag(H, 0.995 H) and the top two eigenvalues are 0.5% apart;
(d2) edge of stability by training: a tanh MLP trained by full-batch GD (MSE) at learning rate eta until its
     sharpness sits at ~2/eta (the measured gap (lambda1-lambda2)/lambda1 is printed; it is not small here);
(e) largest-magnitude eigenvalue negative: L_mlp(a) - c * L_logreg(b) (a maximisation objective of a convex model
    plus a smaller-magnitude positive part): Lanczos must return the largest ALGEBRAIC eigenvalue, power iteration
    returns the largest-magnitude (negative) one.

Per case and method: relative error |est - exact| / |exact| and Hessian-vector products (``EigResult.n_hvp``),
median (and worst) over several random start vectors (``torch.Generator`` seeds 0, 1, ...).

Target: relative error <= 1e-3 within 30 Hessian-vector products (Lanczos, max_iter=30, default tol=1e-4).

Usage: ``python benchmarks/sharpness_accuracy.py [--quick] [--starts N]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jvp, grad, vmap

from dyncheck.measure import hvp_operator, lanczos_top_eig, power_iteration_top_eig

TARGET_REL_ERR = 1e-3
TARGET_HVP = 30


# ----------------------------------------------------------------------------------------------------------------
# exact Hessian
# ----------------------------------------------------------------------------------------------------------------
def dense_hessian(module: nn.Module, loss_fn: Callable[[Callable], Tensor], chunk: int = 256):
    """Dense float64 Hessian of ``loss_fn(call)`` w.r.t. all parameters of ``module`` (flattened in
    ``named_parameters`` order), where ``call(*inputs)`` runs the module with the given parameters."""
    m64 = copy.deepcopy(module).double()
    names = [n for n, _ in m64.named_parameters()]
    shapes = [p.shape for _, p in m64.named_parameters()]
    sizes = [p.numel() for _, p in m64.named_parameters()]
    buffers = dict(m64.named_buffers())
    flat = torch.cat([p.detach().reshape(-1) for _, p in m64.named_parameters()])

    def f(z: Tensor) -> Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(z, sizes), shapes)}
        return loss_fn(lambda *inputs: functional_call(m64, {**params, **buffers}, inputs))

    n = flat.numel()
    g = grad(f)

    def column(e: Tensor) -> Tensor:  # H e, forward-over-reverse (what torch.func.hessian vmaps over the identity)
        return jvp(g, (flat,), (e,))[1]

    cols = []
    eye = torch.eye(n, dtype=torch.float64)
    for i in range(0, n, chunk):
        cols.append(vmap(column)(eye[i:i + chunk]))
    h = torch.cat(cols)
    return (h + h.T) / 2, f, flat


def check_against_func_hessian(module: nn.Module, loss_fn) -> float:
    """Max |H_chunked - torch.func.hessian| on one small case (a sanity check of the chunked computation)."""
    h, f, flat = dense_hessian(module, loss_fn)
    ref = hessian(f)(flat)
    return float((h - ref).abs().max())


# ----------------------------------------------------------------------------------------------------------------
# data and cases
# ----------------------------------------------------------------------------------------------------------------
def moons(n: int = 200):
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.1, random_state=0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def digits(n: int, image: bool = False):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32) / 16.0
    x = x.reshape(-1, 1, 8, 8) if image else x
    return x, torch.tensor(d.target[:n], dtype=torch.long)


@dataclass
class Case:
    label: str
    module: nn.Module
    loss_fn: Callable[[Callable], Tensor]  # loss_fn(call) with call(*inputs) -> module output
    note: str = ""
    spectrum: Tensor | None = None  # exact eigenvalues, ascending (cached)


def tanh_mlp(hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, out))


def make_cases(quick: bool) -> list[Case]:
    cases = []
    # (a) tanh MLP on moons at init
    xm, ym = moons(200)
    torch.manual_seed(0)
    mlp_a = tanh_mlp(32, 2)
    cases.append(Case("(a) tanh MLP, moons, init", mlp_a, _ce_case(xm, ym)))

    # (b) ReLU MLP on digits, after full-batch GD
    xd, yd = digits(256)
    torch.manual_seed(1)
    mlp_b = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    steps_b = 30 if quick else 300
    opt = torch.optim.SGD(mlp_b.parameters(), lr=0.5)
    for _ in range(steps_b):
        opt.zero_grad()
        nn.functional.cross_entropy(mlp_b(xd), yd).backward()
        opt.step()
    cases.append(Case(f"(b) ReLU MLP, digits, {steps_b} GD steps", mlp_b, _ce_case(xd, yd)))

    # (c) tiny CNN on digits at init
    xi, yi = digits(128, image=True)
    torch.manual_seed(2)
    cnn = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    cases.append(Case("(c) tiny CNN, digits, init", cnn, _ce_case(xi, yi)))

    # (d1) two copies of (a), the second loss scaled by 0.995: Hessian blockdiag(H, 0.995 H)
    cases.append(Case("(d1) EoS: blockdiag(H, 0.995 H) of (a)", _Pair(copy.deepcopy(mlp_a), copy.deepcopy(mlp_a)),
                      _pair_loss(xm, ym, 1.0, 0.995)))

    # (d2) edge of stability reached by full-batch GD (MSE) at learning rate eta
    eta = 0.4
    torch.manual_seed(0)
    eos = tanh_mlp(16, 1)
    xs, ys = moons(200)
    target = ys.float() * 2 - 1
    steps = 200 if quick else 1500
    opt = torch.optim.SGD(eos.parameters(), lr=eta)
    for _ in range(steps):
        opt.zero_grad()
        (((eos(xs).squeeze(-1) - target) ** 2).mean() / 2).backward()
        opt.step()
    cases.append(Case(f"(d2) EoS: GD eta={eta} MSE, {steps} steps", eos, _mse_case(xs, target),
                      note=f"2/eta = {2 / eta:g}"))

    # (e) maximisation objective: L_mlp(a) - c * L_logreg (convex, so -c H_logreg is negative semidefinite)
    torch.manual_seed(3)
    logreg = nn.Linear(64, 10)
    xl, yl = digits(256)
    cases.append(Case("(e) L_mlp(a) - 3 L_logreg: neg. end", _Pair(copy.deepcopy(mlp_a), logreg),
                      _mixed_loss(xm, ym, xl, yl, 3.0)))
    return cases


class _Pair(nn.Module):
    """Two sub-networks evaluated on their own inputs: ``forward(x, which)``."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor, which: int) -> Tensor:
        return self.a(x) if which == 0 else self.b(x)


# Losses: ``loss(call, dtype)``; ``call(*inputs)`` runs the network (the module itself, or its float64 copy with
# the parameters of the dense-Hessian computation); ``dtype`` is the dtype of that network.
def _ce_case(x: Tensor, y: Tensor):
    def loss(call, dtype=torch.float32):
        return nn.functional.cross_entropy(call(x.to(dtype)), y)
    return loss


def _mse_case(x: Tensor, t: Tensor):
    def loss(call, dtype=torch.float32):
        return ((call(x.to(dtype)).squeeze(-1) - t.to(dtype)) ** 2).mean() / 2
    return loss


def _pair_loss(x: Tensor, y: Tensor, wa: float, wb: float):
    def loss(call, dtype=torch.float32):
        xx = x.to(dtype)
        return wa * nn.functional.cross_entropy(call(xx, 0), y) + wb * nn.functional.cross_entropy(call(xx, 1), y)
    return loss


def _mixed_loss(xa: Tensor, ya: Tensor, xb: Tensor, yb: Tensor, c: float):
    def loss(call, dtype=torch.float32):
        return nn.functional.cross_entropy(call(xa.to(dtype), 0), ya) \
            - c * nn.functional.cross_entropy(call(xb.to(dtype), 1), yb)
    return loss


# ----------------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------------
METHODS = {
    "lanczos it=30": dict(kind="lanczos", max_iter=30, tol=1e-4, reorthogonalize=True),
    "lanczos it=20 (monitor)": dict(kind="lanczos", max_iter=20, tol=1e-4, reorthogonalize=True),
    "lanczos it=30 no reorth": dict(kind="lanczos", max_iter=30, tol=1e-4, reorthogonalize=False),
    "lanczos it=30 tol=1e-3": dict(kind="lanczos", max_iter=30, tol=1e-3, reorthogonalize=True),
    "power it=1000": dict(kind="power", max_iter=1000, tol=1e-3),
}


def exact_spectrum(case: Case) -> Tensor:
    if case.spectrum is None:
        h, _, _ = dense_hessian(case.module, lambda call: case.loss_fn(call, torch.float64))
        case.spectrum = torch.linalg.eigvalsh(h)
    return case.spectrum


def estimate(case: Case, method: dict, seed: int):
    params = [p for p in case.module.parameters() if p.requires_grad]
    loss = case.loss_fn(case.module)
    matvec, n = hvp_operator(loss, params)
    gen = torch.Generator().manual_seed(seed)
    kw = {k: v for k, v in method.items() if k != "kind"}
    if method["kind"] == "lanczos":
        return lanczos_top_eig(matvec, n, generator=gen, **kw), n
    return power_iteration_top_eig(matvec, n, generator=gen, **kw), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--starts", type=int, default=None, help="random start vectors per case and method")
    args = ap.parse_args()
    starts = args.starts or (2 if args.quick else 7)
    torch.manual_seed(0)
    t_all = time.perf_counter()

    cases = make_cases(args.quick)
    if args.quick:
        cases = [c for c in cases if not c.label.startswith("(c)")]  # the CNN's dense Hessian is the slow one
    # sanity check of the chunked dense Hessian against torch.func.hessian on case (a)
    diff = check_against_func_hessian(cases[0].module, lambda call: cases[0].loss_fn(call, torch.float64))
    print(f"chunked dense Hessian vs torch.func.hessian on {cases[0].label}: max |diff| = {diff:.2e}")

    rows = []
    for case in cases:
        t = time.perf_counter()
        ev = exact_spectrum(case)
        lam1, lam2, lamn = float(ev[-1]), float(ev[-2]), float(ev[0])
        n_total = ev.numel()
        gap = (lam1 - lam2) / abs(lam1)
        print(f"\n{case.label}: {n_total} parameters, exact lambda_max = {lam1:.6g}, lambda_2 = {lam2:.6g}, "
              f"lambda_min = {lamn:.6g}, gap (l1-l2)/l1 = {gap:.4g}"
              + (f", {case.note}" if case.note else "") + f"  [dense Hessian {time.perf_counter() - t:.1f}s]",
              flush=True)
        # start vectors interleaved across methods (seed 0: all methods, seed 1: all methods, ...)
        res: dict[str, list] = {m: [] for m in METHODS}
        for seed in range(starts):
            for name, method in METHODS.items():
                r, n = estimate(case, method, seed)
                res[name].append(r)
        for name, rs in res.items():
            errs = [abs(r.value - lam1) / abs(lam1) for r in rs]
            hvps = [r.n_hvp for r in rs]
            med_err, worst = statistics.median(errs), max(errs)
            med_value = statistics.median(r.value for r in rs)
            conv = sum(r.converged for r in rs)
            ok = med_err <= TARGET_REL_ERR and statistics.median(hvps) <= TARGET_HVP
            rows.append(dict(case=case.label, gap=gap, method=name, value=med_value, exact=lam1, med_err=med_err,
                             worst=worst, hvp=statistics.median(hvps), hvp_max=max(hvps), conv=f"{conv}/{len(rs)}",
                             ok=ok, n=n))
            print(f"  {name:<24} median estimate {med_value:.6g}  rel err median {med_err:.2e} worst {worst:.2e}  "
                  f"n_hvp median {statistics.median(hvps):g} max {max(hvps)}  converged {conv}/{len(rs)}")

    print(f"\nSummary (median over {starts} random start vectors; target: rel err <= {TARGET_REL_ERR:g} within "
          f"{TARGET_HVP} HVPs for Lanczos)")
    head = f"{'case':<42} {'gap':>8} {'method':<24} {'estimate':>10} {'exact':>10} {'rel err':>9} {'worst':>9} " \
           f"{'HVPs':>6} {'conv':>5}  target"
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        case = r["case"] if r["case"] != last else ""
        gap = f"{r['gap']:.4f}" if r["case"] != last else ""
        last = r["case"]
        target = ""
        if r["method"] == "lanczos it=30":
            target = "ok" if r["ok"] else "MISSED"
            if r["ok"] and r["worst"] > TARGET_REL_ERR:
                target = "ok (median); worst start MISSED"
        hv = f"{r['hvp']:g}" + ("" if r["hvp_max"] == r["hvp"] else f"-{r['hvp_max']}")
        print(f"{case:<42} {gap:>8} {r['method']:<24} {r['value']:>10.5g} {r['exact']:>10.5g} {r['med_err']:>9.2e} "
              f"{r['worst']:>9.2e} {hv:>6} {r['conv']:>5}  {target}")
    print("gap = (lambda1 - lambda2)/lambda1 of the exact spectrum; HVPs = EigResult.n_hvp (median, '-max' when the "
          "worst start differed); conv = starts whose own stopping test was met.")
    close_gap_misses(cases, 10 if args.quick else 50)
    print(f"total {time.perf_counter() - t_all:.1f}s")


def close_gap_misses(cases: list[Case], n_starts: int) -> None:
    """For cases whose top two eigenvalues are within 1%: how often Lanczos stops on lambda_2 (a residual below
    tol * |theta| only says that *some* eigenvalue is near theta), at the target tol and at a 10x smaller one."""
    print(f"\nClose top eigenvalues: Lanczos (max_iter=30) over {n_starts} start vectors, misses = rel err > "
          f"{TARGET_REL_ERR:g}")
    head = f"{'case':<42} {'tol':>7} {'misses':>8} {'median err':>11} {'worst err':>10} {'median HVPs':>12} {'max':>4}"
    print(head)
    print("-" * len(head))
    for case in cases:
        ev = exact_spectrum(case)
        lam1, lam2 = float(ev[-1]), float(ev[-2])
        if (lam1 - lam2) / abs(lam1) >= 0.01:
            continue
        params = [p for p in case.module.parameters() if p.requires_grad]
        matvec, n = hvp_operator(case.loss_fn(case.module), params)
        errs: dict[float, list[float]] = {1e-3: [], 1e-4: []}
        hvps: dict[float, list[int]] = {1e-3: [], 1e-4: []}
        for seed in range(n_starts):
            for tol in errs:
                r = lanczos_top_eig(matvec, n, max_iter=30, tol=tol, generator=torch.Generator().manual_seed(seed))
                errs[tol].append(abs(r.value - lam1) / abs(lam1))
                hvps[tol].append(r.n_hvp)
        for tol in errs:
            misses = sum(e > TARGET_REL_ERR for e in errs[tol])
            print(f"{case.label:<42} {tol:>7g} {misses:>4}/{n_starts:<3} {statistics.median(errs[tol]):>11.2e} "
                  f"{max(errs[tol]):>10.2e} {statistics.median(hvps[tol]):>12g} {max(hvps[tol]):>4}")


if __name__ == "__main__":
    main()
