"""The snapshot image: one data-set generation, readable in place by any process.

A snapshot is written once, never changed, and read by many processes
straight from read-only mappings. A reader must find and decode ONE flag
without decoding the others, and must open a new generation in time that does
not grow with the data; a writer must publish a one-flag patch of a
10,000-flag store without rewriting 5 MB. So a generation is split in two
kinds of immutable object:

* a **root**: a header, the list of live chunks, and two open-addressing hash
  tables (flags by key, segments by id) whose entries point into chunks;
* **chunks**: append-only bags of per-entity blobs. A patch writes one new
  small chunk with the changed entities and a new root that repoints their
  slots; every other blob stays where it was. Chunk ids are the generation
  that wrote them, so they are unique across writer restarts.

Root layout (little-endian)::

    header, 64 bytes (struct ``_HEADER``)
      0   8  magic              b"FBSHMSNP"
      8   4  u32 layout         LAYOUT (bumped on any change)
     12   4  u32 header size    64
     16   8  u64 generation
     24   8  i64 data version   max updatedAt over every entry (the sync cursor, R-31)
     32   4  u32 flag slots     power of two
     36   4  u32 segment slots  power of two
     40   4  u32 flags          entries, tombstones included
     44   4  u32 segments       entries, tombstones included
     48   4  u32 active flags
     52   4  u32 active segments
     56   4  u32 chunks         live chunks listed below (<= MAX_CHUNKS)
     60   4  u32 reserved
     64 512  u64[64]            live chunk ids
    576      flag table: ``flag slots`` entries of 40 bytes, then the segment table
    entry (struct ``_ENTRY``)
      0   4  u32 key hash       crc32 of the UTF-8 key; probe start = hash & (slots - 1)
      4   4  u32 blob crc32
      8   8  u64 chunk id
     16   4  u32 blob offset    within the chunk
     20   4  u32 blob length
     24   2  u16 key length
     26   2  u16 bits           1 = occupied, 2 = archived (tombstone)
     28   4  --  reserved
     32   8  i64 version        the entity's own updatedAt (ms)

Chunk layout: ``b"FBSHMCHK"``, u64 chunk id, then blobs; a blob is the UTF-8
key followed by the msgpack of the entity's normalised form (:mod:`.schema`;
rows are stored as msgpack arrays and rebuilt as rows when decoded).

Integrity: the control block records the root's length and the crc32 of the
whole root; each blob carries its own crc32, checked when that entity is
first decoded. A reader verifies a generation in time proportional to the
tables, not the data, and never trusts a byte it did not check. Every
malformed input raises :class:`SnapshotError` (fuzzed in the tests).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import msgpack

from .changes import ChangeSet, segment_refs
from .dataset import Changes, DataSet
from .schema import FlagEntry, SegmentEntry, flag_entry, segment_entry

MAGIC: Final = b"FBSHMSNP"
CHUNK_MAGIC: Final = b"FBSHMCHK"
LAYOUT: Final = 2
_HEADER: Final = struct.Struct("<8sII Q q II II II II")
_ENTRY: Final = struct.Struct("<II Q II HH 4x q")
_CHUNK_HEADER: Final = struct.Struct("<8sQ")
HEADER_SIZE: Final = _HEADER.size
ENTRY_SIZE: Final = _ENTRY.size
CHUNK_HEADER_SIZE: Final = _CHUNK_HEADER.size
MAX_CHUNKS: Final = 64
TABLES: Final = HEADER_SIZE + MAX_CHUNKS * 8
OCCUPIED: Final = 1
ARCHIVED: Final = 2
MAX_SLOTS: Final = 1 << 24

assert HEADER_SIZE == 64 and ENTRY_SIZE == 40 and CHUNK_HEADER_SIZE == 16


class SnapshotError(ValueError):
    """The bytes are not a valid snapshot image (or not the one expected)."""


def key_hash(key: bytes) -> int:
    return zlib.crc32(key)


def root_crc(root: bytes | bytearray | memoryview) -> int:
    """crc32 of a whole root: what the control block records."""
    return zlib.crc32(root)


def active_counts(root: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(active flags, active segments) from a root's header."""
    fields = _HEADER.unpack_from(root, 0)
    return int(fields[9]), int(fields[10])


def root_size(fslots: int, sslots: int) -> int:
    return TABLES + (fslots + sslots) * ENTRY_SIZE


