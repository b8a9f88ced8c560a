"""Why a check that reads activation statistics was skipped, from the run's meta ``activations`` (written by
:class:`dyncheck.collect.ActivationCollector`): patterns that matched nothing, selected modules that never ran,
measuring steps that recorded nothing -- instead of the generic "not recorded" guess."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["activation_gap_reason"]


def _listed(items: Any, n: int = 5) -> str:
    items = [str(i) for i in items] if isinstance(items, list) else []
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def activation_gap_reason(patterns: Any, reason: str, meta: Any) -> str:
    """``reason`` (a skip message of a check over ``patterns``) with what meta ``activations`` tells of the gap; the
    reason unchanged when the check reads no ``act/`` metric or the meta tells nothing."""
    acts = meta.get("activations") if isinstance(meta, Mapping) else None
    if not isinstance(acts, Mapping) or not any(str(p).startswith("act/") for p in patterns):
        return reason
    selected = acts.get("selected") or []
    unmatched = acts.get("unmatched_patterns") or []
    never = acts.get("never_ran") or []
    empty = acts.get("n_steps_without_statistics") or 0
    measured = acts.get("measured_steps") or 0
    note = f" ({acts['note']})" if acts.get("note") else ""
    head = reason.split(":", 1)[0] if reason.startswith("no recorded metric matches") else reason
    if not selected and unmatched:
        return (f"{head}: no module was selected: the activation_modules patterns {_listed(unmatched)} match no "
                f"module worth measuring (names as in named_modules(), without torch.compile's '_orig_mod.')")
    if selected and len(never) == len(selected):
        return f"{head}: none of the {len(selected)} selected modules ran on a measuring step{note}"
    if measured and empty >= measured:
        return f"{head}: none of the {measured} measuring steps recorded an activation statistic{note}"
    extra = []
    if unmatched:
        extra.append(f"activation_modules patterns {_listed(unmatched)} match no module")
    if never:
        extra.append(f"{len(never)} selected modules never ran ({_listed(never)})")
    if empty:
        extra.append(f"{empty} of {measured} measuring steps recorded no activation statistic")
    return reason + ("; " + "; ".join(extra) + note if extra else "")
