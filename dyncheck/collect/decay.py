"""``decay/<Optimizer>/pg<j>``: the share of each weight that weight decay alone takes per step, ``lr *
weight_decay`` of each param group whose ``weight_decay`` is a positive number, on the per-layer schedule, read
as Python floats (no device work). Groups without decay get no series.

For decoupled decay (``AdamW``; ``Adam``/``SGD`` variants that decay the weights directly) it is exactly the
fraction ``p <- p * (1 - lr * weight_decay)`` removes; for SGD's L2 term it is the same before momentum, which
multiplies it by up to ``1 / (1 - momentum)``. For a coupled L2 term under an adaptive optimizer (``Adam(...,
weight_decay=)``) the decay passes through the per-parameter rescaling and is no such fraction; the default pack
leaves those out. Typical runs take 1e-6 to 1e-4 per step (AdamW at lr 1e-3 with decay 0.01-0.1; SGD at lr 0.1
with 5e-4); at 5e-3 decay alone halves every weight in 140 steps."""

from __future__ import annotations

from .base import Collector, interned

__all__ = ["WeightDecayCollector"]


class WeightDecayCollector(Collector):
    name = "decay"
    metrics = ("decay/*",)
    reduce = "none"  # the same on every process
    schedule = "layers"

    def step_start(self, step: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        names: list[str] = []
        vals: list[float] = []
        for opt, oname in ctx.optimizers:
            for j, g in enumerate(opt.param_groups):
                wd, lr = g.get("weight_decay"), g.get("lr")
                if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not wd > 0:
                    continue  # no decay, or not a number (left alone: nothing to measure)
                try:
                    vals.append(float(lr) * float(wd))
                except (TypeError, ValueError):  # a learning rate that is not a number (lr says so)
                    continue
                names.append(f"decay/{oname}/pg{j}")
        if names:
            ctx.emit_host(step, interned(tuple(names)), vals)
