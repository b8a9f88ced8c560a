"""The gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training", appendix A), from squared gradient norms at two batch sizes.

With per-example gradients of mean G and covariance Σ, the mean gradient of a batch of B examples drawn at
random has E|G_B|² = |G|² + tr(Σ)/B. Two batch sizes B_small < B_big give two equations and the unbiased estimates

    |G|²  ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

Each is very noisy alone (|G|²'s can be negative); the paper smooths numerator and denominator separately over
time (:class:`NoiseEMA`) and takes their ratio. B_simple is the batch size at which the gradient's noise and its
signal are about equal: training at a batch far below it is noise-dominated (more steps, each less useful), far
above it wastes compute on examples that no longer sharpen the gradient.

:func:`micro_batch_sq_norms` is the measurement of the budgeted probe: a batch split into k equal micro-batches,
per-micro-batch gradients and their mean (the full batch's gradient when the loss is a mean over examples) give
|G_small|² (the mean over the k micro-batches of their squared norms: its estimate is unbiased too) and
|G_big|². With a fixed batch the algebra is the standard unbiased sample estimate: tr(Σ) comes out as the trace
of the batch's per-example sample covariance (1/(B−1)), |G|² as |G_B|² − tr(Σ)/B.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import MeasureError
from .sharpness import preserved_training_state
from .tensors import first_tensor

__all__ = ["NoiseEMA", "NoiseSchedule", "batch_size_of", "micro_batch_sq_norms", "noise_probe",
           "split_batch", "sq_norm", "two_batch_estimates"]


def two_batch_estimates(sq_small: float, sq_big: float, b_small: float, b_big: float) -> tuple[float, float]:
    """``(|G|², tr(Σ))``: the unbiased estimates from the squared norms of mean gradients at batch sizes
    ``b_small < b_big`` (module docstring)."""
    if not (0 < b_small < b_big):
        raise ValueError(f"two_batch_estimates(b_small={b_small}, b_big={b_big}): expected 0 < b_small < b_big")
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


@dataclass
class NoiseEMA:
    """Exponential moving averages of the two estimates, kept separately (as the paper does), with the usual
    bias correction (the first values are a weighted mean, not pulled towards zero): ``decay`` is the weight of
    the past. ``b_simple`` is their ratio, None while the smoothed |G|² is not positive."""

    decay: float = 0.95
    grad_sq_acc: float = 0.0
    trace_acc: float = 0.0
    weight: float = 0.0  # 1 - decay ** updates: the bias correction

    def update(self, grad_sq: float, trace: float) -> None:
        if not (math.isfinite(grad_sq) and math.isfinite(trace)):
            return  # a non-finite gradient (a blow-up) tells nothing about the noise scale
        d = self.decay
        self.grad_sq_acc = d * self.grad_sq_acc + (1 - d) * grad_sq
        self.trace_acc = d * self.trace_acc + (1 - d) * trace
        self.weight = d * self.weight + (1 - d)

    @property
    def grad_sq(self) -> float | None:
        return self.grad_sq_acc / self.weight if self.weight > 0 else None

    @property
    def trace(self) -> float | None:
        return self.trace_acc / self.weight if self.weight > 0 else None

    @property
    def b_simple(self) -> float | None:
        g2, tr = self.grad_sq, self.trace
        if g2 is None or tr is None or g2 <= 0 or tr <= 0:  # either estimate below 0: sampling noise, no scale
            return None
        return tr / g2


# ----------------------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------------------
def batch_size_of(batch: Any) -> int | None:
    """The leading dimension of the batch's first tensor (None: no tensor, or a 0-d one)."""
    t = first_tensor(batch)
    return int(t.shape[0]) if t is not None and t.dim() > 0 else None


