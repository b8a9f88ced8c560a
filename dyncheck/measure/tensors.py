"""Norms and non-finite counts over lists of tensors, batched so that a whole model costs a few kernel launches
and no host synchronisation: results stay on the device as one stacked tensor.

Any tensor a model can train is handled: dense float32/float16/bfloat16 tensors (the common case: one batched
``_foreach_norm`` in float32), float64 and complex tensors (one ``_foreach_norm`` per device and dtype, in their
own precision; the norm of a complex tensor is the real 2-norm of its real and imaginary parts), sparse tensors
(the norm of their coalesced values, which equals the norm of the dense tensor). How a list is split into those
groups is worked out once, by :class:`NormPlan`, and reused while the list keeps its make-up.

Sharded tensors (``torch.distributed.tensor.DTensor``: the parameters and gradients of FSDP2's ``fully_shard`` and
of tensor parallelism) are measured on their local parts, without communication: with ``shares=True`` a function
returns each process's *share* of the full tensor's value -- for norms a value whose squares, summed over the
processes, give the full tensor's squared norm; for counts one whose sum is the full count. A local part that
several processes hold alike (a ``Replicate`` placement, a plain tensor next to sharded ones) counts
``1/replicas`` on each of them (:func:`replicas`). The caller reduces the shares (the monitor's ``"rss"`` and
``"sum"`` reductions); no whole tensor is ever gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["NormPlan", "count_nonfinite", "first_tensor", "has_sharded", "is_sharded", "local_part",
           "nonfinite_counts", "replicas", "sparse_values", "tensor_norms", "update_norms", "update_ratios",
           "world_size"]

#: dtypes whose norms are taken in float32 (upcast: a float16 sum of squares would overflow)
_FLOAT32_NORM = frozenset({torch.float32, torch.float16, torch.bfloat16})
#: dtypes whose results call for a float64 output
_DOUBLE = frozenset({torch.float64, torch.complex128})


_DTENSOR: list[type | None] = []


def _dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor`` (imported at the first use), or None where it does not exist."""
    if not _DTENSOR:
        try:
            from torch.distributed.tensor import DTensor
        except Exception:  # a torch built without distributed support
            DTensor = None  # type: ignore[assignment,misc]  # noqa: N806
        _DTENSOR.append(DTensor)
    return _DTENSOR[0]


def is_sharded(t: object) -> bool:
    """Whether ``t`` is a DTensor (its values spread over processes)."""
    cls = type(t).__mro__
    if not any(c.__name__ == "DTensor" for c in cls):  # cheap: no distributed import for plain tensors
        return False
    dt = _dtensor_type()
    return dt is not None and isinstance(t, dt)


def has_sharded(tensors: Sequence[Tensor]) -> bool:
    """Whether some tensor of ``tensors`` (e.g. ``module.parameters()``) is a DTensor."""
    return any(is_sharded(t) for t in tensors)


