"""Where a sync process gets flag data: FeatBit's websocket, or a file.

Both sources run in the sync process's main thread and call back into it:
``on_data(messages)`` with valid data-sync messages, in order, to be
published as one generation, ``on_state(state)``
for connection state changes, ``tick()`` often (at least every 0.25 s) so
the process can write its heartbeat and watch its owner, and they return when
``stop`` is set.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import logging
import os
import random
import select
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import websocket
from websocket._url import get_proxy_info

from .._core import jsonstream
from .._core.document import load_document
from .._core.errors import DataError
from .._core.protocol import (
    CONNECT_TIMEOUT_S,
    PING_FRAME,
    PING_INTERVAL_S,
    USER_AGENT,
    Backoff,
    Ignored,
    Pong,
    build_token,
    clock_skew_text,
    close_is_terminal,
    data_sync_request,
    parse_frame,
    polling_url,
    redact,
    streaming_url,
)
from .._core.records import retry_after
from .._core.wire import DataSyncMessage, parse_data_sync, parse_envelope
from .._runtime.environment import env_float
from .._runtime.files import read_bootstrap_file
from .._runtime.notices import warn_limited
from .._runtime.redaction import REDACTOR
from ..shm.control import SyncState

log = logging.getLogger("featbit_shm.sync")

OnData = Callable[[list[DataSyncMessage]], None]  # in order; published as one generation
OnState = Callable[[SyncState], None]
Tick = Callable[[], None]


MAX_BATCH = 256  # messages already waiting that are read and published together
MAX_BATCH_S = 0.1
PONG_TIMEOUT_S = 5.0  # after a ping or data-sync request, how long FeatBit may stay silent


def _readable(sock: socket.socket, timeout: float) -> bool:
    if getattr(sock, "pending", lambda: 0)():  # TLS: bytes already decrypted
        return True
    return bool(select.select([sock], [], [], timeout)[0])


#: The longest one handshake, or one frame, may take: a server that trickles
#: a byte every few seconds passes every per-read timeout, never this.
OPERATION_DEADLINE_S = 15.0


class _Watchdog:
    """Ends a blocking websocket operation that outlives its deadline, or
    any operation once the process is stopping (SIGTERM, owner gone), by
    shutting the socket down from a thread of its own: the blocked read in
    the main thread then fails at once and the session ends."""

    def __init__(self, ws: websocket.WebSocket, stop: threading.Event) -> None:
        self._ws = ws
        self._stop = stop
        self._until: float | None = None
        self._done = threading.Event()
        self.tripped = False
        threading.Thread(target=self._run, name="featbit-stream-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        self._until = time.monotonic() + seconds
        try:
            yield
        finally:
            self._until = None

    def _run(self) -> None:
        while not self._done.wait(0.2):
            until = self._until
            if self._stop.is_set() or (until is not None and time.monotonic() > until):
                sock = self._ws.sock
                if sock is not None and not self.tripped:
                    self.tripped = True
                    log.warning("featbit_shm: %s; abandoning the connection", "stopping" if self._stop.is_set() else f"a websocket operation took over {OPERATION_DEADLINE_S:.0f} s")
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._done.set()


_lookup: threading.Thread | None = None  # the one DNS lookup in flight (see _resolve_within)


def _resolve_within(url: str, seconds: float, stop: threading.Event) -> str | None:
    """Resolve the host a websocket to ``url`` connects to (its proxy's, when
    one applies) on a thread of its own, within ``seconds``: a stalled
    resolver blocks inside the C library, where no socket deadline reaches
    and no signal handler runs. None when it resolved; otherwise why not. A
    lookup that outlives its deadline is abandoned (a daemon thread), and no
    other starts while it hangs, so a dead resolver costs one thread."""
    global _lookup
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "wss"
    proxy_host, proxy_port, _auth = get_proxy_info(host, secure)
    target, port = (proxy_host, proxy_port) if proxy_host else (host, parts.port or (443 if secure else 80))
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in target else socket.AF_INET, target)
        return None  # an address: nothing to resolve
    except OSError:
        pass
    if _lookup is not None and _lookup.is_alive():
        return f"a DNS lookup of {target} is still pending"
    failed: list[BaseException] = []
    delay = env_float("FEATBIT_SHM_FAULT_DNS_DELAY") or 0.0

    def lookup() -> None:
        try:
            if delay:
                time.sleep(delay)
            socket.getaddrinfo(target, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            failed.append(exc)

    thread = _lookup = threading.Thread(target=lookup, name="featbit-dns", daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while thread.is_alive():
        thread.join(0.1)
        if stop.is_set():
            return "stopping"
        if thread.is_alive() and time.monotonic() > deadline:
            return f"resolving {target} took over {seconds:.0f} s"
    return f"cannot resolve {target}: {failed[0]}" if failed else None


def _wait(seconds: float, tick: Tick, stop: threading.Event) -> None:
    """Sleep ``seconds`` (or until stop), ticking at least every 0.25 s."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        tick()
        stop.wait(min(0.25, max(0.0, deadline - time.monotonic())))


