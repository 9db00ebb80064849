"""Events: rings, payloads, delivery rules and real-process delivery (issue 5; R-61..R-70)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featbit_shm import Config, FBClient
from featbit_shm._core.records import (
    EvalEncoder,
    Outcome,
    RecordError,
    Renderer,
    backoff,
    classify,
    encode_eval,
    encode_identify,
    encode_metrics,
    retry_after,
    to_payload,
)
from featbit_shm._core.user import InvalidUser, attr_string, make_user
from featbit_shm.shm import ring as ring_module
from featbit_shm.shm.control import SIZE, ControlBlock
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.shm.registry import Registry
from featbit_shm.shm.ring import (
    HEADER,
    PAGE,
    RESERVE,
    W_DROPPED,
    W_HEAD,
    W_LOST,
    W_MALFORMED,
    W_NOSPACE,
    Ring,
)
from featbit_shm.sync.delivery import Reply
from featbit_shm.sync.pump import EventPump
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn
from featbit_shm.worker.recorder import EventRecorder

from .sync_helpers import SyncFixture, eventually, processes_of, sync_env

PACKER = msgpack.Packer(autoreset=True)


def _unlink_store(names: StoreNames) -> None:
    remove_objects(names.all_objects(), names.access)


@pytest.fixture
def names() -> Iterator[StoreNames]:
    n = StoreNames.for_env("", f"ev-{uuid.uuid4().hex[:10]}")
    yield n
    _unlink_store(n)


# --------------------------------------------------------------------------- payloads (golden, R-62..R-64)


def test_r62_golden_evaluation_payload() -> None:
    record = encode_eval(PACKER, 1700000000123_456789, {"key": "u1-Id", "name": "u1-name", "custom": "value", "country": "us"}, "hello", "v1Id", "v1", True)
    assert to_payload(record) == {
        "user": {"keyId": "u1-Id", "name": "u1-name", "customizedProperties": [{"name": "custom", "value": "value"}, {"name": "country", "value": "us"}]},
        "variations": [{"featureFlagKey": "hello", "variation": {"id": "v1Id", "value": "v1"}, "timestamp": 1700000000123, "sendToExperiment": True}],
    }


def test_r63_golden_metric_payload_and_r64_several_metrics_in_one_object() -> None:
    record = encode_metrics(PACKER, 5, {"key": "u", "vip": True, "age": 3, "none": None}, [("click-button", 1.5), ("buy", 2)])
    payload = to_payload(record)
    assert payload["user"] == {"keyId": "u", "name": "", "customizedProperties": [{"name": "vip", "value": "true"}, {"name": "age", "value": "3"}]}
    assert payload["metrics"] == [
        {"appType": "pythonserverside", "route": "index/metric", "type": "CustomEvent", "eventName": "click-button", "numericValue": 1.5, "timestamp": 5},
        {"appType": "pythonserverside", "route": "index/metric", "type": "CustomEvent", "eventName": "buy", "numericValue": 2.0, "timestamp": 5},
    ]


def test_r64_identify_payload_is_the_user_alone() -> None:
    assert to_payload(encode_identify(PACKER, 9, {"keyId": "k", "name": "N"})) == {"user": {"keyId": "k", "name": "N", "customizedProperties": []}}


def test_the_event_reads_the_user_exactly_as_evaluation_did() -> None:
    # Issue 15: {"keyId": None, "keyid": "x"} evaluated fine (key "x"), then
    # the sync process read the key with other rules and dropped the event as
    # malformed. Both sides now read the user with make_user.
    user = {"keyId": None, "keyid": "x", "name": "Ann"}
    assert make_user(user).key == "x"
    payload = to_payload(EvalEncoder().eval(1_000_000, user, "f", "v1", "on", False))
    assert payload["user"] == {"keyId": "x", "name": "Ann", "customizedProperties": []}


_user_keys = st.sampled_from(["key", "keyId", "keyid", "name", "country", "age", "beta", "key ", ""]) | st.integers(-2, 2)
_user_values = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.booleans(),
    st.integers(),  # 2**70 does not fit msgpack: the record must still carry the user
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.dictionaries(_user_keys, _user_values, max_size=6),
    key=st.text(min_size=1, max_size=6).filter(lambda k: not k.isspace()),
    key_field=st.sampled_from(["key", "keyId", "keyid"]),
    as_mapping=st.booleans(),
)
def test_any_user_evaluation_accepts_yields_an_event_the_sync_process_accepts(
    raw: dict[Any, Any], key: str, key_field: str, as_mapping: bool
) -> None:
    from types import MappingProxyType

    raw = {**raw, key_field: key}
    user: Any = MappingProxyType(raw) if as_mapping else raw
    try:
        evaluated = make_user(user)
    except InvalidUser:
        return  # evaluation refused it: no event is recorded
    expected_customs = [
        {"name": k, "value": attr_string(v)}
        for k, v in raw.items()
        if isinstance(k, str) and k not in ("key", "keyId", "keyid", "name") and v is not None
    ]
    expected = {"keyId": evaluated.key, "name": evaluated.name, "customizedProperties": expected_customs}
    recorder_bytes = EvalEncoder().eval(1_000_000, user, "f", "v1", "on", True)
    for record in (recorder_bytes, encode_metrics(PACKER, 5, user, [("m", 1.0)]), encode_identify(PACKER, 5, user)):
        assert to_payload(record)["user"] == expected


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00\x00", b"\x01\x00\x00\x00\xc1", b"\x03\x00\x00\x00\x01\x00\x90"])
def test_malformed_records_are_record_errors(raw: bytes) -> None:
    with pytest.raises(RecordError):
        to_payload(raw)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.SUCCESS), (204, Outcome.SUCCESS), (400, Outcome.REFUSED), (413, Outcome.REFUSED), (408, Outcome.RETRY), (429, Outcome.RETRY), (500, Outcome.RETRY), (503, Outcome.RETRY), (302, Outcome.RETRY), (None, Outcome.RETRY), (401, Outcome.TERMINAL), (403, Outcome.TERMINAL), (404, Outcome.TERMINAL)],
)
def test_r68_response_classification(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome


# --------------------------------------------------------------------------- rings


def test_ring_wraps_and_keeps_order(names: StoreNames) -> None:
    reg = Registry(names)
    ring = reg.claim(4096)
    consumer = Ring.open(names, ring.ring_id)
    sent, got = [], []
    for i in range(2000):
        record = f"event-{i}-".encode() * (1 + i % 7)
        if ring.append_record(record):
            sent.append(record)
        if i % 13 == 0:
            got += consumer.take(1000)
            consumer.commit()
    got += consumer.take(10_000)
    consumer.commit()
    assert got == sent and len(sent) > 500
    assert ring.words[W_DROPPED] == 2000 - len(sent)


def test_r67_full_ring_drops_the_new_event_and_counts_it(names: StoreNames) -> None:
    ring = Registry(names).claim(4096)
    appended = 0
    while ring.append_record(b"x" * 100):
        appended += 1
    assert ring.append_record(b"x" * 100) is False
    assert ring.words[W_DROPPED] == 2
    consumer = Ring.open(names, ring.ring_id)
    records = consumer.take(10_000)
    assert records == [b"x" * 100] * appended  # the old events were kept, not overwritten


def test_ring_memory_follows_the_backlog_not_the_capacity(names: StoreNames) -> None:
    # Issue 8: a 16 MiB ring per worker must not cost 16 MiB while the sync
    # process keeps it drained. Three laps of a 4 MiB ring, drained every
    # 100 records: the ring never holds more than its last reservations.
    ring = Registry(names).claim(4 * 1024 * 1024)
    consumer = Ring.open(names, ring.ring_id)
    assert ring.resident_bytes <= HEADER + RESERVE
    record = b"e" * 200
    peak = 0
    for i in range(65_000):
        assert ring.append_record(record)
        if i % 100 == 99:
            assert consumer.take(1000) == [record] * 100
            consumer.commit()
        if i % 50 == 0:
            peak = max(peak, ring.resident_bytes)
    assert ring.words[W_HEAD] > 3 * ring.capacity
    assert peak <= HEADER + 3 * RESERVE, peak


def test_ring_without_consumer_grows_to_its_capacity_then_gives_memory_back(names: StoreNames) -> None:
    ring = Registry(names).claim(1024 * 1024)
    consumer = Ring.open(names, ring.ring_id)
    written = 0
    while ring.append_record(b"k" * 500):
        written += 1
    assert ring.resident_bytes >= ring.capacity  # every page holds unread events (R-67: kept, not overwritten)
    assert consumer.take(10**6) == [b"k" * 500] * written
    consumer.commit()
    for _ in range(2 * RESERVE // 508):  # the next reservation releases the drained lap
        assert ring.append_record(b"k" * 500)
    assert ring.resident_bytes <= HEADER + 3 * RESERVE
    assert len(consumer.take(10**6)) == 2 * RESERVE // 508


@settings(max_examples=60, deadline=None)
@given(
    pages=st.integers(1, 12),
    reserve_pages=st.sampled_from([1, 2, 16]),
    ops=st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 6)), min_size=1, max_size=300),
)
def test_released_pages_never_hold_unread_records(pages: int, reserve_pages: int, ops: list[tuple[int, int]]) -> None:
    # Any interleaving of appends, takes and commits, any ring and
    # reservation size: what comes out is exactly what went in, in order --
    # a page released too early would read back as zeros.
    import featbit_shm.shm.ring as ring_module

    names = StoreNames.for_env("", f"ev-{uuid.uuid4().hex[:10]}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ring_module, "RESERVE", reserve_pages * PAGE)
        ring = Registry(names).claim(pages * PAGE)
        consumer = Ring.open(names, ring.ring_id)
        try:
            sent: list[bytes] = []
            got: list[bytes] = []
            for n, (size, action) in enumerate(ops):
                record = bytes([n % 251 + 1]) * size
                if ring.append_record(record):
                    sent.append(record)
                if action == 0:
                    got += consumer.take(3)
                elif action == 1:
                    consumer.commit()
            got += consumer.take(10**6)
            consumer.commit()
            assert got == sent
            assert consumer.words[W_MALFORMED] == 0
        finally:
            consumer.close()
            ring.close()
            _unlink_store(names)


def test_release_spares_consumed_pages_that_the_next_lap_already_rewrote(names: StoreNames, monkeypatch: pytest.MonkeyPatch) -> None:
    # The one case where "below tail" is not enough: a nearly full ring, a
    # reservation that spans a whole lap, and a producer that re-read tail
    # when the ring looked full and wrote into the next lap before its next
    # reservation. Positions in KiB; records are 1 KiB framed.
    import featbit_shm.shm.ring as ring_module

    monkeypatch.setattr(ring_module, "RESERVE", 4 * PAGE)
    ring = Registry(names).claim(4 * PAGE)  # 16 KiB
    consumer = Ring.open(names, ring.ring_id)
    record = iter(bytes([i % 250 + 1]) * 1020 for i in range(10**6))
    sent: list[bytes] = []

    def write_until(kib: int) -> None:
        while ring.words[W_HEAD] < kib * 1024:
            sent.append(next(record))
            assert ring.append_record(sent[-1])

    got: list[bytes] = []
    write_until(9)
    got += consumer.take(9)
    consumer.commit()  # tail 9
    write_until(25)  # one reservation at 16: releases [0, 8), reserves [16, 32)
    got += consumer.take(11)
    consumer.commit()  # tail 20; the producer still believes 9
    write_until(32)  # looks full at 25: re-reads tail, writes [25, 32) into ring offsets 9..16
    write_until(33)  # the next reservation must not release offsets 9..16
    got += consumer.take(10**6)
    assert got == sent and consumer.words[W_MALFORMED] == 0


def test_full_dev_shm_drops_and_counts_events_instead_of_sigbus(names: StoreNames, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import featbit_shm.shm.ring as ring_module

    ring = Registry(names).claim(1024 * 1024)
    kept = 0
    while ring.words[W_HEAD] + 1000 < RESERVE:
        assert ring.append_record(b"a" * 900)
        kept += 1

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ring_module, "_fallocate", no_space)
    refused = sum(1 for _ in range(10) if not ring.append_record(b"a" * 900))
    assert refused == 10 and ring.words[W_NOSPACE] == 10 and ring.words[W_DROPPED] == 10
    monkeypatch.setattr(ring_module, "_fallocate", os.posix_fallocate)  # room again: events flow again
    assert ring.append_record(b"b" * 900)
    consumer = Ring.open(names, ring.ring_id)
    assert consumer.take(10**6) == [b"a" * 900] * kept + [b"b" * 900]


def test_fork_child_claims_its_own_ring(names: StoreNames) -> None:
    recorder = EventRecorder(names, ring_bytes=8192)
    assert recorder.record_identify({"key": "parent"})
    parent_ring = recorder._ring
    recorder._forget_after_fork()  # what os.register_at_fork runs in a child (injected)
    assert recorder.record_identify({"key": "child"})
    assert recorder._ring is not parent_ring and recorder._ring.name != parent_ring.name
    assert len(Registry(names).slots()) == 2


# --------------------------------------------------------------------------- pump rules with a recording post (no network)


class Recorder:
    def __init__(self, statuses: list[int | None] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[list[dict[str, Any]]] = []

    def __call__(self, body: bytes) -> int | None:
        status = self.statuses.pop(0) if self.statuses else 200
        self.bodies.append(json.loads(body))
        return status


def record_evals(names: StoreNames, n: int, prefix: str = "u") -> EventRecorder:
    recorder = EventRecorder(names, ring_bytes=1 << 20)
    for i in range(n):
        assert recorder.record_eval({"key": f"{prefix}{i}"}, "f", "v", "val", False)
    return recorder


def test_r67_batches_of_at_most_50(names: StoreNames) -> None:
    record_evals(names, 120)
    post = Recorder()
    pump = EventPump(names, post, sleep=lambda s: None)
    assert pump.drain(5)
    assert [len(body) for body in post.bodies] == [50, 50, 20]
    assert pump.sent == 120
    pump.close()


def test_r68_500_then_200_is_retried_200ms_later_with_the_same_payload(names: StoreNames) -> None:
    record_evals(names, 10)
    post = Recorder([500, 200])
    now = [0.0]
    pump = EventPump(names, post, concurrency=0, clock=lambda: now[0])
    pump.cycle(force=True)
    assert len(post.bodies) == 1 and pump.sent == 0
    now[0] = 0.19
    pump.cycle(force=True)
    assert len(post.bodies) == 1  # not before the retry delay, even when forced
    now[0] = 0.2
    pump.cycle(force=True)
    assert len(post.bodies) == 2 and post.bodies[0] == post.bodies[1]  # same payload, same timestamps (R-65)
    assert pump.sent == 10 and pump.failed == 0
    pump.close()


def test_events_max_retries_and_retry_interval_configure_the_pump(names: StoreNames) -> None:
    # Config.events_max_retries / events_retry_interval reach the pump (issue 15:
    # they were accepted and ignored): that many quick retries, that far apart.
    record_evals(names, 10)
    post = Recorder([500, 500, 500, 200])
    now = [0.0]
    pump = EventPump(names, post, attempts=4, retry_delay=0.7, concurrency=0, clock=lambda: now[0])
    for step in range(4):
        now[0] = step * 0.7
        pump.cycle(force=True)
        assert len(post.bodies) == step + 1
    assert pump.sent == 10
    pump.close()


def test_an_outage_backs_off_with_jitter_and_keeps_every_event(names: StoreNames) -> None:
    """Issue 9 (the soak) and 18: a batch that keeps failing for a reason
    that may pass is never thrown away; retries come ever further apart
    (doubling, capped at 10 s, jittered), and the events wait."""
    record_evals(names, 10)
    post = Recorder([503] * 9 + [200])
    now = [0.0]
    pump = EventPump(names, post, concurrency=0, clock=lambda: now[0], rand=lambda: 0.5)
    waits = []
    for _ in range(20_000):  # bounded: 1,000 s of the pump's clock (a pump that never posts fails, never hangs)
        if pump.sent or len(post.bodies) >= 10:
            break
        before = len(post.bodies)
        pump.cycle()
        if len(post.bodies) > before:
            waits.append(now[0])
        now[0] = round(now[0] + 0.05, 2)
    assert pump.sent == 10 and pump.failed == 0 and len(post.bodies) == 10
    gaps = [round(b - a, 2) for a, b in zip(waits, waits[1:])]
    assert gaps[0] == pytest.approx(0.2, abs=0.051)  # R-68: the first retry 200 ms later
    assert all(later >= earlier for earlier, later in zip(gaps, gaps[1:]))  # then further and further apart
    assert gaps[-1] >= 5 and max(gaps) <= 10.05  # up to the cap (one probe at least every 10 s)
    assert all(body == post.bodies[0] for body in post.bodies)  # the same payload every time (R-65)
    pump.close()


def test_requests_failing_together_are_one_failure_not_a_longer_backoff(names: StoreNames) -> None:
    # bench_delivery: 24 requests in flight all answered 503 stepped the
    # backoff 24 times, and a 5 s outage took 15-20 s to recover from.
    record_evals(names, 2000)
    lock = threading.Lock()
    failing = [True]
    sent_at: list[tuple[float, int]] = []
    start = time.monotonic()

    def post(body: bytes) -> int:
        with lock:
            sent_at.append((time.monotonic() - start, 503 if failing[0] else 200))
        time.sleep(0.01)
        return 503 if failing[0] else 200

    pump = EventPump(names, post, concurrency=8)
    pump._proven = True  # as after earlier successes: the outage meets 8 requests in flight
    pump.cycle(force=True)
    assert eventually(lambda: pump.cycle() is not None and pump._failures >= 1 and not pump._in_flight, timeout=10)
    assert pump._failures == 1  # 8 failures of one moment: one step
    failing[0] = False
    assert pump.drain(30) and pump.sent == 2000
    pump.close()


def test_retry_after_is_honoured(names: StoreNames) -> None:
    # FeatBit's per-environment rate limit answers 429 with Retry-After.
    record_evals(names, 5)
    replies: list[Reply | int | None] = [Reply(429, 7.0), Reply(503, 2.0), 200]
    bodies: list[bytes] = []

    def post(body: bytes) -> Reply | int | None:
        bodies.append(body)
        return replies.pop(0)

    now = [0.0]
    pump = EventPump(names, post, concurrency=0, clock=lambda: now[0])
    pump.cycle(force=True)
    now[0] = 6.9
    pump.cycle(force=True)
    assert len(bodies) == 1
    now[0] = 7.0
    pump.cycle(force=True)
    assert len(bodies) == 2
    now[0] = 8.9
    pump.cycle(force=True)
    assert len(bodies) == 2
    now[0] = 9.0
    pump.cycle(force=True)
    assert len(bodies) == 3 and pump.sent == 5
    pump.close()


def test_retry_after_header_values() -> None:
    assert retry_after("120", 0.0) == 120.0
    assert retry_after("100000", 0.0) == 300.0  # capped
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after("soon", 0.0) is None and retry_after(None, 0.0) is None
    assert backoff(1, 0.9) == 0.2 and 0.2 <= backoff(2, 0.0) <= backoff(2, 0.99) <= 0.4
    assert backoff(40, 0.99) <= 30.0


def test_a_400_or_413_drops_only_the_events_at_fault(names: StoreNames, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18: one user with a 1 MB attribute behind a proxy's body limit
    (413), or one event FeatBit cannot read (400), stopped delivery for every
    worker (or was retried for ever). Now the batch is split until the
    objects at fault are found; only they are dropped, counted and logged
    with their flag key and size, never the user's attributes."""
    control = ControlBlock(bytearray(SIZE))
    control.initialize()
    recorder = EventRecorder(names, ring_bytes=1 << 20)
    for i in range(50):
        user = {"key": f"u{i}", "secret-attr": "poison" if i in (7, 31) else "fine"}
        assert recorder.record_eval(user, f"flag-{i}", "v", "on", False)

    def post(body: bytes) -> int:
        objects = json.loads(body)
        posted.append(len(objects))
        return 413 if b"poison" in body else 200

    posted: list[int] = []
    pump = EventPump(names, post, control, concurrency=0)
    stop = threading.Event()
    thread = threading.Thread(target=pump.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.WARNING, logger="featbit_shm"):
        thread.start()
        try:
            assert recorder.flush_and_wait(10) is False  # processed, and two of this process's events were lost
            assert pump.sent == 48 and pump.refused == 2 and pump.failed == 0
            assert control.counter("events_refused") == 2 and control.counter("events_sent") == 48
            assert posted[0] == 50 and len(posted) < 25  # halving, not one request per event
            assert not pump.stopped  # and delivery goes on
            assert recorder.record_eval({"key": "later"}, "f", "v", "on", False)
            assert recorder.flush_and_wait(10) is True  # nothing lost since
        finally:
            stop.set()
            thread.join(10)
    assert "flag-7" in caplog.text and "HTTP 413" in caplog.text and "poison" not in caplog.text
    pump.close()


