"""Weight statistics on the per-layer schedule:

- ``weight_norm/<param>``: the L2 norm of each trainable tensor after the step;
- ``update_ratio/<param>``: ||w_after - w_before|| / ||w_before|| of the step. Taking it needs a copy of the
  weights before the optimizer step; to bound that memory the copies cover a rotating subset of the tensors of at
  most :attr:`WeightCollector.snapshot_bytes` per measuring step (at least one tensor): a model smaller than that
  gets every tensor's ratio at every measuring step, a larger one each tensor's every few measuring steps
  (``ceil(model bytes / snapshot_bytes)``). The copies live only from the final gradients to the end of the step.
- ``weight_unchanged/<param>``: 1 while the tensor is bit-for-bit what it was at the start of the fit (or when it was
  added, or assigned to the module in place of another tensor of that name), in the sense of :func:`torch.equal`, else
  0. Compared through a per-tensor :func:`~dyncheck.measure.tensors.fingerprint` (4 int64 values: memory independent
  of the model size) kept on the device: no host copy of the weights and no host synchronisation on the step; a tensor
  the flush showed changed is not looked at again. Sparse tensors (which have no fingerprint) are compared with a host
  copy, as before.

Sharded parameters (DTensors: FSDP2, tensor parallelism; ``ctx.sharded``): norms are taken on each process's local
shards as shares and reduced at the flush into the full tensors' norms (``"rss"``); an update ratio travels as its
two shares (``"ratio"``: numerator and denominator reduced, then divided); each process fingerprints its own shard
and ``weight_unchanged`` is the minimum over the processes (unchanged only when every shard is). Nothing is
gathered.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..measure.naming import named_parameters  # canonical names (without torch.compile's _orig_mod.)
from ..measure.tensors import NormPlan, fingerprint, local_part, same_fingerprint, update_norms, update_ratios
from .base import GRADIENTS, WEIGHTS_BEFORE_STEP, Collector, GradStep, interned

__all__ = ["WeightCollector"]


class _Reference:
    """How a tensor looked at the start: its fingerprint on the device, or (no fingerprint) a host copy; for a
    tensor in host memory also its norm (a clearly changed norm is a changed tensor: no fingerprint needed)."""

    __slots__ = ("copy", "fp", "norm")

    def __init__(self, t: Tensor, shares: bool = False) -> None:
        self.fp: Tensor | None = None
        self.copy: Tensor | None = None
        self.norm: float | None = None
        try:
            self.fp = fingerprint(t)
        except TypeError:  # sparse layouts: an exact host copy (rare, small)
            self.copy = t.detach().to("cpu", copy=True)
        if self.fp is not None and t.device.type == "cpu":  # reading it costs no synchronisation there
            # (with shares: of the local shard, as the weight norms it is compared with)
            self.norm = float(NormPlan([t.detach()], shares=shares)([t.detach()])[0])

    def same(self, t: Tensor) -> Tensor:
        if self.fp is not None:
            return same_fingerprint(self.fp, fingerprint(t))
        return torch.tensor(torch.equal(t.detach().to("cpu"), self.copy))


def _clearly_differ(a: float, b: float) -> bool:
    """Norms that differ by more than kernels' rounding could make them (or a NaN): the tensors differ."""
    return not abs(a - b) <= 1e-5 * max(abs(a), abs(b))


