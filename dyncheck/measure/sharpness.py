"""Sharpness: the largest (algebraic) eigenvalue of the Hessian of a loss, by Hessian-vector products and Lanczos.

Lanczos builds a Krylov basis from Hessian-vector products (HVPs) and reads the top eigenvalue off a small
tridiagonal matrix. It converges much faster than power iteration when the top eigenvalues are close (edge of
stability), and it returns the largest *algebraic* eigenvalue, which power iteration (largest magnitude) does not
when the spectrum has a large negative end. Warm-starting from the previous top eigenvector cuts the HVPs needed
when sharpness is tracked over training.

The stability threshold of gradient descent on a quadratic is 2/lr; with heavy-ball momentum beta it is
(2 + 2 beta)/lr, with Nesterov momentum (2 + 2 beta)/((1 + 2 beta) lr). Sharpness above it means the iteration is
unstable along the top eigendirection ("edge of stability", Cohen et al. 2021).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import MeasureError

__all__ = ["EigResult", "hvp_operator", "lanczos_top_eig", "power_iteration_top_eig", "stability_threshold",
           "preserved_training_state"]


@dataclass
class EigResult:
    """A top-eigenvalue estimate: ``value``, the number of Hessian-vector products used, whether the residual
    bound met the tolerance, the residual norm ||H v - value v|| and the eigenvector estimate (flat, on device)."""

    value: float
    n_hvp: int
    converged: bool
    residual: float
    vector: Tensor | None = None


def hvp_operator(loss: Tensor, params: Sequence[Tensor]) -> tuple[Callable[[Tensor], Tensor], int]:
    """Return ``(matvec, n)``: ``matvec(v)`` is H v for a flat vector ``v`` of length ``n`` over ``params``.

    The gradient graph is built once (one forward and one backward with ``create_graph``); each product is then one
    more backward pass through it. ``.grad`` fields are not touched. Parameters whose gradient does not depend on
    any parameter (or that take no part in the loss) have zero Hessian rows and columns and are left out of ``n``.
    """
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    keep = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not keep:
        raise MeasureError("the probe loss has no second derivative with respect to any trainable parameter")
    kp = [params[i] for i in keep]
    kg = [grads[i] for i in keep]
    sizes = [p.numel() for p in kp]
    n = sum(sizes)

    def matvec(v: Tensor) -> Tensor:
        parts = [c.view_as(p).to(p.dtype) for c, p in zip(torch.split(v, sizes), kp)]
        hv = torch.autograd.grad(kg, kp, grad_outputs=parts, retain_graph=True, allow_unused=True)
        return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1).to(v.dtype)
                          for h, p in zip(hv, kp)])

    matvec.device = kp[0].device  # type: ignore[attr-defined]
    return matvec, n


def _start_vector(n: int, v0: Tensor | None, generator: torch.Generator | None, device, dtype) -> Tensor:
    if v0 is not None and v0.numel() == n and torch.isfinite(v0).all():
        v = v0.detach().to(device=device, dtype=dtype).clone()
    else:
        v = torch.randn(n, generator=generator, dtype=dtype).to(device)
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        v = torch.randn(n, generator=generator, dtype=dtype).to(device)
        norm = v.norm()
    return v / norm


def lanczos_top_eig(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    *,
    max_iter: int = 30,
    tol: float = 1e-4,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    reorthogonalize: bool = True,
    basis_device: torch.device | str | None = None,
) -> EigResult:
    """Largest algebraic eigenvalue of the symmetric operator ``matvec`` by Lanczos.

    Stops when the Ritz residual ``beta_k |s_k|`` is at most ``tol * |theta|`` (some eigenvalue is then within
    that of ``theta``), when the Krylov space is exhausted, or after ``max_iter`` products. The default ``tol`` of
    1e-4 is deliberately tighter than the usual 1e-3 accuracy goal: when the top two eigenvalues are within 1% (the
    edge of stability), a start vector with a small component along the top eigenvector can meet a 1e-3 residual
    on the second eigenvalue first; at 1e-4 it runs the one or two more products that resolve the pair.

    ``reorthogonalize`` keeps the whole basis (``max_iter * n`` values on ``device``) for full
    reorthogonalisation. Without it the three-term recurrence alone is used (ghost copies of converged eigenvalues
    may appear, which does not harm the top value) and the basis, kept only to return the eigenvector for warm
    starts, goes to ``basis_device`` (e.g. ``"cpu"``; ``None``: not kept, no vector returned).
    """
    if max_iter < 1:
        raise ValueError(f"lanczos_top_eig(max_iter={max_iter}): expected >= 1")
    device = device if device is not None else getattr(matvec, "device", "cpu")
    q = _start_vector(n, v0, generator, device, dtype)
    bdev = device if reorthogonalize else basis_device
    basis = torch.empty((min(max_iter, n), n), device=bdev, dtype=dtype) if bdev is not None else None
    alphas: list[float] = []
    betas: list[float] = []
    q_prev: Tensor | None = None
    theta, s, resid, converged = float("nan"), np.ones(1), float("inf"), False
    for j in range(min(max_iter, n)):
        if basis is not None:
            basis[j] = q.to(basis.device, non_blocking=True)
        w = matvec(q)
        alpha = torch.dot(w, q)
        w = w - alpha * q
        if q_prev is not None:
            w = w - betas[-1] * q_prev
        if reorthogonalize and basis is not None:
            b = basis[: j + 1]
            w = w - b.T @ (b @ w)
            w = w - b.T @ (b @ w)  # twice is enough (Kahan-Parlett)
        beta = float(w.norm())
        alphas.append(float(alpha))
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        evals, evecs = np.linalg.eigh(t)
        theta, s = float(evals[-1]), evecs[:, -1]
        resid = beta * abs(float(s[-1]))
        if not math.isfinite(theta) or not math.isfinite(beta):
            break
        if resid <= tol * max(abs(theta), 1e-30) or beta <= 1e-10 * max(abs(theta), 1e-30):
            converged = True
            break
        betas.append(beta)
        q_prev, q = q, w / beta
    k = len(alphas)
    vector = None
    if basis is not None and math.isfinite(theta):
        vector = (basis[:k].T @ torch.as_tensor(s, dtype=dtype, device=basis.device)).to(device)
    elif k == 1:
        vector = q
    return EigResult(theta, k, converged, resid, vector)


def power_iteration_top_eig(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-3,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> EigResult:
    """Power iteration, for comparison: converges to the eigenvalue of largest *magnitude*; stops when the
    Rayleigh quotient changes by at most ``tol`` relatively between two products."""
    device = device if device is not None else getattr(matvec, "device", "cpu")
    v = _start_vector(n, v0, generator, device, dtype)
    value, converged, k = float("nan"), False, 0
    for k in range(1, max_iter + 1):
        w = matvec(v)
        new = float(torch.dot(w, v))
        norm = w.norm()
        if norm == 0 or not torch.isfinite(norm):
            value = new
            break
        v = w / norm
        if math.isfinite(value) and abs(new - value) <= tol * max(abs(new), 1e-30):
            value, converged = new, True
            break
        value = new
    resid, n_hvp = float("inf"), k
    if math.isfinite(value):
        resid, n_hvp = float((matvec(v) - value * v).norm()), k + 1  # the residual costs one more product
    return EigResult(value, n_hvp, converged, resid, v)


def stability_threshold(optimizer: torch.optim.Optimizer, group: int = 0) -> float | None:
    """The sharpness above which the optimizer's iteration diverges on a quadratic: 2/lr for SGD, (2+2b)/lr with
    heavy-ball momentum b, (2+2b)/((1+2b) lr) with Nesterov momentum. ``None`` for optimizers without such a
    threshold in terms of the raw Hessian (Adam and other preconditioned methods) or a zero learning rate."""
    if not isinstance(optimizer, torch.optim.SGD):
        return None
    g = optimizer.param_groups[group]
    lr = float(g["lr"])
    if lr <= 0:
        return None
    beta = float(g.get("momentum", 0.0) or 0.0)
    damp = float(g.get("dampening", 0.0) or 0.0)
    eff = lr * (1.0 - damp) if beta > 0 else lr  # dampening scales the gradient fed into the momentum buffer
    if g.get("nesterov", False) and beta > 0:
        return (2.0 + 2.0 * beta) / ((1.0 + 2.0 * beta) * eff)
    return (2.0 + 2.0 * beta) / eff


def _torchmetrics_states(module: nn.Module) -> list[tuple[nn.Module, dict]]:
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover - torchmetrics comes with Lightning
        return []
    saved = []
    for m in module.modules():
        if isinstance(m, Metric):
            state = {k: getattr(m, k) for k in m._defaults}
            state = {k: (v.clone() if isinstance(v, Tensor) else list(v)) for k, v in state.items()}
            saved.append((m, {"states": state, "_update_count": m._update_count, "_computed": m._computed}))
    return saved


@contextlib.contextmanager
def preserved_training_state(module: nn.Module, params: Sequence[Tensor] = ()) -> Iterator[None]:
    """Run a probe on ``module`` and leave no trace: restores the CPU and CUDA random number generators, every
    buffer (BatchNorm running statistics and ``num_batches_tracked``), the ``.grad`` of ``params``, the
    train/eval flags and torchmetrics states. Optimizer state is never touched by the probe."""
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    grads = [(p, p.grad) for p in params]
    modes = [(m, m.training) for m in module.modules()]
    metrics = _torchmetrics_states(module)
    cuda_devices = sorted({b.device.index or 0 for b in list(module.parameters()) if b.is_cuda})
    try:
        with torch.random.fork_rng(devices=cuda_devices, enabled=True):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g
        for m, mode in modes:
            m.training = mode
        for m, st in metrics:
            for k, v in st["states"].items():
                setattr(m, k, v)
            m._update_count = st["_update_count"]
            m._computed = st["_computed"]
