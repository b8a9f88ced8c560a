"""A plain PyTorch loop drives the monitor through :func:`watch`::

    with dyncheck.watch(model, optimizer, dirpath="runs/exp1") as mon:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            mon.step(loss)

What the loop does is read through hooks, so the order inside a step is the loop's own:

- a forward pre-hook on ``model`` starts the step at its first forward in training mode with gradients enabled
  (activation hooks go on, a due sharpness probe runs first); evaluation forwards (``model.eval()`` or
  ``torch.no_grad()``) are not part of a step;
- a step pre-hook on each optimizer reads the final gradients as ``optimizer.step()`` is called (after the loop's
  own clipping and AMP unscaling); a step post-hook marks the step done;
- ``mon.step(loss)`` gives the batch's loss; call it once per batch, after ``loss.backward()``, before or after
  ``optimizer.step()``. Batches without an optimizer step (gradient accumulation) add to the next step's loss.

A step closes (weight updates, activations, loss) at the first of: ``mon.step`` after the optimizer stepped, the
optimizer stepping after ``mon.step`` was called, the next step's first forward, the end of the ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..store import STORE_FILENAME
from ._common import Adapter, is_rank_zero, reduce_fn, run_meta

__all__ = ["LoopMonitor", "watch"]

_OWNER = "watch"
#: options of the Lightning callback that mean nothing here (logged metrics are a Lightning notion)
_EXCLUDED = ("train_loss_key", "val_loss_key")


class LoopMonitor(Adapter):
    """The monitor of one plain-loop run; made by :func:`watch`, used as a context manager."""

    def __init__(self, model: nn.Module, optimizer: Any, *, total_steps: int | None = None,
                 probe_batch: Any = None, loggers: Sequence[Any] = (), **options: Any) -> None:
        super().__init__(_OWNER, options, exclude=_EXCLUDED)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"watch(model={type(model).__name__}): expected a torch.nn.Module")
        opts = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        if not opts or not all(isinstance(o, torch.optim.Optimizer) for o in opts):
            raise ConfigError(f"watch(optimizer={optimizer!r}): expected a torch.optim.Optimizer or a list of them")
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ConfigError(f"watch(total_steps={total_steps!r}): expected an int >= 1 or None (unknown)")
        if (probe_batch is None) != (self.config.sharpness_loss_fn is None):
            given = "probe_batch" if probe_batch is not None else "sharpness_loss_fn"
            missing = "sharpness_loss_fn" if probe_batch is not None else "probe_batch"
            raise ConfigError(f"watch({given}=...): sharpness needs both probe_batch and sharpness_loss_fn "
                              f"(fn(model, batch) -> loss); {missing} is missing")
        if self.config.dirpath is None:
            raise ConfigError("watch(dirpath=None): expected the directory of the run (str or pathlib.Path)")
        if not all(callable(getattr(lg, "log_metrics", None)) for lg in loggers):
            raise ConfigError(f"watch(loggers={loggers!r}): expected a list of loggers with log_metrics(metrics, "
                              "step=...) (Lightning's loggers: TensorBoardLogger, CSVLogger, WandbLogger, ...)")
        self.model, self.optimizers, self.loggers = model, opts, list(loggers)
        self.total_steps, self.probe_batch = total_steps, probe_batch
        self.global_step = 0  #: optimizer steps completed
        self.should_stop = False  #: set when ``stop_on`` fired (on every process): break out of the loop
        self._running = False
        self._handles: list[Any] = []
        self._begun = False  # the current step has started (its first forward, or its optimizer step)
        self._stepped: set[int] = set()  # optimizers that stepped in the current step
        self._loss_given = False  # mon.step(loss) was called in the current batch
        self._in_monitor = False  # inside a monitor call (a sharpness probe's forward is not a step)
        self._warned_order = False

    @property
    def run_dir(self) -> Path:
        return Path(self.config.dirpath)  # type: ignore[arg-type]

    # -- the with block ----------------------------------------------------------------------------------------
    def __enter__(self) -> LoopMonitor:
        if self._running:
            raise ConfigError("watch(...): this monitor is already running; make a new one with dyncheck.watch")
        mon = self.monitor
        meta = run_meta(self.config, self.model, self.optimizers,
                        {"framework": "plain loop", "world_size": torch.distributed.get_world_size()
                         if torch.distributed.is_available() and torch.distributed.is_initialized() else 1,
                         "total_steps": self.total_steps})
        mon.start(module=self.model, optimizers=self.optimizers,
                  store_path=self.run_dir / STORE_FILENAME if is_rank_zero() else None, meta=meta,
                  every_n_steps=self.config.every_n_steps or 50, reduce=reduce_fn(),
                  probe_loss=self.config.sharpness_loss_fn, planned_steps=self.total_steps, start_step=0)
        self._running = True
        self.evaluation.fit_started(mon)
        self._handles = [self.model.register_forward_pre_hook(self._on_forward)]
        for opt in self.optimizers:
            self._handles.append(opt.register_step_pre_hook(self._on_optimizer_pre))
            self._handles.append(opt.register_step_post_hook(self._on_optimizer_post))
        if self.probe_batch is not None:
            self._call(mon.batch_start, 0, self.probe_batch)  # keeps a copy of it for the probes
            self._begun = True
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not self._running:
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        self._running = False
        if exc is None:
            if self._stepped:
                self._close(None)
            self._finish("finished", self.global_step, loggers=self.loggers)
        else:  # no collectives here: the other processes may not be in this block
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "crashed"
            self._finish(status, self.global_step, error=exc, reduce=False, loggers=self.loggers)

    # -- the loop's calls --------------------------------------------------------------------------------------
    def step(self, loss: Tensor | float | None) -> None:
        """The batch's training loss (a tensor, kept on its device; a float works too): once per batch, after
        ``loss.backward()``, before or after ``optimizer.step()``."""
        if not self._running:
            raise ConfigError("mon.step(loss): the monitor is not running; call it inside `with dyncheck.watch(...)`")
        if loss is not None and not isinstance(loss, Tensor):
            loss = torch.tensor(float(loss))
        if self._stepped:
            self._close(loss)
        else:  # before the optimizer step, or a batch that accumulates gradients
            self._call(self.monitor.batch_end, self.global_step, loss, stepped=False)
            self._loss_given = True

    def log(self, values: dict[str, Tensor | float], step: int | None = None) -> None:
        """Record other scalars at ``step`` (default: the current step), e.g. ``{"loss/val": v}``; names without a
        ``/`` are recorded as ``logged/<name>``."""
        if not self._running:
            raise ConfigError("mon.log(...): the monitor is not running; call it inside `with dyncheck.watch(...)`")
        values = {(k if "/" in k else f"logged/{k}"): v for k, v in values.items()}
        s = self.global_step if step is None else step
        self._call(self.monitor.record, s, values, op="mean")
        if "loss/val" in values:
            self._call(self.monitor.flush)
            self._call(self._live_check, s, self._stop)

    def log_val(self, loss: Tensor | float, step: int | None = None) -> None:
        """The validation loss, recorded as ``loss/val`` (averaged across processes): flushes and, with
        ``stop_on``, checks live."""
        self.log({"loss/val": loss}, step)

    # -- hooks -------------------------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The monitor's own calls are guarded per measurement; this guards what is left (a monitor bug must not
        break the training either)."""
        self._in_monitor = True
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # the monitor never breaks the training it observes
            self.monitor.warn_once(f"loop-{getattr(fn, '__name__', fn)}",
                                   f"dyncheck: {getattr(fn, '__name__', fn)} failed ({type(exc).__name__}: {exc})")
            return None
        finally:
            self._in_monitor = False

    def _on_forward(self, module: nn.Module, args: Any) -> None:
        if self._in_monitor or not module.training or not torch.is_grad_enabled():
            return
        self._loss_given = False
        if self._stepped:  # the last step was not closed by mon.step(loss)
            self._order_warning()
            self._close(None)
        if not self._begun:
            self._begun = True
            self._call(self.monitor.batch_start, self.global_step, None)

    def _on_optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._in_monitor:
            return
        if id(optimizer) in self._stepped:  # stepping again without a forward or mon.step in between
            self._order_warning()
            self._close(None)
        if not self._begun:
            self._begun = True
            self._call(self.monitor.batch_start, self.global_step, None)
        if not any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
            self.monitor.warn_once("loop-nograd", "dyncheck: optimizer.step() found no gradients: call "
                                   "loss.backward() before optimizer.step() and zero_grad() after it; gradient "
                                   "norms are not recorded for such steps")
        self._call(self.monitor.before_optimizer_step, self.global_step, optimizer)

    def _on_optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._in_monitor:
            return
        self._stepped.add(id(optimizer))
        if self._loss_given and len(self._stepped) == len(self.optimizers):
            self._close(None)  # mon.step(loss) came before optimizer.step()

    def _close(self, loss: Tensor | None) -> None:
        """End the current optimizer step."""
        step = self.global_step
        self._stepped.clear()
        self._begun = self._loss_given = False
        self.global_step += 1
        self._call(self.monitor.batch_end, step, loss, stepped=True)
        if self.evaluation.live_due(self.monitor):  # every step: only a flush calls for a live check
            self._call(self._live_check, step, self._stop)

    def _stop(self) -> None:
        self.should_stop = True

    def _order_warning(self) -> None:
        if not self._warned_order:
            self._warned_order = True
            self.monitor.warn_once("loop-order", "dyncheck: an optimizer step was not followed by mon.step(loss): "
                                   "call mon.step(loss) once per batch, after loss.backward(); that step's loss "
                                   "is not recorded")