def split_batch(batch: Any, index: Tensor, size: int) -> Any:
    """The examples ``index`` of ``batch``: every tensor with leading dimension ``size`` is indexed, anything else
    (a scalar, a string, a tensor of another shape) passes through; lists, tuples, named tuples and dicts are
    walked."""
    if isinstance(batch, Tensor):
        return batch[index.to(batch.device)] if batch.dim() > 0 and batch.shape[0] == size else batch
    if isinstance(batch, dict):
        return type(batch)({k: split_batch(v, index, size) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(split_batch(v, index, size) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(split_batch(v, index, size) for v in batch)
    return batch


# ----------------------------------------------------------------------------------------------------------------
# the probe
# ----------------------------------------------------------------------------------------------------------------
def _wide(t: Tensor) -> Tensor:
    """A gradient to sum in: dense, in float32 or wider (float64 and complex stay as they are)."""
    if t.layout != torch.strided:
        t = t.to_dense()
    return t if t.dtype in (torch.float64, torch.complex64, torch.complex128) else t.float()


def sq_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Sum of squared 2-norms of ``tensors`` (real for complex ones; sparse ones by their stored values), one
    0-d float tensor on the tensors' device."""
    parts = []
    for t in tensors:
        if t.layout != torch.strided:
            t = t.coalesce().values() if t.is_sparse else t.to_dense()
        wide = t.dtype in (torch.float64, torch.complex128)
        n = torch.linalg.vector_norm(t if wide or t.is_complex() else t.float())
        parts.append(n.double() ** 2 if wide else n.float() ** 2)  # float32 sums elsewhere (MPS has no float64)
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32
    return torch.stack([p.to(dtype) for p in parts]).sum()


def micro_batch_sq_norms(loss_fn: Callable[[Any], Tensor], batch: Any, params: Sequence[Tensor], k: int,
                         generator: torch.Generator | None = None, evaluate: int | None = None,
                         big: bool = True) -> tuple[float, float, int, int]:
    """``(|G_small|², |G_big|², b_small, b_big)`` from ``k`` equal micro-batches of ``batch`` (a random partition
    drawn with ``generator``; the remainder of an uneven split is left out): |G_small|² is the mean over the
    micro-batches of their gradients' squared norms, |G_big|² the squared norm of the mean of those gradients.
    ``evaluate``: only the first this many micro-batches are computed (b_big is then ``evaluate`` x b_small; a
    caller that has the whole batch's gradient anyway uses it as |G_big|² instead, at no cost, and passes
    ``big=False``: |G_big|² is then not computed, 0). Sparse, float64 and complex gradients are measured as such.
    ``loss_fn(micro_batch)`` must be the mean loss over the micro-batch's examples. ``.grad`` is not touched."""
    size = batch_size_of(batch)
    if size is None or size < 2:
        raise MeasureError(f"the probe batch has {size or 'no'} examples: two batch sizes need at least 2")
    k = max(2, min(k, size))
    b = size // k
    m = k if evaluate is None else max(1, min(evaluate, k))
    perm = torch.randperm(size, generator=generator)
    params = list(params)
    total: list[Tensor] | None = None
    small = None
    for i in range(m):
        loss = loss_fn(split_batch(batch, perm[i * b:(i + 1) * b], size))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [g.detach() for g in grads if g is not None]  # a parameter the loss does not use: zero
        sq = sq_norm(grads) if grads else torch.zeros(())
        small = sq if small is None else small + sq
        if big:
            wide = [_wide(g) for g in grads]
            if total is None:
                total = [w.clone() for w in wide]
            else:
                for a, w in zip(total, wide):
                    a.add_(w)
        del loss, grads
    assert small is not None
    sq_big = sq_norm(total) / (m * m) if total else torch.zeros((), dtype=small.dtype, device=small.device)
    vals = torch.stack([small.to(sq_big.device) / m, sq_big]).cpu().tolist()  # one transfer
    return float(vals[0]), float(vals[1]), b, b * m


def noise_probe(module: nn.Module, loss_fn: Callable[[nn.Module, Any], Tensor], batch: Any, k: int,
                generator: torch.Generator | None = None, evaluate: int | None = None, big: bool = True
                ) -> tuple[float, float, int, int]:
    """:func:`micro_batch_sq_norms` on ``module``'s trainable parameters with ``loss_fn(module, micro_batch)``,
    leaving no trace in the training (random generators, buffers, ``.grad``, train/eval flags restored by
    :func:`~dyncheck.measure.sharpness.preserved_training_state`)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise MeasureError("the model has no trainable parameters")
    # TorchScript's profiling executor specialises its graphs by call history: the probe's forwards must not count
    with preserved_training_state(module, params), torch.enable_grad(), torch.jit.optimized_execution(False):
        return micro_batch_sq_norms(lambda mb: loss_fn(module, mb), batch, params, k, generator, evaluate, big)


# ----------------------------------------------------------------------------------------------------------------
# when to measure
# ----------------------------------------------------------------------------------------------------------------
#: before the first measurement its cost is expected to be this many training steps (the probe costs one to two,
#: ``benchmarks/noise_scale.py``)
FIRST_COST_STEPS = 2.0


class NoiseSchedule:
    """When to measure: a fixed schedule (``every_n`` N > 0: the first step seen of each bucket of N steps), or a
    share ``budget`` of the training time (``every_n`` None): a measurement is due once what all measurements took,
    plus what the last one took (the next one's expected cost), is at most ``budget`` times the training seconds
    so far, at the earliest at the second step: after a measurement of c seconds the next comes about
    c / (budget x step time) steps later, and savings never turn into bursts. ``every_n`` 0, or a zero budget
    without ``every_n``: never.

    The first measurement's cost is expected to be :data:`FIRST_COST_STEPS` step times; it is due at the second
    step when the budget of the whole planned run (``planned_steps``, from ``start_step``; the time so far when
    unknown) covers that: a run too short to pay for one measurement gets none (before, its first came at the
    second step whatever it cost: 3% of a 60-step run of an 8.5M-parameter MLP at a 0.25% budget)."""

    def __init__(self, *, budget: float, every_n: int | None, start_step: int = 0,
                 planned_steps: int | None = None) -> None:
        self.budget, self.every_n, self.start = float(budget), every_n, int(start_step)
        self.planned = int(planned_steps) if planned_steps else None
        if every_n == 0 or (not every_n and self.budget <= 0):
            self.mode = "off"
        else:
            self.mode = "fixed" if every_n else "budget"
        self.spent = 0.0
        self.last = 0.0  # seconds of the last measurement: the next one's expected cost
        self.measured = 0
        self._bucket: int | None = None

    def due(self, step: int, train_s: float) -> bool:
        if self.mode == "off":
            return False
        if self.mode == "fixed":
            assert self.every_n
            return step // self.every_n != self._bucket
        if step <= self.start:
            return False
        if self.measured:
            return self.spent + self.last <= self.budget * train_s
        # FIRST_COST_STEPS step times against the budget of the planned run, or of the steps so far: in step times
        # both sides, so the clock cancels
        return FIRST_COST_STEPS <= self.budget * max(step - self.start, self.planned or 0)

    def record(self, step: int, seconds: float) -> None:
        self.spent += seconds
        self.last = seconds
        self.measured += 1
        if self.every_n:
            self._bucket = step // self.every_n

    def facts(self) -> dict:
        out: dict = {"mode": self.mode, "measurements": self.measured, "time_s": round(self.spent, 6)}
        if self.mode == "fixed":
            out["every_n_steps"] = self.every_n
        elif self.mode == "budget":
            out["budget"] = self.budget
        return out
