"""``noise/b_simple``, ``noise/trace_sigma``, ``noise/grad_sq`` and ``batch/size``: the gradient noise scale
B_simple = tr(Σ)/|G|² of McCandlish et al. 2018 (:mod:`dyncheck.measure.noise`), its smoothed numerator and
denominator (exponential moving averages, weight of the past ``noise_ema``, bias-corrected), and the training
batch size per optimizer step beside it (examples of the probe batch x micro-batches per step x processes).

Where the squared norms at two batch sizes come from, in order of preference:

(a) DDP, per-process gradients vs the all-reduced ones -- not available: DDP all-reduces the gradients inside
    the backward pass (bucket hooks overwrite ``.grad`` in place), so a callback never sees the local gradients;
    reading them needs a DDP communication hook on the wrapped model, which belongs to the strategy, not to a
    monitor. Recorded as skipped in the meta.
(b) gradient accumulation with several micro-batches (one process): ``.grad`` after each micro-batch minus the
    copy taken after the one before gives each micro-batch's gradient (scaled by 1/A, the convention of Lightning
    and of the usual loop ``(loss / A).backward()``), the final gradient is their mean. Costs one copy of the
    gradients per measured step, no extra forward or backward.
(c) otherwise a probe at step start on the step's own batch (before its forward; the kept probe batch, a copy of
    the first batch, where the adapter does not pass batches), split in 8 random equal micro-batches, their
    gradients by ``torch.autograd.grad`` (``.grad`` untouched), the model's state preserved (random generators,
    buffers, flags); B_small is one micro-batch. With the Lightning callback (automatic optimization), whose
    final gradients come before clipping and after every accumulation micro-batch (``ctx.unclipped_gradients``),
    the big batch is the step's own gradient, free (B_big = batch x micro-batches x processes: under DDP the
    global batch), and 2 micro-batches are computed (2 passes over a quarter of the batch). Elsewhere (the plain
    loop and Hugging Face adapters read gradients after clipping, and the Hugging Face one does not see
    accumulation micro-batches) 4 are computed and their mean is the big batch (B_big = batch/2). It runs on
    the process that writes only (rank zero).

The schedule (:class:`~dyncheck.measure.noise.NoiseSchedule`) is ``noise_every_n_steps`` or a share
``noise_budget`` of the training time. Values are rank zero's. The probe uses the step's own batch rather than
the fixed probe batch: on one fixed batch every probe carries that batch's sampling error (the estimate of |G|²
from one batch of B has an error of order tr(Σ)/B, large when B is far below the noise scale), which the moving
averages cannot remove; on the training batches the errors of successive probes are independent and average out.
The micro-batches are new tensors (indexing copies), so the training's batch is never touched.

The estimate assumes batches drawn at random. Batches stratified by the loader (data in class order, unshuffled)
have less noise than random ones and bias |G|² low: on the digits data in its stored order (batches of 16 with
nearly every class once), the mean |G|² estimate came out negative (-0.01 against an exact +0.018).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..measure.noise import NoiseEMA, NoiseSchedule, batch_size_of, noise_probe, sq_norm, two_batch_estimates
from ..measure.tensors import world_size
from .base import PROBE_BATCH, Collector, interned

__all__ = ["NoiseScaleCollector", "DDP_REASON"]

#: a probe splits the batch into this many micro-batches (fewer when the batch is smaller) and computes the
#: gradients of PROBE_EVALUATED of them: 4 passes over half the batch in all (B_small = batch/8, B_big = batch/2);
#: where the step's own gradient is the big batch (``Context.unclipped_gradients``), of PROBE_EVALUATED_WITH_STEP
PROBE_MICRO_BATCHES = 8
PROBE_EVALUATED = 4
PROBE_EVALUATED_WITH_STEP = 2

DDP_REASON = ("DDP all-reduces gradients inside the backward pass (bucket hooks overwrite .grad in place), so the "
              "per-process gradients never reach a callback; reading them needs a DDP communication hook on the "
              "wrapped model, which the strategy owns")
SHARDED_REASON = ("the parameters are sharded DTensors (FSDP2 / tensor parallelism): the probe's forward is a "
                  "collective that rank 0 cannot run alone, and local gradients are shards")
#: the micro-batches' summed gradient, squared, above this many times the final gradient's: the micro-batch
#: gradients were scaled (fp16's GradScaler unscales only the final gradient, by 2^16 at first)
SCALED_RATIO = 1e4
SCALED_REASON = ("the micro-batch gradients are scaled (a loss scaler such as fp16's GradScaler) and only the final "
                 "gradient is unscaled")
_NAMES = interned(("noise/b_simple", "noise/trace_sigma", "noise/grad_sq", "batch/size"))
_NAMES_NO_B = interned(("noise/trace_sigma", "noise/grad_sq", "batch/size"))



def _dense(t: Tensor) -> Tensor:
    return t.to_dense() if t.layout != torch.strided else t


class NoiseScaleCollector(Collector):
    name = "noise"
    metrics = ("noise/b_simple", "noise/trace_sigma", "noise/grad_sq", "batch/size")
    reduce = "none"
    needs = frozenset({PROBE_BATCH})
    schedule = "budget"  # its own (NoiseSchedule); the probe's time is not training time

    def __init__(self, *, budget: float, every_n: int | None, ema: float,
                 micro_batches: int = PROBE_MICRO_BATCHES, evaluated: int = PROBE_EVALUATED,
                 evaluated_with_step: int = PROBE_EVALUATED_WITH_STEP) -> None:
        super().__init__()
        self.budget, self.every_n, self.ema = budget, every_n, ema
        self.micro_batches, self.evaluated, self.evaluated_with_step = micro_batches, evaluated, evaluated_with_step

    @dataclass
    class Fit:
        schedule: NoiseSchedule | None = None
        ema: NoiseEMA | None = None
        source: str | None = None  # "accumulation" | "probe", decided at the first measured step
        skipped: dict[str, str] = field(default_factory=dict)  # source -> why it was not used
        generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
        world: int = 1
        seconds: float = 0.0

    @dataclass
    class Saved:  # travels in checkpoints: a resumed run's moving averages go on where they were
        grad_sq_acc: float = 0.0
        trace_acc: float = 0.0
        weight: float = 0.0

    @dataclass
    class Step:
        seen_final: bool = False  # the step's final gradients were seen (later batch hooks: after the step)
        micro: int = 0  # batches that ended before the final gradients (accumulation micro-batches)
        prev: list[Tensor] | None = None  # .grad after the last micro-batch
        delta_sq: Tensor | None = None  # sum over micro-batches of |.grad change|²
        estimate: tuple[float, float, float, float] | None = None  # (|G_small|², |G_big|², b_small, b_big)
        small: tuple[float, float] | None = None  # the probe's (|G_small|², b_small), before the step's gradient
        accumulated: int = 1  # micro-batches of this step
        batch: int = 0  # examples of the step's (first) batch on this process
        seconds: float = 0.0

    def start(self, ctx) -> None:
        super().start(ctx)
        fit = self.fit
        fit.schedule = NoiseSchedule(budget=self.budget, every_n=self.every_n, start_step=ctx.start_step,
                                     planned_steps=ctx.planned_steps)
        sv = self.saved  # the moving averages so far (a checkpoint's, or the last fit's)
        fit.ema = NoiseEMA(self.ema, grad_sq_acc=sv.grad_sq_acc, trace_acc=sv.trace_acc, weight=sv.weight)
        fit.world = world_size()
        if fit.schedule.mode == "off" or ctx.probe_loss is None:
            fit.skipped["all"] = "turned off (noise_budget=0 or noise_every_n_steps=0)" if \
                fit.schedule.mode == "off" else ("no probe loss (manual optimization needs sharpness_loss_fn; a "
                                                 "plain loop, probe_batch and sharpness_loss_fn)")
            self.enabled = False
            return
        if not any(p.requires_grad for p in ctx.module.parameters()):
            fit.skipped["all"] = "the model has no trainable parameters"
            self.enabled = False
            return
        if fit.world > 1:
            fit.skipped["ddp"] = DDP_REASON
            fit.skipped["accumulation"] = ("several processes: the micro-batches' gradients are local, the final "
                                           "one is all-reduced")
        else:
            fit.skipped["ddp"] = "a single process"
        if ctx.sharded:  # a known limit, not a failure: said in the meta, without a warning (it is on by default)
            fit.skipped["all"] = SHARDED_REASON
            self.enabled = False

    def _params(self) -> list[Tensor]:
        assert self.ctx is not None
        return [p for p in self.ctx.module.parameters() if p.requires_grad]

    def due(self, step: int) -> bool:
        ctx, sched = self.ctx, self.fit.schedule
        return ctx is not None and sched is not None and ctx.has_store and ctx.probe_batch is not None and \
            sched.due(step, ctx.clock())

    # -- (c) the probe --------------------------------------------------------------------------------------------
    def step_start(self, step: int) -> None:
        fit, ctx = self.fit, self.ctx
        assert ctx is not None and ctx.probe_loss is not None
        batch = ctx.batch if ctx.batch is not None else ctx.probe_batch
        size = batch_size_of(batch)
        if size is None:  # a limit of the data, not a failure: said in the meta
            self._quiet_off("the batch has no tensor with a leading batch dimension")
            return
        self.now.batch = size
        if fit.source != "probe":
            return  # the first measured step looks for accumulation first; or accumulation measures in its hooks
        if size < 2:
            self._quiet_off("batches of one example and no gradient accumulation: a probe needs two batch sizes")
            return
        t = time.perf_counter()
        if ctx.unclipped_gradients:  # the step's own gradient is the big batch: fewer passes, more examples
            sq_small, _, b_small, _ = noise_probe(ctx.module, ctx.probe_loss, batch, self.micro_batches,
                                                  fit.generator, evaluate=self.evaluated_with_step, big=False)
            self.now.small = (float(sq_small), float(b_small))
        else:
            est = noise_probe(ctx.module, ctx.probe_loss, batch, self.micro_batches, fit.generator,
                              evaluate=self.evaluated)
            self.now.estimate = (float(est[0]), float(est[1]), float(est[2]), float(est[3]))
        self.now.seconds += time.perf_counter() - t

    def _quiet_off(self, why: str) -> None:
        self.fit.skipped["all"] = why
        self.enabled = False

    # -- (b) gradient accumulation ---------------------------------------------------------------------------------
    def batch(self, step: int, loss: Tensor | None) -> None:
        now = self.now
        if now.seen_final or not self.enabled:
            return
        now.micro += 1
        if self.fit.source == "probe" or self.fit.world > 1:
            return
        t = time.perf_counter()
        with torch.no_grad():
            grads = [_dense(p.grad) if p.grad is not None else torch.zeros_like(p) for p in self._params()]
            if now.prev is None:
                d = sq_norm(grads)
            else:
                d = sq_norm(torch._foreach_sub(grads, now.prev))
            now.delta_sq = d if now.delta_sq is None else now.delta_sq + d
            now.prev = [g.detach().clone() for g in grads]
        now.seconds += time.perf_counter() - t

    def gradients(self, step: int, g: Any) -> None:
        now, fit = self.now, self.fit
        if now.seen_final or not self.enabled:
            return  # a second optimizer: the module's gradients were taken at the first
        now.seen_final = True
        now.accumulated = now.micro + 1
        if fit.source == "probe":
            if now.small is not None:
                self._probe_estimate()
            return
        if fit.world > 1 or now.prev is None or now.delta_sq is None:
            self._decide(False)
            return
        t = time.perf_counter()
        with torch.no_grad():
            grads = [_dense(p.grad) if p.grad is not None else torch.zeros_like(p) for p in self._params()]
            last = sq_norm(torch._foreach_sub(grads, now.prev))
            total, last_sq, final_sq, prev_sq = torch.stack(
                [now.delta_sq + last, last, sq_norm(grads), sq_norm(now.prev)]).cpu().tolist()
        now.prev = None
        if prev_sq > SCALED_RATIO * final_sq:  # .grad shrank 100x at the last micro-batch: a loss scaler's unscaling
            now.seconds += time.perf_counter() - t
            if fit.source is None:
                fit.skipped["accumulation"] = SCALED_REASON
                self._decide(False)
            elif fit.source == "accumulation":  # seen later (the scaler started later): the probe from now on
                fit.source = "probe"
                fit.skipped["accumulation"] = SCALED_REASON
                fit.skipped.pop("probe", None)
            return
        # a loop that gives the last batch's loss before optimizer.step(): that batch's change was taken already
        a = now.accumulated = now.micro + (1 if last_sq > 0 else 0)
        self._decide(a >= 2)
        if fit.source == "accumulation" and a >= 2:
            # .grad = (1/A) sum of micro-batch gradients: each change is g_i / A, the final gradient their mean
            b = float(now.batch)
            now.estimate = (total * a, final_sq, b, a * b)
        now.seconds += time.perf_counter() - t

    def _probe_estimate(self) -> None:
        """The probe's micro-batches against the step's own gradient (read before clipping): the full batch (all
        micro-batches, all processes: B_big = batch x micro-batches x processes), at no cost."""
        now, fit = self.now, self.fit
        assert now.small is not None
        t = time.perf_counter()
        with torch.no_grad():
            grads = [p.grad for p in self._params() if p.grad is not None]
            if grads:
                sq_small, b_small = now.small
                now.estimate = (sq_small, float(sq_norm(grads)), b_small,
                                float(now.batch * now.accumulated * fit.world))
        now.seconds += time.perf_counter() - t

    def _decide(self, accumulating: bool) -> None:
        """At the first measured step: gradient accumulation (several micro-batches, one process) or the probe."""
        fit = self.fit
        if fit.source is not None:
            return
        if accumulating:
            fit.source = "accumulation"
            fit.skipped["probe"] = "gradient accumulation gives micro-batch gradients without extra passes"
        else:
            fit.source = "probe"
            if fit.world == 1 and "accumulation" not in fit.skipped:
                fit.skipped["accumulation"] = ("one batch per optimizer step (no gradient accumulation), or an adapter "
                                               "that does not report accumulation micro-batches (the Hugging Face "
                                               "Trainer's)")

    # -- emit ------------------------------------------------------------------------------------------------------
    def step_end(self, step: int) -> None:
        fit, now, ctx = self.fit, self.now, self.ctx
        assert fit.schedule is not None and fit.ema is not None and ctx is not None
        if not now.seen_final:
            now.accumulated = max(now.micro, 1)
        est = now.estimate
        if est is None and now.small is None:
            return  # the look for accumulation found none: the probe measures from the next due step
        fit.schedule.record(step, now.seconds)  # a probe whose step had no gradient still cost its time
        fit.seconds += now.seconds
        if est is None:
            return
        sq_small, sq_big, b_small, b_big = est
        g2, trace = two_batch_estimates(sq_small, sq_big, b_small, b_big)
        fit.ema.update(g2, trace)
        self.saved = self.Saved(fit.ema.grad_sq_acc, fit.ema.trace_acc, fit.ema.weight)
        size = float(now.batch * now.accumulated * fit.world)
        b_simple, tr_s, g2_s = fit.ema.b_simple, fit.ema.trace, fit.ema.grad_sq
        if tr_s is None or g2_s is None:
            return
        if b_simple is None:
            ctx.emit_host(step, _NAMES_NO_B, [tr_s, g2_s, size])
        else:
            ctx.emit_host(step, _NAMES, [b_simple, tr_s, g2_s, size])

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() if self.saved.weight > 0 else {}  # nothing measured: nothing to carry

    def meta(self) -> dict[str, Any]:
        fit = self.fit
        out: dict[str, Any] = {"noise_source": fit.source, "noise_sources_skipped": dict(fit.skipped),
                               "noise_time_s": round(fit.seconds, 6)}
        if fit.source == "probe":
            step_big = self.ctx is not None and self.ctx.unclipped_gradients
            out["noise_probe"] = {"micro_batches": self.micro_batches,
                                  "evaluated": self.evaluated_with_step if step_big else self.evaluated,
                                  "big_batch": "the step's gradient" if step_big else "the evaluated micro-batches"}
        if fit.schedule is not None:
            out["noise_schedule"] = fit.schedule.facts()
        return out
