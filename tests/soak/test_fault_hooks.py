"""The fault-injection hooks the chaos soak drives (issue 9), each shown to
do what the soak relies on. Default suite; no timing is asserted."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import websocket

from featbit_shm._core.dataset import DataSet
from featbit_shm._core.protocol import build_token, streaming_url
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.shm.reader import SnapshotReader
from featbit_shm.shm.writer import FAULT_PUBLISH_DELAY_ENV, SnapshotWriter, publish_delay_from_env
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..sync_helpers import eventually

# Real sockets to the stand-in and liveness timeouts: the integration lane.
pytestmark = pytest.mark.subprocess

T0 = 1_700_000_000_000


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[b.flag("a", updated_at=T0)]) as s:
        yield s


def connect(server: FeatBitStandIn) -> websocket.WebSocket:
    url = streaming_url(server.streaming_url, build_token(server.secret, int(time.time() * 1000), 0.5))
    ws = websocket.create_connection(url, timeout=10)
    ws.send(json.dumps({"messageType": "data-sync", "data": {"timestamp": 0}}))
    assert json.loads(ws.recv())["data"]["eventType"] == "full"
    return ws


def test_silence_stall_holds_pushes_and_sends_them_in_order_afterwards(server: FeatBitStandIn) -> None:
    ws = connect(server)
    try:
        server.silence(0.5)
        server.update_flag(b.flag("a", updated_at=T0 + 1))
        server.update_flag(b.flag("a", updated_at=T0 + 2))
        ws.send(json.dumps({"messageType": "ping", "data": {}}))
        got = [json.loads(ws.recv()) for _ in range(3)]  # held, then delivered when the silence ends
        assert [m["messageType"] for m in got] == ["data-sync", "data-sync", "pong"]
        assert [m["data"]["featureFlags"][0]["updatedAt"] for m in got[:2]] == [b.iso_ms(T0 + 1), b.iso_ms(T0 + 2)]
    finally:
        ws.close()


def test_silence_lose_is_a_black_hole(server: FeatBitStandIn) -> None:
    ws = connect(server)
    try:
        server.silence(0.3, lose=True)
        server.update_flag(b.flag("a", updated_at=T0 + 1))  # lost
        ws.send(json.dumps({"messageType": "ping", "data": {}}))  # unanswered
        ends = time.monotonic() + 0.3
        assert eventually(lambda: time.monotonic() > ends, timeout=5)
        ws.send(json.dumps({"messageType": "ping", "data": {}}))
        assert json.loads(ws.recv()) == {"messageType": "pong", "data": {}}  # the next thing that arrives
    finally:
        ws.close()


def test_silence_and_timed_insight_failure_through_the_control_api(server: FeatBitStandIn) -> None:
    def post(path: str, body: dict) -> dict:  # type: ignore[type-arg]
        req = urllib.request.Request(server.event_url + path, data=json.dumps(body).encode(), method="POST")
        if path.startswith("/api"):
            req.add_header("Authorization", server.secret)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return {"status": resp.status}
        except urllib.error.HTTPError as exc:
            return {"status": exc.code}

    assert post("/control/insight-fail", {"seconds": 30, "status": 503})["status"] == 200
    assert post("/api/public/insight/track", [])["status"] == 503  # type: ignore[arg-type]
    assert post("/api/public/insight/track", [])["status"] == 503  # type: ignore[arg-type]
    server.fail_insight_for(0)
    assert post("/api/public/insight/track", [{"user": {"keyId": "u"}}])["status"] == 200  # type: ignore[arg-type]
    assert post("/control/silence", {"seconds": 0.1})["status"] == 200
    assert server.take_events() == [{"user": {"keyId": "u"}}]
    assert server.take_events() == [] and server.events == []  # taken means gone


def test_publish_delay_is_off_unless_set_and_reads_its_file_at_every_publish(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert publish_delay_from_env({}) is None
    assert publish_delay_from_env({FAULT_PUBLISH_DELAY_ENV: "0.25"})() == 0.25  # type: ignore[misc]
    knob = tmp_path / "delay"
    delay = publish_delay_from_env({FAULT_PUBLISH_DELAY_ENV: str(knob)})
    assert delay is not None and delay() == 0.0  # no file yet: no delay
    knob.write_text("0.5")
    assert delay() == 0.5
    knob.write_text("")
    assert delay() == 0.0

    names = StoreNames.for_env("", f"fault-{uuid.uuid4().hex[:8]}")
    stalls: list[float] = []
    reader = SnapshotReader(names, retry_interval=0.0)

    def stall(seconds: float) -> None:
        # Mid-publish: every object is written, the control block does not point at them yet.
        stalls.append(seconds)
        assert reader.generation == 0

    writer = SnapshotWriter(names, publish_delay=lambda: 0.125, sleep=stall)
    try:
        writer.publish(DataSet())
        assert stalls == [0.125] and reader.generation == 1
    finally:
        writer.close(unlink=True)
        remove_objects(names.all_objects(), names.access)


