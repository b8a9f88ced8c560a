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
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .collect import (
    PROBE_BATCH,
    ActivationCollector,
    Collector,
    Context,
    Every,
    Failures,
    GradStep,
    Modulo,
    default_collectors,
)
from .collect.base import interned
from .errors import ConfigError, MeasureError
from .measure.probe import clone_batch
from .measure.naming import named_parameters  # canonical names: compiled and eager runs record the same
from .measure.tensors import has_sharded
from .store import RunWriter, open_run

__all__ = ["Monitor", "MonitorConfig"]

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


def _opt(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class MonitorConfig:
    """Validated measuring options of :class:`~dyncheck.DynamicsMonitor`: each option is declared here once, with
    its default, its meaning (``metadata["doc"]``, from which the callback's signature and docstring are made) and
    its validation (``__post_init__``)."""

    dirpath: str | None = _opt(None, (
        "directory of the run (``run.db`` and, later, findings and report). Default: "
        "``<trainer.log_dir or default_root_dir>/dyncheck``."))
    every_n_steps: int | None = _opt(None, (
        "per-layer statistics (gradient norms and non-finite counts per tensor, weight norms, update-to-weight "
        "ratios, unchanged parameters) and other logged scalars every this many optimizer steps. Default: "
        "``trainer.log_every_n_steps``. Update ratios need a copy of the weights before the step: above 64 MiB "
        "of trainable weights they cover a rotating subset of tensors of 64 MiB per measuring step."))
    scalars_every_n_steps: int = _opt(1, (
        "training loss, learning rates and global gradient norm every this many steps (1)."))
    activations_every_n_steps: int | None = _opt(None, (
        "activation statistics every this many steps; default ``every_n_steps``; 0 turns them off."))
    activation_modules: tuple[str, ...] | None = _opt(None, (
        "glob patterns over module names to hook (default: every leaf module except dropout, identity, flatten "
        "and embeddings); a pattern naming a module with children selects the leaves below it. Names are those "
        "of the uncompiled model (without ``_orig_mod.``). Patterns that match nothing are warned about and "
        "listed in the run's meta ``activations``."))
    flush_every_n_steps: int | None = _opt(None, (
        "copy buffered values to the host and the store every this many steps; also at every validation, "
        "checkpoint and the end of the fit. Bounds the monitor's memory and what a killed run loses. Default: "
        "about every 2 s of training (the step time measured at each flush; at least every 1,000 steps, at most "
        "every 10; every 100 steps until the step time is known), and every 100 steps when several processes "
        "train (they flush together)."))
    sharpness_budget: float = _opt(0.02, (
        "share of training wall time that sharpness probes may take (0.02); 0 turns them off unless "
        "``sharpness_every_n_steps`` is set. Probes are spread evenly over the planned run "
        "(``trainer.estimated_stepping_batches``), the first at 1% of it; runs of 200 to 3000 steps may take the "
        "budget of a 3000-step run (at most 8 probes' worth, at most 2 s; README: \"Sharpness schedule\"). The "
        "value at step s is the Hessian at the weights step s's loss was computed with."))
    sharpness_every_n_steps: int | None = _opt(None, (
        "probe sharpness on this fixed schedule (steps that are multiples of it) instead of the time budget; 0 "
        "turns sharpness off."))
    sharpness_max_iter: int = _opt(20, "Hessian-vector products per probe at most (20).")
    sharpness_tol: float = _opt(1e-4, "relative residual at which Lanczos stops (1e-4; see ``lanczos_top_eig``).")
    sharpness_loss_fn: Callable[[nn.Module, Any], Tensor] | None = _opt(None, (
        "``fn(module, batch) -> loss`` for the probe; default ``training_step(batch, 0)`` with logging silenced "
        "(needed for manual optimization, where training_step steps the optimizers)."))
    ntk_budget: float | None = _opt(None, (
        "share of training wall time that empirical-NTK probes may take (the schedule of ``sharpness_budget``); "
        "default: 0.005 when the probe's Jacobian (``ntk_examples`` x trainable parameters) holds at most 16M "
        "values (about 500k parameters at 32 examples) and the planned run has at least 10,000 steps or an "
        "unknown length, else off (said in the meta: the kernel costs a backward per example, and on a shorter "
        "run the reference kernel alone costs more than the budget); 0 turns them off unless "
        "``ntk_every_n_steps`` is set. The reference kernel is taken at the first step. Needs the probe batch, as "
        "sharpness does."))
    ntk_every_n_steps: int | None = _opt(None, (
        "probe the NTK on this fixed schedule (steps that are multiples of it) instead of the time budget; 0 "
        "turns it off."))
    ntk_examples: int = _opt(32, "probe examples of the NTK (the first of the probe batch; 32): an m x m kernel.")
    ntk_output_fn: Callable[[nn.Module, Any], Tensor] | None = _opt(None, (
        "``fn(module, batch) -> Tensor[m]``: the scalar output per probe example the NTK is taken of; default the "
        "sum of the model's outputs (logits) per example, ``module(x).reshape(m, -1).sum(1)``, in eval mode."))
    trajectory_every_n_steps: int | None = _opt(None, (
        "sketch of the weights for the trajectory PCA every this many steps; default about 100 sketches over "
        "the planned run (every 50 steps when its length is unknown); 0 turns it off."))
    trajectory_dim: int = _opt(1024, (
        "coordinates of the weight sketch (1024): a fixed random subset of the trainable parameters' values, "
        "spread over the tensors by size, recorded as ``traj/c<i>``."))
    noise_budget: float = _opt(0.0025, (
        "share of training wall time the gradient noise scale may take (0.0025); 0 turns it off unless "
        "``noise_every_n_steps`` is set. From gradient-accumulation micro-batches when there are several, else "
        "from a probe that takes the gradients of 4 of 8 micro-batches of the step's batch (README: \"Gradient "
        "noise scale\")."))
    noise_every_n_steps: int | None = _opt(None, (
        "measure the gradient noise scale at the first step of every this many steps instead of the time budget; "
        "0 turns it off."))
    noise_ema: float = _opt(0.95, (
        "weight of the past in the moving averages of tr(Σ) and |G|² whose ratio is ``noise/b_simple`` (0.95; "
        "0: no smoothing)."))
    train_loss_key: str | None = _opt(None, "logged metric used as training loss when ``training_step`` returns none.")
    val_loss_key: str | None = _opt(None, (
        "logged metric recorded as ``loss/val`` (default: the first of ``val_loss``, ``val/loss``, ``valid_loss``, "
        "``validation_loss``, ``loss/val``, ``val_loss_epoch`` that is logged; else the mean of the ``loss`` "
        "returned by ``validation_step``)."))
    owner: str = field(default="DynamicsMonitor", compare=False, repr=False)

    def __post_init__(self) -> None:
        o = self.owner
        if isinstance(self.dirpath, os.PathLike):
            object.__setattr__(self, "dirpath", os.fspath(self.dirpath))
        if isinstance(self.activation_modules, list) and all(isinstance(p, str) for p in self.activation_modules):
            object.__setattr__(self, "activation_modules", tuple(self.activation_modules))
        if self.dirpath is not None and not isinstance(self.dirpath, (str, Path)):
            raise ConfigError(f"{o}(dirpath={self.dirpath!r}): expected a path (str or pathlib.Path) or None")
        _check_int(o, "every_n_steps", self.every_n_steps, minimum=1)
        _check_int(o, "scalars_every_n_steps", self.scalars_every_n_steps, minimum=1, allow_none=False)
        _check_int(o, "activations_every_n_steps", self.activations_every_n_steps, minimum=0)
        _check_int(o, "flush_every_n_steps", self.flush_every_n_steps, minimum=1)
        _check_float(o, "sharpness_budget", self.sharpness_budget, lo=0.0, hi=1.0)
        _check_int(o, "sharpness_every_n_steps", self.sharpness_every_n_steps, minimum=0)
        _check_int(o, "sharpness_max_iter", self.sharpness_max_iter, minimum=1, allow_none=False)
        _check_float(o, "sharpness_tol", self.sharpness_tol, lo=0.0, hi=1.0, lo_open=True)
        if self.ntk_budget is not None:
            _check_float(o, "ntk_budget", self.ntk_budget, lo=0.0, hi=1.0)
        _check_int(o, "ntk_every_n_steps", self.ntk_every_n_steps, minimum=0)
        _check_int(o, "ntk_examples", self.ntk_examples, minimum=1, allow_none=False)
        if self.ntk_output_fn is not None and not callable(self.ntk_output_fn):
            raise ConfigError(f"{o}(ntk_output_fn={self.ntk_output_fn!r}): expected a callable "
                              "(module, batch) -> Tensor of one value per example, or None")
        _check_int(o, "trajectory_every_n_steps", self.trajectory_every_n_steps, minimum=0)
        _check_int(o, "trajectory_dim", self.trajectory_dim, minimum=1, allow_none=False)
        _check_float(o, "noise_budget", self.noise_budget, lo=0.0, hi=1.0)
        _check_int(o, "noise_every_n_steps", self.noise_every_n_steps, minimum=0)
        _check_float(o, "noise_ema", self.noise_ema, lo=0.0, hi=1.0)
        if self.noise_ema == 1.0:
            raise ConfigError(f"{o}(noise_ema=1.0): expected a number in [0.0, 1.0) (1 would never move)")
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
    def ntk_enabled(self) -> bool:
        return self.ntk_every_n_steps != 0 and (self.ntk_budget is None or self.ntk_budget > 0
                                                or bool(self.ntk_every_n_steps))

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
    values: Tensor | tuple[Tensor, ...]  # a tuple of 0-d tensors for "norm" blocks (stacked at the flush)
    op: str  # how to reduce across processes: "mean" | "sum" | "max" | "min" | "norm" | "rss" | "ratio" | "none"


class Monitor:
    """Framework-neutral monitor. Call :meth:`start`, then per batch :meth:`batch_start`,
    :meth:`before_optimizer_step` (once per optimizer step and optimizer) and :meth:`batch_end`; :meth:`record`
    for other scalars; :meth:`finish` at the end. ``reduce`` is called on every process at the same points
    (flushes).

    The monitor owns the schedules (``scalars``, ``layers``, ``activations``; a collector may bring its own, as
    sharpness does with its time budget), the device-side buffer, the flush (one reduction per operation, one
    transfer, one store write) and the time accounting of budgeted collectors; what is measured is the
    collectors' (:mod:`dyncheck.collect`). ``collectors``: default :func:`~dyncheck.collect.default_collectors`.
    """

    def __init__(self, config: MonitorConfig, collectors: Sequence[Collector] | None = None) -> None:
        self.config = config
        self.collectors: list[Collector] = list(collectors) if collectors is not None else \
            default_collectors(config)
        self.store: RunWriter | None = None
        self.store_path: Path | None = None
        self.every_n = config.every_n_steps or 50
        self._reduce: ReduceFn = _no_reduce
        self._module: nn.Module | None = None
        self._ctx: Context | None = None
        # the device-side buffer (values stay on the device until a flush) and host values (Python floats)
        self._blocks: list[_Block] = []
        self._host: list[tuple[int, tuple[str, ...], list[float]]] = []
        # schedules; their positions travel in checkpoints
        self.schedules: dict[str, Any] = {"scalars": Modulo(config.scalars_every_n_steps), "layers": Every(50),
                                          "activations": Every(0)}
        self._last_seq = 0
        # per step
        self._step: int | None = None
        self._measuring = False
        self._active: list[Collector] = []  # collectors due at this step
        self._stateful: list[Collector] = []  # those of them with per-step state
        self._lists: dict[tuple[bool, ...], tuple[list[Collector], ...]] = {}  # hook lists per due pattern
        self._on_batch: list[Collector] = []
        self._on_grads: list[Collector] = []
        self._on_end: list[Collector] = []
        # per fit
        self.failures = Failures()
        self._opt_params: dict[int, list[tuple[str, Tensor]]] = {}  # (name, parameter) of each optimizer
        self._opt_sizes: dict[int, tuple[int, int]] = {}  # (param groups, parameters) when indexed
        self._param_names: dict[int, str] = {}
        self._unnamed: set[int] = set()  # optimizers with parameters the module did not show at the start
        self._needs_probe = False
        self._t0 = 0.0
        self._budget_s = 0.0  # seconds spent in budgeted collectors (sharpness): not training time
        self._steps_seen = 0
        self._steps_since_flush = 0
        self._flush_every = config.flush_every_n_steps or FLUSH_EVERY_N_STEPS  # adapted per flush when auto
        self._warned: set[str] = set()
        self.flushes = 0  # flush calls so far: the boundaries at which live checks may run

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
        unclipped_gradients: bool = False,
    ) -> None:
        """Begin (or continue) monitoring a fit. ``store_path`` is None on processes that do not write.
        ``resume`` is a state from :meth:`state_dict`: the store is truncated to what it held at that checkpoint.
        ``planned_steps``: the optimizer steps this fit will take from ``start_step`` (default
        ``meta["start_step"]`` or 0), None if unknown; the sharpness schedule is planned over them.
        ``unclipped_gradients``: the adapter reads the final gradients before any clipping and reports every
        accumulation micro-batch (:attr:`Context.unclipped_gradients`)."""
        cfg = self.config
        self.every_n = every_n_steps
        self._reduce = reduce or _no_reduce
        self._module = module
        self._blocks.clear()
        self._host.clear()
        self._step = None
        self._measuring = False
        self._active, self._stateful = [], []
        self._lists = {}
        self._param_names = {id(p): n for n, p in named_parameters(module)}
        self._opt_params, self._opt_sizes = {}, {}
        self._unnamed = set()
        self.failures = failures = Failures(on_new=self._errors_changed)
        act_every = cfg.activations_every_n_steps
        layers, acts = self.schedules["layers"], self.schedules["activations"]
        layers.every = every_n_steps
        acts.every = every_n_steps if act_every is None else act_every
        if resume is not None:
            layers.last = resume.get("last_bucket")
            acts.last = resume.get("last_act_bucket")
            self._last_seq = int(resume.get("seq", 0))
            for c in self.collectors:
                state = resume.get("collectors", {}).get(c.name)
                if isinstance(state, Mapping):
                    c.load_state_dict(state)
        else:
            acts.last = None
        counts: dict[str, int] = {}
        named_opts = []
        for opt in optimizers:
            cls = type(opt).__name__
            counts[cls] = counts.get(cls, 0) + 1
            named_opts.append((opt, cls if counts[cls] == 1 else f"{cls}-{counts[cls] - 1}"))
        self._t0 = time.perf_counter()
        self._budget_s = 0.0
        self._steps_seen = 0
        self._flush_every = cfg.flush_every_n_steps or FLUSH_EVERY_N_STEPS
        first = int(start_step if start_step is not None else meta.get("start_step", 0) or 0)
        if store_path is not None:
            mode = "a" if (resume is not None or append) else "w"
            if mode == "w" and Path(store_path).exists():
                warnings.warn(f"dyncheck: replacing the existing run store {store_path}", stacklevel=2)
            if mode == "a":
                failures.load(self._prior_errors(store_path))
            self.store = RunWriter(store_path, mode=mode, sync_every_s=_SYNC_EVERY_S)
            self.store_path = self.store.path
            if resume is not None and "seq" in resume:
                dropped = self.store.truncate(self._last_seq)
                self.store.set_meta(resumed_from_step=meta.get("start_step"), resume_dropped_chunks=dropped)
            self.store.set_meta(**meta)
            self.store.set_meta(status="running", ended=None, exception=None, measurement_errors=failures.errors)
        self._ctx = ctx = Context(
            module=module, optimizers=named_opts, schedules=self.schedules, emit=self._emit,
            emit_host=self._emit_host, failures=failures, probe_loss=probe_loss, has_store=self.store is not None,
            start_step=first, planned_steps=planned_steps, clock=self._train_seconds,
            sharded=has_sharded(list(module.parameters()) + [p for o in optimizers for g in o.param_groups
                                                              for p in g["params"]]))
        ctx.unclipped_gradients = unclipped_gradients
        for c in self.collectors:
            self._guard(c, "start", c.start, ctx)
        for opt, _ in named_opts:
            self._index_optimizer(opt)
        self._needs_probe = probe_loss is not None and any(PROBE_BATCH in c.needs and c.enabled
                                                           for c in self.collectors)

    def _train_seconds(self) -> float:
        """Training seconds of this fit so far (the time budgeted collectors took excluded)."""
        return time.perf_counter() - self._t0 - self._budget_s

    def finish(self, status: str, *, error: BaseException | None = None, reduce: bool = True) -> None:
        """Flush and close; record how the run ended (``finished``, ``interrupted`` or ``crashed``)."""
        for c in self.collectors:
            if isinstance(c, ActivationCollector) and c.fit.recorder is not None:
                c.fit.recorder.detach()  # first: nothing may stay hooked into the model
        try:
            self.flush(reduce=reduce, final=True)
        finally:
            if self.store is not None and not self.store.closed:
                info: dict[str, Any] = {"status": status, "ended": time.time()}
                for c in self.collectors:
                    try:
                        info.update(c.meta())
                    except Exception as exc:  # a collector's summary must not cost the run its ending
                        self.failures.failed(c.name, [(None, exc)], None, what="summary failed")
                info.setdefault("unchanged_parameters", [])
                info["duration_s"] = round(time.perf_counter() - self._t0, 6)
                info["measurement_errors"] = self.failures.errors
                if error is not None:
                    info["exception"] = {"type": type(error).__name__, "message": str(error)[:2000]}
                self.store.set_meta(**info)
                self._last_seq = self.store.last_seq()
                self.store.close()
            self.store = None
            for c in self.collectors:
                c.close()
            if self._ctx is not None:
                self._ctx.probe_batch = None
            self._ctx = None
            self._module = None

    # -- collectors --------------------------------------------------------------------------------------------
    def _guard(self, c: Collector, hook: str, fn: Callable[..., None], *args: Any) -> None:
        """Call a collector's hook; an exception turns the collector off (one warning, measurement_errors)."""
        try:
            fn(*args)
        except Exception as exc:  # a measurement must never break the training it observes
            self._collector_failed(c, exc)

    def _collector_failed(self, c: Collector, exc: BaseException) -> None:
        c.enabled = False
        self._lists.clear()
        step = self._step if isinstance(self._step, int) else None
        self.failures.failed(c.name, [(None, exc)], step)

    def _emit(self, step: int, names: tuple[str, ...], values: Tensor, op: str) -> None:
        self._blocks.append(_Block(step, names, values, op))

    def _emit_host(self, step: int, names: tuple[str, ...], values: list[float]) -> None:
        self._host.append((step, names, values))

    # -- per batch ---------------------------------------------------------------------------------------------
    def batch_start(self, step: int, batch: Any) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        ctx.batch = batch
        if self._needs_probe and ctx.probe_batch is None:
            self._needs_probe = any(PROBE_BATCH in c.needs and c.enabled for c in self.collectors)
            if self._needs_probe:
                ctx.probe_batch = _clone_batch(batch)
        if self._step == step:  # another batch of the same optimizer step (gradient accumulation)
            return
        self._step = step
        self._measuring = self.schedules["layers"].due(step)
        # which collectors are due: few combinations in a run, so the hook lists are made once per combination
        due = tuple(c.enabled and c.due(step) for c in self.collectors)
        lists = self._lists.get(due)
        if lists is None:
            active = [c for c, d in zip(self.collectors, due) if d]
            lists = self._lists[due] = (active, [c for c in active if c.overrides("step_start")],
                                        [c for c in active if c.overrides("batch")],
                                        [c for c in active if c.overrides("gradients")],
                                        [c for c in active if c.overrides("step_end")],
                                        [c for c in active if c.has_step_state])
        self._active, on_start, self._on_batch, self._on_grads, self._on_end, self._stateful = lists
        for c in self._stateful:
            c.now = c.Step()
        for c in on_start:
            if not c.enabled:
                continue
            budgeted = c.schedule == "budget"  # its time is not training time
            t = time.perf_counter() if budgeted else 0.0
            try:
                c.step_start(step)
            except Exception as exc:  # a measurement must never break the training it observes
                self._collector_failed(c, exc)
            if budgeted:
                self._budget_s += time.perf_counter() - t

    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are final here (after accumulation, all-reduce and AMP unscaling, before clipping)."""
        key = id(optimizer)
        params = self._opt_params.get(key)
        if params is None:
            return
        if self._unnamed and key in self._unnamed:
            params = self._name_again(optimizer, step)
        groups, sizes = optimizer.param_groups, self._opt_sizes[key]
        # parameters added during training: a new param group (seen at once), or appended to one (at measuring steps)
        if len(groups) != sizes[0] or (self._measuring and sum(len(g["params"]) for g in groups) != sizes[1]):
            params = self._index_optimizer(optimizer, step)
        if not self._on_grads or not params:
            return
        grads = [p.grad for _, p in params]
        if any(g is None for g in grads):
            named = [(n, p) for (n, p), g in zip(params, grads) if g is not None]
            if not named:
                return
            grads = [g for g in grads if g is not None]
        else:
            named = params
        gs = GradStep(optimizer, params, named, grads)
        for c in self._on_grads:
            if c.enabled:
                try:
                    c.gradients(step, gs)
                except Exception as exc:  # a measurement must never break the training it observes
                    self._collector_failed(c, exc)

    def batch_end(self, step: int, loss: Tensor | None, *, stepped: bool) -> None:
        """``stepped``: an optimizer step completed in this batch (False while accumulating gradients)."""
        for c in self._on_batch:
            if c.enabled:
                try:
                    c.batch(step, loss)
                except Exception as exc:  # a measurement must never break the training it observes
                    self._collector_failed(c, exc)
        if not stepped:
            return
        if self._ctx is not None:
            self._ctx.batch = None  # the step's batch is not kept past its step
        self._steps_seen += 1
        for c in self._on_end:
            if c.enabled:
                try:
                    c.step_end(step)
                except Exception as exc:
                    self._collector_failed(c, exc)
        if self._measuring:
            self.schedules["layers"].take(step)
        self._steps_since_flush += 1
        if self._steps_since_flush >= self._flush_every:
            self.flush()
            self._adapt_flush_interval()
        for c in self._stateful:
            c.now = c.Step()  # frees the step's tensors (loss, weight copies) now
        self._measuring = False
        self._step = step

    # -- parameters --------------------------------------------------------------------------------------------
    def _index_optimizer(self, opt: torch.optim.Optimizer, step: int | None = None) -> list[tuple[str, Tensor]]:
        """(name, parameter) of every parameter the optimizer holds, in param-group order; called at the start
        and again when parameters were added to it (the collectors see the new ones then, before their first
        update)."""
        params = [p for g in opt.param_groups for p in g["params"]]
        if self._module is not None and any(id(p) not in self._param_names for p in params):
            self._param_names = {id(p): n for n, p in named_parameters(self._module)}
        named = [(self._param_names.get(id(p), f"param{i}"), p) for i, p in enumerate(params)]
        if id(opt) in self._opt_sizes:  # added during training
            assert self._ctx is not None
            self._ctx.plans.clear()
            for c in self.collectors:
                if c.enabled and c.overrides("new_parameters"):
                    self._guard(c, "new_parameters", c.new_parameters, step if step is not None else 0, named)
        self._opt_params[id(opt)] = named
        self._opt_sizes[id(opt)] = (len(opt.param_groups), len(params))
        if len(named) and any(id(p) not in self._param_names for p in params):
            self._unnamed.add(id(opt))
        return named

    def _name_again(self, opt: torch.optim.Optimizer, step: int) -> list[tuple[str, Tensor]]:
        """Once, at the first final gradients: name the parameters the module did not show at the start. FSDP2
        leaves a root module's unsharded parameters registered after a forward without backward (the sanity
        check's validation), so the optimizer's sharded parameters are found only after a backward. The
        collectors see the newly named ones as new parameters (before their first update)."""
        self._unnamed.discard(id(opt))
        before = self._opt_params[id(opt)]
        if self._module is not None:
            self._param_names = {id(p): n for n, p in named_parameters(self._module)}
        named = [(self._param_names.get(id(p), n), p) for n, p in before]
        found = [(n, p) for (n, p), (old, _) in zip(named, before) if n != old]
        self._opt_params[id(opt)] = named
        if found:
            assert self._ctx is not None
            for c in self.collectors:
                if c.enabled and c.overrides("new_parameters"):
                    self._guard(c, "new_parameters", c.new_parameters, step, found)
        return named

    # -- what cannot be measured -------------------------------------------------------------------------------
    def _errors_changed(self, errors: list[dict[str, Any]]) -> None:
        if self.store is not None and not self.store.closed:
            self.store.set_meta(measurement_errors=errors)

    @staticmethod
    def _prior_errors(store_path: str | Path) -> Any:
        """When a fit continues a run: the measurement errors it recorded so far."""
        try:
            with open_run(store_path) as run:
                return run.meta.get("measurement_errors")
        except Exception:
            return None

    # -- other scalars -----------------------------------------------------------------------------------------
    def record(self, step: int, values: Mapping[str, Tensor | float], op: str = "mean") -> None:
        """Buffer scalar values (tensors stay on the device) for metrics named by the keys."""
        if not values:
            return
        off = self.failures.off_items.get("record")
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
                    self.failures.off_items.setdefault("record", set()).add(k)
                    self.failures.failed(k.split("/", 1)[0], [(k, exc)], step)
            if not kept:
                return
            values, vals = kept, torch.stack(list(kept.values()))
        self._blocks.append(_Block(step, interned(tuple(values)), vals, op))

    # -- flushing ----------------------------------------------------------------------------------------------
    def flush(self, reduce: bool = True, final: bool = False) -> None:
        """Reduce buffered statistics across processes (when ``reduce``), copy them to the host in one transfer
        and append them to the store. Every process must call this at the same points when ``reduce`` is true.
        ``final`` (the end of the fit, a checkpoint): collectors that hold values back to write them in bulk
        (``before_flush``) hand over all they hold.

        At most three collectives, one per operation: ``"sum"`` also carries the shares of sharded norms (``"rss"``
        and ``"ratio"`` blocks travel squared, the root is taken after), ``"max"`` also carries ``"min"`` blocks
        (negated). Without the reduction (a crash) under several processes, blocks of shares are left out: this
        process's shares are not values of the whole tensors."""
        for c in self.collectors:
            if c.enabled and c.overrides("before_flush"):
                self._guard(c, "before_flush", c.before_flush, final)
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
        post: dict[int, str] = {}  # position in mats -> what to do after the reduction ("rss", "ratio", "min")
        reducing = reduce and self._reduce is not _no_reduce
        for (names, op), bs in groups.items():
            if op in _SHARE_OPS:
                if not reducing and self._reduce is not _no_reduce:
                    continue  # shares without their reduction: not the whole tensors' values
                mat = _real(torch.stack([b.values.reshape(-1) for b in bs]))
                post[len(mats)] = op
                mats.append((names, "max" if op == "min" else "sum", [b.step for b in bs],
                             -mat if op == "min" else mat * mat))
                continue
            if op == "norm":
                mat = _norm_rows([b.values for b in bs])
                op = "none"
            else:
                mat = _stack_rows([b.values for b in bs])
            mats.append((names, op, [b.step for b in bs], _real(mat)))
        if reducing:
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
        for i, op in post.items():
            names, _, steps, mat = mats[i]
            if op == "min":
                mat = -mat
            else:
                mat = mat.sqrt()
                if op == "ratio":  # numerators | denominators
                    num, den = mat[:, : len(names)], mat[:, len(names):]
                    mat = torch.where(den > 0, num / den, torch.full_like(den, float("nan")))
            mats[i] = (names, "none", steps, mat)
        if self.store is None:
            self._flushed()
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
        if self._ctx is not None and self._ctx.sharded:  # what collectors of sharded tensors learn from the reduction
            self._ctx.reduced = {k: v[-1] for k, (_, v) in series.items() if v}
        self._flushed()

    def _adapt_flush_interval(self) -> None:
        """``flush_every_n_steps=None`` on one process: flush about every :data:`FLUSH_EVERY_S` seconds of training
        from now on. A flush costs milliseconds whatever the step (a store transaction, a copy to the host): every
        100 steps of a 2 ms step that is 1-2% of the training; every 2 s it is ~0.1%, and a killed run loses at most
        those seconds. Several processes keep the fixed interval: their flushes are collectives, at the same steps."""
        if self.config.flush_every_n_steps is not None or self._reduce is not _no_reduce or not self._steps_seen:
            return
        step_s = self._train_seconds() / self._steps_seen
        want = FLUSH_EVERY_S / step_s if step_s > 0 else FLUSH_MAX_STEPS
        self._flush_every = int(min(max(want, FLUSH_MIN_STEPS), FLUSH_MAX_STEPS))

    def _flushed(self) -> None:
        for c in self.collectors:
            if c.enabled and c.overrides("flushed"):
                self._guard(c, "flushed", c.flushed)

    # -- checkpoint state --------------------------------------------------------------------------------------
    @property
    def measuring(self) -> bool:
        """Whether the current step takes per-layer statistics."""
        return self._measuring

    @property
    def wants_probe_batch(self) -> bool:
        """Some collector of this fit needs the probe batch and has none yet (an adapter that sees batches only
        inside the model's forward hands the first one to :meth:`batch_start` while this holds)."""
        return self._needs_probe and self._ctx is not None and self._ctx.probe_batch is None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry so that a resumed run continues its series without duplicates.
        Flushes first (a collective under DDP: every process saves checkpoints at the same points)."""
        self.flush(final=True)
        state: dict[str, Any] = {"seq": self._last_seq, "last_bucket": self.schedules["layers"].last,
                                 "last_act_bucket": self.schedules["activations"].last,
                                 "store": str(self.store_path) if self.store_path is not None else None}
        saved = {c.name: c.state_dict() for c in self.collectors}
        saved = {k: v for k, v in saved.items() if v}
        if saved:
            state["collectors"] = saved
        return state

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=2)


#: the run store reaches the disk (fsync) at least this often while training, and at the end; in between each
#: flush reaches the operating system (a killed process loses nothing flushed). See README, "Durability".
_SYNC_EVERY_S = 30.0
#: the automatic flush interval (``flush_every_n_steps=None``): the first, until a step time is measured, and the
#: one of several processes; then about FLUSH_EVERY_S of training, between FLUSH_MIN_STEPS and FLUSH_MAX_STEPS
FLUSH_EVERY_N_STEPS = 100
FLUSH_EVERY_S = 2.0
FLUSH_MIN_STEPS = 10
FLUSH_MAX_STEPS = 1000


#: block operations whose values are this process's shares (see Context.sharded): reduced inside "sum" or "max"
_SHARE_OPS = frozenset({"rss", "ratio", "min"})


def _norm_rows(values: list[Tensor]) -> Tensor:
    """``[len(values), 1]``: the L2 norm of each block's vector, in one kernel when all have one length."""
    if len({v.numel() for v in values}) == 1:
        return torch.linalg.vector_norm(torch.stack(values), dim=1, keepdim=True)
    return torch.stack([torch.linalg.vector_norm(v) for v in values]).reshape(-1, 1)


def _stack_rows(values: list[Tensor]) -> Tensor:
    """``[len(values), k]``: each block's values as a row (blocks of one metric list have one length). One
    ``stack`` of the blocks as they are when they share a shape (a flush interval's loss values: hundreds of 0-d
    tensors; reshaping each first cost ~3 us a block; mixed dtypes are promoted, as the row-by-row stack does),
    else row by row."""
    try:
        return torch.stack(values).reshape(len(values), -1)
    except RuntimeError:  # shapes or dtypes differ between blocks
        return torch.stack([_real(v.reshape(-1)) for v in values])


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


def _clone_batch(batch: Any) -> Any:
    """The probe batch: a copy whose containers keep their type (an HF ``BatchEncoding``, dataclasses,
    namedtuples; :func:`dyncheck.measure.probe.clone_batch`)."""
    return clone_batch(batch)