def watch(model: nn.Module, optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer], *,
          dirpath: str | Path, total_steps: int | None = None, probe_batch: Any = None,
          sharpness_loss_fn: Callable[[nn.Module, Any], Tensor] | None = None, loggers: Sequence[Any] = (),
          **options: Any) -> LoopMonitor:
    """Monitor a plain PyTorch training loop (see :mod:`dyncheck.adapters.loop` and README, "Plain PyTorch loop").

    Args:
        model: the module being trained (its forward is watched; evaluation forwards are not recorded).
        optimizer: its optimizer, or a list of them.
        dirpath: directory of the run (``run.db``, ``findings.json``, ``report.html``).
        total_steps: optimizer steps planned, for the sharpness schedule (None: unknown).
        probe_batch: a batch kept (copied) for sharpness probes; with ``sharpness_loss_fn(model, batch) -> loss``.
            Without both, sharpness is off.
        loggers: objects with ``log_metrics(metrics, step=...)`` (Lightning's loggers work standalone): the
            finding counts at the end and, with ``mirror=True``, the summary series and findings.
        **options: every other option of :class:`~dyncheck.DynamicsMonitor` (``every_n_steps``, ``rules``,
            ``stop_on``, ``report``, ...) but ``train_loss_key``/``val_loss_key``.

    Status in ``run.meta["status"]``: ``finished`` when the block exits normally, ``interrupted`` on
    KeyboardInterrupt, ``crashed`` on another exception (which propagates).
    """
    return LoopMonitor(model, optimizer, dirpath=dirpath, total_steps=total_steps, probe_batch=probe_batch,
                       sharpness_loss_fn=sharpness_loss_fn, loggers=loggers, **options)
