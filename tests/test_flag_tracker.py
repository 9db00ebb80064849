"""flag_tracker: change listeners without a thread (issue 6; R-80, R-88).

Covers the pure difference of two generations (data sets and shared-memory
images must agree), listener semantics on an offline client, listeners in a
real worker fed by a sync process (no events recorded for them), the opt-in
watcher, fork, and the rate-limited fork warnings.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featbit_shm import Config, FBClient
from featbit_shm._core.changes import ChangeSet, changed_keys, diff_datasets, segment_refs
from featbit_shm._core.dataset import DataSet
from featbit_shm._core.snapshot import SnapshotBuilder, SnapshotImage, root_crc
from featbit_shm._core.wire import normalize_flag, parse_data_sync
from featbit_shm._runtime.notices import warn_limited
from featbit_shm.flag_change_notification import FlagChangedListener, FlagChangedNotice
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from .sync_helpers import SyncFixture, eventually, sync_env

T0 = 1_700_000_000_000
USER = {"key": "u1", "name": "U", "country": "us"}


def doc(flags: list[dict[str, Any]], segments: list[dict[str, Any]] = (), event_type: str = "full") -> str:  # type: ignore[assignment]
    return json.dumps(b.data_sync(flags, segments, event_type=event_type))


def sflag(key: str, value: str, version: int, **kw: Any) -> dict[str, Any]:
    return b.flag(key, variations=[value, "other"], variation_type="string", updated_at=version, **kw)


def seg_flag(key: str, seg: str, version: int) -> dict[str, Any]:
    """A flag serving "in" to members of segment ``seg`` and "out" otherwise."""
    return b.flag(
        key,
        variations=["in", "out"],
        variation_type="string",
        rules=[b.rule([b.in_segment(seg)], b.serve(0))],
        fallthrough=b.serve(1),
        updated_at=version,
    )


class Recorder(FlagChangedListener):
    def __init__(self) -> None:
        self.keys: list[str] = []

    def on_flag_change(self, notice: FlagChangedNotice) -> None:
        self.keys.append(notice.flag_key)


# --------------------------------------------------------------------------- pure difference


def apply(ds: DataSet, flags: list[dict[str, Any]], segments: list[dict[str, Any]], event_type: str) -> DataSet:
    return ds.apply(parse_data_sync(b.data_sync(flags, segments, event_type=event_type)["data"]))[0]


def test_segment_refs_reads_both_segment_operators() -> None:
    f = b.flag("f", rules=[b.rule([b.in_segment("s1", "s2")], b.serve(0)), b.rule([b.not_in_segment("s3")], b.serve(1))])
    assert segment_refs(normalize_flag(f)) == {"s1", "s2", "s3"}
    assert segment_refs(normalize_flag(b.flag("g"))) == set()


def test_changed_keys_by_identity_then_content() -> None:
    a = {"x": {"v": 1}, "y": {"v": 2}, "gone": {"v": 0}}
    b_ = {"x": a["x"], "y": {"v": 2}, "new": {"v": 3}}
    assert changed_keys(a, b_) == {"gone", "new"}  # equal content is no change
    assert changed_keys(a, {**b_, "y": {"v": 9}}) == {"gone", "new", "y"}


def test_r80_duplicate_or_older_patch_reports_nothing() -> None:
    ds = apply(DataSet(), [sflag("a", "a1", T0)], [], "full")
    again = apply(ds, [sflag("a", "a0", T0 - 1)], [], "patch")
    assert diff_datasets(ds, again) == ChangeSet(frozenset(), frozenset())
    assert not diff_datasets(ds, again)


def test_r80_segment_only_change_notifies_the_flags_that_use_it() -> None:
    ds = apply(DataSet(), [seg_flag("uses-s", "s", T0), sflag("plain", "p", T0)], [b.segment("s", updated_at=T0)], "full")
    new = apply(ds, [], [b.segment("s", included=["u1"], updated_at=T0 + 1)], "patch")
    changes = diff_datasets(ds, new)
    assert changes.segments == {"s"} and changes.flags == {"uses-s"}


def test_r80_archived_flag_is_a_change() -> None:
    ds = apply(DataSet(), [sflag("a", "a1", T0), sflag("b", "b1", T0)], [], "full")
    new = apply(ds, [sflag("a", "a1", T0 + 1, archived=True)], [], "patch")
    assert diff_datasets(ds, new).flags == {"a"}


keys = st.text(alphabet="abcdef-é", min_size=1, max_size=6)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    out = []
    segs = ["s1", "s2", "s3"]
    for _ in range(draw(st.integers(2, 7))):
        event = draw(st.sampled_from(["full", "patch", "patch", "patch"]))
        flags = []
        for k in draw(st.lists(keys, max_size=25, unique=True)):
            version = draw(st.integers(1, 30))
            if draw(st.booleans()):
                flags.append(seg_flag(k, draw(st.sampled_from(segs)), version))
            else:
                flags.append(sflag(k, draw(st.sampled_from(["x", "y"])), version, archived=draw(st.booleans())))
        segments = [
            b.segment(s, included=draw(st.lists(st.sampled_from(["u1", "u2"]), unique=True)), updated_at=draw(st.integers(1, 30)))
            for s in draw(st.lists(st.sampled_from(segs), max_size=2, unique=True))
        ]
        out.append((event, flags, segments))
    return out


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(histories())
def test_image_diff_equals_data_set_diff_for_every_pair_of_generations(history: list[Any]) -> None:
    """The shared-memory diff (block compare of hash tables, table growth,
    LSM folds, full rebuilds) reports exactly what comparing the data sets
    reports, for consecutive generations and for skipped ones."""
    builder = SnapshotBuilder()
    ds = DataSet()
    chunks: dict[int, bytes] = {}
    states: list[tuple[DataSet, SnapshotImage]] = []
    for gen, (event, flags, segs) in enumerate(history, start=1):
        ds, changes = ds.apply(parse_data_sync(b.data_sync(flags, segs, event_type=event)["data"]))
        root, new_chunks = builder.build(ds, gen, changes)
        chunks.update({k: bytes(v) for k, v in new_chunks.items()})
        # each image keeps its own chunk map, as a reader's mapping does
        states.append((ds, SnapshotImage(bytes(root), dict(chunks).get, length=len(root), crc=root_crc(root))))
    for i in range(len(states)):
        for j in range(i + 1, len(states)):
            (old_ds, old_img), (new_ds, new_img) = states[i], states[j]
            assert new_img.diff(old_img) == diff_datasets(old_ds, new_ds)


def test_image_diff_of_a_one_flag_patch_in_10k_flags_reports_one_key() -> None:
    flags = [sflag(f"f{i}", "v", T0) for i in range(10_000)]
    ds, changes = DataSet().apply(parse_data_sync(b.data_sync(flags)["data"]))
    builder = SnapshotBuilder()
    root1, c1 = builder.build(ds, 1, changes)
    ds2, changes2 = ds.apply(parse_data_sync(b.data_sync([sflag("f77", "w", T0 + 1)], event_type="patch")["data"]))
    root2, c2 = builder.build(ds2, 2, changes2)
    chunks = {**{k: bytes(v) for k, v in c1.items()}, **{k: bytes(v) for k, v in c2.items()}}
    img1 = SnapshotImage(bytes(root1), chunks.get)
    img2 = SnapshotImage(bytes(root2), chunks.get)
    assert img2.diff(img1) == ChangeSet(frozenset({"f77"}), frozenset())


# --------------------------------------------------------------------------- offline client


@pytest.fixture
def client() -> Iterator[FBClient]:
    c = FBClient(Config(offline=True))
    assert c.initialize_from_external_json(doc([sflag("a", "a1", T0), sflag("b", "b1", T0), seg_flag("s-flag", "s", T0)], [b.segment("s", updated_at=T0)]))
    yield c
    c.stop()


def test_r88_value_listener_fires_only_when_the_value_changes(client: FBClient) -> None:
    calls: list[tuple[str, Any, Any]] = []
    client.flag_tracker.add_flag_value_changed_listener("a", USER, lambda k, old, new: calls.append((k, old, new)))
    # a change to the flag that keeps the value for this user: no call
    client.initialize_from_external_json(doc([sflag("a", "a1", T0 + 1), sflag("b", "b1", T0)], [b.segment("s", updated_at=T0)]))
    assert client.variation("b", USER) == "b1"  # the touch that dispatches
    assert calls == []
    client.initialize_from_external_json(doc([sflag("a", "a2", T0 + 2), sflag("b", "b1", T0)], [b.segment("s", updated_at=T0)]))
    assert client.is_flag_known("b")
    assert calls == [("a", "a1", "a2")]


def test_r88_maybe_changed_listener_gets_the_latest_value(client: FBClient) -> None:
    calls: list[tuple[str, Any]] = []
    client.flag_tracker.add_flag_value_maybe_changed_listener("a", USER, lambda k, v: calls.append((k, v)))
    client.initialize_from_external_json(doc([sflag("a", "a1", T0 + 1), sflag("b", "b1", T0)]))
    client.variation("b", USER)
    assert calls == [("a", "a1")]


def test_no_thread_listeners_fire_on_the_next_touch_not_before(client: FBClient) -> None:
    rec = Recorder()
    client.flag_tracker.add_flag_changed_listener(rec)
    threads = threading.active_count()
    client.initialize_from_external_json(doc([sflag("a", "a9", T0 + 5), sflag("b", "b1", T0), seg_flag("s-flag", "s", T0)], [b.segment("s", updated_at=T0)]))
    assert rec.keys == []  # nothing touched the client yet
    assert client.initialize
    assert rec.keys == ["a"]  # b and s-flag did not change: not notified
    client.variation("a", USER)
    assert rec.keys == ["a"]  # one dispatch per generation
    assert threading.active_count() == threads


def test_r88_segment_change_notifies_referencing_flags(client: FBClient) -> None:
    rec = Recorder()
    client.flag_tracker.add_flag_changed_listener(rec)
    client.initialize_from_external_json(
        doc([sflag("a", "a1", T0), sflag("b", "b1", T0), seg_flag("s-flag", "s", T0)], [b.segment("s", included=["u1"], updated_at=T0 + 1)])
    )
    assert client.variation("s-flag", USER) == "in"
    assert rec.keys == ["s-flag"]


def test_r80_listener_errors_are_contained(client: FBClient, caplog: pytest.LogCaptureFixture) -> None:
    class Boom(FlagChangedListener):
        def on_flag_change(self, notice: FlagChangedNotice) -> None:
            raise RuntimeError("listener bug")

    rec = Recorder()
    client.flag_tracker.add_flag_changed_listener(Boom())
    client.flag_tracker.add_flag_changed_listener(rec)
    client.initialize_from_external_json(doc([sflag("a", "a2", T0 + 1), sflag("b", "b2", T0 + 1)]))
    with caplog.at_level(logging.ERROR, logger="featbit_shm"):
        assert client.variation("a", USER) == "a2"  # the touching evaluation is unaffected
    assert rec.keys == ["a", "b", "s-flag"]  # s-flag was removed: a change too
    assert "listener bug" in caplog.text


def test_listener_may_use_the_client_and_remove_itself(client: FBClient) -> None:
    seen: list[Any] = []

    class SelfRemoving(FlagChangedListener):
        def on_flag_change(self, notice: FlagChangedNotice) -> None:
            seen.append(client.variation(notice.flag_key, USER))  # re-entrant touch: no deadlock
            client.flag_tracker.remove_flag_change_notifier(self)

    client.flag_tracker.add_flag_changed_listener(SelfRemoving())
    client.initialize_from_external_json(doc([sflag("a", "a3", T0 + 1)]))
    client.variation("a", USER)
    client.initialize_from_external_json(doc([sflag("a", "a4", T0 + 2)]))
    client.variation("a", USER)
    assert seen[0] == "a3" and len(seen) >= 1 and "a4" not in seen


@pytest.mark.parametrize(
    ("key", "user", "fn"),
    [("", USER, print), (None, USER, print), ("a", {"name": "no key"}, print), ("a", "not a dict", print), ("a", USER, "not callable")],
)
def test_r88_invalid_arguments_raise_value_error(client: FBClient, key: Any, user: Any, fn: Any) -> None:
    with pytest.raises(ValueError):
        client.flag_tracker.add_flag_value_changed_listener(key, user, fn)
    with pytest.raises(ValueError):
        client.flag_tracker.add_flag_value_maybe_changed_listener(key, user, fn)


def test_r88_listener_must_be_a_flag_changed_listener(client: FBClient) -> None:
    with pytest.raises(ValueError):
        client.flag_tracker.add_flag_changed_listener(lambda notice: None)  # type: ignore[arg-type]


def test_opt_in_watcher_fires_without_a_touch_and_stops(client: FBClient) -> None:
    rec = Recorder()
    client.flag_tracker.add_flag_changed_listener(rec)
    client.flag_tracker.start_watching(0.02)
    assert client.flag_tracker.watching
    backing = client._backing()
    # Publish through the source itself, so nothing on this thread touches the client.
    assert backing is not None
    backing.publish(apply(backing.dataset, [sflag("b", "b7", T0 + 7)], [], "patch"))  # type: ignore[attr-defined]
    assert eventually(lambda: rec.keys == ["b"], timeout=10)
    client.stop()
    assert not client.flag_tracker.watching
    client.stop()  # idempotent


def test_r79_no_callback_after_stop_even_from_inside_a_listener(client: FBClient) -> None:
    calls: list[str] = []

    class Stopper(FlagChangedListener):
        def on_flag_change(self, notice: FlagChangedNotice) -> None:
            calls.append(notice.flag_key)
            client.stop()  # no deadlock, and no further callback

    client.flag_tracker.add_flag_changed_listener(Stopper())
    client.initialize_from_external_json(doc([sflag("a", "a5", T0 + 1), sflag("b", "b5", T0 + 1)]))
    assert client.variation("a", USER) == "a5"  # evaluation goes on after stop
    assert calls == ["a"]
    client.initialize_from_external_json(doc([sflag("a", "a6", T0 + 2)]))
    assert client.variation("a", USER) == "a6" and calls == ["a"]


def test_watcher_is_off_by_default(client: FBClient) -> None:
    client.flag_tracker.add_flag_changed_listener(Recorder())
    assert not client.flag_tracker.watching
    assert not any(t.name == "featbit-shm-flag-watcher" for t in threading.enumerate())


# --------------------------------------------------------------------------- fork


def _in_child(fn: Any) -> dict[str, Any]:
    """Run ``fn()`` in a forked child; return what it returned (a JSON dict)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
        except BaseException:  # noqa: BLE001 - report anything from the child
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.subprocess
def test_listeners_registered_before_fork_fire_in_the_child(client: FBClient) -> None:
    rec = Recorder()
    client.flag_tracker.add_flag_changed_listener(rec)

    def child() -> dict[str, Any]:
        client.initialize_from_external_json(doc([sflag("a", "child", T0 + 3)]))
        return {"value": client.variation("a", USER), "keys": rec.keys}

    got = _in_child(child)
    assert got["value"] == "child" and "a" in got["keys"]
    assert rec.keys == []  # the parent saw nothing: its data did not change


