"""Parameter and module names as the monitor records them (:func:`dyncheck.names.canonical_name`): a compiled
(``torch.compile``), FSDP1-wrapped, checkpoint-wrapped or DDP-wrapped model records the names of the plain one."""

from __future__ import annotations

from torch import Tensor, nn

from ..names import canonical_name

__all__ = ["named_modules", "named_parameters", "wrapper_prefix"]


def wrapper_prefix(module: nn.Module) -> str:
    """``"module."`` when ``module`` is a ``DistributedDataParallel`` or ``DataParallel`` wrapper (whose names all
    start with it), else ``""``."""
    wrappers: tuple[type, ...] = (nn.DataParallel,)
    try:
        from torch.nn.parallel import DistributedDataParallel

        wrappers += (DistributedDataParallel,)
    except ImportError:  # torch built without distributed
        pass
    return "module." if isinstance(module, wrappers) else ""


def named_parameters(module: nn.Module) -> list[tuple[str, Tensor]]:
    """``module.named_parameters()`` with canonical names."""
    prefix = wrapper_prefix(module)
    return [(canonical_name(n, prefix), p) for n, p in module.named_parameters()]


def named_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``module.named_modules()`` with canonical names, the root (``""``) left out. A wrapper and the module it
    wraps share a name: the wrapped one is kept (it is the one with the model's type and children)."""
    prefix = wrapper_prefix(module)
    out: dict[str, nn.Module] = {}
    for n, m in module.named_modules():
        c = canonical_name(n, prefix)
        if c:
            out.pop(c, None)  # keep model order: the wrapped module comes right after its wrapper
            out[c] = m
    return list(out.items())
