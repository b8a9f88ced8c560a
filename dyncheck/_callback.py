"""The Lightning callback: trainer hooks translated into :class:`dyncheck.monitor.Monitor` calls.

The hook logic lives in :class:`DynamicsMonitorHooks`, which uses only what ``lightning.pytorch`` and
``pytorch_lightning`` have in common; each package gets a concrete class that mixes it into that package's
``Callback`` (this module: ``pytorch_lightning``; :mod:`dyncheck.lightning`: ``lightning.pytorch``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import math
import os
import socket
import warnings
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
from torch import Tensor, nn

from ._meta import jsonable, module_meta, optimizer_meta, versions
from .errors import ArgumentError, ConfigError, DyncheckError, RuleError
from .monitor import Monitor, MonitorConfig
from .store import STORE_FILENAME, open_run

FINDINGS_FILENAME = "findings.json"
_LIVE_BUDGET = 0.02  # share of training time that live evaluation (stop_on) may take

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


def _load_rules_option(owner: str, rules: Any) -> Any:
    if rules is None or rules is False:
        return None
    from .checks.rules import load_rules

    given = rules
    if isinstance(rules, os.PathLike):
        rules = os.fspath(rules)
    expected = "expected 'default', a path to a YAML rule file (UTF-8), a list of them, or None"
    if not isinstance(rules, (str, list, tuple)) or not all(
            isinstance(r, (str, os.PathLike)) for r in ([rules] if isinstance(rules, str) else rules)):
        raise ConfigError(f"{owner}(rules={given!r}): {expected}")
    sources = [rules] if isinstance(rules, str) else [os.fspath(r) for r in rules]
    try:
        return load_rules(sources)
    except RuleError as exc:  # names the file, line and check: say which argument it came from
        exc.args = (f"{owner}(rules={given!r}): invalid rule file\n{exc}",)
        raise
    except ConfigError as exc:
        raise ConfigError(f"{owner}(rules={given!r}): {exc}") from None
    except Exception as exc:  # unreadable file: not UTF-8, not a file we can read, nested too deep
        bad = next((src for src in sources if src != "default" and not _readable_text(src)), None)
        what = f"cannot read rule file {bad!r}" if bad is not None else "cannot load the rules"
        raise ConfigError(f"{owner}(rules={given!r}): {what} ({type(exc).__name__}: {exc}); {expected}") from None


def _readable_text(path: str) -> bool:
    try:
        Path(path).read_text(encoding="utf-8")
        return True
    except (OSError, ValueError):
        return False


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


class DynamicsMonitorHooks:
    """Records the training dynamics of a Lightning fit into a run store (see README: "What is measured").

    Args:
        dirpath: directory of the run (``run.db`` and, later, findings and report). Default:
            ``<trainer.log_dir or default_root_dir>/dyncheck``.
        every_n_steps: per-layer statistics (gradient norms and non-finite counts per tensor, weight norms,
            update-to-weight ratios, unchanged parameters) and other logged scalars every this many optimizer
            steps. Default: ``trainer.log_every_n_steps``.
        scalars_every_n_steps: training loss, learning rates and global gradient norm every this many steps (1).
        activations_every_n_steps: activation statistics every this many steps; default ``every_n_steps``;
            0 turns them off.
        activation_modules: glob patterns over module names to hook (default: every leaf module except dropout,
            identity, flatten and embeddings).
        flush_every_n_steps: copy buffered values to the host and the store every this many steps (100); also at
            every validation, checkpoint and the end of the fit. Bounds the monitor's memory.
        sharpness_budget: share of training wall time that sharpness probes may take (0.02); 0 turns them off
            unless ``sharpness_every_n_steps`` is set. Probes are spread evenly over the planned run
            (``trainer.estimated_stepping_batches``), the first at 1% of it; runs of 200 to 3000 steps may take
            the budget of a 3000-step run (at most 8 probes' worth, at most 2 s; README: "Sharpness schedule").
            The value at step s is the Hessian at the weights step s's loss was computed with.
        sharpness_every_n_steps: probe sharpness on this fixed schedule (steps that are multiples of it) instead
            of the time budget; 0 turns sharpness off.
        sharpness_max_iter: Hessian-vector products per probe at most (20).
        sharpness_tol: relative residual at which Lanczos stops (1e-4; see ``lanczos_top_eig``).
        sharpness_loss_fn: ``fn(module, batch) -> loss`` for the probe; default ``training_step(batch, 0)`` with
            logging silenced (needed for manual optimization, where training_step steps the optimizers).
        train_loss_key: logged metric used as training loss when ``training_step`` returns none.
        val_loss_key: logged metric recorded as ``loss/val`` (default: the first of ``val_loss``, ``val/loss``,
            ``valid_loss``, ``validation_loss``, ``loss/val``, ``val_loss_epoch`` that is logged; else the mean of
            the ``loss`` returned by ``validation_step``).
        rules: the checks evaluated at the end of the fit and after a crash: ``"default"`` (the built-in pack),
            a path to a YAML rule file, or a list of them layered in order (``["default", "mine.yaml"]``);
            None turns checking off. Findings go to ``findings.json`` beside the store, a one-screen summary to
            the log, and finding counts (``dyncheck/errors``, ``dyncheck/warnings``, ``dyncheck/info``) to the
            trainer's loggers.
        stop_on: ``"error"`` or ``"warning"``: also evaluate the checks live, at flushes and validation ends
            (within 2% of the training time), and stop training -- all processes together -- when a finding of
            at least this severity fires. Checks that judge the whole run (no-progress, premature-plateau,
            medians) wait for the end. None (default): never stop.
        report: write the HTML health report ``report.html`` beside the store at the end of the fit and after a
            crash (True, default); ``dyncheck report RUN`` writes it later from the store.
    """

    @_checked_arguments
    def __init__(
        self,
        *,
        dirpath: str | os.PathLike | None = None,
        every_n_steps: int | None = None,
        scalars_every_n_steps: int = 1,
        activations_every_n_steps: int | None = None,
        activation_modules: Sequence[str] | None = None,
        flush_every_n_steps: int = 100,
        sharpness_budget: float = 0.02,
        sharpness_every_n_steps: int | None = None,
        sharpness_max_iter: int = 20,
        sharpness_tol: float = 1e-4,
        sharpness_loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        train_loss_key: str | None = None,
        val_loss_key: str | None = None,
        rules: str | os.PathLike | Sequence[str | os.PathLike] | None = "default",
        stop_on: str | None = None,
        report: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.rules = _load_rules_option(owner, rules)
        if stop_on not in (None, "error", "warning"):
            raise ConfigError(f"{owner}(stop_on={stop_on!r}): expected 'error', 'warning' or None")
        if stop_on is not None and self.rules is None:
            raise ConfigError(f"{owner}(stop_on={stop_on!r}): needs rules to evaluate; got rules=None")
        self.stop_on = stop_on
        if not isinstance(report, bool):
            raise ConfigError(f"{owner}(report={report!r}): expected True or False")
        self.report = report
        self.result: Any = None  # the CheckResult of the last evaluation (after the fit: the final one)
        self.stopped_by: Any = None  # the Finding that stopped training, if stop_on did
        self.config = MonitorConfig(
            dirpath=os.fspath(dirpath) if isinstance(dirpath, os.PathLike) else dirpath,
            every_n_steps=every_n_steps,
            scalars_every_n_steps=scalars_every_n_steps,
            activations_every_n_steps=activations_every_n_steps,
            activation_modules=tuple(activation_modules) if isinstance(activation_modules, (list, tuple)) and all(
                isinstance(p, str) for p in activation_modules) else activation_modules,
            flush_every_n_steps=flush_every_n_steps,
            sharpness_budget=sharpness_budget,
            sharpness_every_n_steps=sharpness_every_n_steps,
            sharpness_max_iter=sharpness_max_iter,
            sharpness_tol=sharpness_tol,
            sharpness_loss_fn=sharpness_loss_fn,
            train_loss_key=train_loss_key,
            val_loss_key=val_loss_key,
            owner=type(self).__name__,
        )
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
        self._flushes_seen = 0
        self._eval_cost = 0.0
        self._eval_last = 0.0

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
        )
        self._resume = None
        self._running = True
        self._flushes_seen = mon.flushes
        self._eval_last = 0.0
        self.stopped_by = None
        self._fits += 1
        self._seen.clear()

    def _meta(self, trainer: Any, pl_module: Any, opts: list) -> dict[str, Any]:
        counts: dict[str, int] = {}
        optimizers = []
        for opt in opts:
            cls = type(opt).__name__
            counts[cls] = counts.get(cls, 0) + 1
            optimizers.append(optimizer_meta(opt, cls if counts[cls] == 1 else f"{cls}-{counts[cls] - 1}"))
        schedulers = [
            {"class": type(c.scheduler).__name__, "interval": c.interval, "frequency": c.frequency,
             "monitor": c.monitor}
            for c in getattr(trainer, "lr_scheduler_configs", [])
        ]
        cfg = {k: jsonable(v) for k, v in vars(self.config).items() if k not in ("owner", "sharpness_loss_fn")}
        cfg["sharpness_loss_fn"] = getattr(self.config.sharpness_loss_fn, "__qualname__", None)
        return {
            "model": module_meta(pl_module),
            "optimizers": optimizers,
            "schedulers": schedulers,
            "hyperparameters": jsonable(dict(getattr(pl_module, "hparams", {}) or {})),
            "trainer": {
                "precision": str(trainer.precision),
                "strategy": type(trainer.strategy).__name__,
                "accelerator": type(trainer.accelerator).__name__,
                "world_size": trainer.world_size,
                "num_nodes": trainer.num_nodes,
                "max_epochs": trainer.max_epochs,
                "max_steps": trainer.max_steps,
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "gradient_clip_val": jsonable(trainer.gradient_clip_val),
                "log_every_n_steps": trainer.log_every_n_steps,
                "automatic_optimization": bool(pl_module.automatic_optimization),
            },
            "monitor": cfg,
            "versions": versions(),
            "host": socket.gethostname(),
            "started": time.time(),
            "start_step": int(trainer.global_step),
        }

    def _end(self, trainer: Any, status: str, error: BaseException | None = None, reduce: bool = True) -> None:
        if self._running:
            self._running = False
            store = self.monitor.store_path if self.monitor.store is not None else None
            self.monitor.finish(status, error=error, reduce=reduce)
            if store is None:
                return
            summary = self._final_check(trainer, store) if self.rules is not None else None
            result = self.result if summary is not None else None
            report = self._write_report(store, result) if self.report else None
            if summary is not None:
                where = f"\n  report:  {report}" if report is not None else ""
                self._info(summary + where + f"\n  details: {store.parent / FINDINGS_FILENAME}  "
                                             f"(or: dyncheck check {store.parent})")
            elif report is not None:
                self._info(f"dyncheck report: {report}")

    def _write_report(self, store: Path, result: Any) -> Path | None:
        """The HTML report beside the store; failures warn (the run store is intact) and never raise."""
        from .report import write_report

        try:
            with open_run(store) as run:
                return write_report(run, result=result, rules=self.rules if result is not None else None)
        except Exception as exc:
            self.monitor.warn_once("report", f"dyncheck: writing the HTML report failed ({type(exc).__name__}: "
                                             f"{exc}); the run store is intact, run `dyncheck report "
                                             f"{store.parent}`")
            return None

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

    def _evaluate(self, store: Path, *, final: bool = True) -> Any:
        from .checks.engine import evaluate

        t = time.perf_counter()
        try:
            with open_run(store) as run:
                return evaluate(run, self.rules, final=final)
        except Exception as exc:  # checking must never break the training it observes
            self.monitor.warn_once("checks", f"dyncheck: evaluating the checks failed ({type(exc).__name__}: "
                                             f"{exc}); the run store is intact, run `dyncheck check {store.parent}`")
            return None
        finally:
            self._eval_cost = time.perf_counter() - t
            self._eval_last = time.perf_counter()

    def _final_check(self, trainer: Any, store: Path) -> str | None:
        """Evaluate, write findings.json, log the counts; return the summary for the log (None if it failed)."""
        from .checks.output import format_text

        result = self._evaluate(store)
        if result is None:
            return None
        self.result = result
        doc = {**result.to_dict(), "run": str(store.parent), "rules": self.rules.sources,
               "step": int(trainer.global_step)}
        if self.stopped_by is not None:
            doc["stopped_by"] = self.stopped_by.to_dict()
        path = store.parent / FINDINGS_FILENAME
        try:
            from ._io import write_text

            write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n", what="findings")
        except (OSError, DyncheckError) as exc:  # a file it cannot write must not break the end of the fit
            warnings.warn(f"dyncheck: cannot write {path}: {exc}", stacklevel=2)
        counts = result.counts()
        for logger in getattr(trainer, "loggers", []) or []:
            try:
                logger.log_metrics({f"dyncheck/{k}{'s' if k != 'info' else ''}": float(v) for k, v in counts.items()},
                                   step=int(trainer.global_step))
            except Exception as exc:  # a logger that cannot take them must not break the end of the fit
                self.monitor.warn_once("logger", f"dyncheck: could not log finding counts to "
                                                 f"{type(logger).__name__}: {exc}")
        return format_text(result, title=str(store.parent), hints=False, max_findings=10)

    def _live_check(self, trainer: Any) -> None:
        """At a flush boundary (every process reaches it at the same step): rank 0 evaluates when the time budget
        allows; all processes then agree whether to stop (one boolean collective)."""
        fired = None
        store = self.monitor.store_path if self.monitor.store is not None else None
        if store is not None:
            since = time.perf_counter() - self._eval_last
            if self._eval_last == 0.0 or self._eval_cost <= _LIVE_BUDGET * since:
                result = self._evaluate(store, final=False)
                if result is not None:
                    self.result = result
                    fired = next(iter(result.at_or_above(self.stop_on)), None)
        stop = trainer.strategy.reduce_boolean_decision(fired is not None, all=False)
        if stop:
            if fired is not None:
                self.stopped_by = fired
                self.monitor.store.set_meta(stopped_by=fired.to_dict())
                self._info(f"dyncheck: stopping training at step {trainer.global_step}: {fired.severity} "
                      f"{fired.check} on {fired.metric}: {fired.message}")
            trainer.should_stop = True

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

    def _maybe_live_check(self, trainer: Any) -> None:
        if self.stop_on is not None and self._running and self.monitor.flushes != self._flushes_seen:
            self._flushes_seen = self.monitor.flushes
            self._live_check(trainer)

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
