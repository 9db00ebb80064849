"""Where a sync process gets flag data: FeatBit's websocket, or a file.

Both sources run in the sync process's main thread and call back into it:
``on_data(message)`` for every valid data-sync message, ``on_state(state)``
for connection state changes, ``tick()`` often (at least every 0.25 s) so
the process can write its heartbeat and watch its owner, and they return when
``stop`` is set.
"""

from __future__ import annotations

import logging
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

import websocket

from .._core.protocol import (
    CONNECT_TIMEOUT_S,
    PING_FRAME,
    PING_INTERVAL_S,
    USER_AGENT,
    Backoff,
    Ignored,
    Pong,
    build_token,
    close_is_terminal,
    data_sync_request,
    parse_frame,
    redact,
    streaming_url,
)
from .._core.wire import DataSyncMessage
from ..bootstrap import load_document, read_bootstrap_file
from ..errors import DataError
from ..store.control import SyncState

log = logging.getLogger("featbit_shm.sync")

OnData = Callable[[DataSyncMessage], None]
OnState = Callable[[SyncState], None]
Tick = Callable[[], None]


PONG_TIMEOUT_S = 5.0  # after a ping or data-sync request, how long FeatBit may stay silent


class Terminal(Exception):
    """The server refused this client for good (close 4003, R-18)."""