def test_requests_go_out_concurrently_once_the_endpoint_has_taken_one(names: StoreNames) -> None:
    record_evals(names, 2000)
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most seen
    bodies: list[int] = []

    def post(body: bytes) -> int:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
            bodies.append(body.count(b'"keyId"'))
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return 200

    pump = EventPump(names, post, concurrency=8)
    assert pump.drain(60)
    assert pump.sent == 2000 and sum(bodies) == 2000 and max(bodies) <= 50
    assert 1 < in_flight[1] <= 8  # several in flight, never more than the bound
    pump.close()


def test_events_left_at_the_shutdown_deadline_by_exited_workers_count_as_failed(names: StoreNames) -> None:
    record_evals(names, 10)
    post = Recorder([503] * 1000)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    pump = EventPump(names, post, sleep=sleep, clock=lambda: now[0], alive=lambda pid: False)
    assert not pump.shutdown(timeout=2.0)
    assert pump.failed == 10 and pump.sent == 0
    assert Registry(names).slots() == []  # the exited worker's ring is gone
    pump.close()


def test_a_pump_killed_before_sending_leaves_its_events_for_the_next(names: StoreNames) -> None:
    """Issue 9 (the soak): records taken into a pump's buffer stay in the ring
    until FeatBit accepted them, so a sync process SIGKILLed between taking
    and sending loses none (its successor sends them)."""
    record_evals(names, 10)
    first = EventPump(names, Recorder(), sleep=lambda s: None, flush_interval=3600)
    first.cycle()  # taken, not due yet
    assert first.sent == 0
    # (killed here: nothing more of it runs)
    post = Recorder()
    second = EventPump(names, post, sleep=lambda s: None)
    assert second.drain(5)
    assert sorted(o["user"]["keyId"] for body in post.bodies for o in body) == [f"u{i}" for i in range(10)]
    first.close()
    second.close()


