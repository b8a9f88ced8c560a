"""The CLI's output: a reader that goes away (``| head``) ends it quietly with the command's own exit code; a full
stdout is a clean error; files are written atomically and only over regular files (a symlink, FIFO, device node
or directory at the target is refused, exit 2, naming the path)."""

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dyncheck import DyncheckError, open_run
from dyncheck._io import write_text
from dyncheck.cli import main
from dyncheck.report import write_report
from dyncheck.store import RunWriter
from timelimit import time_limit

REPO = Path(__file__).resolve().parent.parent
N = 400
TIMEOUT = 120  # s, for subprocesses: a bound against hangs, no assertion depends on it


def _make_run(path: Path, nan_from: int | None = None) -> Path:
    s = np.arange(N)
    loss = 2.3 * np.exp(-s / 60) + 0.05
    if nan_from is not None:
        loss[nan_from:] = np.nan
    with RunWriter(path / "run.db") as w:
        w.write({"loss/train": (s, loss)})
        w.set_meta(status="finished")
    return path


@pytest.fixture
def healthy(tmp_path):
    return _make_run(tmp_path / "healthy")


@pytest.fixture
def failing(tmp_path):
    return _make_run(tmp_path / "failing", nan_from=200)


def no_hang(seconds: int = 30):
    """Fail instead of blocking forever (opening a FIFO for writing blocks until a reader comes)."""
    return time_limit(seconds)


def _cli(args, stdout) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "dyncheck.cli", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=TIMEOUT, env=env)


def _closed_pipe() -> int:
    """The write end of a pipe whose reader has gone (what `| head` leaves once head exits)."""
    r, w = os.pipe()
    os.close(r)
    return w


# -- standard output --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, code", [
    (["check", "{failing}"], 1),  # short output: the pipe breaks at the final flush
    (["check", "{healthy}", "--format", "junit"], 0),
    (["rules", "list", "--format", "json"], 0),  # longer than the buffer: it breaks inside print()
])
def test_broken_pipe_exits_quietly_with_the_commands_code(args, code, healthy, failing):
    args = [a.format(healthy=healthy, failing=failing) for a in args]
    w = _closed_pipe()
    try:
        proc = _cli(args, stdout=w)
    finally:
        os.close(w)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


def test_broken_pipe_in_process(failing, monkeypatch):
    w = _closed_pipe()
    stream = open(w, "w", buffering=1024, encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        assert main(["check", str(failing)]) == 1
        assert main(["rules", "list", "--format", "json"]) == 0
        assert sys.stdout is stream  # restored
        stream.write("x" * 10_000)
        stream.flush()  # fd 1 of this stream now goes to os.devnull: nothing left that could fail at exit
    finally:
        stream.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_stdout_is_a_clean_error(healthy, monkeypatch, capsys):
    with open("/dev/full", "w") as full:
        proc = _cli(["check", str(healthy)], stdout=full)
    assert proc.returncode == 2
    assert proc.stderr == "dyncheck check: error: cannot write to standard output: no space left on the device\n"
    stream = open("/dev/full", "w", buffering=256, encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        assert main(["rules", "list", "--format", "json"]) == 2
    finally:
        stream.close()
    assert "cannot write to standard output: no space left on the device" in capsys.readouterr().err


# -- files: only over regular files, atomically ------------------------------------------------------------------
def _targets(tmp_path: Path):
    """A symlink (to a file that must stay as it is), a FIFO, a directory, and a character device when this process
    may create one (root with CAP_MKNOD): each of them must be refused and left alone."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    link = tmp_path / "link.html"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.html"
    dangling.symlink_to(tmp_path / "nowhere" / "x.html")
    fifo = tmp_path / "fifo.html"
    os.mkfifo(fifo)
    directory = tmp_path / "dir.html"
    directory.mkdir()
    out = [(link, "a symbolic link"), (dangling, "a symbolic link"), (fifo, "a FIFO"), (directory, "a directory")]
    dev = tmp_path / "null-device"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the same device as /dev/null
        out.append((dev, "a character device"))
    except (PermissionError, OSError):
        pass
    return victim, out


def _unchanged(victim: Path, targets) -> None:
    assert victim.read_text() == "keep me\n"
    for path, kind in targets:
        st = os.lstat(path)
        assert {"a symbolic link": stat.S_ISLNK, "a FIFO": stat.S_ISFIFO, "a directory": stat.S_ISDIR,
                "a character device": stat.S_ISCHR}[kind](st.st_mode), path
    assert not [p for p in victim.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("command", ["report", "check", "compare", "baseline"])
def test_outputs_refuse_what_is_not_a_regular_file(command, healthy, tmp_path, capsys):
    base = tmp_path / "base.yaml"
    if command == "compare":
        assert main(["baseline", str(healthy), "-o", str(base)]) == 0
    victim, targets = _targets(tmp_path)
    args = {"report": ["report", str(healthy), "--no-checks"], "check": ["check", str(healthy)],
            "compare": ["compare", str(healthy), "--baseline", str(base)],
            "baseline": ["baseline", str(healthy)]}[command]
    capsys.readouterr()
    for path, kind in targets:
        with no_hang():
            assert main([*args, "-o", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert f"dyncheck {command}: error: cannot write the " in err and f"{path}: it is {kind}" in err, err
    _unchanged(victim, targets)


def test_default_report_path_refused_when_it_is_a_symlink(healthy, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (healthy / "report.html").symlink_to(victim)
    assert main(["report", str(healthy), "--no-checks"]) == 2
    assert f"{healthy / 'report.html'}: it is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "keep me\n"
    with open_run(healthy) as run, pytest.raises(DyncheckError, match="it is a symbolic link"):
        write_report(run, rules=None)


def test_outputs_are_written_atomically_over_regular_files(healthy, tmp_path, capsys):
    out = tmp_path / "deep" / "er" / "check.json"  # parents are created
    assert main(["check", str(healthy), "--format", "json", "-o", str(out)]) == 0
    assert out.read_text().startswith("{")
    out.chmod(0o640)
    out.write_text("old\n")
    assert main(["check", str(healthy), "--format", "junit", "-o", str(out)]) == 0
    assert out.read_text().startswith("<?xml") and stat.S_IMODE(out.stat().st_mode) == 0o640
    report = tmp_path / "r.html"
    assert main(["report", str(healthy), "--no-checks", "-o", str(report)]) == 0
    assert "<html" in report.read_text()
    base = tmp_path / "b.yaml"
    assert main(["baseline", str(healthy), "-o", str(base)]) == 0 and "loss/train.final" in base.read_text()
    new = tmp_path / "new.txt"
    write_text(new, "x")
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in out.parent.iterdir()) == ["check.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DyncheckError, match=f"cannot write the output to {target}: no space left on the device"):
        write_text(target, "new text " * 1000)
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_unwritable_parent_is_a_clean_error(tmp_path, capsys, healthy):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["check", str(healthy), "-o", str(blocker / "out.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dyncheck check: error: cannot write the output (-o) to {blocker / 'out.txt'}: "), err
    with pytest.raises(DyncheckError, match="cannot write the report to"):
        write_report(healthy, blocker / "r.html", rules=None)
