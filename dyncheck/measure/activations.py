"""Activation statistics per module, taken by forward hooks that stay registered for the whole fit and record only
while their recorder is ``active`` (the steps that measure).

Hooks are registered once and switched by a flag, not added and removed per step, so that ``torch.compile`` sees
them: a graph dynamo traced while a module had no hooks does not guard on its hooks
(``torch._dynamo.config.skip_nnmodule_hook_guards``), so hooks added later are never called from it (per-step
attaching recorded step 0 only). A graph traced with the hooks inlines them and guards on their count and on the
flag, which it reads through the hook registered now: a compiled model gets one graph with the statistics (computed
inside the graph) and one without, compiled once each, and a later fit's new hooks and recorder are used by them.

Statistics of one module output ``a`` (computed in float32 on a detached copy):

``mean``, ``std``        over all elements
``max_abs``              max |a|
``nonfinite``            number of NaN/Inf elements
``dead``                 share of units that output exactly 0 for every sample of the batch
``saturated``            share of outputs in the flat tails of a sigmoid/tanh-like module (only for those types,
                         and ``nn.RNN`` with tanh: its output sequence)
``unit_spread``          how much the units differ: the larger of the coefficients of variation, across the
                         units, of each unit's max |a| and of each unit's sum of ``a`` over the batch. Units that
                         compute one and the same function (a symmetric initialisation never broken) give ~1e-7
                         (float rounding); distinct units 1e-2 or more. BatchNorm's equal channel means differ in
                         their maxima, a saturating clamp's equal maxima in their sums. NaN with fewer than two
                         units, when every unit is dead, or for a non-finite output.

A *unit* is a channel for convolution-like modules and for 4-D/5-D outputs (``N, C, ...``), otherwise a feature of
the last dimension (``N, F`` or ``N, T, F``). A module called several times in one step (a shared ``nn.ReLU``) gets
the mean of its calls (max for ``max_abs``, sum for ``nonfinite``). When a module returns a tuple, list or dict, the
first floating-point tensor in it is measured (e.g. the output sequence of an ``nn.LSTM``). Statistics are computed
in float32, in float64 for float64 outputs.

A module that cannot be measured (a TorchScript module takes no hooks; a sparse or complex output; any error of the
statistics) is turned off in the recorder and never raises into the model's forward: the recorder keeps the error
for its owner to report (:meth:`ActivationRecorder.take_errors`).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ..errors import MeasureError
from ..names import ACTIVATION_STATS
from .naming import named_modules
from .tensors import count_nonfinite, first_tensor

__all__ = ["ACTIVATION_STATS", "STAT_REDUCE", "activation_stats", "unit_dim", "saturation_bounds",
           "first_float_tensor", "ActivationRecorder", "Selection", "select", "select_modules", "is_compiled",
           "runs_compiled"]

#: how each statistic combines across calls of a module and across processes
STAT_REDUCE = {"mean": "mean", "std": "mean", "max_abs": "max", "nonfinite": "sum", "dead": "mean",
               "saturated": "mean", "unit_spread": "mean"}

_CHANNEL_FIRST = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd, nn.GroupNorm,
)
_SKIP = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten,
         nn.Unflatten, nn.Embedding, nn.EmbeddingBag)


def unit_dim(module: nn.Module, x: Tensor) -> int:
    """The dimension of ``x`` that indexes units (channels or features) for the dead-unit share."""
    if x.dim() <= 1:
        return 0
    if isinstance(module, _CHANNEL_FIRST) or x.dim() >= 4:
        return 1
    return x.dim() - 1


def saturation_bounds(module: nn.Module) -> tuple[float, float] | None:
    """(low, high): outputs at or below ``low`` or at or above ``high`` are in the flat tails of the module's
    nonlinearity -- within 1% of its output range from a bound, where its derivative is at most ~4% of its peak.
    ``None`` for modules that do not saturate."""
    if isinstance(module, nn.Sigmoid):
        return 0.01, 0.99
    if isinstance(module, (nn.Tanh, nn.Softsign)):
        return -0.98, 0.98
    if isinstance(module, nn.Hardsigmoid):
        return 0.0, 1.0
    if isinstance(module, nn.Hardtanh):  # includes ReLU6 (0, 6)
        return float(module.min_val), float(module.max_val)
    if isinstance(module, nn.RNN) and module.nonlinearity == "tanh":  # its output sequence is tanh's
        return -0.98, 0.98
    return None


def activation_stats(x: Tensor, unit_dim: int, saturation: tuple[float, float] | None = None) -> Tensor:
    """The statistics of :data:`ACTIVATION_STATS` for one output, as a float32 vector on ``x``'s device (float64
    for a float64 output; ``saturated`` is NaN when ``saturation`` is None). Zero-size outputs give NaN
    statistics. Raises :class:`MeasureError` for a sparse output."""
    x = x.detach()
    if x.layout != torch.strided:
        raise MeasureError(f"activation statistics need a dense output, got a {x.layout} tensor")
    if x.numel() == 0:
        return torch.full((len(ACTIVATION_STATS),), float("nan"), device=x.device,
                          dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    xf = x if x.dtype == torch.float64 else x.float()
    n = xf.numel()
    nonfinite = count_nonfinite(xf).to(xf.dtype)
    other = [d for d in range(xf.dim()) if d != unit_dim]
    unit_sum = xf.sum(dim=other) if other else xf  # per unit; their total gives the mean at no extra pass
    # two-pass mean/std: as accurate as torch.std_mean and ~8x faster on CPU
    mean = unit_sum.sum() / n
    std = torch.linalg.vector_norm(xf - mean) / n ** 0.5
    mag = xf.abs()
    per_unit = mag.amax(dim=other) if other else mag  # a unit is dead iff its largest |output| is 0
    max_abs = per_unit.amax()
    dead = 1.0 - (per_unit != 0).float().mean()  # (a NaN unit is not dead)
    if saturation is None:
        sat = xf.new_full((), float("nan"))
    else:
        lo, hi = saturation
        if lo == -hi:  # symmetric tails (tanh, softsign, hardtanh's default): |a| at or above the bound
            tails = mag >= hi
        else:
            tails = (xf <= lo).logical_or_(xf >= hi)
        sat = torch.count_nonzero(tails).to(xf.dtype) / n
    if per_unit.numel() < 2:  # (known from the shape: no host sync)
        spread = sat.new_full((), float("nan"))
    else:
        spread = _unit_cv(torch.stack([per_unit.reshape(-1), unit_sum.reshape(-1)]))
    return torch.stack([mean, std, max_abs, nonfinite, dead, sat, spread])


def _unit_cv(v: Tensor) -> Tensor:
    """The larger of the rows' coefficients of variation (std / mean |v|) across the units (columns), in a few
    kernels and without a host sync. Copies give ~1e-7; a layer with dead and live units is no set of copies and
    gets a large value; all units at 0 (a row's mean |v| 0) or a non-finite value give NaN."""
    sd, _ = torch.std_mean(v, dim=-1, correction=0)
    return (sd / v.abs().mean(-1)).amax()


def first_float_tensor(output: Any) -> Tensor | None:
    """The first floating-point tensor in a module output (tensor, tuple/list, dict, depth-first)."""
    return first_tensor(output, Tensor.is_floating_point)


class Selection(NamedTuple):
    """The modules a list of patterns selects (canonical name, module; in model order) and the patterns that
    select none."""

    modules: list[tuple[str, nn.Module]]
    unmatched: list[str]


def select(model: nn.Module, patterns: Sequence[str] | None = None) -> Selection:
    """Leaf modules worth measuring (not dropout, identity, flatten or embeddings), by canonical name
    (:func:`dyncheck.names.canonical_name`: a compiled model's ``_orig_mod.`` is left out, so one list of
    patterns fits the compiled and the eager model). ``patterns``: glob patterns (``fnmatchcase``) over module
    names; a pattern naming a leaf selects it, one naming a module with children (``transformer.h.0``,
    ``*.attn``) selects the leaves worth measuring below it. ``None``: every leaf worth measuring."""
    mods = named_modules(model)
    leaves = [(n, m) for n, m in mods if not any(True for _ in m.children())]
    measurable = [(n, m) for n, m in leaves if not isinstance(m, _SKIP)]
    if patterns is None:
        return Selection(measurable, [])
    leaf_names = {n for n, _ in leaves}
    chosen: set[str] = set()
    unmatched = []
    for p in patterns:
        hit = [n for n, _ in mods if fnmatch.fnmatchcase(n, p)]
        subtrees = tuple(n + "." for n in hit if n not in leaf_names)
        hit_leaves = set(hit) & leaf_names
        got = {n for n, _ in measurable if n in hit_leaves or (subtrees and n.startswith(subtrees))}
        if not got:
            unmatched.append(p)
        chosen |= got
    return Selection([(n, m) for n, m in measurable if n in chosen], unmatched)


def select_modules(model: nn.Module, patterns: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The modules of :func:`select` (without the unmatched patterns)."""
    return select(model, patterns).modules


def runs_compiled(module: nn.Module) -> bool:
    """The module's own calls run a compiled graph: a ``torch.compile`` wrapper (``OptimizedModule``), a forward
    compiled in place, or a Lightning module whose steps Lightning compiled (``_compiler_ctx``)."""
    return (hasattr(module, "_orig_mod") or bool(getattr(module, "_compiler_ctx", None))
            or hasattr(getattr(module, "forward", None), "_torchdynamo_orig_callable"))


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or a submodule was wrapped by ``torch.compile`` (:func:`runs_compiled`)."""
    return runs_compiled(model) or any(type(m).__name__ == "OptimizedModule" and hasattr(m, "_orig_mod")
                                       for m in model.modules())


class ActivationRecorder:
    """Forward hooks on modules that accumulate their activation statistics while ``active``.

    >>> rec = ActivationRecorder(select_modules(model))
    >>> rec.attach(); model(x); rec.detach()
    >>> names, values = rec.collect()     # names like 'act/mean/fc1'; values: 1-D float32 tensor

    A monitor attaches once and switches ``active`` per step (see the module docstring: ``torch.compile``).
    ``ran`` holds the modules whose hook was called while active, up to the last :meth:`collect`.

    A module that cannot be hooked or measured is dropped from ``modules`` (its statistics of this step too) and
    its error kept until :meth:`take_errors`; hooks never raise into the forward.
    """

    def __init__(self, modules: Iterable[tuple[str, nn.Module]], active: bool = True) -> None:
        self.modules = list(modules)
        self.active = active
        self.ran: set[str] = set()
        self._handles: list[Any] = []
        self._calls: dict[str, list[Tensor]] = {}
        self._saturating = {name for name, mod in self.modules if saturation_bounds(mod) is not None}
        self._off: set[str] = set()
        self._errors: list[tuple[str, Exception]] = []

    @property
    def off(self) -> set[str]:
        """The modules turned off (could not be hooked or measured)."""
        return set(self._off)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        for name, mod in list(self.modules):
            try:
                self._handles.append(mod.register_forward_hook(self._hook(name, mod)))
            except Exception as exc:  # e.g. TorchScript modules take no hooks
                self._turn_off(name, exc)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _turn_off(self, name: str, exc: Exception) -> None:
        if name in self._off:
            return
        self._off.add(name)
        self._errors.append((name, exc))
        self.modules = [(n, m) for n, m in self.modules if n != name]
        self._calls.pop(name, None)

    def take_errors(self) -> list[tuple[str, Exception]]:
        """``(module name, exception)`` of the modules turned off since the last call."""
        errors, self._errors = self._errors, []
        return errors

    def _hook(self, name: str, module: nn.Module):
        sat = saturation_bounds(module)

        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if not self.active or name in self._off:
                return
            try:
                calls = self._calls.setdefault(name, [])  # it ran (even when its output has nothing to measure)
                x = first_float_tensor(output)
                if x is None:
                    if isinstance(output, Tensor) and output.is_complex():
                        raise MeasureError(f"activation statistics need a real output, got {output.dtype}")
                    return
                calls.append(activation_stats(x, unit_dim(mod, x), sat))
            except Exception as exc:  # a measurement must never break the forward it observes
                self._turn_off(name, exc)

        return hook

    def collect(self) -> dict[str, tuple[list[str], Tensor]]:
        """Statistics gathered since the last collect, grouped by how they reduce across processes:
        ``{"mean": (names, values), "max": ..., "sum": ...}``. Statistics that do not apply (``saturated`` of a
        non-saturating module) are left out. Values are float32, float64 when some module's output was float64."""
        out: dict[str, tuple[list[str], list[Tensor]]] = {}
        self.ran.update(self._calls)
        for name, calls in self._calls.items():
            if not calls:
                continue
            stats = torch.stack(calls) if len(calls) > 1 else calls[0].unsqueeze(0)
            for j, stat in enumerate(ACTIVATION_STATS):
                if stat == "saturated" and name not in self._saturating:
                    continue
                op = STAT_REDUCE[stat]
                col = stats[:, j]
                val = col.amax() if op == "max" else col.sum() if op == "sum" else col.mean()
                names, vals = out.setdefault(op, ([], []))
                names.append(f"act/{stat}/{name}")
                vals.append(val)
        self._calls.clear()
        return {op: (names, torch.stack(vals)) for op, (names, vals) in out.items()}
