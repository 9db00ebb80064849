"""The sync-process side of events: drain every worker's ring, post to FeatBit.

The pump runs on its own thread in the sync process (a dedicated process, so
threads there cost the workers nothing). Every cycle (50 ms) it copies
records out of each claimed ring into a bounded buffer -- when the buffer is
full it stops taking, and the rings hold the rest (and drop new events once
full, counted) -- turns them into insight payloads, and posts them in slices
of at most 50 (R-67) when a slice is full, every ``flush_interval``, or when a
worker asked for a flush (R-69). Each slice gets at most 2 attempts 200 ms
apart; a terminal 4xx stops delivery for good (R-68). Rings whose process
is dead are drained, then unlinked and their registry slot freed. On stop it
keeps going until everything is sent or the shutdown deadline passes (R-70).

Nothing is lost that is not counted. A ring's space is freed (its tail
committed) only once its records were accepted by FeatBit or failed for
good, so a sync process killed with events in its buffer or in flight leaves
them in the rings and its successor sends them (a post that succeeded just
before the kill may arrive twice: at-least-once). A slice that fails its two
attempts for a retryable reason (5xx, 408, 429, network) is not thrown away:
it stays first in the buffer and is tried again at the next flush, so an
outage of the insight endpoint makes events wait -- in the buffer, then in
the rings -- and only a full ring drops new events, counted (R-67). What the
shutdown deadline leaves in the rings of exited workers is counted as failed.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from .._core.protocol import USER_AGENT, insight_url
from .._core.records import (
    ATTEMPTS,
    MAX_BATCH,
    RETRY_DELAY_S,
    Outcome,
    RecordError,
    Renderer,
    classify,
    join_json,
)
from .._runtime.environment import DEFAULT_EVENT_RING_BYTES
from .._runtime.processes import pid_alive
from ..shm.control import (
    W_DELIVERY_STOPPED,
    W_EVENTS_DROPPED,
    W_EVENTS_FAILED,
    W_EVENTS_QUEUED,
    W_EVENTS_SENT,
    ControlBlock,
)
from ..shm.names import StoreNames
from ..shm.objects import unlink_object
from ..shm.registry import Registry
from ..shm.ring import W_DROPPED, W_FLUSH_DONE, W_FLUSH_REQ, W_MALFORMED, Ring
from ..shm.trust import RING

log = logging.getLogger("featbit_shm.events")

Post = Callable[[bytes], "int | None"]


class HttpSender:
    """POST with keep-alive, R-61 headers, 1 s connect / 2 s per attempt (R-68)."""

    def __init__(self, event_base: str, secret: str, *, connect_timeout: float = 1.0, timeout: float = 2.0) -> None:
        url = insight_url(event_base)
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._headers = {
            "Authorization": secret,  # the raw secret, no "Bearer"
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
        }
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._connect_timeout)
            self._conn.connect()
            if self._conn.sock is not None:
                self._conn.sock.settimeout(self._timeout)
        return self._conn

    def __call__(self, body: bytes) -> int | None:
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                self.close()
            return resp.status
        except (OSError, http.client.HTTPException) as exc:
            log.warning("featbit_shm: insight request failed: %s", exc)
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class EventPump:
    def __init__(
        self,
        names: StoreNames,
        post: Post,
        control: ControlBlock | None = None,
        *,
        flush_interval: float = 1.0,
        attempts: int = ATTEMPTS,
        retry_delay: float = RETRY_DELAY_S,
        max_buffer: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        alive: Callable[[int], bool] = pid_alive,
        ring_bytes: int | None = None,
        spare_rings: int = 8,
    ) -> None:
        self.names = names
        # Spare rings are made at the size workers ask for: the same setting
        # configures both (SyncSettings.ring_bytes; Config.event_ring_bytes).
        self._ring_bytes = ring_bytes or DEFAULT_EVENT_RING_BYTES
        self._max_spares = spare_rings
        self._spares_checked = -1e9
        self.registry = Registry(names)
        self._post = post
        self._control = control
        self._flush_interval = flush_interval
        self._attempts = max(1, attempts)  # Config.events_max_retries + 1
        self._retry_delay = retry_delay  # Config.events_retry_interval
        self._max_buffer = max_buffer
        self._clock = clock
        self._sleep = sleep
        self._alive = alive
        self._rings: dict[int, Ring] = {}
        # Rendered payload objects (None: a malformed record), each with its
        # ring and the ring position just past it, committed once it is done.
        self._buffer: list[tuple[bytes | None, int, int]] = []
        self._retry_at = 0.0  # after a retryable failure, no send before this
        self._left_bytes = 0
        self._record_bytes = 128
        self._renderer = Renderer()
        self._last_send = clock()
        # Counters continue those of a previous leader of this store.
        self.sent = control.counter("events_sent") if control is not None else 0
        self.failed = control.counter("events_failed") if control is not None else 0
        self._dropped_reclaimed = control.counter("events_dropped") if control is not None else 0
        self.malformed = 0
        self.stopped = False  # delivery stopped by a terminal 4xx

    # ------------------------------------------------------------------ one cycle

    def cycle(self, *, force: bool = False) -> bool:
        """Drain, send what is due, reclaim dead rings. True when all is empty."""
        flushes: list[tuple[Ring, int]] = []
        self._left_bytes = 0
        drained_all = True
        slots = self.registry.slots()
        live_ids = set()
        dead: list[tuple[int, int]] = []
        for slot, pid, ring_id, _state, _at in slots:
            live_ids.add(ring_id)
            ring = self._ring(ring_id)
            if ring is None:
                continue
            requested = int(ring.words[W_FLUSH_REQ])
            room = self._max_buffer - len(self._buffer)
            records = ring.take_positions(max(0, room))
            render = self._renderer.render
            for record, end in records:
                try:
                    self._buffer.append((render(record), ring_id, end))
                except RecordError:
                    ring.words[W_MALFORMED] += 1
                    self.malformed += 1
                    self._buffer.append((None, ring_id, end))
            if ring.unread_bytes:
                drained_all = False
                self._left_bytes += ring.unread_bytes
            elif not self._alive(pid):
                # Its process is gone: no flush waiter is left. The ring is
                # reclaimed below, once every record taken from it is done.
                dead.append((slot, ring_id))
            elif requested > ring.words[W_FLUSH_DONE]:
                flushes.append((ring, requested))
            if records:
                self._record_bytes = sum(len(r) for r, _end in records) // len(records)
        for ring_id in list(self._rings):
            if ring_id not in live_ids:
                self._rings.pop(ring_id).close()
        now = self._clock()
        due = force or bool(flushes) or now - self._last_send >= self._flush_interval
        if self._buffer and (due or len(self._buffer) >= MAX_BATCH) and (force or now >= self._retry_at):
            self._send(all_of_it=due)
        if not self._buffer:
            for ring, requested in flushes:
                ring.words[W_FLUSH_DONE] = requested  # processed: sent or failed
        for slot, ring_id in dead:
            ring = self._rings.get(ring_id)
            if ring is not None and not ring.pending_bytes:  # every record of it sent or failed
                self._reclaim(slot, ring_id)
        self._publish_counters()
        self._top_up_spares()
        return drained_all and not self._buffer

    def _top_up_spares(self) -> None:
        """Keep empty rings ready for workers that will record (see ring.py),
        so no worker reserves 16 MiB on its first request. Checked at most
        every 0.1 s; never more than ``spare_rings`` at once."""
        now = self._clock()
        if self._max_spares <= 0 or now - self._spares_checked < 0.1:
            return
        self._spares_checked = now
        try:
            have, want = self.registry.spares_wanted(self._alive)
            for _ in range(min(want, self._max_spares) - have):
                if self.registry.add_spare(self._ring_bytes) is None:
                    break
        except Exception as exc:  # noqa: BLE001 - e.g. a full /dev/shm: workers then make their own
            log.warning("featbit_shm: cannot prepare a spare event ring: %s", exc)
            self._spares_checked = now + 5.0

    def _ring(self, ring_id: int) -> Ring | None:
        ring = self._rings.get(ring_id)
        if ring is None:
            try:
                ring = self._rings[ring_id] = Ring.open(self.names, ring_id)
            except Exception as exc:  # noqa: BLE001 - a vanished or damaged ring
                log.warning("featbit_shm: cannot open event ring %d: %s", ring_id, exc)
                return None
        return ring

    def _reclaim(self, slot: int, ring_id: int) -> None:
        ring = self._rings.pop(ring_id, None)
        if ring is not None:
            self._dropped_reclaimed += int(ring.words[W_DROPPED])
            ring.close()
        unlink_object(self.names.ring(ring_id), RING, self.names.access)
        self.registry.release(slot, ring_id)

    def _send(self, *, all_of_it: bool) -> None:
        n = len(self._buffer)
        if not all_of_it:
            n -= n % MAX_BATCH
        while n > 0:
            chunk = self._buffer[: min(n, MAX_BATCH)]
            payloads = [p for p, _ring, _end in chunk if p is not None]
            if self.stopped or not payloads:
                self.failed += len(payloads)
            else:
                body = join_json(payloads)
                outcome = Outcome.RETRY
                for attempt in range(self._attempts):
                    outcome = classify(self._post(body))
                    if outcome is not Outcome.RETRY:
                        break
                    if attempt + 1 < self._attempts:
                        self._sleep(self._retry_delay)
                if outcome is Outcome.SUCCESS:
                    self.sent += len(payloads)
                elif outcome is Outcome.TERMINAL:
                    log.error("featbit_shm: FeatBit refused events (terminal 4xx); event delivery stops (R-68)")
                    self.stopped = True
                    self.failed += len(payloads)
                else:
                    # Both attempts failed for a reason that may pass: keep
                    # this slice and the rest; try again at the next flush.
                    self._retry_at = self._clock() + self._flush_interval
                    break
            # Done with this slice: free its ring space now, so a kill
            # after this point resends nothing of it.
            self._complete(len(chunk))
            n -= len(chunk)
        self._last_send = self._clock()

    def _complete(self, n: int) -> None:
        """The first ``n`` buffered records were sent or failed: free their ring space."""
        upto: dict[int, tuple[int, int]] = {}
        for _payload, ring_id, end in self._buffer[:n]:
            position, count = upto.get(ring_id, (0, 0))
            upto[ring_id] = (max(position, end), count + 1)
        del self._buffer[:n]
        for ring_id, (position, count) in upto.items():
            ring = self._rings.get(ring_id)
            if ring is not None:
                ring.commit_to(position, count)
        self._publish_counters()  # per slice: a killed pump's successor continues from here

    def _publish_counters(self) -> None:
        block = self._control
        if block is None:
            return
        dropped = self._dropped_reclaimed + sum(int(ring.words[W_DROPPED]) for ring in self._rings.values())
        # Records still in rings are estimated from their bytes (the pump
        # counts exactly only what it has taken out).
        queued = self._left_bytes // max(self._record_bytes, 1)
        block.set_word(W_EVENTS_SENT, self.sent)
        block.set_word(W_EVENTS_FAILED, self.failed)
        block.set_word(W_EVENTS_DROPPED, dropped)
        block.set_word(W_EVENTS_QUEUED, queued + len(self._buffer))
        block.set_word(W_DELIVERY_STOPPED, 1 if self.stopped else 0)

    # ------------------------------------------------------------------ thread

    def run(self, stop: threading.Event, shutdown_timeout: float = 5.0) -> None:
        while not stop.is_set():
            try:
                self.cycle()
            except Exception:
                log.exception("featbit_shm: event pump cycle failed")
            if not self._left_bytes:  # rings still hold records: go straight on
                stop.wait(0.05)
        self.shutdown(shutdown_timeout)

    def drain(self, timeout: float) -> bool:
        """Send everything queued, within ``timeout``. True when all went out."""
        deadline = self._clock() + timeout
        while self._clock() < deadline:
            if self.cycle(force=True):
                return True
        return False

    def shutdown(self, timeout: float = 5.0, owners_grace: float = 1.0) -> bool:
        """The final drain (R-70), within ``timeout``.

        A server stopping its workers and its sync process together (uWSGI, a
        container) leaves a short race: workers may record on their way out.
        So for up to ``owners_grace`` seconds the drain waits for processes
        that still own a ring to exit, then ends with every ring drained and
        the rings of exited workers removed. At the deadline, what is left in
        the rings of exited workers is counted as failed and they are
        removed; the rings of live processes keep theirs for a successor.
        """
        deadline = self._clock() + timeout
        grace_end = self._clock() + min(owners_grace, timeout)
        while self._clock() < deadline:
            empty = self.cycle(force=True)
            owners = any(self._alive(pid) for _slot, pid, *_rest in self.registry.slots())
            if empty and (not owners or self._clock() >= grace_end):
                return True
            self._sleep(0.01)
        self._give_up_on_exited()
        return False

    def _give_up_on_exited(self) -> None:
        exited = {(slot, ring_id) for slot, pid, ring_id, *_rest in self.registry.slots() if not self._alive(pid)}
        gone = {ring_id for _slot, ring_id in exited}
        self.failed += sum(1 for p, ring_id, _end in self._buffer if ring_id in gone and p is not None)
        self._buffer = [e for e in self._buffer if e[1] not in gone]
        for slot, ring_id in exited:
            ring = self._rings.get(ring_id)
            if ring is not None:
                self.failed += len(ring.take(1 << 30))
                ring.commit()
            self._reclaim(slot, ring_id)
        self._publish_counters()

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()
        try:
            self.registry.drop_spares()
        except Exception as exc:  # noqa: BLE001 - closing goes on
            log.warning("featbit_shm: cannot remove spare event rings: %s", exc)
        self.registry.close()
