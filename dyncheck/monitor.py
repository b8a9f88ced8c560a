"""The monitor's logic, framework-neutral: what to measure on which step, device-side buffering, flushing to the
store, sharpness scheduling, checkpoint state. The Lightning adapters (:mod:`dyncheck._callback`) translate trainer
hooks into calls of :class:`Monitor`; everything here is plain torch and can be driven by any training loop.

Steps are optimizer steps: ``step`` is the number of optimizer steps completed before the batch (Lightning's
``trainer.global_step`` at batch start). With gradient accumulation several batches share a step; their losses are
averaged.

Per-step hot path (defaults): one ``_foreach_norm`` + one ``stack`` for the gradient norms, a reference to the loss
tensor, a few Python floats for learning rates. Nothing is copied to the host until a flush, which reduces every
buffered statistic across processes with at most three collectives and copies the result in one transfer.

The monitor never breaks the training it observes. Each measurement handles what it can (sparse gradients,
float64 and complex tensors: :class:`~dyncheck.measure.tensors.NormPlan`, worked out at the first step); what it
cannot handle is turned off for that metric, module or measurement with one warning and recorded in the run's
meta under ``measurement_errors``: ``{"measurement", "metric" or "layer" (absent when the whole measurement is
off), "error" (exception type), "message", "step"}``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError, MeasureError
from .measure.activations import ActivationRecorder, select_modules
from .measure.sharpness import (SharpnessSchedule, hvp_operator, lanczos_top_eig, preserved_training_state,
                                stability_threshold)
from .measure.tensors import NormPlan, nonfinite_counts, update_ratios
from .store import RunWriter, open_run

__all__ = ["MonitorConfig", "Monitor"]

ReduceFn = Callable[[Tensor, str], Tensor]


def _no_reduce(t: Tensor, op: str) -> Tensor:
    return t


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------
def _check_int(owner: str, name: str, value: Any, *, minimum: int, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ConfigError(f"{owner}({name}={value!r}): expected {expected}")


def _check_float(owner: str, name: str, value: Any, *, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        raise ConfigError(f"{owner}({name}={value!r}): expected a number in {'(' if lo_open else '['}{lo}, {hi}]")


@dataclass(frozen=True)
class MonitorConfig:
    """Validated options of :class:`~dyncheck.DynamicsMonitor` (see its docstring for their meaning)."""

    dirpath: str | None = None
    every_n_steps: int | None = None
    scalars_every_n_steps: int = 1
    activations_every_n_steps: int | None = None
    activation_modules: tuple[str, ...] | None = None
    flush_every_n_steps: int = 100
    sharpness_budget: float = 0.02
    sharpness_every_n_steps: int | None = None
    sharpness_max_iter: int = 20
    sharpness_tol: float = 1e-4
    sharpness_loss_fn: Callable[[nn.Module, Any], Tensor] | None = None
    train_loss_key: str | None = None
    val_loss_key: str | None = None
    owner: str = field(default="DynamicsMonitor", compare=False, repr=False)

    def __post_init__(self) -> None:
        o = self.owner
        if self.dirpath is not None and not isinstance(self.dirpath, (str, Path)):
            raise ConfigError(f"{o}(dirpath={self.dirpath!r}): expected a path (str or pathlib.Path) or None")
        _check_int(o, "every_n_steps", self.every_n_steps, minimum=1)
        _check_int(o, "scalars_every_n_steps", self.scalars_every_n_steps, minimum=1, allow_none=False)
        _check_int(o, "activations_every_n_steps", self.activations_every_n_steps, minimum=0)
        _check_int(o, "flush_every_n_steps", self.flush_every_n_steps, minimum=1, allow_none=False)
        _check_float(o, "sharpness_budget", self.sharpness_budget, lo=0.0, hi=1.0)
        _check_int(o, "sharpness_every_n_steps", self.sharpness_every_n_steps, minimum=0)
        _check_int(o, "sharpness_max_iter", self.sharpness_max_iter, minimum=1, allow_none=False)
        _check_float(o, "sharpness_tol", self.sharpness_tol, lo=0.0, hi=1.0, lo_open=True)
        if self.sharpness_loss_fn is not None and not callable(self.sharpness_loss_fn):
            raise ConfigError(f"{o}(sharpness_loss_fn={self.sharpness_loss_fn!r}): expected a callable "
                              "(module, batch) -> loss tensor, or None")
        if self.activation_modules is not None and (
            not isinstance(self.activation_modules, (tuple, list))
            or not all(isinstance(p, str) for p in self.activation_modules)
        ):
            raise ConfigError(f"{o}(activation_modules={self.activation_modules!r}): expected a list of glob "
                              "patterns over module names (e.g. ['encoder.*']), or None for all leaf modules")
        for key in ("train_loss_key", "val_loss_key"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{o}({key}={value!r}): expected the name of a logged metric (str) or None")

    @property
    def sharpness_enabled(self) -> bool:
        return self.sharpness_every_n_steps != 0 and (self.sharpness_budget > 0 or bool(self.sharpness_every_n_steps))


# ----------------------------------------------------------------------------------------------------------------
# the monitor
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Block:
    """Values of a fixed list of metrics at one step, still on the device."""

    step: int
    names: tuple[str, ...]
    values: Tensor
    op: str  # how to reduce across processes: "mean" | "sum" | "max" | "none"


class Monitor:
    """Framework-neutral monitor. Call :meth:`start`, then per batch :meth:`batch_start`,
    :meth:`before_optimizer_step` (once per optimizer step) and :meth:`batch_end`; :meth:`record` for other
    scalars; :meth:`finish` at the end. ``reduce`` is called on every process at the same points (flushes)."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.store: RunWriter | None = None
        self.store_path: Path | None = None
        self.every_n = config.every_n_steps or 50
        self._reduce: ReduceFn = _no_reduce
        self._module: nn.Module | None = None
        self._recorder: ActivationRecorder | None = None
        self._blocks: list[_Block] = []
        self._host: list[tuple[int, tuple[str, ...], list[float]]] = []
        self._reset_step_state()
        # state that travels in checkpoints
        self._last_bucket: int | None = None
        self._last_seq = 0
        # per-fit state
        self._param_names: dict[int, str] = {}
        self._opt_params: dict[int, list[tuple[str, Tensor]]] = {}
        self._opt_names: list[tuple[torch.optim.Optimizer, str]] = []
        self._initial: dict[str, Tensor] = {}
        self._unchanged: dict[str, bool] = {}
        self._probe_batch: Any = None
        self._probe_fn: Callable[[nn.Module, Any], Tensor] | None = None
        self._eigvec: Tensor | None = None
        self._sharp_gen = torch.Generator().manual_seed(0)
        self._sharp_time = 0.0
        self._sharp_count = 0
        self._sched: SharpnessSchedule | None = None
        self._t0 = 0.0
        self._steps_seen = 0
        self._steps_since_flush = 0
        self._last_act_bucket: int | None = None
        self._warned: set[str] = set()
        # measurements that failed (per fit): the run meta's measurement_errors, and what is turned off
        self._errors: list[dict[str, Any]] = []
        self._error_keys: set[tuple[str, str | None]] = set()  # reported in this fit
        self._prior_keys: set[tuple[str, str | None]] = set()  # recorded by the fits this one continues
        self._off: set[str] = set()  # whole measurements
        self._off_items: dict[str, set[str]] = {}  # measurement -> parameter / metric names turned off
        self._plans: dict[Any, NormPlan] = {}  # how to take the norms of each list of tensors (made at first use)
        self._opt_sizes: dict[int, tuple[int, int]] = {}  # (param groups, parameters) of each optimizer when
        # indexed: to see parameters added during training
        self._lr_slow = False  # a learning rate that is not a number: read them one by one
        self.flushes = 0  # flush calls so far: the boundaries at which live checks may run

    def _reset_step_state(self) -> None:
        self._step: int | None = None
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self._grad_vecs: list[Tensor] = []
        self._before: dict[str, Tensor] = {}
        self._measuring = False
        self._measuring_acts = False

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(
        self,
        *,
        module: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        store_path: str | Path | None,
        meta: Mapping[str, Any],
        every_n_steps: int,
        reduce: ReduceFn | None = None,
        probe_loss: Callable[[nn.Module, Any], Tensor] | None = None,
        resume: Mapping[str, Any] | None = None,
        append: bool = False,
        planned_steps: int | None = None,
        start_step: int | None = None,
    ) -> None:
        """Begin (or continue) monitoring a fit. ``store_path`` is None on processes that do not write.
        ``resume`` is a state from :meth:`state_dict`: the store is truncated to what it held at that checkpoint.
        ``planned_steps``: the optimizer steps this fit will take from ``start_step`` (default
        ``meta["start_step"]`` or 0), None if unknown; the sharpness schedule is planned over them."""
        self.every_n = every_n_steps
        self._reduce = reduce or _no_reduce
        self._module = module
        self._blocks.clear()
        self._host.clear()
        self._reset_step_state()
        self._param_names = {id(p): n for n, p in module.named_parameters()}
        self._opt_params = {}
        self._opt_sizes = {}
        self._opt_names = []
        self._plans = {}
        self._errors, self._error_keys, self._prior_keys, self._off, self._off_items = [], set(), set(), set(), {}
        self._lr_slow = False
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self._unchanged = {n: True for n, _ in trainable}
        self._initial = {n: p.detach().to("cpu", copy=True) for n, p in trainable}
        counts: dict[str, int] = {}
        for opt in optimizers:
            cls = type(opt).__name__
            counts[cls] = counts.get(cls, 0) + 1
            self._opt_names.append((opt, cls if counts[cls] == 1 else f"{cls}-{counts[cls] - 1}"))
            self._index_optimizer(opt)
        self._lr_names: tuple[str, ...] = ()
        act_every = self.config.activations_every_n_steps
        act_every = self.every_n if act_every is None else act_every
        self._act_every = act_every
        self._recorder = ActivationRecorder(select_modules(module, self.config.activation_modules)) if act_every else None
        self._probe_fn = probe_loss
        self._probe_batch = None
        self._t0 = time.perf_counter()
        self._sharp_time = 0.0
        self._sharp_count = 0
        self._eigvec = None
        self._steps_seen = 0
        cfg = self.config
        self._sched = SharpnessSchedule(
            budget=cfg.sharpness_budget if cfg.sharpness_enabled else 0.0,
            every_n=cfg.sharpness_every_n_steps if cfg.sharpness_enabled else 0,
            total_steps=planned_steps, max_iter=cfg.sharpness_max_iter,
            start_step=int(start_step if start_step is not None else meta.get("start_step", 0) or 0))
        if resume is not None:
            self._last_bucket = resume.get("last_bucket")
            self._last_seq = int(resume.get("seq", 0))
            self._last_act_bucket = resume.get("last_act_bucket")
        else:
            self._last_act_bucket = None
        if store_path is not None:
            mode = "a" if (resume is not None or append) else "w"
            if mode == "w" and Path(store_path).exists():
                warnings.warn(f"dyncheck: replacing the existing run store {store_path}", stacklevel=2)
            if mode == "a":
                self._load_errors(store_path)
            self.store = RunWriter(store_path, mode=mode)
            self.store_path = self.store.path
            if resume is not None and "seq" in resume:
                dropped = self.store.truncate(self._last_seq)
                self.store.set_meta(resumed_from_step=meta.get("start_step"), resume_dropped_chunks=dropped)
            self.store.set_meta(**meta)
            self.store.set_meta(status="running", ended=None, exception=None, measurement_errors=self._errors)
        if cfg.sharpness_enabled and probe_loss is not None:
            step0 = self._sched.start
            complex_params = [n for n, p in trainable if p.is_complex()]
            if not trainable:
                self._sharpness_failed(step0, MeasureError("the model has no trainable parameters"))
            elif complex_params:
                self._sharpness_failed(step0, MeasureError(
                    f"complex parameters ({', '.join(complex_params[:5])}): the Hessian probe works on real "
                    "parameters only"))

    def finish(self, status: str, *, error: BaseException | None = None, reduce: bool = True) -> None:
        """Flush and close; record how the run ended (``finished``, ``interrupted`` or ``crashed``)."""
        if self._recorder is not None:
            self._recorder.detach()
        try:
            self.flush(reduce=reduce)
        finally:
            if self.store is not None and not self.store.closed:
                info: dict[str, Any] = {"status": status, "ended": time.time(), "unchanged_parameters":
                                        sorted(n for n, u in self._unchanged.items() if u)}
                info["sharpness_time_s"] = round(self._sharp_time, 6)
                info["sharpness_probes"] = self._sharp_count
                if self._sched is not None:
                    info["sharpness_schedule"] = self._sched.facts()
                info["duration_s"] = round(time.perf_counter() - self._t0, 6)
                info["measurement_errors"] = self._errors
                if error is not None:
                    info["exception"] = {"type": type(error).__name__, "message": str(error)[:2000]}
                self.store.set_meta(**info)
                self._last_seq = self.store.last_seq()
                self.store.close()
            self.store = None
            self._initial.clear()
            self._probe_batch = None
            self._eigvec = None
            self._module = None

    # -- per batch ---------------------------------------------------------------------------------------------
    def _due(self, step: int, every: int, last: int | None) -> bool:
        return every > 0 and step // every != last

    def batch_start(self, step: int, batch: Any) -> None:
        new_step = self._step != step  # a new optimizer step begins (several batches share one with accumulation)
        if self._probe_batch is None and self.config.sharpness_enabled and self._probe_fn is not None:
            self._probe_batch = _clone_batch(batch)
        if new_step:
            self._reset_step_state()
            self._step = step
            sched = self._sched
            if sched is not None and step >= sched.next_step and self._probe_batch is not None and \
                    self._probe_fn is not None and self.store is not None:
                # before this step's forward, so at the weights its loss is computed with, and before the
                # activation hooks are attached (the probe's forward must not count as this step's)
                try:
                    limit = sched.admit(step, time.perf_counter() - self._t0 - self._sharp_time)
                    if limit is not None:
                        self._measure_sharpness(step, limit)
                except Exception as exc:  # never break the training it observes
                    self._sharpness_failed(step, exc, "scheduling failed")
            self._measuring = self._due(step, self.every_n, self._last_bucket)
            if self._recorder is not None and self._due(step, self._act_every, self._last_act_bucket):
                self._measuring_acts = True
                self._recorder.attach()
            if step % self.config.scalars_every_n_steps == 0:
                lrs = None
                if not self._lr_slow:
                    try:
                        lrs = [float(g["lr"]) for opt, _ in self._opt_names for g in opt.param_groups]
                    except Exception:  # a learning rate that is not a number (e.g. Adafactor's lr=None)
                        self._lr_slow = True
                if lrs is None:
                    names, lrs = self._read_lrs(step)
                else:
                    if len(lrs) != len(self._lr_names):  # param groups added during training
                        self._lr_names = _interned(tuple(f"lr/{oname}/pg{j}" for opt, oname in self._opt_names
                                                         for j in range(len(opt.param_groups))))
                    names = self._lr_names
                if lrs:
                    self._host.append((step, names, lrs))

    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are final here (after accumulation, all-reduce and AMP unscaling, before clipping)."""
        key = id(optimizer)
        named = self._opt_params.get(key)
        if named is None:
            return
        groups, sizes = optimizer.param_groups, self._opt_sizes[key]
        # parameters added during training: a new param group (seen at once), or appended to one (at measuring steps)
        if len(groups) != sizes[0] or (self._measuring and sum(len(g["params"]) for g in groups) != sizes[1]):
            named = self._index_optimizer(optimizer)
        with_grad = [(n, p) for n, p in named if p.grad is not None]
        if not with_grad:
            return
        grads = [p.grad for _, p in with_grad]
        # one plan per optimizer while every parameter has a gradient (the common case: a cheap key), made at the
        # first step; the hot path is the plan's call: one _foreach_norm + stack for float32-like dense gradients
        pkey = key if len(with_grad) == len(named) else (key, tuple(n for n, _ in with_grad))
        plan = self._plans.get(pkey)
        norms = None
        if plan is not None:
            try:
                norms = plan(grads)
            except Exception:  # the gradients changed make-up (dtype, layout, device): plan again
                plan = None
        if plan is None:
            got = self._planned("grad_norm", pkey, with_grad, grads, step)
            if got is not None:
                plan, norms = got
        if plan is not None and plan.kept != ():  # kept == (): every gradient left out
            self._grad_vecs.append(norms)
            if self._measuring:
                names = tuple(n for n, _ in with_grad)
                kept = names if plan.kept is None else tuple(names[i] for i in plan.kept)
                self._blocks.append(_Block(step, _interned(tuple(f"grad_norm/{n}" for n in kept)), norms, "none"))
        if self._measuring:
            counted = self._guarded("grad_nonfinite", with_grad, grads, nonfinite_counts, step)
            if counted is not None:
                self._blocks.append(_Block(step, _interned(tuple(f"grad_nonfinite/{n}" for n in counted[0])),
                                           counted[1], "none"))
            for n, p in with_grad:
                if n not in self._before:
                    self._before[n] = p.detach().clone()

    def batch_end(self, step: int, loss: Tensor | None, *, stepped: bool) -> None:
        """``stepped``: an optimizer step completed in this batch (False while accumulating gradients)."""
        if isinstance(loss, Tensor) and loss.numel() == 1:
            loss = loss.detach()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        if not stepped:
            return
        self._steps_seen += 1
        if step % self.config.scalars_every_n_steps == 0:
            if self._loss_sum is not None:
                value = self._loss_sum if self._loss_count == 1 else self._loss_sum / self._loss_count
                self._blocks.append(_Block(step, _LOSS, value, "mean"))
            if self._grad_vecs:
                vec = self._grad_vecs[0] if len(self._grad_vecs) == 1 else torch.cat(self._grad_vecs)
                self._blocks.append(_Block(step, _GRAD_TOTAL, vec, "norm"))
        if self._measuring:
            self._measure_layers(step)
        if self._measuring_acts:
            self._collect_activations(step)
        self._steps_since_flush += 1
        if self._steps_since_flush >= self.config.flush_every_n_steps:
            self.flush()
        self._reset_step_state()
        self._step = step

    def _measure_layers(self, step: int) -> None:
        module = self._module
        assert module is not None
        self._last_bucket = step // self.every_n
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if params:
            names = _interned(tuple(n for n, _ in params))
            got = self._planned("weight_norm", ("weight_norm", names), params, [p.detach() for _, p in params],
                                step)
            if got is not None and got[0].kept != ():
                plan, norms = got
                kept = names if plan.kept is None else tuple(names[i] for i in plan.kept)
                self._blocks.append(_Block(step, _interned(tuple(f"weight_norm/{n}" for n in kept)), norms, "none"))
            moved = [(n, p) for n, p in params if n in self._before] if self._before else []
            if moved:
                mnames = _interned(tuple(n for n, _ in moved))
                before = [self._before[n] for n, _ in moved]
                after = [p for _, p in moved]
                got = self._planned("update_ratio", ("update_ratio", mnames), moved, before, step,
                                    compute=lambda plan: update_ratios(before, after, plan))
                if got is not None and got[0].kept != ():
                    plan, ratios = got
                    kept = mnames if plan.kept is None else tuple(mnames[i] for i in plan.kept)
                    self._blocks.append(_Block(step, _interned(tuple(f"update_ratio/{n}" for n in kept)),
                                               ratios, "none"))
            self._check_unchanged(step, params)

    def _collect_activations(self, step: int) -> None:
        rec = self._recorder
        assert rec is not None
        rec.detach()
        self._last_act_bucket = step // self._act_every
        failed = rec.take_errors()  # modules that could not be hooked or measured: turned off in the recorder
        if failed:
            self._failed("activations", [(name, exc) for name, exc in failed], step, target="layer")
        try:
            groups = rec.collect()
        except Exception as exc:
            self._recorder = None
            self._failed("activations", [(None, exc)], step)
            return
        for op, (names, values) in groups.items():
            self._blocks.append(_Block(step, _interned(tuple(names)), values, op))

    def _check_unchanged(self, step: int, params: list[tuple[str, Tensor]]) -> None:
        names, flags = [], []
        off = self._off_items.get("weight_unchanged", ())
        for n, p in params:
            if n in off:
                continue
            if n not in self._unchanged:  # a parameter created during training: compare with its value now
                self._unchanged[n] = True
                self._initial[n] = p.detach().to("cpu", copy=True)
            if self._unchanged[n]:
                ref = self._initial.get(n)
                try:
                    same = ref is not None and torch.equal(p.detach().to("cpu"), ref)
                except Exception as exc:
                    self._unchanged.pop(n, None)
                    self._initial.pop(n, None)
                    self._off_items.setdefault("weight_unchanged", set()).add(n)
                    self._failed("weight_unchanged", [(f"weight_unchanged/{n}", exc)], step)
                    continue
                if not same:
                    self._unchanged[n] = False
                    self._initial.pop(n, None)
            names.append(n)
            flags.append(1.0 if self._unchanged[n] else 0.0)
        self._host.append((step, _interned(tuple(f"weight_unchanged/{n}" for n in names)), flags))

    # -- what cannot be measured -------------------------------------------------------------------------------
    def _index_optimizer(self, opt: torch.optim.Optimizer) -> list[tuple[str, Tensor]]:
        """(name, parameter) of every parameter the optimizer holds, in param-group order; called at the start
        and again when parameters were added to it (new ones get their reference copy for ``weight_unchanged``
        then, before their first update)."""
        params = [p for g in opt.param_groups for p in g["params"]]
        if self._module is not None and any(id(p) not in self._param_names for p in params):
            self._param_names = {id(p): n for n, p in self._module.named_parameters()}
        named = [(self._param_names.get(id(p), f"param{i}"), p) for i, p in enumerate(params)]
        if id(opt) in self._opt_sizes:  # added during training
            self._plans.clear()
            for n, p in named:
                if p.requires_grad and n not in self._unchanged:
                    self._unchanged[n] = True
                    self._initial[n] = p.detach().to("cpu", copy=True)
        self._opt_params[id(opt)] = named
        self._opt_sizes[id(opt)] = (len(opt.param_groups), len(params))
        return named

    def _planned(self, measurement: str, key: Any, named: Sequence[tuple[str, Tensor]], tensors: list[Tensor],
                 step: int, compute: Callable[[NormPlan], Tensor] | None = None) -> tuple[NormPlan, Tensor] | None:
        """Norms of ``tensors`` (``compute(plan)`` instead, when given) with the :class:`NormPlan` kept under
        ``key``, made at the first use: tensors whose norm cannot be taken are left out of it (``plan.kept``) and
        reported. None when the measurement is off."""
        plan = self._plans.get(key)
        if plan is not None:
            try:
                return plan, plan(tensors) if compute is None else compute(plan)
            except Exception:  # the tensors changed make-up (dtype, layout, device): plan again
                pass
        if measurement in self._off:
            return None
        try:
            plan, values, failures = NormPlan.probe(tensors)
            if compute is not None:
                values = compute(plan)
        except Exception as exc:
            self._off.add(measurement)
            self._failed(measurement, [(None, exc)], step)
            return None
        if failures:
            self._failed(measurement, [(f"{measurement}/{named[i][0]}", exc) for i, exc in failures], step)
        if len(self._plans) >= 256:  # parameters with and without gradients in ever new combinations
            self._plans.clear()
        self._plans[key] = plan
        return plan, values

    def _guarded(self, measurement: str, named: Sequence[tuple[str, Tensor]], tensors: Sequence[Tensor],
                 fn: Callable[[Sequence[Tensor]], Tensor], step: int) -> tuple[tuple[str, ...], Tensor] | None:
        """``(names, fn(tensors))``, one value per tensor; a tensor ``fn`` fails on is turned off (left out from
        now on, reported once). None when nothing is left or the measurement is off."""
        if measurement in self._off:
            return None
        off = self._off_items.get(measurement)
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
        self._off_items.setdefault(measurement, set()).update(n for n, _ in failures)
        self._failed(measurement, [(f"{measurement}/{n}", exc) for n, exc in failures], step)
        if not kept:
            return None
        try:
            return tuple(n for n, _ in kept), fn([t for _, t in kept])
        except Exception as exc:
            self._off.add(measurement)
            self._failed(measurement, [(None, exc)], step)
            return None

    def _read_lrs(self, step: int) -> tuple[tuple[str, ...], list[float]]:
        """The learning rates one by one; one that is not a number is turned off."""
        names: list[str] = []
        vals: list[float] = []
        off = self._off_items.setdefault("lr", set())
        for opt, oname in self._opt_names:
            for j, g in enumerate(opt.param_groups):
                name = f"lr/{oname}/pg{j}"
                if name in off:
                    continue
                try:
                    vals.append(float(g["lr"]))
                    names.append(name)
                except Exception as exc:
                    off.add(name)
                    self._failed("lr", [(name, exc)], step)
        return _interned(tuple(names)), vals

    def _sharpness_failed(self, step: int | None, exc: BaseException, what: str = "measurement failed") -> None:
        self._probe_fn = None
        self._failed("sharpness", [(None, exc)], step, what=what)

    def _failed(self, measurement: str, failures: Sequence[tuple[str | None, BaseException]], step: int | None,
                *, target: str = "metric", what: str = "") -> None:
        """Record measurements that cannot be taken and are now turned off: ``failures`` holds (metric or module
        name -- None: the whole measurement --, exception). The new ones get one warning and go to the run's meta
        (``measurement_errors``) at once, so that a run that crashes later still tells."""
        new = []
        for name, exc in failures:
            key = (measurement, name)
            if key in self._error_keys:
                continue
            self._error_keys.add(key)
            entry: dict[str, Any] = {"measurement": measurement}
            if name is not None:
                entry[target] = name
            entry.update(error=type(exc).__name__, message=str(exc)[:500], step=step)
            if key not in self._prior_keys:  # a resumed fit warns again but lists each failure once
                self._errors.append(entry)
            new.append(entry)
        if not new:
            return
        if self.store is not None and not self.store.closed:
            try:
                self.store.set_meta(measurement_errors=self._errors)
            except Exception:  # the store's own failure shows at the next flush
                pass
        where = ", ".join(str(e.get(target)) for e in new[:5] if target in e)
        where += f" and {len(new) - 5} more" if len(new) > 5 else ""
        first = new[0]
        warnings.warn(f"dyncheck: {measurement} {what or 'measurement failed'} and is turned off for "
                      f"{where or 'this fit'} ({first['error']}: {first['message']}); the rest is recorded, see "
                      f"the run's meta 'measurement_errors'", stacklevel=3)

    def _load_errors(self, store_path: str | Path) -> None:
        """When a fit continues a run: the measurement errors it recorded so far."""
        try:
            with open_run(store_path) as run:
                errors = run.meta.get("measurement_errors")
        except Exception:
            return
        if isinstance(errors, list):
            for e in errors:
                if isinstance(e, dict):
                    self._errors.append(e)
                    self._prior_keys.add((str(e.get("measurement")), e.get("metric", e.get("layer"))))

    # -- sharpness ---------------------------------------------------------------------------------------------
    def _measure_sharpness(self, step: int, limit: float) -> None:
        """Probe at the current weights (those of step ``step``'s forward) and label the value ``step``. A finite
        ``limit`` (no probe measured yet): stop after the second product when ``max_iter`` of them would cost
        more than ``limit`` seconds in all, and let the schedule plan with the measured costs."""
        module, sched = self._module, self._sched
        if module is None or self._probe_fn is None or self.store is None or sched is None:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        max_iter = self.config.sharpness_max_iter
        cold = self._eigvec is None
        t = time.perf_counter()
        graph_s = 0.0
        res = timed = None
        try:
            # TorchScript's profiling executor specialises its graphs by call history: the probe's forward must
            # not count, or the training after it would run other kernels (other roundings)
            with preserved_training_state(module, params), torch.enable_grad(), \
                    torch.jit.optimized_execution(False):
                loss = self._probe_fn(module, self._probe_batch)
                matvec, n = hvp_operator(loss, params)
                graph_s = time.perf_counter() - t
                timed = _TimedMatvec(matvec, graph_s, limit, max_iter)
                size = n * max_iter
                res = lanczos_top_eig(timed, n, max_iter=max_iter,
                                      tol=self.config.sharpness_tol, v0=self._eigvec, generator=self._sharp_gen,
                                      reorthogonalize=size <= _REORTH_MAX,
                                      basis_device="cpu" if size <= _HOST_BASIS_MAX else None)
                del matvec, loss
        except _OverLimit:
            pass
        except Exception as exc:  # a measurement must never end the training it observes
            self._sharpness_failed(step, exc)
            return
        finally:
            if timed is not None:
                timed.matvec = None  # type: ignore[assignment]  # free the gradient graph
            cost = time.perf_counter() - t
            self._sharp_time += cost
        assert timed is not None
        if res is None:
            sched.record_abort(step, cost, graph_s=graph_s, hvp_s=timed.hvp_s)
            return
        sched.record(step, cost, n_hvp=res.n_hvp, graph_s=graph_s, cold=cold, hvp_s=timed.hvp_s,
                     products_s=sum(timed.times))
        self._sharp_count += 1
        self._eigvec = res.vector
        opts = [opt for opt, _ in self._opt_names]
        try:
            thr = stability_threshold(opts[0]) if opts else None  # this step's learning rate: not stepped yet
        except Exception:  # a learning rate that is not a number: no threshold
            thr = None
        names, vals = ["sharpness/top_eig", "sharpness/n_hvp"], [res.value, float(res.n_hvp)]
        if thr is not None:
            names.append("sharpness/threshold")
            vals.append(thr)
        self._host.append((step, _interned(tuple(names)), vals))

    # -- other scalars -----------------------------------------------------------------------------------------
    def record(self, step: int, values: Mapping[str, Tensor | float], op: str = "mean") -> None:
        """Buffer scalar values (tensors stay on the device) for metrics named by the keys."""
        if not values:
            return
        off = self._off_items.get("record")
        if off:
            values = {k: v for k, v in values.items() if k not in off}
            if not values:
                return
        device = next((v.device for v in values.values() if isinstance(v, Tensor)), torch.device("cpu"))
        try:
            vals = torch.stack([_scalar(v, device) for v in values.values()])
        except Exception:  # one value cannot be taken as a real scalar: leave it out from now on
            kept = {}
            for k, v in values.items():
                try:
                    kept[k] = _scalar(v, device)
                except Exception as exc:
                    self._off_items.setdefault("record", set()).add(k)
                    self._failed(k.split("/", 1)[0], [(k, exc)], step)
            if not kept:
                return
            values, vals = kept, torch.stack(list(kept.values()))
        self._blocks.append(_Block(step, _interned(tuple(values)), vals, op))

    # -- flushing ----------------------------------------------------------------------------------------------
    def flush(self, reduce: bool = True) -> None:
        """Reduce buffered statistics across processes (when ``reduce``), copy them to the host in one transfer
        and append them to the store. Every process must call this at the same points when ``reduce`` is true."""
        blocks, host = self._blocks, self._host
        self._blocks, self._host = [], []
        self._steps_since_flush = 0
        self.flushes += 1
        if not blocks and not host:
            return
        groups: dict[tuple[tuple[str, ...], str], list[_Block]] = {}
        for b in blocks:
            groups.setdefault((b.names, b.op), []).append(b)
        mats: list[tuple[tuple[str, ...], str, list[int], Tensor]] = []
        for (names, op), bs in groups.items():
            if op == "norm":
                sizes = {b.values.numel() for b in bs}
                if len(sizes) == 1:
                    mat = torch.linalg.vector_norm(torch.stack([b.values for b in bs]), dim=1, keepdim=True)
                else:
                    mat = torch.stack([torch.linalg.vector_norm(b.values) for b in bs]).reshape(-1, 1)
                op = "none"
            else:
                mat = torch.stack([_real(b.values.reshape(-1)) for b in bs])
            mats.append((names, op, [b.step for b in bs], _real(mat)))
        if reduce and self._reduce is not _no_reduce:
            for op in ("mean", "sum", "max"):
                sel = [i for i, m in enumerate(mats) if m[1] == op]
                if not sel:
                    continue
                flat = torch.cat([mats[i][3].reshape(-1) for i in sel])
                flat = self._reduce(flat, op)
                offset = 0
                for i in sel:
                    names, o, steps, mat = mats[i]
                    mats[i] = (names, o, steps, flat[offset: offset + mat.numel()].reshape(mat.shape))
                    offset += mat.numel()
        if self.store is None:
            return
        if mats:
            device = mats[0][3].device
            flat = torch.cat([m[3].reshape(-1).to(device) for m in mats]).cpu().numpy()
        offset = 0
        series: dict[str, tuple[list[int], list[float]]] = {}
        for names, _, steps, mat in mats:
            arr = flat[offset: offset + mat.numel()].reshape(mat.shape)
            offset += mat.numel()
            for j, name in enumerate(names):
                s, v = series.setdefault(name, ([], []))
                s.extend(steps)
                v.extend(arr[:, j].tolist())
        for step, names, vals in host:
            for name, val in zip(names, vals):
                s, v = series.setdefault(name, ([], []))
                s.append(step)
                v.append(val)
        self.store.write({k: (np.asarray(s), np.asarray(v)) for k, (s, v) in series.items()})
        self._last_seq = self.store.last_seq()

    # -- checkpoint state --------------------------------------------------------------------------------------
    @property
    def measuring(self) -> bool:
        """Whether the current step takes per-layer statistics."""
        return self._measuring

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry so that a resumed run continues its series without duplicates.
        Flushes first (a collective under DDP: every process saves checkpoints at the same points)."""
        self.flush()
        return {"seq": self._last_seq, "last_bucket": self._last_bucket,
                "last_act_bucket": self._last_act_bucket,
                "store": str(self.store_path) if self.store_path is not None else None}

    def warn_once(self, key: str, message: str) -> None:
        self._warn(key, message)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)


