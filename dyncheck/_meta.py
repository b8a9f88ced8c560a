"""Run metadata that is plain torch: model structure, optimizers, library versions."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import torch
from torch import nn

from .measure.naming import named_modules, named_parameters


def jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def module_meta(module: nn.Module) -> dict[str, Any]:
    params = [
        {"name": n, "shape": list(p.shape), "numel": p.numel(), "dtype": str(p.dtype).replace("torch.", ""),
         "trainable": p.requires_grad}
        for n, p in named_parameters(module)  # canonical names, as the metrics name them
    ]
    return {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "n_parameters": sum(p["numel"] for p in params),
        "n_trainable": sum(p["numel"] for p in params if p["trainable"]),
        "parameters": params,
        "modules": [{"name": n, "type": type(m).__name__} for n, m in named_modules(module)],
    }


def optimizer_meta(optimizer: torch.optim.Optimizer, name: str) -> dict[str, Any]:
    groups = []
    for g in optimizer.param_groups:
        d = {k: jsonable(v) for k, v in g.items() if k != "params"}
        d["n_params"] = sum(p.numel() for p in g["params"])
        groups.append(d)
    return {"name": name, "class": type(optimizer).__name__, "param_groups": groups}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("dyncheck", "numpy", "pytorch-lightning", "lightning"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
