"""The snapshot image: one data-set generation as bytes, readable in place.

A snapshot is written once, never changed, and read by any number of
processes straight from a read-only mapping. A reader must be able to find
and decode ONE flag without decoding the others, and must open a new
generation in time independent of the number of flags, so the image is a
small fixed header, two open-addressing hash tables (flags by key, segments
by id) and a payload of per-entity blobs.

Byte layout (little-endian)::

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
     56   8  u64 table end      offset where the payload starts
    flag table at 64: ``flag slots`` entries of 32 bytes, then the segment table
    entry (struct ``_ENTRY``)
      0   4  u32 key hash       crc32 of the UTF-8 key; probe start = hash & (slots - 1)
      4   4  u32 blob crc32
      8   8  u64 blob offset
     16   4  u32 blob length
     20   2  u16 key length
     22   2  u16 bits           1 = occupied, 2 = archived (tombstone)
     24   8  i64 version        the entity's own updatedAt (ms)
    payload: per entity, the UTF-8 key followed by the msgpack of its
    normalised form (see :mod:`.wire`).

Integrity: the control block records the image length and the crc32 of
``image[0:table end]`` (header and tables); each blob carries its own crc32,
checked when that entity is first decoded. A reader therefore verifies a
generation in time proportional to the tables, not the data, and still never
trusts a byte it did not check. Every malformed input raises
:class:`SnapshotError` (fuzzed in the tests).

Writers build images with :class:`SnapshotBuilder`, which reuses the last
image: a patch that changes k entities copies the previous image once and
appends k blobs; a full rebuild happens only when entities disappear, a
table fills past half, or dead blobs exceed half of the payload.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import msgpack

from .dataset import Changes, DataSet

MAGIC: Final = b"FBSHMSNP"
LAYOUT: Final = 1
_HEADER: Final = struct.Struct("<8sII Q q II II II Q")
_ENTRY: Final = struct.Struct("<II Q I HH q")
HEADER_SIZE: Final = _HEADER.size
ENTRY_SIZE: Final = _ENTRY.size
OCCUPIED: Final = 1
ARCHIVED: Final = 2
MAX_SLOTS: Final = 1 << 24

assert HEADER_SIZE == 64 and ENTRY_SIZE == 32


class SnapshotError(ValueError):
    """The bytes are not a valid snapshot image (or not the one expected)."""


def key_hash(key: bytes) -> int:
    return zlib.crc32(key)


def tables_crc(image: bytes | bytearray | memoryview) -> int:
    """crc32 of the header and both tables: what the control block records."""
    end = _HEADER.unpack_from(image, 0)[11]
    return zlib.crc32(memoryview(image)[:end])


def active_counts(image: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(active flags, active segments) from an image's header."""
    fields = _HEADER.unpack_from(image, 0)
    return int(fields[9]), int(fields[10])


def _slots_for(count: int) -> int:
    slots = 16
    while slots < count * 2:
        slots *= 2
    return slots


# --------------------------------------------------------------------------- reading


