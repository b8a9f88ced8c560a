"""The Lightning callback: trainer hooks translated into :class:`dyncheck.monitor.Monitor` calls (what is
measured: :mod:`dyncheck.collect`) and :class:`dyncheck._evaluation.Evaluation` calls (checks, findings, report).
Nothing here measures or evaluates.

The hook logic lives in :class:`DynamicsMonitorHooks`, which uses only what ``lightning.pytorch`` and
``pytorch_lightning`` have in common; each package gets a concrete class that mixes it into that package's
``Callback`` (this module: ``pytorch_lightning``; :mod:`dyncheck.lightning`: ``lightning.pytorch``).

Options are declared once: :class:`~dyncheck.monitor.MonitorConfig` (measuring) and
:class:`~dyncheck._evaluation.EvaluationOptions` (checks and report); the signature and the ``Args`` of the
docstring are made from their fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch import Tensor, nn

from ._evaluation import Evaluation, EvaluationAttributes, EvaluationOptions
from .errors import ArgumentError
from .measure.probe import ProbeLoss
from .monitor import Monitor, MonitorConfig
from .store import STORE_FILENAME

__all__ = ["DynamicsMonitor", "DynamicsMonitorHooks", "default_probe_loss"]

#: logged keys taken as the validation loss when ``val_loss_key`` is not given (first match wins)
VAL_LOSS_KEYS = ("val_loss", "val/loss", "valid_loss", "validation_loss", "loss/val", "val_loss_epoch")
#: logged keys taken as the training loss when ``training_step`` returns none (manual optimization)
TRAIN_LOSS_KEYS = ("train_loss", "train/loss", "loss", "train_loss_step", "loss/train")


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def default_probe_loss(module: nn.Module, batch: Any) -> Tensor:
    """The loss on the probe batch: the module's own ``training_step(batch, 0)``, with ``self.log`` silenced."""
    module.log, module.log_dict = _noop, _noop  # type: ignore[method-assign]
    try:
        out = module.training_step(batch, 0)
    finally:
        del module.log, module.log_dict
    if isinstance(out, Mapping):
        out = out.get("loss")
    if not isinstance(out, Tensor):
        raise TypeError("training_step returned no loss tensor; pass DynamicsMonitor(sharpness_loss_fn=...)")
    return out


def _precision_probe(fn: Callable[[nn.Module, Any], Tensor], trainer: Any) -> ProbeLoss:
    """The probe loss under the training precision: the precision plugin's ``train_step_context()`` (autocast for
    ``bf16-mixed`` / ``16-mixed``), as the strategy runs ``training_step``."""
    plugin = getattr(trainer, "precision_plugin", None)
    context = getattr(plugin, "train_step_context", None)
    return ProbeLoss(fn, f"{trainer.precision} (the precision plugin's train_step_context)" if context else
                     f"{trainer.precision} (no precision context found: the loss function's own)", context=context)


def _planned_steps(trainer: Any) -> int | None:
    """Optimizer steps this fit will still take (for the sharpness schedule), None when unknown (infinite epochs,
    iterable datasets without ``max_steps``)."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # e.g. accumulate_grad_batches changing between epochs
        total = trainer.max_steps
    if not isinstance(total, (int, float)) or not math.isfinite(total) or total <= 0:
        return None
    return max(int(total) - int(trainer.global_step), 0) or None


def _checked_arguments(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``__init__`` so that a wrong call shape -- a misspelt keyword, a positional argument -- is an
    :class:`ArgumentError` naming the class the user called (not ``DynamicsMonitorHooks.__init__``) and the
    closest option. The signature stays the wrapped one (``inspect.signature`` follows ``__wrapped__``)."""
    options = [n for n, p in inspect.signature(init).parameters.items() if p.kind is p.KEYWORD_ONLY]

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        owner = type(self).__name__
        for key in kwargs:
            if key not in options:
                close = difflib.get_close_matches(key, options, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(options)}"
                raise ArgumentError(f"{owner}() got an unexpected keyword argument {key!r}; {hint}")
        if args:
            shown = ", ".join(repr(a) for a in args[:3]) + (", ..." if len(args) > 3 else "")
            raise ArgumentError(f"{owner}() takes keyword arguments only, got {len(args)} positional "
                              f"argument{'s' if len(args) > 1 else ''} ({shown}); e.g. {owner}(dirpath=...)")
        init(self, **kwargs)

    return wrapper


def _loss_of(outputs: Any) -> Tensor | None:
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        value = outputs.get("loss")
        return value if isinstance(value, Tensor) else None
    return None


def _option_fields() -> list[dataclasses.Field]:
    """Every option, in the documented order: the measuring options, then the evaluation options."""
    return [f for cls in (MonitorConfig, EvaluationOptions) for f in dataclasses.fields(cls) if f.name != "owner"]


def _signature() -> inspect.Signature:
    return inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in _option_fields()], return_annotation=None)


