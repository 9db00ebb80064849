"""The stand-in's insight knobs (delay, Retry-After, body limit, poisoned
bodies, counting) and the test forward proxy, each shown to do what tests of
an event sender rely on.

In-process (threads and loopback sockets, no process started: the unit
lane), except the stand-in's command line, which runs it as a process.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import websocket

from featbit_shm._core.protocol import build_token, streaming_url
from featbit_shm._core.records import Renderer, encode_eval, encode_identify, encode_metrics, join_json
from featbit_shm.testing import builders as b
from featbit_shm.testing.proxy import ForwardProxy
from featbit_shm.testing.server import INSIGHT_PATH, FeatBitStandIn, InsightStats, retry_after_value

T0 = 1_700_000_000_000


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[b.flag("a", updated_at=T0)]) as s:
        yield s


def event(key: str, **extra: Any) -> dict[str, Any]:
    return {"user": {"keyId": key, "name": "n", "customizedProperties": []}, **extra}


def body_of(*events: dict[str, Any], compact: bool = True) -> bytes:
    return json.dumps(list(events), separators=(",", ":") if compact else None).encode()


class Answer:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self.body = resp.read()


def post(
    conn: http.client.HTTPConnection, body: bytes, secret: str, target: str = INSIGHT_PATH, **headers: str
) -> Answer:
    conn.request("POST", target, body=body, headers={"Authorization": secret, **headers})
    return Answer(conn.getresponse())


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def control(server: FeatBitStandIn, path: str, arg: Any = None) -> tuple[int, Any]:
    data = None if arg is None else json.dumps(arg).encode()
    req = urllib.request.Request(server.event_url + path, data=data, method="GET" if arg is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# --------------------------------------------------------------------------- delay and concurrency


def test_delayed_posts_on_separate_connections_are_answered_concurrently(server: FeatBitStandIn) -> None:
    server.insight_delay = 0.5
    n = 6
    barrier = threading.Barrier(n)
    statuses: list[int] = []

    def one() -> None:
        conn = connect(server.port)
        barrier.wait()
        statuses.append(post(conn, body_of(event("c")), server.secret).status)
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    stats = server.insight_stats()
    assert statuses == [200] * n
    assert stats.max_in_flight == n and stats.in_flight == 0  # all six were waiting at once
    assert stats.requests == stats.accepted == stats.events == n and stats.connections == n


def test_keep_alive_serves_many_posts_on_one_connection(server: FeatBitStandIn) -> None:
    conn = connect(server.port)
    first = post(conn, body_of(event("k")), server.secret)
    sock = conn.sock
    for _ in range(19):
        answer = post(conn, body_of(event("k"), event("k")), server.secret)
        assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
    assert conn.sock is sock and first.status == 200  # never reconnected
    assert server.insight_stats() == InsightStats(
        requests=20, accepted=20, events=39, max_in_flight=1, connections=1, statuses={200: 20}
    )
    conn.close()


def test_the_delay_applies_to_every_answer_and_401_still_comes_first(server: FeatBitStandIn) -> None:
    server.insight_delay = 0.2
    conn = connect(server.port)
    started = time.monotonic()
    assert post(conn, body_of(event("x")), "not-the-secret").status == 401
    assert time.monotonic() - started >= 0.2
    assert server.insight_requests[-1]["status"] == 401 and server.events_received == 0


# --------------------------------------------------------------------------- Retry-After


def test_scripted_statuses_carry_retry_after_then_the_endpoint_recovers(server: FeatBitStandIn) -> None:
    server.fail_insight(429, 429, retry_after=2)
    server.fail_insight(503, retry_after="Wed, 21 Oct 2026 07:28:00 GMT")
    server.fail_insight(500)
    conn = connect(server.port)
    answers = [post(conn, body_of(event("r")), server.secret) for _ in range(5)]
    assert [a.status for a in answers] == [429, 429, 503, 500, 200]
    assert [a.headers.get("retry-after") for a in answers] == ["2", "2", "Wed, 21 Oct 2026 07:28:00 GMT", None, None]
    assert server.insight_stats().statuses == {429: 2, 503: 1, 500: 1, 200: 1}
    assert [r.get("retry_after") for r in server.insight_requests] == [
        "2",
        "2",
        "Wed, 21 Oct 2026 07:28:00 GMT",
        None,
        None,
    ]


def test_an_outage_with_retry_after_and_its_end(server: FeatBitStandIn) -> None:
    server.fail_insight_for(30, 429, retry_after=1.5)
    conn = connect(server.port)
    answer = post(conn, body_of(event("o")), server.secret)
    assert (answer.status, answer.headers.get("retry-after")) == (429, "1.5")
    server.fail_insight_for(0)
    answer = post(conn, body_of(event("o")), server.secret)
    assert (answer.status, answer.headers.get("retry-after")) == (200, None)


def test_retry_after_values() -> None:
    assert [retry_after_value(v) for v in (None, 0, 2, 2.0, 0.25, "120")] == [None, "0", "2", "2", "0.25", "120"]
    with pytest.raises(ValueError):
        retry_after_value(-1)


# --------------------------------------------------------------------------- body limit and poisoned bodies


def test_a_body_over_the_limit_is_413_and_closes_like_a_proxy(server: FeatBitStandIn) -> None:
    small = body_of(event("s"))
    big = body_of(*[event("b")] * 20)
    server.insight_max_body = len(small)
    server.fail_insight(503)
    conn = connect(server.port)
    answer = post(conn, big, server.secret)
    assert answer.status == 413 and answer.headers["connection"] == "close"
    assert post(connect(server.port), small, server.secret).status == 503  # the scripted status was not used up
    assert post(connect(server.port), small, server.secret).status == 200
    assert server.events_received == 1
    assert server.insight_stats().statuses == {413: 1, 503: 1, 200: 1}


def test_one_poisoned_event_fails_its_batch_and_only_that_batch(server: FeatBitStandIn) -> None:
    server.reject_insight("POISON")
    conn = connect(server.port)
    poisoned = [event(f"u{i}") for i in range(49)] + [event("POISON-1")]
    assert post(conn, body_of(*poisoned), server.secret).status == 400
    assert post(conn, body_of(*poisoned[:49]), server.secret).status == 200  # the 49 good ones, split off
    assert post(conn, body_of(event("POISON-1")), server.secret).status == 400
    assert server.events_received == 49 and len(server.events) == 49
    server.reject_insight(None)
    assert post(conn, body_of(event("POISON-1")), server.secret).status == 200


def test_a_predicate_rejects_with_the_status_given(server: FeatBitStandIn) -> None:
    def too_many(body: bytes) -> bool:
        return len(json.loads(body)) > 2

    server.reject_insight(too_many, status=422)
    conn = connect(server.port)
    assert post(conn, body_of(*[event("p")] * 3), server.secret).status == 422
    assert post(conn, body_of(*[event("p")] * 2), server.secret).status == 200
    assert server.insight_settings()["reject"] == "too_many"
    with pytest.raises(ValueError):
        server.reject_insight("")


def test_existing_rules_hold_a_body_that_is_not_an_array_is_400(server: FeatBitStandIn) -> None:
    conn = connect(server.port)
    assert post(conn, b'{"user": {"keyId": "u"}}', server.secret).status == 400
    assert post(conn, b"[]", server.secret).status == 200
    assert server.events == [] and server.events_received == 0


# --------------------------------------------------------------------------- counting


def test_events_are_counted_exactly_without_parsing_whatever_the_users_say(server: FeatBitStandIn) -> None:
    packer = msgpack.Packer(autoreset=True)
    renderer = Renderer()
    tricky = [
        {"key": "user"},
        {"key": 'a"user":b', "name": '"user": {'},
        {"key": "u", "user": "user", "note": '{"user":1}'},
    ]
    rendered = []
    for user in tricky:
        rendered.append(renderer.render(encode_eval(packer, T0 * 1_000_000, user, "f", "v1", "on", False)[4:]))
        rendered.append(renderer.render(encode_metrics(packer, T0, user, [("clicked", 2.0)])[4:]))
        rendered.append(renderer.render(encode_identify(packer, T0, user)[4:]))
    conn = connect(server.port)
    assert post(conn, join_json(rendered), server.secret).status == 200  # what the sync process sends
    spaced = [event("user", metrics=[{"eventName": "user"}]), event('"user": x')]
    assert post(conn, body_of(*spaced, compact=False), server.secret).status == 200  # json.dumps' ", " and ": "
    assert server.events_received == len(server.events) == len(rendered) + 2 == 11


def test_without_keep_events_only_counts(server: FeatBitStandIn) -> None:
    server.keep_events = False
    conn = connect(server.port)
    for _ in range(3):
        assert post(conn, body_of(event("n"), event("n")), server.secret).status == 200
    assert server.events_received == 6 and server.events == []


def test_reset_returns_the_stats_and_starts_again(server: FeatBitStandIn) -> None:
    conn = connect(server.port)
    post(conn, body_of(event("z")), server.secret)
    before = server.reset_insight_stats()
    assert (before.requests, before.events, before.connections) == (1, 1, 1)
    assert server.insight_stats() == InsightStats()
    post(conn, body_of(event("z")), server.secret)  # the same connection counts again after a reset
    assert (server.insight_stats().connections, server.events_received, len(server.events)) == (1, 1, 2)


def test_stop_closes_kept_alive_connections() -> None:
    server = FeatBitStandIn().start()
    conn = connect(server.port)
    assert post(conn, b"[]", server.secret).status == 200
    server.stop()
    with pytest.raises((OSError, http.client.HTTPException)):
        post(conn, b"[]", server.secret)


# --------------------------------------------------------------------------- HTTP control API


def test_every_knob_through_the_control_api(server: FeatBitStandIn) -> None:
    status, knobs = control(server, "/control/insight", {"delay": 0.05, "max_body": 400, "reject": "BAD"})
    assert status == 200 and (knobs["delay"], knobs["max_body"], knobs["reject"]) == (0.05, 400, "BAD")
    assert control(server, "/control/insight-fail", {"statuses": [429], "retry_after": 3})[0] == 200
    conn = connect(server.port)
    answer = post(conn, body_of(event("c")), server.secret)
    assert (answer.status, answer.headers["retry-after"]) == (429, "3")
    assert post(conn, body_of(event("BAD")), server.secret).status == 400
    assert post(connect(server.port), body_of(*[event("c")] * 20), server.secret).status == 413
    assert post(conn, body_of(event("c")), server.secret).status == 200
    status, seen = control(server, "/control/insight")
    assert seen["stats"]["requests"] == 4 and seen["stats"]["statuses"] == {"200": 1, "400": 1, "413": 1, "429": 1}
    assert control(server, "/control/state")[1]["insight"]["events"] == 1
    assert control(server, "/control/insight", {"max_body": None, "reject": None, "keep_events": False})[0] == 200
    assert server.insight_max_body is None and server.insight_settings()["reject"] is None and not server.keep_events
    assert control(server, "/control/insight-fail", {"seconds": 30, "status": 503, "retry_after": 1})[0] == 200
    answer = post(conn, body_of(event("c")), server.secret)
    assert (answer.status, answer.headers["retry-after"]) == (503, "1")
    status, before = control(server, "/control/insight-reset", {})
    assert status == 200 and before["requests"] == 5 and server.insight_stats().requests == 0
    assert control(server, "/control/insight", {"dealy": 1})[0] == 400  # a typo is refused, not ignored
    assert control(server, "/control/insight", {"delay": -1})[0] == 400


# --------------------------------------------------------------------------- the forward proxy


def proxy_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_proxy_forwards_absolute_form_posts_keeping_both_connections_alive(server: FeatBitStandIn) -> None:
    with ForwardProxy() as proxy:
        conn = connect(proxy.port)
        url = server.event_url + INSIGHT_PATH
        for i in range(5):
            answer = post(conn, body_of(event(f"p{i}")), server.secret, target=url)
            assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
        assert proxy.connections == 1 and server.insight_stats().connections == 1
        assert proxy.count("POST", server.event_url) == 5 and proxy.counts[("POST", url)] == 5
        assert [r["authorization"] for r in server.insight_requests] == [server.secret] * 5  # end-to-end headers pass
        assert [e["user"]["keyId"] for e in server.events] == [f"p{i}" for i in range(5)]


def test_proxy_relays_statuses_and_retry_after(server: FeatBitStandIn) -> None:
    server.fail_insight(429, retry_after=7)
    with ForwardProxy() as proxy:
        conn = connect(proxy.port)
        answer = post(conn, body_of(event("r")), server.secret, target=server.event_url + INSIGHT_PATH)
        assert (answer.status, answer.headers.get("retry-after")) == (429, "7")
        assert post(conn, body_of(event("r")), server.secret, target=server.event_url + INSIGHT_PATH).status == 200


def test_proxy_with_credentials_answers_407_until_they_are_given(server: FeatBitStandIn) -> None:
    with ForwardProxy(auth=("svc", "p@ss:word")) as proxy:
        assert proxy.url == f"http://svc:p%40ss%3Aword@127.0.0.1:{proxy.port}"
        conn = connect(proxy.port)
        target = server.event_url + INSIGHT_PATH
        answer = post(conn, body_of(event("a")), server.secret, target=target)
        assert answer.status == 407 and answer.headers["proxy-authenticate"].startswith("Basic")
        wrong = proxy_auth("svc", "nope")
        assert (
            post(conn, body_of(event("a")), server.secret, target=target, **{"Proxy-Authorization": wrong}).status
            == 407
        )
        right = proxy_auth("svc", "p@ss:word")
        assert (
            post(conn, body_of(event("a")), server.secret, target=target, **{"Proxy-Authorization": right}).status
            == 200
        )
        assert proxy.refused[407] == 2 and proxy.count("POST") == 1 and proxy.connections == 1
        assert server.events_received == 1


def test_urllib_through_the_proxy_url_with_credentials(server: FeatBitStandIn) -> None:
    with ForwardProxy(auth=("u", "p")) as proxy:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
        req = urllib.request.Request(
            server.event_url + INSIGHT_PATH, data=body_of(event("url")), headers={"Authorization": server.secret}
        )
        with opener.open(req, timeout=10) as resp:
            assert resp.status == 200
        assert proxy.count("POST", server.event_url) == 1 and server.events_received == 1


def test_proxy_tunnels_the_data_sync_websocket_with_connect(server: FeatBitStandIn) -> None:
    with ForwardProxy(auth=("u", "p")) as proxy:
        url = streaming_url(server.streaming_url, build_token(server.secret, int(time.time() * 1000), 0.5))
        ws = websocket.create_connection(
            url,
            http_proxy_host="127.0.0.1",
            http_proxy_port=proxy.port,
            http_proxy_auth=("u", "p"),
            proxy_type="http",
            timeout=10,
        )
        try:
            ws.send(json.dumps({"messageType": "data-sync", "data": {"timestamp": 0}}))
            full = json.loads(ws.recv())
            assert full["data"]["eventType"] == "full" and full["data"]["featureFlags"][0]["key"] == "a"
            assert proxy.count("CONNECT", f"127.0.0.1:{server.port}") == 1 and proxy.tunnels_open == 1
        finally:
            ws.close()
        assert proxy.wait_for(lambda: proxy.tunnels_open == 0)
        assert server.connections_accepted == 1


def test_http_client_tunnel_keeps_working_after_the_target_answers(server: FeatBitStandIn) -> None:
    with ForwardProxy() as proxy:
        conn = connect(proxy.port)
        conn.set_tunnel("127.0.0.1", server.port)  # CONNECT, then plain HTTP inside: how https goes through
        for _ in range(3):
            assert post(conn, body_of(event("t")), server.secret).status == 200
        assert proxy.count("CONNECT") == 1 and proxy.count("POST") == 0 and server.events_received == 3
        conn.close()


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_proxy_refuses_what_a_test_proxy_must_not_do() -> None:
    with ForwardProxy() as proxy:
        assert raw(proxy.port, b"POST http://192.0.2.1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").startswith(
            b"HTTP/1.1 403"
        )
        assert raw(proxy.port, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403")
        assert raw(proxy.port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw(proxy.port, b"GET https://127.0.0.1:1/ HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 501")
        assert raw(proxy.port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert proxy.refused == {403: 2, 400: 2, 501: 1} and not proxy.counts


def test_proxy_answers_502_for_a_target_that_is_not_there() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with ForwardProxy() as proxy:
        assert raw(proxy.port, f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n".encode()).startswith(b"HTTP/1.1 502")
        assert raw(proxy.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode()).startswith(b"HTTP/1.1 502")


def test_proxy_forwards_a_chunked_body_whole(server: FeatBitStandIn) -> None:
    body = body_of(event("c1"), event("c2"))
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    head = (
        f"POST {server.event_url}{INSIGHT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: {server.secret}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with ForwardProxy() as proxy:
        assert raw(proxy.port, head.encode() + chunked).startswith(b"HTTP/1.1 200")
    assert [e["user"]["keyId"] for e in server.events] == ["c1", "c2"]


def test_proxy_stop_ends_open_tunnels(server: FeatBitStandIn) -> None:
    proxy = ForwardProxy().start()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    assert proxy.wait_for(lambda: proxy.tunnels_open == 1)
    proxy.stop()
    assert proxy.wait_for(lambda: proxy.tunnels_open == 0)
    readable, _, _ = select.select([sock], [], [], 5)
    assert readable and sock.recv(1024) == b""  # the client sees its tunnel end
    sock.close()


# --------------------------------------------------------------------------- the command line


@pytest.mark.subprocess
def test_the_command_line_sets_the_knobs_and_prints_the_stats() -> None:
    knobs = ["--insight-delay", "0.1", "--insight-max-body", "300", "--insight-reject", "POISON"]
    knobs += ["--insight-fail", "429", "--insight-fail", "500", "--retry-after", "2"]
    knobs += ["--no-keep-events", "--stats-interval", "0.2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "featbit_shm.testing.server", "--port", "0", *knobs],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.startswith("stand-in: streaming ws://127.0.0.1:")
        port = int(banner.rsplit(":", 1)[1])
        secret = "Zm9vYmFyLWZlYXRiaXQtc2htLXN0YW5kLWluLTAwMDAw"
        conn = connect(port)
        answers = [post(conn, body_of(event("cli")), secret) for _ in range(3)]
        assert [(a.status, a.headers.get("retry-after")) for a in answers] == [(429, "2"), (500, "2"), (200, None)]
        assert post(conn, body_of(event("POISON")), secret).status == 400
        assert post(connect(port), body_of(*[event("cli")] * 10), secret).status == 413
        conn.request("GET", "/control/insight")
        shown = json.loads(Answer(conn.getresponse()).body)
        assert (shown["delay"], shown["max_body"], shown["reject"], shown["keep_events"]) == (0.1, 300, "POISON", False)
        assert shown["stats"]["events"] == 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        last = out.strip().splitlines()[-1]
        assert last.startswith("insight: 5 requests (200: 1, 400: 1, 413: 1, 429: 1, 500: 1), 1 events accepted")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
