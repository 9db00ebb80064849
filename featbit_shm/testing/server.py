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
* a control API, both as Python methods and as HTTP under ``/control/``:
  push flag and segment changes (broadcast as patches, R-8), drop or close
  connections with a code, go silent for a while (a stalled or black-holed
  connection), make the insight endpoint answer with given statuses (a
  number of requests, or for a period), shift the server clock, read
  received events and connection counts.

Use it in your own tests::

    from featbit_shm.testing.server import FeatBitStandIn
    from featbit_shm.testing import builders as b

    with FeatBitStandIn(flags=[b.flag("new-ui")]) as server:
        config = Config(server.secret, server.event_url, server.streaming_url)
        ...
        server.update_flag(b.flag("new-ui", enabled=False, updated_at=server.now_ms()))

Run it standalone: ``python -m featbit_shm.testing.server --port 5100 --flags flags.json``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .._core.protocol import decode_token
from .._core.wire import WireError, parse_version

DEFAULT_SECRET = "Zm9vYmFyLWZlYXRiaXQtc2htLXN0YW5kLWluLTAwMDAw"  # 44 chars, like a real one
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TOKEN_WINDOW_MS = 30_000


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


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        standin = self.server.standin
        sock: socket.socket = self.request
        sock.settimeout(None)
        # Like a real server: without TCP_NODELAY, Nagle holds a small push
        # until the client's delayed ACK of the previous one (~40 ms stalls).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
                if headers.get("upgrade", "").lower() == "websocket":
                    standin._serve_websocket(sock, target, headers)
                    return
                length = int(headers.get("content-length", "0") or 0)
                while len(rest) < length:
                    chunk = sock.recv(length - len(rest))
                    if not chunk:
                        return
                    rest += chunk
                body, buffered = rest[:length], rest[length:]
                status, payload = standin._serve_http(method, target, headers, body)
                data = json.dumps(payload).encode() if payload is not None else b""
                close = headers.get("connection", "").lower() == "close"
                reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}.get(status, "Status")
                sock.sendall(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + data
                )
                if close:
                    return
        except (OSError, ValueError):
            return


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
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
    ) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self._flags: dict[str, dict[str, Any]] = {f["key"]: dict(f) for f in flags}
        self._segments: dict[str, dict[str, Any]] = {s["id"]: dict(s) for s in segments}
        self._connections: list[Connection] = []
        self._insight_statuses: list[int] = []
        self._events: list[dict[str, Any]] = []
        self._bodies: list[bytes] = []  # received, parsed on demand (keeps the request path cheap)
        self._parse_lock = threading.Lock()
        self.insight_requests: list[dict[str, Any]] = []
        self.connections_accepted = 0
        self.connections_rejected = 0
        self.clock_offset_ms = 0
        self.silent = False  # when True, data-sync and ping get no answer
        self.ignore_data_sync = False  # when True, pings are answered and data-sync requests are not
        # A slow server: seconds to wait before answering a data-sync request
        # (pushes to other threads' changes still go out meanwhile).
        self.reply_delay = 0.0
        # (until, lose): while monotonic() < until nothing is sent on any
        # websocket; held and sent afterwards, or lost when ``lose``.
        self._silence: tuple[float, bool] | None = None
        self._insight_fail_until = 0.0
        self._insight_fail_status = 500
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
        self._thread = threading.Thread(target=self._tcp.serve_forever, name="featbit-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._tcp.shutdown()
        self._tcp.server_close()
        for conn in self.connections():
            conn.drop()

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

    def set_data(self, flags: Iterable[Mapping[str, Any]], segments: Iterable[Mapping[str, Any]] = (), *, push: bool = False) -> None:
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

    def fail_insight(self, *statuses: int) -> None:
        """Answer the next insight requests with these statuses, in order."""
        with self._lock:
            self._insight_statuses.extend(statuses)

    def fail_insight_for(self, seconds: float, status: int = 500) -> None:
        """Answer every insight request with ``status`` for ``seconds`` (an outage)."""
        with self._lock:
            self._insight_fail_status = status
            self._insight_fail_until = time.monotonic() + seconds

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
                return {"eventType": "full", "featureFlags": list(self._flags.values()), "segments": list(self._segments.values())}
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
        return len(secret) == 44 and secret.rstrip("=") == self.secret.rstrip("=") and abs(self.now_ms() - stamp) <= TOKEN_WINDOW_MS

    def _serve_websocket(self, sock: socket.socket, target: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(target)
        if not parts.path.startswith("/streaming"):
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        key = headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        sock.sendall(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
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

    def _serve_http(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        path = urlsplit(target).path
        if path.endswith("/api/public/insight/track") and method == "POST":
            record = {"authorization": headers.get("authorization"), "content_type": headers.get("content-type"), "user_agent": headers.get("user-agent"), "time": time.time()}
            if headers.get("authorization") != self.secret:
                self.insight_requests.append(record | {"status": 401})
                return 401, None
            with self._lock:
                if self._insight_statuses:
                    status = self._insight_statuses.pop(0)
                elif time.monotonic() < self._insight_fail_until:
                    status = self._insight_fail_status
                else:
                    status = 200
            self.insight_requests.append(record | {"status": status})
            if status != 200:
                return status, None
            if not body.lstrip().startswith(b"["):
                return 400, None
            with self._lock:
                self._bodies.append(body)
            return 200, None
        if path == "/control/state" and method == "GET":
            return 200, {
                "open_connections": self.open_connections,
                "connections_accepted": self.connections_accepted,
                "connections_rejected": self.connections_rejected,
                "events": len(self.events),
            }
        if path == "/control/events" and method == "GET":
            return 200, self.events
        if method == "POST" and path.startswith("/control/"):
            try:
                arg = json.loads(body) if body else {}
            except ValueError:
                return 400, {"error": "body is not JSON"}
            action = path[len("/control/") :]
            if action == "flag":
                self.update_flag(arg)
            elif action == "segment":
                self.update_segment(arg)
            elif action == "drop":
                return 200, {"dropped": self.drop_connections()}
            elif action == "close":
                return 200, {"closed": self.close_connections(int(arg.get("code", 1000)))}
            elif action == "insight-fail":
                if "seconds" in arg:
                    self.fail_insight_for(float(arg["seconds"]), int(arg.get("status", 500)))
                self.fail_insight(*[int(s) for s in arg.get("statuses", [])])
            elif action == "silence":
                self.silence(float(arg.get("seconds", 2.0)), lose=bool(arg.get("lose", False)))
            elif action == "clock":
                self.clock_offset_ms = int(arg.get("offset_ms", 0))
            else:
                return 404, {"error": f"unknown control action {action!r}"}
            return 200, {"ok": True}
        return 404, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FeatBit stand-in server (loopback only)")
    parser.add_argument("--port", type=int, default=5100)
    parser.add_argument("--secret", default=DEFAULT_SECRET)
    parser.add_argument("--flags", help="a data-sync JSON file to serve")
    args = parser.parse_args(argv)
    flags: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    if args.flags:
        with open(args.flags) as fh:
            doc = json.load(fh)
        flags, segments = doc["data"]["featureFlags"], doc["data"]["segments"]
    server = FeatBitStandIn(secret=args.secret, flags=flags, segments=segments, port=args.port).start()
    print(f"stand-in: streaming {server.streaming_url}  events {server.event_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
