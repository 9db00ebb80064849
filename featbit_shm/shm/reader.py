"""A worker's read-only view of a store.

Hot path (every evaluation): :meth:`SnapshotReader.current` reads the
control block's 8-byte generation through a memoryview and returns the
cached :class:`~featbit_shm._core.view.CompiledView` when it did not change:
no syscall, no lock. Everything else happens only when the generation moves.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections.abc import Callable

from .._core.errors import SharedMemoryError
from .._core.snapshot import SnapshotError, SnapshotImage, SnapshotLayoutError
from .._core.view import CompiledView
from .._runtime.notices import warn_limited
from .control import W_GENERATION, ControlBlock, ControlError, SyncState
from .names import SHM_DIR, StoreNames
from .objects import map_readonly
from .trust import CONTROL, SNAPSHOT, Refusal, Untrusted

log = logging.getLogger("featbit_shm.shm")

WATCH_INTERVAL_S = 0.5  # how often a reader with a watch checks that a sync process serves the store


def generation_bytes(names: StoreNames, root_name: str) -> int | None:
    """Bytes in /dev/shm of one generation: its root plus its live chunks."""
    try:
        root = map_readonly(root_name, SNAPSHOT, names.access)
        total = len(root)
        for chunk_id in SnapshotImage(root).chunks:
            total += os.stat(SHM_DIR + names.chunk(chunk_id)).st_size
        return total
    except (OSError, SnapshotError, SharedMemoryError):
        return None  # the writer moved on meanwhile (or the name is not this store's: refused)


def find_control(names: StoreNames) -> tuple[ControlBlock | None, Refusal | None]:
    """The store's control block, mapped read-only: the first of its names
    that holds a trusted, valid one. Objects of another account under those
    names are refused (logged) and skipped; the last refusal comes back
    with a None block, so a caller can say why it found nothing."""
    refused = None
    for name in names.controls:
        try:
            block = ControlBlock(map_readonly(name, CONTROL, names.access))
            block.check()
        except (FileNotFoundError, SnapshotError, ControlError):
            continue
        except Untrusted as exc:
            refused = exc.refusal
            continue
        except OSError as exc:
            warn_limited(f"open {name}", f"featbit_shm: cannot open control block {name}: {exc}", level=logging.ERROR)
            continue
        return block, None
    return None, refused


class SnapshotReader:
    """Serve the newest good snapshot of a store to this process's evaluations.

    ``current()`` returns ``fallback`` (default None: the client then answers
    "client not ready") while no snapshot was ever read; once one was, it
    keeps serving the last good generation whatever happens to the writer.
    """

    def __init__(
        self,
        names: StoreNames,
        *,
        retry_interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        getpid: Callable[[], int] = os.getpid,
        fallback: CompiledView | None = None,
        on_watch: Callable[[bool], None] | None = None,
    ) -> None:
        self.names = names
        self._retry_interval = retry_interval
        self._clock = clock
        self._getpid = getpid
        self._pid = getpid()
        self._lock = threading.Lock()
        self._control: ControlBlock | None = None
        self._words: memoryview | None = None  # the control block as u64 words
        self._seen = -1  # generation of the control block last acted on
        self._view: CompiledView | None = fallback  # served until a snapshot is read
        self._image: SnapshotImage | None = None
        self._chunks: dict[int, mmap.mmap] = {}
        self._next_try = 0.0
        self.refreshes = 0
        self.failed_refreshes = 0
        #: Why this process cannot move to the store's current generation
        #: (None while it can): see :meth:`behind`.
        self.map_error: str | None = None
        self._map_error_since = 0.0  # Unix time
        #: Set while the store's names hold only another account's objects:
        #: evaluation then answers with reason kind Error, naming it.
        self.refused: Refusal | None = None
        # The watch (see _watch): about every WATCH_INTERVAL_S of use, tell
        # ``on_watch`` whether a live sync process serves the store. Counted
        # in calls so the hot path reads no clock: the count adapts to the
        # call rate.
        self._on_watch = on_watch
        self._countdown = 1 << 62
        if on_watch is not None:
            self._countdown = 1
            self.current = self._current_watched  # type: ignore[method-assign]
        self._per_watch = 1
        self._next_watch = 0.0

    # ------------------------------------------------------------------ hot path

    def current(self) -> CompiledView | None:
        """The view to evaluate with (None: nothing published yet)."""
        words = self._words
        if words is not None and words[W_GENERATION] == self._seen:
            return self._view
        return self._slow_path()

    def _current_watched(self) -> CompiledView | None:
        """:meth:`current` of a reader with a watch (it replaces it): one
        counter more per call, so a watch comes due without a clock read."""
        words = self._words
        if words is not None and words[W_GENERATION] == self._seen:
            self._countdown -= 1
            if self._countdown:
                return self._view
        return self._slow_path()

    # ------------------------------------------------------------------ slow path

    def _slow_path(self) -> CompiledView | None:
        now = self._clock()
        if self._countdown <= 0 or (self._on_watch is not None and now >= self._next_watch):
            self._watch(now)
        if self._words is not None and self._words[W_GENERATION] == self._seen:
            return self._view  # only the watch was due
        if now < self._next_try:
            return self._view
        pid = self._getpid()
        if pid != self._pid:
            # A fork child: the parent's lock may have been held at fork time.
            self._lock = threading.Lock()
            self._pid = pid
        if not self._lock.acquire(blocking=False):
            return self._view  # another thread is refreshing; serve what we have
        try:
            if self._words is None and not self._attach():
                self._next_try = self._clock() + self._retry_interval
                return self._view
            if not self._refresh():
                self.failed_refreshes += 1
                self._next_try = self._clock() + min(self._retry_interval, 0.01)
            return self._view
        finally:
            self._lock.release()

    def _watch(self, now: float) -> None:
        """Tell ``on_watch`` whether a sync process serves the store (the one
        liveness rule). It is due every WATCH_INTERVAL_S; between two, the
        hot path counts calls, and the count is tuned to the call rate."""
        if self._on_watch is None:
            self._countdown = 1 << 62
            return
        if now < self._next_watch:  # the count ran out early: the rate went up
            self._per_watch = min(self._per_watch * 2, 1 << 16)
        elif now > self._next_watch + WATCH_INTERVAL_S:  # it ran out late: the rate went down
            self._per_watch = max(self._per_watch // 2, 1)
        self._countdown = self._per_watch
        if now < self._next_watch:
            return
        self._next_watch = now + WATCH_INTERVAL_S
        block = self._control
        if block is None:
            served = False  # no control block (yet, or no more: its leader stopped)
        else:
            served = block.leader_alive(time.time()) or block.state is SyncState.OFF  # OFF: rejected, not dead
        try:
            self._on_watch(served)
        except Exception:
            log.exception("featbit_shm: the store watch failed")

    def _attach(self) -> bool:
        block, self.refused = find_control(self.names)
        if block is None:
            return False
        self._control = block
        self._words = block.q
        self._seen = -1  # a new block numbers generations (and chunks) afresh
        self._chunks = {}
        return True

    def _detach(self) -> None:
        """Let go of a control block its writer closed; attach anew later."""
        self._control = None
        self._words = None

    def _refresh(self) -> bool:
        """Move to the generation the control block points at. True on success."""
        block = self._control
        assert block is not None
        for _ in range(8):
            pointer = block.read_pointer()
            if pointer is None:
                return False  # sequence stuck odd: writer died mid-update
            if not pointer.name:
                self._seen = pointer.generation
                if pointer.state == SyncState.OFF and self._image is not None:
                    # The writer closed and unlinked this block (a clean stop);
                    # a restarted sync process makes a new one. Keep serving
                    # the last good view and look for the new block.
                    self._detach()
                    self._next_try = self._clock() + self._retry_interval
                return True  # nothing published (any more)
            if not pointer.name.startswith(self.names.base + ".g"):
                self._cannot_map(f"the control block points at {pointer.name!r}, not a snapshot of this store")
                warn_limited(f"pointer {self.names.tag}", f"featbit_shm: control block points at {pointer.name!r}, not a snapshot of this store", level=logging.ERROR)
                return False
            try:
                root = map_readonly(pointer.name, SNAPSHOT, self.names.access, pointer.length)
                chunks: dict[int, mmap.mmap] = {}
                image = SnapshotImage(root, chunks.get, length=pointer.length, crc=pointer.crc)
                # Map every live chunk now (reusing this process's maps of the
                # chunks that did not change), so no evaluation ever opens one.
                for chunk_id in image.chunks:
                    known = self._chunks.get(chunk_id)
                    chunks[chunk_id] = known if known is not None else map_readonly(self.names.chunk(chunk_id), SNAPSHOT, self.names.access)
            except SnapshotLayoutError as exc:
                # Store names carry the formats (shm.formats), so this is a
                # foreign writer or a hash collision -- never a slow start.
                self._cannot_map(f"cannot read snapshot {pointer.name}: {exc}, written by another featbit_shm release")
                warn_limited(
                    f"layout {self.names.tag}",
                    f"featbit_shm: pid {os.getpid()} cannot read snapshot {pointer.name}: {exc} (another featbit_shm "
                    f"release wrote it); it keeps serving generation {self._seen}, which may be stale",
                    level=logging.ERROR,
                )
                return False
            except (FileNotFoundError, SnapshotError):
                continue  # unlinked or replaced under us: read the pointer again
            except (OSError, SharedMemoryError) as exc:  # Untrusted: another account's object under a retired name
                self._cannot_map(f"cannot map snapshot {pointer.name}: {exc}")
                # Once a minute, not once per request: this worker keeps
                # serving its last generation, and says so (promise 1).
                warn_limited(
                    f"map {self.names.tag}",
                    f"featbit_shm: pid {os.getpid()} cannot map snapshot {pointer.name}: {exc}; it keeps serving "
                    f"generation {self._seen}, which may be stale",
                    level=logging.ERROR,
                )
                return False
            if image.generation != pointer.generation:
                continue
            previous = self._view if self._image is not None else None
            self._image = image
            self._chunks = chunks  # maps of chunks no longer live are dropped here
            self._view = CompiledView(
                image.generation,
                image.data_version,
                image.flag,
                image.segment,
                image.flag_keys,
                previous=previous,
                origin=image,
            )
            self._seen = pointer.generation
            self.refreshes += 1
            self.map_error = None
            return True
        return False

    def _cannot_map(self, why: str) -> None:
        if self.map_error is None:
            self._map_error_since = time.time()
        self.map_error = why

    def behind(self) -> tuple[int, int, str, float] | None:
        """(store generation, generation served, why, since when) while this
        process serves an older generation than the store's because it cannot
        map the new one -- e.g. after a uid switch, or a snapshot of another
        account under the store's names. None while it keeps up (a generation
        published a moment ago and not read yet is not "behind")."""
        words = self._words
        why = self.map_error
        if why is None or words is None or words[W_GENERATION] == self._seen:
            return None
        return int(words[W_GENERATION]), max(self._seen, 0), why, self._map_error_since

    # ------------------------------------------------------------------ status

    @property
    def control(self) -> ControlBlock | None:
        """The mapped control block, once attached."""
        if self._control is None:
            self.current()
        return self._control

    @property
    def served_generation(self) -> int:
        """The generation evaluations use now (0: none), without a refresh."""
        view = self._view
        return view.generation if view is not None else 0

    @property
    def generation(self) -> int:
        view = self.current()
        return view.generation if view is not None else 0

    def state(self) -> SyncState | None:
        block = self.control
        return block.state if block is not None else None