@pytest.fixture
def warnings_seen() -> Iterator[list[str]]:
    """WARNING messages of the featbit_shm logger, in this process and (as
    the list is inherited) in a forked child."""
    messages: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("featbit_shm")
    grab = Grab(logging.WARNING)
    logger.addHandler(grab)
    yield messages
    logger.removeHandler(grab)


@pytest.mark.subprocess
def test_watcher_started_before_fork_is_reported_loudly_in_the_child(client: FBClient, warnings_seen: list[str]) -> None:
    client.flag_tracker.add_flag_changed_listener(Recorder())
    client.flag_tracker.start_watching(0.05)
    got = _in_child(lambda: {"watching": client.flag_tracker.watching, "log": warnings_seen})
    assert got["watching"] is False
    assert any("does not run in forked pid" in m for m in got["log"])
    assert client.flag_tracker.watching  # the parent's watcher goes on


@pytest.mark.subprocess
def test_external_json_in_a_forked_child_warns_that_siblings_do_not_see_it(client: FBClient, warnings_seen: list[str]) -> None:
    def child() -> dict[str, Any]:
        for _ in range(50):  # rate-limited: one warning however often it is called
            client.initialize_from_external_json(doc([sflag("a", "c", T0 + 4)]))
        return {"log": [m for m in warnings_seen if "updates this process only" in m]}

    got = _in_child(child)
    assert len(got["log"]) == 1
    assert not any("updates this process only" in m for m in warnings_seen)  # the parent is not warned


