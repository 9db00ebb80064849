"""The insight endpoint's HTTP client: keep-alive, proxies, a CA bundle, Retry-After.

One :class:`InsightClient` is shared by the pump's sender threads; each
thread keeps its own keep-alive connection (``threading.local``), so
requests in flight never share a socket.

Proxies: the same variables the websocket honours (websocket-client reads
them too), so flags and events take one road: ``HTTPS_PROXY`` for an
``https://`` event URL, ``HTTP_PROXY`` for ``http://``, ``NO_PROXY`` to
bypass (as urllib reads them, lower case first). A proxy URL may carry
``user:password@`` (sent as Basic ``Proxy-Authorization``). An ``http://``
target goes through the proxy as an absolute-form request; an ``https://``
target through a ``CONNECT`` tunnel, TLS end to end.

TLS: ``FEATBIT_CA_BUNDLE`` names a PEM file of trusted CAs for both the
websocket and this client (a private CA in front of FeatBit); without it,
the system's store.

Timeouts (R-68): 1 s to connect, 2 s per socket operation.
"""

from __future__ import annotations

import base64
import http.client
import logging
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .._core.protocol import USER_AGENT, insight_url
from .._core.records import retry_after

log = logging.getLogger("featbit_shm.events")


@dataclass(frozen=True)
class Reply:
    """What one POST came back with: the status (None: no answer, a network
    error) and the seconds a ``Retry-After`` asked for."""

    status: int | None
    retry_after: float | None = None


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization header value


def proxy_for(url: str) -> Proxy | None:
    """The proxy the environment names for ``url`` (None: connect directly)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if urllib.request.proxy_bypass_environment(host):  # type: ignore[attr-defined]
        return None
    proxies = urllib.request.getproxies_environment()
    chosen = proxies.get(parts.scheme) or proxies.get("all")
    if not chosen:
        return None
    if "://" not in chosen:
        chosen = "http://" + chosen
    proxy = urlsplit(chosen)
    authorization = None
    if proxy.username is not None:
        credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    return Proxy(proxy.hostname or "", proxy.port or 8080, authorization)


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Verification on, against ``ca_bundle`` when one is named."""
    return ssl.create_default_context(cafile=ca_bundle or None)


class InsightClient:
    """POSTs insight bodies (R-61 headers); thread-safe, one connection per thread."""

    def __init__(self, event_base: str, secret: str, *, ca_bundle: str | None = None, connect_timeout: float = 1.0, timeout: float = 2.0) -> None:
        url = insight_url(event_base)
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._proxy = proxy_for(url)
        # Through a plain-HTTP proxy the request line names the whole URL.
        self._target = url if self._proxy is not None and not self._https else path
        self._headers = {
            "Authorization": secret,  # the raw secret, no "Bearer"
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
        }
        if self._proxy is not None and self._proxy.authorization and not self._https:
            self._headers["Proxy-Authorization"] = self._proxy.authorization
        self._context = tls_context(ca_bundle) if self._https else None
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: set[http.client.HTTPConnection] = set()

    @property
    def proxy(self) -> Proxy | None:
        return self._proxy

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        proxy = self._proxy
        if self._https:
            if proxy is not None:
                conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=self._connect_timeout, context=self._context)
                tunnel_headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                conn.set_tunnel(self._host, self._port, headers=tunnel_headers)
            else:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._connect_timeout, context=self._context)
        elif proxy is not None:
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=self._connect_timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(self._timeout)
        self._local.conn = conn
        with self._lock:
            self._connections.add(conn)
        return conn

    def __call__(self, body: bytes) -> Reply:
        try:
            conn = self._connection()
            conn.request("POST", self._target, body=body, headers=self._headers)
            resp = conn.getresponse()
            resp.read()
            wait = retry_after(resp.getheader("Retry-After"), time.time())
            if resp.getheader("Connection", "").lower() == "close":
                self._drop()
            return Reply(resp.status, wait)
        except (OSError, http.client.HTTPException) as exc:
            log.debug("featbit_shm: insight request failed: %s", exc)
            self._drop()
            return Reply(None)

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def close(self) -> None:
        """Close every thread's connection (the pump has stopped its senders)."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            conn.close()
