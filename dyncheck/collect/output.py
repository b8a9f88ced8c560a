"""``output/zero_share``, ``output/prob_rows``, ``output/var``, ``output/blocked_share``, ``output/softmax_floor``,
``output/softmax_grad``, ``output/chance_loss``: facts about what
the model hands to its loss (see :mod:`dyncheck.measure.output`), on the activations schedule.

Which module's output that is, is found once, on the first measuring step: forward pre- and post-hooks on every
module but loss modules track the nesting of calls, and a call that completes while no other module call is open
is an outermost one -- the last of the step is the model's output (``training_step`` calling ``self(x)``, or
``self.net(x)``; a Hugging Face model's ``logits``). From then on one forward hook on that module, on the measuring
steps only (registered at the step's start and removed at its end on an eager model, as a hooked module takes
PyTorch's slow call path; kept from the first measuring step on under ``torch.compile``, which would not see a hook
added after it traced), takes the facts of its last training call of the step (forward passes without gradients,
validation and probes, are not looked at), and a hook on that output tensor takes the gradient the loss sends back
to it (``blocked_share``, and ``softmax_grad`` for outputs at least 2 wide; it keeps a reference to the output
until the backward pass, skipped for outputs of more than 2**26 elements). The run's meta ``output`` names the
module, its class and the output's shape, or says why none was found."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..measure.activations import is_compiled
from ..measure.output import (blocked_share, model_output, output_facts, output_var, outermost_calls,
                              softmax_floor, softmax_grad_rows)
from ..measure.naming import wrapper_prefix
from ..names import canonical_name
from .base import FORWARD_HOOKS, Collector, interned

__all__ = ["OutputCollector"]

_WIDE = interned(("output/zero_share", "output/prob_rows"))
_NARROW = interned(("output/zero_share",))
_BLOCKED = interned(("output/blocked_share",))
_FLOOR = interned(("output/softmax_floor", "output/chance_loss"))
_SOFTMAX_GRAD = interned(("output/softmax_grad",))
_VAR = interned(("output/var",))
#: outputs larger than this get no blocked_share (its reference would keep the output alive through backward)
_BLOCKED_MAX = 1 << 26
#: measuring steps on which the output module is looked for before giving up (e.g. a compiled model whose
#: submodules' hooks do not run, or a training step that calls no module with gradients)
_TRIES = 3


class OutputCollector(Collector):
    name = "output"
    metrics = ("output/zero_share", "output/prob_rows", "output/var", "output/blocked_share", "output/softmax_floor",
               "output/softmax_grad", "output/chance_loss")
    reduce = "mean"
    needs = frozenset({FORWARD_HOOKS})
    schedule = "activations"

    @dataclass
    class Fit:
        module: str | None = None  # the output module's canonical name, once found ("" is the root)
        target: nn.Module | None = None  # that module
        kind: str = ""  # its class name
        shape: list[int] = field(default_factory=list)  # the output's shape at the last measurement
        handles: list[Any] = field(default_factory=list)
        depth: int = 0  # module calls open (discovery)
        armed: bool = False
        steps: int = 0  # measuring steps that saw the output
        tries: int = 0  # discovery steps that saw no output
    @dataclass
    class Step:
        facts: Tensor | None = None
        var: Tensor | None = None  # the output's variance across the batch (output_var)
        wide: int = 0  # the output's last dimension when at least 2 (rows to be probability vectors), else 0
        blocked: Tensor | None = None  # from the gradient of the last output seen
        softmax_grad: Tensor | None = None  # from that gradient too, for outputs at least 2 wide
        seen: str | None = None  # discovery: the module of the last outermost call (canonical name)
        seen_module: nn.Module | None = None

    def start(self, ctx) -> None:
        super().start(ctx)
        self._schedule = ctx.schedules["activations"]
        self._compiled = is_compiled(ctx.module)

    # -- hooks on the model ------------------------------------------------------------------------------------
    def _take(self, name: str, module: nn.Module, output: Any) -> None:
        x = model_output(output)
        if x is None:
            return
        now = self.now
        now.facts = output_facts(x)
        now.var = output_var(x)
        now.wide = int(x.shape[-1]) if x.dim() > 0 and x.shape[-1] >= 2 else 0
        now.seen, now.seen_module = name, module
        now.blocked = now.softmax_grad = None
        self.fit.shape = list(x.shape)
        if x.requires_grad and x.numel() <= _BLOCKED_MAX:
            ref, wide = x.detach(), now.wide

            def grad_hook(g: Tensor) -> None:  # returns None: the gradient is left alone
                if now is self.now:  # not a later step's
                    now.blocked = blocked_share(ref, g)
                    if wide:
                        now.softmax_grad = softmax_grad_rows(g)

            x.register_hook(grad_hook)

    def _discover(self) -> None:
        fit = self.fit

        def pre(mod: nn.Module, args: Any) -> None:
            fit.depth += 1

        def post_for(name: str):
            def post(mod: nn.Module, args: Any, output: Any) -> None:
                fit.depth -= 1
                if fit.depth == 0 and fit.armed and mod.training and torch.is_grad_enabled():
                    self._take(name, mod, output)
            return post

        prefix = wrapper_prefix(self.ctx.module)
        for raw, mod in outermost_calls(self.ctx.module):  # wrappers too: under torch.compile their hooks run
            name = canonical_name(raw, prefix)
            try:
                pre_handle = mod.register_forward_pre_hook(pre)
            except Exception:  # TorchScript modules take no hooks: their calls are not candidates
                continue
            fit.handles.append(pre_handle)
            fit.handles.append(mod.register_forward_hook(post_for(name)))

    def _watch(self, name: str, mod: nn.Module) -> None:
        def post(m: nn.Module, args: Any, output: Any) -> None:
            if self.fit.armed and m.training and torch.is_grad_enabled():
                self._take(name, m, output)

        self.fit.handles.append(mod.register_forward_hook(post))

    def _remove(self) -> None:
        for h in self.fit.handles:
            h.remove()
        self.fit.handles = []

    # -- the collector's hooks ---------------------------------------------------------------------------------
    def step_start(self, step: int) -> None:
        fit = self.fit
        if not fit.handles:
            fit.depth = 0
            if fit.module is None:
                self._discover()
            else:
                self._watch(fit.module, fit.target)
        fit.armed = True

    def step_end(self, step: int) -> None:
        ctx, fit, now = self.ctx, self.fit, self.now
        assert ctx is not None
        fit.armed = False
        self._schedule.take(step)
        if now.seen is None:
            if fit.module is None or not self._compiled:  # no hooks between measuring steps
                self._remove()
                fit.tries += 1
                if fit.tries >= _TRIES:
                    self.enabled = False
            return
        if fit.module is None:  # discovery done: from now on, one hook on the output module
            self._remove()
            fit.module, fit.target = now.seen, now.seen_module
            fit.kind = type(getattr(fit.target, "_orig_mod", fit.target)).__name__
            if self._compiled:
                self._watch(fit.module, fit.target)
        elif not self._compiled:
            self._remove()  # registered again at the next measuring step's start
        fit.steps += 1
        facts = now.facts
        if now.wide:
            ctx.emit(step, _WIDE, facts, self.reduce)
            ctx.emit_host(step, _FLOOR, [softmax_floor(now.wide), math.log(now.wide)])
        else:
            ctx.emit(step, _NARROW, facts[:1], self.reduce)
        if now.var is not None:
            ctx.emit(step, _VAR, now.var.reshape(1), self.reduce)
        if now.blocked is not None:
            ctx.emit(step, _BLOCKED, now.blocked.reshape(1), self.reduce)
        if now.softmax_grad is not None:
            ctx.emit(step, _SOFTMAX_GRAD, now.softmax_grad.reshape(1), self.reduce)

    def close(self) -> None:
        self._remove()
        super().close()

    def meta(self) -> dict[str, Any]:
        fit = self.fit
        if fit.module is None:
            why = (f"no training forward of the model returned a floating tensor on {fit.tries} measuring step(s)"
                   if fit.tries else "no measuring step (activations_every_n_steps=0, or the fit ended before one)")
            return {"output": {"module": None, "reason": why}}
        return {"output": {"module": fit.module, "type": fit.kind, "shape": fit.shape, "steps": fit.steps}}
