"""The flag data set and its full/patch merge rules (R-12, R-13, R-29..R-31).

A :class:`DataSet` is an immutable value: applying a message returns a new
data set, so a writer can publish it whole and readers never see a batch half
applied (R-13, R-32). It holds normalised entities, tombstones included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from .changes import ChangeSet, diff_datasets
from .schema import FlagEntry, SegmentEntry
from .wire import DataSyncMessage


@dataclass(frozen=True)
class Changes:
    """What a message changed: flag keys and segment ids (R-80)."""

    full: bool
    flags: frozenset[str]
    segments: frozenset[str]

    def __bool__(self) -> bool:
        return self.full or bool(self.flags) or bool(self.segments)


class DataSet:
    """Flags by key and segments by id, tombstones included (R-28)."""

    __slots__ = ("_flags", "_segments", "version")

    def __init__(
        self,
        flags: Mapping[str, FlagEntry] | None = None,
        segments: Mapping[str, SegmentEntry] | None = None,
        *,
        version: int | None = None,
    ):
        self._flags: dict[str, FlagEntry] = dict(flags or {})
        self._segments: dict[str, SegmentEntry] = dict(segments or {})
        # the cursor is the max version over every entry, tombstones
        # included. apply() passes it in so a patch costs O(patch), not O(store).
        if version is None:
            version = max((e["version"] for e in (*self._flags.values(), *self._segments.values())), default=0)
        self.version: int = version

    @property
    def flags(self) -> Mapping[str, FlagEntry]:
        """Every flag entry by key, tombstones included (read-only view)."""
        return MappingProxyType(self._flags)

    @property
    def segments(self) -> Mapping[str, SegmentEntry]:
        return MappingProxyType(self._segments)

    def active_flags(self) -> Iterable[FlagEntry]:
        return (f for f in self._flags.values() if not f.get("archived"))

    def active_segments(self) -> Iterable[SegmentEntry]:
        return (s for s in self._segments.values() if not s.get("archived"))

    def flag(self, key: str) -> FlagEntry | None:
        """R-29: an archived flag is not found."""
        f = self._flags.get(key)
        return None if f is None or f.get("archived") else f

    def segment(self, seg_id: str) -> SegmentEntry | None:
        s = self._segments.get(seg_id)
        return None if s is None or s.get("archived") else s

    def apply(self, message: DataSyncMessage) -> tuple[DataSet, Changes]:
        """A full replaces everything (R-12); a patch merges per entity (R-13)."""
        if message.event_type == "full":
            new = DataSet(
                {f["key"]: f for f in message.flags},
                {s["id"]: s for s in message.segments},
            )
            return new, Changes(True, frozenset(new._flags), frozenset(new._segments))
        flags, changed_flags = _merge(self._flags, message.flags, _flag_key)
        segments, changed_segments = _merge(self._segments, message.segments, _segment_id)
        if not changed_flags and not changed_segments:
            return self, Changes(False, frozenset(), frozenset())
        version = max(
            [self.version]
            + [flags[k]["version"] for k in changed_flags]
            + [segments[k]["version"] for k in changed_segments]
        )
        return DataSet(flags, segments, version=version), Changes(False, changed_flags, changed_segments)

    def diff(self, older: DataSet) -> ChangeSet:
        """Flags and segments changed since ``older`` (R-80; see :mod:`.changes`)."""
        return diff_datasets(older, self)

    def __len__(self) -> int:
        return len(self._flags)

    def __repr__(self) -> str:
        return f"DataSet(flags={len(self._flags)}, segments={len(self._segments)}, version={self.version})"


Entry = TypeVar("Entry", FlagEntry, SegmentEntry)


def _flag_key(flag: FlagEntry) -> str:
    return flag["key"]


def _segment_id(segment: SegmentEntry) -> str:
    return segment["id"]


def _merge(current: dict[str, Entry], incoming: list[Entry], key_of: Callable[[Entry], str]) -> tuple[dict[str, Entry], frozenset[str]]:
    """Insert unknown keys; replace only on a strictly newer own version (not G-2)."""
    merged = current
    changed = set()
    for entity in incoming:
        key = key_of(entity)
        old = merged.get(key)
        if old is not None and entity["version"] <= old["version"]:
            continue
        if merged is current:
            merged = dict(current)  # copy on first real change
        merged[key] = entity
        changed.add(key)
    return merged, frozenset(changed)
