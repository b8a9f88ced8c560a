"""``act/<stat>/<module>``: activation statistics of the selected modules' outputs (see
:mod:`dyncheck.measure.activations`), on the activations schedule. Forward hooks are attached only on the steps
that measure (at the step's start, after a sharpness probe, so the probe's forward does not count) and removed at
its end. Statistics reduce across processes as they combine across calls (mean, max, sum)."""

from __future__ import annotations

from dataclasses import dataclass

from ..measure.activations import ActivationRecorder, select_modules
from .base import FORWARD_HOOKS, Collector, interned

__all__ = ["ActivationCollector"]


class ActivationCollector(Collector):
    name = "activations"
    metrics = ("act/*",)
    reduce = "mean"  # "max" for max_abs, "sum" for nonfinite (measure.activations.STAT_REDUCE)
    needs = frozenset({FORWARD_HOOKS})
    schedule = "activations"

    def __init__(self, patterns: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.patterns = patterns

    @dataclass
    class Fit:
        recorder: ActivationRecorder | None = None

    def start(self, ctx) -> None:
        super().start(ctx)
        self._schedule = ctx.schedules["activations"]
        self.fit.recorder = ActivationRecorder(select_modules(ctx.module, self.patterns))

    def step_start(self, step: int) -> None:
        rec = self.fit.recorder
        if rec is not None:
            rec.attach()

    def step_end(self, step: int) -> None:
        ctx, rec = self.ctx, self.fit.recorder
        assert ctx is not None
        if rec is None:
            return
        rec.detach()
        self._schedule.take(step)
        failed = rec.take_errors()  # modules that could not be hooked or measured: turned off in the recorder
        if failed:
            ctx.failed("activations", [(name, exc) for name, exc in failed], step, target="layer")
        try:
            groups = rec.collect()
        except Exception as exc:
            self.fit.recorder = None
            self.enabled = False
            ctx.failed("activations", [(None, exc)], step)
            return
        for op, (names, values) in groups.items():
            ctx.emit(step, interned(tuple(names)), values, op)

    def close(self) -> None:
        if self.fit.recorder is not None:
            self.fit.recorder.detach()
        super().close()
