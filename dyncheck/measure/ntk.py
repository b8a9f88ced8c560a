"""The empirical neural tangent kernel (NTK) of a model on a fixed probe set, and how far it moves in training.

For m probe examples and one scalar output per example f_i(theta), the empirical NTK is the m x m Gram matrix
K = J J^T of the Jacobian J (m x P, P the trainable parameters): K_ij = <df_i/dtheta, df_j/dtheta>. In the
"lazy" (kernel) regime -- very wide networks, small learning rates -- K barely moves during training and the network
behaves like a kernel machine with the kernel at initialisation; in the "rich" (feature-learning) regime K changes
a lot, most while the loss falls fast (Fort et al. 2020, "Deep learning versus kernel learning").

Which scalar output. By default the sum of the model's outputs per example (the sum of the logits of a classifier:
``module(x).reshape(m, -1).sum(1)``), a single scalar that every output unit feeds, so that the kernel sees the
whole last layer; a user function ``output_fn(module, batch) -> Tensor[m]`` replaces it (e.g. the logit of the true
class, or one output of a multi-head model).

The model is probed in eval mode (dropout off, BatchNorm on its running statistics): the kernel is a property of
the function the network computes, and in train mode dropout would make K random and BatchNorm would couple the
examples (f_i would depend on the other probe examples). The caller restores the training state
(:func:`~dyncheck.measure.sharpness.preserved_training_state`).

Memory: K is accumulated from per-parameter blocks, K = sum_b J_b J_b^T over groups of parameters holding at most
``block_values`` Jacobian entries (m x their size), so the whole J is never held for big models. Each group's block
comes from one batched backward (``torch.autograd.grad(..., is_grads_batched=True)``, vmap over the m unit
vectors), or from m backward passes where vmap does not support an operation. The blocks' products are
accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import MeasureError

__all__ = ["NTKResult", "default_output", "empirical_ntk", "kernel_distance", "kernel_stats", "probe_slice"]

OutputFn = Callable[[nn.Module, Any], Tensor]

#: Jacobian entries (m x parameter values) held at once: 16M float32 values, 64 MB
BLOCK_VALUES = 16_000_000


def probe_slice(batch: Any, m: int) -> Any:
    """The first ``m`` examples of a batch: every tensor with a leading (batch) dimension cut to ``[:m]``, in
    tuples, lists, named tuples and mappings (other values kept as they are)."""
    if isinstance(batch, Tensor):
        return batch[:m] if batch.dim() > 0 else batch
    if isinstance(batch, Mapping):
        return type(batch)({k: probe_slice(v, m) for k, v in batch.items()}) if isinstance(batch, dict) else \
            {k: probe_slice(v, m) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(probe_slice(v, m) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(probe_slice(v, m) for v in batch)
    return batch


def _inputs(batch: Any) -> Any:
    """The model's input in a batch: a tensor itself, the first element of a tuple or list ``(x, y, ...)``."""
    if isinstance(batch, (list, tuple)) and batch and not hasattr(batch, "_fields"):
        return batch[0]
    return batch


def _first_float(values: Any) -> Any:
    return next((v for v in values if isinstance(v, Tensor) and v.is_floating_point()), None)


def default_output(module: nn.Module, batch: Any) -> Tensor:
    """The default scalar output per example: the sum of the model's outputs for that example. The input is the
    batch itself (a tensor), its first element (``(x, y)``), or its keys as keyword arguments (a mapping, labels
    left out: a Hugging Face model); of an output that is a dict, has ``.logits`` or is a tuple, the logits or the
    first floating-point tensor."""
    x = _inputs(batch)
    if isinstance(x, Mapping):
        out = module(**{k: v for k, v in x.items() if k not in ("labels", "label")})
    else:
        out = module(x)
    if isinstance(out, Mapping):  # a dict, or a Hugging Face ModelOutput: its logits, else its first float tensor
        out = out["logits"] if "logits" in out else _first_float(out.values())
    elif hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)):
        out = _first_float(out)
    if not isinstance(out, Tensor) or out.dim() == 0:
        raise MeasureError("the model's output on the probe batch is not a batched tensor; pass "
                           "ntk_output_fn=fn(module, batch) -> Tensor[m]")
    return out.reshape(out.shape[0], -1).sum(1)


