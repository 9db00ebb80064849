"""A FeatBit stand-in server that speaks the real wire protocol, for tests.

It serves what an SDK sees of a FeatBit evaluation server, on loopback:

* ``/streaming`` -- the data-sync websocket (RFC 6455, written here on the
  standard library). The connection token is validated like the server does
  (R-3, R-5): type, decodable token, known secret, and a 30 s clock window;
  any failure accepts the socket and closes it with 4003. ``data-sync``
  requests get ``full`` when the timestamp is 0, else a ``patch`` with every
  entity whose ``updatedAt`` is strictly greater (R-8); ``ping`` gets
  ``pong`` (R-9).
* ``POST /api/public/insight/track`` -- checks ``Authorization`` is the raw
  secret (401 otherwise), records every payload object.
* ``GET /api/public/sdk/server/latest-all?timestamp=<ms>`` -- polling, as
  FeatBit's evaluation server and Agent serve it: ``Authorization`` is the
  raw secret (401 otherwise); the data-sync envelope of what changed after
  the timestamp (a full at 0), or an empty 200 when nothing did.
  ``refuse_websockets`` makes the websocket endpoint answer 403 (a proxy
  that blocks websockets); ``fail_polling(*statuses, retry_after=)``
  answers the next polls with those statuses. Every handshake carries a
  ``Date`` header from the server's clock (``clock_offset_ms``).
* a control API, both as Python methods and as HTTP under ``/control/``:
  push flag and segment changes (broadcast as patches, R-8), drop or close
  connections with a code, go silent for a while (a stalled or black-holed
  connection), make the insight endpoint answer with given statuses (a
  number of requests, or for a period), shift the server clock, read
  received events and connection counts.

Every connection is served on its own thread, with HTTP/1.1 keep-alive, so
concurrent insight requests are answered concurrently (``stop()`` closes
them all).

The insight endpoint, for testing an event sender
--------------------------------------------------

Each insight POST is answered by the first rule that applies, in this order:

1. ``insight_max_body`` (bytes, default None: no limit) -- a larger body is
   answered 413 and the connection closed, as a proxy's body limit does
   (nginx ``client_max_body_size``); the request never reaches "FeatBit", so
   it consumes no scripted status;
2. ``Authorization`` is not the raw secret -- 401;
3. the statuses scripted by ``fail_insight(*statuses, retry_after=None)``
   (one per request, in order), then an outage set by
   ``fail_insight_for(seconds, status=500, retry_after=None)``. With
   ``retry_after`` (seconds; a str is sent verbatim, e.g. an HTTP date)
   those answers carry ``Retry-After``, as FeatBit's rate limiter answers
   429. FeatBit sends whole seconds; a fraction (``0.5``) is sent as such,
   a test convenience;
4. ``reject_insight(rule, status=400)`` -- a body containing ``rule`` (a
   marker str or bytes, e.g. a user key only one poisoned event carries), or
   for which ``rule(body)`` is true, is answered 400: one bad event fails its
   whole batch, as FeatBit's model validation does. ``reject_insight(None)``
   clears it;
5. a body that is not a JSON array -- 400;
6. otherwise 200, and the events are counted (and kept, unless
   ``keep_events`` is False: for long runs that only count).

``insight_delay`` (seconds, default 0) delays every answer, whatever its
status, on the request's own thread: concurrent requests wait concurrently,
so a sender that keeps N requests in flight gets N times the throughput of a
sequential one. The verdict is taken on arrival, the events are kept when
the answer goes out.

Counting is cheap (no JSON parsing on the request path: bodies are parsed
only when ``events`` is read; events are counted by their ``"user":`` keys,
exactly one per FeatBit insight event). ``insight_stats()`` returns an
:class:`InsightStats` since the start or the last ``reset_insight_stats()``:
requests, accepted requests, events accepted, requests in flight and the
most seen in flight at once, the TCP connections that carried them (few
connections for many requests: keep-alive works), and answers by status.
``events_received`` is ``insight_stats().events``.

The HTTP control API (``POST`` with a JSON body unless noted):

=============================  ==============================================
``/control/flag``, ``segment``  a wire entity: stored and pushed as a patch
``/control/drop``               drop every websocket, no close frame
``/control/close``              ``{"code": 1000}``: close every websocket
``/control/silence``            ``{"seconds": 2, "lose": false}``
``/control/clock``              ``{"offset_ms": 31000}``
``/control/insight-fail``       ``{"statuses": [429], "seconds": 5,
                                "status": 503, "retry_after": 2}`` (each key
                                optional)
``/control/insight``            ``{"delay": 0.1, "max_body": 65536,
                                "reject": "POISON", "reject_status": 400,
                                "keep_events": true}``: set the knobs given
                                (null clears ``max_body`` / ``reject``);
                                answers the knobs and the stats
``GET /control/insight``        the knobs and the stats
``/control/insight-reset``      zero the stats; answers them as they were
``GET /control/state``          connection counts, events, the stats
``GET /control/events``         every event received
=============================  ==============================================

Use it in your own tests::

    from featbit_shm.testing.server import FeatBitStandIn
    from featbit_shm.testing import builders as b

    with FeatBitStandIn(flags=[b.flag("new-ui")]) as server:
        config = Config(server.secret, server.event_url, server.streaming_url)
        ...
        server.update_flag(b.flag("new-ui", enabled=False, updated_at=server.now_ms()))

Run it standalone: ``python -m featbit_shm.testing.server --port 5100 --flags flags.json``,
with the insight knobs as options (``--help``): ``--insight-delay 0.1
--insight-max-body 65536 --insight-reject POISON --insight-fail 429
--insight-fail-for 5 --insight-fail-status 503 --retry-after 2
--no-keep-events --stats-interval 1``. It prints the insight stats every
``--stats-interval`` seconds and when it stops (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import http
import json
import re
import signal
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Union
from urllib.parse import parse_qs, urlsplit

from .._core.protocol import decode_token
from .._core.wire import WireError, parse_version

DEFAULT_SECRET = "Zm9vYmFyLWZlYXRiaXQtc2htLXN0YW5kLWluLTAwMDAw"  # 44 chars, like a real one
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TOKEN_WINDOW_MS = 30_000
INSIGHT_PATH = "/api/public/insight/track"
POLLING_PATH = "/api/public/sdk/server/latest-all"
# One per FeatBit insight event: "user" is a key only at the top of an event
# (inside JSON strings a quote is escaped, so a value cannot fake it).
_EVENT_KEY = re.compile(rb'"user"\s*:')

RetryAfter = Union[float, str, None]
RejectRule = Union[str, bytes, Callable[[bytes], bool], None]


@dataclass(frozen=True)
class InsightStats:
    """What the insight endpoint saw, since the start or the last reset."""

    requests: int = 0  # insight POSTs received, whatever their answer
    accepted: int = 0  # of them answered 200
    events: int = 0  # payload objects in the accepted bodies
    in_flight: int = 0  # being answered now
    max_in_flight: int = 0  # the most answered at once
    connections: int = 0  # TCP connections that carried at least one of them
    statuses: dict[int, int] = field(default_factory=dict)  # answers by status

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


def retry_after_value(value: RetryAfter) -> str | None:
    """The ``Retry-After`` header text for ``value``: whole seconds as an
    integer (what FeatBit sends), a fraction as a decimal, a str verbatim."""
    if value is None or isinstance(value, str):
        return value
    seconds = float(value)
    if seconds < 0:
        raise ValueError("retry_after must not be negative")
    return str(int(seconds)) if seconds.is_integer() else f"{seconds:g}"


def _containing(marker: bytes) -> Callable[[bytes], bool]:
    def contains(body: bytes) -> bool:
        return marker in body

    return contains


class _Closed(Exception):
    pass


class Connection:
    """One websocket client of the stand-in."""

    def __init__(self, sock: socket.socket, server: FeatBitStandIn) -> None:
        self.sock = sock
        self.server = server
        self.send_lock = threading.Lock()
        self.open = True
        self.synced = False  # answered at least one data-sync request
        self.messages: list[Any] = []
        self._held: list[bytes] = []  # frames written while the server was silent

    # framing ----------------------------------------------------------------

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise _Closed()
            buf += chunk
        return buf

    def read_message(self) -> tuple[int, bytes]:
        """One whole message (fragments reassembled, R-10)."""
        opcode = 0
        payload = b""
        while True:
            b0, b1 = self._recv_exact(2)
            fin, op = b0 & 0x80, b0 & 0x0F
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._recv_exact(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if b1 & 0x80 else b""
            data = self._recv_exact(length)
            if mask:
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
            if op >= 8:  # control frames may arrive between fragments
                if op == 9:
                    self.send_frame(10, data)
                    continue
                if op == 10:
                    continue
                return op, data
            if op != 0:
                opcode = op
            payload += data
            if fin:
                return opcode, payload

    def send_frame(self, opcode: int, data: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(data)
        if n < 126:
            header += bytes([n])
        elif n < 65536:
            header += bytes([126]) + struct.pack("!H", n)
        else:
            header += bytes([127]) + struct.pack("!Q", n)
        with self.send_lock:
            silence = self.server._silence
            if silence is not None and time.monotonic() < silence[0]:
                if not silence[1]:  # a stall: TCP delivers it once the path is back
                    self._held.append(header + data)
                return  # lost: a black hole
            if self._held:
                self._release_held()
            self.sock.sendall(header + data)

    def flush_held(self) -> None:
        """Send what a stall held back, in order (the end of a silence)."""
        with self.send_lock:
            if self._held:
                self._release_held()

    def _release_held(self) -> None:
        # Called with send_lock held.
        held, self._held = self._held, []
        self.sock.sendall(b"".join(held))

    def send_json(self, obj: Any) -> None:
        if self.open:
            self.send_frame(1, json.dumps(obj).encode())

    def close(self, code: int = 1000, reason: str = "", *, linger: float = 1.0) -> None:
        """A clean close with a status code (1000, 1011, 4003...): send the
        close frame, give the client ``linger`` seconds to answer, then shut."""
        if not self.open:
            return
        self.open = False
        try:
            self.send_frame(8, struct.pack("!H", code) + reason.encode()[:120])
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if linger:
            threading.Timer(linger, self._shutdown).start()
        else:
            self._shutdown()

    def await_close(self, timeout: float = 1.0) -> None:
        """Read until the client answers our close frame (or EOF, or timeout),
        so its last writes do not meet a reset socket (a real server does the
        same close handshake)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                opcode, _data = self.read_message()
                if opcode == 8:
                    return
        except (_Closed, OSError):
            return

    def drop(self) -> None:
        """An abrupt drop: no close frame (R-17)."""
        self.open = False
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Reply(NamedTuple):
    status: int
    payload: Any = None  # JSON, or None for an empty body
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # close the connection after this answer


