"""Writing output files safely: the one helper every dyncheck writer uses (report HTML, baselines, ``-o`` outputs).

:func:`write_text` writes to a temporary file in the target's directory and moves it into place with
:func:`os.replace`, so a reader never sees half a file and a failed write leaves the old file as it was. It writes
only over a regular file or over nothing: a symbolic link, FIFO, device node, socket or directory at the target is
refused with a :class:`~dyncheck.errors.DyncheckError` naming the path (replacing it would, say, turn ``/dev/full``
into a regular file or write through a link to somewhere else).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from .errors import DyncheckError

__all__ = ["check_target", "write_text"]

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_target(path: str | os.PathLike, what: str = "output") -> os.stat_result | None:
    """Raise :class:`DyncheckError` unless ``path`` is a regular file or does not exist; returns its ``lstat``
    (None when it does not exist)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DyncheckError(f"cannot write the {what} to {path}: {exc.strerror or exc}") from None
    for test, kind in _KINDS:
        if test(st.st_mode):
            hint = " (give a file name inside it)" if kind == "a directory" else \
                " (leave out -o to write to standard output)" if what == "output (-o)" else ""
            raise DyncheckError(f"cannot write the {what} to {path}: it is {kind}; dyncheck writes only over a "
                                f"regular file or a path that does not exist{hint}")
    if not stat.S_ISREG(st.st_mode):  # pragma: no cover - every kind is listed above
        raise DyncheckError(f"cannot write the {what} to {path}: it is not a regular file")
    return st


def write_text(path: str | os.PathLike, text: str, *, what: str = "output") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a temporary file beside it, flushed to disk, then
    :func:`os.replace`. Missing parent directories are created. An existing regular file keeps its permission
    bits; a new one gets the usual ``0o666`` less the umask. Refuses anything at ``path`` that is not a regular
    file; every failure is a :class:`DyncheckError` that names the path (``what`` says what was being written)."""
    path = Path(path)
    st = check_target(path, what)
    parent = path.parent
    tmp: Path | None = None

    def fail(exc: OSError) -> DyncheckError:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "no space left on the device"
        return DyncheckError(f"cannot write the {what} to {path}: {reason}")

    try:
        parent.mkdir(parents=True, exist_ok=True)
        data = text.encode("utf-8")
        for _ in range(10):  # a fresh name; O_EXCL never opens something that is already there
            tmp = parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
                break
            except FileExistsError:
                tmp = None
        else:  # pragma: no cover - 10 collisions of 32 random bits
            raise DyncheckError(f"cannot write the {what} to {path}: no free temporary name in {parent}")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if st is not None:
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.fsync(fd)
        finally:
            os.close(fd)
        check_target(path, what)  # still nothing but a regular file there (or nothing)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise fail(exc) from None
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
    try:  # make the rename itself durable; best effort (some file systems refuse to open directories)
        dfd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path