def _docstring() -> str:
    lines = ['Records the training dynamics of a Lightning fit into a run store (see README: "What is measured").',
             "", "Args:"]
    for f in _option_fields():
        lines += textwrap.wrap(f"{f.name}: {f.metadata['doc']}", width=112, initial_indent="    ",
                               subsequent_indent="        ")
    return "\n".join(lines) + "\n"


class DynamicsMonitorHooks(EvaluationAttributes):
    __doc__ = _docstring()

    def __init__(self, **options: Any) -> None:
        super().__init__()
        from .adapters._common import split_options

        self.config, self._evaluation_options = split_options(type(self).__name__, options)
        self.evaluation = Evaluation(self._evaluation_options, warn=self._warn_once, info=self._info)
        self.monitor = Monitor(self.config)
        self._state_key = self._generate_state_key(dirpath=self.config.dirpath)  # type: ignore[attr-defined]
        self._resume: dict[str, Any] | None = None
        self._running = False
        self._run_dir: Path | None = None
        self._fits = 0
        self._batch_step = 0
        self._seen: dict[str, Tensor] = {}
        self._val_sum: Tensor | None = None
        self._val_count = 0

    __init__.__signature__ = _signature()  # type: ignore[attr-defined]
    __init__ = _checked_arguments(__init__)

    def _warn_once(self, key: str, message: str) -> None:
        self.monitor.warn_once(key, message)

    @property
    def state_key(self) -> str:
        return self._state_key

    @property
    def run_dir(self) -> Path | None:
        """Directory of the run being (or last) recorded; None before the first fit."""
        return self._run_dir

    # -- start and end -----------------------------------------------------------------------------------------
    def _resolve_dir(self, trainer: Any) -> Path:
        if self.config.dirpath is not None:
            return Path(self.config.dirpath)
        if self._resume and self._resume.get("store") and Path(self._resume["store"]).exists():
            return Path(self._resume["store"]).parent
        base = trainer.log_dir or trainer.default_root_dir
        return Path(base) / "dyncheck"

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        run_dir = self._resolve_dir(trainer)
        same_dir = self._run_dir is not None and self._run_dir == run_dir
        self._run_dir = run_dir
        opts = list(trainer.optimizers)
        mon = self.monitor
        reduce = None
        if trainer.world_size > 1:
            strategy = trainer.strategy

            def reduce(t: Tensor, op: str) -> Tensor:
                return strategy.reduce(t, reduce_op=op)

        probe = self.config.sharpness_loss_fn
        if probe is None and pl_module.automatic_optimization:
            probe = default_probe_loss
        if probe is None and self.config.sharpness_enabled and trainer.is_global_zero:
            mon.warn_once("manual", "dyncheck: sharpness is off: manual optimization needs "
                                "DynamicsMonitor(sharpness_loss_fn=...)")
        if any(isinstance(m, nn.SyncBatchNorm) for m in pl_module.modules()) and trainer.world_size > 1:
            probe = None  # its forward is a collective; a rank-0-only probe would hang the others
            mon.warn_once("syncbn", "dyncheck: sharpness is off: SyncBatchNorm makes the probe a collective")
        if probe is not None:
            probe = _precision_probe(probe, trainer)
        meta = self._meta(trainer, pl_module, opts)
        mon.start(
            module=pl_module,
            optimizers=opts,
            store_path=run_dir / STORE_FILENAME if trainer.is_global_zero else None,
            meta=meta,
            every_n_steps=self.config.every_n_steps or max(1, int(trainer.log_every_n_steps or 50)),
            reduce=reduce,
            probe_loss=probe,
            resume=self._resume,
            append=same_dir,
            planned_steps=_planned_steps(trainer),
            start_step=int(trainer.global_step),
            unclipped_gradients=bool(pl_module.automatic_optimization),  # Lightning clips after the hook
        )
        self._resume = None
        self._running = True
        self.evaluation.fit_started(mon)
        self._fits += 1
        self._seen.clear()

    def _meta(self, trainer: Any, pl_module: Any, opts: list) -> dict[str, Any]:
        from .adapters._common import run_meta

        schedulers = [
            {"class": type(c.scheduler).__name__, "interval": c.interval, "frequency": c.frequency,
             "monitor": c.monitor}
            for c in getattr(trainer, "lr_scheduler_configs", [])
        ]
        settings = {
            "precision": str(trainer.precision),
            "strategy": type(trainer.strategy).__name__,
            "accelerator": type(trainer.accelerator).__name__,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "log_every_n_steps": trainer.log_every_n_steps,
            "automatic_optimization": bool(pl_module.automatic_optimization),
        }
        return run_meta(self.config, pl_module, opts, settings, schedulers=schedulers,
                        hyperparameters=getattr(pl_module, "hparams", {}) or {}, start_step=int(trainer.global_step))

    def _end(self, trainer: Any, status: str, error: BaseException | None = None, reduce: bool = True) -> None:
        if self._running:
            self._running = False
            store = self.monitor.store_path if self.monitor.store is not None else None
            self.monitor.finish(status, error=error, reduce=reduce)
            if store is not None:
                self.evaluation.final(store, step=int(trainer.global_step), loggers=getattr(trainer, "loggers", []))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._end(trainer, "finished")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # no collectives here: the other processes may not be in this hook
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "crashed"
        self._end(trainer, status, exception, reduce=False)

    # -- checks ------------------------------------------------------------------------------------------------
    @staticmethod
    def _info(message: str) -> None:
        """A rank-zero log line, like Lightning's own callbacks' (``lightning.pytorch`` and ``pytorch_lightning``
        share this function)."""
        pl.utilities.rank_zero_info(message)

    def _maybe_live_check(self, trainer: Any) -> None:
        """At a flush boundary: evaluate (rank 0, within the budget) and stop all processes together."""
        if not (self._running and self.evaluation.live_due(self.monitor)):  # every step: nothing more to do
            return

        def stop() -> None:
            trainer.should_stop = True

        self.evaluation.after_flush(self.monitor,
                                    lambda fired: trainer.strategy.reduce_boolean_decision(fired, all=False), stop,
                                    step=int(trainer.global_step))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._end(trainer, "ended", reduce=False)  # normally a no-op: on_fit_end or on_exception came first

    # -- per batch ---------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._running:
            self._batch_step = step = trainer.global_step
            self.monitor.batch_start(step, batch)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._running:
            self.monitor.before_optimizer_step(self._batch_step, getattr(optimizer, "_optimizer", optimizer))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._running:
            return
        step = self._batch_step
        stepped = trainer.global_step != step
        loss = _loss_of(outputs)
        if loss is not None and pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divides the returned loss for accumulation
        mon = self.monitor
        if stepped and mon.measuring:
            logged = self._changed_logged(trainer)
            if loss is None:
                loss = self._logged_train_loss(logged)
            # logged values are recorded as the module logged them (sync_dist is the module's choice): reducing
            # them here would be a collective over keys that may differ between ranks (rank_zero_only=True)
            mon.record(step, {f"logged/{k}": v for k, v in logged.items()}, op="none")
        mon.batch_end(step, loss, stepped=stepped)
        self._maybe_live_check(trainer)

    def _logged_train_loss(self, logged: Mapping[str, Tensor]) -> Tensor | None:
        keys = (self.config.train_loss_key,) if self.config.train_loss_key else TRAIN_LOSS_KEYS
        return next((logged[k] for k in keys if k in logged), None)

    def _changed_logged(self, trainer: Any) -> dict[str, Tensor]:
        """Scalars the module logged since the last look (a value object Lightning has not replaced is old)."""
        out = {}
        for key, value in trainer.callback_metrics.items():
            if isinstance(value, Tensor) and value.numel() == 1 and self._seen.get(key) is not value:
                self._seen[key] = value
                out[key] = value
        return out

    # -- validation and epochs ---------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._val_sum, self._val_count = None, 0
        if self._running and not trainer.sanity_checking:
            # what training logged since the last look belongs to the last training step, not to validation
            self._record_logged(trainer, max(trainer.global_step - 1, 0))

    def _record_logged(self, trainer: Any, step: int) -> None:
        logged = self._changed_logged(trainer)
        self.monitor.record(step, {f"logged/{k}": v for k, v in logged.items()}, op="none")

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        loss = _loss_of(outputs)
        if self._running and not trainer.sanity_checking and loss is not None and loss.numel() == 1:
            loss = loss.detach().float().reshape(())
            self._val_sum = loss if self._val_sum is None else self._val_sum + loss
            self._val_count += 1

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._running or trainer.sanity_checking:
            return
        step = trainer.global_step
        logged = self._changed_logged(trainer)
        keys = (self.config.val_loss_key,) if self.config.val_loss_key else VAL_LOSS_KEYS
        val = next((logged[k] for k in keys if k in logged), None)
        if val is not None:
            logged["loss/val"] = val  # as logged (and synced, or not, by the module)
        elif self._val_sum is not None:  # the mean of what validation_step returned, averaged over ranks
            self.monitor.record(step, {"loss/val": self._val_sum / self._val_count}, op="mean")
        self.monitor.record(step, {(k if k == "loss/val" else f"logged/{k}"): v for k, v in logged.items()},
                            op="none")
        self.monitor.flush()
        self._maybe_live_check(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._running:
            # epoch aggregates (on_epoch=True) appear now; keyed to the last step of the epoch
            self._record_logged(trainer, max(trainer.global_step - 1, 0))

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._running or self._resume is None:
            return self.monitor.state_dict()  # after the fit: the final state (nothing left to flush)
        return dict(self._resume)  # loaded but not started yet

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)


class DynamicsMonitor(DynamicsMonitorHooks, pl.Callback):
    __doc__ = DynamicsMonitorHooks.__doc__
