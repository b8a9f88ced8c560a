"""Every exception dyncheck raises on purpose. Catch :class:`DyncheckError` to catch them all."""

from __future__ import annotations

__all__ = ["DyncheckError", "ConfigError", "StoreError", "MeasureError"]


class DyncheckError(Exception):
    """Base class of every error dyncheck raises on purpose."""


class ConfigError(DyncheckError, ValueError):
    """An option, argument or configuration value is not what dyncheck expects.

    The message names the option and what was expected, e.g.
    ``DynamicsMonitor(every_n_steps=-1): expected a positive int or None``.
    """


class StoreError(DyncheckError):
    """A run store cannot be opened, read or written (missing file, not a dyncheck store,
    newer schema version, metric that was never recorded)."""


class MeasureError(DyncheckError):
    """A measurement cannot be taken as asked (e.g. no parameter takes part in the probe loss)."""
