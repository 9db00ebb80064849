"""The snapshot image: one data-set generation, readable in place by any process.

A snapshot is written once, never changed, and read by many processes
straight from read-only mappings. A reader must find and decode ONE flag
without decoding the others, and must open a new generation in time that does
not grow with the data; a writer must publish a one-flag patch of a
100,000-flag store without rewriting megabytes. So a generation is split in
two kinds of immutable object:

* a **root**: a header, the list of live chunks, and a *page directory*:
  where each page of the three open-addressing hash tables (flags by key,
  segments by id, key sets by digest) lives;
* **chunks**: append-only bags of table pages and per-entity blobs. A patch
  writes one new small chunk with the changed entities and the table pages
  whose entries now point at them, and a new root whose directory repoints
  those pages; every other page and blob stays where it was. Chunk ids are
  the generation that wrote them, so they are unique across writer restarts.

The tables are laid end to end (flags, segments, key sets: ``slots * 40``
bytes each) and cut in pages of :data:`PAGE_ENTRIES` entries; the last page
may be short. A one-flag patch of 100,000 flags (262,144 flag slots) writes
a 262 KiB root, one 640-byte page and the blob, where a root holding the
tables (layout 3) was 10.5 MB to allocate, copy and free per patch.

Root layout (little-endian)::

    header, 72 bytes (struct ``_HEADER``)
      0   8  magic              b"FBSHMSNP"
      8   4  u32 layout         LAYOUT (bumped on any change; 3: key sets; 4: paged tables)
     12   4  u32 header size    72
     16   8  u64 generation
     24   8  i64 data version   max updatedAt over every entry (the sync cursor, R-31)
     32   4  u32 flag slots     power of two
     36   4  u32 segment slots  power of two
     40   4  u32 flags          entries, tombstones included
     44   4  u32 segments       entries, tombstones included
     48   4  u32 active flags
     52   4  u32 active segments
     56   4  u32 chunks         live chunks listed below (<= MAX_CHUNKS)
     60   4  u32 key-set slots  power of two
     64   4  u32 key sets       entries
     68   4  --  reserved
     72 512  u64[64]            live chunk ids
    584      page directory: one 16-byte ref (struct ``_PAGE_REF``) per page
      0   8  u64 chunk id       the live chunk holding the page
      8   4  u32 offset         within the chunk
     12   4  u32 crc32          of the page's bytes

    table entry, 40 bytes (struct ``_ENTRY``), in a page
      0   4  u32 key hash       crc32 of the UTF-8 key; probe start = hash & (slots - 1)
      4   4  u32 blob crc32
      8   8  u64 chunk id
     16   4  u32 blob offset    within the chunk
     20   4  u32 blob length
     24   2  u16 key length
     26   2  u16 bits           1 = occupied, 2 = archived (tombstone)
     28   4  --  reserved
     32   8  i64 version        the entity's own updatedAt (ms); 0 for a key set

Chunk layout: ``b"FBSHMCHK"``, u64 chunk id, then table pages (a full build
writes every page, a patch the pages it changed), then blobs; a blob is the UTF-8
key followed by the msgpack of the entity's normalised form (:mod:`.schema`;
rows are stored as msgpack arrays and rebuilt as rows when decoded).

**Key sets** (large segments). A segment's ``included`` or ``excluded`` list
of :data:`KEYSET_MIN` keys or more (and while it keeps half as many) is
stored out of line, as a *key set* plus a small delta, so that a one-key
change rewrites a few bytes instead of the whole list, and a worker
rebuilds nothing of the size of the list:

* a key set's blob is its key (the 32 hex digits of the blake2b-128 digest
  of the payload) followed by the msgpack list of keys; it lives in the
  key-set table, so moving it (a fold, a rebuild) never changes the
  segments that name it;
* the segment's own blob stores that list empty and adds a field
  ``keysets``: ``{"included": [digest (16 bytes), added keys, removed
  keys]}``. The keys are ``(key set - removed) | added``. The writer keeps
  the delta under :func:`delta_limit` keys; past it, and only in a full
  build, it writes a fresh key set (a *rebase*).

Content-addressed key sets let a worker keep the set it built from one
across every later generation, patches and rebuilds alike.
:meth:`SnapshotImage.segment` gives the plain lists back (membership, not
order, is what a list of a delta-stored segment keeps).

Integrity: the control block records the root's length and
:func:`root_crc`, the crc32 of the whole root (header, chunk list, page
directory: 16 bytes per 16 slots, 262 KiB at 100,000 flags); each page is
checked against the crc its directory ref carries the first time a reader
uses it, and each blob carries its own crc32, checked when that entity is
first decoded. So opening a generation costs one crc of a small root, a
one-flag patch costs the writer the crc of one page and a root, and a
reader never trusts a byte it did not check. Every malformed input raises
:class:`SnapshotError` (fuzzed in the tests).

**Blob identity.** Under one control block an entry's bytes (chunk id,
offset, length, crc, ...) name one immutable blob, and a page ref one
immutable page: the writer never numbers
two chunks alike. A reader can therefore keep what it built from a blob for
as long as a newer root's entry for that key is byte-equal
(:meth:`SnapshotImage.flag_entry_is`); a new control block numbers afresh,
which a reader sees as chunks mapped anew
(:meth:`SnapshotImage.shares_chunks_with`).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import msgpack

from .changes import ChangeSet, segment_refs
from .dataset import Changes, DataSet
from .schema import FlagEntry, SegmentEntry, flag_entry, segment_entry
from .wire import Packed

MAGIC: Final = b"FBSHMSNP"
CHUNK_MAGIC: Final = b"FBSHMCHK"
LAYOUT: Final = 4
_HEADER: Final = struct.Struct("<8sII Q q IIIIIIIII 4x")
_ENTRY: Final = struct.Struct("<II Q II HH 4x q")
_CHUNK_HEADER: Final = struct.Struct("<8sQ")
_PAGE_REF: Final = struct.Struct("<QII")  # chunk id, offset, crc32 of one page of table entries
HEADER_SIZE: Final = _HEADER.size
ENTRY_SIZE: Final = _ENTRY.size
CHUNK_HEADER_SIZE: Final = _CHUNK_HEADER.size
MAX_CHUNKS: Final = 64
TABLES: Final = HEADER_SIZE + MAX_CHUNKS * 8
OCCUPIED: Final = 1
ARCHIVED: Final = 2
MAX_SLOTS: Final = 1 << 24
PAGE_ENTRIES: Final = 16  # table entries in one page
PAGE_BYTES: Final = PAGE_ENTRIES * ENTRY_SIZE
PAGE_REF_SIZE: Final = _PAGE_REF.size
KEYSET_MIN: Final = 1024  # a segment list this long or longer is stored as a key set + delta (until under half)
KEYSET_FIELDS: Final = ("included", "excluded")
DIGEST_SIZE: Final = 16

assert HEADER_SIZE == 72 and ENTRY_SIZE == 40 and CHUNK_HEADER_SIZE == 16 and PAGE_REF_SIZE == 16

FLAGS: Final = 0  # table numbers ("which")
SEGMENTS: Final = 1
KEY_SETS: Final = 2

#: A segment's out-of-line lists: field -> (key-set digest, added keys, removed keys).
KeySetRefs = dict[str, tuple[bytes, list[Any], list[Any]]]


class SnapshotError(ValueError):
    """The bytes are not a valid snapshot image (or not the one expected)."""


class SnapshotLayoutError(SnapshotError):
    """A valid image of another layout: written by another featbit_shm release."""


def key_hash(key: bytes) -> int:
    return zlib.crc32(key)


def _pages(entries: int) -> int:
    return -(-entries // PAGE_ENTRIES)


def _page_length(page: int, entries: int) -> int:
    """Bytes of one page of a table area of ``entries`` entries (the last may be short)."""
    return min(PAGE_BYTES, entries * ENTRY_SIZE - page * PAGE_BYTES)


def root_crc(root: bytes | bytearray | memoryview) -> int:
    """What the control block records of a root: the crc32 of all of it
    (header, chunk list, page directory: 16 bytes per 64 table entries)."""
    fields = _HEADER.unpack_from(root, 0)
    return zlib.crc32(memoryview(root)[: root_size(fields[5], fields[6], fields[12])])


def active_counts(root: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(active flags, active segments) from a root's header."""
    fields = _HEADER.unpack_from(root, 0)
    return int(fields[9]), int(fields[10])


