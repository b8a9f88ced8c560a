"""Every exception dyncheck raises on purpose. Catch :class:`DyncheckError` to catch them all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "DyncheckError", "MeasureError", "RuleError", "RuleProblem", "SourceError", "StoreError"]


class DyncheckError(Exception):
    """Base class of every error dyncheck raises on purpose."""


class ConfigError(DyncheckError, ValueError):
    """An option, argument or configuration value is not what dyncheck expects.

    The message names the option and what was expected, e.g.
    ``DynamicsMonitor(every_n_steps=-1): expected a positive int or None``.
    """


class ArgumentError(ConfigError, TypeError):
    """A call of the wrong shape (a misspelt keyword, a positional argument): a :class:`ConfigError`, and the
    ``TypeError`` Python itself raises for one, so that ``except TypeError`` keeps working."""


class BaselineRefused(ConfigError):
    """A baseline that would not be a reference: made from a run that did not finish (``unfinished``), or holding
    no quantity."""

    def __init__(self, message: str, *, unfinished: bool = False) -> None:
        super().__init__(message)
        self.unfinished = unfinished


@dataclass(frozen=True)
class RuleProblem:
    """One problem in a rule file: where (file, 1-based line and column), which check, what was expected."""

    file: str
    line: int
    column: int
    message: str
    check: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: check '{self.check}': {self.message}" if self.check else f"{where}: {self.message}"


class RuleError(ConfigError):
    """A rule file is invalid. ``problems`` lists every problem found, one :class:`RuleProblem` each; the message
    has one line per problem, ``file:line:column: check 'id': what was expected``, the way ruff reports."""

    def __init__(self, problems: Sequence[RuleProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StoreError(DyncheckError):
    """A run store cannot be opened, read or written (missing file, not a dyncheck store,
    newer schema version, metric that was never recorded)."""


class MeasureError(DyncheckError):
    """A measurement cannot be taken as asked (e.g. no parameter takes part in the probe loss)."""


class SourceError(DyncheckError):
    """A log to import (TensorBoard event file, Lightning ``metrics.csv``, Hugging Face ``trainer_state.json``,
    W&B history export) cannot be read: missing, of an unknown format, beyond the import limits, or damaged. The
    message names the file and, where it applies, the line, row, entry or key and what was expected."""
