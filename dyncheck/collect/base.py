"""What every collector shares: the collector protocol, the schedules the monitor owns, the context a collector
collects into, and the one mechanism for measurements that cannot be taken.

A collector is a small object per metric family. It declares

- ``name``: the measurement it is (as recorded in the run's meta ``measurement_errors``),
- ``metrics``: the names it writes, as globs of the one name scheme (:data:`dyncheck.names.METRIC_TEMPLATES`),
- ``reduce``: how its values combine across processes (``"mean"``, ``"sum"``, ``"max"``, ``"min"``, ``"norm"`` -- the
  norm of the emitted vector, rank zero's --, ``"rss"`` -- the root of the sum over processes of the squares:
  norms of sharded tensors from each process's share, see :mod:`dyncheck.measure.tensors` --, ``"ratio"`` -- the
  first half of the vector divided by the second, each reduced as ``"rss"`` --, or ``"none"``: rank zero's),
- ``needs``: what it needs from the training step (:data:`GRADIENTS`, :data:`WEIGHTS_BEFORE_STEP`,
  :data:`FORWARD_HOOKS`, :data:`PROBE_BATCH`),
- ``schedule``: which of the monitor's schedules says when it is ``due(step)``,

and keeps its state in three visible places: ``self.fit`` (a fresh ``Fit()`` per fit), ``self.now`` (a fresh
``Step()`` per optimizer step) and ``self.saved`` (a ``Saved()`` that travels in checkpoints). It collects into the
:class:`Context` the monitor gives it at :meth:`Collector.start`: ``emit`` buffers device tensors, ``emit_host``
Python floats; a collector never writes to the store and never synchronises with the host.

The monitor calls, per optimizer step, on the steps the collector is ``due`` and only the hooks it overrides:
``step_start(step)`` (before the step's first forward), ``batch(step, loss)`` (each batch's loss),
``gradients(step, g)`` (final gradients of one optimizer, before it steps: a :class:`GradStep`),
``step_end(step)`` (after the optimizer step); whatever the schedule: ``new_parameters(step, named)``,
``before_flush(final)`` and ``flushed()``; and ``meta()`` at the end of the fit. An exception that escapes one of
them turns that collector off for the rest of the fit, with one warning and a record in ``measurement_errors``; the
training goes on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..measure.tensors import NormPlan

__all__ = [
    "FORWARD_HOOKS",
    "GRADIENTS",
    "LOSS",
    "PROBE_BATCH",
    "WEIGHTS_BEFORE_STEP",
    "Collector",
    "Context",
    "Every",
    "Failures",
    "GradStep",
    "Modulo",
    "interned",
]

#: the final gradients of each optimizer's parameters, once per optimizer step (after accumulation, all-reduce and
#: AMP unscaling, before clipping)
GRADIENTS = "gradients"
#: the weights before the optimizer step (for updates): the collector snapshots them in ``gradients``
WEIGHTS_BEFORE_STEP = "weights_before_step"
#: forward hooks on modules during the step's forward pass
FORWARD_HOOKS = "forward_hooks"
#: a batch of the run kept for probes (a copy of the first batch), and a loss function for it
PROBE_BATCH = "probe_batch"
#: the training loss of each batch (several per optimizer step with gradient accumulation)
LOSS = "loss"


class GradStep:
    """What the step gives at its final gradients, per optimizer: ``params`` every ``(name, parameter)`` the
    optimizer holds, ``named`` those that have a gradient, ``grads`` their gradients (in that order)."""

    __slots__ = ("grads", "named", "optimizer", "params")

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[tuple[str, Tensor]],
                 named: list[tuple[str, Tensor]], grads: list[Tensor]) -> None:
        self.optimizer, self.params, self.named, self.grads = optimizer, params, named, grads

_INTERNED: dict[tuple[str, ...], tuple[str, ...]] = {}


def interned(names: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple object per distinct name list, so that grouping at flush hashes cheaply."""
    return _INTERNED.setdefault(names, names)