@pytest.mark.subprocess
def test_a_successor_counts_every_event_after_a_dead_workers_ring_was_reclaimed(names: StoreNames) -> None:
    """A helper's run: a worker SIGKILLed, then the leader SIGKILLed mid-burst;
    every event was delivered, but status said recorded 589-595 against sent
    601. The successor took the previous leader's recorded total minus the
    live rings as they were *now*, so what the live rings recorded after the
    last publish was subtracted from the reclaimed rings' share."""
    control = ControlBlock(bytearray(SIZE))
    control.initialize()
    child = os.fork()
    if child == 0:  # a worker that records, then dies
        try:
            record_evals(names, 7, prefix="dead")
        finally:
            os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    live = record_evals(names, 5, prefix="live")  # this process: its ring stays
    first = EventPump(names, Recorder(), control, sleep=lambda s: None)
    assert first.drain(5)
    assert first.sent == 12 and control.counter("events_recorded") == 12
    assert len(Registry(names).slots()) == 1  # the dead worker's ring was drained and removed
    for i in range(4):  # recorded after the first pump's last publish
        assert live.record_eval({"key": f"later{i}"}, "f", "v", "val", False)
    # (the first pump is SIGKILLed here: it publishes nothing more)
    second = EventPump(names, Recorder(), control, sleep=lambda s: None)
    assert second.drain(5)
    totals = second.totals()
    assert totals["sent"] == 16 and totals["queued"] == 0
    assert totals["recorded"] == 16  # recorded = sent + queued + every loss (all 0 here)
    assert control.counter("events_recorded") == 16
    first.close()
    second.close()


