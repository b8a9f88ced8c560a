"""A killed run's data are in its one file: every flush is checkpointed into run.db, a run killed with SIGKILL loses
only the steps since its last flush, and run.db copied alone (no -wal, no -shm) opens read-only anywhere, also in a
directory its reader cannot write (tested as an unprivileged user when the tests run as root, where chmod alone
would not stop a write)."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dyncheck import open_run
from dyncheck.store import RunWriter

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SUBPROCESS_TIMEOUT = 240  # s: a bound so that a broken child never hangs CI; no assertion depends on time

TRAIN = textwrap.dedent("""
    import json, os, sys, threading
    sys.path.insert(0, sys.argv[5])
    import pytorch_lightning as pl
    from dyncheck import DynamicsMonitor
    from models import MLP, loaders, trainer

    run_dir, marker, flush_every, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class Marker(pl.Callback):  # after the monitor: its flush for this step (if due) has happened
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == kill_after:
                with open(marker + ".tmp", "w") as f:
                    json.dump({"steps_done": trainer.global_step}, f)
                os.replace(marker + ".tmp", marker)
                threading.Event().wait(300)  # the test kills us here; never outlive a test that died
                os._exit(3)

    pl.seed_everything(0)
    mon = DynamicsMonitor(dirpath=run_dir, every_n_steps=2, flush_every_n_steps=flush_every, sharpness_budget=0)
    trainer(run_dir + "-root", [mon, Marker()], max_epochs=20).fit(MLP(), *loaders(flat=True, val=False))
    os._exit(4)  # not reached: killed first
""")

# Opens a store as a user who cannot write its directory: as root (CI) it drops to nobody first, since chmod does
# not stop root. Prints what it read as JSON.
READER = textwrap.dedent("""
    import json, os, sys
    from dyncheck.store import open_run
    if os.geteuid() == 0:
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    with open_run(sys.argv[1]) as run:
        out = {name: run.series(name).steps.tolist() for name in run.metrics()}
        out["_status"] = run.meta.get("status")
        out["_private_copy"] = run._copy is not None
    print(json.dumps(out))
