"""Norms and non-finite counts over lists of tensors, batched so that a whole model costs a few kernel launches
and no host synchronisation: results stay on the device as one stacked tensor.

Any tensor a model can train is handled: dense float32/float16/bfloat16 tensors (the common case: one batched
``_foreach_norm`` in float32), float64 and complex tensors (one ``_foreach_norm`` per device and dtype, in their
own precision; the norm of a complex tensor is the real 2-norm of its real and imaginary parts), sparse tensors
(the norm of their coalesced values, which equals the norm of the dense tensor). How a list is split into those
groups is worked out once, by :class:`NormPlan`, and reused while the list keeps its make-up.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["NormPlan", "tensor_norms", "nonfinite_counts", "update_ratios", "sparse_values"]

#: dtypes whose norms are taken in float32 (upcast: a float16 sum of squares would overflow)
_FLOAT32_NORM = frozenset({torch.float32, torch.float16, torch.bfloat16})
#: dtypes whose results call for a float64 output
_DOUBLE = frozenset({torch.float64, torch.complex128})


def _stack(values: Sequence[Tensor], device: torch.device) -> Tensor:
    try:
        return torch.stack(list(values))
    except RuntimeError:  # tensors on several devices (model parallelism)
        return torch.stack([v.to(device) for v in values])


def sparse_values(t: Tensor) -> Tensor:
    """The stored values of a sparse tensor, with duplicate COO entries summed (coalesced: a copy only when it is
    not coalesced yet; ``t`` itself is never changed). Their norm and non-finite count are the dense tensor's."""
    if t.layout == torch.sparse_coo:
        return t.coalesce().values()
    return t.values()  # compressed layouts (CSR, CSC, BSR, BSC) hold no duplicates


def _norm(t: Tensor) -> Tensor:
    """The L2 norm of one tensor (dense or sparse) in float32, or in its own precision for float64/complex."""
    if t.layout != torch.strided:
        t = sparse_values(t)
    if t.dtype in _FLOAT32_NORM:
        return torch.linalg.vector_norm(t, dtype=torch.float32)
    return torch.linalg.vector_norm(t)


class NormPlan:
    """How to take the L2 norms of a list of tensors of a fixed make-up (layout, dtype and device at each
    position) in as few batched kernels as possible. Made once from a list and then called with lists of the same
    make-up (the gradients of the same parameters at every step).

    - all dense float32/float16/bfloat16 on one device (the common case): one ``_foreach_norm`` in float32 and
      one ``stack``, exactly as cheap as before plans existed;
    - otherwise one ``_foreach_norm`` per (device, dtype) group -- float32-like dtypes together, computed in
      float32; float64 and complex in their own dtype (complex: a real norm) -- plus one norm per sparse tensor.

    The result is a 1-D tensor on the first returned tensor's device: float64 when some tensor is float64 or
    complex128, else float32. ``exclude``: positions left out of the result (``kept`` lists the positions
    returned, in order; None when nothing is excluded). Calling a plan with a list of another make-up may raise
    (:meth:`probe` makes a new one).
    """

    __slots__ = ("n", "kept", "dtype", "_fast", "_groups", "_sparse")

    def __init__(self, tensors: Sequence[Tensor], exclude: Sequence[int] = ()) -> None:
        self.n = len(tensors)
        skip = set(exclude)
        self.kept: tuple[int, ...] | None = tuple(i for i in range(self.n) if i not in skip) if skip else None
        positions = self.kept if self.kept is not None else range(self.n)
        device = tensors[positions[0]].device if len(positions) else None
        self._fast = self.kept is None and all(
            t.layout == torch.strided and t.dtype in _FLOAT32_NORM and t.device == device for t in tensors)
        self.dtype = torch.float64 if any(tensors[i].dtype in _DOUBLE for i in positions) else torch.float32
        groups: dict[tuple[torch.device, torch.dtype | None], list[int]] = {}
        self._sparse: list[int] = []
        if not self._fast:
            for i in positions:
                t = tensors[i]
                if t.layout != torch.strided:
                    self._sparse.append(i)
                else:
                    groups.setdefault((t.device, None if t.dtype in _FLOAT32_NORM else t.dtype), []).append(i)
        self._groups = [(dtype, idx) for (_, dtype), idx in groups.items()]

    def __call__(self, tensors: Sequence[Tensor]) -> Tensor:
        if len(tensors) != self.n:
            raise ValueError(f"NormPlan made for {self.n} tensors called with {len(tensors)}")
        if self._fast:
            if not self.n:
                return torch.empty(0)
            return _stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float32), tensors[0].device)
        out: dict[int, Tensor] = {}
        for dtype, idx in self._groups:
            group = [tensors[i] for i in idx]
            norms = torch._foreach_norm(group, 2, dtype=torch.float32) if dtype is None else \
                torch._foreach_norm(group, 2)
            out.update(zip(idx, norms))
        for i in self._sparse:
            out[i] = _norm(tensors[i])
        order = self.kept if self.kept is not None else range(self.n)
        if not len(order):
            return torch.empty(0)
        device = tensors[order[0]].device
        return torch.stack([out[i].to(device=device, dtype=self.dtype) for i in order])

    @classmethod
    def probe(cls, tensors: Sequence[Tensor]) -> tuple["NormPlan", Tensor, list[tuple[int, Exception]]]:
        """Make a plan for ``tensors`` and take their norms with it. A tensor whose norm cannot be taken (an
        unsupported layout, dtype or device) is left out of the plan: returns ``(plan, norms, failures)`` with
        ``failures`` the ``(position, exception)`` of those. Raises only when the remaining tensors fail
        together."""
        plan = cls(tensors)
        try:
            return plan, plan(tensors), []
        except Exception:
            pass
        failures: list[tuple[int, Exception]] = []
        for i, t in enumerate(tensors):
            try:
                cls([t])([t])
            except Exception as exc:
                failures.append((i, exc))
        plan = cls(tensors, exclude=[i for i, _ in failures])
        return plan, plan(tensors), failures


