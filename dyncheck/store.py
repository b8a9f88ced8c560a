"""The run store: one SQLite file per run.

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

Durability. While a run writes, the file is in WAL mode (readers never block the writer). Every committed write
(one per flush) is checkpointed into the ``.db`` file at once (``PRAGMA wal_checkpoint(PASSIVE)``: it never waits
for a reader), so after each flush the data are in ``run.db`` itself: a run killed with SIGKILL loses only what
it had not flushed, and a ``run.db`` copied without its ``-wal``/``-shm`` holds everything up to the last flush.
At close the store leaves WAL mode (``journal_mode=DELETE``, unless a reader still has it open): a finished
``run.db`` is a plain single-file SQLite database.

How often it reaches the disk: by default every checkpoint is synced (``PRAGMA synchronous=NORMAL``: an fsync of
the log and of the file, ~10 ms on a typical disk). ``RunWriter(sync_every_s=S)`` (what the monitor uses, S = 30)
syncs at most every S seconds and at close (``synchronous=OFF`` in between): each flush still reaches the
operating system at once -- a killed process loses nothing flushed, a copy of ``run.db`` holds it -- but after a
power cut or an operating-system crash the writes of the last S seconds may be missing and, as with any SQLite
file written without syncs, the file may be damaged (reported as a :class:`~dyncheck.errors.StoreError`).

Readers never change a store: they open it with ``mode=ro``. A WAL-mode file (a run that is still going, or was
killed) needs a ``-shm`` beside it, which SQLite creates where it can; where the directory is read-only and there is
none, the reader opens the file ``immutable=1`` (no ``-wal`` either) or, when a ``-wal`` with data lies beside it,
a private copy of both.

Damage is reported, never a traceback: every problem reading a store (not SQLite, empty, truncated, blobs of the
wrong length, steps that disagree with the chunk's range, metadata that is not JSON or not of the type dyncheck
writes) raises :class:`~dyncheck.errors.StoreError` naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

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
_COLUMNS = {"meta": {"key", "value"}, "metrics": {"id", "name"},
            "chunks": {"seq", "metric_id", "n", "step_min", "step_max", "steps", "vals"}}

_STEP_DTYPE = np.dtype("<i8")
_VAL_DTYPE = np.dtype("<f8")
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: what SQLite raises about a file; a damaged schema can also give an error message that is not valid UTF-8
_SQL_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def _resolve(path: str | os.PathLike) -> Path:
    """A run is named by its directory or by its ``run.db`` file."""
    p = Path(path)
    return p / STORE_FILENAME if p.is_dir() or p.suffix != ".db" else p


def _damaged(exc: BaseException) -> str:
    """A hint for SQLite's errors that mean the file itself is damaged."""
    msg = str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return " (SQLite's error text is not valid UTF-8) -- the file is damaged: its schema is not text"
    if "malformed" in msg or "not a database" in msg or "corrupt" in msg:
        return " -- the file is damaged (truncated, overwritten or not a dyncheck run store)"
    return ""


