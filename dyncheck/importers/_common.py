"""What every importer shares: the raw log it produces, the limits, and the step from raw names to a run store."""

from __future__ import annotations

import math
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError
from ._mapping import Mapping

__all__ = ["LIMITS", "ImportSummary", "RawLog", "build_series", "check_file", "number", "parse_step"]

#: bounds on what an import reads (README, "Checking runs you already have")
LIMITS = {
    "file_bytes": 4 * 1024**3,     # a CSV, JSONL or event file
    "json_bytes": 512 * 1024**2,   # trainer_state.json is read whole
    "series": 100_000,             # distinct names in one log
    "points": 50_000_000,          # values in one log, all series together
    "step": 2**62,                 # the largest step
}
_SHOWN = 100  # series listed by ImportSummary.lines()
_NONFINITE = {"nan": math.nan, "+nan": math.nan, "-nan": math.nan, "inf": math.inf, "+inf": math.inf,
              "-inf": -math.inf, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}


def check_file(path: Path, what: str, limit_key: str = "file_bytes") -> int:
    """The size of ``path`` after checking it is a regular file within the limit (a FIFO would block a read)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{path} is not a regular file (a directory, FIFO, device or socket); expected {what}")
    limit = LIMITS[limit_key]
    if st.st_size > limit:
        raise SourceError(f"{path}: {st.st_size:,} bytes; dyncheck imports {what} of at most {limit:,} bytes")
    return st.st_size


def number(value: Any) -> float | None:
    """A JSON value as a float: numbers (not booleans), and the texts nan / inf / -inf / Infinity in any case
    (how W&B and pandas write non-finite numbers); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str):
        return _NONFINITE.get(value.strip().lower())
    return None


def parse_step(value: Any, where: str) -> int:
    """A step: an integer >= 0 (an integral float such as 12.0 too, or its text). Raises :class:`SourceError`."""
    step: Any = value
    if isinstance(value, str):
        text = value.strip()
        try:
            step = int(text)
        except ValueError:
            try:
                step = float(text)
            except ValueError:
                raise SourceError(f"{where}: step {value[:40]!r} is not a number; expected an integer >= 0") \
                    from None
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise SourceError(f"{where}: step is {type(value).__name__} {str(value)[:40]!r}; expected an integer >= 0")
    if isinstance(step, float):
        if not math.isfinite(step) or step != int(step):
            raise SourceError(f"{where}: step {value!r} is not a whole number; expected an integer >= 0")
        step = int(step)
    if step < 0 or step > LIMITS["step"]:
        raise SourceError(f"{where}: step {step} is out of range; expected an integer from 0 to {LIMITS['step']:,}")
    return step


@dataclass
class RawLog:
    """What a reader found, under the source's own names: scalars and histogram norms as (steps, values) lists
    in file order, metadata, notes on what was left out, and whether the source says training finished."""

    format: str
    source: Path
    scalars: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    histograms: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    finished: bool | None = None
    status_reason: str = ""
    rows: int = 0
    times: list[float] = field(default_factory=list)  # wall-clock times seen (seconds since the epoch)
    _points: int = 0

    def add(self, table: dict[str, tuple[list[int], list[float]]], key: str, step: int, value: float) -> None:
        entry = table.get(key)
        if entry is None:
            if len(self.scalars) + len(self.histograms) >= LIMITS["series"]:
                raise SourceError(f"{self.source}: more than {LIMITS['series']:,} distinct names; dyncheck imports "
                                  f"at most {LIMITS['series']:,} series from one log")
            entry = table[key] = ([], [])
        entry[0].append(step)
        entry[1].append(value)
        self._points += 1
        if self._points > LIMITS["points"]:
            raise SourceError(f"{self.source}: more than {LIMITS['points']:,} values; dyncheck imports at most "
                              f"{LIMITS['points']:,} values from one log")

    def scalar(self, key: str, step: int, value: float) -> None:
        self.add(self.scalars, key, step, value)

    def histogram(self, key: str, step: int, norm: float) -> None:
        self.add(self.histograms, key, step, norm)


