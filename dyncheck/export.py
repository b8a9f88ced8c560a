"""Runs -> a Parquet dataset for fleet-wide queries (DuckDB, pandas, Spark, ...): ``dyncheck export RUN...
--parquet DIR``.

Layout (``DIR``)::

    _dyncheck.json                          -- what wrote it: format, version, runs, rows, created
    runs/part-0.parquet                     -- one row per run: status, verdict, meta flattened, findings
    findings/part-0.parquet                 -- one row per finding (the runs table's ``findings``, flat)
    series/family=<family>/part-<k>.parquet -- one row per recorded point: run_id, metric, step, value

The series table is partitioned (hive style) by the metric's **family**, the part of its name before the first
``/`` (``loss``, ``lr``, ``grad_norm``, ``update_ratio``, ``act``, ``sharpness``, ...; a name without a ``/`` or
with characters unsafe in a path goes to ``family=_other``). Fleet queries select metrics far more often than runs
("the validation loss of every Adam run"): a query that filters on ``family`` reads only that directory, and the
per-layer families (``grad_norm``, ``update_ratio``, ``act``), which hold most of the rows, are skipped. Within a
file, rows are ordered by metric, then run, then step, so each row group's min/max statistics also prune on
``metric`` and ``run_id``. Partitioning by run instead would make every such query open one file per run (and a
fleet of small files); by full metric name, one directory per layer and metric.

Export writes into a temporary directory beside ``DIR`` and moves it into place at the end, so a reader never
sees half a dataset; an existing ``DIR`` is replaced only when it is empty or a previous dyncheck export (it holds
``_dyncheck.json``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import ConfigError, DyncheckError

__all__ = ["ParquetExport", "ExportSummary", "export_parquet", "MARKER", "FORMAT_VERSION", "RUN_COLUMNS"]

MARKER = "_dyncheck.json"
FORMAT_VERSION = 1
#: rows buffered before a family's part file is written
BATCH_ROWS = 2_000_000
ROW_GROUP = 131_072
_FAMILY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: the fixed columns of the runs table (hyperparameters follow as ``hp_<name>``, trainer settings as
#: ``trainer_<name>``)
RUN_COLUMNS = {
    "run_id": "the run's path as given or found (runs/lr0.1/seed3): the key of every table",
    "run_name": "the run directory's name",
    "path": "the run's absolute path",
    "source": "run (a dyncheck run store) or log (an imported log)",
    "status": "meta status: finished, running, interrupted, crashed, ended, unconfirmed; unknown if none",
    "verdict": "pass, warn, fail or unjudged (the gate's verdict); null with --no-checks",
    "not_judged": "why the run could not be judged, or null",
    "first_diagnosis": "check id of the first diagnosis (the likeliest root cause), or null",
    "n_errors": "findings of severity error", "n_warnings": "findings of severity warning",
    "optimizer": "class of the first optimizer (SGD, Adam, AdamW, ...)",
    "optimizers": "every optimizer's class, comma-separated",
    "lr": "the first parameter group's learning rate at the start of the fit",
    "momentum": "the first parameter group's momentum (SGD), or null",
    "betas": "the first parameter group's betas (Adam), as JSON text, or null",
    "weight_decay": "the first parameter group's weight decay, or null",
    "model": "the model's class", "n_parameters": "parameters of the model", "n_trainable": "trainable parameters",
    "first_step": "the first step any series recorded", "last_step": "the last step any series recorded",
    "steps": "last_step + 1: the steps trained (steps count from 0)",
    "n_metrics": "series recorded", "n_points": "points recorded over all series",
    "started": "start time (UTC timestamp)", "ended": "end time (UTC timestamp)", "duration_s": "seconds",
    "host": "host name", "exception_type": "the exception that ended a crashed run",
    "exception_message": "its message", "stopped_by": "check id that stopped the run (stop_on), or null",
    "resumed_from_step": "the checkpoint step a resumed run started from",
    "dyncheck_version": "dyncheck's version when the run was written", "torch_version": "torch's",
    "findings": "list of {check_id, severity, metric, first_step, last_step, value, message}",
}
_TRAINER_KEYS = ("max_steps", "max_epochs", "precision", "accelerator", "strategy", "world_size",
                 "accumulate_grad_batches", "gradient_clip_val")


def _pa() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401 - the submodule is what writes
    except ImportError as exc:
        raise DyncheckError(f"dyncheck export --parquet needs pyarrow ({exc}); install it with: "
                            f"pip install 'dyncheck[parquet]'") from None
    return pa


def family_of(metric: str) -> str:
    """The series table's partition of a metric: its name before the first ``/`` (``_other`` when it has none
    or it is not a safe directory name)."""
    head, sep, _ = metric.partition("/")
    return head if sep and _FAMILY.match(head) and head not in (".", "..") else "_other"


@dataclass
class ExportSummary:
    """What an export wrote: ``runs`` exported, series ``rows``, ``files`` written, ``errors`` (run, message) of
    the runs that could not be read (they are in the runs table with ``error`` set and no series)."""

    path: Path
    runs: int = 0
    rows: int = 0
    files: int = 0
    findings: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    families: list[str] = field(default_factory=list)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _scalar(v: Any) -> Any:
    """A meta value for one cell: numbers, text and booleans as they are, anything else as JSON text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, default=str, sort_keys=True)


