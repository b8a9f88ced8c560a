"""``ntk/distance``, ``ntk/velocity``, ``ntk/top_eig``, ``ntk/top_eig_share``: how far the empirical neural tangent
kernel on a fixed probe set moves during training (:mod:`dyncheck.measure.ntk`).

The probe set is the first ``ntk_examples`` (32) examples of the probe batch (a copy of the run's first batch,
shared with sharpness). The reference kernel K_0 is taken at the first step of the run (before its first update);
each later probe at step t records the kernel distance 1 - <K_0, K_t>_F / (||K_0||_F ||K_t||_F) (Fort et al. 2020),
the velocity (the same distance between this probe's kernel and the previous one's), the top eigenvalue of K_t and
its share of the trace. Probes run on the budget schedule of sharpness (:class:`~dyncheck.measure.sharpness.
SharpnessSchedule`, a share ``ntk_budget`` of the training time, one "product" per probe; its first probe at a
tenth of the run rather than 1%: the reference is the early point) or every
``ntk_every_n_steps`` steps, on rank zero only, in eval mode (dropout off; see the measure's docstring), with the
training state restored after each probe (random generators, buffers, ``.grad``, train/eval flags).

K_0 and the previous kernel travel in checkpoints (``self.saved``, m x m floats), with a fingerprint of the probe
inputs: a resumed fit whose first batch is not the one K_0 was taken on starts a new reference (meta
``ntk_reference_step`` says where the distances count from).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import MeasureError
from ..measure.ntk import OutputFn, empirical_ntk, kernel_distance, kernel_stats, probe_slice
from ..measure.probe import eager_math
from ..measure.sharpness import SharpnessSchedule, preserved_training_state
from .base import PROBE_BATCH, Collector, interned

__all__ = ["NTKCollector"]

_FIRST = interned(("ntk/top_eig", "ntk/top_eig_share", "ntk/distance"))
_LATER = interned(("ntk/top_eig", "ntk/top_eig_share", "ntk/distance", "ntk/velocity"))

#: the budget schedule's first probe after the reference comes at 1/10 of a planned run (a fresh fit's)
FIRST_PROBE_SHARE_INV = 10

#: what the run's meta says about the scalar output the kernel is taken of
DEFAULT_OUTPUT = "sum of the model's outputs per example (module(x).reshape(m, -1).sum(1)), eval mode"


def _no_forward(module: Any) -> bool:
    """Whether the module's class has no ``forward`` of its own (``nn.Module``'s or ``LightningModule``'s, which
    raise ``NotImplementedError``)."""
    fwd = getattr(type(module), "forward", None)
    return getattr(fwd, "__qualname__", "") in ("Module._forward_unimplemented", "LightningModule.forward")


def _fingerprint(batch: Any) -> str:
    """A short hash of the probe examples' tensors (shapes and bytes), to recognise the probe set after a resume."""
    h = hashlib.sha1()

    def walk(v: Any) -> None:
        if isinstance(v, Tensor):
            t = v.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(str(k).encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(batch)
    return h.hexdigest()[:16]


#: the default budget of the NTK probes (``ntk_budget=None``), for models whose probe Jacobian holds at most
#: :data:`NTK_AUTO_MAX` values; above, the default is off (a probe costs a backward per example and its memory
#: grows with the model)
NTK_AUTO_BUDGET = 0.005
NTK_AUTO_MAX = 1 << 24
#: the default is off for planned runs shorter than this: at the default budget such a run pays for 50 training
#: steps' worth of probes, and the reference kernel alone costs 5-30 training steps (measured: a tiny transformer
#: 4.5, the digits CNN 28 with its first call's one-off costs), so the kernel would get no probe after it and the
#: reference would be spent for nothing (the corpus's runs of 200-3,000 steps got 0 probes after it)
NTK_AUTO_MIN_STEPS = 10_000


class NTKCollector(Collector):
    name = "ntk"
    metrics = ("ntk/distance", "ntk/velocity", "ntk/top_eig", "ntk/top_eig_share")
    reduce = "none"
    needs = frozenset({PROBE_BATCH})
    schedule = "budget"

    def __init__(self, *, budget: float, every_n: int | None, examples: int = 32,
                 output_fn: OutputFn | None = None, auto: bool = False) -> None:
        super().__init__()
        self.budget, self.every_n, self.examples, self.output_fn = budget, every_n, examples, output_fn
        self.auto = auto  # the default schedule: on only for models whose probe Jacobian is small

    @dataclass
    class Fit:
        schedule: SharpnessSchedule | None = None
        probe: Any = None  # the probe examples (a slice of the probe batch)
        seconds: float = 0.0
        probes: int = 0
        looped: bool = False
        n_params: int = 0
        off: str | None = None  # why the NTK is off without a failure

    @dataclass
    class Saved:
        k0: list | None = None  # the reference kernel (m x m floats)
        prev: list | None = None  # the last probe's kernel
        ref_step: int | None = None
        fingerprint: str | None = None

    def start(self, ctx) -> None:
        super().start(ctx)
        # the reference is the run's first point; the budget's first probe waits for a tenth of a planned run (the
        # sharpness schedule's 1% would land where the kernel has not moved yet), the rest spread over the run
        planned, shift = ctx.planned_steps, 0
        if planned and not self.every_n and ctx.start_step == 0:
            shift = planned // FIRST_PROBE_SHARE_INV
        self.fit.schedule = SharpnessSchedule(budget=self.budget, every_n=self.every_n,
                                              total_steps=planned - shift if planned else planned, max_iter=1,
                                              start_step=ctx.start_step + shift)
        if ctx.probe_loss is None or self.fit.schedule.mode == "off" or not ctx.has_store:
            self.enabled = False  # no probe batch (the monitor keeps one only with a probe loss), or not rank 0
            return
        trainable = [(n, p) for n, p in ctx.module.named_parameters() if p.requires_grad]
        complex_params = [n for n, p in trainable if p.is_complex()]
        size = self.examples * sum(p.numel() for _, p in trainable)
        if self.auto and size > NTK_AUTO_MAX:  # not a failure: the default keeps the probe cheap
            self.enabled = False
            self.fit.off = (f"off by default for this model: its probe Jacobian would hold {size:,} values "
                            f"({self.examples} examples x trainable parameters; the default measures up to "
                            f"{NTK_AUTO_MAX:,}); set ntk_budget= or ntk_every_n_steps= to measure it")
        elif self.output_fn is None and _no_forward(ctx.module):  # not a failure: nothing to call by default
            self.enabled = False
            self.fit.off = ("the module has no forward() of its own (its training_step calls submodules): pass "
                            "ntk_output_fn=fn(module, batch) -> Tensor[m]")
        elif ctx.sharded:
            self.turn_off(ctx.start_step, MeasureError("the parameters are sharded DTensors (FSDP2 / tensor "
                                                   "parallelism): the probe's forward is a collective that rank 0 "
                                                   "cannot run alone"), what="is not supported")
        elif not trainable:
            self.turn_off(ctx.start_step, MeasureError("the model has no trainable parameters"))
        elif complex_params:
            self.turn_off(ctx.start_step, MeasureError(f"complex parameters ({', '.join(complex_params[:5])}): the NTK "
                                                   "is taken over real parameters only"))
        elif self.auto and planned is not None and planned < NTK_AUTO_MIN_STEPS:  # not a failure either
            self.enabled = False
            self.fit.off = (f"off by default on this run: {planned:,} planned steps, fewer than "
                            f"{NTK_AUTO_MIN_STEPS:,}: its {NTK_AUTO_BUDGET:.1%} budget would not pay for the "
                            f"reference kernel and a probe after it; set ntk_budget= or ntk_every_n_steps= to "
                            f"measure it")

    @property
    def seconds(self) -> float:
        return self.fit.seconds

    def due(self, step: int) -> bool:
        sched, ctx = self.fit.schedule, self.ctx
        if sched is None or ctx is None or ctx.probe_batch is None:
            return False
        return self.fit.probe is None or step >= sched.next_step

    def step_start(self, step: int) -> None:
        ctx, fit, saved = self.ctx, self.fit, self.saved
        assert ctx is not None and fit.schedule is not None
        if fit.probe is None:  # the first step of this fit: the probe set, and the reference if there is none
            fit.probe = probe_slice(ctx.probe_batch, self.examples)
            fp = _fingerprint(fit.probe)
            if saved.k0 is None or saved.fingerprint != fp:
                self.saved = self.Saved(fingerprint=fp)
                cost = self._measure(step)
                fit.schedule.spent += cost  # the reference is paid from the same allowance
                return
        if fit.schedule.admit(step, ctx.clock()) is not None:
            self._measure(step, sched=True)

    def _kernel(self) -> Tensor:
        """The kernel on the probe set at the current weights."""
        ctx, fit = self.ctx, self.fit
        assert ctx is not None
        module = ctx.module
        params = [p for p in module.parameters() if p.requires_grad]
        # compiled modules run eagerly, attention by the math backend: the vmapped backward needs retain_graph,
        # which compiled graphs with donated buffers refuse
        with preserved_training_state(module, params), torch.jit.optimized_execution(False), eager_math():
            module.eval()  # dropout off, BatchNorm on its running statistics (see dyncheck.measure.ntk)
            res = empirical_ntk(module, fit.probe, output_fn=self.output_fn, params=params)
        fit.looped = fit.looped or res.looped
        fit.n_params = res.n_params
        return res.kernel

    def _measure(self, step: int, sched: bool = False) -> float:
        """Probe at the current weights (those of step ``step``'s forward), label the values ``step``, and return
        the probe's seconds. With ``sched`` the schedule records the probe's cost and plans the next."""
        ctx, fit, saved = self.ctx, self.fit, self.saved
        assert ctx is not None and fit.schedule is not None
        t = time.perf_counter()
        try:
            k = self._kernel()
        finally:
            cost = time.perf_counter() - t
            fit.seconds += cost
        if not torch.isfinite(k).all():
            raise MeasureError("the NTK on the probe set is not finite (non-finite weights or outputs)")
        top, share = kernel_stats(k)
        if saved.k0 is None:
            saved.k0, saved.ref_step = k.tolist(), step
            names, vals = _FIRST, [top, share, 0.0]
        else:
            k0 = torch.tensor(saved.k0, dtype=torch.float64)
            prev = torch.tensor(saved.prev, dtype=torch.float64) if saved.prev is not None else k0
            if k0.shape != k.shape:
                raise MeasureError(f"the probe set changed size ({k0.shape[0]} -> {k.shape[0]} examples)")
            names, vals = _LATER, [top, share, kernel_distance(k0, k), kernel_distance(prev, k)]
        saved.prev = k.tolist()
        if sched:
            fit.schedule.record(step, cost, n_hvp=1, graph_s=0.5 * cost, cold=fit.probes == 0, hvp_s=0.5 * cost,
                                products_s=0.5 * cost)
        fit.probes += 1
        ctx.emit_host(step, names, vals)
        return cost

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() if self.saved.k0 is not None else {}

    def meta(self) -> dict[str, Any]:
        fit = self.fit
        out: dict[str, Any] = {"ntk_time_s": round(fit.seconds, 6), "ntk_probes": fit.probes}
        if fit.off:
            out["ntk"] = {"off": fit.off}
        if fit.probes:
            out["ntk"] = {"examples": int(len(self.saved.k0)) if self.saved.k0 is not None else None,
                          "output": getattr(self.output_fn, "__qualname__", "ntk_output_fn") if self.output_fn
                          else DEFAULT_OUTPUT,
                          "reference_step": self.saved.ref_step, "parameters": fit.n_params,
                          "one_backward_per_example": fit.looped}
            if fit.schedule is not None:
                out["ntk"]["schedule"] = fit.schedule.facts()
        return out