class _Peer:
    """One HTTP connection's state, for the stats."""

    __slots__ = ("stats_epoch",)

    def __init__(self) -> None:
        self.stats_epoch = -1  # the stats epoch it was last counted in


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        standin = self.server.standin
        sock: socket.socket = self.request
        sock.settimeout(None)
        # Like a real server: without TCP_NODELAY, Nagle holds a small push
        # until the client's delayed ACK of the previous one (~40 ms stalls).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = _Peer()
        if not standin._track(sock):
            return  # the stand-in is stopping
        try:
            buffered = b""
            while True:  # HTTP/1.1 keep-alive: one request after another
                while b"\r\n\r\n" not in buffered:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffered += chunk
                    if len(buffered) > 1 << 20:
                        return
                header_blob, _, rest = buffered.partition(b"\r\n\r\n")
                lines = header_blob.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
                }
                if headers.get("upgrade", "").lower() == "websocket":
                    standin._serve_websocket(sock, target, headers)
                    return
                length = int(headers.get("content-length", "0") or 0)
                parts = [rest]
                have = len(rest)
                while have < length:
                    chunk = sock.recv(min(length - have, 1 << 20))
                    if not chunk:
                        return
                    parts.append(chunk)
                    have += len(chunk)
                rest = b"".join(parts) if len(parts) > 1 else rest
                body, buffered = rest[:length], rest[length:]
                reply = standin._serve_http(method, target, headers, body, peer)
                data = json.dumps(reply.payload).encode() if reply.payload is not None else b""
                close = reply.close or headers.get("connection", "").lower() == "close"
                extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
                sock.sendall(
                    f"HTTP/1.1 {reply.status} {_reason(reply.status)}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    f"{extra}Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + data
                )
                if close:
                    return
        except (OSError, ValueError):
            return
        finally:
            standin._untrack(sock)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # A burst of new connections (a sender opening N at once) must not
    # overflow the listen backlog (5 by default): a dropped SYN costs 1 s.
    request_queue_size = 128
    standin: FeatBitStandIn