class RunWriter:
    """Appends measurements to a store file. One writer per file; not thread-safe.

    ``RunWriter(path, mode="w")`` creates a new store (an existing one is replaced);
    ``mode="a"`` opens an existing one to append to it (creating it if missing).
    Every committed write is checkpointed into the ``.db`` file (see the module's "Durability").
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w", *, sync_every_s: float | None = None) -> None:
        if mode not in ("w", "a"):
            raise ValueError(f"RunWriter(mode={mode!r}): expected 'w' or 'a'")
        self.path = _resolve(path)
        #: None: every checkpoint is synced to the disk; else at most every this many seconds (and at close)
        self.sync_every_s = sync_every_s
        self._synced = time.monotonic()
        self._con: sqlite3.Connection | None = None
        #: how many checkpoints have run (one per committed write)
        self.checkpoints = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if mode == "a" and os.path.lexists(self.path) and not self.path.is_file():
                raise StoreError(f"cannot open run store {self.path} for writing: it is not a regular file")
            if mode == "w":
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._con.executescript(_SCHEMA)
            if sync_every_s is not None:
                self._con.execute("PRAGMA synchronous=OFF")
            version = self._con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            ids = list(self._con.execute("SELECT id, name FROM metrics"))
        except (OSError, *_SQL_ERRORS) as exc:
            self._abandon()
            raise StoreError(f"cannot open run store {self.path} for writing: {exc}{_damaged(exc)}") from exc
        if version is None:
            self.set_meta(schema_version=SCHEMA_VERSION)
        elif _json_or_none(version[0]) != SCHEMA_VERSION:
            self._abandon()
            raise StoreError(f"{self.path}: store schema version {version[0]!r}, this dyncheck writes "
                             f"{SCHEMA_VERSION}")
        self._ids: dict[str, int] = {name: id_ for id_, name in ids}

    # -- writing -----------------------------------------------------------------------------------------------
    def _metric_id(self, name: str) -> int:
        id_ = self._ids.get(name)
        if id_ is None:
            cur = self._con.execute("INSERT INTO metrics(name) VALUES (?)", (name,))
            id_ = self._ids[name] = int(cur.lastrowid)
        return id_

    def write(self, series: Mapping[str, tuple[Iterable[int], Iterable[float]]]) -> None:
        """Append ``{name: (steps, values)}`` in one transaction; empty series are skipped. When it returns the
        values are in the ``.db`` file itself (checkpointed), not only in its write-ahead log."""
        rows = []
        for name, (steps, values) in series.items():
            s = np.ascontiguousarray(steps, dtype=_STEP_DTYPE).ravel()
            v = np.ascontiguousarray(values, dtype=_VAL_DTYPE).ravel()
            if s.shape != v.shape:
                raise ValueError(f"write({name!r}): {s.size} steps but {v.size} values")
            if s.size:
                rows.append((name, s.size, int(s.min()), int(s.max()), s.tobytes(), v.tobytes()))
        with self._transaction():
            self._con.executemany(
                "INSERT INTO chunks(metric_id, n, step_min, step_max, steps, vals) VALUES (?,?,?,?,?,?)",
                [(self._metric_id(name), *rest) for name, *rest in rows])

    def write_block(self, names: list[str], steps: np.ndarray, values: np.ndarray) -> None:
        """Append a block: ``values[i, j]`` is metric ``names[j]`` at ``steps[i]``. NaN-only columns are kept."""
        values = np.asarray(values, dtype=_VAL_DTYPE).reshape(len(steps), len(names))
        self.write({name: (steps, values[:, j]) for j, name in enumerate(names)})

    def set_meta(self, **items: Any) -> None:
        """Set metadata keys (values must be JSON-serialisable; others are stored as their ``str``)."""
        rows = [(k, json.dumps(v, default=str, allow_nan=True)) for k, v in items.items()]
        with self._transaction():
            self._con.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                rows)

    def last_seq(self) -> int:
        """The sequence number of the last chunk written (0 when none)."""
        try:
            row = self._live().execute("SELECT COALESCE(MAX(seq), 0) FROM chunks").fetchone()
        except _SQL_ERRORS as exc:
            raise StoreError(f"cannot read run store {self.path}: {exc}{_damaged(exc)}") from exc
        return int(row[0])

    def truncate(self, seq: int) -> int:
        """Drop every chunk written after ``seq``; returns how many were dropped."""
        with self._transaction():
            cur = self._con.execute("DELETE FROM chunks WHERE seq > ?", (int(seq),))
        return cur.rowcount

    def checkpoint(self) -> bool:
        """Copy what the write-ahead log holds into the ``.db`` file without waiting for readers (``PASSIVE``);
        True when everything was copied. Called after every committed write."""
        con = self._live()
        sync = self.sync_every_s is not None and time.monotonic() - self._synced >= self.sync_every_s
        try:
            if sync:  # this checkpoint reaches the disk
                con.execute("PRAGMA synchronous=NORMAL")
            try:
                busy, log, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                if sync:
                    con.execute("PRAGMA synchronous=OFF")
                    self._synced = time.monotonic()
        except _SQL_ERRORS:  # not fatal: the data are safe in the -wal, the next checkpoint copies them
            return False
        self.checkpoints += 1
        return not busy and done == log

    def close(self) -> None:
        """Checkpoint everything and leave WAL mode: the ``.db`` file alone is the whole run (``-wal`` and
        ``-shm`` are removed). While a reader still has the store open it stays in WAL mode, checkpointed."""
        con, self._con = self._con, None
        if con is None:
            return
        try:
            con.execute("PRAGMA synchronous=NORMAL")  # what remains reaches the disk
            con.execute("PRAGMA busy_timeout=0")  # a reader's lock must not make the end of a fit wait
            try:
                con.execute("PRAGMA journal_mode=DELETE").fetchall()
            except _SQL_ERRORS:
                con.execute("PRAGMA busy_timeout=200")
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except _SQL_ERRORS:
            pass
        finally:
            con.close()

    def _abandon(self) -> None:
        if self._con is not None:
            with contextlib.suppress(*_SQL_ERRORS):
                self._con.close()
            self._con = None

    @property
    def closed(self) -> bool:
        return self._con is None

    def _live(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"run store {self.path} is closed")
        return self._con

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a failure rolls it back and raises :class:`StoreError` (SQLite's errors: disk full,
        file removed...). A commit is followed by a checkpoint."""
        con = self._live()
        try:
            con.execute("BEGIN")
        except _SQL_ERRORS as err:
            raise StoreError(f"cannot write run store {self.path}: {err}{_damaged(err)}") from err
        try:
            yield con
            con.execute("COMMIT")
        except BaseException as exc:
            if con.in_transaction:
                with contextlib.suppress(*_SQL_ERRORS):
                    con.execute("ROLLBACK")
            if isinstance(exc, _SQL_ERRORS):
                raise StoreError(f"cannot write run store {self.path}: {exc}{_damaged(exc)}") from exc
            raise
        self.checkpoint()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_or_none(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None


# -- what the metadata dyncheck writes looks like ----------------------------------------------------------------
# The reader checks it, so that a damaged or hand-edited store gives an error naming the key instead of a failure
# deep inside the report. Keys dyncheck does not know are passed through unchecked.
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _obj(**fields: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """An object whose listed fields, where present, pass their check."""
    return lambda v: isinstance(v, dict) and all(k not in v or c(v[k]) for k, c in fields.items())


def _has(*keys: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and all(k in v for k in keys)


def _any(v: Any) -> bool:
    return True


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_META_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "schema_version": (_int, "an integer"),
    "status": (_str, "a string ('running', 'finished', 'interrupted', 'crashed', 'ended' or 'unconfirmed')"),
    "host": (_str, "a string"),
    "started": (_opt(_is_num), "a number (seconds since the epoch) or null"),
    "ended": (_opt(_is_num), "a number (seconds since the epoch) or null"),
    "duration_s": (_opt(_is_num), "a number or null"),
    "sharpness_time_s": (_opt(_is_num), "a number or null"),
    "sharpness_probes": (_opt(_int), "an integer or null"),
    "start_step": (_opt(_int), "an integer or null"),
    "resumed_from_step": (_opt(_int), "an integer or null"),
    "model": (_obj(**{"class": _str, "n_parameters": _is_num, "n_trainable": _is_num,
                      "parameters": _list_of(_obj(shape=_list_of(_any), numel=_is_num)),
                      "modules": _list_of(_obj())}),
              ("an object (class, n_parameters, n_trainable, parameters: [{name, shape: [...], numel, ...}], "
               "modules: [{name, type}])")),
    "optimizers": (_list_of(_obj(param_groups=_list_of(_obj()))),
                   "a list of objects (name, class, param_groups: [{...}])"),
    "schedulers": (_list_of(_obj()), "a list of objects"),
    "trainer": (_obj(), "an object"),
    "hyperparameters": (_opt(_obj()), "an object or null"),
    "versions": (_obj(), "an object"),
    "monitor": (_obj(), "an object"),
    "exception": (_opt(_obj()), "an object (type, message) or null"),
    "stopped_by": (_opt(_has("check", "message", "first_step")),
                   "an object (check, message, first_step, ...) or null"),
    "unchanged_parameters": (_list_of(_str), "a list of parameter names"),
    "sharpness_schedule": (_opt(_obj()), "an object or null"),
}


def _check_meta(meta: Mapping[str, Any], path: Path) -> None:
    for key, (ok, expected) in _META_TYPES.items():
        if key in meta and not ok(meta[key]):
            try:
                got = json.dumps(meta[key], default=str)
            except (ValueError, RecursionError):
                got = "(not shown)"
            got = got if len(got) <= 80 else got[:77] + "..."
            raise StoreError(f"{path}: metadata {key!r} is {type(meta[key]).__name__} {got}; expected {expected}")


# -- reading -----------------------------------------------------------------------------------------------------
def _dedup(name: str, steps: np.ndarray, vals: np.ndarray, repeats: bool) -> "Series":
    """A metric's series from its chunks' concatenation; with ``repeats`` (several chunks, or steps that do not
    increase: a step may have been written more than once) the last write of each step wins."""
    if repeats:
        # unique over the reversed order keeps the last occurrence
        uniq, idx = np.unique(steps[::-1], return_index=True)
        steps, vals = uniq, vals[::-1][idx]
    return Series(name, steps.astype(np.int64, copy=False), vals.astype(np.float64, copy=False))


@dataclass(frozen=True)
class Series:
    """A metric's recorded values: ``steps`` (int64, increasing, unique) and ``values`` (float64)."""

    name: str
    steps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.steps.size)


def _locate(path: str | os.PathLike) -> Path:
    """The store file a reader opens: ``run.db`` in a run directory, or the file itself (any name)."""
    p = Path(path)
    if p.is_dir():
        db = p / STORE_FILENAME
        if not os.path.lexists(db):
            raise StoreError(f"no run store at {db}: the directory {p} holds no {STORE_FILENAME} (expected a run "
                             f"directory written by dyncheck's DynamicsMonitor, or the path of a .db file)")
        return db
    if os.path.lexists(p):
        return p
    where = p if p.suffix == ".db" else p / STORE_FILENAME
    raise StoreError(f"no run store at {where} (expected a run directory holding {STORE_FILENAME}, "
                     f"or the path of a .db file)")


def _sniff(path: Path) -> bool:
    """Check that ``path`` can be an SQLite file before SQLite sees it (a FIFO would block the open); returns
    whether its header says WAL mode."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise StoreError(f"cannot open run store {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path} is a directory, not a run store file (a run directory holds {STORE_FILENAME})")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path} is not a regular file (a FIFO, device or socket), not a dyncheck run store")
    if st.st_size == 0:
        raise StoreError(f"{path} is empty (0 bytes), not a dyncheck run store (a store has its tables from the "
                         f"start; was the file truncated?)")
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as exc:
        raise StoreError(f"cannot read run store {path}: {exc.strerror or exc}") from None
    if not head.startswith(_SQLITE_MAGIC):
        shown = head[:16].decode("latin-1").encode("unicode_escape").decode("ascii")
        raise StoreError(f"{path} is not an SQLite database (it starts with '{shown}', not 'SQLite format 3'), "
                         f"not a dyncheck run store")
    if len(head) < 100:
        raise StoreError(f"{path} is truncated ({st.st_size} bytes: less than an SQLite header), not a readable "
                         f"run store")
    return head[18] == 2 and head[19] == 2


def _read_only_failure(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed because it could not create or write a file beside the store (``-shm``/``-wal``)."""
    name = getattr(exc, "sqlite_errorname", "")  # Python >= 3.11
    if name:
        return name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN"))
    msg = str(exc)
    return "readonly" in msg or "unable to open" in msg


def _uri(path: Path, **params: str) -> str:
    uri = path.resolve().as_uri()  # file:///abs/path, percent-encoded (spaces, '?', '#' in names)
    return uri + "?" + "&".join(f"{k}={v}" for k, v in params.items())


class Run:
    """Read access to one run store. Safe to use while the run is still being written; opens the file read-only
    (also in a read-only directory, see the module's "Durability")."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _locate(path)
        self._con: sqlite3.Connection | None = None
        self._copy: Path | None = None  # a private copy of the file and its -wal (read-only directory)
        wal = _sniff(self.path)
        try:
            self._con = self._connect(wal)
            self._check_schema()
        except BaseException:
            self.close()
            raise

    def _connect(self, wal: bool) -> sqlite3.Connection:
        con = None
        try:
            con = sqlite3.connect(_uri(self.path, mode="ro"), uri=True, check_same_thread=False)
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return con
        except sqlite3.OperationalError as exc:
            if con is not None:
                con.close()
            if not wal or not _read_only_failure(exc):
                raise StoreError(f"cannot open run store {self.path}: {exc}{_damaged(exc)}") from exc
            first = exc
        except _SQL_ERRORS as exc:
            if con is not None:
                con.close()
            raise StoreError(f"cannot open run store {self.path}: {exc}{_damaged(exc)}") from exc
        # A WAL-mode file whose -shm cannot be created (read-only directory). Without a -wal holding data the file
        # is the whole store: open it immutable. With one, read a private copy of both (nothing is written here).
        wal_file = Path(str(self.path) + "-wal")
        try:
            wal_size = wal_file.stat().st_size if wal_file.exists() else 0
            if wal_size == 0:
                return sqlite3.connect(_uri(self.path, mode="ro", immutable="1"), uri=True, check_same_thread=False)
            self._copy = Path(tempfile.mkdtemp(prefix="dyncheck-run-"))
            self._drop_copy = weakref.finalize(self, shutil.rmtree, str(self._copy), True)  # also if never closed
            shutil.copyfile(self.path, self._copy / STORE_FILENAME)
            shutil.copyfile(wal_file, self._copy / (STORE_FILENAME + "-wal"))
            return sqlite3.connect(self._copy / STORE_FILENAME, check_same_thread=False)
        except (OSError, *_SQL_ERRORS) as exc:
            raise StoreError(f"cannot open run store {self.path} read-only: {first}; then: {exc}") from exc

    def _rows(self, sql: str, params: tuple = (), *, what: str) -> list[tuple]:
        if self._con is None:
            raise StoreError(f"run store {self.path} is closed")
        try:
            return self._con.execute(sql, params).fetchall()
        except _SQL_ERRORS as exc:
            raise StoreError(f"{self.path}: cannot read {what}: {exc}{_damaged(exc)}") from exc

    def _check_schema(self) -> None:
        tables = {r[0] for r in self._rows("SELECT name FROM sqlite_master WHERE type='table'", what="its tables")}
        missing = sorted(set(_COLUMNS) - tables)
        if missing:
            raise StoreError(f"{self.path} is not a dyncheck run store (tables {', '.join(missing)} missing; it has "
                             f"{', '.join(sorted(map(str, tables))) or 'no tables'})")
        for table, cols in _COLUMNS.items():
            have = {r[1] for r in self._rows(f"PRAGMA table_info({table})", what=f"the columns of table {table}")}
            if not cols <= have:
                raise StoreError(f"{self.path} is not a dyncheck run store (table {table} lacks the columns "
                                 f"{', '.join(sorted(cols - have))})")
        rows = self._rows("SELECT value FROM meta WHERE key='schema_version'", what="its schema version")
        if not rows:
            raise StoreError(f"{self.path} is not a dyncheck run store (no schema_version in its metadata)")
        version = _json_or_none(rows[0][0])
        if version != SCHEMA_VERSION or not _int(version):
            raise StoreError(f"{self.path}: store schema version {rows[0][0]!r}, this dyncheck reads "
                             f"{SCHEMA_VERSION}")

    @property
    def dir(self) -> Path:
        """The run directory (where findings and the report are written beside the store)."""
        return self.path.parent

    @property
    def meta(self) -> dict[str, Any]:
        """All metadata, decoded from JSON (read afresh on every access, so a live run shows its progress).
        Raises :class:`StoreError` for a value that is not JSON or whose type is not what dyncheck writes."""
        out: dict[str, Any] = {}
        for key, value in self._rows("SELECT key, value FROM meta", what="its metadata"):
            if not isinstance(key, str):
                raise StoreError(f"{self.path}: a metadata key is not text ({key!r}): table meta is damaged")
            if not isinstance(value, str):
                raise StoreError(f"{self.path}: metadata {key!r} is not JSON text but {type(value).__name__} "
                                 f"{value!r:.60}")
            try:
                out[key] = json.loads(value)
            except ValueError as exc:
                raise StoreError(f"{self.path}: metadata {key!r} is not valid JSON ({exc}): {value!r:.80}") from None
            except RecursionError:
                raise StoreError(f"{self.path}: metadata {key!r} is JSON nested too deeply to read") from None
        _check_meta(out, self.path)
        return out

    def metrics(self, pattern: str = "*") -> list[str]:
        """Sorted names of the recorded metrics matching the glob ``pattern`` (``*`` also matches ``/``)."""
        rows = self._rows("SELECT name FROM metrics WHERE id IN (SELECT DISTINCT metric_id FROM chunks)",
                          what="its metric names")
        names = []
        for (name,) in rows:
            if not isinstance(name, str):
                raise StoreError(f"{self.path}: a metric name is not text ({name!r}): table metrics is damaged")
            names.append(name)
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        return bool(self._rows(
            "SELECT 1 FROM chunks c JOIN metrics m ON m.id = c.metric_id WHERE m.name = ? LIMIT 1", (name,),
            what=f"metric {name!r}"))

    def series(self, name: str) -> Series:
        """Steps and values of one metric; raises :class:`StoreError` if it was never recorded or its chunks are
        damaged (blob lengths that do not match the chunk's count, steps outside its recorded range)."""
        rows = self._rows(
            "SELECT c.seq, c.n, c.step_min, c.step_max, c.steps, c.vals FROM chunks c JOIN metrics m "
            "ON m.id = c.metric_id WHERE m.name = ? ORDER BY c.seq", (name,), what=f"metric {name!r}")
        if not rows:
            close = fnmatch.filter(self.metrics(), name.split("/")[0] + "/*")[:5]
            hint = f"; recorded under {name.split('/')[0]}/: {', '.join(close)}" if close else ""
            raise StoreError(f"metric {name!r} was not recorded in {self.path}{hint}")
        return self._series_of(name, rows)

    def _series_of(self, name: str, rows: list[tuple]) -> Series:
        steps, vals = self._chunks(rows, lambda i: name)
        return _dedup(name, steps, vals, len(rows) > 1 or (steps.size > 1 and bool(np.any(np.diff(steps) <= 0))))

    def series_matching(self, pattern: str) -> dict[str, Series]:
        """Every recorded metric whose name matches the glob ``pattern`` (as :meth:`metrics`), as ``{name:
        Series}`` in name order, read in one query over the names that share the pattern's literal prefix and
        checked in one vectorised pass over all their chunks: much faster than :meth:`series` per name for many
        series (the 1024 ``traj/c<i>`` of the weight sketch)."""
        prefix = next((pattern[:i] for i, c in enumerate(pattern) if c in "*?["), pattern)
        rows = self._rows(
            "SELECT m.name, c.seq, c.n, c.step_min, c.step_max, c.steps, c.vals FROM chunks c JOIN metrics m "
            "ON m.id = c.metric_id WHERE m.name >= ? AND m.name < ? ORDER BY m.name, c.seq",
            (prefix, prefix + "\U0010ffff"), what=f"the metrics matching {pattern!r}")
        groups: list[tuple[str, int, int]] = []  # (name, first row, end row) of the matching names
        start = 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i][0] != rows[start][0]:
                name = rows[start][0]
                if not isinstance(name, str):
                    raise StoreError(f"{self.path}: a metric name is not text ({name!r}): table metrics is damaged")
                if fnmatch.fnmatchcase(name, pattern):
                    groups.append((name, start, i))
                start = i
        if not groups:
            return {}
        picked = [r[1:] for _, a, b in groups for r in rows[a:b]]
        owner = np.repeat(np.arange(len(groups)), [b - a for _, a, b in groups])
        steps, vals = self._chunks(picked, lambda i: groups[int(owner[i])][0])
        # each name's values: a slice of the concatenation, deduplicated only where it needs it (steps that do
        # not increase)
        counts = np.fromiter((r[1] for r in picked), dtype=np.int64, count=len(picked))
        row_end = np.cumsum(counts)
        name_end = row_end[np.array([b - a for _, a, b in groups]).cumsum() - 1]
        name_start = np.r_[0, name_end[:-1]]
        falls = np.flatnonzero(np.diff(steps) <= 0)  # i: steps[i + 1] <= steps[i]
        out: dict[str, Series] = {}
        for k, (name, a, b) in enumerate(groups):
            lo, hi = int(name_start[k]), int(name_end[k])
            st, va = steps[lo:hi], vals[lo:hi]
            j = np.searchsorted(falls, lo)
            # (steps that increase over the concatenation of a name's chunks hold no step twice, however many)
            out[name] = _dedup(name, st, va, bool(j < falls.size and falls[j] < hi - 1))
        return out

    def _chunks(self, rows: list[tuple], name_of: Callable[[int], str]) -> tuple[np.ndarray, np.ndarray]:
        """The chunks' steps and values concatenated, after checking that each chunk is whole: blobs of 8 bytes
        per value as its count ``n`` says, steps within its recorded ``step_min..step_max`` (a flipped byte in a
        step moves it out). Raises :class:`StoreError` naming the first damaged chunk (and its metric,
        ``name_of(row index)``)."""
        def bad(i: int, problem: str) -> StoreError:
            return StoreError(f"{self.path}: metric {name_of(i)!r}, chunk {rows[i][0]}: {problem} -- the store is "
                              f"damaged")

        for i, (seq, n, lo, hi, sb, vb) in enumerate(rows):  # types and lengths: plain Python, no numpy per chunk
            if type(sb) is not bytes or type(vb) is not bytes:
                col, blob, kind = ("steps", sb, "int64") if type(sb) is not bytes else ("vals", vb, "float64")
                raise bad(i, f"column {col} holds {type(blob).__name__}, expected a blob of little-endian {kind}")
            if type(n) is not int or n < 0:
                raise bad(i, f"its count n is {n!r}, expected an integer >= 0")
            if len(sb) != 8 * n or len(vb) != 8 * n:
                col, blob = ("steps", sb) if len(sb) != 8 * n else ("vals", vb)
                raise bad(i, f"the {col} blob has {len(blob)} bytes, expected {8 * n} (8 per value, n={n})")
            if type(lo) is not int or type(hi) is not int:
                raise bad(i, f"its step range {lo!r}..{hi!r} is not two integers")
        steps = np.frombuffer(b"".join(r[4] for r in rows), dtype=_STEP_DTYPE)
        vals = np.frombuffer(b"".join(r[5] for r in rows), dtype=_VAL_DTYPE)
        counts = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        full = np.flatnonzero(counts)
        if full.size:  # every chunk's min and max in two vectorised calls
            starts = (np.cumsum(counts) - counts)[full]
            lo = np.fromiter((rows[i][2] for i in full), dtype=np.int64, count=full.size)
            hi = np.fromiter((rows[i][3] for i in full), dtype=np.int64, count=full.size)
            got_lo, got_hi = np.minimum.reduceat(steps, starts), np.maximum.reduceat(steps, starts)
            wrong = np.flatnonzero((got_lo != lo) | (got_hi != hi))
            if wrong.size:
                k = wrong[0]
                raise bad(int(full[k]), f"its steps span {got_lo[k]}..{got_hi[k]} but the chunk records "
                                        f"{lo[k]}..{hi[k]}")
        return steps.astype(np.int64, copy=False), vals.astype(np.float64, copy=False)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        if self._copy is not None:
            self._drop_copy()
            self._copy = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def open_run(path: str | os.PathLike) -> Run:
    """Open a run for reading: ``path`` is a run directory (holding ``run.db``) or the store file itself."""
    return Run(path)