def test_r68_401_stops_delivery_for_good(names: StoreNames) -> None:
    control = ControlBlock(bytearray(SIZE))
    control.initialize()
    recorder = record_evals(names, 60)
    post = Recorder([401])
    pump = EventPump(names, post, control, sleep=lambda s: None)
    pump.drain(5)
    assert len(post.bodies) == 1  # the second slice is never attempted (one request until one succeeds)
    assert pump.stopped and control.counter("delivery_stopped") == 1
    assert (pump.sent, pump.failed) == (0, 60)
    assert recorder._ring is not None and recorder._ring.words[W_LOST] == 60  # its flush_and_wait() will say False
    record_evals(names, 5, prefix="later")
    pump.drain(5)
    assert len(post.bodies) == 1
    pump.close()


def test_malformed_records_are_skipped_counted_and_the_rest_delivered(names: StoreNames) -> None:
    recorder = record_evals(names, 3)
    ring = recorder._ring
    for garbage in (b"\xc1\xc1", os.urandom(40), msgpack.packb({"not": "a record"})):
        assert ring.append_record(garbage)
    recorder.record_eval({"key": "after"}, "f", "v", "val", True)
    post = Recorder()
    pump = EventPump(names, post, sleep=lambda s: None)
    pump.drain(5)
    keys = [o["user"]["keyId"] for body in post.bodies for o in body]
    assert keys == ["u0", "u1", "u2", "after"]
    assert pump.malformed == 3 and ring.words[W_MALFORMED] == 3
    pump.close()