def _skew(ws: websocket.WebSocket) -> float | None:
    """Host clock minus the server's ``Date`` header of the handshake, seconds."""
    try:
        date = (ws.getheaders() or {}).get("date")
        return time.time() - email.utils.parsedate_to_datetime(date).timestamp() if date else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Unanswered(Exception):
    """The server skipped our data-sync request: reconnect and ask again."""


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
    noticed within ``ping_interval + pong_timeout`` (10 s by default).

    The barrier: a push may reach a new connection before the reply to its
    data-sync request, and both are ``data-sync`` patches that nothing tells
    apart. Applied alone, such a push would publish a data version (the
    cursor, R-7) newer than changes the reply has yet to bring: workers
    would see a snapshot that claims version V but lacks older updates, and
    if the connection or the leader died before the reply, the next cursor
    would skip those updates for good (on a first connection, a push before
    the full would even publish a one-flag store as ready, R-22). So a ping
    follows the request at once, and everything that arrives before its
    pong is held: the server answers a connection's messages in order, so
    the reply comes before the pong, and the held messages are then applied
    together, reply included. A pong with nothing before it means the server
    skipped the request, and no reply and pong within ``pong_timeout`` means
    it is not answering: either way nothing held is applied (pushes alone
    would move the cursor past changes never fetched) and the connection is
    replaced, so the next one asks again. After the barrier, messages already waiting
    are read and applied as one batch, so a slow publish or a burst of
    pushes costs one generation, not one per message.
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
        ca_bundle: str | None = None,
        rejected_retry: float = 300.0,
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
        self._ca_bundle = ca_bundle
        self._rejected_retry = rejected_retry
        self._on_open = on_open  # called after every successful open (counters)
        self.connects = 0
        self.synced_sessions = 0  # connections that delivered data
        self._retry_after: float | None = None  # a handshake's Retry-After (429, 503), seconds
        self.skew_s: float | None = None  # host clock minus the server's Date, at the last handshake
        # The last attempt reached no server at all (no name, refused, no
        # answer): FeatBit is down or unreachable, not a proxy refusing
        # websockets. The auto mode uses it to return soon (AutoSource).
        self.unreachable = False

    def run(self, on_data: OnData, on_state: OnState, tick: Tick, stop: threading.Event, *, give_up_after: int | None = None) -> bool:
        """Connect, sync, reconnect, until ``stop``. With ``give_up_after``,
        return False once that many connections in a row brought no data
        (the ``auto`` data-sync mode then polls). A 4003 (R-18) sets OFF and
        is retried only every ``rejected_retry`` seconds (0: never, R-18)."""
        failures = 0
        while not stop.is_set():
            synced = self.synced_sessions
            try:
                self._session(on_data, on_state, tick, stop)
            except Terminal as exc:
                on_state(SyncState.OFF)
                if not self._rejected_retry:
                    log.error("featbit_shm: FeatBit rejected this client (%s): %s; close code 4003 is final, sync stops "
                              "(FEATBIT_REJECTED_RETRY_INTERVAL=0). Check the env secret and the host clock.", exc, clock_skew_text(self.skew_s))
                    return True
                log.error("featbit_shm: FeatBit rejected this client (%s): %s. A wrong or rotated env secret, or a host clock off "
                          "by more than the server's token window, is rejected; the state stays OFF and the connection is "
                          "retried every %.0f s, so a fixed clock or secret heals without a restart.",
                          exc, clock_skew_text(self.skew_s), self._rejected_retry)
                _wait(self._rejected_retry, tick, stop)
                continue
            if stop.is_set():
                return True
            failures = 0 if self.synced_sessions > synced else failures + 1
            if give_up_after is not None and failures >= give_up_after:
                return False
            on_state(SyncState.INTERRUPTED)
            delay = max(self._backoff.next_delay(), self._retry_after or 0.0)
            self._retry_after = None
            log.info("featbit_shm: reconnecting in %.1f s", delay)
            _wait(delay, tick, stop)
        return True

    def _session(self, on_data: OnData, on_state: OnState, tick: Tick, stop: threading.Event) -> None:
        """One connection: open, request data, read until it ends."""
        token = build_token(self._secret, self._clock_ms(), self._rand())
        REDACTOR.add(token)  # never logged, even when a server echoes it back
        url = streaming_url(self._base, token)
        # websocket-client validates UTF-8 in pure Python (5 s for a 5 MB
        # full sync); parse_frame decodes the bytes strictly in C instead,
        # and ignores a frame that is not UTF-8.
        ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True, sslopt={"ca_certs": self._ca_bundle} if self._ca_bundle else None)
        ws.settimeout(self._connect_timeout)
        unresolved = _resolve_within(url, OPERATION_DEADLINE_S, stop)
        if unresolved is not None:
            self.unreachable = True
            log.warning("featbit_shm: cannot connect to %s: %s", redact(url), unresolved)
            return
        dog = _Watchdog(ws, stop)
        try:
            with dog.deadline(OPERATION_DEADLINE_S):
                ws.connect(url, header=[f"User-Agent: {USER_AGENT}"])  # type: ignore[no-untyped-call]
        except (OSError, websocket.WebSocketException) as exc:
            dog.close()
            # An HTTP answer other than 101 (a proxy, a rate limit) is a server that answered.
            self.unreachable = isinstance(exc, OSError) and not isinstance(exc, websocket.WebSocketException)
            if isinstance(exc, websocket.WebSocketBadStatusException) and exc.resp_headers:
                # FeatBit's per-environment rate limit (429, 503): wait what it asks.
                self._retry_after = retry_after(exc.resp_headers.get("retry-after"), time.time())
            log.warning("featbit_shm: cannot connect to %s: %s", redact(url), "stopped" if stop.is_set() else exc)
            return
        self.connects += 1
        self.unreachable = False
        self.skew_s = _skew(ws)
        if self._on_open is not None:
            self._on_open()
        try:
            ws.send(data_sync_request(self._cursor()))
            ws.send(PING_FRAME)  # the barrier: its pong follows the data-sync reply (class docstring)
            # When we first asked for an answer that has not come (0.0: every one answered).
            requested = last_ping = awaiting = time.monotonic()
            held: list[DataSyncMessage] | None = []  # messages before the barrier; None once past it
            while not stop.is_set():
                tick()
                now = time.monotonic()
                if held is not None and now - requested > self._pong_timeout:
                    # No reply and pong in time: what arrived may be pushes
                    # only, newer than changes the reply would bring. Never
                    # apply them alone (the cursor would skip those changes);
                    # the next connection asks again.
                    log.warning("featbit_shm: FeatBit did not answer the data-sync request within %.1f s; reconnecting", self._pong_timeout)
                    return
                if now - last_ping >= self._ping_interval:
                    ws.send(PING_FRAME)  # the application ping, not a websocket ping
                    last_ping = now
                    awaiting = awaiting or now
                sock = ws.sock
                if sock is None:
                    return
                if not _readable(sock, 0.2):
                    # Judged only when nothing waits to be read, so time this
                    # process spent busy (a big publish) is never held against FeatBit.
                    if awaiting and time.monotonic() - awaiting > self._pong_timeout:
                        log.warning("featbit_shm: no answer from FeatBit for %.1f s (ping unanswered); reconnecting", self._pong_timeout)
                        return
                    continue
                # Everything already waiting is read as one batch (bounded in
                # count and time) and published as one generation.
                batch: list[DataSyncMessage] = []
                closed, code = False, None  # a close frame, and its status code if it had one
                failure: BaseException | None = None
                began = time.monotonic()
                for _ in range(MAX_BATCH):
                    try:
                        with dog.deadline(OPERATION_DEADLINE_S):
                            opcode, frame = ws.recv_data_frame(True)
                    except (OSError, websocket.WebSocketException, socket.timeout) as exc:
                        failure = exc
                        break
                    awaiting = 0.0  # anything at all proves the peer alive
                    if opcode == websocket.ABNF.OPCODE_CLOSE:
                        closed = True
                        code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
                        break
                    if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                        parsed = parse_frame(frame.data)
                        if isinstance(parsed, DataSyncMessage):
                            (held if held is not None else batch).append(parsed)
                        elif isinstance(parsed, Pong) and held is not None:
                            if not held:
                                # The server answers in order: a pong with no
                                # reply before it means the request was ignored.
                                failure = _Unanswered("FeatBit answered the ping but not the data-sync request")
                                break
                            batch[:0], held = held, None  # past the barrier: the reply is in
                        elif isinstance(parsed, Ignored):
                            log.warning("featbit_shm: ignored a message from FeatBit: %s", parsed.reason)
                    if time.monotonic() - began > MAX_BATCH_S or ws.sock is None or not _readable(ws.sock, 0):
                        break
                # Data that came before a close or a failure is good: keep it.
                # What is still held (before the barrier) is dropped with the
                # connection; the next one's cursor asks for it again.
                self._deliver(batch, on_data)
                if failure is not None:
                    raise failure
                if closed:
                    if close_is_terminal(code):
                        raise Terminal(f"close {code}")
                    log.warning("featbit_shm: server closed the stream (code %s); reconnecting", code)
                    return
        except _Unanswered as exc:
            log.warning("featbit_shm: %s; reconnecting", exc)
        except (OSError, websocket.WebSocketException, socket.timeout) as exc:
            # The server may have closed with a status before our write
            # failed: read it, so a 4003 is never mistaken for a drop.
            code = self._pending_close_code(ws)
            if close_is_terminal(code):
                raise Terminal(f"close {code}") from None
            log.warning("featbit_shm: stream dropped: %s", exc)
        finally:
            dog.close()
            try:
                ws.close(timeout=1)
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass

    def _deliver(self, messages: list[DataSyncMessage], on_data: OnData) -> None:
        if messages:
            on_data(messages)
            self.synced_sessions += 1
            self._backoff.reset()  # a good connection: start the schedule again

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


