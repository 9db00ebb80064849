"""One coherent, read-only view of a snapshot, compiling flags on first use.

A view answers ``flag(key)`` and ``segment(id)`` for exactly one snapshot
(one data-set generation), so an evaluation never mixes two generations
(R-32). It builds an evaluable :class:`~.model.Flag` from the normalised form
the first time a key is asked for, and keeps what it built for later
generations: every view of one lineage shares a :class:`CompileCache`.

What is reused, and how the view knows it may be:

* From a shared-memory :class:`~.snapshot.SnapshotImage`, by **blob
  identity**: a key's table entry (chunk, offset, length, crc, version) equal
  to the one a compiled object was built from names the same immutable bytes
  (see "Blob identity" in :mod:`.snapshot`), so the object is reused without
  reading the blob at all. The cache remembers where the entry was, so the
  check is one 40-byte compare at that place of the new root (a probe of the
  table when it moved). A patch of another flag therefore costs a worker
  that compare per key it uses, whatever the sizes of the entities. When
  the bytes moved (a rebuild) the blob's stored bytes are compared with the
  ones the flag keeps (:attr:`~.model.Flag.source`, bytes the garbage
  collector never walks, unlike a decoded copy), and the object is still
  reused if they are equal.
* Key sets of large segments by their digest: a segment whose one key
  changed is rebuilt from the key set the worker holds already plus the new
  delta, in time that grows with the delta, not the segment.
* From an in-process :class:`~.dataset.DataSet`, by the entity object itself
  (a patch shares unchanged entities), else by equal content.

An equal version is never proof of equal content (a full sync replaces
whatever the versions say, R-12).

Where the normalised entities come from is the caller's business: it hands
in two lookup functions, and the image itself as ``origin`` when there is one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .changes import ChangeSet
from .model import Flag, LayeredSegment, Layers, Segment, settle
from .schema import FlagEntry, SegmentEntry
from .snapshot import KeySetRefs, SnapshotImage

FlagLookup = Callable[[str], "FlagEntry | None"]
SegmentLookup = Callable[[str], "SegmentEntry | None"]


class Compiles(NamedTuple):
    """What a lineage of views built (cumulative): how much work reuse saved."""

    flags: int
    segments: int
    key_sets: int


class CompileCache:
    """Compiled flags, segments and key sets, shared by successive views.

    From an image, ``flags`` and ``segments`` map a key to (epoch, byte
    position of its entry in the root, the entry's 40 bytes, compiled object
    or None for a tombstone); ``epoch`` changes whenever a view cannot prove
    that its image reads the same chunks as the previous one (a new control
    block, or a rebuild): older entries then never match, and objects are
    reused only by equal content. From a data set, ``plain_flags`` and
    ``plain_segments`` map a key to (entity, compiled object). Key sets are
    held weakly: one lives as long as a compiled segment uses it.

    Views of different generations may use the cache from different threads
    at once: every entry is checked against the asking view's own image or
    data set, so a race costs at most a repeated compile, never a wrong answer.
    """

    __slots__ = (
        "epoch",
        "flags",
        "segments",
        "plain_flags",
        "plain_segments",
        "key_sets",
        "flag_compiles",
        "segment_compiles",
        "key_set_reads",
    )

    def __init__(self) -> None:
        self.epoch = 0
        self.flags: dict[str, tuple[int, int, bytes, Flag | None]] = {}
        self.segments: dict[str, tuple[int, int, bytes, Segment | None]] = {}
        self.plain_flags: dict[str, tuple[FlagEntry, Flag]] = {}
        self.plain_segments: dict[str, tuple[SegmentEntry, Segment]] = {}
        self.key_sets: weakref.WeakValueDictionary[bytes, frozenset[str]] = weakref.WeakValueDictionary()
        self.flag_compiles = 0
        self.segment_compiles = 0
        self.key_set_reads = 0


class CompiledView:
    __slots__ = ("generation", "version", "origin", "memo", "_flag_norm", "_segment_norm", "_keys", "_key_list", "_flags", "_segments", "_image", "_cache", "_epoch")

    _cache: CompileCache

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
        # ``diff(older) -> ChangeSet`` lets listeners learn what changed. An
        # image is read directly, by blob identity (module docstring).
        self.origin = origin
        self._flag_norm = flag_norm
        self._segment_norm = segment_norm
        self._keys = keys
        self._key_list: tuple[str, ...] | None = None
        # What callers derive from this view once and keep with it (a view
        # never changes): e.g. the client's plan for all-flags calls.
        self.memo: dict[str, Any] = {}
        self._flags: dict[str, Flag] = {}
        self._segments: dict[str, Segment | None] = {}
        image = origin if isinstance(origin, SnapshotImage) else None
        self._image = image
        cache = previous._cache if previous is not None else CompileCache()
        if image is not None:
            older = previous.origin if previous is not None else None
            if not isinstance(older, SnapshotImage) or not image.shares_chunks_with(older):
                cache.epoch += 1  # cannot prove the same bytes: identities start afresh
        self._cache = cache
        self._epoch = cache.epoch

    # ------------------------------------------------------------------ flags

    def flag(self, key: str) -> Flag | None:
        """The active flag with this key, or None (unknown or archived)."""
        f = self._flags.get(key)
        if f is not None:
            return f
        f = self._image_flag(key) if self._image is not None else self._lookup_flag(key)
        if f is not None:
            self._flags[key] = f
        return f

    def _image_flag(self, key: str) -> Flag | None:
        image = self._image
        assert image is not None
        cache = self._cache
        epoch = self._epoch
        known = cache.flags.get(key)
        if known is not None and known[0] == epoch and image.flag_entry_is(known[1], known[2]):
            return known[3]  # the very bytes it was built from: nothing to read
        pos = image.locate_flag(key)
        if pos < 0:
            return None
        entry = image.entry_bytes(pos)
        if known is not None and known[0] == epoch and known[2] == entry:
            f = known[3]
        else:
            norm, source = image.read_flag_packed(pos, key)
            f = None if norm.get("archived") else self._reuse_or_compile(known[3] if known is not None else None, norm, source)
        # The entry and a new compiled flag: nothing the cycle collector
        # needs to walk (model.settle); a reused flag is settled already.
        settle(known := (epoch, pos, entry, f))
        cache.flags[key] = known
        return f

    def _lookup_flag(self, key: str) -> Flag | None:
        norm = self._flag_norm(key)
        if norm is None or norm.get("archived"):
            return None
        cache = self._cache
        known = cache.plain_flags.get(key)
        if known is not None and known[0] is norm:
            return known[1]
        if known is not None and known[0] == norm:
            f = known[1]
        else:
            cache.flag_compiles += 1
            f = Flag(norm)  # keeps ``norm``: the data set holds it anyway
        settle(entry := (norm, f))
        cache.plain_flags[key] = entry
        return f

    def _reuse_or_compile(self, old: Flag | None, norm: FlagEntry, source: bytes) -> Flag:
        """``old`` if it was built from the same stored bytes, else a new
        flag that keeps them, not the decoded form (see :class:`~.model.Flag`).

        Equal bytes mean equal content; the converse need not hold (e.g. the
        same map in another key order), which costs at most a compile."""
        if old is not None and old.source == source:
            return old
        self._cache.flag_compiles += 1
        return Flag(norm, source)

    # ------------------------------------------------------------------ segments

    def segment(self, seg_id: str) -> Segment | None:
        """The active segment with this id, or None (missing or archived)."""
        try:
            return self._segments[seg_id]
        except KeyError:
            pass
        seg = self._image_segment(seg_id) if self._image is not None else self._lookup_segment(seg_id)
        self._segments[seg_id] = seg
        return seg

    def _image_segment(self, seg_id: str) -> Segment | None:
        image = self._image
        assert image is not None
        cache = self._cache
        epoch = self._epoch
        known = cache.segments.get(seg_id)
        if known is not None and known[0] == epoch and image.segment_entry_is(known[1], known[2]):
            return known[3]
        pos = image.locate_segment(seg_id)
        if pos < 0:
            return None
        entry = image.entry_bytes(pos)
        seg: Segment | None
        if known is not None and known[0] == epoch and known[2] == entry:
            seg = known[3]
        else:
            norm, refs = image.read_segment(pos, seg_id)
            seg = None
            if not norm.get("archived"):
                old = known[3] if known is not None else None
                # The stored form is small even for a huge segment (its long
                # lists are key-set references), so comparing it is cheap.
                seg = old if old is not None and old.norm == norm else self._compile_segment(image, norm, refs)
        settle(known := (epoch, pos, entry, seg))
        cache.segments[seg_id] = known
        return seg

    def _compile_segment(self, image: SnapshotImage, norm: SegmentEntry, refs: KeySetRefs) -> Segment:
        cache = self._cache
        cache.segment_compiles += 1
        if not refs:
            return Segment(norm)
        layers: dict[str, Layers] = {}
        for field, (digest, added, removed) in refs.items():
            base = cache.key_sets.get(digest)
            if base is None:
                base = frozenset(image.key_set(digest))
                cache.key_sets[digest] = base
                cache.key_set_reads += 1
            layers[field] = (base, frozenset(added), frozenset(removed))
        return LayeredSegment(norm, layers)

    def _lookup_segment(self, seg_id: str) -> Segment | None:
        norm = self._segment_norm(seg_id)
        if norm is None or norm.get("archived"):
            return None
        cache = self._cache
        known = cache.plain_segments.get(seg_id)
        if known is not None and (known[0] is norm or known[1].norm == norm):
            seg = known[1]
        else:
            cache.segment_compiles += 1
            seg = Segment(norm)
        settle(entry := (norm, seg))
        cache.plain_segments[seg_id] = entry
        return seg

    # ------------------------------------------------------------------ the rest

    def flag_keys(self) -> tuple[str, ...]:
        """Keys of every active flag in this snapshot (read once per view)."""
        keys = self._key_list
        if keys is None:
            keys = self._key_list = tuple(self._keys())
        return keys

    @property
    def compiles(self) -> Compiles:
        """Flags and segments compiled and key sets read by this view and
        every view it inherited its cache from."""
        cache = self._cache
        return Compiles(cache.flag_compiles, cache.segment_compiles, cache.key_set_reads)

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
