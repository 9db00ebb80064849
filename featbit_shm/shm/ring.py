"""Per-worker event rings in shared memory, and the registry that hands them out.

Theory of operation
-------------------

Each worker process owns one ring (``fbshm.<hash>.r<id>``): it is the only
producer; the sync process is the only consumer. Recording an event is a
bounds check, a memcpy and one 8-byte store -- no lock shared between
processes, never a wait, and a system call only once per 64 KiB written
(see "Memory follows the backlog"). A full ring drops the NEW event and
counts it (R-67). Evaluation events -- one per ``variation()`` -- take a C
fast path when it was built (:mod:`._fastring`, :meth:`Ring.enable_fast_path`):
it writes the same bytes as :meth:`Ring.append` for a record that fits in
reserved pages before the end of the ring, and leaves anything else to it.

Ring layout: a header page (4096 bytes; only the first 19 little-endian u64
words are used), then ``capacity`` data bytes, a whole number of pages::

    word  field              written by
       0  magic "FBSHMRNG"   creator
       1  layout             creator
       2  capacity           creator (multiple of 8)
       3  head               producer: bytes ever written (monotonic)
       4  tail               consumer: bytes ever consumed (monotonic)
       5  dropped            producer: events refused, ring full
       6  no space           producer: events refused, /dev/shm full
       7  pid                producer
       8  flush requested    producer: incremented by flush()/flush_and_wait()
       9  flush done         consumer: the last request it has processed
      10  malformed          consumer: records it could not decode
      11  consumed           consumer: records taken out
      12  reserved           producer: pages below this position are committed
      13  served generation  producer: the snapshot generation its process serves (at each store watch)
      14  stale since        producer: Unix ms since it cannot map the store's newest generation (0: it can)
      15  written            producer: records written (so events waiting = written - consumed, exactly)
      16  too large          producer: events refused before writing, bigger than the event size bound
      17  lost               consumer: records taken out and then lost (refused, malformed, given up)
      18  pid namespace      producer: the PID namespace its pid means something in (0: unknown)

A record is a u32 length and that many bytes, padded to 8 (the producer
hands the ring records already framed with their length, so writing one is
a single copy). A record that
would run past the end is written at offset 0 instead, after a u32
``0xFFFFFFFF`` wrap marker; the skipped bytes count as written.

Ordering: the producer writes the record, THEN stores ``head``; the consumer
reads ``head``, THEN the bytes below it, and stores ``tail`` only after it
has copied them out -- and, in the sync process, only once FeatBit accepted
them (or they failed for good), so a sync process killed with events in
flight leaves them in the ring for its successor. So neither side ever reads bytes the other may still be
writing (x86-64 keeps stores in order; the consumer validates every length
and skips a ring whose bytes make no sense, counting it).

Memory follows the backlog, not the capacity
-------------------------------------------
The default capacity holds 10 s of 10k events/s (16 MiB), but a healthy
sync process keeps a ring nearly empty, so a ring holds memory only for the
pages between ``tail`` and ``head``. The producer, and only the producer,
commits and releases pages, at most once per 64 KiB written:

* before writing into pages it has not reserved, it reserves the next
  64 KiB with ``posix_fallocate`` -- so a full /dev/shm refuses the event
  (counted in ``dropped`` and ``no space``) instead of killing the worker
  with SIGBUS on a page fault;
* at the same moment it releases (``madvise(MADV_REMOVE)``, a hole punched
  in the tmpfs file) every whole page below the committed ``tail`` that
  the next lap has not reached.

Only the producer does both, under its own lock, so no page is released
while a write into it is in flight. The consumer never reads below
``tail``. A page at ring offset ``p`` released at absolute position ``a``
comes back at ``a + capacity``; the producer writes there only after the
next reservation. An idle worker keeps at most the pages of its last
64 KiB; a worker whose sync process is dead grows its ring up to the
capacity, then drops (R-67).

The registry that hands rings out is :mod:`.registry`.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any, Final

from .._core.errors import ConfigError, SharedMemoryError
from .._runtime.environment import env_bool
from .._runtime.notices import warn_limited
from .._runtime.processes import pid_namespace
from .formats import RING_LAYOUT as LAYOUT
from .names import StoreNames
from .objects import create_object, open_object, unlink_object
from .trust import RING

try:  # the optional C fast path of evaluation events (see enable_fast_path)
    from ._fastring import Writer as _FastWriter
except ImportError:  # no compiler at install time: the pure-Python path
    _FastWriter = None

MAGIC: Final = b"FBSHMRNG"
HEADER: Final = 4096  # one page: the data starts page-aligned (see "Memory follows the backlog")
PAGE: Final = mmap.PAGESIZE
RESERVE: Final = 64 * 1024  # bytes the producer commits at a time
WRAP: Final = 0xFFFFFFFF
_LEN: Final = struct.Struct("<I")

W_CAP, W_HEAD, W_TAIL, W_DROPPED, W_NOSPACE, W_PID, W_FLUSH_REQ, W_FLUSH_DONE, W_MALFORMED, W_CONSUMED, W_RESERVED = range(2, 13)
W_SERVED, W_STALE_SINCE, W_WRITTEN, W_TOO_LARGE, W_LOST, W_PIDNS = range(13, 19)


def ring_capacity(requested: int) -> int:
    """The data capacity a ring is created with for a requested size (whole pages)."""
    return max(PAGE, requested - requested % PAGE)


# The producer's two system calls; module attributes so tests can make
# /dev/shm look full.
_fallocate = os.posix_fallocate


def _release(mm: mmap.mmap, start: int, length: int) -> None:
    mm.madvise(mmap.MADV_REMOVE, start, length)


class Ring:
    """A mapped ring; the producer and consumer use different methods."""

    def __init__(self, mm: mmap.mmap, name: str, fd: int = -1) -> None:
        self.name = name
        self._mm = mm
        self._fd = fd  # the producer reserves pages through it; -1 when closed
        self.words = memoryview(mm)[:HEADER].cast("Q")
        if bytes(mm[:8]) != MAGIC or self.words[1] != LAYOUT:
            raise SharedMemoryError(f"{name} is not an event ring (layout {LAYOUT})")
        self.capacity = int(self.words[W_CAP])
        if self.capacity <= 0 or self.capacity % PAGE or HEADER + self.capacity > len(mm):
            raise SharedMemoryError(f"{name} has a bad capacity")
        self.data = memoryview(mm)[HEADER : HEADER + self.capacity]
        # Consumer side: the read cursor runs ahead of the committed tail
        # while taken records are on their way to FeatBit (see take/commit_to).
        self._read = int(self.words[W_TAIL])
        self._taken = 0
        # Producer side (only the owning process appends). head and the
        # reserved mark live in the header, where the C fast path reads and
        # advances them too; tail is a cache, re-read when the ring looks
        # full. Pages in [page of head, reserved) are committed; pages below
        # _released were given back (unknown for a ring opened rather than
        # created: the first reservation releases the whole drained lap).
        self._tail = int(self.words[W_TAIL])
        self._released = max(0, self._tail - self.capacity) // PAGE * PAGE
        self.writer: Any = None  # the C fast path, once enable_fast_path() made it

    @classmethod
    def create(cls, names: StoreNames, ring_id: int, capacity: int) -> Ring:
        """A new empty ring: the header page and the first 64 KiB are
        reserved now (a full /dev/shm raises :class:`SharedMemoryError`),
        the rest as it is written. A stale ring of this store under the same
        id is replaced; another account's object under the name raises
        :class:`~.trust.Untrusted` (the registry then takes the next id)."""
        capacity = ring_capacity(capacity)
        name = names.ring(ring_id)
        first = min(RESERVE, capacity)

        def reserve(fd: int, offset: int, length: int) -> None:
            _fallocate(fd, offset, length)
            os.ftruncate(fd, HEADER + capacity)

        access = names.access
        try:
            fd = create_object(name, HEADER + first, RING, access, reserve)
        except FileExistsError:
            os.close(open_object(name, RING, access))  # raises Untrusted when it is not ours
            unlink_object(name, RING, access)  # ours: a stale ring with a recycled id
            fd = create_object(name, HEADER + first, RING, access, reserve)
        try:
            mm = mmap.mmap(fd, HEADER + capacity)
        except BaseException:
            os.close(fd)
            raise
        mm[:8] = MAGIC
        words = memoryview(mm)[:HEADER].cast("Q")
        words[1] = LAYOUT
        words[W_CAP] = capacity
        words[W_PID] = os.getpid()
        words[W_PIDNS] = pid_namespace()
        words.release()
        ring = cls(mm, name, fd)
        ring.words[W_RESERVED] = first
        return ring

    @property
    def ring_id(self) -> int:
        return int(self.name.rsplit(".r", 1)[1])

    @classmethod
    def open(cls, names: StoreNames, ring_id: int) -> Ring:
        """Map an existing ring of this store (checked, :mod:`.trust`)."""
        name = names.ring(ring_id)
        fd = open_object(name, RING, names.access, writable=True)
        try:
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
            return cls(mm, name, fd)
        except BaseException:
            os.close(fd)
            raise

    # ------------------------------------------------------------------ producer

    def append(self, framed: bytes) -> bool:
        """Write one framed record (u32 length + record, as the encoders of
        :mod:`featbit_shm._core.records` return it); False, and counted, when it
        does not fit (R-67) or /dev/shm has no page for it.

        ``head`` is ours alone, so it is kept in a Python int; the consumer's
        ``tail`` is read again only when the ring looks full or a new 64 KiB
        is reserved.
        """
        size = len(framed)
        total = (size + 7) & ~7
        cap = self.capacity
        words = self.words
        head = words[W_HEAD]
        pos = head % cap
        waste = cap - pos if pos + total > cap else 0
        end = head + waste + total
        if end - self._tail > cap:
            self._tail = self.words[W_TAIL]
            if end - self._tail > cap:
                self.words[W_DROPPED] += 1
                return False
        if end > words[W_RESERVED] and not self._reserve(head, end):
            return False
        data = self.data
        if waste:
            _LEN.pack_into(data, pos, WRAP)
            pos = 0
        data[pos : pos + size] = framed
        # The record is complete; only now may the consumer see it.
        words[W_HEAD] = end
        words[W_WRITTEN] += 1
        return True

    def _reserve(self, head: int, end: int) -> bool:
        """Give back the pages consumed since the last call, then commit the
        pages from ``head`` to at least ``end`` (see the module docstring)."""
        if self._fd < 0:  # closed
            return False
        cap = self.capacity
        self._tail = tail = int(self.words[W_TAIL])
        # Release: whole pages below tail, but none whose next-lap copy
        # (position + cap) lies below head -- those hold unread records.
        low = max(self._released, -((cap - head) // PAGE) * PAGE)  # ceil to a page of head - cap
        high = tail // PAGE * PAGE
        if high > low:
            try:
                for offset, length in self._spans(low, high):
                    _release(self._mm, HEADER + offset, length)
            except OSError as exc:  # e.g. an old kernel: the pages just stay
                warn_limited("event-ring-release", f"featbit_shm: cannot release event ring pages ({exc}); the ring keeps its memory")
            self._released = high
        start = head // PAGE * PAGE
        stop = min(max(-(-end // PAGE) * PAGE, start + RESERVE), start + cap)
        try:
            for offset, length in self._spans(start, stop):
                _fallocate(self._fd, HEADER + offset, length)
        except OSError as exc:
            self.words[W_DROPPED] += 1
            self.words[W_NOSPACE] += 1
            warn_limited("event-ring-reserve", f"featbit_shm: /dev/shm has no room for events, they are dropped and counted: {exc}")
            return False
        self.words[W_RESERVED] = stop
        return True

    def _spans(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Ring offsets of the absolute positions [start, stop) (< one lap): one or two spans."""
        cap = self.capacity
        offset = start % cap
        length = stop - start
        if offset + length <= cap:
            return [(offset, length)]
        return [(offset, cap - offset), (0, length - (cap - offset))]

    def append_record(self, record: bytes) -> bool:
        """Frame and write a raw record (tests, tools)."""
        return self.append(_LEN.pack(len(record)) + record)

    @property
    def resident_bytes(self) -> int:
        """Bytes of memory the ring holds now (header page included)."""
        if self._fd < 0:
            return 0
        return os.fstat(self._fd).st_blocks * 512

    # ------------------------------------------------------------------ consumer

    def take(self, limit: int) -> list[bytes]:
        """Copy out up to ``limit`` records after those already taken; :meth:`commit` frees their space."""
        return [record for record, _end in self.take_positions(limit)]

    def take_positions(self, limit: int) -> list[tuple[bytes, int]]:
        """Like :meth:`take`, with the ring position just past each record (for :meth:`commit_to`).

        Taken records keep their space until committed: a consumer that dies
        before committing leaves them for the next one (at-least-once)."""
        w = self.words
        cap = self.capacity
        head = w[W_HEAD]
        tail = max(self._read, int(w[W_TAIL]))
        data = self.data
        records: list[tuple[bytes, int]] = []
        while tail < head and len(records) < limit:
            pos = tail % cap
            if cap - pos < 4:
                tail += cap - pos
                continue
            n = _LEN.unpack_from(data, pos)[0]
            if n == WRAP:
                tail += cap - pos
                continue
            total = (n + 11) & ~7
            if pos + total > cap or tail + total > head:
                # Nonsense from a producer that died mid-write or a damaged
                # ring: skip everything written so far, and count it.
                w[W_MALFORMED] += 1
                tail = head
                break
            tail += total
            records.append((bytes(data[pos + 4 : pos + 4 + n]), tail))
        self._read = tail
        self._taken += len(records)
        return records

    def commit(self) -> None:
        """Free the space of every record taken so far."""
        self.commit_to(self._read, self._taken)

    def commit_to(self, position: int, records: int) -> None:
        """Free the space up to ``position`` (a position :meth:`take_positions`
        gave), which holds ``records`` more taken records."""
        if position > self.words[W_TAIL]:
            self.words[W_TAIL] = position
        self.words[W_CONSUMED] += records
        self._taken = max(0, self._taken - records)

    @property
    def unread_bytes(self) -> int:
        """Bytes written and not yet taken."""
        return int(self.words[W_HEAD]) - max(self._read, int(self.words[W_TAIL]))

    @property
    def pending_bytes(self) -> int:
        """Bytes written and not yet committed (0: the ring is empty)."""
        return int(self.words[W_HEAD] - self.words[W_TAIL])

    def enable_fast_path(self) -> bool:
        """Let this process's producer write evaluations through the C fast
        path (:mod:`._fastring`, built when a compiler was there at install).
        False: not available, :meth:`append` does it all."""
        try:
            if env_bool("FEATBIT_SHM_PURE_PYTHON"):
                return False
        except ConfigError as exc:
            warn_limited("pure-python-env", f"featbit_shm: {exc}; using the C fast path")
        if self.writer is None and _FastWriter is not None:
            try:
                self.writer = _FastWriter(self._mm)
            except (ValueError, BufferError, TypeError):
                return False
        return self.writer is not None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        for view in (self.words, self.data):
            view.release()
        self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


