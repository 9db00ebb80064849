"""The flag data set and its full/patch merge rules (R-12, R-13, R-29..R-31).

A :class:`DataSet` is an immutable value: applying a message returns a new
data set, so a writer can publish it whole and readers never see a batch half
applied (R-13, R-32). It holds normalised entities, tombstones included.

A *packed* data set (the sync process's) keeps every entity as
:class:`~.wire.Packed` msgpack bytes and decodes one only when it is read;
:attr:`DataSet.flags` and :meth:`DataSet.flag` give normalised entities either
way, :attr:`DataSet.stored_flags` what is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .changes import ChangeSet, diff_datasets
from .schema import FlagEntry, SegmentEntry
from .wire import AnyFlag, AnySegment, DataSyncMessage, Packed


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

    __slots__ = ("_flags", "_segments", "version", "packed")

    def __init__(
        self,
        flags: Mapping[str, AnyFlag] | None = None,
        segments: Mapping[str, AnySegment] | None = None,
        *,
        version: int | None = None,
        packed: bool = False,
    ):
        self.packed = packed
        self._flags: dict[str, AnyFlag] = {k: _as(packed, e, False) for k, e in (flags or {}).items()}
        self._segments: dict[str, AnySegment] = {k: _as(packed, e, True) for k, e in (segments or {}).items()}
        # the cursor is the max version over every entry, tombstones
        # included. apply() passes it in so a patch costs O(patch), not O(store).
        if version is None:
            version = max((e["version"] for e in (*self._flags.values(), *self._segments.values())), default=0)
        self.version: int = version

    @classmethod
    def _of(cls, flags: dict[str, Any], segments: dict[str, Any], version: int, packed: bool) -> DataSet:
        """A data set over dicts already in this form (no copy, no conversion)."""
        new = cls.__new__(cls)
        new._flags, new._segments, new.version, new.packed = flags, segments, version, packed
        return new

    @property
    def flags(self) -> Mapping[str, FlagEntry]:
        """Every flag entry by key, tombstones included (read-only, normalised)."""
        if self.packed:
            return _Unpacked(self._flags)
        return MappingProxyType(self._flags)  # type: ignore[arg-type]

    @property
    def segments(self) -> Mapping[str, SegmentEntry]:
        if self.packed:
            return _Unpacked(self._segments)
        return MappingProxyType(self._segments)  # type: ignore[arg-type]

    @property
    def stored_flags(self) -> Mapping[str, AnyFlag]:
        """Flags as kept: packed in a packed data set (read-only)."""
        return MappingProxyType(self._flags)

    @property
    def stored_segments(self) -> Mapping[str, AnySegment]:
        return MappingProxyType(self._segments)

    def active_flags(self) -> Iterable[FlagEntry]:
        return (_plain(f) for f in self._flags.values() if not f.get("archived"))

    def active_segments(self) -> Iterable[SegmentEntry]:
        return (_plain(s) for s in self._segments.values() if not s.get("archived"))

    def flag(self, key: str) -> FlagEntry | None:
        """R-29: an archived flag is not found."""
        f = self._flags.get(key)
        return None if f is None or f.get("archived") else _plain(f)

    def segment(self, seg_id: str) -> SegmentEntry | None:
        s = self._segments.get(seg_id)
        return None if s is None or s.get("archived") else _plain(s)

    def apply(self, message: DataSyncMessage) -> tuple[DataSet, Changes]:
        """A full replaces everything (R-12); a patch merges per entity (R-13).
        The result is packed when this data set is."""
        packed = self.packed
        if message.event_type == "full":
            new = DataSet(
                {f["key"]: f for f in message.flags},
                {s["id"]: s for s in message.segments},
                packed=packed,
            )
            return new, Changes(True, frozenset(new._flags), frozenset(new._segments))
        flags, changed_flags = _merge(self._flags, message.flags, "key", packed, False)
        segments, changed_segments = _merge(self._segments, message.segments, "id", packed, True)
        if not changed_flags and not changed_segments:
            return self, Changes(False, frozenset(), frozenset())
        version = max(
            [self.version]
            + [flags[k]["version"] for k in changed_flags]
            + [segments[k]["version"] for k in changed_segments]
        )
        return DataSet._of(flags, segments, version, packed), Changes(False, changed_flags, changed_segments)

    def diff(self, older: DataSet) -> ChangeSet:
        """Flags and segments changed since ``older`` (R-80; see :mod:`.changes`)."""
        return diff_datasets(older, self)

    def __len__(self) -> int:
        return len(self._flags)

    def __repr__(self) -> str:
        return f"DataSet(flags={len(self._flags)}, segments={len(self._segments)}, version={self.version})"


def _as(packed: bool, entity: Any, is_segment: bool) -> Any:
    """``entity`` in the form a data set of this kind keeps."""
    if isinstance(entity, Packed):
        return entity if packed else entity.unpack()
    return Packed.of(entity, is_segment) if packed else entity


def _plain(entity: Any) -> Any:
    return entity.unpack() if isinstance(entity, Packed) else entity


class _Unpacked(Mapping[str, Any]):
    """A read-only view of a packed data set's entities that decodes each one read."""

    __slots__ = ("_stored",)

    def __init__(self, stored: Mapping[str, Any]) -> None:
        self._stored = stored

    def __getitem__(self, key: str) -> Any:
        return _plain(self._stored[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def __contains__(self, key: object) -> bool:
        return key in self._stored


def _merge(current: dict[str, Any], incoming: Sequence[Any], key_field: str, packed: bool, is_segment: bool) -> tuple[dict[str, Any], frozenset[str]]:
    """Insert unknown keys; replace only on a strictly newer own version (not G-2)."""
    merged = current
    changed = set()
    for entity in incoming:
        key = entity[key_field]
        old = merged.get(key)
        if old is not None and entity["version"] <= old["version"]:
            continue
        if merged is current:
            merged = dict(current)  # copy on first real change
        merged[key] = _as(packed, entity, is_segment)
        changed.add(key)
    return merged, frozenset(changed)