class FeatBitStandIn:
    """The stand-in server. Start it with ``with`` or :meth:`start`."""

    def __init__(
        self,
        *,
        secret: str = DEFAULT_SECRET,
        flags: Iterable[Mapping[str, Any]] = (),
        segments: Iterable[Mapping[str, Any]] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        insight_delay: float = 0.0,
        insight_max_body: int | None = None,
        keep_events: bool = True,
    ) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self._flags: dict[str, dict[str, Any]] = {f["key"]: dict(f) for f in flags}
        self._segments: dict[str, dict[str, Any]] = {s["id"]: dict(s) for s in segments}
        self._connections: list[Connection] = []
        self._insight_statuses: list[tuple[int, str | None]] = []  # (status, Retry-After)
        self._events: list[dict[str, Any]] = []
        self._bodies: list[bytes] = []  # received, parsed on demand (keeps the request path cheap)
        self._parse_lock = threading.Lock()
        self.insight_requests: list[dict[str, Any]] = []
        self.connections_accepted = 0
        self.connections_rejected = 0
        self.clock_offset_ms = 0
        self.silent = False  # when True, data-sync and ping get no answer
        self.ignore_data_sync = False  # when True, pings are answered and data-sync requests are not
        # True: the websocket endpoint answers 403 (websockets blocked); a status (e.g. 429): that status.
        self.refuse_websockets: bool | int = False
        self.websocket_retry_after: float | None = None  # sent with a refused handshake
        self.websockets_refused = 0
        self.polls = 0  # latest-all requests answered 200
        self._poll_statuses: list[tuple[int, float | None]] = []
        # A slow server: seconds to wait before answering a data-sync request
        # (pushes to other threads' changes still go out meanwhile).
        self.reply_delay = 0.0
        # (until, lose): while monotonic() < until nothing is sent on any
        # websocket; held and sent afterwards, or lost when ``lose``.
        self._silence: tuple[float, bool] | None = None
        self._insight_fail_until = 0.0
        self._insight_fail_status = 500
        self._insight_fail_retry_after: str | None = None
        # The insight knobs (module docstring): answer after this many
        # seconds; answer 413 to a larger body; keep accepted bodies.
        self.insight_delay = insight_delay
        self.insight_max_body = insight_max_body
        self.keep_events = keep_events
        self._reject: Callable[[bytes], bool] | None = None
        self._reject_label: str | None = None
        self._reject_status = 400
        self._stats_lock = threading.Lock()
        self._stats_epoch = 0
        self._requests = self._accepted = self._events_received = 0
        self._in_flight = self._max_in_flight = self._insight_connections = 0
        self._statuses: dict[int, int] = {}
        self._sockets: set[socket.socket] = set()  # every connection, closed by stop()
        self._stopping = False
        self._tcp = _TCPServer((host, port), _Handler, bind_and_activate=True)
        self._tcp.standin = self
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._tcp.server_address[1])

    @property
    def streaming_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def event_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FeatBitStandIn:
        # A short poll interval: stop() returns within 50 ms instead of 0.5 s.
        self._thread = threading.Thread(
            target=self._tcp.serve_forever, args=(0.05,), name="featbit-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection (a keep-alive client
        then finds its connection closed, as when a real server goes away)."""
        self._tcp.shutdown()
        self._tcp.server_close()
        for conn in self.connections():
            conn.drop()
        with self._lock:
            self._stopping = True
            socks = list(self._sockets)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping:
                return False
            self._sockets.add(sock)
            return True

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def __enter__(self) -> FeatBitStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def now_ms(self) -> int:
        """The server's clock (shifted by ``clock_offset_ms``)."""
        return int(time.time() * 1000) + self.clock_offset_ms

    # control API -------------------------------------------------------------

    def connections(self) -> list[Connection]:
        with self._lock:
            return [c for c in self._connections if c.open]

    @property
    def open_connections(self) -> int:
        return len(self.connections())

    def update_flag(self, flag: Mapping[str, Any]) -> None:
        """Store a flag (give it a newer ``updatedAt``) and push it as a patch."""
        with self._lock:
            self._flags[flag["key"]] = dict(flag)
        self._broadcast({"eventType": "patch", "featureFlags": [dict(flag)], "segments": []})

    def update_segment(self, segment: Mapping[str, Any]) -> None:
        with self._lock:
            self._segments[segment["id"]] = dict(segment)
        self._broadcast({"eventType": "patch", "featureFlags": [], "segments": [dict(segment)]})

    def set_data(
        self, flags: Iterable[Mapping[str, Any]], segments: Iterable[Mapping[str, Any]] = (), *, push: bool = False
    ) -> None:
        """Replace the whole data set; with ``push`` send it to clients as a full."""
        with self._lock:
            self._flags = {f["key"]: dict(f) for f in flags}
            self._segments = {s["id"]: dict(s) for s in segments}
        if push:
            self._broadcast(self._payload(0) | {"eventType": "full"})

    def send_raw(self, text: str) -> None:
        """Send a raw text frame to every client (invalid JSON, unknown types...)."""
        for conn in self.connections():
            try:
                conn.send_frame(1, text.encode())
            except OSError:
                conn.drop()

    def drop_connections(self) -> int:
        conns = self.connections()
        for conn in conns:
            conn.drop()
        return len(conns)

    def close_connections(self, code: int = 1000, reason: str = "") -> int:
        conns = self.connections()
        for conn in conns:
            conn.close(code, reason)
        return len(conns)

    def fail_insight(self, *statuses: int, retry_after: RetryAfter = None) -> None:
        """Answer the next insight requests with these statuses, in order;
        with ``retry_after`` (seconds, or a str sent verbatim) each of those
        answers carries ``Retry-After`` (FeatBit's rate limiter: 429 + Retry-After)."""
        header = retry_after_value(retry_after)
        with self._lock:
            self._insight_statuses.extend((status, header) for status in statuses)

    def fail_insight_for(self, seconds: float, status: int = 500, *, retry_after: RetryAfter = None) -> None:
        """Answer every insight request with ``status`` for ``seconds`` (an
        outage; 0 ends one), with ``Retry-After`` when ``retry_after`` is given."""
        header = retry_after_value(retry_after)
        with self._lock:
            self._insight_fail_status = status
            self._insight_fail_retry_after = header
            self._insight_fail_until = time.monotonic() + seconds

    def reject_insight(self, rule: RejectRule, *, status: int = 400) -> None:
        """Answer ``status`` (400: FeatBit's validation) to every insight body
        that contains ``rule`` (a marker str or bytes) or for which
        ``rule(body)`` is true: one poisoned event fails its whole batch.
        ``None`` accepts every body again."""
        check: Callable[[bytes], bool] | None
        if rule is None:
            check, label = None, None
        elif isinstance(rule, (str, bytes)):
            marker = rule.encode() if isinstance(rule, str) else rule
            if not marker:
                raise ValueError("an empty marker would reject every body")
            check, label = _containing(marker), marker.decode("utf-8", "replace")
        else:
            check, label = rule, getattr(rule, "__name__", "<predicate>")
        with self._lock:
            self._reject, self._reject_label, self._reject_status = check, label, status

    def insight_stats(self) -> InsightStats:
        """Counts of the insight endpoint since the start or the last reset."""
        with self._stats_lock:
            return self._stats_snapshot()

    def reset_insight_stats(self) -> InsightStats:
        """Zero the counts (requests still in flight stay counted as in
        flight, and the maximum starts from them); returns them as they were."""
        with self._stats_lock:
            before = self._stats_snapshot()
            self._stats_epoch += 1
            self._requests = self._accepted = self._events_received = self._insight_connections = 0
            self._max_in_flight = self._in_flight
            self._statuses = {}
            return before

    def _stats_snapshot(self) -> InsightStats:
        # Called with _stats_lock held.
        return InsightStats(
            requests=self._requests,
            accepted=self._accepted,
            events=self._events_received,
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight,
            connections=self._insight_connections,
            statuses=dict(self._statuses),
        )

    @property
    def events_received(self) -> int:
        """Events in the bodies answered 200 (since the last stats reset)."""
        return self._events_received

    def insight_settings(self) -> dict[str, Any]:
        """The insight knobs, as the control API shows them."""
        with self._lock:
            return {
                "delay": self.insight_delay,
                "max_body": self.insight_max_body,
                "reject": self._reject_label,
                "reject_status": self._reject_status,
                "keep_events": self.keep_events,
                "scripted_statuses": [status for status, _header in self._insight_statuses],
                "failing_for_s": max(0.0, round(self._insight_fail_until - time.monotonic(), 3)),
            }

    def silence(self, seconds: float, *, lose: bool = False) -> None:
        """Send nothing on any open websocket for ``seconds``: no pong, no
        data-sync reply, no push, not even a websocket pong. The stand-in still
        reads what clients send.

        By default this is a stall (a network path that stops and comes back):
        what would have been sent is held and sent, in order, when the silence
        ends. With ``lose`` it is a black hole (a peer or middlebox that died
        while the socket looks open): what would have been sent is lost, and
        only a client that notices the silence and reconnects catches up.
        Connections opened during the silence are silent too.
        """
        until = time.monotonic() + seconds
        self._silence = (until, lose)
        if not lose:
            timer = threading.Timer(seconds, self._end_silence, args=(until,))
            timer.daemon = True
            timer.start()

    def _end_silence(self, until: float) -> None:
        if self._silence is not None and self._silence[0] == until:
            self._silence = None
        for conn in self.connections():
            try:
                conn.flush_held()
            except OSError:
                conn.drop()

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every payload object received at the insight endpoint, in order.

        Request bodies are stored as received and parsed here, on demand, so
        the stand-in's request path stays cheap under load; a body that is
        not a JSON array counts as no events.
        """
        with self._parse_lock:  # one parser at a time keeps the order
            self._parse_pending()
            return list(self._events)

    def take_events(self) -> list[dict[str, Any]]:
        """The events received since the last call, removed from the stand-in
        (``events`` no longer lists them): for long runs that count events as
        they arrive instead of keeping them all."""
        with self._parse_lock:
            self._parse_pending()
            taken, self._events = self._events, []
            return taken

    def _parse_pending(self) -> None:
        # Called with _parse_lock held.
        with self._lock:
            bodies, self._bodies = self._bodies, []
        for body in bodies:
            try:
                payload = json.loads(body)
            except ValueError:
                continue
            if isinstance(payload, list):
                self._events.extend(payload)

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.005)
        return bool(predicate())

    # protocol ------------------------------------------------------------------

    def _broadcast(self, data: dict[str, Any]) -> None:
        for conn in self.connections():
            try:
                conn.send_json({"messageType": "data-sync", "data": data})
            except OSError:
                conn.drop()

    def _payload(self, timestamp: int) -> dict[str, Any]:
        def newer(entity: Mapping[str, Any]) -> bool:
            try:
                return parse_version(entity.get("updatedAt")) > timestamp
            except WireError:
                return True

        with self._lock:
            if timestamp == 0:
                return {
                    "eventType": "full",
                    "featureFlags": list(self._flags.values()),
                    "segments": list(self._segments.values()),
                }
            return {
                "eventType": "patch",
                "featureFlags": [f for f in self._flags.values() if newer(f)],
                "segments": [s for s in self._segments.values() if newer(s)],
            }

    def _token_ok(self, query: Mapping[str, list[str]]) -> bool:
        if query.get("type", [""])[0] != "server":
            return False
        token = query.get("token", [""])[0]
        try:
            secret, stamp = decode_token(token)
        except ValueError:
            return False
        return (
            len(secret) == 44
            and secret.rstrip("=") == self.secret.rstrip("=")
            and abs(self.now_ms() - stamp) <= TOKEN_WINDOW_MS
        )

    def _serve_websocket(self, sock: socket.socket, target: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(target)
        if not parts.path.startswith("/streaming"):
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        if self.refuse_websockets:
            status = 403 if self.refuse_websockets is True else int(self.refuse_websockets)
            wait = f"Retry-After: {self.websocket_retry_after:g}\r\n" if self.websocket_retry_after is not None else ""
            sock.sendall(f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Length: 0\r\n{wait}Connection: close\r\n\r\n".encode())
            with self._lock:
                self.websockets_refused += 1
            return
        key = headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        date = email.utils.formatdate(self.now_ms() / 1000, usegmt=True)
        sock.sendall(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nDate: {date}\r\n\r\n".encode()
        )
        conn = Connection(sock, self)
        if not self._token_ok(parse_qs(parts.query)):
            # accept, then close with 4003.
            with self._lock:
                self.connections_rejected += 1
            conn.close(4003, "invalid request, close by server")
            conn.await_close()
            return
        with self._lock:
            self.connections_accepted += 1
            self._connections.append(conn)
        try:
            while conn.open:
                opcode, data = conn.read_message()
                if opcode == 8:
                    conn.close(1000)
                    break
                if opcode != 1:
                    continue
                self._on_message(conn, data)
        except (_Closed, OSError):
            pass
        finally:
            conn.open = False
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            try:
                sock.close()
            except OSError:
                pass

    def _on_message(self, conn: Connection, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return  # [SRV] invalid client messages are ignored
        if not isinstance(message, dict) or "messageType" not in message or "data" not in message:
            return
        conn.messages.append(message)
        if self.silent:
            return
        kind = message["messageType"]
        if kind == "ping":
            conn.send_json({"messageType": "pong", "data": {}})
        elif kind == "data-sync" and not self.ignore_data_sync:
            if self.reply_delay:
                time.sleep(self.reply_delay)
            body = message.get("data") or {}
            timestamp = body.get("timestamp") if isinstance(body, dict) else None
            conn.send_json({"messageType": "data-sync", "data": self._payload(int(timestamp or 0))})
            conn.synced = True

    def _serve_http(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, peer: _Peer | None = None
    ) -> _Reply:
        path = urlsplit(target).path
        if path.endswith(INSIGHT_PATH) and method == "POST":
            return self._serve_insight(headers, body, peer or _Peer())
        if path.endswith(POLLING_PATH) and method == "GET":
            return self._serve_polling(target, headers)
        status, payload = self._serve_control(method, path, body)
        return _Reply(status, payload)

    def fail_polling(self, *statuses: int, retry_after: float | None = None) -> None:
        """Answer the next polls with these statuses (with a Retry-After when given)."""
        with self._lock:
            self._poll_statuses.extend((status, retry_after) for status in statuses)

    def _serve_polling(self, target: str, headers: Mapping[str, str]) -> _Reply:
        if headers.get("authorization") != self.secret:
            return _Reply(401)
        with self._lock:
            failure = self._poll_statuses.pop(0) if self._poll_statuses else None
        if failure is not None:
            status, wait = failure
            return _Reply(status, headers=(("Retry-After", f"{wait:g}"),) if wait is not None else ())
        try:
            timestamp = int(parse_qs(urlsplit(target).query).get("timestamp", ["0"])[0])
        except ValueError:
            return _Reply(400, {"error": "timestamp is not a number"})
        payload = self._payload(timestamp)
        with self._lock:
            self.polls += 1
        if payload["eventType"] == "patch" and not payload["featureFlags"] and not payload["segments"]:
            return _Reply(200)  # nothing changed: an empty 200
        return _Reply(200, {"messageType": "data-sync", "data": payload})

    def _serve_insight(self, headers: Mapping[str, str], body: bytes, peer: _Peer) -> _Reply:
        arrived = time.time()
        with self._stats_lock:
            self._requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if peer.stats_epoch != self._stats_epoch:
                peer.stats_epoch = self._stats_epoch
                self._insight_connections += 1
        status = 500
        try:
            status, retry_after = self._insight_verdict(headers, body)
            if self.insight_delay > 0:
                time.sleep(self.insight_delay)  # this request's thread only
            events = 0
            if status == 200:
                events = len(_EVENT_KEY.findall(body))
                if self.keep_events:
                    with self._lock:
                        self._bodies.append(body)
            record = {
                "authorization": headers.get("authorization"),
                "content_type": headers.get("content-type"),
                "user_agent": headers.get("user-agent"),
                "time": arrived,
                "status": status,
                "bytes": len(body),
            }
            if retry_after is not None:
                record["retry_after"] = retry_after
            self.insight_requests.append(record)
            with self._stats_lock:
                if status == 200:
                    self._accepted += 1
                    self._events_received += events
            return _Reply(
                status, None, (("Retry-After", retry_after),) if retry_after is not None else (), close=status == 413
            )
        finally:
            with self._stats_lock:
                self._in_flight -= 1
                self._statuses[status] = self._statuses.get(status, 0) + 1

    def _insight_verdict(self, headers: Mapping[str, str], body: bytes) -> tuple[int, str | None]:
        """(status, Retry-After) for one insight request, in the order of the
        module docstring."""
        limit = self.insight_max_body
        if limit is not None and len(body) > limit:
            return 413, None  # a proxy in front: FeatBit never sees it
        if headers.get("authorization") != self.secret:
            return 401, None
        with self._lock:
            if self._insight_statuses:
                return self._insight_statuses.pop(0)
            if time.monotonic() < self._insight_fail_until:
                return self._insight_fail_status, self._insight_fail_retry_after
            reject, reject_status = self._reject, self._reject_status
        if reject is not None and reject(body):
            return reject_status, None
        if not body.lstrip().startswith(b"["):
            return 400, None
        return 200, None

    def _serve_control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/control/state" and method == "GET":
            return 200, {
                "open_connections": self.open_connections,
                "connections_accepted": self.connections_accepted,
                "connections_rejected": self.connections_rejected,
                "events": len(self.events),
                "insight": self.insight_stats().to_json(),
            }
        if path == "/control/events" and method == "GET":
            return 200, self.events
        if path == "/control/insight" and method == "GET":
            return 200, self.insight_settings() | {"stats": self.insight_stats().to_json()}
        if method == "POST" and path.startswith("/control/"):
            try:
                arg = json.loads(body) if body else {}
            except ValueError:
                return 400, {"error": "body is not JSON"}
            action = path[len("/control/") :]
            try:
                return self._control_action(action, arg)
            except (TypeError, ValueError, AttributeError) as exc:
                return 400, {"error": f"bad argument for {action!r}: {exc}"}
        return 404, None

    def _control_action(self, action: str, arg: Any) -> tuple[int, Any]:
        if action == "flag":
            self.update_flag(arg)
        elif action == "segment":
            self.update_segment(arg)
        elif action == "drop":
            return 200, {"dropped": self.drop_connections()}
        elif action == "close":
            return 200, {"closed": self.close_connections(int(arg.get("code", 1000)))}
        elif action == "insight-fail":
            retry_after = arg.get("retry_after")
            if "seconds" in arg:
                self.fail_insight_for(float(arg["seconds"]), int(arg.get("status", 500)), retry_after=retry_after)
            self.fail_insight(*[int(s) for s in arg.get("statuses", [])], retry_after=retry_after)
        elif action == "insight":
            self._set_insight_knobs(arg)
            return 200, self.insight_settings() | {"stats": self.insight_stats().to_json()}
        elif action == "insight-reset":
            return 200, self.reset_insight_stats().to_json()
        elif action == "silence":
            self.silence(float(arg.get("seconds", 2.0)), lose=bool(arg.get("lose", False)))
        elif action == "clock":
            self.clock_offset_ms = int(arg.get("offset_ms", 0))
        elif action == "websockets":
            self.refuse_websockets = not bool(arg.get("allow", True))
        else:
            return 404, {"error": f"unknown control action {action!r}"}
        return 200, {"ok": True}

    def _set_insight_knobs(self, arg: Mapping[str, Any]) -> None:
        unknown = set(arg) - {"delay", "max_body", "reject", "reject_status", "keep_events"}
        if unknown:
            raise ValueError(f"unknown insight knob(s) {sorted(unknown)}")
        if "delay" in arg:
            delay = float(arg["delay"])
            if delay < 0:
                raise ValueError("delay must not be negative")
            self.insight_delay = delay
        if "max_body" in arg:
            self.insight_max_body = None if arg["max_body"] is None else int(arg["max_body"])
        status = int(arg.get("reject_status", self._reject_status))
        if "reject" in arg:
            marker = arg["reject"]
            if marker is not None and not isinstance(marker, str):
                raise ValueError("reject is a marker string or null")
            self.reject_insight(marker, status=status)
        else:
            with self._lock:
                self._reject_status = status
        if "keep_events" in arg:
            self.keep_events = bool(arg["keep_events"])


def _stats_line(server: FeatBitStandIn) -> str:
    stats = server.insight_stats()
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(stats.statuses.items())) or "none"
    return (
        f"insight: {stats.requests} requests ({statuses}), {stats.events} events accepted, "
        f"max {stats.max_in_flight} in flight, {stats.connections} connections"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="FeatBit stand-in server (loopback only); the insight knobs are described in the module docstring"
    )
    parser.add_argument("--port", type=int, default=5100)
    parser.add_argument("--secret", default=DEFAULT_SECRET)
    parser.add_argument("--flags", help="a data-sync JSON file to serve")
    insight = parser.add_argument_group("insight endpoint")
    insight.add_argument(
        "--insight-delay", type=float, default=0.0, metavar="SECONDS", help="answer every insight POST after this delay"
    )
    insight.add_argument(
        "--insight-max-body", type=int, metavar="BYTES", help="answer 413 to a larger body (a proxy's limit)"
    )
    insight.add_argument("--insight-reject", metavar="MARKER", help="answer 400 to any body that contains MARKER")
    insight.add_argument(
        "--insight-reject-status", type=int, default=400, metavar="STATUS", help="the status of --insight-reject (400)"
    )
    insight.add_argument(
        "--insight-fail",
        type=int,
        action="append",
        default=[],
        metavar="STATUS",
        help="answer the next insight request with STATUS (repeat: in order)",
    )
    insight.add_argument(
        "--insight-fail-for",
        type=float,
        metavar="SECONDS",
        help="answer every insight request with --insight-fail-status for SECONDS from the start",
    )
    insight.add_argument(
        "--insight-fail-status", type=int, default=500, metavar="STATUS", help="the status of --insight-fail-for (500)"
    )
    insight.add_argument(
        "--retry-after",
        metavar="SECONDS",
        help="send Retry-After with the --insight-fail and --insight-fail-for answers",
    )
    insight.add_argument(
        "--no-keep-events",
        dest="keep_events",
        action="store_false",
        help="count events without keeping them (long runs)",
    )
    insight.add_argument(
        "--stats-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print the insight stats this often (0: only when stopping)",
    )
    args = parser.parse_args(argv)
    flags: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    if args.flags:
        with open(args.flags) as fh:
            doc = json.load(fh)
        flags, segments = doc["data"]["featureFlags"], doc["data"]["segments"]
    retry_after: RetryAfter = None
    if args.retry_after is not None:
        try:
            retry_after = float(args.retry_after)
        except ValueError:
            retry_after = args.retry_after  # e.g. an HTTP date, sent verbatim
    server = FeatBitStandIn(
        secret=args.secret,
        flags=flags,
        segments=segments,
        port=args.port,
        insight_delay=args.insight_delay,
        insight_max_body=args.insight_max_body,
        keep_events=args.keep_events,
    )
    if args.insight_reject:
        server.reject_insight(args.insight_reject, status=args.insight_reject_status)
    if args.insight_fail:
        server.fail_insight(*args.insight_fail, retry_after=retry_after)
    if args.insight_fail_for:
        server.fail_insight_for(args.insight_fail_for, args.insight_fail_status, retry_after=retry_after)
    server.start()
    print(f"stand-in: streaming {server.streaming_url}  events {server.event_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    try:
        while not stop.wait(args.stats_interval or 3600):
            if args.stats_interval:
                print(_stats_line(server), flush=True)
    except KeyboardInterrupt:
        pass
    server.stop()
    print(_stats_line(server), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