class PollingSource:
    """FeatBit's polling endpoint (``latest-all``), for hosts where a proxy
    blocks websockets, or as the ``auto`` mode's fallback.

    The rules FeatBit's SDK specification sets for polling: one request at a
    time (the next is scheduled after the previous ends); the cursor moves
    only with a valid response (the data version of what was applied); the
    state is OK only after a valid response, INTERRUPTED after a failure;
    ``Retry-After`` (429, 503) is honoured; an empty 200 means nothing
    changed. 401/403 set OFF (a wrong secret) and are retried every
    ``rejected_retry`` seconds, like a 4003.
    """

    def __init__(
        self,
        secret: str,
        base_url: str,
        cursor: Callable[[], int],
        *,
        interval: float = 10.0,
        ca_bundle: str | None = None,
        timeout: float = 10.0,
        rejected_retry: float = 300.0,
    ) -> None:
        self._secret = secret
        self._base = base_url
        self._cursor = cursor
        self.interval = interval
        self._context = ssl.create_default_context(cafile=ca_bundle or None)
        self._timeout = timeout
        self._rejected_retry = rejected_retry
        self._backoff = Backoff(first=1.0, cap=60.0)
        self.polls = 0
        self.failures = 0

    def poll(self) -> tuple[int | None, bytes, float | None]:
        """One request: (status or None for a network error, body, Retry-After seconds)."""
        request = urllib.request.Request(polling_url(self._base, self._cursor()), headers={"Authorization": self._secret, "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._context) as response:  # proxies: from the environment
                return response.status, response.read(), None
        except urllib.error.HTTPError as exc:
            wait = retry_after(exc.headers.get("Retry-After"), time.time()) if exc.headers else None
            return exc.code, b"", wait
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.warning("featbit_shm: polling %s failed: %s", request.full_url.split("?", 1)[0], exc)
            return None, b"", None

    def run(
        self,
        on_data: OnData,
        on_state: OnState,
        tick: Tick,
        stop: threading.Event,
        *,
        until: float | None = None,
        end_on_recovery: bool = False,
        failing: bool = False,
    ) -> None:
        """Poll until ``stop`` (or the monotonic time ``until``).

        With ``end_on_recovery``, also return right after the first valid
        answer that follows a failure (``failing``: the run starts after
        one): FeatBit is back after an outage, and the auto mode tries its
        websocket at once instead of polling until its next probe."""
        while not stop.is_set() and (until is None or time.monotonic() < until):
            status, body, wait = self.poll()
            self.polls += 1
            if status == 200:
                try:
                    messages = _polled_messages(body)
                except (ValueError, DataError) as exc:
                    self.failures += 1
                    failing = True
                    log.warning("featbit_shm: FeatBit's polling answer is not a data-sync document (%s); the cursor stays", exc)
                    on_state(SyncState.INTERRUPTED)
                    delay = self._backoff.next_delay()
                else:
                    on_data(messages)  # an empty list: nothing changed, still a valid answer (ready, OK)
                    self._backoff.reset()
                    delay = self.interval
                    if failing and end_on_recovery:
                        return
                    failing = False
            elif status in (401, 403):
                self.failures += 1
                failing = True
                on_state(SyncState.OFF)
                log.error("featbit_shm: FeatBit refused this client's polling (HTTP %s: a wrong or rotated env secret); "
                          "retrying every %.0f s", status, self._rejected_retry or self.interval)
                delay = self._rejected_retry or self.interval
            else:
                self.failures += 1
                failing = True
                on_state(SyncState.INTERRUPTED)
                delay = max(wait or 0.0, self._backoff.next_delay())
                if status is not None:
                    warn_limited("polling-status", f"featbit_shm: polling FeatBit answered HTTP {status}; retrying in {delay:.1f} s")
            limit = delay if until is None else min(delay, max(0.0, until - time.monotonic()))
            _wait(limit, tick, stop)


def _polled_messages(body: bytes) -> list[DataSyncMessage]:
    """The messages of one polling answer: none for an empty body."""
    if not body.strip():
        return []
    document = jsonstream.loads(body)  # a full sync's entity lists packed as they are read
    if isinstance(document, dict) and "messageType" in document:
        return [parse_envelope(document)]
    return [parse_data_sync(document)]


class AutoSource:
    """``FEATBIT_DATA_SYNC=auto``: the websocket while it works; after
    ``fallback_after`` connections in a row that brought no data, polling,
    with a websocket attempt every ``probe_interval`` seconds to return.

    An outage looks the same at first: a FeatBit restart of more than a few
    seconds refuses three websockets in a row. So when the fallback came
    from attempts that reached no server at all, the first poll that
    succeeds tries the websocket at once: a FeatBit that is back is
    streamed from again within a poll interval, not a probe interval. Only
    that first one: polls that flap between failure and success (a bad
    node behind a load balancer) never bring a websocket attempt per poll.
    """

    def __init__(self, stream: StreamSource, polling: PollingSource, *, fallback_after: int = 3, probe_interval: float = 60.0) -> None:
        self.stream = stream
        self.polling = polling
        self.fallback_after = fallback_after
        self.probe_interval = probe_interval
        self.mode = "streaming"
        self.switches = 0

    def run(self, on_data: OnData, on_state: OnState, tick: Tick, stop: threading.Event) -> None:
        def streamed(messages: list[DataSyncMessage]) -> None:
            if self.mode != "streaming":
                self.switches += 1
                log.info("featbit_shm: the websocket works again; streaming (polling stops)")
            self.mode = "streaming"
            on_data(messages)

        while not stop.is_set():
            # Streaming: give up after fallback_after empty attempts; a probe: after one.
            give_up = self.fallback_after if self.mode == "streaming" else 1
            if self.stream.run(streamed, on_state, tick, stop, give_up_after=give_up):
                return  # stopped (or a final 4003)
            # Falling back because no server answered: FeatBit is down, so
            # the first poll that succeeds means it is back. Not after a
            # probe, and not for a proxy's refusal: a websocket endpoint that
            # stays down, or flapping polls, would bring an attempt per poll.
            outage = self.mode == "streaming" and self.stream.unreachable
            if self.mode == "streaming":
                self.switches += 1
                log.warning("featbit_shm: websocket attempt(s) in a row brought no data; polling FeatBit every %.0f s "
                            "(a websocket is tried again every %.0f s, and as soon as FeatBit answers after an outage)",
                            self.polling.interval, self.probe_interval)
            self.mode = "polling"
            self.polling.run(
                on_data, on_state, tick, stop,
                until=time.monotonic() + self.probe_interval, end_on_recovery=outage, failing=outage,
            )


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
                    on_data([DataSyncMessage("full", flags, segments, [])])
            tick()
            stop.wait(self.interval)