@pytest.mark.subprocess
def test_dead_process_ring_is_drained_then_reclaimed(names: StoreNames) -> None:
    code = f"""
import sys
from featbit_shm.shm import ring as ring_module
from featbit_shm.worker.recorder import EventRecorder
from featbit_shm.shm.names import StoreNames
r = EventRecorder(StoreNames({names.tag!r}), ring_bytes=1 << 20)
for i in range(1000):
    r.record_eval({{"key": "k%d" % i}}, "f", "v", "val", False)
print("done", flush=True)
sys.stdin.readline()
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    post = Recorder()
    pump = EventPump(names, post, sleep=lambda s: None)
    assert pump.drain(5)
    assert sorted(int(o["user"]["keyId"][1:]) for body in post.bodies for o in body) == list(range(1000))
    registry = Registry(names)
    # the dead worker's ring (id 1) is gone; what remains are empty spares
    assert registry.slots() == [] and not any(n.endswith(".r1") for n in names.existing("r"))
    assert registry.spares_wanted(lambda pid: False)[0] == len(names.existing("r"))
    pump.close()
    assert names.existing("r") == []


@pytest.mark.subprocess
def test_a_worker_that_asked_for_a_flush_and_exited_is_reclaimed_cleanly(names: StoreNames, caplog: pytest.LogCaptureFixture) -> None:
    """gunicorn's worker_exit stops the client, which asks for a flush, and
    the worker is gone by the next cycle: its events are sent, its ring is
    reclaimed, and the cycle does not touch the closed ring (found by
    bench_fleet: "operation forbidden on released memoryview")."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        recorder = EventRecorder(names, ring_bytes=1 << 16)
        recorder.record_eval({"key": "leaving"}, "f", "v", "on", False)
        recorder.flush()
        os._exit(0)
    os.waitpid(pid, 0)
    post = Recorder()
    pump = EventPump(names, post, sleep=lambda s: None, spare_rings=0, concurrency=0)
    assert pump.cycle(force=True)  # raises nothing; everything drained
    assert [o["user"]["keyId"] for body in post.bodies for o in body] == ["leaving"]
    assert Registry(names).slots() == [] and names.existing("r") == []
    pump.close()


def test_a_client_registers_and_claims_its_ring_under_one_lock(names: StoreNames, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 8 cold start: the registry's file lock is the slow part of a fresh
    # fork's attach; building a client takes it once, for both.
    import featbit_shm.client as client_module

    taken = []
    real_locked = Registry._locked

    def counting(self: Registry) -> Any:
        taken.append(1)
        return real_locked(self)

    monkeypatch.setattr(Registry, "_locked", counting)
    monkeypatch.setattr(client_module.StoreNames, "for_env", staticmethod(lambda secret, namespace: names))
    client = FBClient(Config("secret", "http://127.0.0.1:9", "ws://127.0.0.1:9", start_sync=False, event_ring_bytes=1 << 16), start_wait=0)
    try:
        assert len(taken) == 1
        ring = client._events._ring
        assert ring is not None and ring.capacity == 1 << 16
        states = Registry(names)
        assert [(pid, ring_id) for _slot, pid, ring_id, *_rest in states.slots()] == [(os.getpid(), int(ring.name.rsplit(".r", 1)[1]))]
        client.variation("missing", {"key": "u"}, "d")
        assert len(taken) == 1  # the first event needed no lock
    finally:
        client.stop()


@pytest.mark.subprocess
def test_registry_lock_excludes_other_processes_and_dies_with_its_holder(names: StoreNames) -> None:
    import threading

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from featbit_shm.shm.registry import Registry\n"
         "from featbit_shm.shm.names import StoreNames\n"
         f"r = Registry(StoreNames({names.tag!r}))\n"
         "with r._locked():\n    print('held', flush=True)\n    time.sleep(600)\n"],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        got = threading.Event()

        def take() -> None:
            with Registry(names)._locked():
                got.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not got.wait(0.5)  # excluded while the holder lives
        holder.send_signal(signal.SIGKILL)
        assert got.wait(30)  # the kernel released it with the dead holder
    finally:
        holder.kill()
        holder.wait()


def test_warm_attach_path_leaves_nothing_behind(names: StoreNames) -> None:
    from featbit_shm.worker.host import warm_attach_path

    warm_attach_path(names)  # no store at all: a no-op, no exception
    # Every object kind of the store (control, registry, snapshots, rings):
    # the registry's `.reg` once went unseen here.
    assert names.all_objects() == []
    registry = Registry(names)
    assert registry.slots() == [] and registry.live_processes(lambda pid: True) == 0
    assert names.existing("r") == []


