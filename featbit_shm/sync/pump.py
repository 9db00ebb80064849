"""The sync-process side of events: drain every worker's ring, deliver to FeatBit.

The pump runs on its own thread in the sync process (a dedicated process, so
threads there cost the workers nothing). It copies records out of each
claimed ring into a bounded buffer (when the buffer is full it stops taking,
and the rings hold the rest, dropping new events once full, counted, R-67),
renders them into insight payload objects, and hands batches of at most 50
objects (R-67) and at most ``MAX_BODY`` bytes to a pool of sender threads:
up to ``concurrency`` requests in flight, each thread on its own keep-alive
connection (while requests come back within 2 ms, the pump sends them
itself: threads would cost more CPU than they save). A full batch goes at once; a partial one every
``flush_interval``, or when a worker asked for a flush (R-69).

Responses (:func:`~featbit_shm._core.records.classify`):

* 2xx: delivered.
* 400 or 413: the payload is refused, not the sender. The sender splits the
  batch in halves until it finds the object(s) at fault; only those are
  dropped, counted as ``refused`` and logged with their flag keys or event
  names and size (never the user's attributes); the rest are delivered.
* 408, 429, 5xx, network errors: the batch goes back to the head of the
  queue. Nothing is sent before ``Retry-After`` (429/503, capped at 300 s)
  or a backoff: ``retry_delay`` (R-68's 200 ms) for the first
  ``attempts - 1`` failures in a row, then doubling to 10 s with jitter.
  While failures last, one request probes at a time and the pump sleeps
  between probes: an outage costs no CPU, and events wait in the buffer,
  then in the rings.
* Other 4xx (401, 403, 404): delivery stops for good (R-68), loudly; what
  waits and what comes later is counted as failed.

Nothing is lost that is not counted. A ring's space is freed (its tail
committed) only once its records were delivered or lost for good, in ring
order, so a sync process killed with events in its buffer or in flight
leaves them in the rings for its successor (a request that succeeded just
before the kill may arrive twice: at-least-once). Rings whose process is
dead are drained, then unlinked and their registry slot freed. On stop the
pump keeps delivering until everything is out or the shutdown deadline
passes (R-70); what that deadline leaves of exited workers is counted as
failed. ``featbit-shm status`` shows every counter: recorded, delivered,
waiting (exact, from each ring's written and consumed counts), and lost by
reason (ring full, no space, too large, refused, malformed, failed).
"""

from __future__ import annotations

import collections
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .._core.records import (
    ATTEMPTS,
    MAX_BATCH,
    MAX_BODY,
    RETRY_DELAY_S,
    Outcome,
    RecordError,
    Renderer,
    backoff,
    classify,
    describe_payload,
    join_json,
)
from .._runtime.environment import DEFAULT_EVENT_RING_BYTES
from .._runtime.notices import warn_limited
from .._runtime.processes import pid_alive, pid_namespace
from ..shm.control import (
    W_DELIVERY_STOPPED,
    W_EVENTS_DROPPED,
    W_EVENTS_FAILED,
    W_EVENTS_MALFORMED,
    W_EVENTS_NO_SPACE,
    W_EVENTS_QUEUED,
    W_EVENTS_RECORDED,
    W_EVENTS_REFUSED,
    W_EVENTS_SENT,
    W_EVENTS_TOO_LARGE,
    W_RETIRED_DROPPED,
    W_RETIRED_NO_SPACE,
    W_RETIRED_RECORDED,
    W_RETIRED_TOO_LARGE,
    ControlBlock,
)
from ..shm.names import StoreNames
from ..shm.objects import unlink_object
from ..shm.registry import Registry
from ..shm.ring import (
    W_CONSUMED,
    W_DROPPED,
    W_FLUSH_DONE,
    W_FLUSH_REQ,
    W_HEAD,
    W_LOST,
    W_MALFORMED,
    W_NOSPACE,
    W_PIDNS,
    W_TAIL,
    W_TOO_LARGE,
    W_WRITTEN,
    Ring,
)
from ..shm.trust import RING
from .delivery import InsightClient, Reply

log = logging.getLogger("featbit_shm.events")

