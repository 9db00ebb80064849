"""The worker side of events: record into this process's ring, ask for flushes.

One :class:`EventRecorder` per client. The client claims the process's ring
together with its registration, under one file lock (a worker's cold start
pays for the lock once); when that fails, the first event claims it. After a
fork the child forgets the parent's ring (``os.register_at_fork``) and claims
its own on its first event -- so a client made in a server's master before
it forks workers (``preload_app``) leaves the master one idle ring: a header
page and 64 KiB (see :mod:`.ring`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from .._core.records import (
    _EVAL_HEAD,
    DEFAULT_MAX_EVENT_BYTES,
    EVAL_HEAD_SIZE,
    EVAL_MARK,
    EvalEncoder,
    EventTooLarge,
    encode_identify,
    encode_metrics,
)
from .._runtime.notices import warn_limited
from ..shm.names import StoreNames
from ..shm.registry import Registry
from ..shm.ring import W_DROPPED, W_FLUSH_DONE, W_FLUSH_REQ, W_LOST, W_SERVED, W_STALE_SINCE, W_TOO_LARGE, Ring

log = logging.getLogger("featbit_shm.events")

_recorders: weakref.WeakSet[EventRecorder] = weakref.WeakSet()
_time_ns = time.time_ns


class EventRecorder:
    def __init__(self, names: StoreNames, *, ring_bytes: int, registry: Registry | None = None, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._registry = registry if registry is not None else Registry(names)
        self._ring_bytes = ring_bytes
        self._max_event_bytes = max_event_bytes
        self.too_large = 0  # events refused for their size while no ring was there to count them
        self._lost_seen = 0  # events of this process lost, as of the last flush_and_wait
        self._ring: Ring | None = None
        self._failed_at = 0.0
        self._lock = threading.Lock()
        self._packer = msgpack.Packer(autoreset=True)
        self._encoder = EvalEncoder(max_event_bytes)
        self.closed = False
        _recorders.add(self)

    def _claim(self) -> Ring | None:
        # Called with the lock held. A failed claim (full /dev/shm, all slots
        # taken) is retried at most every 5 s and logged each time.
        now = time.monotonic()
        if now - self._failed_at < 5.0:
            return None
        try:
            self._ring = self._registry.claim(self._ring_bytes)
        except Exception as exc:  # noqa: BLE001 - recording never raises
            self._failed_at = now
            log.error("featbit_shm: cannot claim an event ring, events are dropped: %s", exc)
            return None
        return self._ring

    def report(self, generation: int, stale_since_ms: int) -> None:
        """Say in this process's ring which generation it serves, and since
        when it cannot map a newer one (0: it can), for ``featbit-shm status``."""
        ring = self._ring
        if ring is not None and not self.closed:
            ring.words[W_SERVED] = generation
            ring.words[W_STALE_SINCE] = stale_since_ms

    def adopt(self, ring: Ring) -> None:
        """Use ``ring``, claimed for this process with its client registration."""
        with self._lock:
            if self._ring is None and not self.closed:
                self._ring = ring
                return
        ring.close()  # unused; the sync process reclaims it with this process

    def _append(self, record: bytes) -> bool:
        with self._lock:
            ring = self._ring or self._claim()
            if ring is None:
                return False
            if len(record) > self._max_event_bytes:
                self._refuse_too_large(ring, f"{len(record)} bytes")
                return False
            return ring.append(record)

    def _refuse_too_large(self, ring: Ring | None, what: str) -> None:
        """Count (in the ring, where the sync process and status see it) and
        log, at a limited rate, an event over the size bound. Called with the lock held."""
        if ring is not None:
            ring.words[W_TOO_LARGE] += 1
        else:
            self.too_large += 1
        warn_limited(
            "event-too-large",
            f"featbit_shm: an event of {what} is over the event size bound ({self._max_event_bytes} bytes, "
            "FEATBIT_SHM_MAX_EVENT_BYTES); it is not recorded (counted as too_large)",
        )

    def record_eval(self, user: Mapping[str, Any], flag_key: str, variation_id: str, value: str, expt: bool) -> bool:
        # The hot path of every evaluation with events on, written out: a
        # plain acquire/release (cheaper than ``with``), EvalEncoder.eval's
        # steps inline (two cache hits; a test holds the bytes to
        # encode_eval), one clock read, and one call into the C fast path
        # that frames and copies the record -- or, without it, or when the
        # record wraps, needs new pages or finds the ring full, one pack,
        # one join and Ring.append.
        if self.closed:
            return False
        lock = self._lock
        lock.acquire()
        try:
            ring = self._ring or self._claim()
            if ring is None:
                return False
            enc = self._encoder
            packed_user = enc.packed if user is enc.user and user == enc.copy else enc.user_bytes(user)
            tail = enc.tails.get((flag_key, variation_id, value, expt)) or enc.tail(flag_key, variation_id, value, expt)
            ts_ns = _time_ns()
            writer = ring.writer
            if writer is not None and writer.append_eval(ts_ns, tail, packed_user):
                return True
            return ring.append(_EVAL_HEAD.pack(EVAL_HEAD_SIZE + len(tail) + len(packed_user), EVAL_MARK, ts_ns, len(tail)) + tail + packed_user)
        except EventTooLarge as exc:
            self._refuse_too_large(self._ring, f"flag {flag_key!r} ({exc})")
            return False
        except Exception:  # noqa: BLE001 - an unpackable user value: drop this event, never raise
            return False
        finally:
            lock.release()

    def record_metrics(self, user: Mapping[str, Any], metrics: Sequence[tuple[str, float]]) -> bool:
        if self.closed:
            return False
        try:
            with self._lock:
                record = encode_metrics(self._packer, int(time.time() * 1000), user, metrics)
            return self._append(record)
        except Exception:  # noqa: BLE001
            return False

    def record_identify(self, user: Mapping[str, Any]) -> bool:
        if self.closed:
            return False
        try:
            with self._lock:
                record = encode_identify(self._packer, int(time.time() * 1000), user)
            return self._append(record)
        except Exception:  # noqa: BLE001
            return False

    # ------------------------------------------------------------------ flush

    def flush(self) -> int:
        """Ask the sync process to send this process's events now; returns the request number."""
        with self._lock:
            ring = self._ring
            if ring is None:
                return 0
            ring.words[W_FLUSH_REQ] += 1
            return int(ring.words[W_FLUSH_REQ])

    def flush_and_wait(self, timeout: float) -> bool:
        """Once every event recorded before the call was processed (R-69):
        True when nothing this process recorded since its previous
        flush_and_wait was lost; False when some was (a full ring, too
        large, refused, given up: ``featbit-shm status`` says which) or
        ``timeout`` ran out first."""
        request = self.flush()
        ring = self._ring
        if request == 0 or ring is None:
            return not self.too_large
        deadline = time.monotonic() + max(0.0, timeout)
        while ring.words[W_FLUSH_DONE] < request:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        lost = self._lost(ring) + self.too_large
        clean, self._lost_seen = lost == self._lost_seen, lost
        return clean

    @staticmethod
    def _lost(ring: Ring) -> int:
        words = ring.words
        return int(words[W_DROPPED] + words[W_TOO_LARGE] + words[W_LOST])

    def stop(self) -> None:
        """No more events from this recorder (R-66: nothing after close)."""
        self.closed = True

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        parent_ring, self._ring = self._ring, None  # the parent's ring: never write into it
        if parent_ring is not None:
            try:
                parent_ring.close()  # this process's mapping and descriptor only
            except (BufferError, OSError):
                pass
        self._packer = msgpack.Packer(autoreset=True)
        self._encoder = EvalEncoder(self._max_event_bytes)
        self._lost_seen = 0  # the child's own ring counts from zero
        self.too_large = 0


def _after_fork_in_child() -> None:
    for recorder in list(_recorders):
        recorder._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
