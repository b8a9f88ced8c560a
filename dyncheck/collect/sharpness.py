"""``sharpness/top_eig``, ``sharpness/n_hvp``, ``sharpness/threshold``: the top Hessian eigenvalue of the loss
on the probe batch (a copy of the run's first batch) by Lanczos on Hessian-vector products, at the weights the
step's loss is computed with (before its forward), on the budget schedule of
:class:`~dyncheck.measure.sharpness.SharpnessSchedule` (a share of the training time, ``sharpness_budget``) or a
fixed one (``sharpness_every_n_steps``). Values are rank zero's (the probe runs there only).

The probe tries the execution contexts of :data:`~dyncheck.measure.probe.PROBE_CONTEXTS` in order (exact double
backward with math attention and compiled code forced eager under the training precision; then finite
differences in float32) and keeps the first that works for the rest of the fit; the run's meta
``sharpness_probe`` says which ran, under what precision, and why the ones before it failed. Only when every
context fails is sharpness turned off (one warning, ``measurement_errors``, with each context's error)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import MeasureError
from ..measure.probe import PROBE_CONTEXTS, ProbeContext, as_probe_loss, eager_math
from ..measure.sharpness import (
    FD_CHECK_RTOL,
    SharpnessSchedule,
    ShardedInner,
    fd_hvp_operator,
    fd_smoothness_check,
    hvp_operator,
    lanczos_top_eig,
    preserved_training_state,
    stability_threshold,
)
from .base import PROBE_BATCH, Collector, interned

__all__ = ["SharpnessCollector"]

#: Lanczos basis sizes (values): full reorthogonalisation on the device up to 64M (256 MB in float32); above, the
#: basis is kept in host memory, only to return the eigenvector for warm starts, up to 256M values (1 GB)
_REORTH_MAX = 64_000_000
_HOST_BASIS_MAX = 256_000_000


#: probes of a sharded run (FSDP2) when no ``sharpness_every_n_steps`` is given: this many, evenly over the planned
#: steps (a fixed schedule: every process must probe at the same steps; the time budget differs between them)
SHARDED_PROBES = 8
#: the step between probes of a sharded run whose length is not known
SHARDED_EVERY_UNKNOWN = 500
#: how a sharded run (FSDP2 DTensor parameters) is probed, for the meta
SHARDED_NOTE = (
    "parameters are sharded DTensors (FSDP2 fully_shard): every process probes together, at the same steps (a "
    "fixed schedule), by finite differences (FSDP2 has no double backward); each process perturbs its own shards "
    "and the inner products are all-reduced; the loss is the mean of the processes' probe batches")


class _OverLimit(Exception):
    """A probe stopped after its first products (``args[0]``: the :class:`_TimedMatvec` that timed them)."""


class _TimedMatvec:
    """``matvec`` that times its products; with a finite ``limit``, raises :class:`_OverLimit` after the second
    product (the first may pay one-time initialisation) if ``max_iter`` products after the graph build
    (``graph_s``) would take more than ``limit`` seconds."""

    def __init__(self, matvec: Callable[[Tensor], Tensor], graph_s: float, limit: float, max_iter: int) -> None:
        self.matvec, self.graph_s, self.limit, self.max_iter = matvec, graph_s, limit, max_iter
        self.device = getattr(matvec, "device", "cpu")
        self.times: list[float] = []

    def __call__(self, v: Tensor) -> Tensor:
        t = time.perf_counter()
        out = self.matvec(v)
        self.times.append(time.perf_counter() - t)
        k = len(self.times)
        if k == min(2, self.max_iter) and math.isfinite(self.limit):
            if self.graph_s + sum(self.times) + self.hvp_s * (self.max_iter - k) > self.limit:
                raise _OverLimit(self)
        return out

    @property
    def hvp_s(self) -> float:
        """Typical seconds per product: the median (the first may pay one-time initialisation: it counts only
        when it is all there is)."""
        times = self.times[1:] or self.times
        return float(np.median(times)) if times else 0.0


class SharpnessCollector(Collector):
    name = "sharpness"
    metrics = ("sharpness/top_eig", "sharpness/n_hvp", "sharpness/threshold")
    reduce = "none"
    needs = frozenset({PROBE_BATCH})
    schedule = "budget"

    def __init__(self, *, budget: float, every_n: int | None, max_iter: int, tol: float) -> None:
        super().__init__()
        self.budget, self.every_n, self.max_iter, self.tol = budget, every_n, max_iter, tol

    @dataclass
    class Fit:
        schedule: SharpnessSchedule | None = None
        eigvec: Tensor | None = None  # the last probe's eigenvector: the next probe's warm start
        generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
        seconds: float = 0.0  # all probes (and stopped attempts) of this fit
        probes: int = 0
        context: int = 0  # the probe context (PROBE_CONTEXTS) tried first: the first that worked so far
        context_probes: dict[str, int] = field(default_factory=dict)  # probes per context name
        context_errors: list[dict[str, Any]] = field(default_factory=list)  # why a context failed (once each)
        sharded_every: int = 0  # > 0: a sharded run, probed at the multiples of this by every process
        precision: str | None = None  # what the probe's loss runs under (the adapter's ProbeLoss)
        fp32_precision: str | None = None  # what it runs under in float32 (the finite-difference context)
        fd_check: list[float] | None = None  # the last finite-difference check: v'Hv at the step, a quarter of it

    def start(self, ctx) -> None:
        super().start(ctx)
        self.fit.schedule = SharpnessSchedule(budget=self.budget, every_n=self.every_n,
                                              total_steps=ctx.planned_steps, max_iter=self.max_iter,
                                              start_step=ctx.start_step)
        if ctx.probe_loss is None or self.fit.schedule.mode == "off":
            self.enabled = False
            return
        trainable = [(n, p) for n, p in ctx.module.named_parameters() if p.requires_grad]
        complex_params = [n for n, p in trainable if p.is_complex()]
        step0 = self.fit.schedule.start
        if not trainable:
            self.turn_off(step0, MeasureError("the model has no trainable parameters"))
        elif complex_params:
            self.turn_off(step0, MeasureError(f"complex parameters ({', '.join(complex_params[:5])}): the Hessian "
                                          "probe works on real parameters only"))
        elif ctx.sharded:  # FSDP2: every process probes, at the same steps, by finite differences
            planned = ctx.planned_steps
            every = self.every_n or (max(1, planned // SHARDED_PROBES) if planned else SHARDED_EVERY_UNKNOWN)
            self.fit.sharded_every = every
            self.fit.context = next(i for i, pc in enumerate(PROBE_CONTEXTS) if pc.operator == "fd")

    @property
    def seconds(self) -> float:
        return self.fit.seconds

    def due(self, step: int) -> bool:
        sched, ctx, every = self.fit.schedule, self.ctx, self.fit.sharded_every
        if every:  # every process, at the same steps
            return ctx is not None and ctx.probe_batch is not None and (step - ctx.start_step) % every == 0
        return sched is not None and step >= sched.next_step and ctx is not None and ctx.has_store and \
            ctx.probe_batch is not None

    def step_start(self, step: int) -> None:
        sched, ctx = self.fit.schedule, self.ctx
        assert sched is not None and ctx is not None
        if self.fit.sharded_every:
            self._measure(step, math.inf)
            return
        try:
            limit = sched.admit(step, ctx.clock())
            if limit is not None:
                self._measure(step, limit)
        except Exception as exc:  # never break the training it observes
            self.turn_off(step, exc, "scheduling failed")

    def _lanczos(self, pc: ProbeContext, probe: Any, params: list[Tensor], limit: float,
                 t0: float) -> tuple[Any, _TimedMatvec, float]:
        """One probe in the context ``pc``: (Lanczos result, the timed operator, seconds of its graph build)."""
        ctx, fit = self.ctx, self.fit
        assert ctx is not None
        module, batch, max_iter = ctx.module, ctx.probe_batch, self.max_iter
        inner = ShardedInner(params) if fit.sharded_every else None
        if pc.operator == "exact":
            loss = probe(module, batch)
            matvec, n = hvp_operator(loss, params)
            del loss
        else:
            matvec, n = fd_hvp_operator(lambda: probe.fp32(module, batch) if pc.fp32 else probe(module, batch),
                                        params, inner=inner)
        graph_s = time.perf_counter() - t0
        timed = _TimedMatvec(matvec, graph_s, limit, max_iter)
        del matvec
        size = n * max_iter
        reorth, host = size <= _REORTH_MAX, size <= _HOST_BASIS_MAX
        if inner is not None:  # every process must take the same branches (their collectives must match)
            reorth, host = inner.all(reorth), inner.all(host)
        try:
            res = lanczos_top_eig(timed, n, max_iter=max_iter, tol=self.tol, v0=fit.eigvec,
                                  generator=fit.generator, reorthogonalize=reorth,
                                  basis_device="cpu" if host else None, inner=inner)
            if pc.operator == "fd" and res.vector is not None:
                q, q4 = fd_smoothness_check(timed.matvec, res.vector, inner)
                fit.fd_check = [q, q4]
                if not abs(q - q4) <= FD_CHECK_RTOL * max(abs(q), abs(q4)):
                    raise MeasureError(
                        f"the finite-difference Hessian is unreliable here: along the top eigenvector v'Hv is {q:.4g} "
                        f"at the step and {q4:.4g} at a quarter of it (the gradient is not smooth there: ReLU or "
                        "max-pool kinks); no value recorded")
        except BaseException:
            timed.matvec = None  # type: ignore[assignment]  # free the gradient graph before the next context
            raise
        return res, timed, graph_s

    def _measure(self, step: int, limit: float) -> None:
        """Probe at the current weights (those of step ``step``'s forward) and label the value ``step``. A finite
        ``limit`` (no probe measured yet): stop after the second product when ``max_iter`` of them would cost
        more than ``limit`` seconds in all, and let the schedule plan with the measured costs."""
        ctx, fit = self.ctx, self.fit
        assert ctx is not None and fit.schedule is not None and ctx.probe_loss is not None
        module, sched = ctx.module, fit.schedule
        if fit.sharded_every:  # the optimizers' DTensors: after an evaluation forward FSDP2 may leave unsharded
            # parameters registered on the module, whose storage it has freed
            held = {id(p): p for opt, _ in ctx.optimizers for g in opt.param_groups for p in g["params"]}
            params = [p for p in held.values() if p.requires_grad]
        else:
            params = [p for p in module.parameters() if p.requires_grad]
        probe = as_probe_loss(ctx.probe_loss)
        fit.precision, fit.fp32_precision = probe.precision, probe.fp32_precision
        cold = fit.eigvec is None
        t = time.perf_counter()
        graph_s = 0.0
        res = timed = None
        try:
            # TorchScript's profiling executor specialises its graphs by call history: the probe's forward must
            # not count, or the training after it would run other kernels (other roundings)
            with preserved_training_state(module, params), torch.enable_grad(), \
                    torch.jit.optimized_execution(False), eager_math():
                rng = _rng_state(params)
                while True:
                    pc = PROBE_CONTEXTS[fit.context]
                    _set_rng_state(rng)  # every context sees the dropout masks the first one saw
                    t_ctx = time.perf_counter()
                    try:
                        res, timed, graph_s = self._lanczos(pc, probe, params, limit, t_ctx)
                        break
                    except _OverLimit:
                        raise
                    except Exception as exc:
                        fit.context_errors.append({"context": pc.name, "error": type(exc).__name__,
                                                   "message": str(exc)[:500], "step": step})
                        if fit.context + 1 >= len(PROBE_CONTEXTS):
                            raise MeasureError("every probe context failed: " + "; ".join(
                                f"{e['context']}: {e['error']}: {e['message'][:160]}"
                                for e in fit.context_errors)) from exc
                        fit.context += 1
        except _OverLimit as over:  # a stopped attempt: its costs teach the schedule
            timed = over.args[0]
            graph_s = timed.graph_s
        except Exception as exc:  # a measurement must never end the training it observes
            self.turn_off(step, exc)
            return
        finally:
            if timed is not None:
                timed.matvec = None  # type: ignore[assignment]  # free the gradient graph
            cost = time.perf_counter() - t
            fit.seconds += cost
        if res is not None:
            name = PROBE_CONTEXTS[fit.context].name
            fit.context_probes[name] = fit.context_probes.get(name, 0) + 1
        assert timed is not None
        if res is None:
            sched.record_abort(step, cost, graph_s=graph_s, hvp_s=timed.hvp_s)
            return
        sched.record(step, cost, n_hvp=res.n_hvp, graph_s=graph_s, cold=cold, hvp_s=timed.hvp_s,
                     products_s=sum(timed.times))
        fit.probes += 1
        fit.eigvec = res.vector
        opts = [opt for opt, _ in ctx.optimizers]
        try:
            thr = stability_threshold(opts[0]) if opts else None  # this step's learning rate: not stepped yet
        except Exception:  # a learning rate that is not a number: no threshold
            thr = None
        names, vals = ["sharpness/top_eig", "sharpness/n_hvp"], [res.value, float(res.n_hvp)]
        if thr is not None:
            names.append("sharpness/threshold")
            vals.append(thr)
        ctx.emit_host(step, interned(tuple(names)), vals)

    def meta(self) -> dict[str, Any]:
        fit = self.fit
        out: dict[str, Any] = {"sharpness_time_s": round(fit.seconds, 6), "sharpness_probes": fit.probes}
        if fit.schedule is not None:
            out["sharpness_schedule"] = fit.schedule.facts()
        if fit.context_probes or fit.context_errors:
            pc = PROBE_CONTEXTS[fit.context]
            out["sharpness_probe"] = {
                "context": pc.name if fit.context_probes.get(pc.name) else None, "description": pc.description,
                "precision": fit.fp32_precision if pc.fp32 else fit.precision, "probes": dict(fit.context_probes),
                "failed": list(fit.context_errors)}
            if fit.fd_check is not None:
                out["sharpness_probe"]["fd_check"] = [round(q, 9) for q in fit.fd_check]
            if fit.sharded_every:
                out["sharpness_probe"]["sharded"] = {"every_n_steps": fit.sharded_every, "note": SHARDED_NOTE}
        return out


def _rng_state(params: list[Tensor]) -> tuple[Tensor, list[tuple[int, Tensor]]]:
    cuda = sorted({p.device.index or 0 for p in params if p.is_cuda})
    return torch.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in cuda]


def _set_rng_state(state: tuple[Tensor, list[tuple[int, Tensor]]]) -> None:
    torch.set_rng_state(state[0])
    for d, st in state[1]:
        torch.cuda.set_rng_state(st, d)
