"""`dyncheck export --parquet`: the dataset's tables against the run stores they come from (brute force, through
real DuckDB queries), the README's fleet example as shown, bad input."""

import contextlib
import io
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

duckdb = pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from dyncheck.checks import evaluate  # noqa: E402
from dyncheck.cli import main  # noqa: E402
from dyncheck.export import MARKER, export_parquet, family_of  # noqa: E402
from dyncheck.store import RunWriter, open_run  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"
STEPS, EVERY = 20_000, 20


def fleet_run(path, *, optimizer="SGD", lr=0.1, spike_at=None, status="finished", seed=0, nan_at=None):
    """A synthetic run of 20,000 steps recorded every 20: loss (with a 300x one-point spike at ``spike_at``, which
    the default loss-spike check reports), validation loss, gradient norms, learning rate; meta as the monitor
    writes it."""
    rng = np.random.default_rng(seed)
    s = np.arange(0, STEPS, EVERY, dtype=np.int64)
    loss = 2.3 * np.exp(-s / 4000) + 0.05 + 0.02 * rng.standard_normal(s.size) ** 2
    if spike_at is not None:
        loss[np.searchsorted(s, spike_at)] *= 300.0
    g = 1.0 + 0.1 * rng.standard_normal(s.size) ** 2
    if nan_at is not None:
        g[np.searchsorted(s, nan_at)] = np.nan
    v = np.arange(499, STEPS, 500)
    with RunWriter(path / "run.db") as w:
        w.write({"loss/train": (s, loss), "loss/val": (v, 2.3 * np.exp(-v / 4000) + 0.08),
                 "grad_norm/total": (s, g), f"lr/{optimizer}/pg0": (s, np.full(s.size, lr)),
                 "grad_norm/fc1.weight": (s[::5], g[::5] / 2), "update_ratio/fc1.weight": (s[::5], lr * g[::5]),
                 "custom": (s[:10], np.arange(10.0))})
        w.set_meta(status=status, host="h", started=1.7e9, duration_s=60.0,
                   model={"class": "MLP", "n_parameters": 1000, "n_trainable": 1000},
                   optimizers=[{"name": optimizer, "class": optimizer, "param_groups": [
                       {"lr": lr, "weight_decay": 0.0, **({"momentum": 0.9} if optimizer == "SGD" else
                                                          {"betas": [0.9, 0.999]})}]}],
                   hyperparameters={"batch_size": 64, "seed": seed}, trainer={"max_steps": STEPS})
    return path


