"""Which runs the run arguments of ``dyncheck check``, ``dyncheck export`` and ``dyncheck report --compare`` name.

Each argument is, in this order:

- a **run**: a directory holding ``run.db`` (:data:`~dyncheck.store.STORE_FILENAME`) or a ``.db`` file;
- a **log to import** (TensorBoard log directory or event file, Lightning ``metrics.csv``, ``trainer_state.json``,
  W&B export; :func:`dyncheck.importers.looks_like_log`), named directly;
- a **directory of runs**: every directory below it that holds ``run.db`` (found recursively; a run directory is
  not searched further, symbolic links to directories are not followed), in natural path order. Logs below it are
  not picked up: name them (or a glob over them) directly;
- a **glob** (``'runs/*/'``, ``'sweeps/**/dyncheck'``, quoted so that the shell leaves it) that names no existing
  path: each path it matches is taken as above; matches that are neither runs nor logs nor hold runs are skipped.

A run reached twice (two arguments, overlapping globs) is taken once. An argument that names nothing -- a missing
path, a glob that matches nothing, a directory that holds no run, a file that is neither a run nor a log -- is a
:class:`~dyncheck.errors.ConfigError` naming it.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import ConfigError
from .store import STORE_FILENAME

__all__ = ["RunRef", "discover_runs", "is_glob", "walk_runs"]

_GLOB = re.compile(r"[*?\[]")
_LOGS = "a log to import (TensorBoard, Lightning metrics.csv, trainer_state.json, W&B export)"


@dataclass(frozen=True)
class RunRef:
    """One run found: its ``path`` (as given or as found below a directory argument), ``kind`` (``run`` or
    ``log``), and the argument that named it."""

    path: Path
    kind: str
    arg: str

    @property
    def name(self) -> str:
        """How outputs name the run: its path as given or found (``runs/lr0.1/seed3``)."""
        return str(self.path)


def is_glob(arg: str) -> bool:
    """Whether ``arg`` is a pattern to expand (it holds ``*``, ``?`` or ``[`` and names no existing path)."""
    return bool(_GLOB.search(arg)) and not os.path.lexists(arg)


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def walk_runs(root: str | os.PathLike) -> list[Path]:
    """Every directory at or below ``root`` that holds ``run.db``, in natural order; a run directory is not
    searched further and symbolic links to directories are not followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if STORE_FILENAME in filenames or STORE_FILENAME in dirnames:
            found.append(Path(dirpath))
            dirnames[:] = []
            continue
        dirnames.sort()
    return sorted(found, key=_natural)


def _classify(p: Path, arg: str, logs: bool) -> list[RunRef]:
    from .importers import looks_like_log

    if p.is_dir():
        if os.path.lexists(p / STORE_FILENAME):
            return [RunRef(p, "run", arg)]
        if logs and looks_like_log(p):
            return [RunRef(p, "log", arg)]
        return [RunRef(d, "run", arg) for d in walk_runs(p)]
    if p.suffix == ".db":
        return [RunRef(p, "run", arg)]
    if logs and looks_like_log(p):
        return [RunRef(p, "log", arg)]
    return []


def discover_runs(args: Sequence[str], *, what: str = "RUN", logs: bool = True) -> list[RunRef]:
    """The runs that ``args`` name (see the module's docstring); ``what`` is the argument's name in errors
    (``RUN``, ``--compare``); ``logs``: whether a log to import is accepted."""
    expected = f"a run directory (holding {STORE_FILENAME}), a .db file, a directory of runs" + \
        (f", {_LOGS}" if logs else "") + " or a glob over them"
    out: list[RunRef] = []
    seen: set[str] = set()
    for arg in args:
        if not arg:
            raise ConfigError(f"argument {what}: an empty path; expected {expected}")
        if is_glob(arg):
            matches = sorted(glob.glob(arg, recursive=True), key=lambda m: _natural(Path(m)))
            if not matches:
                raise ConfigError(f"argument {what} {arg!r}: the pattern matches nothing; expected {expected}")
            found = [r for m in matches for r in _classify(Path(m), arg, logs)]
            if not found:
                raise ConfigError(f"argument {what} {arg!r}: none of the {len(matches)} paths it matches is a run "
                                  f"or holds one (a run directory holds {STORE_FILENAME}); expected {expected}")
        else:
            p = Path(arg)
            if not os.path.lexists(p):
                raise ConfigError(f"argument {what} {arg}: no such file or directory; expected {expected}")
            found = _classify(p, arg, logs)
            if not found:
                kind = "directory holds no run (no " + STORE_FILENAME + " in it or in any directory below it)" \
                    if p.is_dir() else "file is neither a run store (.db) nor " + (_LOGS if logs else "a run")
                raise ConfigError(f"argument {what} {arg}: this {kind}; expected {expected}")
        for ref in found:
            store = ref.path / STORE_FILENAME if ref.kind == "run" and ref.path.is_dir() else ref.path
            try:  # a run directory and its run.db are one run
                key = str(store.resolve())
            except OSError:
                key = str(store)
            if key not in seen:
                seen.add(key)
                out.append(ref)
    return out