@dataclass
class ImportSummary:
    """What an import wrote: the run directory, the source, its format, each dyncheck name with the source name
    it came from, the status given to the run and why, and notes on what was left out or changed."""

    run_dir: Path
    source: Path
    format: str
    names: dict[str, str]
    points: int
    status: str
    status_reason: str
    notes: list[str]

    def lines(self) -> list[str]:
        head = (f"imported {self.source} ({self.format}) into {self.run_dir / 'run.db'}: {len(self.names)} series, "
                f"{self.points:,} values; status {self.status} ({self.status_reason})")
        out = [head]
        width = max((len(n) for n in self.names), default=0)
        names = sorted(self.names.items())
        out += [f"  {name:<{width}}  <- {src}" for name, src in names[:_SHOWN]]
        if len(names) > _SHOWN:
            out.append(f"  ... and {len(names) - _SHOWN:,} more (all of them in the run's meta['import']['series'])")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _ordered(key: str, steps: list[int], values: list[float], notes: list[str], what: str
             ) -> tuple[np.ndarray, np.ndarray]:
    """Steps increasing and unique; where a step occurs more than once the value logged last is kept (a resumed
    run logs the steps after its checkpoint again). Both are said in a note."""
    s = np.asarray(steps, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    if s.size > 1 and np.any(np.diff(s) <= 0):
        back = int(np.count_nonzero(np.diff(s) < 0))
        order = np.argsort(s, kind="stable")
        s_sorted, v_sorted = s[order], v[order]
        last = np.append(s_sorted[1:] != s_sorted[:-1], True)  # the last of each run of equal steps
        prev_same = np.append(False, s_sorted[1:] == s_sorted[:-1])
        before = np.roll(v_sorted, 1)
        differ = prev_same & ~((v_sorted == before) | (np.isnan(v_sorted) & np.isnan(before)))
        dups = int(np.count_nonzero(differ))
        s, v = s_sorted[last], v_sorted[last]
        said = []
        if dups:
            said.append(f"{dups:,} step{'s' if dups > 1 else ''} logged again with a different value (the value "
                        f"logged last kept)")
        if back and not dups:
            said.append(f"steps go back {back:,} time{'s' if back > 1 else ''} (sorted by step)")
        if said:
            notes.append(f"{what} {key!r}: {'; '.join(said)}")
    return s, v


def build_series(raw: RawLog, mapping: Mapping) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """The raw log's series under dyncheck's names, and for each name the source name it came from. Two source
    names that map to one dyncheck name: the first (in the mapping's order, then the log's) keeps it, the other
    becomes ``logged/<its name>`` and a note says so."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []
    for table, mapper, what in ((raw.scalars, mapping.scalar, "scalar"),
                                (raw.histograms, mapping.histogram, "histogram")):
        for key, (steps, values) in table.items():
            if not key.strip():
                raw.notes.append(f"a {what} with an empty name ({len(steps):,} values): left out")
                continue
            name = mapper(key)
            if name is None:
                ignored.append(key)
                continue
            if name in out:
                fallback = f"logged/{key}" if what == "scalar" else f"logged/histogram_norm/{key}"
                raw.notes.append(f"{what} {key!r} also maps to {name}, which {origin[name]!r} already took: "
                                 f"imported as {fallback}")
                name = fallback
                if name in out:
                    raw.notes.append(f"{what} {key!r}: {name} is taken too; left out")
                    continue
            out[name] = _ordered(key, steps, values, raw.notes, what)
            origin[name] = key + (" (histogram: L2 norm)" if what == "histogram" else "")
    if ignored:
        shown = ", ".join(sorted(ignored)[:10]) + (", ..." if len(ignored) > 10 else "")
        raw.notes.append(f"left out by the mapping's ignore list: {shown}")
    return out, origin


def temp_store(run_dir: Path) -> Path:
    return run_dir / f".run.import-{secrets.token_hex(4)}.db"