def _records(con, sql, params=()):
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def test_tables_hold_what_the_stores_hold(tmp_path, capsys, monkeypatch):
    """Every point of every series, the runs table's meta columns and verdicts, the findings: each against the
    store and evaluate() directly. One run is a real Lightning fit."""
    from tinyfit import fit

    runs = tmp_path / "runs"
    fit(runs / "lightning")
    fleet_run(runs / "adam", optimizer="Adam", lr=1e-3, spike_at=15_000, seed=1, nan_at=5_000)
    fleet_run(runs / "sgd", status="running", lr=0.01, seed=2)
    out = tmp_path / "fleet"
    assert main(["export", str(runs), "--parquet", str(out)]) == 0
    printed = capsys.readouterr().out
    families = set()
    for d in ("lightning", "adam", "sgd"):
        with open_run(runs / d) as run:  # the rule, written out: the name before its first '/', else _other
            families |= {m.split("/")[0] if "/" in m else "_other" for m in run.metrics()}
    assert {"_other", "loss", "lr", "grad_norm", "update_ratio", "act", "weight_norm"} <= families
    assert printed.startswith(f"{out}: 3 runs, ") and f"(families: {', '.join(sorted(families))})" in printed
    assert json.loads((out / MARKER).read_text())["runs"] == 3
    monkeypatch.chdir(tmp_path)
    con = duckdb.connect()
    series = "read_parquet('fleet/series/*/*.parquet', hive_partitioning = true)"
    ids = [str(runs / n) for n in ("adam", "lightning", "sgd")]
    total = 0
    for rid in ids:
        with open_run(rid) as run:
            for m in run.metrics():
                s = run.series(m)
                got = con.execute(f"SELECT step, value, family FROM {series} WHERE run_id = ? AND metric = ? "
                                  f"ORDER BY step", [rid, m]).fetchall()
                assert [r[0] for r in got] == s.steps.tolist(), (rid, m)
                np.testing.assert_array_equal(np.array([r[1] for r in got], float), s.values)  # NaN kept
                assert {r[2] for r in got} == {family_of(m)}
                total += len(s)
    assert con.execute(f"SELECT count(*) FROM {series}").fetchone()[0] == total
    assert {p.name for p in (out / "series").iterdir()} == {f"family={f}" for f in families}
    rows = {r["run_id"]: r for r in _records(con, "SELECT * FROM 'fleet/runs/*.parquet'")}
    assert sorted(rows) == ids
    real = rows[str(runs / "lightning")]
    with open_run(runs / "lightning") as run:
        meta, result = run.meta, evaluate(run, "default")
        last = max(int(run.series(m).steps[-1]) for m in run.metrics())
    assert (real["optimizer"], real["lr"], real["momentum"]) == ("SGD", 0.05, 0.9)
    assert real["model"] == meta["model"]["class"] and real["model"].endswith("Tiny")
    assert real["n_parameters"] == meta["model"]["n_parameters"] and real["status"] == "finished"
    assert real["last_step"] == last and real["steps"] == last + 1 == 100
    assert real["verdict"] == result.verdict() and real["trainer_max_steps"] == 100
    assert real["path"] == str((runs / "lightning").resolve()) and real["source"] == "run"
    adam = rows[str(runs / "adam")]
    assert (adam["optimizer"], adam["lr"], json.loads(adam["betas"]), adam["hp_batch_size"]) == \
        ("Adam", 1e-3, [0.9, 0.999], 64)
    assert rows[str(runs / "sgd")]["verdict"] == "unjudged" and rows[str(runs / "sgd")]["status"] == "running"
    assert rows[str(runs / "sgd")]["not_judged"].startswith("the run did not finish")
    with open_run(runs / "adam") as run:
        expected = sorted((f.check, f.severity, f.metric, f.first_step, f.last_step)
                          for f in evaluate(run, "default").findings)
    assert ("loss-spike", "warning", "loss/train", 15_000, 15_000) in expected
    assert ("non-finite", "error", "grad_norm/total", 5_000, 5_000) in expected
    flat = con.execute("SELECT check_id, severity, metric, first_step, last_step FROM 'fleet/findings/*.parquet' "
                       "WHERE run_id = ? ORDER BY ALL", [str(runs / "adam")]).fetchall()
    nested = con.execute("SELECT f.check_id, f.severity, f.metric, f.first_step, f.last_step FROM "
                         "(SELECT unnest(findings) AS f FROM 'fleet/runs/*.parquet' WHERE run_id = ?) ORDER BY ALL",
                         [str(runs / "adam")]).fetchall()
    assert flat == nested == expected and adam["verdict"] == "fail" and adam["first_diagnosis"] == "non-finite"


def _readme_blocks():
    text = README.read_text(encoding="utf-8")
    sec = text.split("### Exporting a fleet to Parquet", 1)[1].split("\n## ", 1)[0]
    shell = re.findall(r"```(?:bash|sh)?\n(dyncheck export .*?)\n```", sec, re.S)[0]
    python = re.findall(r"```python\n(.*?)```", sec, re.S)[0]
    shown = re.findall(r"```text\n(.*?)```", sec, re.S)[0]
    return shell, python, shown


