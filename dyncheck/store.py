"""The run store: one SQLite file (WAL mode) per run.

Writers append whole blocks of (step, value) pairs per metric; readers get a metric's series as numpy arrays.
The store is readable while a run is still writing to it (SQLite WAL: one writer, any number of readers).

Schema (``SCHEMA_VERSION`` 1)::

    meta    (key TEXT PRIMARY KEY, value TEXT)            -- JSON-encoded values
    metrics (id INTEGER PRIMARY KEY, name TEXT UNIQUE)    -- one row per metric name
    chunks  (seq INTEGER PRIMARY KEY AUTOINCREMENT,       -- append order
             metric_id INTEGER, n INTEGER,
             step_min INTEGER, step_max INTEGER,
             steps BLOB,                                  -- n little-endian int64
             vals  BLOB)                                  -- n little-endian float64 (NaN/Inf kept as such)

A series is the concatenation of its chunks in ``seq`` order; where a step occurs more than once the value
written last wins, and the result is sorted by step. ``truncate(seq)`` drops every chunk written after ``seq``;
resuming from a checkpoint uses it so that series continue without duplicated steps.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import StoreError

__all__ = ["RunWriter", "Run", "Series", "open_run", "STORE_FILENAME", "SCHEMA_VERSION"]

STORE_FILENAME = "run.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    metric_id INTEGER NOT NULL REFERENCES metrics(id),
    n INTEGER NOT NULL,
    step_min INTEGER NOT NULL,
    step_max INTEGER NOT NULL,
    steps BLOB NOT NULL,
    vals BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_metric ON chunks(metric_id, seq);
"""

_STEP_DTYPE = np.dtype("<i8")
_VAL_DTYPE = np.dtype("<f8")


def _resolve(path: str | os.PathLike) -> Path:
    """A run is named by its directory or by its ``run.db`` file."""
    p = Path(path)
    return p / STORE_FILENAME if p.is_dir() or p.suffix != ".db" else p


class RunWriter:
    """Appends measurements to a store file. One writer per file; not thread-safe.

    ``RunWriter(path, mode="w")`` creates a new store (an existing one is replaced);
    ``mode="a"`` opens an existing one to append to it (creating it if missing).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w") -> None:
        if mode not in ("w", "a"):
            raise ValueError(f"RunWriter(mode={mode!r}): expected 'w' or 'a'")
        self.path = _resolve(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if mode == "w":
                for suffix in ("", "-wal", "-shm"):
                    Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open run store {self.path} for writing: {exc}") from exc
        version = self._con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version is None:
            self.set_meta(schema_version=SCHEMA_VERSION)
        elif json.loads(version[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema version {version[0]}, this dyncheck writes {SCHEMA_VERSION}")
        self._ids: dict[str, int] = dict(
            (name, id_) for id_, name in self._con.execute("SELECT id, name FROM metrics")
        )

    # -- writing -----------------------------------------------------------------------------------------------
    def _metric_id(self, name: str) -> int:
        id_ = self._ids.get(name)
        if id_ is None:
            cur = self._con.execute("INSERT INTO metrics(name) VALUES (?)", (name,))
            id_ = self._ids[name] = int(cur.lastrowid)
        return id_

    def write(self, series: Mapping[str, tuple[Iterable[int], Iterable[float]]]) -> None:
        """Append ``{name: (steps, values)}`` in one transaction; empty series are skipped."""
        rows = []
        with self._transaction():
            for name, (steps, values) in series.items():
                s = np.ascontiguousarray(steps, dtype=_STEP_DTYPE).ravel()
                v = np.ascontiguousarray(values, dtype=_VAL_DTYPE).ravel()
                if s.shape != v.shape:
                    raise ValueError(f"write({name!r}): {s.size} steps but {v.size} values")
                if s.size:
                    rows.append((self._metric_id(name), s.size, int(s.min()), int(s.max()), s.tobytes(), v.tobytes()))
            self._con.executemany(
                "INSERT INTO chunks(metric_id, n, step_min, step_max, steps, vals) VALUES (?,?,?,?,?,?)", rows
            )

    def write_block(self, names: list[str], steps: np.ndarray, values: np.ndarray) -> None:
        """Append a block: ``values[i, j]`` is metric ``names[j]`` at ``steps[i]``. NaN-only columns are kept."""
        values = np.asarray(values, dtype=_VAL_DTYPE).reshape(len(steps), len(names))
        self.write({name: (steps, values[:, j]) for j, name in enumerate(names)})

    def set_meta(self, **items: Any) -> None:
        """Set metadata keys (values must be JSON-serialisable; others are stored as their ``str``)."""
        with self._transaction():
            self._con.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(k, json.dumps(v, default=str, allow_nan=True)) for k, v in items.items()],
            )

    def last_seq(self) -> int:
        """The sequence number of the last chunk written (0 when none)."""
        row = self._con.execute("SELECT COALESCE(MAX(seq), 0) FROM chunks").fetchone()
        return int(row[0])

    def truncate(self, seq: int) -> int:
        """Drop every chunk written after ``seq``; returns how many were dropped."""
        with self._transaction():
            cur = self._con.execute("DELETE FROM chunks WHERE seq > ?", (int(seq),))
        return cur.rowcount

    def close(self) -> None:
        if self._con is not None:
            try:
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._con.close()
            self._con = None  # type: ignore[assignment]

    @property
    def closed(self) -> bool:
        return self._con is None

    def _transaction(self):
        return _Transaction(self._con, self.path)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    def __init__(self, con: sqlite3.Connection, path: Path) -> None:
        if con is None:
            raise StoreError(f"run store {path} is closed")
        self.con, self.path = con, path

    def __enter__(self) -> None:
        self.con.execute("BEGIN")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.con.execute("COMMIT")
            except sqlite3.Error as err:
                raise StoreError(f"cannot write run store {self.path}: {err}") from err
        else:
            self.con.execute("ROLLBACK")


@dataclass(frozen=True)
class Series:
    """A metric's recorded values: ``steps`` (int64, increasing, unique) and ``values`` (float64)."""

    name: str
    steps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.steps.size)


