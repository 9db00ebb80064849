"""The one writer of a store: publishes snapshot generations and the sync status.

See the package docstring (:mod:`featbit_shm.store`) for the protocol.
"""

from __future__ import annotations

import collections
import errno
import logging
import mmap
import os
import time
from collections.abc import Callable

import posix_ipc

from .._core.dataset import Changes, DataSet
from .._core.snapshot import SnapshotBuilder, SnapshotError, SnapshotImage, active_counts, tables_crc
from ..errors import SharedMemoryError
from .control import SIZE, W_FLAGS, W_LAST_PUBLISH, W_SEGMENTS, ControlBlock, SyncState
from .names import SHM_DIR, StoreNames

log = logging.getLogger("featbit_shm.store")

Fallocate = Callable[[int, int, int], None]
# Fault the new object's pages in while mapping (Linux): cheaper than one fault per page.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _free_bytes() -> int:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def create_object(name: str, size: int, *, mode: int, gid: int | None, fallocate: Fallocate) -> posix_ipc.SharedMemory:
    """A new shared-memory object of ``size`` bytes, space reserved up front.

    ``posix_fallocate`` makes the kernel find every page now: a full /dev/shm
    raises here, with the numbers, instead of SIGBUS when a page is touched.
    """
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=0)
    try:
        try:
            fallocate(shm.fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                raise SharedMemoryError(
                    f"{SHM_DIR} is full: {name} needs {size} bytes, {_free_bytes()} bytes are free "
                    "(grow /dev/shm, e.g. docker --shm-size, or reduce the flag data)"
                ) from None
            raise SharedMemoryError(f"cannot reserve {size} bytes for {name}: {exc.strerror}") from None
        if gid is not None:
            os.fchown(shm.fd, -1, gid)
        # fchmod: the umask may have narrowed the mode given to shm_open.
        os.fchmod(shm.fd, mode)
    except BaseException:
        shm.close_fd()
        shm.unlink()
        raise
    return shm


class SnapshotWriter:
    """Publishes generations of a data set into shared memory.

    One per store at a time (the sync process, elected by a lock). Time and
    pid come in as functions so tests can fake them.
    """

    def __init__(
        self,
        names: StoreNames,
        *,
        mode: int = 0o600,
        gid: int | None = None,
        grace: float = 2.0,
        keep: int = 3,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        getpid: Callable[[], int] = os.getpid,
        fallocate: Fallocate = os.posix_fallocate,
    ) -> None:
        self.names = names
        self._mode = mode
        self._gid = gid
        self._grace = grace
        self._keep = keep
        self._clock = clock
        self._wallclock = wallclock
        self._getpid = getpid
        self._fallocate = fallocate
        self._builder = SnapshotBuilder()
        self._retired: collections.deque[tuple[str, float]] = collections.deque()
        self._closed = False
        self._current_map: mmap.mmap | None = None
        self._ctl_shm, self._ctl_map, self.control = self._open_control()
        self.generation = self.control.generation
        self.current_name = ""
        self._adopt_existing()

    # ------------------------------------------------------------------ setup

    def _open_control(self) -> tuple[posix_ipc.SharedMemory, mmap.mmap, ControlBlock]:
        name = self.names.control
        try:
            shm = create_object(name, SIZE, mode=self._mode, gid=self._gid, fallocate=self._fallocate)
            fresh = True
        except posix_ipc.ExistentialError:
            shm = posix_ipc.SharedMemory(name, 0)
            fresh = False
        try:
            if os.fstat(shm.fd).st_size != SIZE:
                if fresh:
                    raise SharedMemoryError(f"control block {name} has the wrong size")
                # Never shrink or grow a block others may have mapped: replace it.
                log.warning("featbit_shm: control block %s has the wrong size; replacing it", name)
                shm.close_fd()
                shm.unlink()
                return self._open_control()
            mm = mmap.mmap(shm.fd, SIZE)
        finally:
            shm.close_fd()
        block = ControlBlock(mm)
        if fresh or not block.valid():
            block.initialize()
        elif block.recover():
            log.warning("featbit_shm: previous writer died while updating %s; recovered", name)
        return shm, mm, block

    def _adopt_existing(self) -> None:
        """After a restart: keep the published snapshot if it checks out, and
        queue every other snapshot object of this store for removal."""
        pointer = self.control.read_pointer()
        live = ""
        if pointer is not None and pointer.name:
            try:
                SnapshotReaderless.verify(pointer.name, pointer.length, pointer.crc)
                live = pointer.name
            except (SnapshotError, OSError, posix_ipc.Error) as exc:
                log.warning("featbit_shm: published snapshot %s is unusable (%s); it will be replaced", pointer.name, exc)
        self.current_name = live
        now = self._clock()
        for name in self.names.existing_snapshots():
            if name != live:
                self._retired.append((name, now - self._grace))  # stale: remove at once
        self._unlink_retired(now)

    # ------------------------------------------------------------------ publishing

    def publish(self, dataset: DataSet, changes: Changes | None = None, state: SyncState = SyncState.OK) -> int:
        """Publish ``dataset`` as the next generation; returns it.

        Pass the :class:`Changes` of a patch so only those entities are
        written. On any error the previous generation stays published.
        """
        if self._closed:
            raise SharedMemoryError("writer is closed")
        generation = self.generation + 1
        name = self.names.snapshot(generation)
        created: list[mmap.mmap] = []

        def allocate(size: int) -> mmap.mmap:
            try:
                shm = create_object(name, size, mode=self._mode, gid=self._gid, fallocate=self._fallocate)
            except posix_ipc.ExistentialError:
                # A stale object from a crashed writer that numbered the same way.
                posix_ipc.unlink_shared_memory(name)
                shm = create_object(name, size, mode=self._mode, gid=self._gid, fallocate=self._fallocate)
            try:
                mm = mmap.mmap(shm.fd, size, flags=mmap.MAP_SHARED | _POPULATE)
            finally:
                shm.close_fd()
            created.append(mm)
            return mm

        try:
            image = self._builder.build_into(dataset, generation, changes, allocate)
            crc = tables_crc(image)
        except BaseException:
            self._builder.reset()  # its last image may be the one we are abandoning
            for mm in created:
                mm.close()
            if created:
                posix_ipc.unlink_shared_memory(name)
            self.control.add("publish_errors")
            raise
        # The payload is complete and closed; only now does the control block
        # point at it (readers can never see a half-written snapshot).
        self.control.write_pointer(generation, len(image), crc, dataset.version, name, state)
        now = self._wallclock()
        active_flags, active_segments = active_counts(image)
        self.control.set_word(W_FLAGS, active_flags)
        self.control.set_word(W_SEGMENTS, active_segments)
        self.control.add("publishes")
        self.control.d[W_LAST_PUBLISH] = now
        self.control.set_state(state, now)
        self.heartbeat(now)
        if self.current_name:
            self._retired.append((self.current_name, self._clock()))
        if self._current_map is not None:
            self._current_map.close()  # the builder now copies from the new image
        self._current_map = image
        self.current_name = name
        self.generation = generation
        self._unlink_retired(self._clock())
        return generation

    def set_state(self, state: SyncState) -> None:
        self.control.set_state(state, self._wallclock())

    def heartbeat(self, now: float | None = None) -> None:
        """Write the heartbeat (the sync process does this at least every second)."""
        self.control.beat(self._wallclock() if now is None else now, self._getpid())
        if self._retired:
            self._unlink_retired(self._clock())

    def _unlink_retired(self, now: float) -> None:
        retired = self._retired
        while retired and (now - retired[0][1] >= self._grace or len(retired) > self._keep):
            name, _ = retired.popleft()
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                pass

    # ------------------------------------------------------------------ shutdown

    def close(self, *, unlink: bool = False) -> None:
        """Stop writing. With ``unlink`` remove every object of the store
        (the last owner on a clean shutdown); readers that mapped them keep
        valid mappings."""
        if self._closed:
            return
        self._closed = True
        self._builder.reset()
        if self._current_map is not None:
            self._current_map.close()
            self._current_map = None
        if unlink:
            self.control.set_state(SyncState.OFF, self._wallclock())
        self.control.release()
        self._ctl_map.close()
        if unlink:
            for name in [n for n, _ in self._retired] + [self.current_name, *self.names.existing_snapshots()]:
                if name:
                    try:
                        posix_ipc.unlink_shared_memory(name)
                    except posix_ipc.ExistentialError:
                        pass
            try:
                posix_ipc.unlink_shared_memory(self.names.control)
            except posix_ipc.ExistentialError:
                pass
            self._retired.clear()

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(unlink=True)


class SnapshotReaderless:
    """Checks a published snapshot without a full reader (writer restart, CLI)."""

    @staticmethod
    def verify(name: str, length: int, crc: int) -> SnapshotImage:
        shm = posix_ipc.SharedMemory(name, 0, read_only=True)
        try:
            size = os.fstat(shm.fd).st_size
            if size < length or length <= 0:
                raise SnapshotError(f"{name} is {size} bytes, expected {length}")
            mm = mmap.mmap(shm.fd, length, prot=mmap.PROT_READ)
        finally:
            shm.close_fd()
        return SnapshotImage(mm, length=length, crc=crc)