#: Requests in flight at once, at most (FEATBIT_SHM_EVENT_CONCURRENCY). At
#: 100 ms per request, 24 x 50 objects is 12,000 events/s; a healthy host
#: with little backlog has one request in flight now and then.
DEFAULT_CONCURRENCY = 24
#: While requests come back faster than this (loopback, a FeatBit Agent on the
#: host), the pump sends them itself, one after the other: handing batches to
#: threads would cost more CPU than the wait it saves.
INLINE_LATENCY_S = 0.002

Post = Callable[[bytes], "Reply | int | None"]

# Ring words summed into the store's counters (producer and consumer words).
_RING_TOTALS = {"written": W_WRITTEN, "dropped": W_DROPPED, "no_space": W_NOSPACE, "too_large": W_TOO_LARGE, "consumed": W_CONSUMED}
# Control-block words with the counts of removed rings, by counter.
_RETIRED_WORDS = {
    "recorded": W_RETIRED_RECORDED,
    "dropped": W_RETIRED_DROPPED,
    "no_space": W_RETIRED_NO_SPACE,
    "too_large": W_RETIRED_TOO_LARGE,
}


def _reply(value: Reply | int | None) -> Reply:
    return value if isinstance(value, Reply) else Reply(value)


class _Entry:
    """One record taken from a ring: its payload (None: malformed), and the
    ring position just past it, committed once it is done."""

    __slots__ = ("payload", "ring_id", "end", "done")

    def __init__(self, payload: bytes | None, ring_id: int, end: int) -> None:
        self.payload = payload
        self.ring_id = ring_id
        self.end = end
        self.done = payload is None


