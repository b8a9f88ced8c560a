"""Hostile logs get a clear error, never a traceback or a hang: every importer (TensorBoard event files, Lightning
metrics.csv, W&B CSV and JSON lines, trainer_state.json) on valid logs with bytes flipped, inserted or deleted,
truncated, on garbage bytes, on rows of random values of the wrong types (NaN and inf, huge and negative numbers,
text, nested objects), duplicate and non-monotonic steps, a FIFO, a file beyond the size limit and a large log
within it.

Each input goes through ``import_log`` (and some through ``dyncheck check SOURCE``). It must import or fail with a
:class:`dyncheck.errors.DyncheckError` whose message names the file; anything else is a traceback and fails the
test, and an input that takes longer than ``HANG_S`` is a hang. What does import must read back. The counts are
printed at the end of the module (``DYNCHECK_FUZZ=deep`` draws many more examples, like tests/test_fuzz_inputs.py).
"""

from __future__ import annotations

import collections
import json
import os
import random

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from timelimit import time_limit

from dyncheck.cli import main
from dyncheck.errors import DyncheckError
from dyncheck.importers import LIMITS, import_log, load_mapping
from dyncheck.store import open_run

PROFILE = os.environ.get("DYNCHECK_FUZZ", "quick")
DEEP = PROFILE == "deep"
N = 1000 if DEEP else 25
HANG_S = 20


class Hang(BaseException):
    """Raised by the time limit: not an OSError (TimeoutError is one, and readers catch those)."""
COUNTS: collections.Counter = collections.Counter()
FUZZ = {"deadline": None, "database": None, "derandomize": not DEEP,
        "phases": tuple(Phase) if DEEP else (Phase.explicit, Phase.generate),
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                  HealthCheck.function_scoped_fixture]}