class StreamSource:
    """FeatBit's data-sync websocket, reconnecting as R-17..R-21 say.

    Every attempt gets a fresh token (R-5); the data-sync request carries the
    cursor of the data already held (R-7), so a reconnect after an outage gets
    a patch of what changed meanwhile. The socket is read with ``select`` and
    a short wait so ``tick`` runs even on a silent connection.

    Liveness (a documented timeout, as R-9 allows): FeatBit answers the
    data-sync request, and every ping with a pong. When nothing at all has
    arrived within ``pong_timeout`` (5 s) of a request or ping that expects
    an answer, the peer is taken for dead -- a crashed server, or a middlebox
    that dropped the flow while the socket still looks open, where TCP itself
    may not notice for many minutes -- and the connection is replaced; the
    new one's cursor fetches whatever was missed. A dead connection is thus
    noticed within ``ping_interval + pong_timeout`` (20 s by default).
    """

    def __init__(
        self,
        secret: str,
        base_url: str,
        cursor: Callable[[], int],
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        rand: Callable[[], float] = random.random,
        backoff: Backoff | None = None,
        ping_interval: float = PING_INTERVAL_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        on_open: Callable[[], None] | None = None,
        pong_timeout: float = PONG_TIMEOUT_S,
    ) -> None:
        self._secret = secret
        self._base = base_url
        self._cursor = cursor
        self._clock_ms = clock_ms
        self._rand = rand
        self._backoff = backoff or Backoff()
        self._ping_interval = ping_interval
        self._connect_timeout = connect_timeout
        self._pong_timeout = pong_timeout
        self._on_open = on_open  # called after every successful open (counters)
        self.connects = 0

    def run(self, on_data: OnData, on_state: OnState, tick: Tick, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._session(on_data, on_state, tick, stop)
            except Terminal as exc:
                log.error("featbit_shm: FeatBit rejected this client (%s); close code 4003 is final, sync stops. "
                          "Check the env secret, and the host clock: more than 30 s of skew is rejected.", exc)
                on_state(SyncState.OFF)
                return
            if stop.is_set():
                return
            on_state(SyncState.INTERRUPTED)
            delay = self._backoff.next_delay()
            log.info("featbit_shm: reconnecting in %.1f s", delay)
            deadline = time.monotonic() + delay
            while not stop.is_set() and time.monotonic() < deadline:
                tick()
                stop.wait(min(0.25, max(0.0, deadline - time.monotonic())))

    def _session(self, on_data: OnData, on_state: OnState, tick: Tick, stop: threading.Event) -> None:
        """One connection: open, request data, read until it ends."""
        url = streaming_url(self._base, build_token(self._secret, self._clock_ms(), self._rand()))
        try:
            # websocket-client validates UTF-8 in pure Python (5 s for a 5 MB
            # full sync); parse_frame decodes the bytes strictly in C instead,
            # and ignores a frame that is not UTF-8.
            ws = websocket.create_connection(
                url,
                timeout=self._connect_timeout,
                header=[f"User-Agent: {USER_AGENT}"],
                enable_multithread=True,
                skip_utf8_validation=True,
            )
        except (OSError, websocket.WebSocketException) as exc:
            log.warning("featbit_shm: cannot connect to %s: %s", redact(url), exc)
            return
        self.connects += 1
        if self._on_open is not None:
            self._on_open()
        try:
            ws.send(data_sync_request(self._cursor()))
            # When we first asked for an answer that has not come (0.0: every one answered).
            last_ping = awaiting = time.monotonic()
            while not stop.is_set():
                tick()
                now = time.monotonic()
                if now - last_ping >= self._ping_interval:
                    ws.send(PING_FRAME)  # the application ping, not a websocket ping
                    last_ping = now
                    awaiting = awaiting or now
                sock = ws.sock
                if sock is None:
                    return
                pending = getattr(sock, "pending", lambda: 0)()
                if not pending and not select.select([sock], [], [], 0.2)[0]:
                    # Judged only when nothing waits to be read, so time this
                    # process spent busy (a big publish) is never held against FeatBit.
                    if awaiting and time.monotonic() - awaiting > self._pong_timeout:
                        log.warning("featbit_shm: no answer from FeatBit for %.1f s (ping unanswered); reconnecting", self._pong_timeout)
                        return
                    continue
                opcode, frame = ws.recv_data_frame(True)
                awaiting = 0.0  # anything at all proves the peer alive
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
                    if close_is_terminal(code):
                        raise Terminal(f"close {code}")
                    log.warning("featbit_shm: server closed the stream (code %s); reconnecting", code)
                    return
                if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    continue
                parsed = parse_frame(frame.data)
                if isinstance(parsed, DataSyncMessage):
                    on_data(parsed)
                    self._backoff.reset()  # a good connection: start the schedule again
                elif isinstance(parsed, Ignored):
                    log.warning("featbit_shm: ignored a message from FeatBit: %s", parsed.reason)
                elif isinstance(parsed, Pong):
                    pass
        except (OSError, websocket.WebSocketException, socket.timeout) as exc:
            # The server may have closed with a status before our write
            # failed: read it, so a 4003 is never mistaken for a drop.
            code = self._pending_close_code(ws)
            if close_is_terminal(code):
                raise Terminal(f"close {code}") from None
            log.warning("featbit_shm: stream dropped: %s", exc)
        finally:
            try:
                ws.close(timeout=1)
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass


    @staticmethod
    def _pending_close_code(ws: websocket.WebSocket) -> int | None:
        try:
            ws.settimeout(0.5)
            for _ in range(8):
                opcode, frame = ws.recv_data_frame(True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    return struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
        except Exception:  # noqa: BLE001 - nothing more to read
            return None
        return None


class FileSource:
    """A bootstrap file (R-72), published at start and again whenever it changes.

    The file is polled (mtime, size and inode) every ``interval`` seconds, so
    a change is published within that time. A file that does not load is
    logged and the previous data stays published.
    """

    def __init__(self, path: str, interval: float = 0.25) -> None:
        self.path = path
        self.interval = interval
        self.loads = 0
        self.failures = 0

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def run(self, on_data: OnData, on_state: OnState, tick: Tick, stop: threading.Event) -> None:
        seen: tuple[int, int, int] | None = (-1, -1, -1)
        while not stop.is_set():
            signature = self._signature()
            if signature != seen:
                seen = signature
                try:
                    result = load_document(read_bootstrap_file(self.path), origin=self.path)
                except DataError as exc:
                    self.failures += 1
                    kept = "previous data kept" if self.loads else "nothing published yet: clients answer client-not-ready"
                    log.error("featbit_shm: bootstrap file not published (%s): %s", kept, exc)
                else:
                    for skipped in result.skipped:
                        log.warning("featbit_shm: %s: skipped malformed %s %r: %s", self.path, skipped.kind, skipped.key, skipped.error)
                    self.loads += 1
                    flags = list(result.dataset.flags.values())
                    segments = list(result.dataset.segments.values())
                    on_data(DataSyncMessage("full", flags, segments, []))
            tick()
            stop.wait(self.interval)