@dataclass
class _Result:
    """What a sender made of one batch."""

    delivered: list[_Entry] = field(default_factory=list)
    refused: list[tuple[_Entry, int | None]] = field(default_factory=list)
    retry: list[_Entry] = field(default_factory=list)  # to send again, in order
    stopped: list[_Entry] = field(default_factory=list)  # delivery stopped for good on these
    status: int | None = None  # of the failure, when there was one
    retry_after: float | None = None
    terminal: bool = False


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
        concurrency: int = DEFAULT_CONCURRENCY,
        max_buffer: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        alive: Callable[[int], bool] = pid_alive,
        rand: Callable[[], float] = random.random,
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
        self._quick_retries = max(0, attempts - 1)  # Config.events_max_retries
        self._retry_delay = retry_delay  # Config.events_retry_interval
        # 0: every request is made on the pump's own thread (tests, tools).
        self._concurrency = max(0, concurrency)
        self._max_buffer = max_buffer
        self._clock = clock
        self._sleep = sleep
        self._alive = alive
        self._pidns = pid_namespace()
        self._rand = rand
        self._rings: dict[int, Ring] = {}
        self._order: collections.deque[_Entry] = collections.deque()  # taken, not yet committed, in ring order
        self._ready: collections.deque[_Entry] = collections.deque()  # to send
        self._in_flight = 0
        self._jobs: queue.SimpleQueue[list[_Entry] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[_Result] = queue.SimpleQueue()
        self._senders: list[threading.Thread] = []
        self.wake = threading.Event()  # set when a sender finishes a batch
        self._flushes: dict[int, tuple[int, int]] = {}  # ring id -> (request, ring head when seen)
        self._latency = 0.0  # recent request duration, seconds (moving average)
        self._failures = 0  # retryable failures in a row
        self._proven = False  # the endpoint accepted a request: until then, one at a time
        self._not_before = 0.0  # after a retryable failure, no request before this
        self._left_bytes = 0
        self._renderer = Renderer()
        self._last_send = clock()
        # Counters continue those of a previous leader of this store.
        self.sent = control.counter("events_sent") if control is not None else 0
        self.failed = control.counter("events_failed") if control is not None else 0
        self.refused = control.counter("events_refused") if control is not None else 0
        self.malformed = control.counter("events_malformed") if control is not None else 0
        # The counts of every ring removed from the store, by any leader (exact:
        # each keeps them in the control block as it removes a ring); the rings
        # still here are counted from their own words.
        self._retired = {
            name: control.counter(f"retired_{name}") if control is not None else 0 for name in _RETIRED_WORDS
        }
        self.stopped = False  # delivery stopped by a terminal 4xx

    # ------------------------------------------------------------------ one cycle

    def cycle(self, *, force: bool = False) -> bool:
        """Collect finished requests, drain the rings, send what is due,
        commit and reclaim. True when nothing is left anywhere."""
        self._collect()
        dead, drained_all = self._drain()
        self._dispatch(force)
        self._collect()
        self._commit(dead)
        self._publish_counters()
        self._top_up_spares()
        return drained_all and not self._order and not self._in_flight

    def _drain(self) -> tuple[list[tuple[int, int]], bool]:
        """Copy records out of every claimed ring into the buffer; note flush
        requests. Returns the (slot, ring id) of dead processes' empty rings."""
        self._left_bytes = 0
        drained_all = True
        dead: list[tuple[int, int]] = []
        live_ids = set()
        render = self._renderer.render
        for slot, pid, ring_id, _state, _at in self.registry.slots():
            live_ids.add(ring_id)
            ring = self._ring(ring_id)
            if ring is None:
                continue
            words = ring.words
            requested = int(words[W_FLUSH_REQ])
            if requested > words[W_FLUSH_DONE] and self._flushes.get(ring_id, (0, 0))[0] != requested:
                self._flushes[ring_id] = (requested, int(words[W_HEAD]))  # everything recorded before it
            room = self._max_buffer - len(self._order)
            for record, end in ring.take_positions(max(0, room)):
                try:
                    entry = _Entry(render(record), ring_id, end)
                except RecordError:
                    entry = _Entry(None, ring_id, end)
                    words[W_MALFORMED] += 1
                    words[W_LOST] += 1
                    self.malformed += 1
                self._order.append(entry)
                if not entry.done:
                    self._ready.append(entry)
            if ring.unread_bytes:
                drained_all = False
                self._left_bytes += ring.unread_bytes
            elif self._owner_gone(ring, pid):
                # Its process is gone: no flush waiter is left. The ring is
                # reclaimed once every record taken from it is done.
                dead.append((slot, ring_id))
                self._flushes.pop(ring_id, None)
        for ring_id in list(self._rings):
            if ring_id not in live_ids:
                self._forget(ring_id)
        return dead, drained_all

    def _dispatch(self, force: bool) -> None:
        """Hand due batches to the senders (or send them here, concurrency 0)."""
        if self.stopped:
            self._give_up(self._ready, "stopped")
            self._ready.clear()
            return
        now = self._clock()
        # A partial batch goes every flush interval, on a flush, or as a retry (once the backoff ends).
        due = force or bool(self._flushes) or bool(self._failures) or now - self._last_send >= self._flush_interval
        # One request at a time until the endpoint has taken one, and again while it fails.
        limit = max(1, self._concurrency) if self._proven and not self._failures else 1
        while self._ready and self._in_flight < limit and now >= self._not_before and not self.stopped:
            if len(self._ready) < MAX_BATCH and not due:
                break
            batch = self._next_batch()
            self._in_flight += 1
            self._last_send = now
            if self._concurrency and (self._in_flight > 1 or self._latency >= INLINE_LATENCY_S):
                self._start_senders()
                self._jobs.put(batch)
            else:
                self._finish(self._deliver(batch))

    def _next_batch(self) -> list[_Entry]:
        """Up to MAX_BATCH objects and MAX_BODY bytes (at least one object)."""
        ready = self._ready
        batch = [ready.popleft()]
        size = len(batch[0].payload or b"")
        while ready and len(batch) < MAX_BATCH:
            more = len(ready[0].payload or b"") + 1
            if size + more > MAX_BODY:
                break
            batch.append(ready.popleft())
            size += more
        return batch

    # ------------------------------------------------------------------ senders

    def _start_senders(self) -> None:
        while len(self._senders) < self._concurrency and len(self._senders) < self._in_flight:
            thread = threading.Thread(target=self._send_loop, name=f"featbit-events-{len(self._senders)}", daemon=True)
            self._senders.append(thread)
            thread.start()

    def _send_loop(self) -> None:
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            try:
                result = self._deliver(batch)
            except Exception:  # a sender never dies; the batch is tried again
                log.exception("featbit_shm: an event sender failed")
                result = _Result(retry=batch)
            self._results.put(result)
            self.wake.set()

    def _deliver(self, batch: list[_Entry]) -> _Result:
        """Post one batch; on 400/413 split it to find the objects at fault."""
        result = _Result()
        parts: collections.deque[list[_Entry]] = collections.deque([batch])
        while parts:
            part = parts.popleft()
            started = time.monotonic()
            reply = _reply(self._post(join_json([e.payload or b"" for e in part])))
            self._latency = 0.8 * self._latency + 0.2 * (time.monotonic() - started)
            outcome = classify(reply.status)
            if outcome is Outcome.SUCCESS:
                result.delivered.extend(part)
            elif outcome is Outcome.REFUSED:
                if len(part) == 1:
                    result.refused.append((part[0], reply.status))
                else:
                    middle = len(part) // 2
                    parts.extendleft((part[middle:], part[:middle]))  # first half first
            elif outcome is Outcome.RETRY:
                result.retry = part + [e for rest in parts for e in rest]
                result.status, result.retry_after = reply.status, reply.retry_after
                return result
            else:
                result.stopped = part + [e for rest in parts for e in rest]
                result.status, result.terminal = reply.status, True
                return result
        return result

    def _collect(self) -> None:
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return
            self._finish(result)

    def _finish(self, result: _Result) -> None:
        self._in_flight -= 1
        for entry in result.delivered:
            entry.done = True
        self.sent += len(result.delivered)
        for entry, status in result.refused:
            entry.done = True
            self.refused += 1
            self._lost_in_ring(entry.ring_id)
            warn_limited(
                f"event-refused {status}",
                f"featbit_shm: FeatBit refused {describe_payload(entry.payload or b'')} with HTTP {status}; "
                "dropped (counted as refused), the rest of its batch was delivered",
            )
        if result.delivered or result.refused:
            self._failures = 0
            self._proven = True
        if result.retry:
            self._ready.extendleft(reversed(result.retry))  # back to the head, in order
            if self._failures and self._clock() < self._not_before:
                return  # another request of the same moment failed too: one failure, one backoff step
            self._failures += 1
            wait = result.retry_after
            if wait is None:
                wait = self._retry_delay if self._failures <= self._quick_retries else backoff(self._failures - self._quick_retries + 1, self._rand(), self._retry_delay)
            self._not_before = self._clock() + wait
            if self._failures > self._quick_retries:
                warn_limited(
                    "insight-unavailable",
                    f"featbit_shm: the insight endpoint is unavailable ({'no answer' if result.status is None else f'HTTP {result.status}'}); "
                    f"events wait and are retried (next in {wait:.1f} s)",
                )
        if result.terminal:
            if not self.stopped:
                log.error(
                    "featbit_shm: FeatBit refused this environment's events with HTTP %s (a wrong or revoked secret?); "
                    "event delivery stops until the sync process restarts (R-68); flag sync goes on",
                    result.status,
                )
            self.stopped = True
            self._give_up(result.stopped, "stopped")

    def _give_up(self, entries: Iterable[_Entry], _reason: str) -> None:
        for entry in entries:
            if not entry.done:
                entry.done = True
                self.failed += 1
                self._lost_in_ring(entry.ring_id)

    def _lost_in_ring(self, ring_id: int) -> None:
        ring = self._rings.get(ring_id)
        if ring is not None:
            ring.words[W_LOST] += 1  # flush_and_wait() of its process says False

    # ------------------------------------------------------------------ commit

    def _commit(self, dead: list[tuple[int, int]]) -> None:
        """Free the ring space of records done, in ring order; finish flushes
        whose records are all done; reclaim the rings of exited workers."""
        upto: dict[int, tuple[int, int]] = {}
        order = self._order
        while order and order[0].done:
            entry = order.popleft()
            position, count = upto.get(entry.ring_id, (0, 0))
            upto[entry.ring_id] = (max(position, entry.end), count + 1)
        for ring_id, (position, count) in upto.items():
            ring = self._rings.get(ring_id)
            if ring is not None:
                ring.commit_to(position, count)
        for ring_id, (requested, head) in list(self._flushes.items()):
            ring = self._rings.get(ring_id)
            if ring is None:
                del self._flushes[ring_id]
            elif ring.words[W_TAIL] >= head:  # processed: delivered or lost
                ring.words[W_FLUSH_DONE] = requested
                del self._flushes[ring_id]
        for slot, ring_id in dead:
            ring = self._rings.get(ring_id)
            if ring is not None and not ring.pending_bytes:  # every record of it done
                self._reclaim(slot, ring_id)

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

    def _forget(self, ring_id: int) -> None:
        """Stop using a ring (reclaimed, or gone from the registry): keep its totals."""
        ring = self._rings.pop(ring_id)
        dropped, too_large = int(ring.words[W_DROPPED]), int(ring.words[W_TOO_LARGE])
        self._retired["recorded"] += int(ring.words[W_WRITTEN]) + dropped + too_large
        self._retired["dropped"] += dropped
        self._retired["no_space"] += int(ring.words[W_NOSPACE])
        self._retired["too_large"] += too_large
        ring.close()

    def _reclaim(self, slot: int, ring_id: int) -> None:
        if ring_id in self._rings:
            self._forget(ring_id)
        unlink_object(self.names.ring(ring_id), RING, self.names.access)
        self.registry.release(slot, ring_id)
        # At once. A leader killed between the unlink and this write leaves a
        # successor without this ring's counts (recorded then reads low by
        # them); written before the unlink, the ring would be counted twice
        # instead. Undercounting by a window of two syscalls was chosen.
        self._publish_retired()

    # ------------------------------------------------------------------ counters

    def totals(self) -> dict[str, int]:
        """Every counter of the store's events (what status shows)."""
        live = dict.fromkeys(_RING_TOTALS, 0)
        for ring in self._rings.values():
            for name, word in _RING_TOTALS.items():
                live[name] += int(ring.words[word])
        retired = self._retired
        return {
            "recorded": retired["recorded"] + live["written"] + live["dropped"] + live["too_large"],
            "sent": self.sent,
            "queued": max(0, live["written"] - live["consumed"]),
            "dropped": retired["dropped"] + live["dropped"],
            "no_space": retired["no_space"] + live["no_space"],
            "too_large": retired["too_large"] + live["too_large"],
            "refused": self.refused,
            "malformed": self.malformed,
            "failed": self.failed,
        }

    def _publish_retired(self) -> None:
        block = self._control
        if block is not None:
            for name, value in self._retired.items():
                block.set_word(_RETIRED_WORDS[name], value)

    def _publish_counters(self) -> None:
        block = self._control
        if block is None:
            return
        totals = self.totals()
        for word, name in (
            (W_EVENTS_SENT, "sent"),
            (W_EVENTS_FAILED, "failed"),
            (W_EVENTS_DROPPED, "dropped"),
            (W_EVENTS_QUEUED, "queued"),
            (W_EVENTS_REFUSED, "refused"),
            (W_EVENTS_TOO_LARGE, "too_large"),
            (W_EVENTS_RECORDED, "recorded"),
            (W_EVENTS_NO_SPACE, "no_space"),
            (W_EVENTS_MALFORMED, "malformed"),
        ):
            block.set_word(word, totals[name])
        block.set_word(W_DELIVERY_STOPPED, 1 if self.stopped else 0)
        self._publish_retired()

    # ------------------------------------------------------------------ thread

    def _idle_wait(self) -> float:
        """How long the loop may rest: not at all while rings hold records it
        has room and a sender for; until the backoff ends during an outage."""
        now = self._clock()
        gated = self._failures and now < self._not_before
        room = len(self._order) < self._max_buffer
        if self._left_bytes and room and not gated:
            return 0.0
        if gated:
            return min(max(self._not_before - now, 0.01), 0.25)
        return 0.05

    def run(self, stop: threading.Event, shutdown_timeout: float = 5.0) -> None:
        while not stop.is_set():
            try:
                self.cycle()
            except Exception:  # a sender never dies; the batch is tried again
                log.exception("featbit_shm: event pump cycle failed")
            wait = self._idle_wait()
            if wait:
                self.wake.wait(wait)
            self.wake.clear()
        self.shutdown(shutdown_timeout)

    def drain(self, timeout: float) -> bool:
        """Deliver everything queued, within ``timeout``. True when all went out."""
        deadline = self._clock() + timeout
        while self._clock() < deadline:
            if self.cycle(force=True):
                return True
            if self._in_flight:
                self.wake.wait(0.01)
                self.wake.clear()
            elif self._failures:
                self._sleep(min(max(self._not_before - self._clock(), 0.0), 0.05))
        return False

    def shutdown(self, timeout: float = 5.0, owners_grace: float = 1.0) -> bool:
        """The final drain (R-70), within ``timeout``.

        A server stopping its workers and its sync process together (uWSGI, a
        container) leaves a short race: workers may record on their way out.
        So for up to ``owners_grace`` seconds the drain waits for processes
        that still own a ring to exit, then ends with every ring drained and
        the rings of exited workers removed. At the deadline, what is left of
        exited workers (in the rings, the buffer or in flight) is counted as
        failed and their rings are removed; the rings of live processes keep
        theirs for a successor.
        """
        deadline = self._clock() + timeout
        grace_end = self._clock() + min(owners_grace, timeout)
        while self._clock() < deadline:
            empty = self.cycle(force=True)
            owners = any(self._alive(pid) for _slot, pid, *_rest in self.registry.slots())
            if empty and (not owners or self._clock() >= grace_end):
                return True
            if self._in_flight:
                self.wake.wait(0.01)
                self.wake.clear()
            else:
                self._sleep(min(max(self._not_before - self._clock(), 0.01), 0.05) if self._failures else 0.01)
        self._give_up_on_exited()
        return False

    def _owner_gone(self, ring: Ring, pid: int) -> bool:
        """Has the process writing ``ring`` exited? Its pid tells only inside
        the PID namespace it was taken in: a worker in another one (a
        container of a pod without shareProcessNamespace) cannot be judged
        from here, and its ring is kept rather than taken from a live writer."""
        theirs = int(ring.words[W_PIDNS])
        if theirs and self._pidns and theirs != self._pidns:
            warn_limited(
                "foreign-pid-namespace",
                f"featbit_shm: pid {pid} writes events from another PID namespace than this sync process's: "
                "whether it still runs cannot be told from here, so its event ring is never reclaimed "
                "(run both in one PID namespace: Kubernetes shareProcessNamespace: true)",
                level=logging.ERROR,
            )
            return False
        return not self._alive(pid)

    def _gone(self, ring_id: int, pid: int) -> bool:
        ring = self._rings.get(ring_id)
        return self._owner_gone(ring, pid) if ring is not None else not self._alive(pid)

    def _give_up_on_exited(self) -> None:
        exited = {(slot, ring_id) for slot, pid, ring_id, *_rest in self.registry.slots() if self._gone(ring_id, pid)}
        gone = {ring_id for _slot, ring_id in exited}
        self._give_up([e for e in self._order if e.ring_id in gone], "shutdown")
        self._ready = collections.deque(e for e in self._ready if e.ring_id not in gone)
        for slot, ring_id in exited:
            ring = self._rings.get(ring_id)
            if ring is not None:
                left = ring.take(1 << 30)
                self.failed += len(left)
                ring.words[W_LOST] += len(left)
                ring.commit()
            self._order = collections.deque(e for e in self._order if e.ring_id != ring_id)
            self._reclaim(slot, ring_id)
        self._publish_counters()

    def close(self) -> None:
        for _ in self._senders:
            self._jobs.put(None)
        self._senders.clear()
        closer = getattr(self._post, "close", None)
        if callable(closer):
            closer()
        for ring_id in list(self._rings):
            self._forget(ring_id)
        try:
            self.registry.drop_spares()
        except Exception as exc:  # noqa: BLE001 - closing goes on
            log.warning("featbit_shm: cannot remove spare event rings: %s", exc)
        self.registry.close()


__all__ = ["DEFAULT_CONCURRENCY", "EventPump", "InsightClient", "Reply"]
