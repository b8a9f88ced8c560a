"""A Hugging Face ``transformers.TrainerCallback`` that drives the monitor on the Trainer's own steps::

    from dyncheck.adapters.hf import DynamicsMonitorCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[DynamicsMonitorCallback()])

Hooks: ``on_train_begin`` (start: the model and optimizer from the callback's keyword arguments),
``on_step_begin`` (the step starts: activation hooks, a due sharpness probe), ``on_pre_optimizer_step`` (final
gradients: after accumulation, all-reduce and the Trainer's clipping, before ``optimizer.step()``), ``on_step_end``
(after the optimizer and scheduler steps: updates, activations, the step's loss), ``on_log`` (the Trainer's logged
numbers as ``logged/<key>``), ``on_evaluate`` (``eval_loss`` as ``loss/val``), ``on_train_end`` (finish, checks,
report).

The Trainer's reporting integrations (``report_to``: TensorBoard, W&B, MLflow, ...) are the run's loggers: the finding
counts (``dyncheck/errors``, ``dyncheck/warnings``, ``dyncheck/info``) and, with ``mirror=True``, the summary series
and findings go through each integration's ``on_log`` at their steps, so they land where the Trainer's own numbers do
(the integrations prefix them as they prefix the Trainer's: ``train/dyncheck/...``). To reach them before they close
their writers, the callback moves itself just before the first integration in the Trainer's callback list at
``on_train_begin`` (the other callbacks keep their order).

The Trainer tells callbacks nothing when training raises. The callback registers an ``atexit`` handler while
training runs: a process that exits before ``on_train_end`` (an uncaught exception, a ``KeyboardInterrupt``) marks the
run ``crashed`` (``interrupted`` for a KeyboardInterrupt) with the exception, evaluates the checks and writes the
report. A process that catches the exception and goes on leaves the run ``running`` until it exits; the gate never
passes a ``running`` run.

The Trainer gives callbacks no loss tensor: the training loss is read from the model's output (``outputs.loss``)
by a forward hook on the model, per micro-batch, in training mode with gradients enabled. When the model computes
no loss itself (a ``compute_loss_func`` or a ``compute_loss`` override on labels outside the model), ``loss/train``
falls back to the Trainer's logged ``loss``, the mean over each logging window, at logging steps only.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainerCallback

from ..measure.probe import ProbeLoss
from ..store import STORE_FILENAME
from ._common import Adapter, reduce_fn, run_meta

__all__ = ["DynamicsMonitorCallback", "hf_probe_loss"]

_OWNER = "DynamicsMonitorCallback"
#: TrainingArguments recorded in the run's meta
_ARGS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm",
         "gradient_accumulation_steps", "per_device_train_batch_size", "max_steps", "num_train_epochs",
         "logging_steps", "seed", "fp16", "bf16", "optim")


def hf_probe_loss(model: nn.Module, batch: Any) -> Tensor:
    """The loss on the probe batch: ``model(**batch).loss`` (the batch as the Trainer gave it to the model)."""
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if not isinstance(loss, Tensor):
        raise TypeError("the model's output has no loss; pass DynamicsMonitorCallback(sharpness_loss_fn=...)")
    return loss


@contextlib.contextmanager
def _forward_without_autocast(model: nn.Module) -> Iterator[None]:
    """accelerate wraps the model's ``forward`` in its autocast (an instance attribute, the original kept as
    ``_original_forward``): for a float32 probe the original runs, for the duration of the probe only."""
    wrapped, original = vars(model).get("forward"), vars(model).get("_original_forward")
    if wrapped is None or original is None:
        yield
        return
    model.forward = original  # type: ignore[method-assign]
    try:
        yield
    finally:
        model.forward = wrapped  # type: ignore[method-assign]


def _precision_probe(fn: Any, args: Any, model: nn.Module) -> ProbeLoss:
    """The probe loss under the Trainer's precision: its autocast (``bf16`` / ``fp16``; accelerate's wrapped
    ``forward`` applies it too, the same context), or float32."""
    dtype = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) \
        else None
    if dtype is None:
        return ProbeLoss(fn, "float32 (the Trainer's precision)", fp32_context=_forward_without_autocast)
    kind = next((p.device.type for p in model.parameters()), "cpu")
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    return ProbeLoss(fn, f"{name} autocast on {kind} (the Trainer's mixed precision)",
                     context=lambda: torch.autocast(kind, dtype=dtype), fp32_context=_forward_without_autocast)


#: integrations whose ``on_log`` takes text (the findings); the others get numbers only
_TEXT_LOGGERS = ("TensorBoardCallback", "WandbCallback")


def _is_integration(callback: Any) -> bool:
    return type(callback).__module__.startswith("transformers.integrations")


def _callback_handler(me: Any) -> Any:
    """The Trainer's ``CallbackHandler`` whose ``call_event`` is calling ``me`` (a few frames up), or None."""
    frame = sys._getframe(1)
    for _ in range(6):
        if frame is None:
            return None
        obj = frame.f_locals.get("self")
        callbacks = getattr(obj, "callbacks", None)
        if obj is not me and isinstance(callbacks, list) and any(c is me for c in callbacks):
            return obj
        frame = frame.f_back
    return None


