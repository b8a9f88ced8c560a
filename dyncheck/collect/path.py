"""``traj/c<i>``: a fixed sketch of the weight vector (:class:`~dyncheck.measure.trajectory.Sketch`, ``trajectory_dim``
coordinates drawn once from the trainable parameters), every ``trajectory_every_n_steps`` steps, for the trajectory
PCA of the report (:func:`~dyncheck.measure.trajectory.pca`; read back with
:func:`~dyncheck.measure.trajectory.read_sketch`, or ``run.metrics("traj/c*")`` and ``run.series``).

The sketch at step s is of the weights step s's forward runs with (taken at the step's start), so that it pairs
with ``loss/train`` at s. Per measuring step: one ``index_select`` per tensor that has coordinates, into a row of a
buffer preallocated on the device (``MAX_PENDING`` rows; no host synchronisation); off the schedule nothing.
Values are rank zero's (under DDP every process holds the same weights). Sharded parameters (FSDP2 DTensors): off.
Parameters added to an optimizer during training are not in the sketch (it is fixed at the start of the run, so
that all its snapshots are comparable); the coordinates are drawn again identically at a resumed fit from the same
parameter sizes.

Default schedule: about ``TARGET_SNAPSHOTS`` snapshots over the planned run (every ``planned // 100`` steps, at
least 1), every ``OPEN_EVERY`` steps when the run's length is unknown. The snapshots stay on the device until
every ``EMIT_EVERY_FLUSHES``-th flush (at most ``MAX_PENDING`` of them; all at the end of the fit and at
checkpoints), so that the store writes each of the 1024 series once per eight flushes rather than at every flush;
a process killed with SIGKILL loses the snapshots not yet written (the other series are written at every flush).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import MeasureError
from ..measure.trajectory import SEED, Sketch
from .base import Collector, interned

__all__ = ["TrajectoryCollector"]

TARGET_SNAPSHOTS = 100
OPEN_EVERY = 50
#: snapshots are emitted in bulk: every this many flushes, or when this many are held (1024 x 4 bytes each)
EMIT_EVERY_FLUSHES = 8
MAX_PENDING = 64


class TrajectoryCollector(Collector):
    name = "trajectory"
    metrics = ("traj/c*",)
    reduce = "none"
    schedule = "trajectory"

    def __init__(self, *, every_n: int | None, dim: int = 1024) -> None:
        super().__init__()
        self.every_n, self.dim = every_n, dim

    @dataclass
    class Fit:
        every: int = 0
        sketch: Sketch | None = None
        params: list[Tensor] | None = None
        names: tuple[str, ...] = ()
        snapshots: int = 0
        pending: list = field(default_factory=list)  # (step, row of buffer) not yet emitted
        overflow: list = field(default_factory=list)  # (step, sketch) beyond the buffer's rows
        buffer: Tensor | None = None  # MAX_PENDING x dim on the parameters' device
        flushes: int = 0  # flushes since the last emission

    @dataclass
    class Saved:
        sizes: list | None = None  # parameter sizes the sketch was drawn for (a resume must see the same)

    def start(self, ctx) -> None:
        super().start(ctx)
        every = self.every_n
        if every is None:
            every = max(1, (ctx.planned_steps or 0) // TARGET_SNAPSHOTS) if ctx.planned_steps else OPEN_EVERY
        self.fit.every = every
        if every == 0 or self.dim <= 0 or not ctx.has_store:
            self.enabled = False
            return
        if ctx.sharded:
            self.turn_off(ctx.start_step, MeasureError("the parameters are sharded DTensors (FSDP2 / tensor "
                                                       "parallelism): the sketch would see this process's share "
                                                       "only"), what="is not supported")
            return
        params = [p for p in ctx.module.parameters() if p.requires_grad and not p.is_complex()]
        if not params:
            self.enabled = False
            return
        sizes = [p.numel() for p in params]
        if self.saved.sizes is not None and self.saved.sizes != sizes:
            self.turn_off(ctx.start_step, MeasureError("the trainable parameters changed since the sketch was "
                                                       "drawn: the snapshots of this fit are not comparable with "
                                                       "the earlier ones"))
            return
        self.saved.sizes = sizes
        self.fit.sketch = Sketch(sizes, self.dim, seed=SEED)
        self.fit.params = params
        self.fit.names = interned(tuple(f"traj/c{i}" for i in range(self.fit.sketch.dim)))

    def due(self, step: int) -> bool:
        return self.fit.every > 0 and step % self.fit.every == 0

    def step_start(self, step: int) -> None:
        fit = self.fit
        assert fit.sketch is not None and fit.params is not None
        if fit.buffer is None:  # MAX_PENDING rows, allocated once; a row is free again once it was flushed
            fit.buffer = torch.empty((MAX_PENDING, fit.sketch.dim), dtype=torch.float32,
                                     device=fit.params[0].device)
        if len(fit.pending) >= MAX_PENDING:  # no flush came in between (flush_every_n_steps > MAX_PENDING x every)
            fit.overflow.append((step, fit.sketch.take(fit.params)))
        else:
            fit.pending.append((step, fit.sketch.take(fit.params, out=fit.buffer[len(fit.pending)])))
        fit.snapshots += 1

    def before_flush(self, final: bool) -> None:
        """The snapshots held back go to the store every ``EMIT_EVERY_FLUSHES`` flushes (or at ``MAX_PENDING``
        snapshots, the end of the fit, a checkpoint): the store's cost is per series and flush (~6 us per series),
        so 1024 series written at every flush would cost more than the snapshots themselves."""
        fit, ctx = self.fit, self.ctx
        fit.flushes += 1
        if not fit.pending or not (final or fit.flushes >= EMIT_EVERY_FLUSHES or len(fit.pending) >= MAX_PENDING):
            return
        assert ctx is not None
        for step, values in fit.pending + fit.overflow:  # the flush that follows copies the rows (stack)
            ctx.emit(step, fit.names, values, self.reduce)
        fit.pending, fit.overflow = [], []
        fit.flushes = 0

    def meta(self) -> dict[str, Any]:
        fit = self.fit
        if fit.sketch is None:
            return {}
        return {"trajectory": {"every_n_steps": fit.every, "dim": fit.sketch.dim, "of_parameters": fit.sketch.total,
                               "snapshots": fit.snapshots, "method": "fixed random coordinate subset",
                               "seed": SEED}}
