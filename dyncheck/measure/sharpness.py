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

__all__ = ["ShardedInner", "EigResult", "hvp_operator", "fd_hvp_operator", "fd_smoothness_check", "lanczos_top_eig",
           "power_iteration_top_eig", "stability_threshold", "preserved_training_state", "SharpnessSchedule"]


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


#: the finite-difference step, relative: ``eps = FD_REL_STEP * ||w|| / ||v||`` moves the weights by this share of
#: their norm (each weight by about 1e-5 of their root mean square). In float32 a central difference balances
#: truncation (eps^2, and ReLU kinks crossed) against rounding (u ||g|| / eps); on GPT-2, a TransformerEncoder (ReLU),
#: a CNN and an MLP, top eigenvalues at 1e-4 are off by up to 150% (kinks, layer-norm gains), at 1e-5 by at most
#: 3e-4 (benchmarks/sharpness_contexts.py)
FD_REL_STEP = 1e-5


class ShardedInner:
    """Inner products of vectors spread over processes: each process holds its parts of the parameters (the
    local shards of DTensors, FSDP2) flattened in one vector; ``inner(a, b)`` is the global ``a . b`` -- the local
    products, each tensor's weighted by ``1 / replicas`` (a part held by several processes counts once), summed
    over the processes by one ``all_reduce``. ``a`` may be a matrix of row vectors (one product per row, one
    collective). Every process must call it the same number of times, in the same order."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        from .tensors import local_part, replicas

        local = [local_part(p) for p in params]
        self.sizes = [t.numel() for t in local]
        self.device = local[0].device if local else torch.device("cpu")
        counts = [replicas(p) for p in params]
        self.weights: Tensor | None = None
        if any(c != 1 for c in counts):
            self.weights = torch.cat([torch.full((n,), 1.0 / c, dtype=torch.float64, device=t.device)
                                      for n, c, t in zip(self.sizes, counts, local)])

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        if self.weights is not None:
            a = a * self.weights.to(a.dtype)
        out = (a @ b).detach().clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(out)
        return out

    def norm(self, v: Tensor) -> float:
        return math.sqrt(max(float(self(v, v)), 0.0))

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process."""
        t = torch.tensor([0.0 if flag else 1.0], device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(t)
        return float(t) == 0.0


def fd_hvp_operator(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], *,
                    rel_step: float = FD_REL_STEP, inner: ShardedInner | None = None
                    ) -> tuple[Callable[[Tensor], Tensor], int]:
    """Return ``(matvec, n)``: ``matvec(v)`` is the central difference ``(g(w + eps v) - g(w - eps v)) / (2 eps)``,
    an approximation of H v from first-order gradients only, for where double backward is impossible (reentrant
    gradient checkpointing, compiled graphs without double backward, FSDP). ``loss_fn()`` computes the loss at
    the current weights; ``eps = rel_step * ||w|| / ||v||`` (``rel_step`` when the weights are zero).

    Each product costs two forwards and two backwards. The weights are saved once and copied back after every
    product (never added and subtracted), so they are bit-exactly the same afterwards; the ``.grad`` of ``params``
    are left as they were. The random number generators are reset to their state at the call of this function
    before every ``loss_fn()``, so that dropout masks are the same in every evaluation (the caller restores them
    for the training, e.g. with :func:`preserved_training_state`). Gradients come from ``torch.autograd.grad``, or,
    where that is refused (reentrant checkpointing accepts ``.backward()`` only), from ``loss.backward()``. The
    difference is taken in float32 (float64 for float64 parameters). ``n`` counts every parameter (those without
    a gradient have zero rows).

    ``inner`` (a :class:`ShardedInner` for the same ``params``): the parameters are DTensors (FSDP2). The vectors
    are then this process's parts (its local shards, flattened; ``n`` counts them), the weights written are the
    local shards (FSDP2's next all-gather reads them), the gradients are read from ``.grad`` after
    ``loss.backward()`` (FSDP2 reduce-scatters them; ``autograd.grad`` does not reach sharded parameters), and
    ``||w||``, ``||v||`` are global, so that every process takes the same step. Every process must call
    ``matvec`` together (each forward and backward is a collective)."""
    from .tensors import local_part

    params = [p for p in params]
    if not params:
        raise MeasureError("no parameters to differentiate")
    low = sorted({str(p.dtype).replace("torch.", "") for p in params if p.dtype.itemsize < 4})
    if low:  # w + eps v would round back to w: a zero product, silently
        raise MeasureError(f"finite differences need float32 or float64 weights, some are {', '.join(low)} (a step "
                           "of 1e-5 of their scale is below their rounding)")
    targets = [local_part(p) for p in params] if inner is not None else params  # what is written
    sizes = [t.numel() for t in targets]
    n = sum(sizes)
    saved = [t.detach().clone() for t in targets]
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    if inner is None:
        w_norm = math.sqrt(sum(float(w.to(dtype).pow(2).sum()) for w in saved))
    else:
        flat = torch.cat([w.reshape(-1).to(dtype) for w in saved])
        w_norm = inner.norm(flat)
        del flat
    mode = {"backward": inner is not None}
    cuda = sorted({p.device.index or 0 for p in params if p.is_cuda})
    rng = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]

    def reset_rng() -> None:
        torch.set_rng_state(rng[0])
        for d, st in zip(cuda, rng[1]):
            torch.cuda.set_rng_state(st, d)

    def gradients() -> list[Tensor]:
        reset_rng()
        loss = loss_fn()
        if not mode["backward"]:
            try:
                gs = torch.autograd.grad(loss, params, allow_unused=True)
                return [g.detach().to(dtype) if g is not None else torch.zeros_like(p, dtype=dtype)
                        for g, p in zip(gs, params)]
            except RuntimeError as exc:
                if "checkpoint" not in str(exc):  # not reentrant checkpointing's refusal of .grad()
                    raise
                mode["backward"] = True
                reset_rng()
                loss = loss_fn()
        before = [p.grad for p in params]
        try:
            for p in params:
                p.grad = None
            loss.backward()
            return [local_part(p.grad).detach().to(dtype) if p.grad is not None else
                    torch.zeros_like(t, dtype=dtype) for p, t in zip(params, targets)]
        finally:
            for p, g in zip(params, before):
                p.grad = g

    def matvec(v: Tensor, step: float | None = None) -> Tensor:
        v_norm = float(v.norm()) if inner is None else inner.norm(v)
        if v_norm == 0:
            return torch.zeros_like(v)
        eps = (rel_step if step is None else step) * (w_norm if w_norm > 0 else 1.0) / v_norm
        parts = [c.view_as(t) for c, t in zip(torch.split(v.to(dtype), sizes), targets)]
        grads = []
        try:
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for t, w, c in zip(targets, saved, parts):
                        t.copy_((w.to(dtype) + (sign * eps) * c).to(t.dtype))
                grads.append(gradients())
        finally:
            with torch.no_grad():
                for t, w in zip(targets, saved):
                    t.copy_(w)
        hv = torch.cat([((a - b) / (2 * eps)).reshape(-1) for a, b in zip(*grads)])
        return hv.to(v.dtype)

    matvec.device = targets[0].device  # type: ignore[attr-defined]
    matvec.rel_step = rel_step  # type: ignore[attr-defined]
    return matvec, n


