"""One coherent, read-only view of a snapshot, compiling flags on first use.

A view answers ``flag(key)`` and ``segment(id)`` for exactly one snapshot
(one data-set generation), so an evaluation never mixes two generations
(R-32). It builds an evaluable :class:`~.model.Flag` from the normalised form
the first time a key is asked for, and reuses the compiled object of the
previous view when the entity did not change (same content, compared
cheaply): a new generation costs nothing for flags that stayed the same.

Where the normalised entities come from (a :class:`~.dataset.DataSet` in this
process, or a shared-memory snapshot) is the caller's business: it hands in
two lookup functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .changes import ChangeSet
from .model import Flag, Segment
from .schema import FlagEntry, SegmentEntry

FlagLookup = Callable[[str], "FlagEntry | None"]
SegmentLookup = Callable[[str], "SegmentEntry | None"]


class CompiledView:
    __slots__ = ("generation", "version", "origin", "_flag_norm", "_segment_norm", "_keys", "_flags", "_segments", "_old_flags", "_old_segments")

    def __init__(
        self,
        generation: int,
        version: int,
        flag_norm: FlagLookup,
        segment_norm: SegmentLookup,
        keys: Callable[[], Iterable[str]],
        previous: CompiledView | None = None,
        origin: Any = None,
    ) -> None:
        self.generation = generation
        self.version = version
        # What the lookups read (a DataSet or a SnapshotImage): anything with
        # ``diff(older) -> ChangeSet`` lets listeners learn what changed.
        self.origin = origin
        self._flag_norm = flag_norm
        self._segment_norm = segment_norm
        self._keys = keys
        self._flags: dict[str, Flag] = {}
        self._segments: dict[str, Segment | None] = {}
        self._old_flags = previous._flags if previous is not None else {}
        self._old_segments = previous._segments if previous is not None else {}

    def flag(self, key: str) -> Flag | None:
        """The active flag with this key, or None (unknown or archived)."""
        f = self._flags.get(key)
        if f is not None:
            return f
        norm = self._flag_norm(key)
        if norm is None or norm.get("archived"):
            return None
        old = self._old_flags.get(key)
        # Reuse the compiled flag only for identical content: an equal version
        # is not proof (a full sync replaces whatever the versions say, R-12).
        f = old if old is not None and (old.norm is norm or old.norm == norm) else Flag(norm)
        self._flags[key] = f
        return f

    def segment(self, seg_id: str) -> Segment | None:
        """The active segment with this id, or None (missing or archived)."""
        try:
            return self._segments[seg_id]
        except KeyError:
            pass
        norm = self._segment_norm(seg_id)
        seg: Segment | None = None
        if norm is not None and not norm.get("archived"):
            old = self._old_segments.get(seg_id)
            seg = old if old is not None and (old.norm is norm or old.norm == norm) else Segment(norm)
        self._segments[seg_id] = seg
        return seg

    def flag_keys(self) -> Iterable[str]:
        """Keys of every active flag in this snapshot."""
        return self._keys()

    def changes_since(self, older: CompiledView | None) -> ChangeSet:
        """Flags (and segments) that may evaluate differently here than in
        ``older`` (R-80, R-88). With no older view every active flag counts
        (the first data is a change, as fbclient's initial sync is)."""
        if older is None:
            return ChangeSet(frozenset(self.flag_keys()), frozenset())
        mine, theirs = self.origin, older.origin
        if mine is theirs:
            return ChangeSet(frozenset(), frozenset())
        if mine is not None and type(mine) is type(theirs):
            return mine.diff(theirs)  # type: ignore[no-any-return]
        # Different kinds of source (e.g. an empty fallback, then a snapshot):
        # nothing to compare, so everything either side knows may have changed.
        return ChangeSet(frozenset(self.flag_keys()) | frozenset(older.flag_keys()), frozenset())
