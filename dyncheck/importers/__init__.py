"""Existing logs -> run store: TensorBoard event files, Lightning ``CSVLogger`` ``metrics.csv``, Hugging Face
Trainer ``trainer_state.json``, W&B history exported as CSV or JSON lines.

``import_log(source, run_dir)`` reads a log, maps its names onto dyncheck's scheme (:mod:`._mapping`: the default
mapping, then ``logged/<name>``; a user mapping file first), and writes ``run_dir/run.db``, which every other part
of dyncheck reads like a monitored run. ``imported(source)`` does the same into a temporary directory that is
removed afterwards (what ``dyncheck check|report|compare SOURCE`` do).

Status. The run's ``status`` is ``finished`` when the source says training ended -- a ``trainer_state.json`` whose
``log_history`` ends with the summary ``train()`` logs when it returns, or whose ``global_step`` reached
``max_steps`` -- or when the caller says so (``finished=True``, ``dyncheck import --finished``). Otherwise it is
``unconfirmed``: the gate treats it like a run that did not finish (exit 3 unless ``--allow-unfinished``), since
it cannot tell a whole run from a part of one. ``meta["import"]`` records the source, format, mapping, the source
name of every series, why the status is what it is, and notes on everything left out or changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import SourceError, StoreError
from ..store import STORE_FILENAME, RunWriter, open_run
from ._common import LIMITS, ImportSummary, RawLog, build_series, temp_store
from ._mapping import DEFAULT_HISTOGRAMS, DEFAULT_SCALARS, Mapping, load_mapping

__all__ = [
    "DEFAULT_HISTOGRAMS",
    "DEFAULT_SCALARS",
    "FORMATS",
    "LIMITS",
    "UNCONFIRMED",
    "ImportSummary",
    "Mapping",
    "detect_format",
    "import_log",
    "imported",
    "is_run",
    "load_mapping",
    "looks_like_log",
    "read_log",
]

#: the formats, by the name ``--from`` takes
FORMATS = {
    "tensorboard": "TensorBoard event files (a log directory or an events.out.tfevents.* file)",
    "lightning-csv": "Lightning CSVLogger metrics.csv",
    "hf-trainer-state": "Hugging Face Trainer trainer_state.json",
    "wandb-csv": "W&B run history exported as CSV (run.history().to_csv(), columns _step, _runtime, ...)",
    "wandb-chart-csv": "W&B chart exported as CSV (Step, '<run> - <key>' columns)",
    "wandb-jsonl": "W&B run history as JSON lines (run.scan_history() rows, wandb-history.jsonl)",
}
#: the status of an imported run whose log does not say that training finished
UNCONFIRMED = "unconfirmed"
_DIR_FILES = (("metrics.csv", "lightning-csv"), ("trainer_state.json", "hf-trainer-state"),
              ("wandb-history.jsonl", "wandb-jsonl"), ("files/wandb-history.jsonl", "wandb-jsonl"))


def is_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a dyncheck run: a directory holding ``run.db``, or a ``.db`` file."""
    p = Path(path)
    return (p / STORE_FILENAME).exists() if p.is_dir() else p.suffix == ".db"


_LOG_SUFFIXES = (".csv", ".json", ".jsonl", ".ndjson")


