"""A small HTTP forward proxy on loopback, for tests of clients behind a proxy.

What a corporate proxy does to an SDK's traffic, and no more:

* absolute-form requests (``POST http://127.0.0.1:5100/api/... HTTP/1.1``) are
  forwarded to their target and the answer relayed back. The client's
  connection is kept alive between requests (unless it or the target says
  ``Connection: close``), and so is the proxy's connection to each target.
  Hop-by-hop headers (``Connection``, ``Proxy-Authorization``, ...) are not
  forwarded; a chunked request body is forwarded with a ``Content-Length``,
  and every answer is relayed with one;
* ``CONNECT host:port`` opens a tunnel (websockets, https): ``200``, then bytes
  both ways until either side closes;
* with ``auth=(user, password)`` every request must carry a matching
  ``Proxy-Authorization: Basic ...``; otherwise ``407`` with
  ``Proxy-Authenticate`` (and the connection is kept alive for a retry).

It listens on 127.0.0.1 only and forwards only to loopback targets (an IP
literal in 127.0.0.0/8, ``::1`` or ``localhost``): anything else is ``403``,
so a test can never reach the network through it. An ``https://`` absolute
form (the proxy would have to speak TLS) is ``501``; an origin-form request
(``GET /path``: a client that does not know it talks to a proxy) is ``400``;
a target that refuses or fails is ``502``.

Each connection is served on its own thread; ``stop()`` closes them all.
Counts: ``counts`` is a :class:`collections.Counter` of ``(method, target)``
for every request forwarded or tunnel opened (target: the absolute URL as
the client sent it, or ``host:port`` for CONNECT); ``refused`` counts the
proxy's own refusals by status; ``tunnels_open`` and ``connections``
(client connections accepted) show how the client uses it::

    from featbit_shm.testing.proxy import ForwardProxy

    with FeatBitStandIn() as server, ForwardProxy(auth=("u", "p")) as proxy:
        os.environ["HTTPS_PROXY"] = proxy.url        # http://u:p@127.0.0.1:PORT
        ...
        assert proxy.count("POST", server.event_url) >= 1
        assert proxy.count("CONNECT") == 1           # the websocket
"""

from __future__ import annotations

import base64
import collections
import hmac
import http
import http.client
import ipaddress
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

# Headers that concern one connection, never forwarded (RFC 9110 7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "transfer-encoding", "upgrade",
    }
)  # fmt: skip
_MAX_HEAD = 64 * 1024  # request line + headers


class _BadRequest(Exception):
    pass


class _Gone(Exception):
    """The client closed its connection."""


class _Stream:
    """Reads a socket with a buffer: header blocks, exact byte counts, lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise _Gone()
        self.buffer += chunk

    def head(self) -> bytes:
        """One request line + headers (without the blank line)."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > _MAX_HEAD:
                raise _BadRequest("request head too large")
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if len(self.buffer) > _MAX_HEAD:
                raise _BadRequest("line too long")
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def chunked(self) -> bytes:
        """A chunked body, decoded (trailers dropped)."""
        parts: list[bytes] = []
        while True:
            size_text = self.line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size == 0:
                while self.line():  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            parts.append(self.exact(size))
            if self.exact(2) != b"\r\n":
                raise _BadRequest("bad chunk end")


