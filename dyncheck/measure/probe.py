"""Where a sharpness probe runs: its execution contexts, its precision, and the copy of its batch.

Real model code often has no double backward: the fused CPU attention kernel
(``_scaled_dot_product_flash_attention_for_cpu_backward`` has no derivative: HF GPT-2 without attention dropout,
``nn.TransformerEncoder``), ``torch.compile`` (aot_autograd has no double backward), reentrant gradient
checkpointing (refuses ``torch.autograd.grad``). The probe therefore tries :data:`PROBE_CONTEXTS` in order:

1. ``double-backward``: the exact Hessian-vector product (:func:`~dyncheck.measure.sharpness.hvp_operator`) with
   the math SDPA backend (whose backward is differentiable) and ``torch.compiler.set_stance("force_eager")``
   (compiled modules run their eager code, which has double backward; nothing is compiled for the probe), under
   the training precision's autocast;
2. ``finite-difference``: the central difference of first-order gradients
   (:func:`~dyncheck.measure.sharpness.fd_hvp_operator`), in float32 (the training's autocast off: a difference of
   bfloat16 gradients is rounding), in the same eager mode; gradients by ``loss.backward()`` where
   ``autograd.grad`` is refused (reentrant checkpointing).

A :class:`ProbeLoss` carries the adapter's loss function with the training precision's context (Lightning: the
precision plugin's ``train_step_context()``; the HF Trainer: its autocast) and a way to run it in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ContextManager

import torch
from torch import Tensor, nn

__all__ = ["PROBE_CONTEXTS", "ProbeContext", "ProbeLoss", "as_probe_loss", "clone_batch", "eager_math"]


def clone_batch(batch: Any) -> Any:
    """A copy of ``batch`` whose tensors are detached clones, every container keeping its type: dicts and other
    mappings (an HF ``BatchEncoding`` is a ``UserDict``), lists, tuples, namedtuples, dataclasses (Lightning's
    ``apply_to_collection``). Objects it does not know are kept as they are."""
    from lightning_utilities.core.apply_func import apply_to_collection

    return apply_to_collection(batch, Tensor, lambda t: t.detach().clone())


@contextlib.contextmanager
def eager_math() -> Iterator[None]:
    """The math SDPA backend (a differentiable attention backward) and compiled modules run eagerly."""
    with contextlib.ExitStack() as stack:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError:  # pragma: no cover - torch < 2.3
            pass
        else:
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        set_stance = getattr(torch.compiler, "set_stance", None)
        if set_stance is not None:  # torch >= 2.6
            stack.enter_context(set_stance("force_eager"))
        yield


def _autocast_off(module: nn.Module) -> ContextManager:
    """Autocast off for the devices the module's parameters are on (and the CPU)."""
    stack = contextlib.ExitStack()
    kinds = {p.device.type for p in module.parameters()} | {"cpu"}
    for kind in sorted(kinds):
        try:
            stack.enter_context(torch.autocast(kind, enabled=False))
        except RuntimeError:  # a device type autocast does not know
            pass
    return stack


@dataclasses.dataclass(frozen=True)
class ProbeLoss:
    """The probe's loss ``fn(module, batch)`` with the training precision: ``__call__`` runs it under
    ``context()`` (the training's autocast), :meth:`fp32` without it and with autocast off (``fp32_context(module)``
    undoes what the adapter cannot leave out otherwise, e.g. accelerate's autocast-wrapped forward). ``precision``
    says in words what ``__call__`` runs under (the run's meta)."""

    fn: Callable[[nn.Module, Any], Tensor]
    precision: str
    context: Callable[[], ContextManager] | None = None
    fp32_context: Callable[[nn.Module], ContextManager] | None = None

    def __call__(self, module: nn.Module, batch: Any) -> Tensor:
        with self.context() if self.context is not None else contextlib.nullcontext():
            return self.fn(module, batch)

    @property
    def fp32_precision(self) -> str:
        """What :meth:`fp32` runs under, in words."""
        if self.context is None and self.fp32_context is None:  # a plain loss function: autocast off around it
            return "float32 (autocast off around the loss function; an autocast inside it still applies)"
        return "float32"

    def fp32(self, module: nn.Module, batch: Any) -> Tensor:
        with _autocast_off(module), \
                self.fp32_context(module) if self.fp32_context is not None else contextlib.nullcontext():
            return self.fn(module, batch)


def as_probe_loss(fn: Callable[[nn.Module, Any], Tensor]) -> ProbeLoss:
    """A plain loss function (the plain loop's ``sharpness_loss_fn``): its own precision, whatever it does."""
    if isinstance(fn, ProbeLoss):
        return fn
    return ProbeLoss(fn, "as the loss function computes it (its own autocast, if any)")


@dataclasses.dataclass(frozen=True)
class ProbeContext:
    """One way to run the probe: ``name`` (recorded in meta), ``operator`` (``"exact"``: double backward,
    ``"fd"``: finite differences), ``fp32`` (run the loss in float32, not under the training's autocast) and what
    it does, in words."""

    name: str
    operator: str
    fp32: bool
    description: str


PROBE_CONTEXTS: tuple[ProbeContext, ...] = (
    ProbeContext("double-backward", "exact", False,
                 "exact Hessian-vector products by double backward, math SDPA backend, torch.compile forced eager, "
                 "under the training precision"),
    ProbeContext("finite-difference", "fd", True,
                 "central differences of first-order gradients in float32, math SDPA backend, torch.compile "
                 "forced eager"),
)