def local_part(t: Tensor) -> Tensor:
    """This process's part of a DTensor (``to_local()``: no communication, no copy); any other tensor itself."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def first_tensor(obj: Any, accept: Callable[[Tensor], bool] | None = None) -> Tensor | None:
    """The first tensor in ``obj`` (a tensor, or tuples/lists/dicts of them, depth-first) that ``accept`` takes
    (default: any)."""
    if isinstance(obj, Tensor):
        return obj if accept is None or accept(obj) else None
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for item in obj:
            found = first_tensor(item, accept)
            if found is not None:
                return found
    return None


def world_size() -> int:
    """Processes in the default process group (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def replicas(t: Tensor) -> int:
    """How many processes hold the same values as this process's part of ``t``: for a DTensor the sizes of the
    mesh dimensions it is replicated over, times the copies of its mesh in the world (a mesh of a sub-group); for
    a plain tensor in a process group every process (the tensor is taken as replicated, as DDP keeps it).
    Raises :class:`ValueError` for a ``Partial`` placement (values pending a reduction: the local part tells
    nothing about the whole without communication)."""
    world = world_size()
    if not is_sharded(t):
        return world
    mesh = t.device_mesh  # type: ignore[attr-defined]
    k = max(world // max(mesh.size(), 1), 1)
    for dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if placement.is_partial():
            raise ValueError(f"a DTensor with a Partial placement ({t.placements}): its values are pending a "  # type: ignore[attr-defined]
                             "reduction, its norm cannot be taken from the local part")
        if placement.is_replicate():
            k *= mesh.size(dim)
    return k


def _share_scale(tensors: Sequence[Tensor], positions: Sequence[int], power: float) -> list[float] | None:
    """``replicas ** -power`` per position; None when every factor is 1."""
    scale = [replicas(tensors[i]) ** -power for i in positions]
    return None if all(s == 1.0 for s in scale) else scale


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

    ``shares``: the tensors may be DTensors; the result holds this process's shares of the full norms (see the
    module docstring): the norms of the local parts, divided by ``sqrt(replicas)``. ``self.shares`` tells.
    """

    __slots__ = ("_f32", "_fast", "_groups", "_scale", "_scale_t", "_sparse", "dtype", "kept", "n", "shares")

    def __init__(self, tensors: Sequence[Tensor], exclude: Sequence[int] = (), *, shares: bool = False) -> None:
        self.n = len(tensors)
        skip = set(exclude)
        self.kept: tuple[int, ...] | None = tuple(i for i in range(self.n) if i not in skip) if skip else None
        positions = self.kept if self.kept is not None else range(self.n)
        self.shares = shares
        self._scale: list[float] | None = None
        self._scale_t: Tensor | None = None
        if shares:
            self._scale = _share_scale(tensors, positions, 0.5)
            tensors = [local_part(t) for t in tensors]
        device = tensors[positions[0]].device if len(positions) else None
        self._fast = self.kept is None and all(
            t.layout == torch.strided and t.dtype in _FLOAT32_NORM and t.device == device for t in tensors)
        # all float32 already: no dtype argument (the kernel without it is ~25% faster on CPU, same result type)
        self._f32 = self._fast and all(t.dtype == torch.float32 for t in tensors)
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
        if self.shares:
            return self._shares(tensors)
        return self._norms(tensors)

    def _shares(self, tensors: Sequence[Tensor]) -> Tensor:
        norms = self._norms([local_part(t) for t in tensors])
        if self._scale is None:
            return norms
        scale = self._scale_t
        if scale is None or scale.device != norms.device or scale.dtype != norms.dtype:
            scale = self._scale_t = torch.tensor(self._scale, dtype=norms.dtype, device=norms.device)
        return norms * scale

    def _norms(self, tensors: Sequence[Tensor]) -> Tensor:
        if self._fast:
            if not self.n:
                return torch.empty(0)
            norms = torch._foreach_norm(list(tensors), 2) if self._f32 else \
                torch._foreach_norm(list(tensors), 2, dtype=torch.float32)
            return _stack(norms, tensors[0].device)
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
    def probe(cls, tensors: Sequence[Tensor], *, shares: bool = False
              ) -> tuple["NormPlan", Tensor, list[tuple[int, Exception]]]:
        """Make a plan for ``tensors`` and take their norms with it. A tensor whose norm cannot be taken (an
        unsupported layout, dtype or device; a Partial DTensor) is left out of the plan: returns ``(plan, norms,
        failures)`` with ``failures`` the ``(position, exception)`` of those. Raises only when the remaining
        tensors fail together."""
        try:
            plan = cls(tensors, shares=shares)
            return plan, plan(tensors), []
        except Exception:
            pass
        failures: list[tuple[int, Exception]] = []
        for i, t in enumerate(tensors):
            try:
                cls([t], shares=shares)([t])
            except Exception as exc:
                failures.append((i, exc))
        plan = cls(tensors, exclude=[i for i, _ in failures], shares=shares)
        return plan, plan(tensors), failures


def tensor_norms(tensors: Sequence[Tensor], plan: NormPlan | None = None) -> Tensor:
    """L2 norm of each tensor, stacked into a 1-D tensor on the first tensor's device: float32 (float16/bfloat16
    upcast), float64 when some tensor is float64 or complex128. Sparse tensors: the norm of their values; complex:
    the real 2-norm. An empty input gives an empty CPU tensor. ``plan``: a :class:`NormPlan` made for tensors of
    this make-up (default: made here, at the cost of a pass over the list)."""
    if not tensors:
        return torch.empty(0)
    return (plan or NormPlan(tensors))(tensors)


#: elements per chunk of :func:`nonfinite_counts` on large tensors (its temporary: one value of the tensor's dtype
#: per element, a byte for other dtypes)
NONFINITE_CHUNK = 1 << 22


def count_nonfinite(t: Tensor) -> Tensor:
    """Number of NaN/Inf elements of one tensor (a 0-d int64 tensor on its device; transient memory bounded by
    :data:`NONFINITE_CHUNK`)."""
    if t.layout != torch.strided:
        t = sparse_values(t)
    n = t.numel()
    if n <= NONFINITE_CHUNK or not t.is_contiguous():
        return _count_part(t)
    flat = t.reshape(-1)  # a view: contiguous
    return torch.stack([_count_part(flat[lo: lo + NONFINITE_CHUNK]) for lo in range(0, n, NONFINITE_CHUNK)]).sum()


_SUBTRACTABLE = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _count_part(t: Tensor) -> Tensor:
    if t.dtype in _SUBTRACTABLE:
        # x - x is exactly 0 for a finite x, NaN for NaN and +-Inf (nonzero): a count without a boolean mask (on
        # CPU, 4M float32 values: 3.2 ms, counting ~isfinite 25 ms)
        return torch.count_nonzero(t - t)
    return torch.count_nonzero(torch.isfinite(t).logical_not_())


def nonfinite_counts(tensors: Sequence[Tensor], *, shares: bool = False) -> Tensor:
    """Number of NaN or +-Inf elements of each tensor (of the values of a sparse tensor; a complex element counts
    when its real or imaginary part is not finite), as a 1-D float32 tensor (float so that it can travel with other
    statistics in one buffer; exact up to 2**24 per tensor). Transient memory: one value of the tensor's dtype per
    element of at most :data:`NONFINITE_CHUNK` elements at a time. ``shares``: DTensors are counted on their
    local parts, as this process's shares of the full counts (divided by :func:`replicas`; their sum over the
    processes is the count)."""
    if not tensors:
        return torch.empty(0)
    if not shares:
        return _stack([count_nonfinite(t) for t in tensors], tensors[0].device).to(torch.float32)
    scale = _share_scale(tensors, range(len(tensors)), 1.0)
    parts = [local_part(t) for t in tensors]
    counts = _stack([count_nonfinite(t) for t in parts], parts[0].device).to(torch.float32)
    return counts if scale is None else counts * torch.tensor(scale, device=counts.device)


def update_norms(before: Sequence[Tensor], after: Sequence[Tensor], plan: NormPlan | None = None, *,
                 in_place: bool = False) -> tuple[Tensor, Tensor]:
    """``(||after - before||, ||before||)`` for each pair of tensors, taken with ``plan`` (made for ``before``;
    its exclusions apply). With a plan of ``shares`` (DTensors) both are this process's shares: the ratio of the
    full norms needs their reduction first. ``in_place``: see :func:`update_ratios`."""
    if len(before) != len(after):
        raise ValueError(f"update_norms: {len(before)} tensors before but {len(after)} after")
    if not before:
        return torch.empty(0), torch.empty(0)
    if plan is not None and plan.kept is not None:  # only the pairs the plan keeps
        before, after = [before[i] for i in plan.kept], [after[i] for i in plan.kept]
        plan = NormPlan(before, shares=plan.shares) if before else None
        if not before:
            return torch.empty(0), torch.empty(0)
    plan = plan or NormPlan(before)
    den = plan(before)
    if plan.shares:  # the differences of the local parts (DTensor arithmetic would dispatch per element op)
        before, after = [local_part(b) for b in before], [local_part(a) for a in after]
    if in_place:
        deltas = list(before)
        torch._foreach_sub_(deltas, [a.detach() for a in after])  # before - after: the same norm
    else:
        deltas = torch._foreach_sub([a.detach() for a in after], list(before))
    return plan(deltas), den


def update_ratios(before: Sequence[Tensor], after: Sequence[Tensor], plan: NormPlan | None = None, *,
                  in_place: bool = False) -> Tensor:
    """||after - before|| / ||before|| for each pair of tensors (the update-to-weight ratio).

    Undefined where ||before|| is 0 (a zero-initialised bias before its first update): NaN there, so that rules
    treat it as missing rather than as an infinitely large update. ``plan``: a :class:`NormPlan` made for
    ``before`` (its exclusions apply: the result then holds the kept pairs only). ``in_place``: overwrite
    ``before`` (copies the caller owns) with the differences instead of allocating them: no memory beyond the
    inputs."""
    if len(before) != len(after):
        raise ValueError(f"update_ratios: {len(before)} tensors before but {len(after)} after")
    if plan is not None and plan.shares:
        raise ValueError("update_ratios: a plan of shares gives partial norms; take update_norms, reduce, divide")
    num, den = update_norms(before, after, plan, in_place=in_place)
    if not den.numel():
        return den
    return torch.where(den > 0, num / den, torch.full_like(den, float("nan")))


# ----------------------------------------------------------------------------------------------------------------
# fingerprints: has a tensor changed since an earlier look, without keeping a copy of it
# ----------------------------------------------------------------------------------------------------------------
#: elements fingerprinted per chunk: bounds the transient memory of :func:`fingerprint` (about 12 bytes per element
#: of a chunk -- the normalised copy, its bits widened to int64 -- plus 8 per element for the position weights,
#: made once per device: 5 MB in all)
FINGERPRINT_CHUNK = 1 << 18
_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_WEIGHTS: dict[torch.device, Tensor] = {}


def _position_weights(device: torch.device) -> Tensor:
    """One odd pseudo-random int64 weight below 2**31 per position of a chunk (made once per device)."""
    w = _WEIGHTS.get(device)
    if w is None:
        w = torch.arange(FINGERPRINT_CHUNK, dtype=torch.int64, device=device)
        w.mul_(2654435761).add_(40503).remainder_(1 << 30).mul_(2).add_(1)
        _WEIGHTS[device] = w
    return w


def fingerprint(t: Tensor) -> Tensor:
    """A fingerprint of the values of a dense tensor: an int64 tensor of 4 on its device, computed without a host
    synchronisation and with transient memory bounded by :data:`FINGERPRINT_CHUNK` (not by the tensor's size).

    It holds the element count, the number of chunks whose sum is NaN (a NaN element; or +inf and -inf together,
    or float overflow both ways: taken as not equal), and two wrapping sums over the elements' bit patterns
    (``-0.0`` taken as ``0.0``): their plain sum, and the sum weighted by an odd pseudo-random weight per position
    (times an odd factor per chunk). Two tensors compare equal in the sense of :func:`torch.equal` (same values,
    NaN never equal to itself) exactly when ``same_fingerprint`` says so, except for collisions: a change of one
    element always changes the plain sum, a swap of two elements always changes the weighted one; several changes
    go unseen only when their bit differences cancel in both 64-bit sums at once. Complex tensors are taken as
    their real and imaginary parts. A DTensor's fingerprint is that of its local part (each process compares its
    own part; the whole is unchanged when every part is). Raises for sparse tensors and for dtypes without a bit
    view (callers keep a copy of those)."""
    if t.layout != torch.strided:
        raise TypeError(f"fingerprint needs a dense tensor, got {t.layout}")
    x = local_part(t.detach())
    if x.is_complex():
        x = torch.view_as_real(x)
    if not x.is_floating_point():
        raise TypeError(f"fingerprint needs a floating-point tensor, got {x.dtype}")
    itype = _INT_VIEW[x.element_size()]
    flat = x.reshape(-1)
    n = flat.numel()
    weights = _position_weights(flat.device)
    acc = torch.zeros(3, dtype=torch.int64, device=flat.device)  # plain sum, weighted sum, NaN chunks
    for k, lo in enumerate(range(0, n, FINGERPRINT_CHUNK)):
        c = flat[lo: lo + FINGERPRINT_CHUNK]
        bits = (c + 0.0).view(itype)  # -0.0 + 0.0 == +0.0: torch.equal takes them as equal
        acc[0] += bits.sum(dtype=torch.int64)
        acc[1] += torch.mul(bits, weights[: bits.numel()]).sum() * (2 * k + 1)  # int64 products
        acc[2] += torch.isnan(c.sum()).to(torch.int64)  # ~50x cheaper on CPU than counting NaN elements
    return torch.cat([torch.tensor([n], dtype=torch.int64, device=flat.device), acc])


def same_fingerprint(a: Tensor, b: Tensor) -> Tensor:
    """0-d bool tensor (on the device, no synchronisation): the fingerprinted tensors are equal in the sense of
    :func:`torch.equal` -- same fingerprint and no NaN in either (NaN is never equal to itself)."""
    return (a == b).all() & (a[3] == 0) & (b[3] == 0)