class _Request:
    def __init__(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        try:
            self.method, self.target, self.version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadRequest(f"bad request line {lines[0]!r}") from None
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(f"bad header line {line!r}")
            self.headers.append((name.strip(), value.strip()))

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def keep_alive(self) -> bool:
        tokens = {
            t.strip().lower() for t in (self.header("connection") or self.header("proxy-connection") or "").split(",")
        }
        if "close" in tokens:
            return False
        return self.version.upper() != "HTTP/1.0" or "keep-alive" in tokens


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        proxy = self.server.proxy
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not proxy._track(sock):
            return
        upstreams: dict[tuple[str, int], http.client.HTTPConnection] = {}
        try:
            with proxy._lock:
                proxy.connections += 1
            stream = _Stream(sock)
            while True:
                try:
                    request = _Request(stream.head())
                except _BadRequest as exc:
                    proxy._refuse(sock, 400, str(exc), close=True)
                    return
                if not proxy._authorized(request):
                    proxy._discard_body(stream, request)
                    proxy._refuse(sock, 407, "proxy authentication required", close=not request.keep_alive)
                    if not request.keep_alive:
                        return
                    continue
                if request.method.upper() == "CONNECT":
                    proxy._tunnel(sock, stream, request)
                    return
                if not proxy._forward(sock, stream, request, upstreams):
                    return
        except (_Gone, OSError, _BadRequest):
            return
        finally:
            for conn in upstreams.values():
                conn.close()
            proxy._untrack(sock)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    proxy: ForwardProxy


class ForwardProxy:
    """The proxy. Start it with ``with`` or :meth:`start`; see the module docstring."""

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        port: int = 0,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        self.auth = auth
        self._expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth else None
        self.connect_timeout = connect_timeout
        self.timeout = timeout  # for an answer from a target
        self._lock = threading.Lock()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.refused: collections.Counter[int] = collections.Counter()
        self.connections = 0  # client connections accepted
        self.tunnels_open = 0
        self._sockets: set[socket.socket] = set()
        self._stopping = False
        self._tcp = _TCPServer(("127.0.0.1", port), _Handler, bind_and_activate=True)
        self._tcp.proxy = self
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._tcp.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, with ``user:password@`` when the proxy
        requires them: what HTTP_PROXY / HTTPS_PROXY take."""
        if self.auth:
            user, password = (quote(part, safe="") for part in self.auth)
            return f"http://{user}:{password}@127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ForwardProxy:
        # A short poll interval: stop() returns within 50 ms instead of 0.5 s.
        self._thread = threading.Thread(
            target=self._tcp.serve_forever, args=(0.05,), name="featbit-test-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection and tunnel."""
        self._tcp.shutdown()
        self._tcp.server_close()
        with self._lock:
            self._stopping = True
            socks = list(self._sockets)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # counts ------------------------------------------------------------------

    def count(self, method: str | None = None, target: str = "") -> int:
        """Requests forwarded (and tunnels opened) with this method (any when
        None) whose target starts with ``target``."""
        with self._lock:
            return sum(
                n
                for (m, t), n in self.counts.items()
                if (method is None or m == method.upper()) and t.startswith(target)
            )

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.005)
        return bool(predicate())

    # internals ---------------------------------------------------------------

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._stopping:
                return False
            self._sockets.add(sock)
            return True

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _counted(self, method: str, target: str) -> None:
        with self._lock:
            self.counts[(method.upper(), target)] += 1

    def _authorized(self, request: _Request) -> bool:
        if self._expected is None:
            return True
        given = request.header("proxy-authorization") or ""
        return hmac.compare_digest(given.encode(), self._expected.encode())

    def _refuse(self, sock: socket.socket, status: int, message: str, *, close: bool) -> None:
        with self._lock:
            self.refused[status] += 1
        body = f"{message}\n".encode()
        extra = 'Proxy-Authenticate: Basic realm="featbit-shm test proxy"\r\n' if status == 407 else ""
        sock.sendall(
            f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
            + body
        )

    @staticmethod
    def _body(stream: _Stream, request: _Request) -> bytes:
        if "chunked" in (request.header("transfer-encoding") or "").lower():
            return stream.chunked()
        length = request.header("content-length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        return stream.exact(n)

    def _discard_body(self, stream: _Stream, request: _Request) -> None:
        if request.method.upper() != "CONNECT":
            self._body(stream, request)

    def _forward(
        self,
        sock: socket.socket,
        stream: _Stream,
        request: _Request,
        upstreams: dict[tuple[str, int], http.client.HTTPConnection],
    ) -> bool:
        """One absolute-form request; False when the client connection ends."""
        body = self._body(stream, request)
        keep_alive = request.keep_alive
        parts = urlsplit(request.target)
        if parts.scheme == "https":
            self._refuse(
                sock, 501, "https:// through a plain proxy request is not supported: use CONNECT", close=not keep_alive
            )
            return keep_alive
        if parts.scheme != "http" or not parts.hostname:
            self._refuse(sock, 400, "not an absolute-form http:// request: this is a proxy", close=not keep_alive)
            return keep_alive
        host, port = parts.hostname, parts.port or 80
        if not _loopback(host):
            self._refuse(sock, 403, f"the test proxy forwards to loopback only, not {host}", close=not keep_alive)
            return keep_alive
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        dropped = _HOP_BY_HOP | {t.strip().lower() for t in (request.header("connection") or "").split(",")}
        headers = [(k, v) for k, v in request.headers if k.lower() not in dropped and k.lower() != "content-length"]
        if request.header("host") is None:
            headers.insert(0, ("Host", parts.netloc.rpartition("@")[2]))
        if body or request.method.upper() in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))
        try:
            status, reason, answer_headers, data, upstream_closes = self._exchange(
                upstreams, (host, port), request.method, path, headers, body
            )
        except (OSError, http.client.HTTPException) as exc:
            self._refuse(sock, 502, f"the target {host}:{port} failed: {exc}", close=not keep_alive)
            return keep_alive
        self._counted(request.method, request.target)
        dropped = _HOP_BY_HOP | {"content-length"}
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in answer_headers if k.lower() not in dropped]
        if request.method.upper() == "HEAD":
            length = dict((k.lower(), v) for k, v in answer_headers).get("content-length")
            if length is not None:
                lines.append(f"Content-Length: {length}")
        else:
            lines.append(f"Content-Length: {len(data)}")
        lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        if upstream_closes:
            upstreams.pop((host, port)).close()
        return keep_alive

    def _exchange(
        self,
        upstreams: dict[tuple[str, int], http.client.HTTPConnection],
        address: tuple[str, int],
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> tuple[int, str, list[tuple[str, str]], bytes, bool]:
        """Send one request to a target on this client's connection to it
        (opened on first use, reopened once when a kept-alive one went stale)."""
        for attempt in (0, 1):
            conn = upstreams.get(address)
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection(address[0], address[1], timeout=self.connect_timeout)
                conn.connect()
                if conn.sock is not None:
                    conn.sock.settimeout(self.timeout)
                upstreams[address] = conn
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data, resp.will_close
            except (OSError, http.client.HTTPException):
                upstreams.pop(address).close()
                if not reused or attempt:
                    raise
        raise AssertionError("unreachable")

    def _tunnel(self, sock: socket.socket, stream: _Stream, request: _Request) -> None:
        host, sep, port_text = request.target.rpartition(":")
        host = host.strip("[]")
        if not sep or not port_text.isdigit():
            self._refuse(sock, 400, f"CONNECT needs host:port, not {request.target!r}", close=True)
            return
        if not _loopback(host):
            self._refuse(sock, 403, f"the test proxy tunnels to loopback only, not {host}", close=True)
            return
        try:
            upstream = socket.create_connection((host, int(port_text)), timeout=self.connect_timeout)
        except OSError as exc:
            self._refuse(sock, 502, f"cannot reach {request.target}: {exc}", close=True)
            return
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._track(upstream):
            upstream.close()
            return
        self._counted("CONNECT", request.target)
        with self._lock:
            self.tunnels_open += 1
        try:
            sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if stream.buffer:  # what the client sent right behind its CONNECT
                upstream.sendall(stream.buffer)
                stream.buffer = b""
            back = threading.Thread(target=_pipe, args=(upstream, sock), name="featbit-test-proxy-tunnel", daemon=True)
            back.start()
            _pipe(sock, upstream)
            back.join()
        finally:
            with self._lock:
                self.tunnels_open -= 1
            self._untrack(upstream)
            upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes until ``source`` ends, then end ``sink``'s sending side."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
