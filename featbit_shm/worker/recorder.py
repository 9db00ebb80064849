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

from .._core.records import _EVAL_HEAD, EVAL_HEAD_SIZE, EVAL_MARK, EvalEncoder, encode_identify, encode_metrics
from ..shm.names import StoreNames
from ..shm.registry import Registry
from ..shm.ring import W_FLUSH_DONE, W_FLUSH_REQ, W_SERVED, W_STALE_SINCE, Ring

log = logging.getLogger("featbit_shm.events")

_recorders: weakref.WeakSet[EventRecorder] = weakref.WeakSet()
_time_ns = time.time_ns


class EventRecorder:
    def __init__(self, names: StoreNames, *, ring_bytes: int, registry: Registry | None = None) -> None:
        self._registry = registry if registry is not None else Registry(names)
        self._ring_bytes = ring_bytes
        self._ring: Ring | None = None
        self._failed_at = 0.0
        self._lock = threading.Lock()
        self._packer = msgpack.Packer(autoreset=True)
        self._encoder = EvalEncoder()
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
            return ring.append(record) if ring is not None else False

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
        """True once every event recorded before the call was sent or failed
        (R-69); False when ``timeout`` ran out first."""
        request = self.flush()
        ring = self._ring
        if request == 0 or ring is None:
            return True
        deadline = time.monotonic() + max(0.0, timeout)
        while ring.words[W_FLUSH_DONE] < request:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

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
        self._encoder = EvalEncoder()


def _after_fork_in_child() -> None:
    for recorder in list(_recorders):
        recorder._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