""")


def _env():
    env = dict(os.environ, PL_DISABLE_FORK="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def read_unprivileged(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=_env(), cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def read_only_dir():
    """A directory that others may enter (tmp_path's parents are 0700): fill it, then call ``seal()``."""
    base = Path(tempfile.mkdtemp(prefix="dyncheck-ro-"))
    base.chmod(0o755)
    d = base / "artifact"
    d.mkdir()

    def seal():
        for f in d.iterdir():
            f.chmod(0o444)
        d.chmod(0o555)
        return d

    yield d, seal
    d.chmod(0o755)
    shutil.rmtree(base, ignore_errors=True)


def _copy_only_db(src_dir: Path, dst_dir: Path) -> Path:
    shutil.copy2(src_dir / "run.db", dst_dir / "run.db")
    return dst_dir


def _write_some(w: RunWriter, start: int, n: int) -> None:
    s = np.arange(start, start + n)
    w.write({"loss/train": (s, np.exp(-s / 50.0)), "grad_norm/fc.weight": (s[::2], np.ones(s[::2].size))})


# -- the file is the store after every flush ------------------------------------------------------------------
def test_each_write_is_in_the_db_file_itself(tmp_path):
    """While the writer is still open (as in a run that is about to be killed): run.db copied alone holds every
    committed write and the metadata, and opens."""
    w = RunWriter(tmp_path / "live" / "run.db")
    w.set_meta(status="running", model={"class": "X"})
    for k in range(5):
        _write_some(w, 10 * k, 10)
        copy = _copy_only_db(tmp_path / "live", Path(tempfile.mkdtemp(dir=tmp_path)))
        with open_run(copy) as run:
            np.testing.assert_array_equal(run.series("loss/train").steps, np.arange(10 * (k + 1)))
            assert run.meta["status"] == "running" and run.meta["model"] == {"class": "X"}
    assert w.checkpoints >= 6
    assert (tmp_path / "live" / "run.db-wal").exists()  # still WAL while writing: readers never block it
    w.close()


def test_close_leaves_one_plain_file(tmp_path):
    with RunWriter(tmp_path / "run.db") as w:
        _write_some(w, 0, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]
    assert (tmp_path / "run.db").read_bytes()[18:20] == b"\x01\x01"  # rollback journal mode, not WAL
    with RunWriter(tmp_path / "run.db", mode="a") as w:  # resume: WAL again while writing
        assert (tmp_path / "run.db").read_bytes()[18:20] == b"\x02\x02"
        _write_some(w, 30, 10)
    with open_run(tmp_path) as run:
        np.testing.assert_array_equal(run.series("loss/train").steps, np.arange(40))


def test_close_with_a_reader_open_does_not_wait_and_keeps_the_file_whole(tmp_path):
    w = RunWriter(tmp_path / "run.db")
    _write_some(w, 0, 20)
    reader = open_run(tmp_path)
    assert len(reader.series("loss/train")) == 20
    w.close()  # cannot leave WAL mode while the reader has the file open: checkpointed instead
    copy = _copy_only_db(tmp_path, Path(tempfile.mkdtemp(dir=tmp_path)))
    with open_run(copy) as run:
        assert len(run.series("loss/train")) == 20
    assert len(reader.series("loss/train")) == 20
    reader.close()


def test_reader_never_writes(tmp_path):
    with RunWriter(tmp_path / "run.db") as w:
        _write_some(w, 0, 20)
    before = (tmp_path / "run.db").read_bytes()
    with open_run(tmp_path) as run:
        run.series("loss/train")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            run._con.execute("CREATE TABLE x (y)")
    assert (tmp_path / "run.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]


def test_path_with_uri_characters(tmp_path):
    d = tmp_path / "a run?x=1#frag %20"
    with RunWriter(d / "run.db") as w:
        _write_some(w, 0, 5)
    with open_run(d) as run:
        assert len(run.series("loss/train")) == 5


# -- read-only directories: as a user who cannot write them -----------------------------------------------------
def test_copied_db_alone_opens_in_a_read_only_directory(tmp_path, read_only_dir):
    """A WAL-mode run.db (its writer never closed) without -wal or -shm, in a directory the reader cannot write:
    SQLite cannot create the -shm, the reader opens the file immutable."""
    w = RunWriter(tmp_path / "run.db")
    w.set_meta(status="running")
    _write_some(w, 0, 25)
    d, seal = read_only_dir
    _copy_only_db(tmp_path, d)
    w.close()
    assert (d / "run.db").read_bytes()[18:20] == b"\x02\x02"  # WAL mode
    got = read_unprivileged(seal())
    assert got["loss/train"] == list(range(25)) and got["grad_norm/fc.weight"] == list(range(0, 25, 2))
    assert got["_status"] == "running" and not got["_private_copy"]
    assert sorted(p.name for p in d.iterdir()) == ["run.db"]


def test_wal_without_shm_in_a_read_only_directory_is_read_from_a_private_copy(tmp_path, read_only_dir):
    """Data that only the -wal holds (a writer that never checkpointed), -shm missing, directory not writable:
    the reader reads a private copy of both instead of dropping the -wal."""
    with RunWriter(tmp_path / "run.db") as w:
        _write_some(w, 0, 10)
    con = sqlite3.connect(tmp_path / "run.db", isolation_level=None)  # a plain SQLite writer, no checkpoints
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    (mid,) = con.execute("SELECT id FROM metrics WHERE name='loss/train'").fetchone()
    s = np.arange(10, 15)
    con.execute("INSERT INTO chunks(metric_id, n, step_min, step_max, steps, vals) VALUES (?,?,?,?,?,?)",
                (mid, 5, 10, 14, s.astype("<i8").tobytes(), np.ones(5).astype("<f8").tobytes()))
    d, seal = read_only_dir
    shutil.copy2(tmp_path / "run.db", d / "run.db")
    shutil.copy2(tmp_path / "run.db-wal", d / "run.db-wal")
    con.close()
    got = read_unprivileged(seal())
    assert got["loss/train"] == list(range(15)) and got["_private_copy"]
    assert sorted(p.name for p in d.iterdir()) == ["run.db", "run.db-wal"]


# -- a real training killed with SIGKILL ------------------------------------------------------------------------
def _train_and_kill(tmp_path: Path, flush_every: int, kill_after: int) -> Path:
    """Train in a subprocess, wait for the marker it writes after ``kill_after`` optimizer steps, SIGKILL it."""
    run_dir, marker = tmp_path / "run", tmp_path / "marker.json"
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), str(marker), str(flush_every),
                             str(kill_after), str(TESTS)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=_env())
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited with {proc.returncode} before its marker:\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no marker after {SUBPROCESS_TIMEOUT} s")
            time.sleep(0.05)
        assert json.loads(marker.read_text())["steps_done"] == kill_after
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        proc.stderr.close()
    return run_dir


def test_killed_training_loses_only_the_steps_since_its_last_flush(tmp_path, read_only_dir):
    flush_every, kill_after = 5, 23  # flushes after 5, 10, 15, 20 steps; killed after 23
    run_dir = _train_and_kill(tmp_path, flush_every, kill_after)
    kept = kill_after // flush_every * flush_every  # 20: steps 20, 21, 22 were never flushed
    assert (run_dir / "run.db-wal").exists()  # killed: the writer never closed

    def check(series: dict) -> None:
        assert series["loss/train"] == list(range(kept))
        assert series["grad_norm/total"] == list(range(kept))
        assert series["grad_norm/net.0.weight"] == list(range(0, kept, 2))
        assert series["_status"] == "running"  # how it ended was never recorded: the report says so

    def read(path: Path) -> dict:
        with open_run(path) as run:
            out = {n: run.series(n).steps.tolist() for n in run.metrics()}
            out["_status"] = run.meta["status"]
        return out

    d, seal = read_only_dir
    _copy_only_db(run_dir, d)
    check(read_unprivileged(seal()))  # run.db alone, directory not writable by its reader
    check(read(_copy_only_db(run_dir, Path(tempfile.mkdtemp(dir=tmp_path)))))  # run.db alone, writable
    check(read(run_dir))  # where it was written, with its -wal and -shm
