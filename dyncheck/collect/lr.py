"""``lr/<Optimizer>/pg<j>``: each param group's learning rate, on the scalars schedule, read as Python floats
(no device work). A learning rate that is not a number (e.g. Adafactor's ``lr=None``) is left out with one
warning; the others are then read one by one."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Collector, interned

__all__ = ["LearningRateCollector"]


class LearningRateCollector(Collector):
    name = "lr"
    metrics = ("lr/*",)
    reduce = "none"  # the same on every process
    schedule = "scalars"

    @dataclass
    class Fit:
        names: tuple[str, ...] = ()  # lr/<opt>/pg<j> of every param group, in order (remade when groups change)
        slow: bool = False  # a learning rate that is not a number was seen: read them one by one
        off: set[str] = field(default_factory=set)  # names turned off

    def step_start(self, step: int) -> None:
        ctx, fit = self.ctx, self.fit
        assert ctx is not None
        lrs = None
        if not fit.slow:
            try:
                lrs = [float(g["lr"]) for opt, _ in ctx.optimizers for g in opt.param_groups]
            except Exception:  # a learning rate that is not a number
                fit.slow = True
        if lrs is None:
            names, lrs = self._one_by_one(step)
        else:
            if len(lrs) != len(fit.names):  # param groups added during training
                fit.names = interned(tuple(f"lr/{oname}/pg{j}" for opt, oname in ctx.optimizers
                                           for j in range(len(opt.param_groups))))
            names = fit.names
        if lrs:
            ctx.emit_host(step, names, lrs)

    def _one_by_one(self, step: int) -> tuple[tuple[str, ...], list[float]]:
        ctx, off = self.ctx, self.fit.off
        assert ctx is not None
        names: list[str] = []
        vals: list[float] = []
        for opt, oname in ctx.optimizers:
            for j, g in enumerate(opt.param_groups):
                name = f"lr/{oname}/pg{j}"
                if name in off:
                    continue
                try:
                    vals.append(float(g["lr"]))
                    names.append(name)
                except Exception as exc:
                    off.add(name)
                    ctx.failed("lr", [(name, exc)], step)
        return interned(tuple(names)), vals
