"""Which flags a new generation may have changed, for change notices (R-80, R-88).

A process that tracks flag changes compares the generation it last told its
listeners about with the one it evaluates from now. The generations may be
several publishes apart (a worker that was busy, or idle, sees only the
latest), so the answer is a difference of two data sets, never a replay of
messages:

* a flag is *changed* when its entry differs (content, version, archived
  bit, presence);
* a segment is changed likewise, and every active flag whose rules reference
  a changed segment is notified too (R-80: segment-only changes are reported;
  R-88: "plus one for every stored flag whose rule conditions reference a
  segment in the message").

Identical entries are not reported, so a full sync that changed nothing
notifies nothing (fbclient notifies every key in every full sync; MIGRATING.md
lists the difference). Each source of generations (an in-process
:class:`~.dataset.DataSet`, a shared-memory
:class:`~.snapshot.SnapshotImage`) finds its changed entries in its own
cheapest way; this module holds the parts they share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .schema import Rule
from .wire import SEGMENT_IN, SEGMENT_NOT_IN, Packed


@dataclass(frozen=True)
class ChangeSet:
    """What listeners are told about one step from an old generation to a new one."""

    flags: frozenset[str]  # flag keys to notify, sorted order is the caller's business
    segments: frozenset[str]  # segment ids whose entries changed

    def __bool__(self) -> bool:
        return bool(self.flags) or bool(self.segments)


def segment_refs(flag: Mapping[str, Any]) -> set[str]:
    """Ids of the segments a normalised flag's rules reference."""
    refs: set[str] = set()
    rules: list[Rule] = flag.get("rules") or []
    for rule in rules:
        for cond in rule.conditions:
            if cond.property in (SEGMENT_IN, SEGMENT_NOT_IN) and isinstance(cond.operand, list):
                refs.update(s for s in cond.operand if isinstance(s, str))
    return refs


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """Keys whose entries differ between two key -> entity mappings.

    Unchanged entities are usually the same object (a patch shares them), so
    the identity test answers most keys without comparing content.
    """
    changed = set(new.keys() ^ old.keys())  # added or removed
    for key, entity in new.items():
        before = old.get(key)
        if before is not None and before is not entity and before != entity:
            changed.add(key)
    return changed


def referencing(flags: Iterable[tuple[str, Mapping[str, Any]]], segments: Iterable[str]) -> set[str]:
    """Keys of the active flags (of ``flags``) whose rules use any of ``segments``.

    A packed flag (:class:`~.wire.Packed`) is decoded only when its bytes
    hold one of the ids."""
    wanted = set(segments)
    if not wanted:
        return set()
    needles = [s.encode("utf-8") for s in wanted]
    found = set()
    for key, flag in flags:
        if flag.get("archived"):
            continue
        if isinstance(flag, Packed):
            if not any(n in flag.blob for n in needles):
                continue
            flag = flag.unpack()
        if segment_refs(flag) & wanted:
            found.add(key)
    return found


def diff_datasets(old: Any, new: Any) -> ChangeSet:
    """Changes between two :class:`~.dataset.DataSet` values (compared as
    stored: packed entities by their bytes)."""
    flags = changed_keys(old.stored_flags, new.stored_flags)
    segments = changed_keys(old.stored_segments, new.stored_segments)
    flags |= referencing(new.stored_flags.items(), segments)
    return ChangeSet(frozenset(flags), frozenset(segments))