class _IntegrationLogger:
    """A Trainer reporting integration seen as a logger (``log_metrics``/``log_hyperparams``): the values go through
    its ``on_log`` with the state's ``global_step`` set to their step, as the Trainer's own numbers do."""

    def __init__(self, callback: Any, args: Any, state: Any, control: Any) -> None:
        self.callback, self.args, self.state, self.control = callback, args, state, control

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        state = dataclasses.replace(self.state, global_step=int(step))
        self.callback.on_log(self.args, state, self.control, logs=dict(metrics))

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        if type(self.callback).__name__ in _TEXT_LOGGERS:
            text = {k: "\n".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for k, v in params.items()}
            self.callback.on_log(self.args, self.state, self.control, logs=text)


def _output_loss(out: Any) -> Tensor | None:
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor) and out[0].ndim == 0:
        loss = out[0]
    return loss if isinstance(loss, Tensor) and loss.numel() == 1 else None


class DynamicsMonitorCallback(Adapter, TrainerCallback):
    """Records the training dynamics of a ``transformers.Trainer`` run into a run store. Options: those of
    :class:`~dyncheck.DynamicsMonitor` (keyword only); ``dirpath`` defaults to ``<output_dir>/dyncheck``,
    ``every_n_steps`` to ``logging_steps``, ``val_loss_key`` to ``eval_loss``, ``train_loss_key`` (the logged
    fallback when the model computes no loss) to ``loss``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(_OWNER, options)
        self._running = False
        self._handles: list[Any] = []
        self._step = 0
        self._losses: list[Tensor] = []
        self._summed = False  # the micro-batch losses were normalised by the whole step (num_items_in_batch)
        self._ranks_share = 1  # >1: num_items_in_batch counts the tokens of all processes (their losses add up)
        self._model_loss = False  # the model's forward gave a loss at least once
        self._in_monitor = False
        self._want_batch = False
        self.run_dir: Path | None = None
        self._integrations: list[Any] = []  # the Trainer's reporting callbacks (the run's loggers)

    # -- start and end -----------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if model is None or optimizer is None:
            self.monitor.warn_once("hf-start", "dyncheck: the Trainer gave no model or optimizer to callbacks; "
                                   "nothing is recorded")
            return
        opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        cfg = self.config
        self.run_dir = Path(cfg.dirpath) if cfg.dirpath is not None else Path(args.output_dir) / "dyncheck"
        steps = getattr(args, "logging_steps", None)
        every = cfg.every_n_steps or (int(steps) if isinstance(steps, (int, float)) and steps >= 1 else 50)
        planned = int(state.max_steps) - int(state.global_step) if state.max_steps and state.max_steps > 0 else None
        probe = _precision_probe(cfg.sharpness_loss_fn or hf_probe_loss, args, model)
        trainer = {"framework": "transformers.Trainer", "world_size": int(args.world_size),
                   **{k: getattr(args, k) for k in _ARGS if hasattr(args, k)}}
        meta = run_meta(cfg, model, [opt], trainer, hyperparameters=getattr(model.config, "to_dict", dict)()
                        if hasattr(model, "config") else None, start_step=int(state.global_step))
        self.monitor.start(module=model, optimizers=[opt],
                           store_path=self.run_dir / STORE_FILENAME if state.is_world_process_zero else None,
                           meta=meta, every_n_steps=every, reduce=reduce_fn(), probe_loss=probe,
                           planned_steps=planned or None, start_step=int(state.global_step))
        world = int(getattr(args, "world_size", 1) or 1)
        self._ranks_share = world if getattr(args, "average_tokens_across_devices", False) and world > 1 else 1
        self._running = True
        self._integrations = self._before_integrations()
        atexit.register(self._at_exit)
        self.evaluation.fit_started(self.monitor)
        self._want_batch = self.monitor.wants_probe_batch  # sharpness, the noise scale's probe, the NTK
        self._handles = [model.register_forward_pre_hook(self._on_forward_pre, with_kwargs=True),
                         model.register_forward_hook(self._on_forward, with_kwargs=True)]

    def _before_integrations(self) -> list[Any]:
        """Move this callback just before the first reporting integration (so that its end-of-fit logging reaches
        them before their ``on_train_end`` closes them); return the integrations."""
        handler = _callback_handler(self)
        if handler is None:
            return []
        callbacks = handler.callbacks
        found = [c for c in callbacks if _is_integration(c)]
        mine = next(i for i, c in enumerate(callbacks) if c is self)
        first = next((i for i, c in enumerate(callbacks) if _is_integration(c)), None)
        if first is not None and first < mine:
            # call_event is iterating over this list at index `mine`: removing it there and inserting it before
            # `first` leaves the callback after it at index mine + 1, the next one the loop visits
            callbacks.insert(first, callbacks.pop(mine))
        return found

    def _stop_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._running = False
        atexit.unregister(self._at_exit)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._running:
            self._stop_hooks()
            loggers = [_IntegrationLogger(c, args, state, control) for c in self._integrations]
            self._finish("finished", int(state.global_step), loggers=loggers)

    def _at_exit(self) -> None:
        """The process exits while training runs: on_train_end never came (the Trainer raised)."""
        if not self._running:
            return
        self._stop_hooks()
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)  # the uncaught exception
        if not isinstance(exc, BaseException):
            exc = RuntimeError("the process exited before the Trainer's on_train_end")
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "crashed"
        try:  # no collectives: the other processes may be gone
            self._finish(status, self._step, error=exc, reduce=False)
        except Exception as err:  # at exit: say so, never raise
            print(f"dyncheck: could not close the run at exit ({type(err).__name__}: {err})", file=sys.stderr)

    # -- per step ----------------------------------------------------------------------------------------------
    def _guarded(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        self._in_monitor = True
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # the monitor never breaks the training it observes
            name = getattr(fn, "__name__", "call")
            self.monitor.warn_once(f"hf-{name}", f"dyncheck: {name} failed ({type(exc).__name__}: {exc})")
        finally:
            self._in_monitor = False

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._running:
            self._step = int(state.global_step)
            self._losses, self._summed = [], False
            self._guarded(self.monitor.batch_start, self._step, None)

    def _on_forward_pre(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if self._want_batch and not self._in_monitor and module.training and torch.is_grad_enabled() and kwargs:
            self._want_batch = False  # the first training batch, as the model gets it, is the probe batch
            batch = {k: v for k, v in kwargs.items() if k != "num_items_in_batch"}
            self._guarded(self.monitor.batch_start, self._step, batch)

    def _on_forward(self, module: nn.Module, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        if self._in_monitor or not self._running or not module.training or not torch.is_grad_enabled():
            return
        loss = _output_loss(out)
        if loss is not None:
            self._model_loss = True
            self._losses.append(loss.detach())
            self._summed = kwargs.get("num_items_in_batch") is not None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        if self._running and optimizer is not None:
            self._guarded(self.monitor.before_optimizer_step, self._step, getattr(optimizer, "optimizer", optimizer))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._running:
            return
        loss = None
        if self._losses:
            # normalised by the step's token count (over all processes with average_tokens_across_devices, where
            # the Trainer scales each process's loss by the world size, as the monitor's mean over processes needs)
            loss = torch.stack(self._losses).sum() if self._summed else torch.stack(self._losses).mean()
            if self._summed and self._ranks_share > 1:
                loss = loss * self._ranks_share
        self._losses = []
        self._guarded(self.monitor.batch_end, self._step, loss, stepped=True)
        if not self.evaluation.live_due(self.monitor):  # every step: nothing more to do
            return

        def stop() -> None:
            control.should_training_stop = True

        self._guarded(self._live_check, self._step, stop)

    # -- logs and evaluation -----------------------------------------------------------------------------------
    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not self._running or not logs:
            return
        values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not values:
            return
        step = max(int(state.global_step) - 1, 0)  # what was logged belongs to the last completed step
        record = {f"logged/{k}": v for k, v in values.items()}
        key = self.config.train_loss_key or "loss"
        if not self._model_loss and key in values:
            record["loss/train"] = values[key]
        # logged numbers are already averaged over processes by the Trainer: rank zero's are recorded
        self._guarded(self.monitor.record, step, record, op="none")

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> None:
        if not self._running or not metrics:
            return
        key = self.config.val_loss_key or "eval_loss"
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._guarded(self.monitor.record, int(state.global_step), {"loss/val": float(value)}, op="none")
        self._guarded(self.monitor.flush)

        def stop() -> None:
            control.should_training_stop = True

        self._guarded(self._live_check, int(state.global_step), stop)
