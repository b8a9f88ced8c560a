"""What the loop and Hugging Face adapters share: options split into the monitor's and the evaluation's (each
declared once, in :class:`~dyncheck.monitor.MonitorConfig` and :class:`~dyncheck._evaluation.EvaluationOptions`),
the processes' collectives from ``torch.distributed``, and the run's meta."""

from __future__ import annotations

import dataclasses
import difflib
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._evaluation import Evaluation, EvaluationAttributes, EvaluationOptions
from .._meta import jsonable, module_meta, optimizer_meta, versions
from ..errors import ArgumentError
from ..measure.tensors import world_size
from ..monitor import Monitor, MonitorConfig

__all__ = ["Adapter", "agree", "is_rank_zero", "reduce_fn", "run_meta", "split_options"]


def split_options(owner: str, options: Mapping[str, Any], *, exclude: Iterable[str] = ()) -> \
        tuple[MonitorConfig, EvaluationOptions]:
    """The options as a validated (MonitorConfig, EvaluationOptions); an unknown name is an
    :class:`ArgumentError` naming ``owner`` and the closest option."""
    exclude = set(exclude) | {"owner"}
    eval_names = [f.name for f in dataclasses.fields(EvaluationOptions) if f.name not in exclude]
    mon_names = [f.name for f in dataclasses.fields(MonitorConfig) if f.name not in exclude]
    known = mon_names + eval_names
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(known)}"
            raise ArgumentError(f"{owner}() got an unexpected keyword argument {key!r}; {hint}")
    evaluation = EvaluationOptions(**{k: v for k, v in options.items() if k in eval_names}, owner=owner)
    config = MonitorConfig(**{k: v for k, v in options.items() if k in mon_names}, owner=owner)
    return config, evaluation



def is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def reduce_fn() -> Any:
    """The monitor's ``reduce(tensor, op)`` over the default process group (None: a single process)."""
    if world_size() <= 1:
        return None
    dist = torch.distributed

    def reduce(t: Tensor, op: str) -> Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t / dist.get_world_size() if op == "mean" else t

    return reduce


def agree(fired: bool) -> bool:
    """True on every process when any process's ``fired`` is (one collective under DDP)."""
    if world_size() <= 1:
        return fired
    t = torch.tensor(float(fired), device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _info(message: str) -> None:
    if is_rank_zero():
        print(message, file=sys.stderr)


def run_meta(config: MonitorConfig, module: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
             trainer: Mapping[str, Any], *, hyperparameters: Mapping[str, Any] | None = None,
             schedulers: Sequence[Mapping[str, Any]] = (), start_step: int = 0) -> dict[str, Any]:
    """The run's meta at the start of a fit, the same keys for every adapter (optimizers numbered by class when a
    class occurs twice; the monitor's options as JSON)."""
    counts: dict[str, int] = {}
    opts = []
    for opt in optimizers:
        cls = type(opt).__name__
        counts[cls] = counts.get(cls, 0) + 1
        opts.append(optimizer_meta(opt, cls if counts[cls] == 1 else f"{cls}-{counts[cls] - 1}"))
    cfg = {k: jsonable(v) for k, v in vars(config).items() if k not in ("owner", "sharpness_loss_fn")}
    cfg["sharpness_loss_fn"] = getattr(config.sharpness_loss_fn, "__qualname__", None)
    return {"model": module_meta(module), "optimizers": opts, "schedulers": [dict(x) for x in schedulers],
            "hyperparameters": jsonable(dict(hyperparameters or {})), "trainer": jsonable(dict(trainer)),
            "monitor": cfg, "versions": versions(), "host": socket.gethostname(), "started": time.time(),
            "start_step": start_step}


class Adapter(EvaluationAttributes):
    """The monitor and evaluation of one run, and the attributes every adapter shows."""

    def __init__(self, owner: str, options: Mapping[str, Any], *, exclude: Iterable[str] = ()) -> None:
        self.config, options_ = split_options(owner, options, exclude=exclude)
        self.monitor = Monitor(self.config)
        self.evaluation = Evaluation(options_, warn=self.monitor.warn_once, info=_info)

    @property
    def store_path(self) -> Any:
        return self.monitor.store_path

    def _live_check(self, step: int, stop: Any) -> None:
        """After a flush (every process reaches it at the same step): evaluate live when ``stop_on`` is set."""
        self.evaluation.after_flush(self.monitor, agree, stop, step=step)

    def _finish(self, status: str, step: int, error: BaseException | None = None, reduce: bool = True,
                loggers: Sequence[Any] = ()) -> None:
        mon = self.monitor
        store = mon.store_path if mon.store is not None else None
        mon.finish(status, error=error, reduce=reduce)
        if store is not None:
            self.evaluation.final(store, step=step, loggers=loggers)
