import sqlite3
import threading

import numpy as np
import pytest

from dyncheck import StoreError, open_run
from dyncheck.store import SCHEMA_VERSION, RunWriter


def test_roundtrip_sorted_and_glob(tmp_path):
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": ([0, 1, 2], [3.0, 2.0, float("nan")]), "grad_norm/a.weight": ([0], [1.5])})
        w.write({"loss/train": ([3, 4], [1.0, float("inf")]), "grad_norm/b.weight": ([0], [2.5])})
        w.set_meta(model={"class": "X"}, status="running")
    run = open_run(tmp_path)
    s = run.series("loss/train")
    assert s.steps.dtype == np.int64 and s.values.dtype == np.float64
    np.testing.assert_array_equal(s.steps, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(s.values, [3.0, 2.0, np.nan, 1.0, np.inf])
    assert run.metrics("grad_norm/*") == ["grad_norm/a.weight", "grad_norm/b.weight"]
    assert run.metrics() == ["grad_norm/a.weight", "grad_norm/b.weight", "loss/train"]
    assert run.meta["model"] == {"class": "X"} and run.meta["schema_version"] == SCHEMA_VERSION
    assert "loss/train" in run and "loss/val" not in run


def test_last_write_wins_and_truncate(tmp_path):
    w = RunWriter(tmp_path / "run.db")
    w.write({"m": ([0, 1, 2], [0.0, 1.0, 2.0])})
    seq = w.last_seq()
    w.write({"m": ([3, 4], [3.0, 4.0])})
    w.write({"m": ([2, 3], [20.0, 30.0])})  # rewritten steps: last write wins
    s = open_run(tmp_path).series("m")
    np.testing.assert_array_equal(s.steps, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(s.values, [0, 1, 20, 30, 4])
    assert w.truncate(seq) == 2
    s = open_run(tmp_path).series("m")
    np.testing.assert_array_equal(s.steps, [0, 1, 2])
    w.close()


def test_unsorted_block_is_sorted(tmp_path):
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"m": ([5, 1, 3], [5.0, 1.0, 3.0])})
    s = open_run(tmp_path).series("m")
    np.testing.assert_array_equal(s.steps, [1, 3, 5])
    np.testing.assert_array_equal(s.values, [1.0, 3.0, 5.0])


def test_readable_while_writing(tmp_path):
    w = RunWriter(tmp_path / "run.db")
    w.write({"m": ([0], [1.0])})
    run = open_run(tmp_path)  # opened while the writer holds the file
    assert len(run.series("m")) == 1
    w.write({"m": ([1], [2.0])})
    assert len(run.series("m")) == 2
    errors = []

    def reader():
        try:
            for _ in range(50):
                assert len(open_run(tmp_path).series("m")) >= 2
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    for i in range(2, 200):
        w.write({"m": ([i], [float(i)])})
    t.join()
    assert not errors
    w.close()


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(StoreError, match="no run store at"):
        open_run(tmp_path / "missing")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a dyncheck run store"):
        open_run(tmp_path / "junk.db")
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE t (x)")
    con.close()
    with pytest.raises(StoreError, match="not a dyncheck run store"):
        open_run(tmp_path / "other.db")
    with RunWriter(tmp_path / "run.db") as w:
        w.write({"loss/train": ([0], [1.0])})
    with pytest.raises(StoreError, match=r"'loss/vall' was not recorded.*loss/train"):
        open_run(tmp_path).series("loss/vall")
    with pytest.raises(ValueError, match="2 steps but 1 values"):
        RunWriter(tmp_path / "x.db").write({"m": ([0, 1], [1.0])})


def test_newer_schema_refused(tmp_path):
    with RunWriter(tmp_path / "run.db") as w:
        w.set_meta(schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="schema version"):
        open_run(tmp_path)


def test_sync_every_s_still_puts_every_write_in_the_db_file(tmp_path, monkeypatch):
    """The monitor's writer syncs to disk at most every S seconds; each write still reaches run.db itself (a copy
    of the file alone has it), and the periodic sync and the close sync."""
    import shutil

    from dyncheck import store as S

    w = S.RunWriter(tmp_path / "live" / "run.db", sync_every_s=1000.0)
    synced = []
    real = w.checkpoint

    def spy():
        synced.append(w._con.execute("PRAGMA synchronous").fetchone()[0])
        return real()

    monkeypatch.setattr(w, "checkpoint", spy)
    for k in range(3):
        w.write({"loss/train": (np.arange(10 * k, 10 * k + 10), np.ones(10))})
        (tmp_path / f"copy{k}").mkdir()
        shutil.copy2(tmp_path / "live" / "run.db", tmp_path / f"copy{k}" / "run.db")
        with S.open_run(tmp_path / f"copy{k}") as run:
            assert len(run.series("loss/train")) == 10 * (k + 1)
    assert synced == [0, 0, 0]  # synchronous=OFF between syncs
    before = w._synced
    w.sync_every_s = 0.0  # due: this checkpoint syncs
    w.write({"loss/train": (np.arange(30, 31), np.ones(1))})
    assert w._synced > before and w._con.execute("PRAGMA synchronous").fetchone()[0] == 0
    w.close()
    with S.open_run(tmp_path / "live") as run:
        assert len(run.series("loss/train")) == 31