def _valid_logs(root):
    """One valid log per format, written by the real writer where there is one."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    tb = root / "tb"
    w = SummaryWriter(str(tb))
    for i in range(30):
        w.add_scalar("train/loss", 1.0 / (i + 1), i)
        if i % 10 == 0:
            w.add_histogram("fc.weight", torch.arange(12.0).reshape(3, 4), i)
    w.close()
    (event,) = tb.glob("events.out.tfevents.*")
    hf = {"global_step": 6, "max_steps": 6, "log_history": [
        {"loss": 2.0 - i / 10, "grad_norm": 1.5, "learning_rate": 1e-3, "epoch": i / 6, "step": i} for i in range(1, 7)]
        + [{"eval_loss": 1.7, "epoch": 1.0, "step": 6}]}
    csv_text = "epoch,lr-SGD,step,train_loss,val_loss\n" + "".join(
        f"0,0.1,{i},{1.0 / (i + 1)},\n" for i in range(20)) + "0,,19,,0.5\n"
    jsonl = "".join(json.dumps({"_step": i, "_runtime": i, "train/loss": 1.0 / (i + 1)}) + "\n" for i in range(20))
    wcsv = ",_step,_runtime,train/loss\n" + "".join(f"{i},{i},{i * 0.5},{1.0 / (i + 1)}\n" for i in range(20))
    return {"events.out.tfevents.1.host": event.read_bytes(), "trainer_state.json": json.dumps(hf).encode(),
            "metrics.csv": csv_text.encode(), "history.jsonl": jsonl.encode(), "history.csv": wcsv.encode()}


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return _valid_logs(tmp_path_factory.mktemp("valid"))


def _attempt(path, tmp, kind, *, cli=False):
    """Import ``path``; tally the outcome. Fails on a traceback, a hang or an error that does not name the file."""
    out = tmp / f"run{COUNTS['tried']}"
    COUNTS["tried"] += 1
    try:
        with time_limit(HANG_S, Hang):
            summary = import_log(path, out)
            with open_run(out) as run:  # what imports reads back
                for name in run.metrics():
                    run.series(name)
            assert summary.points > 0
            if cli:
                code = main(["check", str(path), "--allow-unfinished", "--format", "json", "-o",
                             str(tmp / "out.json")])
                assert code in (0, 1, 3), code
    except Hang:
        COUNTS["hangs"] += 1
        raise AssertionError(f"{kind}: no answer after {HANG_S} s on {path}") from None
    except DyncheckError as e:
        msg = str(e)
        if path.name not in msg and str(path.parent) not in msg:
            COUNTS["unclear"] += 1
            raise AssertionError(f"{kind}: the error does not name the file: {msg}") from None
        COUNTS["clean errors"] += 1
        return "error"
    except AssertionError:
        raise
    except BaseException as e:  # a traceback
        COUNTS["tracebacks"] += 1
        raise AssertionError(f"{kind}: {type(e).__name__}: {e} on {path}") from e
    COUNTS["imported"] += 1
    return "ok"


_MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]),
                                st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6)


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, where, byte in ops:
        if not b:
            break
        i = min(int(where * len(b)), len(b) - 1)
        if op == "flip":
            b[i] ^= byte or 1
        elif op == "insert":
            b[i:i] = bytes([byte])
        elif op == "delete":
            del b[i]
        elif op == "truncate":
            del b[i:]
        else:
            b[i:i] = b[i:i + 1 + byte % 64]  # a repeated stretch (duplicate lines, records)
    return bytes(b)


@pytest.mark.parametrize("name", ["events.out.tfevents.1.host", "trainer_state.json", "metrics.csv",
                                  "history.jsonl", "history.csv"])
def test_mutated_logs(logs, tmp_path, name):
    @settings(max_examples=N, **FUZZ)
    @given(ops=_MUTATIONS)
    def prop(ops):
        d = tmp_path / f"case{COUNTS['tried']}"
        d.mkdir()
        p = d / name
        p.write_bytes(_mutate(logs[name], ops))
        _attempt(p, d, name)

    prop()


@pytest.mark.parametrize("name", ["events.out.tfevents.1.host", "trainer_state.json", "metrics.csv",
                                  "history.jsonl", "history.csv"])
def test_garbage_and_empty_files(tmp_path, name):
    rng = random.Random(0)
    for k, data in enumerate([b"", b"\x00" * 100, bytes(rng.randrange(256) for _ in range(4096)), b"\xff\xfe{",
                              b"SQLite format 3\x00" + b"\x00" * 200, "é,ü\n1,2\n".encode("latin-1")]):
        d = tmp_path / f"g{k}"
        d.mkdir()
        (d / name).write_bytes(data)
        assert _attempt(d / name, d, name) == "error" or data  # an empty file is never a run


_CELL = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**30, 10**30).map(str),
                  st.sampled_from(["", "nan", "inf", "-inf", "NaN", "Infinity", "1e400", "abc", "{'_type': 'x'}",
                                   " 1.5 ", "1_000", "0x10", '"quoted, comma"', "\u00e9"]),
                  st.text(max_size=8))
_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.integers(-10**40, 10**40), st.text(max_size=6)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=8)
_STEP = st.one_of(st.integers(0, 50), st.integers(-5, 2**63), st.floats(), st.text(max_size=3), st.none())


@settings(max_examples=N, **FUZZ)
@given(header=st.lists(st.sampled_from(["step", "train_loss", "val_loss", "lr-Adam/pg2", "epoch", "_step", "x", ""]),
                       min_size=1, max_size=5),
       rows=st.lists(st.lists(_CELL, min_size=0, max_size=6), max_size=12))
def test_random_csv(tmp_path_factory, header, rows):
    d = tmp_path_factory.mktemp("csv")
    p = d / "metrics.csv"
    import csv

    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    _attempt(p, d, "random csv")


@settings(max_examples=N, **FUZZ)
@given(entries=st.lists(st.one_of(
    st.fixed_dictionaries({"step": _STEP}, optional={"loss": _JSON, "eval_loss": st.floats(), "grad_norm": _JSON,
                                                     "learning_rate": st.floats(), "train_runtime": _JSON}),
    _JSON), max_size=10),
    top=st.dictionaries(st.sampled_from(["global_step", "max_steps", "epoch", "x"]), _JSON, max_size=3))
def test_random_trainer_state(tmp_path_factory, entries, top):
    d = tmp_path_factory.mktemp("hf")
    p = d / "trainer_state.json"
    p.write_text(json.dumps({**top, "log_history": entries}))
    _attempt(p, d, "random trainer_state.json", cli=COUNTS["tried"] % 5 == 0)


@settings(max_examples=N, **FUZZ)
@given(rows=st.lists(st.one_of(st.dictionaries(st.sampled_from(["_step", "train/loss", "train/global_step",
                                                                  "eval/loss", "media", "nested"]), _JSON, max_size=4),
                               st.fixed_dictionaries({"_step": st.integers(0, 30), "train/loss": st.floats()}),
                               _JSON), max_size=12),
       tail=st.sampled_from(["", "\n", '{"_step": 3, "tr']))
def test_random_jsonl(tmp_path_factory, rows, tail):
    d = tmp_path_factory.mktemp("jsonl")
    p = d / "history.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + tail)
    _attempt(p, d, "random jsonl")


def test_duplicate_and_nonmonotonic_steps_in_every_format(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    steps = [0, 5, 3, 3, 9, 1, 9]
    w = SummaryWriter(str(tmp_path / "tb"))
    for i, s in enumerate(steps):
        w.add_scalar("loss", float(i), s)
    w.close()
    (tmp_path / "metrics.csv").write_text("step,loss\n" + "".join(f"{s},{i}\n" for i, s in enumerate(steps)))
    (tmp_path / "h.jsonl").write_text("".join(json.dumps({"_step": s, "loss": i}) + "\n" for i, s in enumerate(steps)))
    (tmp_path / "trainer_state.json").write_text(json.dumps(
        {"log_history": [{"loss": i, "step": s} for i, s in enumerate(steps)]}))
    for src in ("tb", "metrics.csv", "h.jsonl", "trainer_state.json"):
        s = import_log(tmp_path / src, tmp_path / f"run-{src}")
        with open_run(tmp_path / f"run-{src}") as run:
            got = run.series("loss/train")
        assert got.steps.tolist() == [0, 1, 3, 5, 9] and got.values.tolist() == [0, 5, 3, 1, 6], src
        assert any("logged again with a different value" in n for n in s.notes), src


def test_fifo_oversized_and_large_logs(tmp_path, monkeypatch):
    fifo = tmp_path / "metrics.csv"
    os.mkfifo(fifo)
    assert _attempt(fifo, tmp_path, "fifo") == "error"
    big = tmp_path / "big" / "metrics.csv"
    big.parent.mkdir()
    n = 100_000
    big.write_text("step,train_loss,val_loss\n" + "".join(f"{i},{1.0 / (i + 1)},\n" for i in range(n)))
    with time_limit(HANG_S, Hang):
        s = import_log(big, tmp_path / "big-run")
    assert s.points == n
    monkeypatch.setitem(LIMITS, "file_bytes", 1000)
    assert _attempt(big, tmp_path, "oversized") == "error"
    monkeypatch.setitem(LIMITS, "file_bytes", 4 * 1024**3)
    monkeypatch.setitem(LIMITS, "points", 10)
    assert _attempt(big, tmp_path, "too many points") == "error"


MAPPING = (b"metrics:\n  objective: loss/train\n  'lr_group*': 'lr/AdamW/pg{1}'\n  'val/*': 'logged/val/{1}'\n"
           b"histograms:\n  'grads/*': 'grad_norm/{1}'\nignore: [wall_time]\nstep: iteration\ndefaults: true\n")
_YAML_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=12),
                                     st.sampled_from(["loss/train", "lr/{1}", "grad_norm/{2}", "{0}", "*", "x/*/y",
                                                      "weight_norm/{1}", "logged/{1-1}"])),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=10)


def _mapping_attempt(path, log, tmp):
    """Load a mapping file: it loads (and then maps a log) or fails with a ConfigError naming the file."""
    COUNTS["mapping tried"] += 1
    try:
        with time_limit(HANG_S, Hang):
            m = load_mapping(path)
            import_log(log, tmp / f"m{COUNTS['mapping tried']}", mapping=m)
    except Hang:
        COUNTS["hangs"] += 1
        raise AssertionError(f"mapping: no answer after {HANG_S} s on {path}") from None
    except DyncheckError as e:
        if path.name not in str(e) and log.name not in str(e):
            COUNTS["unclear"] += 1
            raise AssertionError(f"mapping: the error does not name the file: {e}") from None
        COUNTS["mapping clean errors"] += 1
        return
    except BaseException as e:
        COUNTS["tracebacks"] += 1
        raise AssertionError(f"mapping: {type(e).__name__}: {e}") from e
    COUNTS["mapping loaded"] += 1


@pytest.fixture(scope="module")
def loop_log(tmp_path_factory):
    p = tmp_path_factory.mktemp("loop") / "loop.csv"
    p.write_text("iteration,objective,lr_group0,val/acc,wall_time,step\n" + "".join(
        f"{i},{1.0 / (i + 1)},0.001,{i / 10},{i},{i}\n" for i in range(10)))
    return p


def test_mutated_mapping_files(tmp_path, loop_log):
    @settings(max_examples=N, **FUZZ)
    @given(ops=_MUTATIONS)
    def prop(ops):
        p = tmp_path / f"map{COUNTS['mapping tried']}.yaml"
        p.write_bytes(_mutate(MAPPING, ops))
        _mapping_attempt(p, loop_log, tmp_path)

    prop()


def test_random_mapping_files(tmp_path, loop_log):
    import yaml

    @settings(max_examples=N, **FUZZ)
    @given(doc=st.dictionaries(st.sampled_from(["metrics", "histograms", "ignore", "step", "defaults", "other"]),
                               _YAML_VALUE, max_size=4))
    def prop(doc):
        p = tmp_path / f"rmap{COUNTS['mapping tried']}.yaml"
        p.write_text(yaml.safe_dump(doc))
        _mapping_attempt(p, loop_log, tmp_path)

    prop()


def test_zz_counts():
    """Print the tallies (run last in this module)."""
    print("\nimport fuzz:", dict(COUNTS))
    assert COUNTS["tracebacks"] == 0 and COUNTS["hangs"] == 0 and COUNTS["unclear"] == 0
    assert COUNTS["tried"] >= 5 * N