@pytest.mark.subprocess
def test_flush_and_wait_without_a_sync_process_says_why(env: SyncFixture, caplog: pytest.LogCaptureFixture) -> None:
    proc = env.spawn()
    client = FBClient(Config(env.server.secret, env.server.event_url, env.server.streaming_url, namespace=env.namespace), start_wait=10)
    try:
        assert client.variation("a", USER) == "a1"
        env.kill_all()  # no sync process any more (and none started: autostart is off in tests)
        proc.wait(10)
        client.variation("a", USER)
        with caplog.at_level(logging.WARNING, logger="featbit_shm"):
            assert client.flush_and_wait(0.2) is False
            assert client.flush_and_wait(0.2) is False
        assert caplog.text.count("no sync process is running") == 1  # rate-limited
    finally:
        client.stop()


def test_warn_limited_limits_per_key() -> None:
    assert warn_limited("test-key-1", "first", every=60)
    assert not warn_limited("test-key-1", "again", every=60)
    assert warn_limited("test-key-2", "other key", every=60)
    assert warn_limited("test-key-3", "no limit", every=0) and warn_limited("test-key-3", "no limit", every=0)


# --------------------------------------------------------------------------- shared memory, real sync process


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[sflag("a", "a1", T0), sflag("b", "b1", T0), seg_flag("s-flag", "s", T0)], segments=[b.segment("s", updated_at=T0)]) as s:
        yield s