def root_size(fslots: int, sslots: int, kslots: int = 16) -> int:
    return TABLES + PAGE_REF_SIZE * _pages(fslots + sslots + kslots)


def max_entries(slots: int) -> int:
    """Entries a table of ``slots`` may hold: load factor at most 0.75."""
    return slots * 3 // 4


def delta_limit(set_size: int) -> int:
    """Keys a delta may hold over a key set of ``set_size`` keys before the
    writer rebases: what each change costs every worker to rebuild."""
    return max(256, set_size // 64)


def _slots_for(count: int) -> int:
    """Table size for ``count`` entries: load at most 0.7, so a table has room
    to grow before it reaches :func:`max_entries` and forces a rebuild."""
    slots = 16
    while count * 10 > slots * 7:
        slots *= 2
    return slots


def keyset_refs(stored: Mapping[str, Any], key: str) -> KeySetRefs:
    """The validated ``keysets`` field of a stored segment ({} when it has none)."""
    raw = stored.get("keysets")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw.keys() <= set(KEYSET_FIELDS):
        raise SnapshotError(f"segment {key!r} has malformed key sets")
    refs: KeySetRefs = {}
    for field, ref in raw.items():
        if (
            not isinstance(ref, list)
            or len(ref) != 3
            or not isinstance(ref[0], bytes)
            or len(ref[0]) != DIGEST_SIZE
            or not isinstance(ref[1], list)
            or not isinstance(ref[2], list)
            or stored.get(field)
        ):
            raise SnapshotError(f"segment {key!r} has a malformed key set for {field!r}")
        refs[field] = (ref[0], ref[1], ref[2])
    return refs


ChunkOf = Callable[[int], Any]  # chunk id -> buffer


# --------------------------------------------------------------------------- reading


class SnapshotImage:
    """A validated root over any buffer, with chunks fetched by ``chunk_of``.

    Construction checks the header and (given ``crc``) :func:`root_crc`;
    a page of table entries is checked against its crc when first used, and
    a lookup decodes one entity and checks its blob's crc. Nothing here
    copies the tables or the data.

    A *position* (what :meth:`locate_flag` returns) is the place of an entry
    in the tables laid end to end, counted in bytes from ``TABLES``, as if
    they followed the header: the same key has the same position in every
    root with tables of the same sizes.
    """

    __slots__ = (
        "_buf",
        "_chunk_of",
        "_views",
        "generation",
        "data_version",
        "flag_count",
        "segment_count",
        "key_set_count",
        "active_flags",
        "active_segments",
        "chunks",
        "size",
        "_fslots",
        "_sslots",
        "_kslots",
        "_stable",
        "_ktable",
        "_end",
        "_entries",
        "_raw",
        "_checked",
    )

    def __init__(self, buf: Any, chunk_of: ChunkOf | None = None, *, length: int | None = None, crc: int | None = None) -> None:
        view = memoryview(buf)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = len(view) if length is None else length
        if size > len(view):
            raise SnapshotError(f"root is {len(view)} bytes, control block says {size}")
        if size < 16:
            raise SnapshotError("root is shorter than its header")
        magic, layout, header_size = struct.unpack_from("<8sII", view, 0)
        if magic != MAGIC:
            raise SnapshotError("bad snapshot magic")
        if layout != LAYOUT or header_size != HEADER_SIZE:
            # An image of another layout (an older or newer featbit_shm) is refused, never guessed at.
            raise SnapshotLayoutError(f"snapshot layout {layout} is not {LAYOUT}")
        if size < TABLES:
            raise SnapshotError("root is shorter than its header")
        _m, _l, _h, gen, version, fslots, sslots, nf, ns, af, as_, nchunks, kslots, nk = _HEADER.unpack_from(view, 0)
        for slots in (fslots, sslots, kslots):
            if slots < 16 or slots > MAX_SLOTS or slots & (slots - 1):
                raise SnapshotError("bad table size")
        if root_size(fslots, sslots, kslots) != size:
            raise SnapshotError("root size does not match its tables")
        if nf > max_entries(fslots) or ns > max_entries(sslots) or nk > max_entries(kslots) or af > nf or as_ > ns or nchunks > MAX_CHUNKS:
            raise SnapshotError("bad entry counts")
        if crc is not None and zlib.crc32(view[:size]) != crc:
            raise SnapshotError("snapshot root crc mismatch")
        entries = fslots + sslots + kslots
        self._buf = view[:size]
        self._chunk_of = chunk_of
        self._views: dict[int, memoryview] = {}  # chunk id -> its checked buffer
        self.size = size
        self.generation: int = gen
        self.data_version: int = version
        self.flag_count: int = nf
        self.segment_count: int = ns
        self.key_set_count: int = nk
        self.active_flags: int = af
        self.active_segments: int = as_
        self.chunks: tuple[int, ...] = struct.unpack_from(f"<{nchunks}Q", view, HEADER_SIZE)
        self._fslots = fslots
        self._sslots = sslots
        self._kslots = kslots
        self._stable = TABLES + fslots * ENTRY_SIZE
        self._ktable = self._stable + sslots * ENTRY_SIZE
        self._end = self._ktable + kslots * ENTRY_SIZE
        self._entries = entries
        self._raw: dict[int, memoryview] = {}  # page -> its bytes in their chunk
        # Pages are checked against their crcs on first use, so opening a
        # generation costs a crc of its small root, whatever the data size.
        # Without a crc nothing is checked.
        self._checked = bytearray(b"\1" * _pages(entries)) if crc is None else bytearray(_pages(entries))

    def _page_raw(self, page: int) -> memoryview:
        """One page's bytes where the directory says they are (bounds checked, crc not)."""
        raw = self._raw.get(page)
        if raw is not None:
            return raw
        chunk_id, off, _crc = _PAGE_REF.unpack_from(self._buf, TABLES + page * PAGE_REF_SIZE)
        length = _page_length(page, self._entries)
        chunk = self._chunk(chunk_id)
        if off < CHUNK_HEADER_SIZE or off + length > len(chunk):
            raise SnapshotError(f"table page {page} points outside its chunk")
        raw = self._raw[page] = chunk[off : off + length]
        return raw

    def _page(self, page: int) -> memoryview:
        """One page's bytes, checked against its crc the first time."""
        raw = self._page_raw(page)
        if not self._checked[page]:
            (expected,) = struct.unpack_from("<I", self._buf, TABLES + page * PAGE_REF_SIZE + 12)
            if zlib.crc32(raw) != expected:
                raise SnapshotError(f"snapshot table page {page} crc mismatch")
            self._checked[page] = 1
        return raw

    def _entry(self, pos: int) -> tuple[Any, ...]:
        """The unpacked entry at position ``pos`` (its page checked)."""
        rel = pos - TABLES
        return _ENTRY.unpack_from(self._page(rel // PAGE_BYTES), rel % PAGE_BYTES)

    def _table_bytes(self, table: int, slots: int) -> bytes:
        """The entries of one table, every page checked."""
        first = (table - TABLES) // PAGE_BYTES
        last = (table - TABLES + slots * ENTRY_SIZE - 1) // PAGE_BYTES
        joined = b"".join([self._page(p) for p in range(first, last + 1)])
        skip = (table - TABLES) - first * PAGE_BYTES
        return joined[skip : skip + slots * ENTRY_SIZE]

    def _chunk(self, chunk_id: int) -> memoryview:
        view = self._views.get(chunk_id)
        if view is not None:
            return view
        if chunk_id not in self.chunks or self._chunk_of is None:
            raise SnapshotError(f"chunk {chunk_id} is not live in generation {self.generation}")
        buf = self._chunk_of(chunk_id)
        if buf is None:
            raise SnapshotError(f"chunk {chunk_id} is not available")
        view = memoryview(buf)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if len(view) < CHUNK_HEADER_SIZE or _CHUNK_HEADER.unpack_from(view, 0) != (CHUNK_MAGIC, chunk_id):
            raise SnapshotError(f"chunk {chunk_id} has a bad header")
        self._views[chunk_id] = view  # chunks are immutable: checked once
        return view

    def shares_chunks_with(self, older: SnapshotImage) -> bool:
        """True when this image and ``older`` have a live chunk in common and
        read every common one from the very same buffer: then an entry equal
        in both names the same bytes (a reader maps a chunk once and reuses
        the map; after it attaches to a new control block it maps afresh)."""
        common = set(self.chunks).intersection(older.chunks)
        if not common or self._chunk_of is None or older._chunk_of is None:
            return False
        return all(self._chunk_of(c) is older._chunk_of(c) for c in common)

    def _probe(self, table: int, slots: int, key: str) -> int:
        """The byte position in the root of ``key``'s entry in one table, found
        by its key bytes alone; -1 when absent.

        The blob's crc is checked when it is read (:meth:`_read`), or here when
        a colliding entry's key differs (a corrupt blob raises, as a read would).
        """
        raw = key.encode("utf-8")
        h = zlib.crc32(raw)
        mask = slots - 1
        unpack = _ENTRY.unpack_from
        n = len(raw)
        i = h & mask
        for _ in range(slots):
            pos = table + i * ENTRY_SIZE
            rel = pos - TABLES
            eh, crc, chunk_id, off, length, klen, bits, _v = unpack(self._page(rel // PAGE_BYTES), rel % PAGE_BYTES)
            if not bits & OCCUPIED:
                return -1
            if eh == h and klen == n:
                chunk = self._chunk(chunk_id)
                if off < CHUNK_HEADER_SIZE or off + length > len(chunk) or klen > length:
                    raise SnapshotError(f"entry {key!r} points outside its chunk")
                if chunk[off : off + klen] == raw:
                    return pos
                self._blob(chunk_id, off, length, klen, crc, key)
            i = (i + 1) & mask
        return -1

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

    def _read(self, pos: int, key: str, kind: Callable[[dict[str, Any]], Any]) -> Any:
        _h, crc, chunk_id, off, length, klen, bits, version = self._entry(pos)
        return self._decode(self._blob(chunk_id, off, length, klen, crc, key), klen, bits, version, key, kind)

    # ------------------------------------------------------------ entities
    #
    # A worker keeps what it built from an entity together with where the
    # entity's entry was (its byte position in the root) and the entry's
    # 40 bytes. In a later root of the same chunks, the same bytes at a
    # position of the same table name the same blob: the key's own entry
    # (a root holds one entry per key), so nothing needs to be read again.

    def locate_flag(self, key: str) -> int:
        """Byte position of a flag's entry (tombstones included), -1 when absent;
        the blob is not read."""
        return self._probe(TABLES, self._fslots, key)

    def locate_segment(self, seg_id: str) -> int:
        return self._probe(self._stable, self._sslots, seg_id)

    def entry_bytes(self, pos: int) -> bytes:
        """The 40 bytes of the entry at ``pos`` (an entity's blob identity)."""
        rel = pos - TABLES
        if not 0 <= rel < self._end - TABLES:
            raise SnapshotError(f"no entry at position {pos}")
        start = rel % PAGE_BYTES
        return bytes(self._page(rel // PAGE_BYTES)[start : start + ENTRY_SIZE])

    def flag_entry_is(self, pos: int, entry: bytes) -> bool:
        """True when the flag table holds exactly ``entry`` at ``pos``.

        ``entry`` comes from a checked root (:meth:`entry_bytes`): bytes
        equal to it are checked by the comparison itself, so the block's crc
        is not needed, and a new generation costs this compare per key used.
        """
        return TABLES <= pos < self._stable and self._entry_is(pos, entry)

    def segment_entry_is(self, pos: int, entry: bytes) -> bool:
        return self._stable <= pos < self._ktable and self._entry_is(pos, entry)

    def _entry_is(self, pos: int, entry: bytes) -> bool:
        rel = pos - TABLES
        start = rel % PAGE_BYTES
        try:
            return self._page_raw(rel // PAGE_BYTES)[start : start + ENTRY_SIZE] == entry
        except SnapshotError:
            return False  # a page that does not map is no proof; a lookup reports it

    def read_flag(self, pos: int, key: str) -> FlagEntry:
        """The flag whose entry is at ``pos`` (its blob's crc checked)."""
        found: FlagEntry = self._read(pos, key, flag_entry)
        return found

    def read_flag_packed(self, pos: int, key: str) -> tuple[FlagEntry, bytes]:
        """:meth:`read_flag` and the flag's stored msgpack bytes, which
        :func:`.schema.flag_entry` of their ``msgpack.unpackb`` reads back as
        the same flag: what a compiled flag keeps instead of the decoded form."""
        _h, crc, chunk_id, off, length, klen, bits, version = self._entry(pos)
        blob = self._blob(chunk_id, off, length, klen, crc, key)
        found: FlagEntry = self._decode(blob, klen, bits, version, key, flag_entry)
        return found, bytes(blob[klen:])

    def read_segment(self, pos: int, seg_id: str) -> tuple[SegmentEntry, KeySetRefs]:
        """The segment whose entry is at ``pos``, as stored (out-of-line lists
        empty, its ``keysets`` field kept), and its validated key-set references."""
        stored: SegmentEntry = self._read(pos, seg_id, segment_entry)
        return stored, keyset_refs(stored, seg_id)

    def key_set(self, digest: bytes) -> list[Any]:
        """The keys of one key set (its blob's crc checked)."""
        name = digest.hex()
        pos = self._probe(self._ktable, self._kslots, name)
        if pos < 0:
            raise SnapshotError(f"key set {name} is missing")
        _h, crc, chunk_id, off, length, klen, _bits, _v = self._entry(pos)
        blob = self._blob(chunk_id, off, length, klen, crc, name)
        try:
            keys = msgpack.unpackb(blob[klen:], raw=False)
        except Exception as exc:  # noqa: BLE001
            raise SnapshotError(f"key set {name} does not decode: {exc}") from None
        if not isinstance(keys, list):
            raise SnapshotError(f"key set {name} is not a list")
        return keys

    def flag(self, key: str) -> FlagEntry | None:
        """The normalised flag with this key (tombstones included), or None."""
        pos = self.locate_flag(key)
        return None if pos < 0 else self.read_flag(pos, key)

    def segment(self, seg_id: str) -> SegmentEntry | None:
        """The normalised segment with this id (tombstones included), or None;
        key-set lists are given back whole (see the module docstring)."""
        pos = self.locate_segment(seg_id)
        if pos < 0:
            return None
        stored, refs = self.read_segment(pos, seg_id)
        if not refs:
            return stored
        plain: dict[str, Any] = dict(stored)
        del plain["keysets"]
        for field, (digest, added, removed) in refs.items():
            base = self.key_set(digest)
            gone = frozenset(removed)
            kept = [k for k in base if k not in gone] if gone else base
            if added:
                present = frozenset(kept)
                kept += [k for k in added if k not in present]
            plain[field] = kept
        return plain  # type: ignore[return-value]

    def _keys(self, table: int, slots: int, *, active_only: bool) -> Iterator[str]:
        for i, (_h, crc, chunk, off, length, klen, bits, _v) in enumerate(_ENTRY.iter_unpack(self._table_bytes(table, slots))):
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
        pos = self._probe(table, slots, key)
        if pos < 0:
            return None
        _h, crc, chunk, off, length, klen, bits, version = self._entry(pos)
        self._blob(chunk, off, length, klen, crc, key)  # a corrupt blob raises
        return crc, version, bits

    def _changed(self, older: SnapshotImage, mine: tuple[int, int], theirs: tuple[int, int]) -> set[str]:
        """Keys whose entries differ between one table here and in ``older``.

        With the same table layout (the usual case: a patch repoints a few
        slots) the page directories are compared and only the slots of pages
        that moved are looked at, so a one-flag patch of 100,000 flags costs
        microseconds. Otherwise (a table grew) every key's signature is compared.
        """
        (table, slots), (otable, oslots) = mine, theirs
        candidates: set[str] = set()
        if table == otable and slots == oslots and self._entries == older._entries:
            lo, hi = table - TABLES, table - TABLES + slots * ENTRY_SIZE
            for page in range(lo // PAGE_BYTES, (hi - 1) // PAGE_BYTES + 1):
                ref = TABLES + page * PAGE_REF_SIZE
                if self._buf[ref : ref + PAGE_REF_SIZE] == older._buf[ref : ref + PAGE_REF_SIZE]:
                    continue  # the very same page bytes
                new_p, old_p = self._page(page), older._page(page)
                base = page * PAGE_BYTES
                for rel in range(max(lo, base), min(hi, base + len(new_p)), ENTRY_SIZE):
                    a = new_p[rel - base : rel - base + ENTRY_SIZE]
                    b = old_p[rel - base : rel - base + ENTRY_SIZE]
                    if a == b:
                        continue
                    pos = rel - lo
                    for image, entry in ((self, _ENTRY.unpack(a)), (older, _ENTRY.unpack(b))):
                        key = image._entry_key(entry, f"slot {pos // ENTRY_SIZE}")
                        if key is not None:
                            candidates.add(key)
        else:
            for image, (t, n) in ((self, mine), (older, theirs)):
                for i, entry in enumerate(_ENTRY.iter_unpack(image._table_bytes(t, n))):
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
        for i, (_h, crc, chunk, off, length, klen, bits, version) in enumerate(_ENTRY.iter_unpack(self._table_bytes(TABLES, self._fslots))):
            if not bits & OCCUPIED or bits & ARCHIVED:
                continue
            blob = bytes(self._blob(chunk, off, length, klen, crc, f"slot {i}"))
            if not any(n in blob for n in needles):
                continue
            key = blob[:klen].decode("utf-8", "replace")
            if segment_refs(self._decode(memoryview(blob), klen, bits, version, key, flag_entry)) & segments:
                found.add(key)
        return found

    def to_dataset(self, *, packed: bool = False) -> DataSet:
        """Every entry, tombstones included (a restarted writer resumes from
        this). ``packed``: flags are kept as their blobs' bytes, not decoded
        (each blob's crc and its entry checked as a read would)."""
        flags: dict[str, Any] = {}
        for key in self.flag_keys(active_only=False):
            if not packed:
                flag = self.flag(key)
                if flag is not None:
                    flags[key] = flag
                continue
            pos = self.locate_flag(key)
            _h, crc, chunk_id, off, length, klen, bits, version = self._entry(pos)
            blob = bytes(self._blob(chunk_id, off, length, klen, crc, key))
            entity = Packed(key, version, bool(bits & ARCHIVED), blob[klen:], False)
            self._decode(memoryview(blob), klen, bits, version, key, flag_entry)  # the shape a read would check
            flags[key] = entity
        segments: dict[str, Any] = {}
        for seg_id in self.segment_ids(active_only=False):
            segment = self.segment(seg_id)
            if segment is not None:
                segments[seg_id] = segment
        return DataSet(flags, segments, packed=packed)


# --------------------------------------------------------------------------- writing

Buffer = Any  # a writable buffer: bytearray, or a read-write mmap of a new object
Allocate = Callable[[str, int, int], Buffer]  # (kind "root"|"chunk", id, size) -> buffer
_KEY_SET_ENTITY: Final = {"version": 0}  # what _fill reads of a key set


class Built:
    """What one build produced: the root, and which chunks are live now."""

    __slots__ = ("root", "new_chunks", "live_chunks", "full")

    def __init__(self, root: Buffer, new_chunks: dict[int, Buffer], live_chunks: frozenset[int], full: bool) -> None:
        self.root = root
        self.new_chunks = new_chunks
        self.live_chunks = live_chunks
        self.full = full


class _KeyList:
    """The writer's memory of one out-of-line list: the key set it is stored
    against, the list last written (to diff the next one with) and the delta."""

    __slots__ = ("digest", "size", "listed", "added", "removed")

    def __init__(self, digest: str, size: int, listed: list[str], added: frozenset[str], removed: frozenset[str]) -> None:
        self.digest = digest
        self.size = size
        self.listed = listed
        self.added = added
        self.removed = removed


class _NeedsFullBuild(Exception):
    """A key set must be written or dropped: only a full build does that."""


def _run(a: list[Any], i: int, b: list[Any], j: int) -> int:
    """How many items ``a[i:]`` and ``b[j:]`` share from their start: compared
    in blocks that grow (a short run costs little, a long one a few large
    compares), and a differing block halved down to a few items, so the
    work stays in C."""
    limit = min(len(a) - i, len(b) - j)
    if limit == 0 or a[i] != b[j]:
        return 0
    k, step = 1, 32
    while k < limit:
        m = min(k + step, limit)
        if a[i + k : i + m] == b[j + k : j + m]:
            k, step = m, min(step * 4, 1 << 16)
            continue
        while m - k > 32:  # the first difference is in [k, m)
            half = (k + m) // 2
            if a[i + k : i + half] == b[j + k : j + half]:
                k = half
            else:
                m = half
        while a[i + k] == b[j + k]:
            k += 1
        return k
    return limit


def list_delta(old: list[Any], new: list[Any], limit: int) -> tuple[frozenset[Any], frozenset[Any]] | None:
    """(added, removed): keys whose membership differs between two lists,
    or None when more than about ``limit`` items would have to be looked at.

    The lists are aligned greedily: runs of equal items are skipped with
    C-speed slice compares, and at each difference one look ahead tells an
    insertion from a removal or a replacement. So a one-key change to a
    200,000-key list costs a few milliseconds, and any alignment (even a
    poor one) gives a right answer: ``added`` may hold keys that were listed
    already (harmless: they stay members); ``removed`` holds only keys the
    new list no longer has anywhere.
    """
    na, nb = len(old), len(new)
    gone: list[Any] = []
    added: list[Any] = []
    i = j = 0
    while True:
        k = _run(old, i, new, j)
        i, j = i + k, j + k
        if i == na or j == nb or len(gone) + len(added) > 2 * limit:
            break
        x, y = old[i], new[j]
        if j + 1 < nb and new[j + 1] == x:  # y was inserted
            added.append(y)
            j += 1
        elif i + 1 < na and old[i + 1] == y:  # x was removed
            gone.append(x)
            i += 1
        else:  # x was replaced by y
            gone.append(x)
            added.append(y)
            i, j = i + 1, j + 1
    if len(gone) + len(added) + (na - i) + (nb - j) > 2 * limit:
        return None
    before, after = frozenset(gone + old[i:]), frozenset(added + new[j:])
    removed = before - after
    if len(removed) == 1:
        # A key may be listed twice; it left only if no copy is left anywhere.
        (key,) = removed
        if key in new:
            removed = frozenset()
    elif removed:
        removed = removed - removed.intersection(new)
    return after - before, removed


class SnapshotBuilder:
    """Builds generations; a patch of k entities writes one k-blob chunk.

    :meth:`build_into` asks ``allocate(kind, id, size)`` for each destination
    (the writer hands out mappings of new shared-memory objects) and fills
    them. Given the :class:`~.dataset.Changes` of a patch, only those entities
    are written, into one new chunk, together with the pages of table entries
    that point at them; the new root is the previous one's page directory
    with those pages repointed (16 bytes per 64 slots: 64 KiB at 100,000
    flags). The builder keeps the tables themselves in memory, so it never
    reads a root back. Chunks stay few like in an
    LSM tree: when MAX_CHUNKS would be exceeded, the entities of every chunk
    but the largest are rewritten into the new chunk too. A full sync, a table
    past three quarters full, dead blobs outweighing live ones, or a key set
    to write or drop (see the module docstring), cause a full rebuild into one
    chunk. Encoded blobs are cached per entity, so a rebuild copies rather
    than re-encodes. The builder keeps the last root; the caller keeps it
    readable until the next build (or calls :meth:`reset`).
    """

    def __init__(self) -> None:
        self._root: Buffer | None = None
        self._tables = bytearray()  # every table's entries, end to end (what the pages hold)
        self._directory = bytearray()  # page -> _PAGE_REF (chunk id, offset, crc): the root's directory
        self._pages_in: dict[int, set[int]] = {}  # chunk id -> pages it holds that the directory names
        self._slots = (16, 16, 16)  # table sizes of the last build
        self._slot: dict[tuple[int, str], int] = {}  # (table, key) -> slot; table 0 flags, 1 segments, 2 key sets
        self._where: dict[int, set[tuple[int, str]]] = {}  # chunk id -> entries whose blob it holds
        self._live: dict[int, int] = {}  # chunk id -> live bytes (blobs and pages)
        self._size: dict[int, int] = {}  # chunk id -> bytes written
        self._blobs: dict[tuple[int, str], tuple[Mapping[str, Any], bytes, int]] = {}  # entry -> (entity, blob, key length)
        self._lists: dict[tuple[str, str], _KeyList] = {}  # (segment id, field) -> its out-of-line list
        self._sets: dict[str, bytes] = {}  # key-set digest (hex) -> its blob
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
            try:
                built = self._incremental(dataset, generation, changes, allocate)
            except _NeedsFullBuild:
                built = None
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

    def _blob(self, which: int, key: str, entity: Mapping[str, Any], full: bool) -> tuple[bytes, int]:
        """The entity's blob (UTF-8 key + msgpack), from the cache when unchanged.

        "Unchanged" means the same object or an equal one, never merely the
        same version: a full sync replaces content whatever its version says
        (R-12), e.g. a hand-edited bootstrap file that kept its updatedAt.
        """
        if which == KEY_SETS:
            return self._sets[key], len(key)
        if which == FLAGS and isinstance(entity, Packed):
            # Kept as its bytes already: nothing to encode, nothing to cache.
            raw = key.encode("utf-8")
            if len(raw) > 0xFFFF:
                raise SnapshotError(f"key {key[:40]!r}... is longer than 65535 bytes")
            return raw + entity.blob, len(raw)
        cached = self._blobs.get((which, key))
        if cached is not None and (cached[0] is entity or (cached[0].get("version") == entity.get("version") and cached[0] == entity)):
            return cached[1], cached[2]
        raw = key.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise SnapshotError(f"key {key[:40]!r}... is longer than 65535 bytes")
        plain = entity.take_plain() if isinstance(entity, Packed) else entity
        stored = plain if which == FLAGS else self._stored_segment(key, plain, full)
        blob = raw + msgpack.packb(stored, use_bin_type=True)
        self._blobs[(which, key)] = (entity, blob, len(raw))
        return blob, len(raw)

    # ------------------------------------------------------------ key sets

    def _stored_segment(self, seg_id: str, entity: Mapping[str, Any], full: bool) -> Mapping[str, Any]:
        """The form a segment is stored in: long lists as key set + delta.

        Raises :class:`_NeedsFullBuild` (outside a full build) when a key set
        would have to be written or dropped."""
        plans: dict[str, _KeyList | None] = {}
        for field in KEYSET_FIELDS:
            keys = [] if entity.get("archived") else entity.get(field) or []
            state = self._lists.get((seg_id, field))
            plan = self._plan_list(state, keys)
            rebase = plan is not None and not plan.digest
            dropped = state is not None and (plan is None or plan.digest != state.digest)
            if rebase or dropped:
                # A key set to write, or one no segment names any more.
                if not full:
                    raise _NeedsFullBuild
                if rebase:
                    plan = self._new_key_set(keys)
            plans[field] = plan
        refs = {}
        for field, plan in plans.items():
            if plan is None:
                self._lists.pop((seg_id, field), None)
            else:
                self._lists[(seg_id, field)] = plan
                refs[field] = [bytes.fromhex(plan.digest), sorted(plan.added), sorted(plan.removed)]
        if not refs:
            return entity
        stored = dict(entity)
        for field in refs:
            stored[field] = []
        stored["keysets"] = refs
        return stored

    def _plan_list(self, state: _KeyList | None, keys: list[str]) -> _KeyList | None:
        """This list's next state: None (stored inline), the same key set with
        a new delta, or a new key set to write (digest not yet in ``_sets``)."""
        if state is not None:
            if keys is state.listed:
                return state
            limit = delta_limit(state.size)
            delta = list_delta(state.listed, keys, limit)
            if delta is not None and len(keys) >= KEYSET_MIN // 2:  # some room under: no flapping at the threshold
                added_now, removed_now = delta
                added = (state.added - removed_now) | added_now
                removed = (state.removed - added_now) | removed_now
                if len(added) + len(removed) <= limit:
                    return _KeyList(state.digest, state.size, keys, added, removed)
        if len(keys) < (KEYSET_MIN if state is None else KEYSET_MIN // 2):
            return None
        return _KeyList("", len(keys), keys, frozenset(), frozenset())  # a rebase: no digest yet

    def _new_key_set(self, keys: list[str]) -> _KeyList:
        payload = msgpack.packb(keys, use_bin_type=True)
        digest = hashlib.blake2b(payload, digest_size=DIGEST_SIZE).hexdigest()
        self._sets.setdefault(digest, digest.encode("ascii") + payload)
        return _KeyList(digest, len(keys), keys, frozenset(), frozenset())

    # ------------------------------------------------------------ builds

    def _full(self, dataset: DataSet, generation: int, allocate: Allocate) -> Built:
        tables = (dataset.stored_flags, dataset.stored_segments)
        fslots, sslots = _slots_for(len(tables[0])), _slots_for(len(tables[1]))
        self._blobs = {e: self._blobs[e] for e in ((w, k) for w in (0, 1) for k in tables[w]) if e in self._blobs}
        self._lists = {e: s for e, s in self._lists.items() if e[0] in tables[1]}
        todo: list[tuple[int, str, int, bytes, int, Mapping[str, Any]]] = []
        blob_bytes = 0
        for which in (FLAGS, SEGMENTS):
            for key, entity in tables[which].items():
                blob, klen = self._blob(which, key, entity, True)
                todo.append((which, key, -1, blob, klen, entity))
                blob_bytes += len(blob)
        # Exactly the key sets the segments name now.
        self._sets = {s.digest: self._sets[s.digest] for s in self._lists.values()}
        for digest, blob in self._sets.items():
            todo.append((KEY_SETS, digest, -1, blob, len(digest), _KEY_SET_ENTITY))
            blob_bytes += len(blob)
        slots = (fslots, sslots, _slots_for(len(self._sets)))
        entries = sum(slots)
        tables_bytes = entries * ENTRY_SIZE
        chunk_size = CHUNK_HEADER_SIZE + blob_bytes + tables_bytes
        root = allocate("root", generation, root_size(*slots))
        chunk = allocate("chunk", generation, chunk_size)
        self._slots = slots
        self._tables = bytearray(tables_bytes)
        self._directory = bytearray(PAGE_REF_SIZE * _pages(entries))
        self._slot, self._where, self._pages_in, self._active = {}, {}, {}, [0, 0]
        _CHUNK_HEADER.pack_into(chunk, 0, CHUNK_MAGIC, generation)
        self._fill(slots, chunk, generation, CHUNK_HEADER_SIZE + tables_bytes, todo)
        self._write_pages(chunk, generation, CHUNK_HEADER_SIZE, range(_pages(entries)), entries)
        self._live = {generation: chunk_size - CHUNK_HEADER_SIZE}
        self._size = dict(self._live)
        self._write_root(root, dataset, generation, slots)
        return Built(root, {generation: chunk}, frozenset(self._live), True)

    @staticmethod
    def _table(which: int, slots: tuple[int, int, int]) -> tuple[int, int]:
        """(offset in the tables, slots) of one table with these table sizes."""
        return sum(slots[:which]) * ENTRY_SIZE, slots[which]

    def _free_slot(self, which: int, key: str, slots: tuple[int, int, int], claimed: set[int]) -> int:
        """Where a new key goes: its first free slot (open addressing), past ``claimed`` ones."""
        table, n = self._table(which, slots)
        mask = n - 1
        slot = key_hash(key.encode("utf-8")) & mask
        tables = self._tables
        while tables[table + slot * ENTRY_SIZE + 26] & OCCUPIED or table + slot * ENTRY_SIZE in claimed:
            slot = (slot + 1) & mask
        return slot

    def _fill(self, slots: tuple[int, int, int], chunk: Buffer, chunk_id: int, offset: int, todo: list[Any]) -> None:
        """Write the blobs into ``chunk`` from ``offset`` on and point their
        slots (in the in-memory tables) at them."""
        here = self._where.setdefault(chunk_id, set())
        tables = self._tables
        for which, key, slot, blob, klen, entity in todo:
            table, n = self._table(which, slots)
            h = key_hash(blob[:klen])
            if slot < 0:
                mask = n - 1
                slot = h & mask
                while tables[table + slot * ENTRY_SIZE + 26] & OCCUPIED:
                    slot = (slot + 1) & mask
            chunk[offset : offset + len(blob)] = blob
            bits = OCCUPIED | (ARCHIVED if entity.get("archived") else 0)
            _ENTRY.pack_into(tables, table + slot * ENTRY_SIZE, h, zlib.crc32(blob), chunk_id, offset, len(blob), klen, bits, int(entity["version"]))
            self._slot[(which, key)] = slot
            here.add((which, key))
            offset += len(blob)
            if which != KEY_SETS and not entity.get("archived"):
                self._active[which] += 1

    def _write_pages(self, chunk: Buffer, chunk_id: int, offset: int, pages: Iterable[int], entries: int) -> None:
        """Copy these pages of the tables into ``chunk`` from ``offset`` on and
        point the directory at them."""
        tables = memoryview(self._tables)
        here = self._pages_in.setdefault(chunk_id, set())
        for page in pages:
            start = page * PAGE_BYTES
            data = tables[start : start + _page_length(page, entries)]
            chunk[offset : offset + len(data)] = data
            _PAGE_REF.pack_into(self._directory, page * PAGE_REF_SIZE, chunk_id, offset, zlib.crc32(data))
            here.add(page)
            offset += len(data)

    def _incremental(self, dataset: DataSet, generation: int, changes: Changes, allocate: Allocate) -> Built | None:
        slots = self._slots
        entries_total = sum(slots)
        tables: tuple[Mapping[str, Mapping[str, Any]], ...] = (dataset.stored_flags, dataset.stored_segments)
        if len(tables[0]) > max_entries(slots[0]) or len(tables[1]) > max_entries(slots[1]):
            return None  # a table would fill past three quarters
        entries = {(FLAGS, k) for k in changes.flags} | {(SEGMENTS, k) for k in changes.segments}
        merged: list[int] = []
        if len(self._live) + 1 > MAX_CHUNKS:
            # Fold every chunk but the largest into the new one (they are the
            # small ones written by patches): chunk count stays bounded.
            largest = max(self._live, key=lambda c: self._size[c])
            merged = [c for c in self._live if c != largest]
            for c in merged:
                entries |= self._where.get(c, set())
        # Plan first, touching nothing: encode the entries, find their slots
        # and pages, and take their old blobs and pages off their chunks' live counts.
        live = dict(self._live)
        active = list(self._active)
        todo = []
        moved: dict[int, set[tuple[int, str]]] = {}
        claimed: set[int] = set()
        pages: set[int] = set()
        for c in merged:
            pages |= self._pages_in.get(c, set())
        blob_bytes = 0
        for which, key in sorted(entries):
            entity = _KEY_SET_ENTITY if which == KEY_SETS else tables[which].get(key)
            if entity is None or (which == KEY_SETS and key not in self._sets):
                return None  # a patch never removes; rebuild to stay safe
            table, _n = self._table(which, slots)
            slot = self._slot.get((which, key), -1)
            if slot >= 0:
                _h, _c, chunk_id, _o, length, _k, bits, _v = _ENTRY.unpack_from(self._tables, table + slot * ENTRY_SIZE)
                live[chunk_id] -= length
                moved.setdefault(chunk_id, set()).add((which, key))
                if which != KEY_SETS:
                    active[which] -= 0 if bits & ARCHIVED else 1
            else:
                slot = self._free_slot(which, key, slots, claimed)
                claimed.add(table + slot * ENTRY_SIZE)
            pages.add((table + slot * ENTRY_SIZE) // PAGE_BYTES)
            blob, klen = self._blob(which, key, entity, False)
            todo.append((which, key, slot, blob, klen, entity))
            blob_bytes += len(blob)
        page_moves: dict[int, set[int]] = {}
        page_bytes = 0
        for page in pages:
            chunk_id, _o, _crc = _PAGE_REF.unpack_from(self._directory, page * PAGE_REF_SIZE)
            length = _page_length(page, entries_total)
            live[chunk_id] -= length
            page_moves.setdefault(chunk_id, set()).add(page)
            page_bytes += length
        new_bytes = blob_bytes + page_bytes
        live = {c: n for c, n in live.items() if n > 0}
        written = sum(self._size[c] for c in live) + new_bytes
        dead = written - sum(live.values()) - new_bytes
        if len(live) + 1 > MAX_CHUNKS or dead * 2 > written:
            return None  # dead bytes outweigh live ones: compact
        root = allocate("root", generation, root_size(*slots))
        chunk = allocate("chunk", generation, CHUNK_HEADER_SIZE + new_bytes)
        for chunk_id, gone in moved.items():
            if chunk_id in self._where:
                self._where[chunk_id] -= gone
        for chunk_id, gone_pages in page_moves.items():
            if chunk_id in self._pages_in:
                self._pages_in[chunk_id] -= gone_pages
        for chunk_id in set(self._where) - set(live):
            del self._where[chunk_id]
        for chunk_id in set(self._pages_in) - set(live):
            del self._pages_in[chunk_id]
        self._active = active
        _CHUNK_HEADER.pack_into(chunk, 0, CHUNK_MAGIC, generation)
        self._fill(slots, chunk, generation, CHUNK_HEADER_SIZE + page_bytes, todo)
        self._write_pages(chunk, generation, CHUNK_HEADER_SIZE, sorted(pages), entries_total)
        live[generation] = new_bytes
        self._size = {c: self._size.get(c, live[c]) for c in live}
        self._live = live
        self._write_root(root, dataset, generation, slots)
        return Built(root, {generation: chunk}, frozenset(live), False)

    def _write_root(self, root: Buffer, dataset: DataSet, generation: int, slots: tuple[int, int, int]) -> None:
        """Header, chunk list and page directory: the last thing a build writes."""
        chunks = sorted(self._live)
        fslots, sslots, kslots = slots
        _HEADER.pack_into(
            root, 0, MAGIC, LAYOUT, HEADER_SIZE, generation, dataset.version, fslots, sslots,
            len(dataset.stored_flags), len(dataset.stored_segments), self._active[0], self._active[1], len(chunks),
            kslots, len(self._sets),
        )  # fmt: skip
        root[HEADER_SIZE:TABLES] = struct.pack(f"<{len(chunks)}Q", *chunks).ljust(TABLES - HEADER_SIZE, b"\0")
        root[TABLES : TABLES + len(self._directory)] = self._directory