def looks_like_log(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a log to import rather than a dyncheck run: a directory without ``run.db`` that holds a
    log, or a file named like one (events.out.tfevents.*, *.csv, *.json, *.jsonl). Anything else is left to the
    run store's reader (and its messages)."""
    p = Path(path)
    try:
        if p.is_dir():
            if (p / STORE_FILENAME).exists():
                return False
            from ._tensorboard import event_files

            return any((p / name).is_file() for name, _ in _DIR_FILES) or bool(event_files(p))
        return os.path.lexists(p) and (p.name.startswith("events.out.tfevents.")
                                       or p.name.lower().endswith(_LOG_SUFFIXES))
    except (OSError, SourceError):
        return False


def _sniff_csv(path: Path) -> str:
    from ._csv import csv_flavour

    try:
        with open(path, "r", encoding="utf-8-sig", errors="replace", newline="") as f:
            first = f.readline(1 << 20)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    import csv

    try:
        header = next(csv.reader([first]), [])
    except csv.Error:
        header = []
    return csv_flavour(header)


def detect_format(path: str | os.PathLike) -> str:
    """The format of a log (a key of :data:`FORMATS`), from its name, or for a directory from the logs it holds.
    Raises :class:`SourceError` when it cannot tell, or when a directory holds logs of more than one format."""
    p = Path(path)
    if not os.path.lexists(p):
        raise SourceError(f"no such file or directory: {p} (expected a dyncheck run or a log to import: "
                          f"{', '.join(FORMATS)})")
    if p.is_dir():
        if (p / STORE_FILENAME).exists():
            raise SourceError(f"{p} is a dyncheck run (it holds {STORE_FILENAME}), not a log to import")
        found = [(name, fmt) for name, fmt in _DIR_FILES if (p / name).is_file()]
        from ._tensorboard import event_files

        if event_files(p):
            found.append(("events.out.tfevents.*", "tensorboard"))
        if not found:
            raise SourceError(f"{p}: no log dyncheck can import in it (expected {', '.join(n for n, _ in _DIR_FILES)}"
                              f" or TensorBoard event files events.out.tfevents.*)")
        if len({f for _, f in found}) > 1:
            raise SourceError(f"{p} holds logs of more than one format ({', '.join(n for n, _ in found)}); give the "
                              f"file to import, or choose one with --from")
        name, fmt = found[0]
        return fmt
    if not p.is_file():  # a FIFO would block the first read, a device never end
        raise SourceError(f"{p} is not a regular file (a FIFO, device or socket); expected a log file or a "
                          f"directory")
    name = p.name
    if name.startswith("events.out.tfevents."):
        return "tensorboard"
    low = name.lower()
    if low.endswith(".csv"):
        return _sniff_csv(p)
    if low.endswith((".jsonl", ".ndjson")):
        return "wandb-jsonl"
    if low.endswith(".json"):
        return "hf-trainer-state"
    if low.endswith(".db"):
        raise SourceError(f"{p} is a .db file: a dyncheck run store, not a log to import")
    raise SourceError(f"cannot tell the format of {p} from its name; expected events.out.tfevents.*, *.csv, "
                      f"trainer_state.json (*.json) or *.jsonl, or choose one with --from ({', '.join(FORMATS)})")


def _file_of(p: Path, fmt: str) -> Path:
    """The file to read in a directory given for a file format."""
    if not p.is_dir() or fmt == "tensorboard":
        return p
    for name, f in _DIR_FILES:
        if (f == fmt or (fmt.startswith("wandb") and f.startswith("wandb"))) and (p / name).is_file():
            return p / name
    raise SourceError(f"{p}: no {FORMATS[fmt]} in it")


def read_log(source: str | os.PathLike, *, fmt: str = "auto", mapping: Mapping | None = None) -> RawLog:
    """Read a log into a :class:`RawLog` (its own names). ``fmt``: ``auto`` or a key of :data:`FORMATS`."""
    p = Path(source)
    mapping = mapping or Mapping()
    if fmt == "auto":
        fmt = detect_format(p)
    elif fmt not in FORMATS:
        raise SourceError(f"unknown log format {fmt!r}; expected auto or one of: {', '.join(FORMATS)}")
    elif not os.path.lexists(p):
        raise SourceError(f"no such file or directory: {p}")
    f = _file_of(p, fmt)
    if fmt == "tensorboard":
        from ._tensorboard import read_tensorboard

        return read_tensorboard(f, mapping)
    if fmt in ("lightning-csv", "wandb-csv", "wandb-chart-csv"):
        from ._csv import read_csv

        return read_csv(f, mapping, fmt)
    from ._json import read_trainer_state, read_wandb_jsonl

    return read_trainer_state(f, mapping) if fmt == "hf-trainer-state" else read_wandb_jsonl(f, mapping)


def import_log(source: str | os.PathLike, run_dir: str | os.PathLike, *, fmt: str = "auto",
               mapping: Mapping | str | os.PathLike | None = None, finished: bool = False,
               overwrite: bool = False) -> ImportSummary:
    """Import a log into ``run_dir/run.db`` (see the module's docstring). ``mapping``: a :class:`Mapping` or the
    path of a mapping file. ``finished``: the caller says training finished (status ``finished`` whatever the log
    says). An existing ``run.db`` is replaced only with ``overwrite``. The store is written beside its place and
    renamed into it, so a reader never sees half an import. Raises :class:`SourceError` (the log) or
    :class:`~dyncheck.errors.ConfigError` (the mapping file)."""
    if mapping is not None and not isinstance(mapping, Mapping):
        mapping = load_mapping(mapping)
    mapping = mapping or Mapping()
    src = Path(source)
    out_dir = Path(run_dir)
    if is_run(src):
        raise SourceError(f"{src} is a dyncheck run already, not a log to import")
    if out_dir.exists() and not out_dir.is_dir():
        raise SourceError(f"cannot import into {out_dir}: it is not a directory (-o names the run directory; "
                          f"{STORE_FILENAME} is written inside it)")
    target = out_dir / STORE_FILENAME
    if os.path.lexists(target) and not overwrite:
        raise SourceError(f"{target} exists already; remove it, choose another directory, or pass --force to "
                          f"replace it")
    raw = read_log(src, fmt=fmt, mapping=mapping)
    series, origin = build_series(raw, mapping)
    if not series:
        raise SourceError(f"{src}: no numeric series in the log ({raw.rows:,} rows read); nothing to import"
                          + (f" ({'; '.join(raw.notes[:3])})" if raw.notes else ""))
    if finished:
        status, why = "finished", "the importer was told so (--finished)"
    elif raw.finished:
        status, why = "finished", raw.status_reason
    else:
        status, why = UNCONFIRMED, raw.status_reason
    steps = [int(s[0]) for s, _ in series.values() if s.size]
    meta = dict(raw.meta)
    meta.update(status=status, start_step=min(steps) if steps else 0)
    if raw.times:
        meta.update(started=min(raw.times), ended=max(raw.times), duration_s=max(raw.times) - min(raw.times))
    points = sum(int(s.size) for s, _ in series.values())
    meta["import"] = {"source": str(src.resolve()), "format": raw.format, "rows": raw.rows, "points": points,
                      "series": origin, "status_reason": why, "notes": list(raw.notes),
                      "mapping": mapping.to_meta() if mapping.file else None}
    from .. import __version__

    meta["versions"] = {"dyncheck": __version__}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(f"cannot create the run directory {out_dir}: {exc.strerror or exc}") from None
    tmp = temp_store(out_dir)
    try:
        with RunWriter(tmp, mode="w") as w:
            w.write(series)
            w.set_meta(**meta)
        os.replace(tmp, target)
    except OSError as exc:
        raise SourceError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                Path(str(tmp) + suffix).unlink()
    return ImportSummary(out_dir, src, raw.format, origin, points, status, why, list(raw.notes))


@contextlib.contextmanager
def imported(source: str | os.PathLike, *, fmt: str = "auto", mapping: Mapping | str | os.PathLike | None = None,
             finished: bool = False) -> Iterator[tuple[object, ImportSummary]]:
    """Import ``source`` into a temporary directory and yield ``(run, summary)`` (an open
    :class:`~dyncheck.store.Run`); the directory is removed afterwards."""
    tmp = tempfile.mkdtemp(prefix="dyncheck-import-")
    try:
        summary = import_log(source, tmp, fmt=fmt, mapping=mapping, finished=finished)
        try:
            run = open_run(tmp)
        except StoreError as exc:  # pragma: no cover - the store was just written
            raise SourceError(f"{source}: the imported run cannot be read back: {exc}") from None
        with run:
            yield run, summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
