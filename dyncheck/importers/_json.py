"""JSON logs: Hugging Face Trainer's ``trainer_state.json`` and W&B history as JSON lines.

- ``trainer_state.json`` (``TrainerState.save_to_json``): ``log_history`` is a list of the dicts the Trainer logged,
  each with ``step`` (the global step) and ``epoch``: training logs (``loss``, ``grad_norm``, ``learning_rate``),
  evaluation logs (``eval_loss``, ``eval_runtime``, ...) and, when ``train()`` returned, a summary
  (``train_runtime``, ``train_loss`` -- the mean over the run --, ``total_flos``, ...), kept as metadata rather
  than as a point of a series. ``global_step``, ``max_steps`` and the other settings go to the run's metadata.
- W&B JSON lines: one ``run.history()`` / ``run.scan_history()`` row per line, or an offline run's
  ``wandb-history.jsonl``: ``_step``, ``_runtime``, ``_timestamp`` and the logged keys; nested dicts are flattened
  with ``.``; media (dicts with ``_type``) and other values that are not numbers are left out with a note.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ._common import RawLog, check_file, number, parse_step
from ._csv import WANDB_STEPS
from ._mapping import Mapping

_HF_SUMMARY_KEY = "train_runtime"
_HF_SETTINGS = ("global_step", "max_steps", "epoch", "num_train_epochs", "logging_steps", "eval_steps", "save_steps",
                "train_batch_size", "best_metric", "best_model_checkpoint", "best_global_step", "is_world_process_zero",
                "is_hyper_param_search", "trial_name")
_WANDB_AXES = {"_step", "_runtime", "_timestamp", "trainer/global_step", "train/global_step"}


def _json_error(path: Path, e: json.JSONDecodeError, line: int | None = None) -> SourceError:
    where = f"{path}:{line if line is not None else e.lineno}:{e.colno}"
    return SourceError(f"{where}: not valid JSON: {e.msg}")


def _decode(path: Path, data: bytes, line: int | None = None) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        at = line if line is not None else data.count(b"\n", 0, e.start) + 1
        raise SourceError(f"{path}:{at}: byte 0x{data[e.start]:02x} is not UTF-8 text; expected JSON in UTF-8") \
            from None


def _loads(text: str) -> Any:
    return json.loads(text)  # NaN, Infinity and -Infinity are read as floats (Python's json writes them)


def _simple(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v))


def read_trainer_state(path: Path, mapping: Mapping) -> RawLog:
    check_file(path, "a trainer_state.json", "json_bytes")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = _loads(_decode(path, data))
    except json.JSONDecodeError as e:
        raise _json_error(path, e) from None
    except RecursionError:
        raise SourceError(f"{path}: JSON nested too deeply to read; expected a trainer_state.json") from None
    if not isinstance(doc, dict) or "log_history" not in doc:
        got = "an object without 'log_history'" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise SourceError(f"{path}: not a Hugging Face trainer_state.json: it is {got}; expected an object with "
                          f"'log_history' (a list of logged dicts), as Trainer writes it")
    history = doc["log_history"]
    if not isinstance(history, list):
        raise SourceError(f"{path}: 'log_history' is a JSON {type(history).__name__}; expected a list of objects")
    raw = RawLog("hf-trainer-state", path)
    summary: dict[str, Any] | None = None
    nulls: dict[str, int] = {}
    for i, entry in enumerate(history):
        where = f"{path}: log_history[{i}]"
        if not isinstance(entry, dict):
            raise SourceError(f"{where} is a JSON {type(entry).__name__}; expected an object such as "
                              f"{{\"loss\": 2.3, \"step\": 10}}")
        if "step" not in entry:
            raise SourceError(f"{where} has no 'step'; expected the global step in every entry")
        step = parse_step(entry["step"], f"{where}.step")
        raw.rows += 1
        if _HF_SUMMARY_KEY in entry:  # the summary train() logs at its end: means over the run, not a point
            summary = {k: v for k, v in entry.items() if _simple(v)}
            continue
        for key, value in entry.items():
            if key == "step" or mapping.ignored(key):
                continue
            x = number(value)
            if x is None:
                if value is None:
                    nulls[key] = nulls.get(key, 0) + 1
                    continue
                shown = json.dumps(value)[:40] if not isinstance(value, str) else repr(value[:40])
                raise SourceError(f"{where}.{key} is {_kind(value)} {shown}; expected a number (NaN and "
                                  f"Infinity are numbers; a key that is not a metric can be left out with "
                                  f"'ignore:' in a mapping file)")
            raw.scalar(key, step, x)
    if nulls:
        raw.notes.append("null values left out: " + ", ".join(f"{k} ({n})" for k, n in sorted(nulls.items())[:10]))
    raw.meta["trainer"] = {k: doc[k] for k in _HF_SETTINGS if k in doc and _simple(doc[k])}
    if summary is not None:
        raw.meta["train_summary"] = summary
    for key in ("global_step", "max_steps"):
        if key in doc and (isinstance(doc[key], bool) or not isinstance(doc[key], int)):
            raise SourceError(f"{path}: '{key}' is {_kind(doc[key])} {json.dumps(doc[key])[:40]}; expected an "
                              f"integer")
    gs, ms = doc.get("global_step"), doc.get("max_steps")
    if summary is not None:
        raw.finished = True
        raw.status_reason = "log_history ends with the summary train() logs when it returns (train_runtime)"
    elif isinstance(gs, int) and isinstance(ms, int) and ms > 0 and gs >= ms:
        raw.finished = True
        raw.status_reason = f"global_step {gs} reached max_steps {ms}"
    else:
        raw.status_reason = (f"global_step {gs} of max_steps {ms} and no end-of-training summary: a checkpoint's "
                             f"state, or a run that stopped early" if isinstance(gs, int) and isinstance(ms, int)
                             else "no end-of-training summary and no global_step/max_steps to compare")
    return raw


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), type(v).__name__)


def _flatten(d: dict[str, Any], prefix: str, out: dict[str, Any], depth: int = 0) -> None:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "_type" not in v and depth < 8:
            _flatten(v, key + ".", out, depth + 1)
        else:
            out[key] = v


def read_wandb_jsonl(path: Path, mapping: Mapping) -> RawLog:
    check_file(path, "a W&B history (JSON lines)")
    raw = RawLog("wandb-jsonl", path)
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not any(x.strip() for x in lines):
        raise SourceError(f"{path} is empty; expected W&B history rows, one JSON object per line")
    ends_with_newline = lines[-1] == b""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if b"\x00" in line:
            raise SourceError(f"{path}:{n}: holds NUL bytes (a binary file?); expected one JSON object per line")
        text = _decode(path, line, n)
        try:
            obj = _loads(text)
        except json.JSONDecodeError as e:
            if n == len(lines) and not ends_with_newline and (e.pos >= len(text.rstrip())
                                                             or e.msg.startswith("Unterminated string")):
                raw.notes.append(f"line {n}: the last line is incomplete (the file ends inside a JSON value: "
                                 f"still being written?): left out")
                continue
            raise _json_error(path, e, n) from None
        except RecursionError:
            raise SourceError(f"{path}:{n}: JSON nested too deeply to read") from None
        if not isinstance(obj, dict):
            raise SourceError(f"{path}:{n}: a JSON {_kind(obj)}; expected an object (one history row) per line")
        flat: dict[str, Any] = {}
        _flatten(obj, "", flat)
        rows.append((n, flat))
    step_key = mapping.step or next((k for k in WANDB_STEPS if any(k in r for _, r in rows)), "_step")
    skipped: dict[str, int] = {}
    no_step = 0
    for n, row in rows:
        if step_key not in row or row[step_key] is None:
            no_step += 1
            continue
        step = parse_step(row[step_key], f"{path}:{n}: {step_key!r}")
        raw.rows += 1
        t = number(row.get("_timestamp"))
        if t is not None and math.isfinite(t):
            raw.times.append(t)
        for key, value in row.items():
            if key == step_key or key in _WANDB_AXES or mapping.ignored(key):
                continue
            x = number(value)
            if x is None:
                skipped[key] = skipped.get(key, 0) + 1
                continue
            raw.scalar(key, step, x)
    if no_step:
        if not raw.rows:
            raise SourceError(f"{path}: no row has {step_key!r}; expected W&B history rows with '_step' (or name "
                              f"the step key with 'step:' in a mapping file)")
        raw.notes.append(f"{no_step:,} rows without {step_key!r} left out")
    if skipped:
        raw.notes.append("values that are not numbers (W&B media, tables, histograms, text, null) left out: "
                         + ", ".join(f"{k} ({n})" for k, n in sorted(skipped.items())[:10])
                         + (", ..." if len(skipped) > 10 else ""))
    raw.status_reason = "a W&B history export does not say whether training finished"
    return raw