def _column_name(prefix: str, key: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", str(key))


class ParquetExport:
    """Write runs into a Parquet dataset at ``out``: :meth:`add` each run, then :meth:`close` (or use it as a
    context manager; an exception leaves ``out`` as it was). ``rules``: the rule set to evaluate for the verdict
    and findings (None: no checks)."""

    def __init__(self, out: str | os.PathLike, *, rules: Any = "default", what: str = "--parquet") -> None:
        self.pa = _pa()
        self.out = Path(out)
        self.what = what
        self.rules = rules
        if rules is not None and not hasattr(rules, "sources"):
            from .checks.rules import load_rules

            self.rules = load_rules([rules] if isinstance(rules, (str, os.PathLike)) else list(rules))
        self._check_out()
        parent = self.out.parent if str(self.out.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name or 'export'}.partial-", dir=parent))
            (self.tmp / "series").mkdir()
        except OSError as exc:
            blocked = next((a for a in [parent, *parent.parents] if os.path.lexists(a) and not a.is_dir()), None)
            reason = f"{blocked} is not a directory" if blocked is not None else (exc.strerror or str(exc))
            raise DyncheckError(f"{what} {out}: cannot write the dataset there: {reason}") from None
        self.summary = ExportSummary(self.out)
        self._start = time.perf_counter()
        self._runs: list[dict[str, Any]] = []
        self._findings: list[dict[str, Any]] = []
        self._buf: dict[str, dict[str, list[tuple[str, np.ndarray, np.ndarray]]]] = {}
        self._buffered = 0
        self._parts: dict[str, int] = {}
        self._ids: set[str] = set()

    # -- the target ---------------------------------------------------------------------------------------------
    def _check_out(self) -> None:
        p, what = self.out, self.what
        if os.path.islink(p):
            raise DyncheckError(f"{what} {p}: is a symbolic link; expected a directory to write the dataset to")
        if os.path.lexists(p):
            if not p.is_dir():
                raise DyncheckError(f"{what} {p}: is not a directory; expected a new or empty directory, or a "
                                    f"previous dyncheck export")
            try:
                entries = os.listdir(p)
            except OSError as exc:
                raise DyncheckError(f"{what} {p}: cannot read the directory: {exc.strerror or exc}") from None
            if entries and MARKER not in entries:
                raise DyncheckError(f"{what} {p}: the directory holds other files ({', '.join(sorted(entries)[:3])}"
                                    f"{', ...' if len(entries) > 3 else ''}) and no {MARKER}; dyncheck replaces "
                                    f"only an empty directory or a previous dyncheck export")

    # -- adding runs ----------------------------------------------------------------------------------------------
    def add(self, run_id: str, run: Any, *, source: str = "run", result: Any = None, path: str | None = None) -> None:
        """Add an open :class:`~dyncheck.store.Run` under ``run_id`` (unique in the export). ``result``: its
        CheckResult if already evaluated; ``path``: what the ``path`` column says (default: the run directory,
        absolute; for an imported log, give the log's)."""
        if run_id in self._ids:
            raise ConfigError(f"run id {run_id!r} is exported twice; each run needs its own id")
        meta = run.meta
        if self.rules is not None and result is None:
            from .checks import evaluate

            result = evaluate(run, self.rules)
        names = run.metrics()
        first = last = None
        n_points = 0
        got = []  # read every series before buffering any: a damaged one leaves nothing of the run behind
        for name in names:
            s = run.series(name)
            if len(s):
                got.append((name, s))
        row = self._run_row(run_id, run, meta, source, result, path)
        for name, s in got:
            n_points += len(s)
            lo, hi = int(s.steps[0]), int(s.steps[-1])
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
            self._buf.setdefault(family_of(name), {}).setdefault(name, []).append((run_id, s.steps, s.values))
            self._buffered += len(s)
        row.update(first_step=first, last_step=last, steps=None if last is None else last + 1,
                   n_metrics=len(names), n_points=n_points)
        self._findings += [{"run_id": run_id, **f} for f in row["findings"]]
        self.summary.findings += len(row["findings"])
        self._runs.append(row)
        self._ids.add(run_id)
        self.summary.runs += 1
        self.summary.rows += n_points
        if self._buffered >= BATCH_ROWS:
            self._flush()

    def add_error(self, run_id: str, message: str, *, source: str = "run", path: str | None = None) -> None:
        """A run that could not be read: a row in the runs table with ``error`` set, no series."""
        self._ids.add(run_id)
        self._runs.append({"run_id": run_id, "run_name": Path(run_id).name, "path": path, "source": source,
                           "status": None, "verdict": "error", "error": message, "findings": []})
        self.summary.errors.append((run_id, message))

    def _run_row(self, run_id: str, run: Any, meta: Mapping[str, Any], source: str, result: Any,
                 path: str | None) -> dict[str, Any]:
        opts = [o for o in meta.get("optimizers") or [] if isinstance(o, dict)]
        group = next(iter(opts[0].get("param_groups") or [{}]), {}) if opts else {}
        group = group if isinstance(group, dict) else {}
        model = meta.get("model") or {}
        exc = meta.get("exception") or {}
        stopped = meta.get("stopped_by") or {}
        versions = meta.get("versions") or {}
        status = meta.get("status")
        if path is None:
            try:
                path = str(run.dir.resolve())
            except OSError:
                path = None
        row: dict[str, Any] = {
            "run_id": run_id, "run_name": Path(run_id).name or run_id, "path": path, "source": source,
            "status": status if isinstance(status, str) and status else "unknown",
            "verdict": None, "not_judged": None, "first_diagnosis": None, "n_errors": None, "n_warnings": None,
            "error": None,
            "optimizer": opts[0].get("class") if opts else None,
            "optimizers": ",".join(str(o.get("class")) for o in opts) or None,
            "lr": _num(group.get("lr")), "momentum": _num(group.get("momentum")),
            "betas": None if group.get("betas") is None else json.dumps(group.get("betas")),
            "weight_decay": _num(group.get("weight_decay")),
            "model": model.get("class") if isinstance(model, dict) else None,
            "n_parameters": _int(model.get("n_parameters")) if isinstance(model, dict) else None,
            "n_trainable": _int(model.get("n_trainable")) if isinstance(model, dict) else None,
            "started": _num(meta.get("started")), "ended": _num(meta.get("ended")),
            "duration_s": _num(meta.get("duration_s")), "host": meta.get("host"),
            "exception_type": exc.get("type") if isinstance(exc, dict) else None,
            "exception_message": exc.get("message") if isinstance(exc, dict) else None,
            "stopped_by": stopped.get("check") if isinstance(stopped, dict) else None,
            "resumed_from_step": _int(meta.get("resumed_from_step")),
            "dyncheck_version": versions.get("dyncheck"), "torch_version": versions.get("torch"),
        }
        trainer = meta.get("trainer") or {}
        for k in _TRAINER_KEYS:
            if k in trainer:
                row[_column_name("trainer_", k)] = _scalar(trainer[k])
        for k, v in sorted((meta.get("hyperparameters") or {}).items()):
            row[_column_name("hp_", k)] = _scalar(v)
        findings = []
        if result is not None:
            diags = result.diagnoses
            counts = result.counts()
            row.update(verdict=result.verdict(), not_judged=result.not_judged(),
                       first_diagnosis=diags[0].check if diags else None, n_errors=counts["error"],
                       n_warnings=counts["warning"])
            for f in result.findings:
                value = f.value if isinstance(f.value, (int, float)) and not isinstance(f.value, bool) else None
                findings.append({"check_id": f.check, "severity": f.severity, "metric": f.metric,
                                 "first_step": int(f.first_step), "last_step": int(f.last_step),
                                 "value": None if value is None else float(value), "message": f.message})
        row["findings"] = findings
        return row

    # -- writing ------------------------------------------------------------------------------------------------
    def _flush(self) -> None:
        pa, pq = self.pa, self.pa.parquet
        for fam, by_metric in self._buf.items():
            ids, metrics, steps, values = [], [], [], []
            names = sorted(by_metric)
            run_names = sorted({rid for m in names for rid, _, _ in by_metric[m]})
            rank = {r: i for i, r in enumerate(run_names)}
            for mi, m in enumerate(names):
                for rid, st, va in sorted(by_metric[m], key=lambda t: rank[t[0]]):
                    ids.append(np.full(st.size, rank[rid], np.int32))
                    metrics.append(np.full(st.size, mi, np.int32))
                    steps.append(st)
                    values.append(va)
            table = pa.table({
                "run_id": pa.DictionaryArray.from_arrays(pa.array(np.concatenate(ids)), pa.array(run_names)),
                "metric": pa.DictionaryArray.from_arrays(pa.array(np.concatenate(metrics)), pa.array(names)),
                "step": pa.array(np.concatenate(steps).astype(np.int64, copy=False)),
                "value": pa.array(np.concatenate(values).astype(np.float64, copy=False)),
            })
            k = self._parts.get(fam, 0)
            self._parts[fam] = k + 1
            d = self.tmp / "series" / f"family={fam}"
            d.mkdir(exist_ok=True)
            self._write(pq.write_table, table, d / f"part-{k}.parquet", row_group_size=ROW_GROUP)
        self._buf.clear()
        self._buffered = 0

    def _write(self, fn: Any, table: Any, path: Path, **kw: Any) -> None:
        try:
            fn(table, str(path), compression="zstd", **kw)
        except OSError as exc:
            raise DyncheckError(f"{self.what} {self.out}: cannot write {path.name}: {exc}") from None
        self.summary.files += 1

    def _columns(self, rows: list[dict[str, Any]], fixed: Iterable[str]) -> dict[str, list[Any]]:
        names = list(dict.fromkeys([*fixed, *(k for r in rows for k in r)]))
        return {n: [r.get(n) for r in rows] for n in names}

    def _array(self, name: str, values: list[Any]) -> Any:
        pa = self.pa
        if name == "findings":
            return pa.array(values, type=_FINDING_LIST(pa))
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # mixed types across runs: as text
            return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
                            type=pa.string())

    def _table(self, rows: list[dict[str, Any]], fixed: Iterable[str], finding_fields: bool = False) -> Any:
        pa = self.pa
        cols = self._columns(rows, fixed)
        arrays = {}
        for n, v in cols.items():
            if finding_fields and n in _FINDING_TYPES:
                arrays[n] = pa.array(v, type=_FINDING_TYPES[n](pa))
            elif n in _RUN_TYPES:
                arrays[n] = pa.array(v, type=_RUN_TYPES[n](pa))
            else:
                arrays[n] = self._array(n, v)
        return pa.table(arrays)

    def close(self) -> ExportSummary:
        """Write the runs and findings tables, move the dataset into place, return what was written."""
        pq = self.pa.parquet
        if self._buffered:
            self._flush()
        for sub in ("runs", "findings"):
            (self.tmp / sub).mkdir()
        runs = self._table(self._runs, [*RUN_COLUMNS, "error"])
        self._write(pq.write_table, runs, self.tmp / "runs" / "part-0.parquet")
        findings = self._table(self._findings, ["run_id", *_FINDING_TYPES], finding_fields=True)
        self._write(pq.write_table, findings, self.tmp / "findings" / "part-0.parquet")
        self.summary.seconds = time.perf_counter() - self._start
        self.summary.families = sorted(self._parts)
        marker = {"format": "dyncheck-parquet", "version": FORMAT_VERSION, "runs": self.summary.runs,
                  "rows": self.summary.rows, "findings": self.summary.findings,
                  "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  "series_partitioning": "family (hive): series/family=<family>/part-<k>.parquet"}
        try:
            (self.tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            self._swap()
        except OSError as exc:
            raise DyncheckError(f"{self.what} {self.out}: cannot move the dataset into place: "
                                f"{exc.strerror or exc}") from None
        self.summary.files += 1
        return self.summary

    def _swap(self) -> None:
        self._check_out()  # again: something may have appeared there meanwhile
        old = None
        if os.path.lexists(self.out):
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}-{int(time.time() * 1e6)}")
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        if getattr(self, "tmp", None) is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> "ParquetExport":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _FINDING_LIST(pa: Any) -> Any:
    return pa.list_(pa.struct([(k, t(pa)) for k, t in _FINDING_TYPES.items()]))


_FINDING_TYPES = {"check_id": lambda pa: pa.string(), "severity": lambda pa: pa.string(),
                  "metric": lambda pa: pa.string(), "first_step": lambda pa: pa.int64(),
                  "last_step": lambda pa: pa.int64(), "value": lambda pa: pa.float64(),
                  "message": lambda pa: pa.string()}
_S, _F, _I = (lambda pa: pa.string()), (lambda pa: pa.float64()), (lambda pa: pa.int64())
_RUN_TYPES = {**{k: _S for k in ("run_id", "run_name", "path", "source", "status", "verdict", "not_judged",
                                 "first_diagnosis", "optimizer", "optimizers", "betas", "model", "host",
                                 "exception_type", "exception_message", "stopped_by", "dyncheck_version",
                                 "torch_version", "error")},
              **{k: _F for k in ("lr", "momentum", "weight_decay", "started", "ended", "duration_s")},
              **{k: _I for k in ("n_errors", "n_warnings", "n_parameters", "n_trainable", "first_step", "last_step",
                                 "steps", "n_metrics", "n_points", "resumed_from_step")}}


def export_parquet(runs: Iterable[str | os.PathLike], out: str | os.PathLike, *, rules: Any = "default") -> \
        ExportSummary:
    """Export dyncheck runs (run directories or ``.db`` files; their path is the run id) into a Parquet dataset
    at ``out``. A run that cannot be read is a row with ``error`` set (``summary.errors``)."""
    from .store import open_run

    with ParquetExport(out, rules=rules) as exp:
        for r in runs:
            try:
                with open_run(r) as run:
                    exp.add(str(r), run)
            except DyncheckError as e:
                if isinstance(e, ConfigError):
                    raise
                exp.add_error(str(r), str(e))
    return exp.summary