def test_registration_survives_a_ring_that_cannot_be_had(names: StoreNames, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import featbit_shm.shm.ring as ring_module

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    registry = Registry(names)
    with registry._locked():
        registry._map()  # the registry itself exists already
    monkeypatch.setattr(ring_module, "_fallocate", no_space)
    assert registry.register_client(1 << 16) is None
    assert registry.live_processes(lambda pid: pid == os.getpid()) == 1  # registered all the same
    assert names.existing("r") == []  # no half-made ring left behind
    monkeypatch.setattr(ring_module, "_fallocate", os.posix_fallocate)
    recorder = EventRecorder(names, ring_bytes=1 << 16, registry=registry)
    assert recorder.record_identify({"key": "k"})  # the first event claims it now


def test_spare_rings_are_ready_before_a_worker_records_and_claimed_without_allocation(names: StoreNames) -> None:
    """Issue 6 (attach <= 5 ms): reserving a ring's memory is the slow part of
    a worker's first event, so the sync process keeps spares: one more than
    the registered clients without a ring. A claim takes a spare of its
    capacity; other capacities make their own; spares never count as live
    processes and go away at a clean stop."""
    clock = [0.0]
    pump = EventPump(names, Recorder(), sleep=lambda s: None, clock=lambda: clock[0], ring_bytes=1 << 16)
    registry = Registry(names)
    registry.register_client()  # this process: a client with no ring yet
    pump.cycle()
    spares = sorted(names.existing("r"))
    assert len(spares) == 2 and registry.spares_wanted(lambda pid: True) == (2, 2)
    assert registry.live_processes(lambda pid: pid == os.getpid()) == 1  # spares are not processes
    recorder = EventRecorder(names, ring_bytes=1 << 16)
    assert recorder.record_eval({"key": "k"}, "f", "v", "val", False)
    assert sorted(names.existing("r")) == spares  # the claim took a spare: nothing new was created
    assert [pid for _slot, pid, *_rest in registry.slots()] == [os.getpid()]
    other = registry.claim(1 << 15)  # another capacity: a new ring of its own
    assert other.capacity == 1 << 15 and len(names.existing("r")) == 3
    other.close()
    clock[0] += 1
    pump.cycle()  # this process now has a ring: one spare wanted, one there
    assert registry.spares_wanted(lambda pid: True) == (1, 1)
    assert pump.drain(5) and pump.sent == 1
    pump.close()  # a clean stop removes the spares, not the claimed rings
    assert len(names.existing("r")) == 2


def test_a_vanished_spare_is_skipped(names: StoreNames) -> None:

    registry = Registry(names)
    ring_id = registry.add_spare(1 << 16)
    assert ring_id is not None
    os.unlink("/dev/shm" + names.existing("r")[0])
    ring = registry.claim(1 << 16)
    assert ring.name != names.existing("r") or ring_id != int(ring.name.rsplit(".r", 1)[1])
    assert registry.spares_wanted(lambda pid: False)[0] == 0
    ring.close()


user_values = st.one_of(st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.floats(allow_nan=False, width=32))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["key", "name", "country", "age", "beta"]), user_values, min_size=1), min_size=1, max_size=6))
def test_eval_encoder_bytes_equal_encode_eval_whatever_the_user_history(users: list[dict[str, Any]]) -> None:
    """The hot-path encoder keeps a packed user only while it cannot differ
    from packing afresh: the same dict, reused or mutated in place (1 -> True
    is equal but packs differently), must give encode_eval's exact bytes."""
    encoder = EvalEncoder()
    shared: dict[str, Any] = {}
    for u in users:
        for user in (u, u, shared):
            if user is shared:
                shared.clear()
                shared.update(u)  # the same object, mutated in place
            for ts in (7, 1_700_000_000_000, 2**32, 2**32 - 1, 2**64 - 1):  # small, real and edge timestamps
                assert encoder.eval(ts, user, "f", "v", "x", True) == encode_eval(PACKER, ts, user, "f", "v", "x", True)
                assert encoder.eval(ts, user, "g", "w", "y", False) == encode_eval(PACKER, ts, user, "g", "w", "y", False)
    same = {"key": "k", "age": 1}
    assert encoder.eval(1, same, "f", "v", "x", True) == encode_eval(PACKER, 1, same, "f", "v", "x", True)
    same["age"] = True  # equal to 1, different bytes
    assert encoder.eval(1, same, "f", "v", "x", True) == encode_eval(PACKER, 1, same, "f", "v", "x", True)


def test_eval_encoder_tail_cache_is_bounded_and_stays_exact() -> None:
    encoder = EvalEncoder()
    user = {"key": "k", "name": "n"}
    for i in range(EvalEncoder.MAX_TAILS + 10):
        ts = 1_700_000_000_000 + i
        assert encoder.eval(ts, user, f"flag-{i}", "v", "x", i % 2 == 0) == encode_eval(PACKER, ts, user, f"flag-{i}", "v", "x", i % 2 == 0)
        assert len(encoder.tails) <= EvalEncoder.MAX_TAILS


class _CountingWriter:
    def __init__(self, writer: Any) -> None:
        self.writer, self.fast = writer, 0

    def append_eval(self, ts_ns: int, tail: bytes, user: bytes) -> bool:
        done = bool(self.writer.append_eval(ts_ns, tail, user))
        self.fast += done
        return done

    def release(self) -> None:
        self.writer.release()