class WeightCollector(Collector):
    name = "weights"
    metrics = ("weight_norm/*", "update_ratio/*", "weight_unchanged/*")
    reduce = "none"  # rank zero's: the weights are the same on every process
    needs = frozenset({GRADIENTS, WEIGHTS_BEFORE_STEP})
    schedule = "layers"
    #: bytes of weight copies per measuring step for update ratios (a rotating subset of tensors; at least one)
    snapshot_bytes: int = 64 * 2 ** 20

    @dataclass
    class Fit:
        refs: dict[str, _Reference] = field(default_factory=dict)  # start-of-fit fingerprints, still unchanged
        flags: dict[str, Tensor] = field(default_factory=dict)  # name -> 0-d bool on the device: unchanged so far
        changed: set[str] = field(default_factory=set)  # known on the host (from a flush) to have changed
        #: the tensor object each name was tracked on: a parameter replaced in the module (a new head assigned after
        #: the optimizer was built) is tracked anew from when it is first seen (not under sharding, where the
        #: module's parameter objects may be stand-ins that change between steps)
        objs: dict[str, Any] = field(default_factory=dict)

    @dataclass
    class Step:
        chosen: set[str] | None = None  # tensors whose update ratio this step takes
        before: dict[str, Tensor] = field(default_factory=dict)  # their weights before the optimizer step

    @dataclass
    class Saved:
        update_cursor: int = 0  # where the rotating subset of update ratios starts next

    def start(self, ctx) -> None:
        super().start(ctx)
        held = {id(p) for opt, _ in ctx.optimizers for g in opt.param_groups for p in g["params"]} \
            if ctx.sharded else None
        for n, p in named_parameters(ctx.module):
            # FSDP2 may show a root module's unsharded parameters now (after the sanity check's forward): the
            # optimizer's sharded ones come as new parameters at the first final gradients, unchanged until then
            if p.requires_grad and (held is None or id(p) in held):
                self._track(n, p, None)

    def _track(self, n: str, p: Tensor, step: int | None) -> None:
        fit = self.fit
        if n in fit.flags or n in fit.changed or n in self.ctx.failures.off_items.get("weight_unchanged", ()):
            return
        try:
            fit.refs[n] = _Reference(p, self.ctx.sharded)
            fit.flags[n] = torch.ones((), dtype=torch.bool, device=p.device)
            if not self.ctx.sharded:
                fit.objs[n] = weakref.ref(p)
        except Exception as exc:
            self._unchanged_failed(n, exc, step)

    def _unchanged_failed(self, n: str, exc: BaseException, step: int | None) -> None:
        fit = self.fit
        fit.refs.pop(n, None)
        fit.flags.pop(n, None)
        self.ctx.failures.off_items.setdefault("weight_unchanged", set()).add(n)
        self.ctx.failed("weight_unchanged", [(f"weight_unchanged/{n}", exc)], step)

    def new_parameters(self, step: int, named: list[tuple[str, Tensor]]) -> None:
        for n, p in named:
            if p.requires_grad:
                self._track(n, p, step)

    # -- update ratios: the rotating subset ----------------------------------------------------------------------
    def _choose(self) -> set[str]:
        params = [(n, p) for n, p in named_parameters(self.ctx.module) if p.requires_grad]
        if not params:
            return set()
        sizes = [local_part(p).numel() * p.element_size() for _, p in params]  # this process's bytes
        if sum(sizes) <= self.snapshot_bytes:
            return {n for n, _ in params}
        start = self.saved.update_cursor % len(params)
        chosen, total, k = set(), 0, 0
        while k < len(params) and (not chosen or total + sizes[(start + k) % len(params)] <= self.snapshot_bytes):
            i = (start + k) % len(params)
            chosen.add(params[i][0])
            total += sizes[i]
            k += 1
        self.saved.update_cursor = (start + k) % len(params)
        return chosen

    def gradients(self, step: int, g: GradStep) -> None:
        now = self.now
        if now.chosen is None:
            now.chosen = self._choose()
        chosen, before = now.chosen, now.before
        for n, p in g.named:
            if n in chosen and n not in before:
                before[n] = p.detach().clone()

    # -- after the step --------------------------------------------------------------------------------------------
    def step_end(self, step: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        params = [(n, p) for n, p in named_parameters(ctx.module) if p.requires_grad]
        if not params:
            return
        names = interned(tuple(n for n, _ in params))
        got = ctx.planned("weight_norm", ("weight_norm", names), params, [p.detach() for _, p in params], step)
        norm_of: dict[str, float] = {}
        if got is not None and got[0].kept != ():
            plan, norms = got
            kept = names if plan.kept is None else tuple(names[i] for i in plan.kept)
            ctx.emit(step, interned(tuple(f"weight_norm/{n}" for n in kept)), norms, "rss" if ctx.sharded else "none")
            if norms.device.type == "cpu":
                norm_of = dict(zip(kept, norms.tolist()))
        before_map = self.now.before
        moved = [(n, p) for n, p in params if n in before_map] if before_map else []
        if moved:
            mnames = interned(tuple(n for n, _ in moved))
            before = [before_map[n] for n, _ in moved]
            after = [p for _, p in moved]
            if ctx.sharded:  # numerator and denominator shares, reduced at the flush before the division
                got = ctx.planned("update_ratio", ("update_ratio", mnames), moved, before, step,
                                  compute=lambda plan: torch.cat(update_norms(before, after, plan, in_place=True)))
            else:
                got = ctx.planned("update_ratio", ("update_ratio", mnames), moved, before, step,
                                  compute=lambda plan: update_ratios(before, after, plan, in_place=True))
            if got is not None and got[0].kept != ():
                plan, ratios = got
                kept = mnames if plan.kept is None else tuple(mnames[i] for i in plan.kept)
                ctx.emit(step, interned(tuple(f"update_ratio/{n}" for n in kept)), ratios,
                         "ratio" if ctx.sharded else "none")
        self.now.before = {}  # free the copies now
        self._check_unchanged(step, params, norm_of)

    def _check_unchanged(self, step: int, params: list[tuple[str, Tensor]], norm_of: dict[str, float]) -> None:
        ctx, fit = self.ctx, self.fit
        off = ctx.failures.off_items.get("weight_unchanged", ())
        names: list[str] = []
        flags: list[Tensor] = []
        zero = None
        objs = fit.objs
        for n, p in params:
            if n in off:
                continue
            obj = objs.get(n)
            if obj is not None and obj() is not p:  # replaced in the module: what it holds now is compared
                fit.flags.pop(n, None)
                fit.refs.pop(n, None)
                fit.changed.discard(n)
                objs.pop(n)
            if n not in fit.flags and n not in fit.changed:  # created during training: compare with it now
                self._track(n, p, step)
                if n not in fit.flags:
                    continue
            if n in fit.changed:
                if zero is None:
                    zero = torch.zeros((), dtype=torch.bool, device=p.device)
                flag = zero
            else:
                ref = fit.refs[n]
                if ref.norm is not None and n in norm_of and _clearly_differ(norm_of[n], ref.norm):
                    # changed (or NaN): no fingerprint needed to tell
                    fit.flags[n] = torch.zeros((), dtype=torch.bool, device=p.device)
                    names.append(n)
                    flags.append(fit.flags[n])
                    continue
                try:
                    flag = fit.flags[n] = fit.flags[n] & ref.same(p).to(fit.flags[n].device)
                except Exception as exc:
                    self._unchanged_failed(n, exc, step)
                    continue
            names.append(n)
            flags.append(flag)
        if names:
            vals = torch.stack([f.to(flags[0].device) for f in flags]).float()
            ctx.emit(step, interned(tuple(f"weight_unchanged/{n}" for n in names)), vals,
                     "min" if ctx.sharded else "none")

    def flushed(self) -> None:
        """The flush has just synchronised: learn which tensors changed and stop looking at them (a change of this
        process's shard, or -- on the process that writes, from the reduced values -- of any shard)."""
        fit = self.fit
        if not fit.flags:
            return
        names = list(fit.flags)
        reduced = self.ctx.reduced if self.ctx is not None else {}
        if reduced:
            for n in names:
                if reduced.get(f"weight_unchanged/{n}") == 0.0:
                    fit.changed.add(n)
                    fit.flags.pop(n, None)
                    fit.refs.pop(n, None)
            names = list(fit.flags)
        try:
            try:  # one transfer (the flags of one device)
                values = torch.stack([fit.flags[n] for n in names]).cpu().tolist()
            except RuntimeError:  # tensors on several devices (model parallelism)
                values = [bool(fit.flags[n].cpu()) for n in names]
        except Exception:
            return
        for n, same in zip(names, values):
            if not same:
                fit.changed.add(n)
                fit.flags.pop(n, None)
                fit.refs.pop(n, None)

    def unchanged(self) -> list[str]:
        """Names of the tensors still unchanged (synchronises: the end of the fit)."""
        self.flushed()
        return sorted(self.fit.flags)

    def meta(self) -> dict[str, Any]:
        return {"unchanged_parameters": self.unchanged()}