class Run:
    """Read access to one run store. Safe to use while the run is still being written."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _resolve(path)
        if not self.path.exists():
            raise StoreError(f"no run store at {self.path} (expected a run directory holding {STORE_FILENAME}, "
                             f"or the path of a .db file)")
        try:
            self._con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path} is not a dyncheck run store: {exc}") from exc
        if not {"meta", "metrics", "chunks"} <= tables:
            raise StoreError(f"{self.path} is not a dyncheck run store (tables meta, metrics, chunks missing)")
        version = self.meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema version {version!r}, this dyncheck reads {SCHEMA_VERSION}")

    @property
    def dir(self) -> Path:
        """The run directory (where findings and the report are written beside the store)."""
        return self.path.parent

    @property
    def meta(self) -> dict[str, Any]:
        """All metadata, decoded from JSON (read afresh on every access, so a live run shows its progress)."""
        return {k: json.loads(v) for k, v in self._con.execute("SELECT key, value FROM meta")}

    def metrics(self, pattern: str = "*") -> list[str]:
        """Sorted names of the recorded metrics matching the glob ``pattern`` (``*`` also matches ``/``)."""
        names = [r[0] for r in self._con.execute(
            "SELECT name FROM metrics WHERE id IN (SELECT DISTINCT metric_id FROM chunks)")]
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        return bool(self._con.execute(
            "SELECT 1 FROM chunks c JOIN metrics m ON m.id = c.metric_id WHERE m.name = ? LIMIT 1", (name,)
        ).fetchone())

    def series(self, name: str) -> Series:
        """Steps and values of one metric; raises :class:`StoreError` if it was never recorded."""
        rows = self._con.execute(
            "SELECT c.steps, c.vals FROM chunks c JOIN metrics m ON m.id = c.metric_id WHERE m.name = ? ORDER BY c.seq",
            (name,),
        ).fetchall()
        if not rows:
            close = fnmatch.filter(self.metrics(), name.split("/")[0] + "/*")[:5]
            hint = f"; recorded under {name.split('/')[0]}/: {', '.join(close)}" if close else ""
            raise StoreError(f"metric {name!r} was not recorded in {self.path}{hint}")
        steps = np.concatenate([np.frombuffer(r[0], dtype=_STEP_DTYPE) for r in rows])
        vals = np.concatenate([np.frombuffer(r[1], dtype=_VAL_DTYPE) for r in rows])
        if len(rows) > 1 or (steps.size > 1 and np.any(np.diff(steps) <= 0)):
            # last write of a step wins: unique over the reversed order keeps the last occurrence
            rev_steps = steps[::-1]
            uniq, idx = np.unique(rev_steps, return_index=True)
            steps, vals = uniq, vals[::-1][idx]
        return Series(name, steps.astype(np.int64, copy=False), vals.astype(np.float64, copy=False))

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def open_run(path: str | os.PathLike) -> Run:
    """Open a run for reading: ``path`` is a run directory (holding ``run.db``) or the ``.db`` file itself."""
    return Run(path)