class SnapshotImage:
    """A validated snapshot over any buffer (bytes, mmap, memoryview).

    Construction checks the header and the tables' crc; lookups decode one
    entity and check its blob crc. Nothing here copies the whole image.
    """

    __slots__ = (
        "_buf",
        "generation",
        "data_version",
        "flag_count",
        "segment_count",
        "active_flags",
        "active_segments",
        "size",
        "_fslots",
        "_sslots",
        "_stable",
        "_end",
    )

    def __init__(self, buf: Any, *, length: int | None = None, crc: int | None = None) -> None:
        view = memoryview(buf)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = len(view) if length is None else length
        if size > len(view):
            raise SnapshotError(f"snapshot is {len(view)} bytes, control block says {size}")
        if size < HEADER_SIZE:
            raise SnapshotError("snapshot is shorter than its header")
        magic, layout, header_size, gen, version, fslots, sslots, nf, ns, af, as_, end = _HEADER.unpack_from(view, 0)
        if magic != MAGIC:
            raise SnapshotError("bad snapshot magic")
        if layout != LAYOUT or header_size != HEADER_SIZE:
            raise SnapshotError(f"snapshot layout {layout} is not {LAYOUT}")
        for slots in (fslots, sslots):
            if slots < 16 or slots > MAX_SLOTS or slots & (slots - 1):
                raise SnapshotError("bad table size")
        if end != HEADER_SIZE + (fslots + sslots) * ENTRY_SIZE or end > size:
            raise SnapshotError("tables overrun the snapshot")
        if nf > fslots // 2 or ns > sslots // 2 or af > nf or as_ > ns:
            raise SnapshotError("bad entry counts")
        if crc is not None and zlib.crc32(view[:end]) != crc:
            raise SnapshotError("snapshot tables crc mismatch")
        self._buf = view[:size]
        self.size = size
        self.generation: int = gen
        self.data_version: int = version
        self.flag_count: int = nf
        self.segment_count: int = ns
        self.active_flags: int = af
        self.active_segments: int = as_
        self._fslots = fslots
        self._sslots = sslots
        self._stable = HEADER_SIZE + fslots * ENTRY_SIZE
        self._end = end

    def _find(self, table: int, slots: int, key: str) -> dict[str, Any] | None:
        raw = key.encode("utf-8")
        h = zlib.crc32(raw)
        mask = slots - 1
        buf = self._buf
        unpack = _ENTRY.unpack_from
        i = h & mask
        for _ in range(slots):
            eh, crc, off, length, klen, bits, version = unpack(buf, table + i * ENTRY_SIZE)
            if not bits & OCCUPIED:
                return None
            if eh == h and klen == len(raw) and buf[off : off + klen] == raw:
                return self._decode(off, length, klen, crc, bits, version, key)
            i = (i + 1) & mask
        return None

    def _decode(self, off: int, length: int, klen: int, crc: int, bits: int, version: int, key: str) -> dict[str, Any]:
        if off < self._end or off + length > self.size or klen > length:
            raise SnapshotError(f"entry {key!r} points outside the payload")
        blob = self._buf[off : off + length]
        if zlib.crc32(blob) != crc:
            raise SnapshotError(f"entry {key!r} crc mismatch")
        try:
            entity = msgpack.unpackb(blob[klen:], raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several types  # noqa: BLE001
            raise SnapshotError(f"entry {key!r} does not decode: {exc}") from None
        if not isinstance(entity, dict) or entity.get("version") != version:
            raise SnapshotError(f"entry {key!r} does not match its index")
        if bool(entity.get("archived")) != bool(bits & ARCHIVED):
            raise SnapshotError(f"entry {key!r} archived bit disagrees")
        return entity

    def flag(self, key: str) -> dict[str, Any] | None:
        """The normalised flag with this key (tombstones included), or None."""
        return self._find(HEADER_SIZE, self._fslots, key)

    def segment(self, seg_id: str) -> dict[str, Any] | None:
        return self._find(self._stable, self._sslots, seg_id)

    def _keys(self, table: int, slots: int, *, active_only: bool) -> Iterator[str]:
        buf = self._buf
        for i, (_h, _crc, off, _length, klen, bits, _v) in enumerate(
            _ENTRY.iter_unpack(buf[table : table + slots * ENTRY_SIZE])
        ):
            if bits & OCCUPIED and not (active_only and bits & ARCHIVED):
                if off < self._end or off + klen > self.size:
                    raise SnapshotError(f"slot {i} points outside the payload")
                try:
                    yield bytes(buf[off : off + klen]).decode("utf-8")
                except UnicodeDecodeError:
                    raise SnapshotError(f"slot {i} key is not UTF-8") from None

    def flag_keys(self, *, active_only: bool = True) -> list[str]:
        return list(self._keys(HEADER_SIZE, self._fslots, active_only=active_only))

    def segment_ids(self, *, active_only: bool = True) -> list[str]:
        return list(self._keys(self._stable, self._sslots, active_only=active_only))

    def to_dataset(self) -> DataSet:
        """Every entry, tombstones included (a restarted writer resumes from this)."""
        flags = {}
        for key in self.flag_keys(active_only=False):
            entity = self.flag(key)
            if entity is not None:
                flags[key] = entity
        segments = {}
        for seg_id in self.segment_ids(active_only=False):
            entity = self.segment(seg_id)
            if entity is not None:
                segments[seg_id] = entity
        return DataSet(flags, segments)


# --------------------------------------------------------------------------- writing


Buffer = Any  # a writable buffer: bytearray, or a read-write mmap of the new object
Allocate = Callable[[int], Buffer]


class SnapshotBuilder:
    """Builds images, reusing the previous one when only a few entities changed.

    :meth:`build_into` asks ``allocate(size)`` for the destination (the
    writer hands out a mapping of the new shared-memory object) and fills it.
    Given the :class:`~.dataset.Changes` of a patch, only those entities are
    encoded: the previous image is copied across in one memcpy, their blobs
    are appended and their table slots repointed. Without changes, or for a
    full sync, the image is rebuilt. The builder keeps a reference to the
    last buffer it filled; the caller must keep that buffer readable until
    the next build (or call :meth:`reset`).
    """

    def __init__(self) -> None:
        self._image: Buffer | None = None
        self._flags: dict[str, int] = {}  # key -> slot
        self._segments: dict[str, int] = {}
        self._garbage = 0
        self._active = [0, 0]
        self.full_builds = 0
        self.incremental_builds = 0

    def build(self, dataset: DataSet, generation: int, changes: Changes | None = None) -> bytearray:
        """The image as a new bytearray (tests, tools)."""
        return self.build_into(dataset, generation, changes, bytearray)  # type: ignore[no-any-return]

    def build_into(self, dataset: DataSet, generation: int, changes: Changes | None, allocate: Allocate) -> Buffer:
        """Write the image of ``dataset`` as ``generation`` into a buffer from ``allocate``."""
        if self._image is not None and changes is not None and not changes.full:
            new = self._incremental(self._image, dataset, generation, changes, allocate)
            if new is not None:
                self.incremental_builds += 1
                self._image = new
                return new
        self.full_builds += 1
        image = self._full(dataset, generation)
        buf = allocate(len(image))
        buf[: len(image)] = image
        self._image = buf
        return buf

    def reset(self) -> None:
        """Forget the previous image (the next build is a full one)."""
        self._image = None

    @staticmethod
    def _blob(key: str, entity: Mapping[str, Any]) -> tuple[bytes, int]:
        raw = key.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise SnapshotError(f"key {key[:40]!r}... is longer than 65535 bytes")
        return raw + msgpack.packb(entity, use_bin_type=True), len(raw)

    def _full(self, dataset: DataSet, generation: int) -> bytearray:
        flags, segments = dataset.flags, dataset.segments
        fslots, sslots = _slots_for(len(flags)), _slots_for(len(segments))
        end = HEADER_SIZE + (fslots + sslots) * ENTRY_SIZE
        blobs = []
        size = end
        for entities in (flags, segments):
            for key, entity in entities.items():
                blob, klen = self._blob(key, entity)
                blobs.append((blob, klen, entity))
                size += len(blob)
        image = bytearray(size)
        self._flags, self._segments, self._garbage, self._active = {}, {}, 0, [0, 0]
        offset = end
        i = 0
        for which, table, slots, entities, index in (
            (0, HEADER_SIZE, fslots, flags, self._flags),
            (1, HEADER_SIZE + fslots * ENTRY_SIZE, sslots, segments, self._segments),
        ):
            for key in entities:
                blob, klen, entity = blobs[i]
                i += 1
                index[key] = self._place(image, table, slots, -1, blob, klen, entity, offset)
                offset += len(blob)
                if not entity.get("archived"):
                    self._active[which] += 1
        self._write_header(image, dataset, generation, fslots, sslots, end)
        return image

    @staticmethod
    def _place(image: Buffer, table: int, slots: int, slot: int, blob: bytes, klen: int, entity: Mapping[str, Any], offset: int) -> int:
        """Write ``blob`` at ``offset`` and point a slot at it; returns the slot."""
        h = key_hash(blob[:klen])
        if slot < 0:
            mask = slots - 1
            slot = h & mask
            while _ENTRY.unpack_from(image, table + slot * ENTRY_SIZE)[5] & OCCUPIED:
                slot = (slot + 1) & mask
        image[offset : offset + len(blob)] = blob
        bits = OCCUPIED | (ARCHIVED if entity.get("archived") else 0)
        _ENTRY.pack_into(image, table + slot * ENTRY_SIZE, h, zlib.crc32(blob), offset, len(blob), klen, bits, int(entity["version"]))
        return slot

    def _incremental(self, old: Buffer, dataset: DataSet, generation: int, changes: Changes, allocate: Allocate) -> Buffer | None:
        header = _HEADER.unpack_from(old, 0)
        fslots, sslots, end = header[5], header[6], header[11]
        old_size = len(old)
        flags, segments = dataset.flags, dataset.segments
        if len(flags) > fslots // 2 or len(segments) > sslots // 2:
            return None  # a table would fill past half
        # Plan first, touching nothing: encode the changed entities and count
        # what their old blobs leave behind.
        garbage = self._garbage
        active = list(self._active)
        todo = []
        for which, table, entities, index, keys in (
            (0, HEADER_SIZE, flags, self._flags, changes.flags),
            (1, HEADER_SIZE + fslots * ENTRY_SIZE, segments, self._segments, changes.segments),
        ):
            for key in keys:
                entity = entities.get(key)
                if entity is None:
                    return None  # a patch never removes; rebuild to stay safe
                slot = index.get(key, -1)
                if slot >= 0:
                    _h, _c, _o, length, _k, bits, _v = _ENTRY.unpack_from(old, table + slot * ENTRY_SIZE)
                    garbage += length
                    active[which] -= 0 if bits & ARCHIVED else 1
                active[which] += 0 if entity.get("archived") else 1
                blob, klen = self._blob(key, entity)
                todo.append((which, table, key, slot, blob, klen, entity))
        size = old_size + sum(len(t[4]) for t in todo)
        if garbage * 2 > size - end:
            return None  # dead blobs outweigh live ones: compact
        image = allocate(size)
        image[:old_size] = old  # one copy; the old image itself is never written
        offset = old_size
        for which, table, key, slot, blob, klen, entity in todo:
            slots = fslots if which == 0 else sslots
            (self._flags if which == 0 else self._segments)[key] = self._place(image, table, slots, slot, blob, klen, entity, offset)
            offset += len(blob)
        self._garbage, self._active = garbage, active
        self._write_header(image, dataset, generation, fslots, sslots, end)
        return image

    def _write_header(self, image: Buffer, dataset: DataSet, generation: int, fslots: int, sslots: int, end: int) -> None:
        _HEADER.pack_into(
            image, 0, MAGIC, LAYOUT, HEADER_SIZE, generation, dataset.version, fslots, sslots,
            len(dataset.flags), len(dataset.segments), self._active[0], self._active[1], end,
        )  # fmt: skip
