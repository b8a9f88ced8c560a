"""``act/<stat>/<module>``: activation statistics of the selected modules' outputs (see
:mod:`dyncheck.measure.activations`), on the activations schedule. Forward hooks record only on the steps that
measure (switched on at the step's start, after a sharpness probe, so the probe's forward does not count, and off at
its end). On an eager model they are registered at that start and removed at that end: a module with a hook takes
PyTorch's slow call path, a few microseconds per module on every step. On a compiled model they are registered once,
at the start of the fit: hooks added later would be invisible to a model that ``torch.compile`` already traced.
Statistics reduce across processes as they combine across calls (mean, max, sum).

What could not be measured is never a silent gap: the run's meta ``activations`` lists the selected modules, those
that never ran on a measuring step (``never_ran``: e.g. ``nn.MultiheadAttention``'s ``out_proj``, whose weights the
attention uses without calling it), the patterns that selected nothing, and the measuring steps that recorded no
statistic at all; each kind is warned about once."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from ..measure.activations import ActivationRecorder, is_compiled, select
from .base import FORWARD_HOOKS, Collector, interned

__all__ = ["ActivationCollector"]

#: why a compiled model's modules may not be seen (meta ``activations.note``, warnings)
COMPILED_NOTE = (
    "the model is compiled (torch.compile): its modules are measured inside the compiled graph, but a module in a "
    "graph that dynamo traced before the monitor registered its hooks (a forward of the compiled model before the "
    "fit started, or of another instance of the same model class compiled earlier in this process) is not seen, as "
    "dynamo does not guard on hooks (torch._dynamo.config.skip_nnmodule_hook_guards); start the monitor before the "
    "first compiled forward, or call torch._dynamo.reset() before the fit")
#: a module that is selected but not called
NEVER_RAN_NOTE = (
    "a selected module that never ran on a measuring step was not called by the model's forward (e.g. "
    "nn.MultiheadAttention uses out_proj's weights without calling it) or only on other steps")


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
        selected: list[str] = field(default_factory=list)
        unmatched: list[str] = field(default_factory=list)
        compiled: bool = False
        measured_steps: int = 0
        empty_steps: list[int] = field(default_factory=list)  # measuring steps that recorded nothing

    def start(self, ctx) -> None:
        super().start(ctx)
        self._schedule = ctx.schedules["activations"]
        fit = self.fit
        if self._schedule.every <= 0:  # activations_every_n_steps=0: nothing to hook
            return
        sel = select(ctx.module, self.patterns)
        fit.selected = [n for n, _ in sel.modules]
        fit.unmatched = sel.unmatched
        fit.compiled = is_compiled(ctx.module)
        if sel.unmatched:
            warnings.warn(f"dyncheck: activation_modules patterns {sel.unmatched} match no module worth measuring "
                          f"(module names as in named_modules(), without torch.compile's '_orig_mod.'; dropout, "
                          f"identity, flatten and embeddings are not measured); see the run's meta 'activations'",
                          stacklevel=4)
        rec = fit.recorder = ActivationRecorder(sel.modules, active=False)
        if fit.compiled:
            rec.attach()  # once, for the whole fit: the recorder records while active (see the module docstring)
        self._take_errors(ctx.start_step)

    def _take_errors(self, step: int) -> None:
        failed = self.fit.recorder.take_errors()  # modules that could not be hooked or measured: turned off
        if failed:
            self.ctx.failed("activations", [(name, exc) for name, exc in failed], step, target="layer")

    def step_start(self, step: int) -> None:
        rec = self.fit.recorder
        if rec is not None:
            if not self.fit.compiled:
                rec.attach()  # for this step only (see the module docstring)
                self._take_errors(step)
            rec.active = True

    def step_end(self, step: int) -> None:
        ctx, rec, fit = self.ctx, self.fit.recorder, self.fit
        assert ctx is not None
        if rec is None:
            return
        rec.active = False
        if not fit.compiled:
            rec.detach()
        self._schedule.take(step)
        self._take_errors(step)
        try:
            groups = rec.collect()
        except Exception as exc:
            self._off()
            ctx.failed("activations", [(None, exc)], step)
            return
        fit.measured_steps += 1
        if not groups and rec.modules:
            self._nothing_recorded(step)
        for op, (names, values) in groups.items():
            ctx.emit(step, interned(tuple(names)), values, op)

    def _nothing_recorded(self, step: int) -> None:
        fit = self.fit
        fit.empty_steps.append(step)
        if len(fit.empty_steps) == 1:
            why = COMPILED_NOTE if fit.compiled else "no selected module's hook was called during the step"
            warnings.warn(f"dyncheck: activations: no selected module produced an output at step {step} ({why}); "
                          f"such steps are listed in the run's meta 'activations'", stacklevel=4)

    def _off(self) -> None:
        if self.fit.recorder is not None:
            self.fit.recorder.detach()
            self.fit.recorder = None
        self.enabled = False

    def detach(self) -> None:
        """Remove the hooks (the end of the fit; the statistics taken so far stay for :meth:`meta`)."""
        rec = self.fit.recorder
        if rec is not None:
            rec.active = False
            rec.detach()

    def meta(self) -> dict[str, Any]:
        """``activations``: what was selected and what of it could not be measured."""
        fit, rec = self.fit, self.fit.recorder
        if not fit.selected and not fit.unmatched and rec is None:
            return {}
        ran = rec.ran if rec is not None else set()
        off = rec.off if rec is not None else set()  # could not be hooked or measured: in measurement_errors
        never = [n for n in fit.selected if n not in ran and n not in off] if fit.measured_steps else []
        info: dict[str, Any] = {
            "patterns": list(self.patterns) if self.patterns is not None else None,
            "selected": fit.selected,
            "never_ran": never,
            "unmatched_patterns": fit.unmatched,
            "measured_steps": fit.measured_steps,
            "steps_without_statistics": fit.empty_steps[:100],
            "n_steps_without_statistics": len(fit.empty_steps),
            "compiled": fit.compiled,
        }
        notes = []
        if never:
            notes.append(NEVER_RAN_NOTE)
        if fit.compiled and (never or fit.empty_steps):
            notes.append(COMPILED_NOTE)
        if notes:
            info["note"] = "; ".join(notes)
        none_ran = len(never) == sum(1 for n in fit.selected if n not in off)
        if never and not (fit.empty_steps and none_ran):  # else the first empty step's warning said it: once
            shown = ", ".join(never[:5]) + (f" and {len(never) - 5} more" if len(never) > 5 else "")
            warnings.warn(f"dyncheck: activations: {len(never)} selected modules never ran on a measuring step and "
                          f"have no statistics ({shown}): {info['note']}; see the run's meta 'activations'",
                          stacklevel=4)
        return {"activations": info}

    def close(self) -> None:
        self.detach()
        super().close()