@pytest.mark.skipif(ring_module._FastWriter is None, reason="the C fast path was not built (no compiler at install)")
@settings(max_examples=40, deadline=None)
@given(
    pages=st.integers(1, 6),
    ops=st.lists(
        st.tuples(st.sampled_from([{"key": "a", "name": "n"}, {"key": "b", "n": 1}, {"key": "c" * 300}]), st.integers(0, 2000), st.booleans(), st.integers(0, 4)),
        min_size=1,
        max_size=150,
    ),
)
def test_c_fast_path_writes_exactly_what_the_python_path_writes(pages: int, ops: list[tuple[dict[str, Any], int, bool, int]]) -> None:
    # Two recorders, one with the C fast path and one without, fed the same
    # events at the same clock: every byte and header word of their rings
    # stays equal, across wraps, reservations, releases and full rings.
    clock = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1_000_003))
    sides = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("featbit_shm.worker.recorder._time_ns", lambda: ts[0])
        ts = [0]
        for pure in (False, True):
            names = StoreNames.for_env("", f"ev-{uuid.uuid4().hex[:10]}")
            mp.setenv("FEATBIT_SHM_PURE_PYTHON", "1") if pure else mp.delenv("FEATBIT_SHM_PURE_PYTHON", raising=False)
            recorder = EventRecorder(names, ring_bytes=pages * PAGE)
            assert recorder.record_eval({"key": "first"}, "f", "v", "x", False)
            ring = recorder._ring
            assert (ring.writer is None) == pure
            if not pure:
                ring.writer = counting = _CountingWriter(ring.writer)
            sides.append((names, recorder, ring, Ring.open(names, ring.ring_id)))
        try:
            for user, size, expt, action in ops:
                ts[0] = next(clock)
                results = [recorder.record_eval(user, "flag", "var", "v" * size, expt) for _n, recorder, _r, _c in sides]
                assert results[0] == results[1]
                if action == 0:
                    for _n, _rec, _r, consumer in sides:
                        consumer.take(2)
                        consumer.commit()
                (_, _, fast, _), (_, _, slow, _) = sides
                assert bytes(fast.data) == bytes(slow.data)
                assert fast.words.tolist()[:13] == slow.words.tolist()[:13]
            assert counting.fast > 0 or all(size > pages * PAGE // 2 for _u, size, _e, _a in ops) or len(ops) < 3
        finally:
            for names, recorder, ring, consumer in sides:
                recorder.stop()
                consumer.close()
                ring.close()
                _unlink_store(names)


def test_pure_python_recorder_delivers_the_same_payloads(names: StoreNames, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATBIT_SHM_PURE_PYTHON", "1")
    recorder = EventRecorder(names, ring_bytes=1 << 16)
    user = {"key": "u", "name": "N", "country": "fr"}
    assert recorder.record_eval(user, "flag", "v1", "on", True)
    assert recorder._ring.writer is None
    record = Ring.open(names, recorder._ring.ring_id).take(1)[0]
    payload = Renderer().render(record)
    assert json.loads(payload)["variations"][0]["variation"] == {"id": "v1", "value": "on"}
    assert json.loads(payload)["user"] == {"keyId": "u", "name": "N", "customizedProperties": [{"name": "country", "value": "fr"}]}


def test_recorded_bytes_equal_encode_eval(names: StoreNames, monkeypatch: pytest.MonkeyPatch) -> None:
    # The recorder inlines EvalEncoder.eval (and, with the C fast path,
    # frames in C): what lands in the ring is encode_eval's record.
    monkeypatch.setattr("featbit_shm.worker.recorder._time_ns", lambda: 1_700_000_000_123_456_789)
    recorder = EventRecorder(names, ring_bytes=1 << 18)
    consumer = None
    for user in ({"key": "u"}, {"key": "u", "n": 1.5}, {"key": "w" * 60000}):
        assert recorder.record_eval(user, "flag", "v1", "on", False)
        consumer = consumer or Ring.open(names, recorder._ring.ring_id)
        assert consumer.take(1) == [encode_eval(PACKER, 1_700_000_000_123_456_789, user, "flag", "v1", "on", False)[4:]]


# --------------------------------------------------------------------------- real processes against the stand-in


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[b.flag("f", variations=["on", "off"], variation_type="string", updated_at=1000)]) as s:
        yield s


WORKER = r"""
import os, sys, time
from featbit_shm import Config, FBClient
secret, event_url, streaming_url, namespace, prefix, count = sys.argv[1:7]
client = FBClient(Config(secret, event_url, streaming_url, namespace=namespace), start_wait=20)
assert client.initialize
for i in range(int(count)):
    assert client.variation("f", {"key": f"{prefix}-{i}", "name": "n"}, "d") == "on"
print("recorded", flush=True)
if sys.argv[7] == "wait":
    print("flushed" if client.flush_and_wait(60) else "timeout", flush=True)
else:
    sys.stdin.readline()
"""


def start_worker(env: SyncFixture, prefix: str, count: int, mode: str = "wait") -> subprocess.Popen[str]:
    s = env.server
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, s.secret, s.event_url, s.streaming_url, env.namespace, prefix, str(count), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def received_keys(server: FeatBitStandIn, prefix: str) -> list[str]:
    return [e["user"]["keyId"] for e in list(server.events) if e["user"]["keyId"].startswith(prefix + "-")]


@pytest.mark.subprocess
def test_100k_events_from_4_processes_each_received_exactly_once(server: FeatBitStandIn) -> None:
    with sync_env(server) as env:
        env.spawn()
        workers = [start_worker(env, f"w{i}", 25_000) for i in range(4)]
        outputs = [w.communicate(timeout=240)[0].split() for w in workers]
        assert all(out == ["recorded", "flushed"] for out in outputs), outputs
        for i in range(4):
            keys = received_keys(server, f"w{i}")
            assert len(keys) == 25_000 and len(set(keys)) == 25_000
        stamps = [e["variations"][0]["timestamp"] for e in server.events]
        assert all(isinstance(t, int) and t > 1_600_000_000_000 for t in stamps)


@pytest.mark.subprocess
def test_worker_sigkilled_after_1000_events_loses_none(server: FeatBitStandIn) -> None:
    with sync_env(server) as env:
        env.spawn()
        worker = start_worker(env, "killed", 1000, mode="hold")
        assert worker.stdout is not None and worker.stdout.readline().strip() == "recorded"
        owned = {env.names.ring(ring_id) for _slot, pid, ring_id, *_rest in Registry(env.names).slots() if pid == worker.pid}
        assert len(owned) == 1
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert eventually(lambda: len(received_keys(server, "killed")) >= 1000, timeout=30)
        assert sorted(received_keys(server, "killed")) == sorted(f"killed-{i}" for i in range(1000))
        assert eventually(lambda: not owned & set(env.names.existing("r")), timeout=10)  # its ring was reclaimed


@pytest.mark.subprocess
def test_graceful_stop_with_5000_events_queued_delivers_them_all(server: FeatBitStandIn) -> None:
    with sync_env(server) as env:
        proc = env.spawn()
        reader = env.reader()
        assert eventually(lambda: env.leader_ready(reader))
        os.kill(proc.pid, signal.SIGSTOP)  # the pump cannot drain: events stay queued in the ring
        worker = start_worker(env, "queued", 5000, mode="hold")
        assert worker.stdout is not None and worker.stdout.readline().strip() == "recorded"
        assert received_keys(server, "queued") == []
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        started = time.monotonic()
        assert proc.wait(30) == 0
        assert time.monotonic() - started < 10  # R-70: a bounded shutdown
        assert len(set(received_keys(server, "queued"))) == 5000
        worker.kill()
        worker.wait(10)


@pytest.mark.subprocess
def test_sync_dead_events_kept_until_ring_fills_then_delivered_by_new_leader(server: FeatBitStandIn) -> None:
    with sync_env(server) as env:
        env.spawn()
        reader = env.reader()
        assert eventually(lambda: env.leader_ready(reader))
        # A worker in this process, with a small ring, while no sync process runs.
        client = FBClient(Config(server.secret, server.event_url, server.streaming_url, namespace=env.namespace, event_ring_bytes=64 * 1024), start_wait=20)
        for pid in processes_of(env.namespace):
            os.kill(pid, signal.SIGKILL)
        assert eventually(lambda: processes_of(env.namespace) == [])
        recorded = 3000
        started = time.perf_counter()
        for i in range(recorded):
            assert client.variation("f", {"key": f"dead-{i}"}, "d") == "on"  # evaluation goes on
        per_call_us = (time.perf_counter() - started) / recorded * 1e6
        ring = client._events._ring
        dropped = int(ring.words[W_DROPPED])
        assert 0 < dropped < recorded  # the ring filled, the NEW events were dropped and counted
        env.spawn()  # a new leader drains what was kept
        assert eventually(lambda: len(received_keys(server, "dead")) == recorded - dropped, timeout=30)
        keys = received_keys(server, "dead")
        # The oldest were kept (requests in flight at once may arrive in any order).
        assert sorted(keys, key=lambda k: int(k.split("-")[1])) == [f"dead-{i}" for i in range(recorded - dropped)]
        status = env.reader()
        assert eventually(lambda: status.control is not None and status.control.counter("events_dropped") >= dropped)
        print(f"\nsync dead: {per_call_us:.1f} us per variation, {dropped} of {recorded} dropped (ring full)")
        client.stop()


@pytest.mark.subprocess
def test_401_stops_delivery_and_evaluation_is_unaffected(server: FeatBitStandIn) -> None:
    with sync_env(server) as env:
        env.spawn()
        client = FBClient(Config(server.secret, server.event_url, server.streaming_url, namespace=env.namespace), start_wait=20)
        server.fail_insight(401)
        client.variation("f", {"key": "first"}, "d")
        assert client.flush_and_wait(10) is False  # processed (not pending), and lost: the caller is told
        control = env.reader().control
        assert eventually(lambda: control.counter("delivery_stopped") == 1)
        for i in range(100):
            assert client.variation("f", {"key": f"after-{i}"}, "d") == "on"
        client.flush_and_wait(10)
        assert received_keys(server, "after") == []
        assert len([r for r in server.insight_requests if r["status"] == 401]) == 1
        client.stop()


@pytest.mark.subprocess
def test_events_semantics_through_the_client(server: FeatBitStandIn) -> None:
    """R-66: one event per successful evaluation after conversion; none for
    fallbacks, WrongType or bulk; track/identify record; nothing after stop."""
    server.set_data([b.flag("f", variations=["on", "off"], variation_type="string", updated_at=1000), b.flag("n", variations=["abc", "x"], variation_type="number", updated_at=1000)])
    with sync_env(server) as env:
        env.spawn()
        client = FBClient(Config(server.secret, server.event_url, server.streaming_url, namespace=env.namespace), start_wait=20)
        user = {"key": "sem", "name": "S"}
        client.variation("f", user, "d")
        client.variation_detail("f", user, "d")
        client.string_variation("f", user, "d")
        client.variation("missing", user, "d")  # fallback: no event
        client.variation("n", user, 0)  # WrongType: no event
        client.variation("f", {"key": ""}, "d")  # invalid user: no event
        client.get_all_latest_flag_variations(user)  # bulk: no event
        client.track_metric(user, "clicked", 2)
        client.track_metrics(user, {"a": 1, "b": 2})
        client.identify({"key": "who", "name": "W"})
        assert client.flush_and_wait(10)
        mine = [e for e in server.events if e["user"]["keyId"] in ("sem", "who")]
        evals = [e for e in mine if "variations" in e]
        metrics = [e for e in mine if "metrics" in e]
        identifies = [e for e in mine if set(e) == {"user"}]
        assert len(evals) == 3 and all(e["variations"][0]["featureFlagKey"] == "f" for e in evals)
        assert [len(m["metrics"]) for m in metrics] == [1, 2]
        assert len(identifies) == 1
        client.stop()
        client.variation("f", user, "d")
        time.sleep(1.5)
        assert len([e for e in server.events if e["user"]["keyId"] == "sem"]) == 5


@pytest.mark.subprocess
def test_no_events_offline_or_when_disabled(server: FeatBitStandIn) -> None:
    offline = FBClient(Config(offline=True))
    assert offline._events is None
    offline.track_metric({"key": "u"}, "x")  # a no-op, never an error
    assert offline.flush_and_wait(0.1) is True
    with sync_env(server) as env:
        env.spawn(disable_events=True)
        client = FBClient(Config(server.secret, server.event_url, server.streaming_url, namespace=env.namespace, disable_events=True), start_wait=20)
        assert client._events is None
        assert client.variation("f", {"key": "u"}, "d") == "on"
        assert env.names.existing("r") == []


@pytest.mark.parametrize(
    ("head", "user"),
    [((9, 1), {"key": "u"}), ((1, 1, "f", "v", "x", True), {"name": "no key"}), ((1, True, "f", "v", "x", True), {"key": "u"}), ((2, 1, [["m", "NaN-string"]]), {"key": "u"})],
)
def test_semantically_malformed_records_are_record_errors(head: tuple, user: dict) -> None:  # type: ignore[type-arg]
    from featbit_shm._core.records import frame

    with pytest.raises(RecordError):
        to_payload(frame(PACKER, head, user))


@pytest.mark.subprocess
def test_status_accounts_for_every_event_through_an_outage(server: FeatBitStandIn) -> None:
    """Issue 18.5: status showed a backlog of 5,864 while about 895,000 were
    waiting, and flush_and_wait() said True when events were lost. Now
    recorded = delivered + waiting + lost by reason, with waiting exact."""
    from featbit_shm.cli import read_status

    with sync_env(server) as env:
        env.spawn()
        client = FBClient(Config(server.secret, server.event_url, server.streaming_url, namespace=env.namespace), start_wait=20)
        assert client.variation("f", {"key": "warm-0"}, "d") == "on"
        assert client.flush_and_wait(10) is True
        server.fail_insight_for(120, 503)  # an outage
        for i in range(3000):
            client.variation("f", {"key": f"out-{i}"}, "d")
        assert client.variation("f", {"key": "big-0", "blob": "x" * 100_000}, "d") == "on"  # evaluated, event too large
        status = eventually(lambda: (s := read_status(env.names)) and s["events_recorded"] >= 3002 and s)
        assert status["events_lost"]["too_large"] == 1
        # Nothing goes out during the outage: all of it waits, and status says exactly how much.
        assert eventually(lambda: read_status(env.names)["events_queued"] == 3000, timeout=10)
        assert received_keys(server, "out") == []
        server.fail_insight_for(0)  # the outage ends (the next probe finds it so)
        assert client.flush_and_wait(60) is False  # all processed; one event of ours was lost (too large)
        assert client.flush_and_wait(10) is True  # and nothing since
        assert len(set(received_keys(server, "out"))) == 3000
        status = read_status(env.names)
        assert (status["events_recorded"], status["events_sent"], status["events_queued"]) == (3002, 3001, 0)
        assert sum(status["events_lost"].values()) == 1
        client.stop()


def test_a_ring_written_from_another_pid_namespace_is_never_taken_from_its_writer(names: StoreNames, caplog: pytest.LogCaptureFixture) -> None:
    # Found by the Kubernetes sidecar recipe: a worker in another container's
    # PID namespace looks dead to the sync process (its pid is not there, or
    # is another process), and its ring was reclaimed under it: events lost
    # silently. A ring says which namespace its pid belongs to.
    from featbit_shm.shm.ring import W_PIDNS

    recorder = record_evals(names, 5)
    ring = recorder._ring
    assert ring is not None and ring.words[W_PIDNS] != 0
    ring.words[W_PIDNS] = int(ring.words[W_PIDNS]) + 1  # as if written from another namespace
    post = Recorder()
    pump = EventPump(names, post, concurrency=0, alive=lambda pid: False)  # its pid means nothing here
    with caplog.at_level(logging.ERROR, logger="featbit_shm"):
        assert pump.drain(5)
    assert pump.sent == 5 and len(Registry(names).slots()) == 1  # delivered, and the ring kept for its writer
    assert "shareProcessNamespace" in caplog.text
    assert recorder.record_eval({"key": "later"}, "f", "v", "val", False)  # the writer goes on
    assert pump.drain(5) and pump.sent == 6
    pump.close()
