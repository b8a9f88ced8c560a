"""``loss/train``: the training loss of each optimizer step (the mean over its batches with gradient
accumulation), on the scalars schedule, averaged across processes."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import LOSS, Collector

__all__ = ["LossCollector"]

_NAMES = ("loss/train",)


class LossCollector(Collector):
    name = "loss"
    metrics = ("loss/train",)
    reduce = "mean"
    needs = frozenset({LOSS})
    schedule = "scalars"

    @dataclass
    class Step:
        total: Tensor | None = None  # sum of the batches' losses (on the device)
        count: int = 0

    def batch(self, step: int, loss: Tensor | None) -> None:
        if isinstance(loss, Tensor) and loss.numel() == 1:
            loss = loss.detach()
            now = self.now
            now.total = loss if now.total is None else now.total + loss
            now.count += 1

    def step_end(self, step: int) -> None:
        now = self.now
        if now.total is not None:
            assert self.ctx is not None
            self.ctx.emit(step, _NAMES, now.total if now.count == 1 else now.total / now.count, self.reduce)