#: the finite-difference check: v'Hv along the top eigenvector at the step and at a quarter of it must agree this
#: well (smooth losses: to ~1e-4), or the gradient is not smooth there and the value is not recorded
FD_CHECK_RTOL = 1e-2


def fd_smoothness_check(matvec: Callable[..., Tensor], vector: Tensor,
                        inner: ShardedInner | None = None) -> tuple[float, float]:
    """``(q, q_quarter)``: the Rayleigh quotient ``v'Hv`` of the unit ``vector`` by a :func:`fd_hvp_operator`
    product at its step and at a quarter of it (two products). Where the gradient has kinks along ``v`` (ReLU,
    max-pool: a unit changes side within the step), the central difference measures the jump over the step, not a
    curvature, and Lanczos seeks out exactly those directions: the two quotients then disagree (by about the step
    ratio), while on smooth losses they agree to rounding."""
    dot = torch.dot if inner is None else inner
    v = vector / (vector.norm() if inner is None else inner.norm(vector))
    q = float(dot(matvec(v), v))
    q4 = float(dot(matvec(v, step=matvec.rel_step / 4), v))  # type: ignore[attr-defined]
    return q, q4


def _start_vector(n: int, v0: Tensor | None, generator: torch.Generator | None, device, dtype,
                  inner: ShardedInner | None = None) -> Tensor:
    def norm_of(v: Tensor) -> Tensor:
        return v.norm() if inner is None else torch.tensor(inner.norm(v), dtype=v.dtype, device=v.device)

    ok = v0 is not None and v0.numel() == n and bool(torch.isfinite(v0).all())
    if inner is not None:  # every process must take the same branch
        ok = inner.all(ok)
    if ok:
        v = v0.detach().to(device=device, dtype=dtype).clone()  # type: ignore[union-attr]
    else:
        v = torch.randn(n, generator=generator, dtype=dtype).to(device)
    norm = norm_of(v)
    if not torch.isfinite(norm) or norm == 0:
        v = torch.randn(n, generator=generator, dtype=dtype).to(device)
        norm = norm_of(v)
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
    inner: ShardedInner | None = None,
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

    ``inner`` (a :class:`ShardedInner`): the vectors are this process's parts of vectors spread over processes
    (FSDP2's local shards, ``n`` their size here); every inner product and norm is then global, so every process
    computes the same tridiagonal matrix, the same value and the same stopping step, and returns its part of the
    eigenvector. Every process must call it together.
    """
    if max_iter < 1:
        raise ValueError(f"lanczos_top_eig(max_iter={max_iter}): expected >= 1")
    device = device if device is not None else getattr(matvec, "device", "cpu")
    q = _start_vector(n, v0, generator, device, dtype, inner)

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return a @ b if inner is None else inner(a, b).to(a.dtype)

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
        alpha = dot(w, q)
        w = w - alpha * q
        if q_prev is not None:
            w = w - betas[-1] * q_prev
        if reorthogonalize and basis is not None:
            b = basis[: j + 1]
            w = w - b.T @ dot(b, w)
            w = w - b.T @ dot(b, w)  # twice is enough (Kahan-Parlett)
        beta = float(w.norm()) if inner is None else inner.norm(w)
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


# ----------------------------------------------------------------------------------------------------------------
# when to probe
# ----------------------------------------------------------------------------------------------------------------
#: The budget schedule's rules (README, "Sharpness schedule"). The first probe comes at 1% of a planned run, but at
#: least 3 steps in (two step times measured to plan with) and at most 20 steps in; open-ended runs (length
#: unknown) try at step 10. Probes are at least MIN_SPACING steps apart.
FIRST_PROBE_SHARE = 0.01
FIRST_PROBE_MIN, FIRST_PROBE_MAX, FIRST_PROBE_OPEN = 3, 20, 10
MIN_SPACING = 4
#: The floor for short runs: a run of at least FLOOR_MIN_STEPS steps may spend more than the budget, as much as
#: FLOOR_PROBES probes cost in all, but never more than the budget of a FLOOR_RUN_STEPS-step run (the time of
#: budget x 3000 training steps: at the default 2%, 60 steps, 20% of a 300-step run) nor FLOOR_SECONDS. (A cold
#: probe costs about 20 training steps of a small CNN, a warm one about 10: a run of a few hundred steps gets 4-6
#: values, for at most 2 s.)
FLOOR_PROBES = 8
FLOOR_MIN_STEPS = 200
FLOOR_RUN_STEPS = 3000
FLOOR_SECONDS = 2.0
#: Before any probe was measured, one is attempted only when the allowance left covers this many training steps
#: per product (``max_iter`` of them); the attempt stops after its second product if ``max_iter`` would not fit
PRECHECK_STEPS_PER_ITER = 0.25
#: A warm start (from the previous eigenvector) is assumed to need this share of the products the cold start
#: needed, until one was measured; then the measured ones, smoothed (weight of the newest)
WARM_SHARE_PRIOR = 0.4
WARM_WEIGHT = 0.5
#: Smoothing of the measured probe costs (in log space, weight of the newest measurement, each measurement
#: moving the estimate by at most a factor 2 ** EMA_WEIGHT) and of the step time (see ``_observe``)
EMA_WEIGHT = 0.3
STEP_TIME_WINDOW_MIN, STEP_TIME_WINDOW_SHARE = 50, 0.2
#: Re-planning makes the spacing at most this much denser than the last gap (sparser at once, for the budget;
#: the first gap, planned before a warm start was measured, does not count);
#: between two probes the plan is re-made this many times with the step time measured since
SHRINK_LIMIT = 0.85
LOOKS_PER_GAP = 4
#: The first probe of a fit also pays one-time initialisation (kernels, allocations) in its graph build: until
#: the second probe's replaces it, the graph build is assumed to cost at most this many products
FIRST_GRAPH_MAX_HVPS = 2.0


class SharpnessSchedule:
    """Which optimizer steps take a sharpness probe: the budget schedule, or a fixed one. Pure bookkeeping --
    the caller passes its clock (training seconds so far, probe time excluded) -- so it is tested with fake ones.

    Per step ``step`` the caller asks :meth:`due` (one comparison); only then ``limit = admit(step, train_s)``:
    ``None`` means not now (``next_step`` has moved on), else probe and report with :meth:`record`, or with
    :meth:`record_abort` when the probe stopped after its first products because ``max_iter`` of them would have
    cost more than ``limit`` seconds (``limit`` is finite only while no probe has been measured).

    Budget schedule (``every_n`` None): probes may take ``budget`` of the training time -- the planned training
    time of the run when its length ``total_steps`` is known (time so far + step time x steps left), the time so
    far when not -- raised for runs of at least ``FLOOR_MIN_STEPS`` steps to what ``FLOOR_PROBES`` probes cost,
    but at most the budget of a ``FLOOR_RUN_STEPS``-step run and ``FLOOR_SECONDS``. Costs are measured: the step
    time (smoothed, re-measured a few times between probes) and the probe cost, modelled as graph build + products
    x time per product (the median product, smoothed), with the number of products a warm start needs.

    With a known length the first probe comes at 1% of the run; after it, the probes the allowance left pays for
    are spread evenly over the steps left (spacing ``steps left / floor(allowance left / predicted cost)``, at
    most 15% denser than the last gap, sparser at once): while costs hold still the spacing does too, and the last
    probe lands near the end. With an unknown length the spacing is the steady-state one, ``cost / (share x step
    time)``, and a probe waits until the allowance covers it, so savings never turn into bursts.

    Fixed schedule (``every_n`` N > 0): every step that is a multiple of N. ``every_n`` 0, or a zero budget
    without ``every_n``: no probes.
    """

    def __init__(self, *, budget: float, every_n: int | None = None, total_steps: int | None = None,
                 start_step: int = 0, max_iter: int = 20) -> None:
        self.budget = float(budget)
        self.every_n = every_n
        self.total = int(total_steps) if total_steps is not None and total_steps > 0 else None
        self.start = int(start_step)
        self.max_iter = int(max_iter)
        if every_n == 0 or (not every_n and self.budget <= 0):
            self.mode = "off"
        elif every_n:
            self.mode = "fixed"
        else:
            self.mode = "planned" if self.total is not None else "open"
        if self.total is not None:
            offset = min(max(round(FIRST_PROBE_SHARE * self.total), FIRST_PROBE_MIN), FIRST_PROBE_MAX)
        else:
            offset = FIRST_PROBE_OPEN
        self.first_step = self.start + offset
        self.next_step: float
        if self.mode == "off":
            self.next_step = math.inf
        elif self.mode == "fixed":
            assert every_n is not None
            self.next_step = -(-self.start // every_n) * every_n
        else:
            self.next_step = self.start + 1  # calibration: step times are measured from here
        self.spent = 0.0  # seconds all probes (and stopped attempts) took
        self.steps: list[int] = []
        self.costs: list[float] = []
        self.n_hvps: list[int] = []
        self.aborted = 0
        self._waste = 0.0  # seconds of stopped attempts
        self.spacing: float | None = None  # the last planned spacing
        self.floor_used = False  # the floor raised the allowance above the budget (at the last look)
        self.allowance_s: float | None = None  # the allowance at the last look
        self._clock: tuple[int, float] | None = None  # (step, train seconds) at the last admit
        self._tau: float | None = None  # smoothed training seconds per step
        self._graph: float | None = None  # smoothed seconds of the graph build (forward + backward, create_graph)
        self._hvp: float | None = None  # smoothed seconds per Hessian-vector product
        self._n_cold: int | None = None
        self._n_warm: float | None = None

    # -- cost model --------------------------------------------------------------------------------------------
    @property
    def step_time(self) -> float | None:
        """Smoothed training seconds per step (None before two steps were timed)."""
        return self._tau

    def _observe(self, step: int, train_s: float) -> None:
        if self._clock is not None and step > self._clock[0]:
            n = step - self._clock[0]
            rate = max((train_s - self._clock[1]) / n, 1e-12)
            # weighted by the steps it covers, against a window of a fifth of the run so far (at least 50 steps):
            # a running mean early on, following lasting changes later
            w = min(1.0, n / max(STEP_TIME_WINDOW_MIN, STEP_TIME_WINDOW_SHARE * (step - self.start)))
            self._tau = rate if self._tau is None else (1 - w) * self._tau + w * rate
        self._clock = (step, train_s)

    def probe_cost(self, cold: bool = False) -> float | None:
        """Predicted seconds of the next probe (warm-started unless ``cold``); None before one was measured."""
        if self._graph is None or self._hvp is None:
            return None
        if cold or self._n_cold is None:
            n = float(self.max_iter)
        elif self._n_warm is not None:
            n = self._n_warm
        else:
            n = max(1.0, WARM_SHARE_PRIOR * self._n_cold)
        return self._graph + self._hvp * min(n, self.max_iter)

    def allowance(self, train_s: float, steps: int) -> float:
        """Seconds all probes may take in ``train_s`` seconds of training over ``steps`` steps."""
        a = self.budget * train_s
        self.floor_used = False
        if steps >= FLOOR_MIN_STEPS:
            floor = self._floor()
            if floor > a:
                a, self.floor_used = floor, True
        self.allowance_s = a
        return a

    def _floor(self) -> float:
        """The floor's allowance (for runs of at least FLOOR_MIN_STEPS steps)."""
        tau = self._tau if self._tau is not None else 0.0
        return min(self.budget * FLOOR_RUN_STEPS * tau, FLOOR_SECONDS, self._floor_need())

    def _floor_need(self) -> float:
        """What the first FLOOR_PROBES probes cost (measured, and predicted for those not taken yet), with the
        attempts that were stopped."""
        c = self.probe_cost()
        if c is None:
            return math.inf
        return self._waste + sum(self.costs[:FLOOR_PROBES]) + max(0, FLOOR_PROBES - len(self.steps)) * c

    def _left(self, step: int, train_s: float) -> float:
        """Seconds the allowance has left: of the planned run, or of the time so far."""
        assert self._tau is not None
        if self.mode == "planned":
            assert self.total is not None
            planned = train_s + self._tau * (self.start + self.total - step)
            return self.allowance(planned, self.total) - self.spent
        return self.allowance(train_s, step - self.start) - self.spent

    # -- the schedule ------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step >= self.next_step

    def admit(self, step: int, train_s: float) -> float | None:
        """At a due step: ``None`` (not now; ``next_step`` moved on) or the seconds the probe's worst case
        (``max_iter`` products) may cost (``inf``: no limit). Between probes the schedule looks a few times
        (``LOOKS_PER_GAP``) to re-plan with the step time measured since."""
        if self.mode == "off":
            self.next_step = math.inf
            return None
        if self.mode == "fixed":
            assert self.every_n
            self.next_step = (step // self.every_n + 1) * self.every_n
            return None if step % self.every_n else math.inf
        self._observe(step, train_s)
        if self._tau is None:  # the calibration step
            self.next_step = max(self.first_step, step + 2)
            return None
        left = self._left(step, train_s)
        c = self.probe_cost(cold=not self.steps)
        if c is None:  # nothing measured yet
            need = PRECHECK_STEPS_PER_ITER * self.max_iter * self._tau
            if left >= need:
                self.next_step = math.inf  # record / record_abort plan the next one
                return left
            return self._wait(step, train_s, self.spent + need)
        if self.steps:
            target = self._target(left, c)
            if target is None:
                self.next_step = math.inf
                return None
            if step < target:  # a look between probes: the plan is re-made, the probe waits
                self._schedule(step, target)
                return None
        if c <= left * (1 + 1e-9):
            self.next_step = math.inf
            return math.inf
        return self._wait(step, train_s, self.spent + c)

    def _wait(self, step: int, train_s: float, need: float) -> None:
        """Not now: move ``next_step`` to where the allowance may cover ``need`` seconds in all."""
        if self.mode == "planned":  # costs rose above what the run's allowance can pay
            self.next_step = math.inf
            return None
        tau = self._tau
        assert tau is not None
        train_need = need / self.budget if self.budget > 0 else math.inf  # training seconds the budget needs
        at = step + (train_need - train_s) / tau
        if need <= self._floor():  # the floor pays for it once the run is long enough
            at = min(at, self.start + FLOOR_MIN_STEPS)
        self.next_step = max(step + 1, math.ceil(at)) if math.isfinite(at) else math.inf
        return None

    def record(self, step: int, cost: float, *, n_hvp: int, graph_s: float, cold: bool,
               hvp_s: float | None = None, products_s: float | None = None) -> None:
        """A probe at ``step`` took ``cost`` seconds, ``graph_s`` of them building the gradient graph, and
        ``n_hvp`` Hessian-vector products (``cold``: from a random start vector). ``hvp_s``: the typical
        (median) product's seconds, ``products_s`` all products' (by default, the rest of ``cost`` spread evenly):
        a product slowed by one-time initialisation or another process does not count as typical."""
        self.spent += cost
        self.steps.append(step)
        self.costs.append(cost)
        self.n_hvps.append(n_hvp)
        n = max(n_hvp, 1)
        rest = max(cost - graph_s, 0.0)
        if hvp_s is None or products_s is None:
            hvp_s = rest / n
        else:  # the typical product, plus the per-iteration bookkeeping outside the products
            hvp_s += max(rest - products_s, 0.0) / n
        if len(self.steps) == 1:
            graph_s = min(graph_s, FIRST_GRAPH_MAX_HVPS * hvp_s)
        self._learn(graph_s, hvp_s, first_graph=len(self.steps) == 2)
        if cold:
            self._n_cold = n_hvp
        else:  # products are not clock noise: followed faster than times
            self._n_warm = float(n_hvp) if self._n_warm is None else \
                (1 - WARM_WEIGHT) * self._n_warm + WARM_WEIGHT * n_hvp
        self._plan(step)

    def record_abort(self, step: int, cost: float, *, graph_s: float, hvp_s: float) -> None:
        """A probe stopped early (after ``graph_s`` seconds of graph build and products of ``hvp_s`` seconds):
        ``max_iter`` products would have cost more than allowed."""
        self.spent += cost
        self._waste += cost
        self.aborted += 1
        self._learn(graph_s, hvp_s)
        if self.mode == "fixed":
            return
        assert self._clock is not None
        train_s = self._clock[1]
        c = self.probe_cost(cold=True)
        assert c is not None
        if self._left(step, train_s) >= c:
            self.next_step = step + MIN_SPACING
        else:
            self._wait(step, train_s, self.spent + c)

    def _learn(self, graph_s: float, hvp_s: float, first_graph: bool = False) -> None:
        """``first_graph``: the first graph build that did not pay initialisation; it replaces the guess."""
        self._graph = graph_s if self._graph is None or first_graph else _ema(self._graph, graph_s)
        self._hvp = hvp_s if self._hvp is None else _ema(self._hvp, hvp_s)

    def _plan(self, step: int) -> None:
        """After a probe at ``step``: where the next one goes."""
        if self.mode in ("off", "fixed"):
            return
        assert self._clock is not None
        c = self.probe_cost()
        assert c is not None
        target = self._target(self._left(step, self._clock[1]), c)
        if target is None:
            self.next_step = math.inf
        else:
            self._schedule(step, target)

    def _target(self, left: float, c: float) -> int | None:
        """The step of the next probe after the last one, with ``left`` seconds of allowance and probes of ``c``
        seconds; None: no more probes (planned runs)."""
        last = self.steps[-1]
        assert self._tau is not None
        if self.mode == "planned":
            assert self.total is not None
            remaining = self.start + self.total - 1 - last  # steps after the last probe, up to the last step
            k = math.floor(left / c * (1 + 1e-9))  # probes the allowance left pays for
            if k < 1 or remaining < MIN_SPACING:
                self.spacing = None
                return None
            d = remaining / k  # spread evenly, the last near the end of the run
        else:
            share = max((left + self.spent) / max(self._clock[1] if self._clock else 0.0, 1e-12), 1e-12)
            d = c / (share * self._tau)  # the spacing at which probes spend exactly the share
            if not math.isfinite(d):
                self.spacing = None
                return None
        if len(self.steps) > 2:  # denser only gradually (noisy costs), sparser at once (the budget); the first
            d = max(d, SHRINK_LIMIT * (last - self.steps[-2]))  # gap, planned on the warm-cost prior, is free
            if self.mode == "planned":
                d = min(d, remaining)  # but a probe the allowance pays for still comes, at the last step
        self.spacing = max(float(MIN_SPACING), d)
        return last + max(MIN_SPACING, round(d))

    def _schedule(self, step: int, target: int) -> None:
        assert self.spacing is not None
        self.next_step = min(target, step + max(MIN_SPACING, math.ceil(self.spacing / LOOKS_PER_GAP)))

    def facts(self) -> dict:
        """What the run's metadata records about the schedule."""
        gaps = np.diff(self.steps) if len(self.steps) > 1 else np.zeros(0, dtype=int)
        out: dict = {"mode": self.mode, "planned_steps": self.total, "probes": len(self.steps),
                     "first_step": self.steps[0] if self.steps else None,
                     "planned_first_step": self.first_step if self.mode in ("planned", "open") else None,
                     "time_s": round(self.spent, 6)}
        if self.mode == "fixed":
            out["every_n_steps"] = self.every_n
        if self.mode in ("planned", "open"):
            c = self.probe_cost()
            out.update({
                "spacing_mean": round(float(gaps.mean()), 3) if len(gaps) else None,
                "spacing_min": int(gaps.min()) if len(gaps) else None,
                "spacing_max": int(gaps.max()) if len(gaps) else None,
                "spacing_planned": round(self.spacing, 3) if self.spacing is not None else None,
                "step_time_s": round(self._tau, 9) if self._tau is not None else None,
                "probe_cost_s": round(c, 6) if c is not None else None,
                "first_probe_s": round(self.costs[0], 6) if self.costs else None,
                "n_hvp_mean": round(float(np.mean(self.n_hvps)), 3) if self.n_hvps else None,
                "allowance_s": round(self.allowance_s, 6) if self.allowance_s is not None else None,
                "floor_used": self.floor_used, "aborted": self.aborted,
            })
        return out


def _ema(old: float, new: float) -> float:
    """Exponential smoothing in log space with the step clipped to a factor 2: a spike (another process on the
    machine) moves the estimate by at most 2 ** EMA_WEIGHT, a lasting change is followed in a few measurements."""
    if old <= 0 or new <= 0:
        return (1 - EMA_WEIGHT) * old + EMA_WEIGHT * new
    step = min(max(math.log(new / old), -math.log(2)), math.log(2))
    return old * math.exp(EMA_WEIGHT * step)
