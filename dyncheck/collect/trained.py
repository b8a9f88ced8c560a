"""``model/untrained_share``: the share of the model's parameter elements that no optimizer trains -- frozen
(``requires_grad=False``, whether or not an optimizer holds them) or left out of every optimizer -- on the per-layer
schedule, counted on the host from the parameters' element counts (no device work). Tied parameters count once.
Under sharding (FSDP2, tensor parallelism), and when the optimizers hold none of the module's parameters (master
copies: DeepSpeed, fp32 masters), only ``requires_grad=False`` counts.

A frozen pre-trained backbone, an EMA copy or a distillation teacher are untrained by design; a freeze loop left on
a randomly initialised encoder, or an optimizer built from the head's parameters only, is the bug. The value tells
them apart only together with the loss (the ``frozen-parameters`` check): what a frozen part leaves the rest to
learn.

``model/max_dropout``: the largest drop probability ``p`` of the model's dropout modules (``nn.Dropout``,
``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``; 0 when it has none), on the same schedule, read from
the modules (dropout applied with ``F.dropout`` in ``forward`` is not seen). A keep-probability passed where a drop
probability is meant (0.9 for 0.1) zeroes most of what a layer passes on: with a training loss that barely falls it
is the over-regularization check's evidence."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import Collector

__all__ = ["TrainedShareCollector"]

_NAMES = ("model/untrained_share",)
_DROPOUT = ("model/max_dropout",)
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class TrainedShareCollector(Collector):
    name = "trained"
    metrics = _NAMES + _DROPOUT
    reduce = "none"  # the same on every process
    schedule = "layers"

    @dataclass
    class Fit:
        dropouts: list[nn.Module] | None = None  # the model's dropout modules (found at the first measuring step)

    def step_start(self, step: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        fit = self.fit
        if fit.dropouts is None:
            fit.dropouts = [m for m in ctx.module.modules() if isinstance(m, _DROPOUT_TYPES)]
        ctx.emit_host(step, _DROPOUT, [max((float(m.p) for m in fit.dropouts), default=0.0)])
        if not ctx.optimizers:
            return  # nothing to compare with
        held = {id(p) for opt, _ in ctx.optimizers for g in opt.param_groups for p in g["params"]}
        params = list(ctx.module.parameters())  # (each parameter once: tied weights are one)
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in params):
            return  # a lazy module before its first forward: no count yet
        # which parameters the optimizers hold says what they train -- unless they hold none of the module's (master
        # copies: DeepSpeed, fp32 masters of a half-precision model) or the module's are stand-ins (sharded: FSDP2
        # registers unsharded ones between forward and backward); then only requires_grad=False counts
        by_identity = not ctx.sharded and any(id(p) in held for p in params)
        total = untrained = 0
        for p in params:
            n = p.numel()
            total += n
            if not p.requires_grad or (by_identity and id(p) not in held):
                untrained += n
        if total:
            ctx.emit_host(step, _NAMES, [untrained / total])