@dataclass
class NTKResult:
    """An empirical NTK: ``kernel`` (m x m, float64, on the host), the parameter count P it was taken over, the
    number of parameter blocks and whether the blocks needed one backward pass per example (no vmap)."""

    kernel: Tensor
    n_params: int
    blocks: int
    looped: bool


def _blocks(params: Sequence[Tensor], m: int, block_values: int) -> list[list[Tensor]]:
    groups: list[list[Tensor]] = [[]]
    size = 0
    for p in params:
        n = p.numel() * m
        if groups[-1] and size + n > block_values:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += n
    return groups


def _dense(g: Tensor) -> Tensor:
    """Sparse gradients (``nn.Embedding(sparse=True)``) as dense tensors."""
    return g.to_dense() if g.layout != torch.strided else g


def _jacobian_block(out: Tensor, group: Sequence[Tensor], batched: bool) -> tuple[Tensor, bool]:
    """The m x (group's size) Jacobian of ``out`` (m outputs); ``batched``: try the vmapped backward first.
    Returns it and whether the one-backward-per-example loop was used."""
    m = out.shape[0]
    if batched:
        try:
            eye = torch.eye(m, dtype=out.dtype, device=out.device)
            gs = torch.autograd.grad(out, group, grad_outputs=eye, retain_graph=True, allow_unused=True,
                                     is_grads_batched=True)
            return torch.cat([(_dense(g) if g is not None else torch.zeros((m, *p.shape), dtype=p.dtype,
                                                                            device=p.device)).reshape(m, -1)
                              for g, p in zip(gs, group)], dim=1), False
        except Exception:  # an operation without a batching rule: one backward per example
            pass
    rows = []
    for i in range(m):
        gs = torch.autograd.grad(out[i], group, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(_dense(g) if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(gs, group)]))
    return torch.stack(rows), True


def empirical_ntk(module: nn.Module, batch: Any, *, output_fn: OutputFn | None = None,
                  params: Sequence[Tensor] | None = None, block_values: int = BLOCK_VALUES,
                  batched: bool = True) -> NTKResult:
    """K = J J^T of ``output_fn(module, batch)`` (default :func:`default_output`, m values) with respect to
    ``params`` (default: the trainable parameters), accumulated over parameter blocks of at most ``block_values``
    Jacobian entries. Runs the module as it is (the caller sets eval mode and restores state); ``.grad`` fields
    are not touched."""
    params = [p for p in (params if params is not None else module.parameters()) if p.requires_grad]
    if not params:
        raise MeasureError("the model has no trainable parameters")
    with torch.enable_grad():
        out = (output_fn or default_output)(module, batch)
        if not isinstance(out, Tensor) or out.dim() != 1 or out.numel() < 1:
            raise MeasureError(f"the NTK output must be a 1-d tensor of one value per probe example, got "
                               f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
        if not out.requires_grad:
            raise MeasureError("the NTK output does not depend on any trainable parameter")
        if out.is_complex():
            raise MeasureError("the NTK output is complex; expected real values")
        m = out.shape[0]
        kernel = torch.zeros((m, m), dtype=torch.float64)
        groups = _blocks(params, m, block_values)
        looped = False
        for group in groups:
            jac, loop = _jacobian_block(out, group, batched)
            looped = looped or loop
            j = jac.detach().to(torch.float64)
            kernel += (j @ j.T).cpu()
            del jac, j
        del out
    return NTKResult(kernel, sum(p.numel() for p in params), len(groups), looped)


def kernel_distance(a: Tensor, b: Tensor) -> float:
    """1 - <A, B>_F / (||A||_F ||B||_F) (Fort et al. 2020): 0 for kernels equal up to scale, at most 1 for
    positive semi-definite ones; NaN when one is zero."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    na, nb = torch.linalg.matrix_norm(a), torch.linalg.matrix_norm(b)
    if not (na > 0 and nb > 0):
        return float("nan")
    return float(1.0 - (a * b).sum() / (na * nb))


def kernel_stats(k: Tensor) -> tuple[float, float]:
    """The top eigenvalue of a symmetric kernel and its share of the trace (the sum of the eigenvalues)."""
    k = k.to(torch.float64)
    evals = torch.linalg.eigvalsh((k + k.T) / 2)
    top = float(evals[-1])
    trace = float(evals.sum())
    return top, (top / trace if trace > 0 else float("nan"))
