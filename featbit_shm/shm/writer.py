"""The one writer of a store: publishes snapshot generations and the sync status.

See the package docstring (:mod:`featbit_shm.shm`) for the protocol.

Fault injection (tests only): ``FEATBIT_SHM_FAULT_PUBLISH_DELAY`` makes every
publish stall between writing a generation's objects and flipping the control
block to it -- a slow ``/dev/shm`` writer. Its value is a number of seconds,
or the path of a file holding one (read at every publish, so a test can turn
the fault on and off while the sync process runs; a missing or empty file
means no delay). Unset, it costs nothing: the writer is built without a delay
function. Never set it in production.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import time
from collections.abc import Callable, Mapping

from .._core.dataset import Changes, DataSet
from .._core.errors import SharedMemoryError
from .._core.snapshot import SnapshotBuilder, SnapshotError, SnapshotImage, active_counts, root_crc
from .._runtime.environment import env_str
from .control import SIZE, W_FLAGS, W_LAST_PUBLISH, W_SEGMENTS, W_STATE_SINCE, ControlBlock, SyncState
from .names import StoreNames
from .objects import Fallocate, create_object, map_readonly, open_object, unlink_object
from .trust import CONTROL, SNAPSHOT, Untrusted

log = logging.getLogger("featbit_shm.shm")

FAULT_PUBLISH_DELAY_ENV = "FEATBIT_SHM_FAULT_PUBLISH_DELAY"
FAULT_PUBLISH_FAIL_ENV = "FEATBIT_SHM_FAULT_PUBLISH_FAIL"
# Fault the new object's pages in while mapping (Linux): cheaper than one fault per page.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def publish_delay_from_env(env: Mapping[str, str] | None = None) -> Callable[[], float] | None:
    """The fault-injection delay of :envvar:`FEATBIT_SHM_FAULT_PUBLISH_DELAY`
    (see the module docstring), or None when it is unset."""
    value = env_str(FAULT_PUBLISH_DELAY_ENV, env)
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        path = value

        def from_file() -> float:
            try:
                with open(path) as fh:
                    text = fh.read().strip()
                return max(0.0, float(text)) if text else 0.0
            except (OSError, ValueError):
                return 0.0

        log.warning("featbit_shm: fault injection on: every publish waits the seconds in %s", path)
        return from_file
    log.warning("featbit_shm: fault injection on: every publish waits %.3f s", seconds)
    return lambda: max(0.0, seconds)


def publish_fault_from_env(env: Mapping[str, str] | None = None) -> Callable[[], None] | None:
    """The fault injection of :envvar:`FEATBIT_SHM_FAULT_PUBLISH_FAIL` (tests
    only): while the file it names exists, every publish fails as on a full
    /dev/shm. None when it is unset."""
    path = env_str(FAULT_PUBLISH_FAIL_ENV, env)
    if not path:
        return None
    log.warning("featbit_shm: fault injection on: publishes fail while %s exists", path)

    def fail() -> None:
        if os.path.exists(path):
            raise SharedMemoryError(f"fault injection: {path} exists, publishing fails as on a full /dev/shm")

    return fail


class SnapshotWriter:
    """Publishes generations of a data set into shared memory.

    One per store at a time (the sync process, elected by a lock). Time and
    pid come in as functions so tests can fake them.
    """

    def __init__(
        self,
        names: StoreNames,
        *,
        grace: float = 2.0,
        keep: int = 3,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        getpid: Callable[[], int] = os.getpid,
        fallocate: Fallocate = os.posix_fallocate,
        publish_delay: Callable[[], float] | None = None,
        publish_fault: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.names = names
        self._access = names.access
        self._grace = grace
        self._keep = keep
        self._clock = clock
        self._wallclock = wallclock
        self._getpid = getpid
        self._fallocate = fallocate
        self._publish_delay = publish_delay  # fault injection only (module docstring)
        self._publish_fault = publish_fault  # fault injection only
        self._sleep = sleep
        self._builder = SnapshotBuilder()
        self._retired: collections.deque[tuple[tuple[str, ...], float]] = collections.deque()
        self._live_chunks: set[int] = set()
        self._closed = False
        self._current_root: mmap.mmap | None = None
        self.control_name, self._ctl_map, self.control = self._open_control()
        self.generation = self.control.generation
        self.current_name = ""
        self._adopt_existing()

    # ------------------------------------------------------------------ setup

    def _open_control(self) -> tuple[str, mmap.mmap, ControlBlock]:
        """The store's control block: the first trusted one among its names
        (a restart: adopted), else a new one under the first free name.
        Another account's object under a name is refused and skipped, never
        adopted or removed (:mod:`.trust`)."""
        free = None
        for name in self.names.controls:
            try:
                fd = open_object(name, CONTROL, self._access, writable=True)
            except FileNotFoundError:
                free = free or name
                continue
            except Untrusted:
                continue
            try:
                self._access.widen(fd, CONTROL)
                if os.fstat(fd).st_size != SIZE:
                    # Never shrink or grow a block others may have mapped: replace it.
                    log.warning("featbit_shm: control block %s has the wrong size; replacing it", name)
                    unlink_object(name, CONTROL, self._access)
                    return self._open_control()
                mm = mmap.mmap(fd, SIZE)
            finally:
                os.close(fd)
            block = ControlBlock(mm)
            if not block.valid():
                block.initialize()
            elif block.recover():
                log.warning("featbit_shm: previous writer died while updating %s; recovered", name)
            return name, mm, block
        if free is None:
            raise SharedMemoryError(f"every control block name of store {self.names.tag} is taken by another account")
        try:
            fd = create_object(free, SIZE, CONTROL, self._access, self._fallocate)
        except FileExistsError:  # another writer made it meanwhile: take it as above
            return self._open_control()
        try:
            mm = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        block = ControlBlock(mm)
        block.initialize()
        return free, mm, block

    def _adopt_existing(self) -> None:
        """After a restart: keep the published generation if it checks out
        (readers keep serving it until the next publish), and remove every
        other snapshot object of this store."""
        pointer = self.control.read_pointer()
        keep: set[str] = set()
        if pointer is not None and pointer.name:
            try:
                image = open_image(self.names, pointer.name, pointer.length, pointer.crc)
                image.flag_keys()  # every live chunk maps and every key checks
                keep = {pointer.name, *(self.names.chunk(c) for c in image.chunks)}
                self.current_name = pointer.name
                self._live_chunks = set(image.chunks)
                # A writer killed inside write_pointer may have left the
                # generation word behind the root it points at.
                self.generation = max(self.generation, image.generation)
            except (SnapshotError, OSError) as exc:
                log.warning("featbit_shm: published snapshot %s is unusable (%s); it will be replaced", pointer.name, exc)
        existing = self.names.existing()
        # Never reuse a number an object of this store already carries.
        numbers = [int(n.rsplit(".", 1)[1][1:]) for n in existing]
        self.generation = max([self.generation, *numbers])
        stale = tuple(n for n in existing if n not in keep)
        if stale:
            self._retired.append((stale, self._clock() - self._grace))  # remove at once
            self._unlink_retired(self._clock())

    # ------------------------------------------------------------------ publishing

    def publish(self, dataset: DataSet, changes: Changes | None = None, state: SyncState = SyncState.OK) -> int:
        """Publish ``dataset`` as the next generation; returns it.

        Pass the :class:`Changes` of a patch so only those entities are
        written (one small chunk and a new root). On any error the previous
        generation stays published.
        """
        if self._closed:
            raise SharedMemoryError("writer is closed")
        for _ in range(16):
            try:
                return self._publish(dataset, changes, state)
            except Untrusted:
                # Another account squatted this generation's name: never
                # touch it, number the next generation past it.
                self.generation += 1
        raise SharedMemoryError(f"16 snapshot names in a row of store {self.names.tag} are taken by another account")

    def _publish(self, dataset: DataSet, changes: Changes | None, state: SyncState) -> int:
        generation = self.generation + 1
        created: list[tuple[str, mmap.mmap | None]] = []

        def allocate(kind: str, ident: int, size: int) -> mmap.mmap:
            name = self.names.root(ident) if kind == "root" else self.names.chunk(ident)
            try:
                fd = create_object(name, size, SNAPSHOT, self._access, self._fallocate)
            except FileExistsError:
                # Ours: a stale object from a crashed writer that numbered the
                # same way; replace it. Not ours: open_object raises Untrusted.
                os.close(open_object(name, SNAPSHOT, self._access))
                unlink_object(name, SNAPSHOT, self._access)
                fd = create_object(name, size, SNAPSHOT, self._access, self._fallocate)
            created.append((name, None))  # unlinked on failure even if mapping fails
            try:
                mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
            finally:
                os.close(fd)
            created[-1] = (name, mm)
            return mm

        try:
            if self._publish_fault is not None:
                self._publish_fault()
            built = self._builder.build_into(dataset, generation, changes, allocate)
            crc = root_crc(built.root)
        except BaseException:
            self._builder.reset()  # its last root may be one we are abandoning
            for name, mm in created:
                if mm is not None:
                    mm.close()
                unlink_object(name, SNAPSHOT, self._access)
            self.control.add("publish_errors")
            raise
        for chunk in built.new_chunks.values():
            chunk.close()  # complete; only readers map chunks from now on
        if self._publish_delay is not None:
            self._stall()
        root_name = self.names.root(generation)
        previous_state = self.control.state
        # Every object of the generation is complete; only now does the control
        # block point at it (readers can never see a half-written snapshot).
        self.control.write_pointer(generation, len(built.root), crc, dataset.version, root_name, state)
        now = self._wallclock()
        active_flags, active_segments = active_counts(built.root)
        self.control.set_word(W_FLAGS, active_flags)
        self.control.set_word(W_SEGMENTS, active_segments)
        self.control.add("publishes")
        self.control.d[W_LAST_PUBLISH] = now
        if previous_state is not state:
            self.control.d[W_STATE_SINCE] = now
        self.heartbeat(now)
        # Retire the previous root and the chunks no generation uses any more.
        dropped = [self.names.chunk(c) for c in self._live_chunks - built.live_chunks]
        if self.current_name:
            dropped.append(self.current_name)
        if dropped:
            self._retired.append((tuple(dropped), self._clock()))
        if self._current_root is not None:
            self._current_root.close()  # the builder copies from the new root now
        self._current_root = built.root
        self._live_chunks = set(built.live_chunks)
        self.current_name = root_name
        self.generation = generation
        self._unlink_retired(self._clock())
        return generation

    def _stall(self) -> None:
        """The injected slow writer: objects written, pointer not yet flipped."""
        assert self._publish_delay is not None
        delay = self._publish_delay()
        if delay > 0:
            self._sleep(delay)

    def set_state(self, state: SyncState) -> None:
        self.control.set_state(state, self._wallclock())

    def beat(self) -> None:
        """Only the heartbeat word (and pid): safe from a thread of its own."""
        self.control.beat(self._wallclock(), self._getpid())

    def heartbeat(self, now: float | None = None) -> None:
        """Write the heartbeat (the sync process does this at least every second)."""
        self.control.beat(self._wallclock() if now is None else now, self._getpid())
        if self._retired:
            self._unlink_retired(self._clock())

    def _unlink_retired(self, now: float) -> None:
        """Unlink retired objects after the grace period, and always keep at
        most ``keep`` retired generations around (bounded /dev/shm use)."""
        retired = self._retired
        while retired and (now - retired[0][1] >= self._grace or len(retired) > self._keep):
            names, _ = retired.popleft()
            for name in names:
                unlink_object(name, SNAPSHOT, self._access)

    # ------------------------------------------------------------------ shutdown

    def close(self, *, unlink: bool = False) -> None:
        """Stop writing. With ``unlink`` remove every object of the store
        (the last owner on a clean shutdown); readers that mapped them keep
        valid mappings."""
        if self._closed:
            return
        self._closed = True
        self._builder.reset()
        if self._current_root is not None:
            self._current_root.close()
            self._current_root = None
        if unlink:
            # Readers poll the generation: move it once more, to an empty
            # pointer with state OFF, so they notice this block is going away
            # and attach to the next writer's block instead of serving from an
            # orphan forever.
            self.control.write_pointer(self.generation + 1, 0, 0, 0, "", SyncState.OFF)
            self.control.d[W_STATE_SINCE] = self._wallclock()
        self.control.release()
        self._ctl_map.close()
        if unlink:
            for name in [n for group, _ in self._retired for n in group] + self.names.existing():
                if name:
                    unlink_object(name, SNAPSHOT, self._access)
            unlink_object(self.control_name, CONTROL, self._access)
            self._retired.clear()

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(unlink=True)


def open_image(names: StoreNames, root_name: str, length: int, crc: int) -> SnapshotImage:
    """Map a published generation read-only: its root now, chunks as needed.

    For the writer's restart check and the CLI; workers use
    :class:`~featbit_shm.shm.reader.SnapshotReader`, which also caches maps.
    """
    root = map_readonly(root_name, SNAPSHOT, names.access, length)
    chunks: dict[int, mmap.mmap] = {}

    def chunk_of(chunk_id: int) -> mmap.mmap:
        if chunk_id not in chunks:
            chunks[chunk_id] = map_readonly(names.chunk(chunk_id), SNAPSHOT, names.access)
        return chunks[chunk_id]

    return SnapshotImage(root, chunk_of, length=length, crc=crc)