def tensor_norms(tensors: Sequence[Tensor], plan: NormPlan | None = None) -> Tensor:
    """L2 norm of each tensor, stacked into a 1-D tensor on the first tensor's device: float32 (float16/bfloat16
    upcast), float64 when some tensor is float64 or complex128. Sparse tensors: the norm of their values; complex:
    the real 2-norm. An empty input gives an empty CPU tensor. ``plan``: a :class:`NormPlan` made for tensors of
    this make-up (default: made here, at the cost of a pass over the list)."""
    if not tensors:
        return torch.empty(0)
    return (plan or NormPlan(tensors))(tensors)


def nonfinite_counts(tensors: Sequence[Tensor]) -> Tensor:
    """Number of NaN or +-Inf elements of each tensor (of the values of a sparse tensor; a complex element counts
    when its real or imaginary part is not finite), as a 1-D float32 tensor (float so that it can travel with other
    statistics in one buffer; exact up to 2**24 per tensor)."""
    if not tensors:
        return torch.empty(0)
    counts = [torch.count_nonzero(~torch.isfinite(t if t.layout == torch.strided else sparse_values(t)))
              for t in tensors]
    return _stack(counts, tensors[0].device).to(torch.float32)


def update_ratios(before: Sequence[Tensor], after: Sequence[Tensor], plan: NormPlan | None = None) -> Tensor:
    """||after - before|| / ||before|| for each pair of tensors (the update-to-weight ratio).

    Undefined where ||before|| is 0 (a zero-initialised bias before its first update): NaN there, so that rules
    treat it as missing rather than as an infinitely large update. ``plan``: a :class:`NormPlan` made for
    ``before`` (its exclusions apply: the result then holds the kept pairs only)."""
    if len(before) != len(after):
        raise ValueError(f"update_ratios: {len(before)} tensors before but {len(after)} after")
    if not before:
        return torch.empty(0)
    if plan is not None and plan.kept is not None:  # only the pairs the plan keeps
        before, after = [before[i] for i in plan.kept], [after[i] for i in plan.kept]
        plan = None
        if not before:
            return torch.empty(0)
    plan = plan or NormPlan(before)
    deltas = torch._foreach_sub([a.detach() for a in after], list(before))
    num = plan(deltas)
    den = plan(before)
    return torch.where(den > 0, num / den, torch.full_like(den, float("nan")))