def test_readme_fleet_query_runs_as_shown(tmp_path, monkeypatch, capsys):
    """The README's export command and DuckDB query, as shown, over runs whose spikes are known: it prints what
    the README shows."""
    shell, python, shown = _readme_blocks()
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")
    fleet_run(runs / "lr-sweep" / "sgd-0.1", optimizer="SGD", lr=0.1, spike_at=12_000, seed=1)
    fleet_run(runs / "lr-sweep" / "sgd-0.03", optimizer="SGD", lr=0.03, spike_at=3_000, seed=2)  # before 10k
    fleet_run(runs / "lr-sweep" / "sgd-0.01", optimizer="SGD", lr=0.01, seed=3)
    fleet_run(runs / "adam" / "seed-0", optimizer="Adam", lr=1e-3, spike_at=16_000, seed=4)
    fleet_run(runs / "adam" / "seed-1", optimizer="Adam", lr=1e-3, spike_at=11_000, seed=5)
    fleet_run(runs / "adamw" / "seed-0", optimizer="AdamW", lr=1e-3, seed=6)
    # the table in "Checking many runs" is this fleet's
    table = re.findall(r"```text\n(.*?)```", README.read_text(encoding="utf-8").split(
        "### Checking many runs", 1)[1], re.S)[0]
    assert main(["check", "runs/"]) == 0
    assert capsys.readouterr().out.strip() == table.strip()
    for line in shell.splitlines():
        assert main(shlex.split(line)[1:]) == 0, line
    capsys.readouterr()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(python, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    assert buf.getvalue().strip() == shown.strip()


def test_bad_input_is_a_clean_error_naming_the_argument(tmp_path, capsys):
    runs = tmp_path / "runs"
    fleet_run(runs / "a")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    cases = [(["export", str(tmp_path / "empty"), "--parquet", str(tmp_path / "o")],
              f"argument RUN {tmp_path / 'empty'}: this directory holds no run"),
             (["export", str(runs), "--parquet", str(tmp_path / "file" / "sub")],
              f"--parquet {tmp_path / 'file' / 'sub'}: cannot write the dataset there: {tmp_path / 'file'} is not a "
              f"directory"),
             (["export", str(runs), "--parquet", str(tmp_path / "file")],
              f"--parquet {tmp_path / 'file'}: is not a directory"),
             (["export", str(runs), "--parquet", str(keep)],
              f"--parquet {keep}: the directory holds other files (notes.txt) and no {MARKER}"),
             (["export", str(runs), "--parquet", str(tmp_path / "o"), "--no-checks", "--rules", "default"],
              "--no-checks and --rules exclude each other")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert os.listdir(keep) == ["notes.txt"] and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:
        main(["export", str(runs)])
    assert e.value.code == 2 and "--parquet" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_export_replaces_a_previous_export_and_records_unreadable_runs(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    fleet_run(runs / "a")
    fleet_run(runs / "b", optimizer="Adam", lr=1e-3)
    out = tmp_path / "fleet"
    summary = export_parquet([runs / "a"], out, rules=None)
    assert summary.runs == 1 and summary.findings == 0
    (runs / "broken").mkdir()
    (runs / "broken" / "run.db").write_bytes(b"garbage")
    assert main(["export", str(runs), "--parquet", str(out), "--no-checks"]) == 2  # the others are written
    cap = capsys.readouterr()
    assert f"dyncheck export: error: {runs / 'broken'}: " in cap.err and "1 run could not be read" in cap.out
    monkeypatch.chdir(tmp_path)
    con = duckdb.connect()
    got = con.execute("SELECT run_id, verdict, error IS NOT NULL, n_points FROM 'fleet/runs/*.parquet' "
                      "ORDER BY run_id").fetchall()
    with open_run(runs / "a") as run:
        points = sum(len(run.series(m)) for m in run.metrics())
    assert got == [(str(runs / "a"), None, False, points), (str(runs / "b"), None, False, points),
                   (str(runs / "broken"), "error", True, None)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet", "runs"]  # no temporary or old directory left
