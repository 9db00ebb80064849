"""The registry of a store's event rings and client processes.

Registry (``fbshm.<uid>.<hash>.reg``): 1024 slots of (pid, ring id, state, time),
changed only under a file lock (``flock``; see :mod:`.locks`). A
client registers its process and claims the process's ring in one locked
step when it is built; after a fork the child claims its own on its first
event (it never writes its parent's ring). The sync process drains every
claimed ring; once a ring's pid is dead and the ring is empty, it unlinks
the ring and frees the slot -- so a worker killed with SIGKILL loses
nothing it had already recorded.

Spare rings: creating a ring (an object, a mapping, its first 64 KiB) is
still a few system calls a worker would pay while holding the lock. So the
sync process keeps a few empty rings ready (state SPARE, no pid): one more
than the registered clients that have no ring yet. A claim takes a spare of
its capacity when there is one, and creates its own only otherwise.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from collections.abc import Callable
from typing import Final

from .._core.errors import SharedMemoryError
from .._core.snapshot import SnapshotError
from .._runtime.processes import pid_namespace
from .formats import REGISTRY_LAYOUT
from .locks import exclusive
from .names import StoreNames
from .objects import create_object, map_readonly, open_object, unlink_object
from .ring import W_HEAD, W_PID, W_PIDNS, W_TAIL, Ring, ring_capacity
from .trust import REGISTRY, RING, Untrusted

MAGIC: Final = b"FBSHMREG"
# The header: magic at 0, the last ring id given out (u64) at 8, the layout
# (u32, formats.REGISTRY_LAYOUT) at 16; the rest of HEADER is zero.
_LAYOUT_AT: Final = 16
SLOTS: Final = 1024  # processes per store that can register (and record events) at once
HEADER: Final = 64
_SLOT: Final = struct.Struct("<qQQd")  # pid, ring id, state, claimed at
SIZE: Final = HEADER + SLOTS * _SLOT.size
FREE, CLAIMED, CLIENT, SPARE = 0, 1, 2, 3


_STATE_AT: Final = 16  # the state's offset within a slot


def _is_registry(mm: mmap.mmap) -> bool:
    return bytes(mm[:8]) == MAGIC and struct.unpack_from("<I", mm, _LAYOUT_AT)[0] == REGISTRY_LAYOUT


def _slots_in_state(mm: mmap.mmap, state: int) -> list[int]:
    """Indexes of the slots in ``state`` (non-zero), found by a byte search
    in C: scanning 1,024 slots in Python cost a fresh worker's claim 0.3 ms."""
    pattern = struct.pack("<Q", state)
    found = []
    pos = mm.find(pattern, HEADER + _STATE_AT, SIZE)
    while pos != -1:
        offset = pos - HEADER
        if offset % _SLOT.size == _STATE_AT:
            found.append(offset // _SLOT.size)
        pos = mm.find(pattern, pos + 1, SIZE)
    return found


def peek(names: StoreNames) -> list[tuple[int, int, int]]:
    """(pid, ring id, state) of every used slot, read without the lock from a
    read-only map of the store's trusted registry (``featbit-shm status``: a
    reader that must change nothing, not even create a lock file)."""
    for name in names.registries:
        try:
            mm = map_readonly(name, REGISTRY, names.access, SIZE)
        except (FileNotFoundError, Untrusted, SnapshotError):
            continue
        try:
            if not _is_registry(mm):
                return []
            rows = (_SLOT.unpack_from(mm, HEADER + i * _SLOT.size) for i in range(SLOTS))
            return [(pid, ring_id, state) for pid, ring_id, state, _at in rows if state != FREE]
        finally:
            mm.close()
    return []


class Registry:
    """The table of claimed rings (one per worker process)."""

    def __init__(self, names: StoreNames) -> None:
        self.names = names
        self.name = names.registry  # the slot in use, once mapped (see _map)
        self.lock_path = names.registry_lock_path
        self._mm: mmap.mmap | None = None

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """The registry lock, held while the body runs (:func:`.locks.exclusive`)."""
        return exclusive(self.lock_path, self.names.access)

    def attach(self, *, create: bool = True) -> bool:
        """Map the table under the lock, as a worker's registration does (the
        gunicorn master warms this path once before it forks workers). With
        ``create=False`` a store that has no registry yet is left as it is.
        True when the table is mapped."""
        with self._locked():
            if not create and self._mm is None:
                fd, _name = self._find()
                if fd is None:
                    return False
                os.close(fd)  # _map opens it again
            self._map()
            return True

    def _find(self) -> tuple[int | None, str | None]:
        """(descriptor, name) of the first registry slot holding a trusted
        registry, or (None, the first free slot's name). Untrusted slots are
        refused (logged) and skipped."""
        free = None
        for name in self.names.registries:
            try:
                fd = open_object(name, REGISTRY, self.names.access, writable=True)
            except FileNotFoundError:
                free = free or name
                continue
            except Untrusted:
                continue
            self.name = name
            return fd, name
        return None, free

    def _map(self) -> mmap.mmap:
        if self._mm is not None:
            return self._mm
        fd, name = self._find()
        fresh = False
        if fd is None:
            if name is None:
                raise SharedMemoryError(f"every registry name of store {self.names.tag} is taken by another account")
            try:
                fd = create_object(name, SIZE, REGISTRY, self.names.access)
                fresh = True
            except FileExistsError:  # created meanwhile (we hold the lock: by someone else)
                fd = open_object(name, REGISTRY, self.names.access, writable=True)
            self.name = name
        try:
            self.names.access.widen(fd, REGISTRY)
            if os.fstat(fd).st_size < SIZE:
                raise SharedMemoryError(f"{self.name} is too small to be a registry")
            mm = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        if fresh or not _is_registry(mm):
            mm[:] = bytes(SIZE)
            mm[:8] = MAGIC
            struct.pack_into("<I", mm, _LAYOUT_AT, REGISTRY_LAYOUT)
        self._mm = mm
        return mm

    def slots(self) -> list[tuple[int, int, int, int, float]]:
        """(slot, pid, ring id, state, claimed at) of every claimed slot."""
        mm = self._map()
        out = []
        for i in range(SLOTS):
            pid, ring_id, state, at = _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)
            if state == CLAIMED:  # rings only; client slots carry none
                out.append((i, pid, ring_id, state, at))
        return out

    def claim(self, capacity: int) -> Ring:
        """A ring for this process, registered under the lock: a spare of this
        capacity when the sync process left one ready, else a new one."""
        with self._locked():
            return self._claim_locked(self._map(), ring_capacity(capacity))

    def _claim_locked(self, mm: mmap.mmap, capacity: int) -> Ring:
        """Claim a ring for this process, the producer: with the C fast path on."""
        ring = self._take_or_create(mm, capacity)
        ring.enable_fast_path()
        return ring

    def _take_or_create(self, mm: mmap.mmap, capacity: int) -> Ring:
        for i in _slots_in_state(mm, SPARE):
            _pid, ring_id, state, _at = _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)
            try:
                ring = Ring.open(self.names, ring_id)
            except (OSError, SharedMemoryError):
                _SLOT.pack_into(mm, HEADER + i * _SLOT.size, 0, 0, FREE, 0.0)  # vanished or damaged
                continue
            if ring.capacity != capacity or ring.words[W_HEAD] != ring.words[W_TAIL]:
                ring.close()
                continue
            ring.words[W_PID] = os.getpid()
            ring.words[W_PIDNS] = pid_namespace()
            _SLOT.pack_into(mm, HEADER + i * _SLOT.size, os.getpid(), ring_id, CLAIMED, time.time())
            return ring
        for i in range(SLOTS):
            pid, ring_id, state, _at = _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)
            if state == FREE:
                break
        else:
            raise SharedMemoryError(f"all {SLOTS} event rings are claimed")
        next_id, ring = self._create_ring(mm, capacity)
        _SLOT.pack_into(mm, HEADER + i * _SLOT.size, os.getpid(), next_id, CLAIMED, time.time())
        return ring

    def _create_ring(self, mm: mmap.mmap, capacity: int) -> tuple[int, Ring]:
        """A new ring under the next free id (called with the lock held): an
        id whose name another account squatted is skipped (refused, logged)."""
        for _ in range(16):
            ring_id = struct.unpack_from("<Q", mm, 8)[0] + 1
            struct.pack_into("<Q", mm, 8, ring_id)
            try:
                return ring_id, Ring.create(self.names, ring_id, capacity)
            except Untrusted:
                continue
        raise SharedMemoryError(f"16 ring names in a row of store {self.names.tag} are taken by another account")

    def add_spare(self, capacity: int) -> int | None:
        """Create one empty ring for a future worker (sync process). Returns its
        id, or None when fewer than a quarter of the slots are free (spares
        never crowd out workers)."""
        with self._locked():
            mm = self._map()
            free = sum(1 for i in range(SLOTS) if _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)[2] == FREE)
            if free < SLOTS // 4:
                return None
            # Spares are rare (one at a time) and reserve only 64 KiB: made
            # under the lock, like a worker's own ring.
            ring_id, ring = self._create_ring(mm, capacity)
        ring.close()
        with self._locked():
            for i in range(SLOTS):
                if _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)[2] == FREE:
                    _SLOT.pack_into(mm, HEADER + i * _SLOT.size, 0, ring_id, SPARE, time.time())
                    return int(ring_id)
        unlink_object(self.names.ring(ring_id), RING, self.names.access)  # the slots filled up meanwhile
        return None

    def spares_wanted(self, alive: Callable[[int], bool]) -> tuple[int, int]:
        """(spares there are, spares wanted): one per live registered client
        that has no ring yet, plus one for the next worker to start."""
        with self._locked():
            mm = self._map()
            clients, owners, spares = set(), set(), 0
            for i in range(SLOTS):
                pid, _ring_id, state, _at = _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)
                if state == SPARE:
                    spares += 1
                elif state == CLAIMED:
                    owners.add(pid)
                elif state == CLIENT and alive(pid):
                    clients.add(pid)
            return spares, len(clients - owners) + 1

    def drop_spares(self) -> int:
        """Unlink every spare ring and free its slot (a clean shutdown)."""
        dropped = 0
        with self._locked():
            mm = self._map()
            for i in range(SLOTS):
                _pid, ring_id, state, _at = _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)
                if state == SPARE:
                    unlink_object(self.names.ring(ring_id), RING, self.names.access)
                    _SLOT.pack_into(mm, HEADER + i * _SLOT.size, 0, 0, FREE, 0.0)
                    dropped += 1
        return dropped

    def register_client(self, ring_bytes: int | None = None) -> Ring | None:
        """Note that this process runs a client (so an idle sync process stays).

        With ``ring_bytes``, also claim this process's event ring under the
        same lock (a worker's cold start takes the file lock once, not twice);
        a ring that cannot be had now is not an error here -- the recorder
        claims one on its first event, and logs why it cannot."""
        with self._locked():
            mm = self._map()
            for i in range(SLOTS):
                pid, _ring_id, state, _at = _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)
                if state == FREE:
                    _SLOT.pack_into(mm, HEADER + i * _SLOT.size, os.getpid(), 0, CLIENT, time.time())
                    break
            else:
                raise SharedMemoryError(f"all {SLOTS} registry slots are taken")
            if ring_bytes is None:
                return None
            try:
                return self._claim_locked(mm, ring_capacity(ring_bytes))
            except (OSError, SharedMemoryError):
                return None

    def live_processes(self, alive: Callable[[int], bool]) -> int:
        """How many processes with a client or a ring are still running (see :meth:`live_pids`)."""
        return len(self.live_pids(alive))

    def leave(self, alive: Callable[[int], bool]) -> set[int]:
        """This process is exiting: free its client slot and disown its ring
        (pid 0: a pump drains and removes it as a dead worker's), under the
        lock; then the other live processes (:meth:`live_pids`). Empty when
        the store has no registry. Every leaver gives up its slots before it
        looks, so of processes leaving together the last sees no other."""
        if not self.attach(create=False):
            return set()
        me = os.getpid()
        with self._locked():
            mm = self._map()
            for i in range(SLOTS):
                offset = HEADER + i * _SLOT.size
                pid, ring_id, state, at = _SLOT.unpack_from(mm, offset)
                if pid != me:
                    continue
                if state == CLIENT:
                    _SLOT.pack_into(mm, offset, 0, 0, FREE, 0.0)
                elif state == CLAIMED:
                    _SLOT.pack_into(mm, offset, 0, ring_id, CLAIMED, at)
        return self.live_pids(alive)

    def live_pids(self, alive: Callable[[int], bool]) -> set[int]:
        """Pids of the processes with a client or a ring that are still
        running; frees the client slots of dead ones (zombies count as dead;
        rings are freed by the pump once drained). The sync process calls
        this every half second, so recycled workers never fill the table."""
        with self._locked():
            mm = self._map()
            pids = set()
            for i in range(SLOTS):
                pid, _ring_id, state, _at = _SLOT.unpack_from(mm, HEADER + i * _SLOT.size)
                if state == FREE or state == SPARE:  # a spare has no process
                    continue
                if alive(pid):
                    pids.add(pid)
                elif state == CLIENT:
                    _SLOT.pack_into(mm, HEADER + i * _SLOT.size, 0, 0, FREE, 0.0)
            return pids

    def release(self, slot: int, ring_id: int) -> None:
        """Free a slot whose ring was drained and unlinked (sync process)."""
        with self._locked():
            mm = self._map()
            _pid, current, state, _at = _SLOT.unpack_from(mm, HEADER + slot * _SLOT.size)
            if state == CLAIMED and current == ring_id:
                _SLOT.pack_into(mm, HEADER + slot * _SLOT.size, 0, 0, FREE, 0.0)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def unlink_if_empty(self, alive: Callable[[int], bool]) -> bool:
        """Remove the registry when no ring is claimed and no client lives (a clean shutdown)."""
        if self.live_processes(alive):
            return False
        self.drop_spares()
        with self._locked():
            if self.slots():
                return False
            self.close()
            unlink_object(self.name, REGISTRY, self.names.access)
            return True
