"""Norms and non-finite counts over lists of tensors, batched so that a whole model costs a few kernel launches
and no host synchronisation: results stay on the device as one stacked tensor."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["tensor_norms", "nonfinite_counts", "update_ratios"]


def _stack(values: Sequence[Tensor], device: torch.device) -> Tensor:
    try:
        return torch.stack(list(values))
    except RuntimeError:  # tensors on several devices (model parallelism)
        return torch.stack([v.to(device) for v in values])


def tensor_norms(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of each tensor, computed in float32 and stacked into a 1-D float32 tensor on the first tensor's
    device (an empty input gives an empty CPU tensor)."""
    if not tensors:
        return torch.empty(0)
    norms = torch._foreach_norm(list(tensors), 2, dtype=torch.float32)
    return _stack(norms, tensors[0].device)


def nonfinite_counts(tensors: Sequence[Tensor]) -> Tensor:
    """Number of NaN or +-Inf elements of each tensor, as a 1-D float32 tensor (float so that it can travel with
    other statistics in one buffer; exact up to 2**24 per tensor)."""
    if not tensors:
        return torch.empty(0)
    counts = [torch.count_nonzero(~torch.isfinite(t)) for t in tensors]
    return _stack(counts, tensors[0].device).to(torch.float32)


def update_ratios(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """||after - before|| / ||before|| for each pair of tensors (the update-to-weight ratio).

    Undefined where ||before|| is 0 (a zero-initialised bias before its first update): NaN there, so that rules
    treat it as missing rather than as an infinitely large update."""
    if len(before) != len(after):
        raise ValueError(f"update_ratios: {len(before)} tensors before but {len(after)} after")
    if not before:
        return torch.empty(0)
    deltas = torch._foreach_sub([a.detach() for a in after], list(before))
    num = tensor_norms(deltas)
    den = tensor_norms(before)
    return torch.where(den > 0, num / den, torch.full_like(den, float("nan")))
