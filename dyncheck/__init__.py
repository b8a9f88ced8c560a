"""dyncheck: checkable training dynamics for PyTorch Lightning.

Public API::

    from dyncheck import DynamicsMonitor   # the Lightning callback (pytorch_lightning)
    from dyncheck import watch             # a plain PyTorch loop: with watch(model, optimizer, dirpath=...) as mon
    from dyncheck import DynamicsMonitorCallback   # a Hugging Face transformers.TrainerCallback
    from dyncheck import open_run           # read a run store: .metrics(glob), .series(name), .meta
    from dyncheck import evaluate, load_rules   # checks: evaluate(run, "default") -> CheckResult (findings)

``dyncheck.lightning.DynamicsMonitor`` is the same callback for ``import lightning as L``.
The adapters are imported lazily, so reading runs imports neither Lightning nor transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DyncheckError, MeasureError, RuleError, StoreError
from .store import Run, Series, open_run

if TYPE_CHECKING:  # pragma: no cover
    from ._callback import DynamicsMonitor
    from .adapters.hf import DynamicsMonitorCallback
    from .adapters.loop import watch
    from .checks import CheckResult, Finding, Skipped, evaluate, load_rules

__version__ = "0.1.0"
__all__ = ["DynamicsMonitor", "DynamicsMonitorCallback", "watch", "open_run", "Run", "Series", "evaluate",
           "load_rules", "CheckResult", "Finding",
           "Skipped", "DyncheckError", "ConfigError", "RuleError", "StoreError", "MeasureError", "__version__"]
_CHECKS = ("evaluate", "load_rules", "CheckResult", "Finding", "Skipped")


def __getattr__(name: str) -> Any:
    if name == "DynamicsMonitor":
        from ._callback import DynamicsMonitor

        return DynamicsMonitor
    if name == "watch":
        from .adapters.loop import watch

        return watch
    if name == "DynamicsMonitorCallback":
        from .adapters.hf import DynamicsMonitorCallback

        return DynamicsMonitorCallback
    if name in _CHECKS:  # jsonschema and the rule loader load on first use
        from . import checks

        return getattr(checks, name)
    raise AttributeError(f"module 'dyncheck' has no attribute {name!r}")