#: Lanczos basis sizes (values): full reorthogonalisation on the device up to 64M (256 MB in float32); above, the
#: basis is kept in host memory, only to return the eigenvector for warm starts, up to 256M values (1 GB)
_REORTH_MAX = 64_000_000
_HOST_BASIS_MAX = 256_000_000
_INTERNED: dict[tuple[str, ...], tuple[str, ...]] = {}
_LOSS = ("loss/train",)
_GRAD_TOTAL = ("grad_norm/total",)


class _OverLimit(Exception):
    pass


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
                raise _OverLimit()
        return out

    @property
    def hvp_s(self) -> float:
        """Typical seconds per product: the median (the first may pay one-time initialisation: it counts only
        when it is all there is)."""
        times = self.times[1:] or self.times
        return float(np.median(times)) if times else 0.0


def _real(t: Tensor) -> Tensor:
    """Statistics travel in float32, or in float64 when they were computed in it."""
    return t if t.dtype == torch.float64 else t.float()


def _scalar(v: Tensor | float, device: torch.device) -> Tensor:
    if isinstance(v, Tensor):
        if v.is_complex():
            raise MeasureError(f"expected a real scalar, got a {v.dtype} tensor")
        return v.detach().reshape(()).to(device=device, dtype=torch.float64 if v.dtype == torch.float64
                                          else torch.float32)
    return torch.tensor(float(v), device=device)


def _interned(names: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple object per distinct name list, so that grouping at flush hashes cheaply."""
    return _INTERNED.setdefault(names, names)


def _clone_batch(batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return batch.detach().clone()
    if isinstance(batch, Mapping):
        return {k: _clone_batch(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_clone_batch(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_clone_batch(v) for v in batch)
    return batch