def max_entries(slots: int) -> int:
    """Entries a table of ``slots`` may hold: load factor at most 0.75."""
    return slots * 3 // 4


def _slots_for(count: int) -> int:
    """Table size for ``count`` entries: load at most 0.7, so a table has room
    to grow before it reaches :func:`max_entries` and forces a rebuild."""
    slots = 16
    while count * 10 > slots * 7:
        slots *= 2
    return slots


ChunkOf = Callable[[int], Any]  # chunk id -> buffer


# --------------------------------------------------------------------------- reading


class SnapshotImage:
    """A validated root over any buffer, with chunks fetched by ``chunk_of``.

    Construction checks the header and (given ``crc``) the root's crc;
    lookups decode one entity and check its blob's crc. Nothing here copies
    the tables or the data.
    """

    __slots__ = (
        "_buf",
        "_chunk_of",
        "generation",
        "data_version",
        "flag_count",
        "segment_count",
        "active_flags",
        "active_segments",
        "chunks",
        "size",
        "_fslots",
        "_sslots",
        "_stable",
    )

    def __init__(self, buf: Any, chunk_of: ChunkOf | None = None, *, length: int | None = None, crc: int | None = None) -> None:
        view = memoryview(buf)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = len(view) if length is None else length
        if size > len(view):
            raise SnapshotError(f"root is {len(view)} bytes, control block says {size}")
        if size < TABLES:
            raise SnapshotError("root is shorter than its header")
        magic, layout, header_size, gen, version, fslots, sslots, nf, ns, af, as_, nchunks, _r = _HEADER.unpack_from(view, 0)
        if magic != MAGIC:
            raise SnapshotError("bad snapshot magic")
        if layout != LAYOUT or header_size != HEADER_SIZE:
            raise SnapshotError(f"snapshot layout {layout} is not {LAYOUT}")
        for slots in (fslots, sslots):
            if slots < 16 or slots > MAX_SLOTS or slots & (slots - 1):
                raise SnapshotError("bad table size")
        if root_size(fslots, sslots) != size:
            raise SnapshotError("root size does not match its tables")
        if nf > max_entries(fslots) or ns > max_entries(sslots) or af > nf or as_ > ns or nchunks > MAX_CHUNKS:
            raise SnapshotError("bad entry counts")
        if crc is not None and zlib.crc32(view[:size]) != crc:
            raise SnapshotError("snapshot root crc mismatch")
        self._buf = view[:size]
        self._chunk_of = chunk_of
        self.size = size
        self.generation: int = gen
        self.data_version: int = version
        self.flag_count: int = nf
        self.segment_count: int = ns
        self.active_flags: int = af
        self.active_segments: int = as_
        self.chunks: tuple[int, ...] = struct.unpack_from(f"<{nchunks}Q", view, HEADER_SIZE)
        self._fslots = fslots
        self._sslots = sslots
        self._stable = TABLES + fslots * ENTRY_SIZE

    def _chunk(self, chunk_id: int) -> memoryview:
        if chunk_id not in self.chunks or self._chunk_of is None:
            raise SnapshotError(f"chunk {chunk_id} is not live in generation {self.generation}")
        buf = self._chunk_of(chunk_id)
        if buf is None:
            raise SnapshotError(f"chunk {chunk_id} is not available")
        view = memoryview(buf)
        if len(view) < CHUNK_HEADER_SIZE or _CHUNK_HEADER.unpack_from(view, 0) != (CHUNK_MAGIC, chunk_id):
            raise SnapshotError(f"chunk {chunk_id} has a bad header")
        return view

    def _find(self, table: int, slots: int, key: str) -> Any:
        raw = key.encode("utf-8")
        h = zlib.crc32(raw)
        mask = slots - 1
        buf = self._buf
        unpack = _ENTRY.unpack_from
        i = h & mask
        for _ in range(slots):
            eh, crc, chunk, off, length, klen, bits, version = unpack(buf, table + i * ENTRY_SIZE)
            if not bits & OCCUPIED:
                return None
            if eh == h and klen == len(raw):
                blob = self._blob(chunk, off, length, klen, crc, key)
                if blob[:klen] == raw:
                    return self._decode(blob, klen, bits, version, key, flag_entry if table == TABLES else segment_entry)
            i = (i + 1) & mask
        return None

    def _blob(self, chunk_id: int, off: int, length: int, klen: int, crc: int, key: str) -> memoryview:
        chunk = self._chunk(chunk_id)
        if off < CHUNK_HEADER_SIZE or off + length > len(chunk) or klen > length:
            raise SnapshotError(f"entry {key!r} points outside its chunk")
        blob = chunk[off : off + length]
        if zlib.crc32(blob) != crc:
            raise SnapshotError(f"entry {key!r} crc mismatch")
        return blob

    @staticmethod
    def _decode(blob: memoryview, klen: int, bits: int, version: int, key: str, entry: Callable[[dict[str, Any]], Any]) -> Any:
        """One entity's blob -> its schema row (``entry``: :func:`.schema.flag_entry`
        or :func:`.schema.segment_entry`)."""
        try:
            entity = msgpack.unpackb(blob[klen:], raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several types  # noqa: BLE001
            raise SnapshotError(f"entry {key!r} does not decode: {exc}") from None
        if not isinstance(entity, dict) or entity.get("version") != version:
            raise SnapshotError(f"entry {key!r} does not match its index")
        if bool(entity.get("archived")) != bool(bits & ARCHIVED):
            raise SnapshotError(f"entry {key!r} archived bit disagrees")
        try:
            return entry(entity)
        except (TypeError, ValueError, KeyError) as exc:
            raise SnapshotError(f"entry {key!r} does not have the schema's shape: {exc}") from None

    def flag(self, key: str) -> FlagEntry | None:
        """The normalised flag with this key (tombstones included), or None."""
        found: FlagEntry | None = self._find(TABLES, self._fslots, key)
        return found

    def segment(self, seg_id: str) -> SegmentEntry | None:
        found: SegmentEntry | None = self._find(self._stable, self._sslots, seg_id)
        return found

    def _keys(self, table: int, slots: int, *, active_only: bool) -> Iterator[str]:
        for i, (_h, crc, chunk, off, length, klen, bits, _v) in enumerate(
            _ENTRY.iter_unpack(self._buf[table : table + slots * ENTRY_SIZE])
        ):
            if bits & OCCUPIED and not (active_only and bits & ARCHIVED):
                blob = self._blob(chunk, off, length, klen, crc, f"slot {i}")
                try:
                    yield bytes(blob[:klen]).decode("utf-8")
                except UnicodeDecodeError:
                    raise SnapshotError(f"slot {i} key is not UTF-8") from None

    def flag_keys(self, *, active_only: bool = True) -> list[str]:
        return list(self._keys(TABLES, self._fslots, active_only=active_only))

    def segment_ids(self, *, active_only: bool = True) -> list[str]:
        return list(self._keys(self._stable, self._sslots, active_only=active_only))

    # ------------------------------------------------------------ change notices

    def _entry_key(self, entry: tuple[Any, ...], where: str) -> str | None:
        """The key of one unpacked table entry (None for an empty slot)."""
        _h, crc, chunk, off, length, klen, bits, _v = entry
        if not bits & OCCUPIED:
            return None
        try:
            return bytes(self._blob(chunk, off, length, klen, crc, where)[:klen]).decode("utf-8")
        except UnicodeDecodeError:
            raise SnapshotError(f"{where} key is not UTF-8") from None

    def _signature(self, table: int, slots: int, key: str) -> tuple[int, int, int] | None:
        """(blob crc, version, bits) of a key's entry, or None when absent."""
        raw = key.encode("utf-8")
        h = zlib.crc32(raw)
        mask = slots - 1
        i = h & mask
        for _ in range(slots):
            eh, crc, chunk, off, length, klen, bits, version = _ENTRY.unpack_from(self._buf, table + i * ENTRY_SIZE)
            if not bits & OCCUPIED:
                return None
            if eh == h and klen == len(raw) and self._blob(chunk, off, length, klen, crc, key)[:klen] == raw:
                return crc, version, bits
            i = (i + 1) & mask
        return None

    def _changed(self, older: SnapshotImage, mine: tuple[int, int], theirs: tuple[int, int]) -> set[str]:
        """Keys whose entries differ between one table here and in ``older``.

        With equal table sizes (the usual case: a patch repoints a few slots)
        the tables are compared in blocks and only differing slots are
        looked at, so a one-flag patch of 10,000 flags costs microseconds.
        Otherwise (a table grew) every key's signature is compared.
        """
        (table, slots), (otable, oslots) = mine, theirs
        candidates: set[str] = set()
        if slots == oslots:
            step = 64 * ENTRY_SIZE
            size = slots * ENTRY_SIZE
            new_t = self._buf[table : table + size]
            old_t = older._buf[otable : otable + size]
            for start in range(0, size, step):
                if new_t[start : start + step] == old_t[start : start + step]:
                    continue
                for pos in range(start, min(start + step, size), ENTRY_SIZE):
                    a = new_t[pos : pos + ENTRY_SIZE]
                    b = old_t[pos : pos + ENTRY_SIZE]
                    if a == b:
                        continue
                    for image, entry in ((self, _ENTRY.unpack(a)), (older, _ENTRY.unpack(b))):
                        key = image._entry_key(entry, f"slot {pos // ENTRY_SIZE}")
                        if key is not None:
                            candidates.add(key)
        else:
            for image, (t, n) in ((self, mine), (older, theirs)):
                for i, entry in enumerate(_ENTRY.iter_unpack(image._buf[t : t + n * ENTRY_SIZE])):
                    key = image._entry_key(entry, f"slot {i}")
                    if key is not None:
                        candidates.add(key)
        return {k for k in candidates if self._signature(table, slots, k) != older._signature(otable, oslots, k)}

    def diff(self, older: SnapshotImage) -> ChangeSet:
        """Flags and segments changed since ``older`` (R-80, R-88; see :mod:`.changes`)."""
        flags = self._changed(older, (TABLES, self._fslots), (TABLES, older._fslots))
        segments = self._changed(older, (self._stable, self._sslots), (older._stable, older._sslots))
        if segments:
            flags |= self.flags_referencing(segments)
        return ChangeSet(frozenset(flags), frozenset(segments))

    def flags_referencing(self, segments: set[str] | frozenset[str]) -> set[str]:
        """Active flags whose rules reference any of these segment ids.

        A byte search of each blob for the ids rules most flags out without
        decoding them; the rest are decoded and their rules checked.
        """
        needles = [s.encode("utf-8") for s in segments]
        found: set[str] = set()
        for i, (_h, crc, chunk, off, length, klen, bits, version) in enumerate(
            _ENTRY.iter_unpack(self._buf[TABLES : TABLES + self._fslots * ENTRY_SIZE])
        ):
            if not bits & OCCUPIED or bits & ARCHIVED:
                continue
            blob = bytes(self._blob(chunk, off, length, klen, crc, f"slot {i}"))
            if not any(n in blob for n in needles):
                continue
            key = blob[:klen].decode("utf-8", "replace")
            if segment_refs(self._decode(memoryview(blob), klen, bits, version, key, flag_entry)) & segments:
                found.add(key)
        return found

    def to_dataset(self) -> DataSet:
        """Every entry, tombstones included (a restarted writer resumes from this)."""
        flags = {}
        for key in self.flag_keys(active_only=False):
            flag = self.flag(key)
            if flag is not None:
                flags[key] = flag
        segments = {}
        for seg_id in self.segment_ids(active_only=False):
            segment = self.segment(seg_id)
            if segment is not None:
                segments[seg_id] = segment
        return DataSet(flags, segments)


# --------------------------------------------------------------------------- writing

Buffer = Any  # a writable buffer: bytearray, or a read-write mmap of a new object
Allocate = Callable[[str, int, int], Buffer]  # (kind "root"|"chunk", id, size) -> buffer


class Built:
    """What one build produced: the root, and which chunks are live now."""

    __slots__ = ("root", "new_chunks", "live_chunks", "full")

    def __init__(self, root: Buffer, new_chunks: dict[int, Buffer], live_chunks: frozenset[int], full: bool) -> None:
        self.root = root
        self.new_chunks = new_chunks
        self.live_chunks = live_chunks
        self.full = full


class SnapshotBuilder:
    """Builds generations; a patch of k entities writes one k-blob chunk.

    :meth:`build_into` asks ``allocate(kind, id, size)`` for each destination
    (the writer hands out mappings of new shared-memory objects) and fills
    them. Given the :class:`~.dataset.Changes` of a patch, only those entities
    are written: the previous root's tables are copied across in one memcpy
    and their slots repointed into one new chunk. Chunks stay few like in an
    LSM tree: when MAX_CHUNKS would be exceeded, the entities of every chunk
    but the largest are rewritten into the new chunk too. A full sync, a table
    past three quarters full, or dead blobs outweighing live ones, cause a
    full rebuild into one chunk. Encoded blobs are cached per entity version,
    so a rebuild copies rather than re-encodes. The builder keeps the last
    root; the caller keeps it readable until the next build (or calls
    :meth:`reset`).
    """

    def __init__(self) -> None:
        self._root: Buffer | None = None
        self._slot: dict[tuple[int, str], int] = {}  # (table, key) -> slot; table 0 flags, 1 segments
        self._where: dict[int, set[tuple[int, str]]] = {}  # chunk id -> entries whose blob it holds
        self._live: dict[int, int] = {}  # chunk id -> live blob bytes
        self._size: dict[int, int] = {}  # chunk id -> blob bytes written
        self._blobs: dict[tuple[int, str], tuple[Mapping[str, Any], bytes, int]] = {}  # entry -> (entity, blob, key length)
        self._active = [0, 0]
        self.full_builds = 0
        self.incremental_builds = 0

    def build(self, dataset: DataSet, generation: int, changes: Changes | None = None) -> tuple[bytearray, dict[int, bytearray]]:
        """Root and new chunks as bytearrays (tests, tools)."""
        built = self.build_into(dataset, generation, changes, lambda kind, ident, size: bytearray(size))
        return built.root, built.new_chunks

    def build_into(self, dataset: DataSet, generation: int, changes: Changes | None, allocate: Allocate) -> Built:
        """Write ``dataset`` as ``generation``; chunk ids are generation numbers."""
        if self._root is not None and changes is not None and not changes.full:
            built = self._incremental(self._root, dataset, generation, changes, allocate)
            if built is not None:
                self.incremental_builds += 1
                self._root = built.root
                return built
        self.full_builds += 1
        built = self._full(dataset, generation, allocate)
        self._root = built.root
        return built

    def reset(self) -> None:
        """Forget the previous generation (the next build is a full one)."""
        self._root = None

    def _blob(self, which: int, key: str, entity: Mapping[str, Any]) -> tuple[bytes, int]:
        """The entity's blob (UTF-8 key + msgpack), from the cache when unchanged.

        "Unchanged" means the same object or an equal one, never merely the
        same version: a full sync replaces content whatever its version says
        (R-12), e.g. a hand-edited bootstrap file that kept its updatedAt.
        """
        cached = self._blobs.get((which, key))
        if cached is not None and (cached[0] is entity or cached[0] == entity):
            return cached[1], cached[2]
        raw = key.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise SnapshotError(f"key {key[:40]!r}... is longer than 65535 bytes")
        blob = raw + msgpack.packb(entity, use_bin_type=True)
        self._blobs[(which, key)] = (entity, blob, len(raw))
        return blob, len(raw)

    def _full(self, dataset: DataSet, generation: int, allocate: Allocate) -> Built:
        tables = (dataset.flags, dataset.segments)
        fslots, sslots = _slots_for(len(tables[0])), _slots_for(len(tables[1]))
        self._blobs = {e: self._blobs[e] for e in ((w, k) for w in (0, 1) for k in tables[w]) if e in self._blobs}
        todo = []
        chunk_size = CHUNK_HEADER_SIZE
        for which in (0, 1):
            for key, entity in tables[which].items():
                blob, klen = self._blob(which, key, entity)
                todo.append((which, key, -1, blob, klen, entity))
                chunk_size += len(blob)
        size = root_size(fslots, sslots)
        root = allocate("root", generation, size)
        root[:size] = bytes(size)  # tables start empty
        chunk = allocate("chunk", generation, chunk_size)
        self._slot, self._where, self._active = {}, {}, [0, 0]
        self._fill(root, fslots, sslots, chunk, generation, todo)
        self._live = {generation: chunk_size - CHUNK_HEADER_SIZE}
        self._size = dict(self._live)
        self._write_header(root, dataset, generation, fslots, sslots)
        return Built(root, {generation: chunk}, frozenset(self._live), True)

    def _fill(self, root: Buffer, fslots: int, sslots: int, chunk: Buffer, chunk_id: int, todo: list[Any]) -> None:
        """Write the blobs into ``chunk`` and point their slots at them."""
        _CHUNK_HEADER.pack_into(chunk, 0, CHUNK_MAGIC, chunk_id)
        offset = CHUNK_HEADER_SIZE
        here = self._where.setdefault(chunk_id, set())
        for which, key, slot, blob, klen, entity in todo:
            table, slots = (TABLES, fslots) if which == 0 else (TABLES + fslots * ENTRY_SIZE, sslots)
            h = key_hash(blob[:klen])
            if slot < 0:
                mask = slots - 1
                slot = h & mask
                while _ENTRY.unpack_from(root, table + slot * ENTRY_SIZE)[6] & OCCUPIED:
                    slot = (slot + 1) & mask
            chunk[offset : offset + len(blob)] = blob
            bits = OCCUPIED | (ARCHIVED if entity.get("archived") else 0)
            _ENTRY.pack_into(root, table + slot * ENTRY_SIZE, h, zlib.crc32(blob), chunk_id, offset, len(blob), klen, bits, int(entity["version"]))
            self._slot[(which, key)] = slot
            here.add((which, key))
            offset += len(blob)
            if not entity.get("archived"):
                self._active[which] += 1

    def _incremental(self, old: Buffer, dataset: DataSet, generation: int, changes: Changes, allocate: Allocate) -> Built | None:
        header = _HEADER.unpack_from(old, 0)
        fslots, sslots = header[5], header[6]
        tables = (dataset.flags, dataset.segments)
        if len(tables[0]) > max_entries(fslots) or len(tables[1]) > max_entries(sslots):
            return None  # a table would fill past three quarters
        entries = {(0, k) for k in changes.flags} | {(1, k) for k in changes.segments}
        merged: list[int] = []
        if len(self._live) + 1 > MAX_CHUNKS:
            # Fold every chunk but the largest into the new one (they are the
            # small ones written by patches): chunk count stays bounded.
            largest = max(self._live, key=lambda c: self._size[c])
            merged = [c for c in self._live if c != largest]
            for c in merged:
                entries |= self._where.get(c, set())
        # Plan first, touching nothing: encode the entries and take their old
        # blobs off their chunks' live counts.
        live = dict(self._live)
        active = list(self._active)
        todo = []
        moved: dict[int, set[tuple[int, str]]] = {}
        chunk_size = CHUNK_HEADER_SIZE
        for which, key in sorted(entries):
            entity = tables[which].get(key)
            if entity is None:
                return None  # a patch never removes; rebuild to stay safe
            table = TABLES if which == 0 else TABLES + fslots * ENTRY_SIZE
            slot = self._slot.get((which, key), -1)
            if slot >= 0:
                _h, _c, chunk_id, _o, length, _k, bits, _v = _ENTRY.unpack_from(old, table + slot * ENTRY_SIZE)
                live[chunk_id] -= length
                moved.setdefault(chunk_id, set()).add((which, key))
                active[which] -= 0 if bits & ARCHIVED else 1
            blob, klen = self._blob(which, key, entity)
            todo.append((which, key, slot, blob, klen, entity))
            chunk_size += len(blob)
        live = {c: n for c, n in live.items() if n > 0}
        written = sum(self._size[c] for c in live) + chunk_size - CHUNK_HEADER_SIZE
        dead = written - sum(live.values()) - (chunk_size - CHUNK_HEADER_SIZE)
        if len(live) + 1 > MAX_CHUNKS or dead * 2 > written:
            return None  # dead blobs outweigh live ones: compact
        size = root_size(fslots, sslots)
        root = allocate("root", generation, size)
        root[:size] = old[:size]  # one copy of the tables; the old root is never written
        chunk = allocate("chunk", generation, chunk_size)
        for chunk_id, gone in moved.items():
            if chunk_id in self._where:
                self._where[chunk_id] -= gone
        for chunk_id in set(self._where) - set(live):
            del self._where[chunk_id]
        self._active = active
        self._fill(root, fslots, sslots, chunk, generation, todo)
        live[generation] = chunk_size - CHUNK_HEADER_SIZE
        self._size = {c: self._size.get(c, live[c]) for c in live}
        self._live = live
        self._write_header(root, dataset, generation, fslots, sslots)
        return Built(root, {generation: chunk}, frozenset(live), False)

    def _write_header(self, root: Buffer, dataset: DataSet, generation: int, fslots: int, sslots: int) -> None:
        chunks = sorted(self._live)
        _HEADER.pack_into(
            root, 0, MAGIC, LAYOUT, HEADER_SIZE, generation, dataset.version, fslots, sslots,
            len(dataset.flags), len(dataset.segments), self._active[0], self._active[1], len(chunks), 0,
        )  # fmt: skip
        root[HEADER_SIZE:TABLES] = struct.pack(f"<{len(chunks)}Q", *chunks).ljust(TABLES - HEADER_SIZE, b"\0")
