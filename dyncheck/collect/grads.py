"""Gradient statistics, from the final gradients of each optimizer step (after accumulation, all-reduce and AMP
unscaling, before clipping):

- ``grad_norm/total`` on the scalars schedule: the global L2 norm, reduced across processes as a norm (each
  process's per-tensor norms travel; the flush takes the norm of their stack);
- ``grad_norm/<param>`` and ``grad_nonfinite/<param>`` on the per-layer schedule (rank zero's values).

Sharded parameters (DTensors: FSDP2, tensor parallelism; ``ctx.sharded``): each process takes the norms and counts
of its local shards as shares (:mod:`dyncheck.measure.tensors`), reduced at the flush into the full tensors' values
(``"rss"``: the root of the summed squares; counts ``"sum"``); the global norm is this process's share of it, also
``"rss"``. No gradient is gathered.

The hot path is one :class:`~dyncheck.measure.tensors.NormPlan` call per optimizer: for dense float32-like gradients
one ``_foreach_norm`` and the ``stack`` of its results -- one vector kept per step, whose norm the flush takes for
all steps at once. (Keeping the 0-d results unstacked until the flush saves a kernel but costs more than it saves:
a flush interval's worth of small tensors alive at once made a 3.4 ms CNN step ~150 us slower, side by side.)
Plans are made at the first step and kept while the list keeps its make-up; a gradient whose norm cannot be taken
is left out (one warning)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..measure.tensors import nonfinite_counts
from .base import GRADIENTS, Collector, GradStep, interned

__all__ = ["GradientCollector"]

_TOTAL = ("grad_norm/total",)

class GradientCollector(Collector):
    name = "grad_norm"
    metrics = ("grad_norm/total", "grad_norm/*", "grad_nonfinite/*")
    reduce = "norm"
    needs = frozenset({GRADIENTS})
    schedule = "scalars"  # and "layers" for the per-tensor statistics

    @dataclass
    class Step:
        #: per-tensor gradient norms of each optimizer (a vector each)
        vecs: list[Tensor] = field(default_factory=list)

    def due(self, step: int) -> bool:
        # the norms are taken when either schedule wants them (``scalars_every_n_steps`` > 1 saves the kernels)
        return self._scalars.due(step) or self._layers.due(step)

    def start(self, ctx) -> None:
        super().start(ctx)
        self._scalars = ctx.schedules["scalars"]
        self._layers = ctx.schedules["layers"]

    def gradients(self, step: int, g: GradStep) -> None:
        ctx = self.ctx
        assert ctx is not None
        key = id(g.optimizer)
        named, grads = g.named, g.grads
        # one plan per optimizer while every parameter has a gradient (the common case: a cheap key)
        pkey = key if len(named) == len(g.params) else (key, tuple(n for n, _ in named))
        plan = ctx.plans.get(pkey)
        norms = None
        measuring = self._layers.due(step)
        if plan is not None:
            try:
                norms = plan(grads)
            except Exception:  # the gradients changed make-up (dtype, layout, device): plan again
                plan = None
        if plan is None:
            got = ctx.planned("grad_norm", pkey, named, grads, step)
            if got is not None:
                plan, norms = got
        if plan is not None and plan.kept != ():  # kept == (): every gradient left out
            self.now.vecs.append(norms)
            if measuring:
                names = tuple(n for n, _ in named)
                kept = names if plan.kept is None else tuple(names[i] for i in plan.kept)
                ctx.emit(step, interned(tuple(f"grad_norm/{n}" for n in kept)), norms,
                         "rss" if ctx.sharded else "none")
        if measuring:
            if ctx.sharded:
                counted = ctx.guarded("grad_nonfinite", named, grads, _shared_counts, step)
            else:
                counted = ctx.guarded("grad_nonfinite", named, grads, nonfinite_counts, step)
            if counted is not None:
                ctx.emit(step, interned(tuple(f"grad_nonfinite/{n}" for n in counted[0])), counted[1],
                         "sum" if ctx.sharded else "none")

    def step_end(self, step: int) -> None:
        vecs = self.now.vecs
        if vecs and self._scalars.due(step):
            ctx = self.ctx
            assert ctx is not None
            vec = vecs[0] if len(vecs) == 1 else torch.cat(vecs)
            if ctx.sharded:  # this process's share of the global norm (the flush reduces the shares)
                ctx.emit(step, _TOTAL, torch.linalg.vector_norm(vec).reshape(1), "rss")
            else:
                ctx.emit(step, _TOTAL, vec, "norm")


def _shared_counts(tensors) -> Tensor:
    return nonfinite_counts(tensors, shares=True)