# ----------------------------------------------------------------------------------------------------------------
# schedules (owned by the monitor: several collectors follow one, and its position travels in checkpoints)
# ----------------------------------------------------------------------------------------------------------------
class Modulo:
    """Due at the steps that are multiples of ``every``."""

    __slots__ = ("every",)

    def __init__(self, every: int) -> None:
        self.every = every

    def due(self, step: int) -> bool:
        return step % self.every == 0


class Every:
    """Due at the first step seen of each bucket of ``every`` steps (``step // every`` differs from the last bucket
    taken), so that a resumed or accumulating run measures once per bucket; ``every`` 0: never. ``last`` is the
    checkpointed position; :meth:`take` marks a bucket measured."""

    __slots__ = ("every", "last")

    def __init__(self, every: int, last: int | None = None) -> None:
        self.every, self.last = every, last

    def due(self, step: int) -> bool:
        return self.every > 0 and step // self.every != self.last

    def take(self, step: int) -> None:
        self.last = step // self.every


# ----------------------------------------------------------------------------------------------------------------
# what cannot be measured
# ----------------------------------------------------------------------------------------------------------------
class Failures:
    """Measurements that cannot be taken and are now turned off, for the run's meta ``measurement_errors``:
    ``{"measurement", "metric" or "layer" (absent when the whole measurement is off), "error", "message",
    "step"}``. Each new one gets one warning; ``on_new(errors)`` is called with the whole list at once so that a
    run that crashes later still tells."""

    def __init__(self, on_new: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.errors: list[dict[str, Any]] = []
        self.keys: set[tuple[str, str | None]] = set()  # reported in this fit
        self.prior: set[tuple[str, str | None]] = set()  # recorded by the fits this one continues
        self.off: set[str] = set()  # whole measurements
        self.off_items: dict[str, set[str]] = {}  # measurement -> metric / parameter names turned off
        self.on_new = on_new

    def load(self, errors: Any) -> None:
        """The errors a continued run recorded so far (listed once, warned again)."""
        if isinstance(errors, list):
            for e in errors:
                if isinstance(e, dict):
                    self.errors.append(e)
                    self.prior.add((str(e.get("measurement")), e.get("metric", e.get("layer"))))

    def failed(self, measurement: str, failures: Sequence[tuple[str | None, BaseException]], step: int | None,
               *, target: str = "metric", what: str = "") -> None:
        """``failures`` holds (metric or module name -- None: the whole measurement --, exception)."""
        new = []
        for name, exc in failures:
            key = (measurement, name)
            if key in self.keys:
                continue
            self.keys.add(key)
            entry: dict[str, Any] = {"measurement": measurement}
            if name is not None:
                entry[target] = name
            entry.update(error=type(exc).__name__, message=str(exc)[:500], step=step)
            if key not in self.prior:  # a resumed fit warns again but lists each failure once
                self.errors.append(entry)
            new.append(entry)
        if not new:
            return
        if self.on_new is not None:
            try:
                self.on_new(self.errors)
            except Exception:  # the store's own failure shows at the next flush
                pass
        where = ", ".join(str(e.get(target)) for e in new[:5] if target in e)
        where += f" and {len(new) - 5} more" if len(new) > 5 else ""
        first = new[0]
        warnings.warn(f"dyncheck: {measurement} {what or 'measurement failed'} and is turned off for "
                      f"{where or 'this fit'} ({first['error']}: {first['message']}); the rest is recorded, see "
                      f"the run's meta 'measurement_errors'", stacklevel=4)


# ----------------------------------------------------------------------------------------------------------------
# the context a collector collects into
# ----------------------------------------------------------------------------------------------------------------
class Context:
    """What the monitor lends its collectors for one fit: the module and its optimizers (with their names), the
    schedules, the buffers (``emit``, ``emit_host``), the failure record, and norm plans with failure handling."""

    def __init__(self, *, module: nn.Module, optimizers: Sequence[tuple[torch.optim.Optimizer, str]],
                 schedules: Mapping[str, Any], emit: Callable[[int, tuple[str, ...], Tensor, str], None],
                 emit_host: Callable[[int, tuple[str, ...], list[float]], None], failures: Failures,
                 probe_loss: Callable[[nn.Module, Any], Tensor] | None = None, has_store: bool = True,
                 start_step: int = 0, planned_steps: int | None = None,
                 clock: Callable[[], float] | None = None, sharded: bool = False) -> None:
        self.module = module
        self.optimizers = list(optimizers)  # (optimizer, name: class name, "-1", "-2" for repeats)
        self.schedules = schedules
        self.emit = emit
        self.emit_host = emit_host
        self.failures = failures
        self.probe_loss = probe_loss
        self.has_store = has_store  # this process writes (rank zero)
        self.start_step = start_step
        self.planned_steps = planned_steps
        self.clock = clock or (lambda: 0.0)  # training seconds so far, probes excluded
        #: some parameter is a DTensor (FSDP2, tensor parallelism): norms and counts are taken as this process's
        #: shares of the full tensors' (``NormPlan(shares=True)``) and emitted to be reduced (``"rss"``, ``"sum"``)
        self.sharded = sharded
        #: on the process that writes: the last value of each series of the latest flush, after reduction
        self.reduced: dict[str, float] = {}
        self.plans: dict[Any, NormPlan] = {}
        self.probe_batch: Any = None  # set by the monitor at the first batch when a collector needs it
        #: the current batch (a reference, set at each batch start; None where the adapter does not pass it)
        self.batch: Any = None
        #: the final gradients are read before any clipping, and every accumulation micro-batch ends with a
        #: ``batch`` call (the Lightning callback with automatic optimization; not the loop or HF adapters, which
        #: read gradients after the user's or the Trainer's clipping)
        self.unclipped_gradients = False

    def failed(self, measurement: str, failures: Sequence[tuple[str | None, BaseException]], step: int | None,
               **kw: Any) -> None:
        self.failures.failed(measurement, failures, step, **kw)

    def planned(self, measurement: str, key: Any, named: Sequence[tuple[str, Tensor]], tensors: list[Tensor],
                step: int, compute: Callable[[NormPlan], Tensor] | None = None) -> tuple[NormPlan, Tensor] | None:
        """Norms of ``tensors`` (``compute(plan)`` instead, when given) with the :class:`NormPlan` kept under
        ``key``, made at the first use: tensors whose norm cannot be taken are left out of it (``plan.kept``) and
        reported. None when the measurement is off."""
        plan = self.plans.get(key)
        if plan is not None:
            try:
                return plan, plan(tensors) if compute is None else compute(plan)
            except Exception:  # the tensors changed make-up (dtype, layout, device): plan again
                pass
        if measurement in self.failures.off:
            return None
        try:
            plan, values, failures = NormPlan.probe(tensors, shares=True) if self.sharded else \
                NormPlan.probe(tensors)
            if compute is not None:
                values = compute(plan)
        except Exception as exc:
            self.failures.off.add(measurement)
            self.failed(measurement, [(None, exc)], step)
            return None
        if failures:
            self.failed(measurement, [(f"{measurement}/{named[i][0]}", exc) for i, exc in failures], step)
        if len(self.plans) >= 256:  # parameters with and without gradients in ever new combinations
            self.plans.clear()
        self.plans[key] = plan
        return plan, values

    def guarded(self, measurement: str, named: Sequence[tuple[str, Tensor]], tensors: Sequence[Tensor],
                fn: Callable[[Sequence[Tensor]], Tensor], step: int) -> tuple[tuple[str, ...], Tensor] | None:
        """``(names, fn(tensors))``, one value per tensor; a tensor ``fn`` fails on is turned off (left out from
        now on, reported once). None when nothing is left or the measurement is off."""
        fl = self.failures
        if measurement in fl.off:
            return None
        off = fl.off_items.get(measurement)
        pairs = [(n, t) for (n, _), t in zip(named, tensors) if n not in off] if off else \
            [(n, t) for (n, _), t in zip(named, tensors)]
        if not pairs:
            return None
        try:
            return tuple(n for n, _ in pairs), fn([t for _, t in pairs])
        except Exception:
            pass
        failures, kept = [], []
        for n, t in pairs:
            try:
                fn([t])
                kept.append((n, t))
            except Exception as exc:
                failures.append((n, exc))
        fl.off_items.setdefault(measurement, set()).update(n for n, _ in failures)
        self.failed(measurement, [(f"{measurement}/{n}", exc) for n, exc in failures], step)
        if not kept:
            return None
        try:
            return tuple(n for n, _ in kept), fn([t for _, t in kept])
        except Exception as exc:
            fl.off.add(measurement)
            self.failed(measurement, [(None, exc)], step)
            return None


# ----------------------------------------------------------------------------------------------------------------
# the protocol
# ----------------------------------------------------------------------------------------------------------------
class Collector:
    """Base of the collectors (see the module docstring). Subclasses set the class attributes, define their
    ``Fit``/``Step``/``Saved`` dataclasses and override the hooks they need."""

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()
    reduce: ClassVar[str] = "none"
    needs: ClassVar[frozenset[str]] = frozenset()
    schedule: ClassVar[str] = "scalars"  # "scalars" | "layers" | "activations" | "budget"
    has_step_state: ClassVar[bool] = False  # its Step has fields (set for each subclass)

    @dataclass
    class Fit:
        pass

    @dataclass
    class Step:
        pass

    @dataclass
    class Saved:
        pass

    def __init__(self) -> None:
        self.ctx: Context | None = None
        self.fit = self.Fit()
        self.now = self.Step()
        self.saved = self.Saved()
        self.enabled = True

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, ctx: Context) -> None:
        """Begin a fit: fresh per-fit and per-step state (``self.saved`` stays: it was loaded from a checkpoint
        or carries on from the last fit)."""
        self.ctx = ctx
        self.fit = self.Fit()
        self.now = self.Step()
        self.enabled = True

    def due(self, step: int) -> bool:
        assert self.ctx is not None
        return self.ctx.schedules[self.schedule].due(step)

    def new_step(self) -> None:
        self.now = self.Step()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls.has_step_state = bool(fields(cls.Step))

    def close(self) -> None:
        """End of the fit: drop what refers to the model or its tensors."""
        self.fit = self.Fit()
        self.now = self.Step()
        self.ctx = None

    def turn_off(self, step: int | None, exc: BaseException, what: str = "measurement failed") -> None:
        """Off for the rest of the fit, with one warning and a ``measurement_errors`` record of ``exc``."""
        self.enabled = False
        assert self.ctx is not None
        self.ctx.failed(self.name, [(None, exc)], step, what=what)

    def meta(self) -> dict[str, Any]:
        """Keys this collector adds to the run's meta at the end of the fit."""
        return {}

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return asdict(self.saved)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = {f.name for f in fields(self.saved)}
        self.saved = self.Saved(**{k: v for k, v in state.items() if k in names})

    # -- hooks (override what the collector needs; the monitor calls only overridden ones) ---------------------
    def step_start(self, step: int) -> None:
        pass

    def batch(self, step: int, loss: Tensor | None) -> None:
        """End of every batch (several per step while accumulating gradients), with its loss when it has one."""

    def gradients(self, step: int, g: GradStep) -> None:
        """Final gradients of one optimizer's parameters, before it steps."""

    def step_end(self, step: int) -> None:
        """After the optimizer step (the weights are the new ones)."""

    def new_parameters(self, step: int, named: list[tuple[str, Tensor]]) -> None:
        """Parameters added to an optimizer during training, seen before their first update (called whatever
        the schedule)."""

    def before_flush(self, final: bool) -> None:
        """Before a flush: a collector that holds values back (to write many steps in one store chunk per
        metric) emits them now; ``final`` (end of the fit, a checkpoint): all of them."""

    def flushed(self) -> None:
        """After a flush (the host has just synchronised with the device): a cheap moment to look at values."""

    @classmethod
    def overrides(cls, hook: str) -> bool:
        return getattr(cls, hook) is not getattr(Collector, hook)
