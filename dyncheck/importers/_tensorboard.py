"""TensorBoard event files, read with TensorBoard's own ``EventAccumulator`` (the optional ``tensorboard``
package: ``pip install 'dyncheck[tensorboard]'``).

Read: scalars (``add_scalar``: ``simple_value`` summaries; and TF2-style scalar tensors, plugin ``scalars``) and
histograms (``add_histogram``: ``HistogramProto``), each histogram as its L2 norm, ``sqrt(sum_squares)`` -- the norm
of the tensor it summarised, exact, not estimated from the buckets. Every event is kept (no reservoir sampling,
no purging of "orphaned" steps: a resumed run's repeated steps keep the value logged last, said in a note). Images,
audio, text, graphs and TF2 histograms (bucket counts without a sum of squares) are left out with a note.

A directory is searched for ``events.out.tfevents.*`` files; they must all lie in one directory (one run). Several
files there (a resumed run) are read in name order, as TensorBoard reads them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ._common import LIMITS, RawLog, check_file
from ._mapping import Mapping

EVENT_GLOB = "events.out.tfevents.*"
MAX_EVENT_FILES = 10_000


def event_files(path: Path) -> list[Path]:
    """The event files under ``path`` (itself when it is one), sorted; walking at most ``MAX_EVENT_FILES``."""
    if path.is_file():
        return [path]
    out: list[Path] = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("events.out.tfevents."):
                out.append(Path(root) / name)
                if len(out) > MAX_EVENT_FILES:
                    raise SourceError(f"{path}: more than {MAX_EVENT_FILES:,} TensorBoard event files; give the "
                                      f"directory of one run")
    return out


def _accumulator() -> Any:
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError as exc:
        raise SourceError(f"reading TensorBoard event files needs the tensorboard package ({exc}); install it with: "
                          f"pip install 'dyncheck[tensorboard]'") from None
    return event_accumulator


def read_tensorboard(path: Path, mapping: Mapping) -> RawLog:
    ea_mod = _accumulator()
    files = event_files(path)
    if not files:
        raise SourceError(f"{path}: no TensorBoard event files ({EVENT_GLOB}) in it or below it")
    dirs = sorted({f.parent for f in files})
    if len(dirs) > 1:
        shown = ", ".join(str(d) for d in dirs[:5]) + (", ..." if len(dirs) > 5 else "")
        raise SourceError(f"{path}: event files of {len(dirs)} runs ({shown}); dyncheck imports one run: give one of "
                          f"these directories (or one event file)")
    total = 0
    for f in files:
        total += check_file(f, "a TensorBoard event file")
    if total > LIMITS["file_bytes"]:
        raise SourceError(f"{path}: {total:,} bytes of event files; dyncheck imports at most {LIMITS['file_bytes']:,}")
    target = str(files[0]) if path.is_file() else str(dirs[0])
    guidance = {ea_mod.SCALARS: 0, ea_mod.HISTOGRAMS: 0, ea_mod.TENSORS: 0, ea_mod.IMAGES: 1,
                ea_mod.AUDIO: 1, ea_mod.COMPRESSED_HISTOGRAMS: 1}
    raw = RawLog("tensorboard", path)
    tb_log = logging.getLogger("tensorboard")
    old_level, old_propagate = tb_log.level, tb_log.propagate
    stops = _Stops()
    # the reader stops at a damaged or truncated record and says so only in a debug message: catch it
    tb_log.setLevel(logging.DEBUG)
    tb_log.propagate = False
    tb_log.addHandler(stops)
    try:
        acc = ea_mod.EventAccumulator(target, size_guidance=guidance, purge_orphaned_data=False)
        acc.Reload()
        for message in stops.messages:
            m = re.fullmatch(r"Truncated record in (.*?) \((.*)\)", message, re.DOTALL)
            where, why = (m.group(1), m.group(2)) if m else (target, message)
            if "crc" in why.lower() or "corrupt" in why.lower():
                raise SourceError(f"{where}: the event file is damaged ({why}): the events after the damaged "
                                  f"record cannot be read, and dyncheck does not import part of a damaged log")
            raw.notes.append(f"{where}: the last record is incomplete (still being written, or cut off): left out")
        tags = acc.Tags()
        for tag in tags.get(ea_mod.SCALARS, []):
            for ev in acc.Scalars(tag):
                raw.scalar(tag, _step(ev.step, path, tag), float(ev.value))
                raw.times.append(float(ev.wall_time))
        for tag in tags.get(ea_mod.HISTOGRAMS, []):
            for ev in acc.Histograms(tag):
                ss = float(ev.histogram_value.sum_squares)
                raw.histogram(tag, _step(ev.step, path, tag), math.sqrt(ss) if ss >= 0 else math.nan)
                raw.times.append(float(ev.wall_time))
        left: list[str] = []
        tensor_tags = tags.get(ea_mod.TENSORS, [])
        if tensor_tags:
            from tensorboard.util import tensor_util

            for tag in tensor_tags:
                plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
                if plugin != "scalars":
                    left.append(f"{tag} ({plugin or 'tensor'})")
                    continue
                for ev in acc.Tensors(tag):
                    arr = tensor_util.make_ndarray(ev.tensor_proto)
                    if arr.size != 1:
                        left.append(f"{tag} (a scalar-plugin tensor of {arr.size} values)")
                        break
                    raw.scalar(tag, _step(ev.step, path, tag), float(arr.reshape(-1)[0]))
                    raw.times.append(float(ev.wall_time))
        for kind in (ea_mod.IMAGES, ea_mod.AUDIO):
            left += [f"{t} ({kind})" for t in tags.get(kind, [])]
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - the reader's own errors on a damaged file (DataLossError, DecodeError..)
        raise SourceError(f"{target}: cannot read the TensorBoard events: {type(exc).__name__}: "
                          f"{str(exc)[:200] or 'no detail'} (is the file damaged or not an event file?)") from None
    finally:
        tb_log.removeHandler(stops)
        tb_log.setLevel(old_level)
        tb_log.propagate = old_propagate
    if left:
        raw.notes.append("left out (not scalars or histograms with a sum of squares): " + ", ".join(sorted(left)[:10])
                         + (", ..." if len(left) > 10 else ""))
    raw.rows = sum(len(s) for s, _ in raw.scalars.values()) + sum(len(s) for s, _ in raw.histograms.values())
    raw.meta["event_files"] = [str(f) for f in files]
    raw.status_reason = "TensorBoard event files do not say whether training finished"
    return raw


class _Stops(logging.Handler):
    """Collects the reader's "Truncated record in FILE (why)" messages."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a message that cannot be formatted is not one of these
            return
        if message.startswith("Truncated record") and len(self.messages) < 100:
            self.messages.append(message[:300])


def _step(step: Any, path: Path, tag: str) -> int:
    s = int(step)
    if s < 0 or s > LIMITS["step"]:
        raise SourceError(f"{path}: tag {tag!r}: step {s} is out of range; expected an integer from 0 to "
                          f"{LIMITS['step']:,}")
    return s
