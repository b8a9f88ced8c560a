"""CSV logs: Lightning's ``CSVLogger`` (``metrics.csv``) and W&B history exported as CSV.

- Lightning ``metrics.csv``: one row per logging call, a ``step`` column (``trainer.global_step``), an ``epoch``
  column and one sparse column per logged key (an empty cell: not logged in that row).
- W&B ``run.history()`` saved with pandas' ``to_csv``: an unnamed index column, ``_step``, ``_runtime``,
  ``_timestamp`` and one column per key (``train/loss``, ...); media cells (JSON objects) are left out with a note.
  The step is ``trainer/global_step`` (Lightning's WandbLogger) or ``train/global_step`` (HF's WandbCallback) where
  the export has one, else ``_step``.
- W&B chart export ("Export panel -> CSV"): a ``Step`` column and ``<run name> - <key>`` columns, with
  ``__MIN``/``__MAX`` companions that are left out.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..errors import SourceError
from ._common import RawLog, check_file, parse_step
from ._mapping import Mapping

WANDB_STEPS = ("trainer/global_step", "train/global_step", "_step")
_WANDB_AXES = {"_step", "_runtime", "_timestamp", "trainer/global_step", "train/global_step", ""}


def _cell(text: str) -> float | None:
    """A CSV cell as a number: None for an empty cell, ValueError for text that is not a number."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        low = text.strip().lower()
        if low in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"):
            return float(low)
        raise


def csv_flavour(header: list[str]) -> str:
    if "_step" in header:
        return "wandb-csv"
    if "Step" in header and any(" - " in h for h in header):
        return "wandb-chart-csv"
    return "lightning-csv"


def read_csv(path: Path, mapping: Mapping, fmt: str | None = None) -> RawLog:
    size = check_file(path, "a CSV log")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise SourceError(f"{path} is empty; expected a CSV log with a header row (step, metric names ...)")
    if b"\x00" in data[:65536]:
        raise SourceError(f"{path}: holds NUL bytes (a binary file?); expected a CSV text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SourceError(f"{path}:{line}: byte 0x{data[e.start]:02x} is not UTF-8 text; expected a CSV file in "
                          f"UTF-8") from None
    del data
    ends_cleanly = text.endswith(("\n", "\r"))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as e:
        raise SourceError(f"{path}:1: not a readable CSV header: {e}") from None
    flavour = fmt or csv_flavour(header)
    raw = RawLog(flavour, path)
    if len(set(header)) != len(header):
        dup = next(h for i, h in enumerate(header) if h in header[:i])
        raise SourceError(f"{path}:1: column {dup!r} appears more than once in the header; expected each column "
                          f"once")
    columns = list(header)
    run_names: set[str] = set()
    if flavour == "wandb-chart-csv":
        for i, h in enumerate(header):
            if h == "Step" or h.endswith(("__MIN", "__MAX")) or " - " not in h:
                continue
            run, _, key = h.partition(" - ")
            run_names.add(run)
            columns[i] = key
        if len(run_names) > 1:
            shown = ", ".join(sorted(run_names)[:5])
            raise SourceError(f"{path}: the chart export holds {len(run_names)} runs ({shown}); dyncheck imports "
                              f"one run: export the chart with one run shown")
    if mapping.step:
        step_col = mapping.step
    elif flavour == "wandb-csv":
        step_col = next(c for c in WANDB_STEPS if c in header or c == "_step")
    elif flavour == "wandb-chart-csv":
        step_col = "Step"
    else:
        step_col = "step"
    if step_col not in header:
        raise SourceError(f"{path}:1: no {step_col!r} column in the header (it has: {', '.join(header[:12])}"
                          f"{', ...' if len(header) > 12 else ''}); expected 'step' (Lightning CSVLogger), '_step' "
                          f"(W&B history) or 'Step' (W&B chart export), or name the step column with 'step:' in "
                          f"a mapping file")
    step_i = header.index(step_col)
    skip = {step_i}
    for i, h in enumerate(header):
        if flavour == "wandb-chart-csv" and (h.endswith(("__MIN", "__MAX")) or (h != "Step" and " - " not in h)):
            skip.add(i)
        if flavour == "wandb-csv" and h in _WANDB_AXES:
            skip.add(i)
    unnamed = [i + 1 for i, c in enumerate(columns) if i not in skip and not c.strip()]
    if unnamed:
        raw.notes.append(f"column{'s' if len(unnamed) > 1 else ''} {', '.join(map(str, unnamed[:10]))} of the header "
                         f"{'have' if len(unnamed) > 1 else 'has'} no name: left out")
    keep = [(i, columns[i]) for i in range(len(header))
            if i not in skip and columns[i].strip() and not mapping.ignored(columns[i])]
    lenient = flavour != "lightning-csv"  # W&B histories hold media (JSON objects) in their cells
    objects: dict[str, int] = {}
    no_step = 0
    ts_i = header.index("_timestamp") if "_timestamp" in header else None
    n_fields = len(header)
    rows = 0
    row: list[str] = []
    try:
        for row in reader:
            line = reader.line_num
            if len(row) != n_fields:
                if not row:
                    continue
                last = not ends_cleanly and reader.line_num == text.count("\n") + 1
                if last and len(row) < n_fields:
                    raw.notes.append(f"line {line}: the last row is incomplete ({len(row)} of {n_fields} fields; "
                                     f"the file ends without a newline: still being written?): left out")
                    break
                raise SourceError(f"{path}:{line}: {len(row)} fields, but the header has {n_fields}; expected "
                                  f"one value (or an empty cell) per column")
            rows += 1
            cell = row[step_i]
            if not cell.strip():
                if lenient:
                    no_step += 1
                    continue
                raise SourceError(f"{path}:{line}: column {step_col!r} is empty; expected the step (an integer "
                                  f">= 0) in every row")
            step = parse_step(cell, f"{path}:{line}: column {step_col!r}")
            for i, key in keep:
                text_ = row[i]
                if not text_:
                    continue
                try:
                    value = _cell(text_)
                except ValueError:
                    if lenient and text_.lstrip().startswith(("{", "[")):
                        objects[key] = objects.get(key, 0) + 1
                        continue
                    shown = text_ if len(text_) <= 40 else text_[:37] + "..."
                    raise SourceError(f"{path}:{line}: column {header[i]!r}: {shown!r} is not a number; expected "
                                      f"a number, nan, inf or an empty cell (a column that is not a metric can be "
                                      f"left out with 'ignore:' in a mapping file)") from None
                if value is not None:
                    raw.scalar(key, step, value)
            if ts_i is not None and row[ts_i]:
                try:
                    t = float(row[ts_i])
                    if math.isfinite(t):
                        raw.times.append(t)
                except ValueError:
                    pass
    except csv.Error as e:
        raise SourceError(f"{path}:{reader.line_num}: not valid CSV: {e}") from None
    raw.rows = rows
    if objects:
        raw.notes.append("cells that are not numbers (W&B media, tables, histograms) left out: "
                         + ", ".join(f"{k} ({n})" for k, n in sorted(objects.items())[:10]))
    if no_step:
        raw.notes.append(f"{no_step:,} rows without {step_col!r} left out")
    if run_names:
        raw.meta["wandb_run"] = next(iter(run_names))
    if size and not raw.scalars and rows == 0:
        raw.notes.append("the log has a header but no rows")
    raw.status_reason = f"a {'Lightning CSVLogger' if flavour == 'lightning-csv' else 'W&B'} log does not say " \
                        f"whether training finished"
    return raw