@pytest.fixture
def env(server: FeatBitStandIn) -> Iterator[SyncFixture]:
    with sync_env(server) as fixture:
        yield fixture


@pytest.mark.subprocess
def test_listeners_in_a_worker_fed_by_the_sync_process_record_no_events(env: SyncFixture) -> None:
    """Patches pushed by FeatBit reach listeners through shared memory; the
    evaluations the listeners make are not sent as events (R-66 applies to
    user traffic only)."""
    env.spawn()
    client = FBClient(Config(env.server.secret, env.server.event_url, env.server.streaming_url, namespace=env.namespace), start_wait=10)
    try:
        assert client.initialize
        changes: list[tuple[str, Any, Any]] = []
        maybe: list[tuple[str, Any]] = []
        rec = Recorder()
        tracker = client.flag_tracker
        tracker.add_flag_value_changed_listener("a", USER, lambda k, o, n: changes.append((k, o, n)))
        tracker.add_flag_value_maybe_changed_listener("s-flag", USER, lambda k, v: maybe.append((k, v)))
        tracker.add_flag_changed_listener(rec)
        env.server.update_flag(sflag("a", "a2", T0 + 10))
        assert eventually(lambda: client.variation("b", USER) == "b1" and changes == [("a", "a1", "a2")], timeout=15)
        env.server.update_segment(b.segment("s", included=["u1"], updated_at=T0 + 20))
        assert eventually(lambda: client.is_flag_known("b") and maybe == [("s-flag", "in")], timeout=15)
        assert rec.keys == ["a", "s-flag"]
        assert client.flush_and_wait(10)
        evaluated = [e for e in env.server.events if e.get("variations")]
        flags_in_events = [v["featureFlagKey"] for e in evaluated for v in e["variations"]]
        # only the user-traffic evaluations of "b" were recorded; none for "a" or "s-flag"
        assert flags_in_events and set(flags_in_events) == {"b"}
    finally:
        client.stop()
