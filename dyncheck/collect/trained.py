"""``model/untrained_share``: the share of the model's parameter elements that no optimizer trains -- frozen
(``requires_grad=False``, whether or not an optimizer holds them) or left out of every optimizer -- on the per-layer
schedule, counted on the host from the parameters' element counts (no device work). Tied parameters count once.
Under sharding (FSDP2, tensor parallelism) only ``requires_grad=False`` counts.

A frozen pre-trained backbone, an EMA copy or a distillation teacher are untrained by design; a freeze loop left on
a randomly initialised encoder, or an optimizer built from the head's parameters only, is the bug. The value tells
them apart only together with the loss (the ``frozen-parameters`` check): what a frozen part leaves the rest to
learn."""

from __future__ import annotations

from torch import nn

from .base import Collector

__all__ = ["TrainedShareCollector"]

_NAMES = ("model/untrained_share",)


class TrainedShareCollector(Collector):
    name = "trained"
    metrics = _NAMES
    reduce = "none"  # the same on every process
    schedule = "layers"

    def step_start(self, step: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        trained = {id(p) for opt, _ in ctx.optimizers for g in opt.param_groups for p in g["params"]
                   if p.requires_grad}
        total = untrained = 0
        for p in ctx.module.parameters():  # (each parameter once: tied weights are one)
            if isinstance(p, nn.parameter.UninitializedParameter):
                return  # a lazy module before its first forward: no count yet
            n = p.numel()
            total += n
            # (sharded: FSDP2 registers unsharded stand-ins on the module between forward and backward, objects
            # the optimizer does not hold -- there only requires_grad=False counts)
            if not p.requires_grad or (not ctx.sharded and id(p) not in trained):
                untrained += n
        if total:
            ctx.emit_host(step, _NAMES, [untrained / total])
