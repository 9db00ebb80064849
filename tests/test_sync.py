"""The sync process against the FeatBit stand-in, with real processes (issue 4)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

from featbit_shm import Config, FBClient, ReasonKind
from featbit_shm.shm.control import SyncState
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from .sync_helpers import SyncFixture, eventually, processes_of, sync_env

log = logging.getLogger(__name__)
T0 = 1_700_000_000_000


def flag(key: str, value: str, version: int, **kw: object) -> dict:  # type: ignore[type-arg]
    return b.flag(key, variations=[value, "other"], variation_type="string", updated_at=version, **kw)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[flag("a", "a1", T0), flag("b", "b1", T0)], segments=[b.segment("s1", updated_at=T0)]) as s:
        yield s


@pytest.fixture
def env(server: FeatBitStandIn) -> Iterator[SyncFixture]:
    with sync_env(server) as fixture:
        yield fixture


def value(fixture_reader, key: str):  # type: ignore[no-untyped-def]
    view = fixture_reader.current()
    flag_obj = view.flag(key) if view is not None else None
    return flag_obj.static.value if flag_obj is not None and flag_obj.static is not None else None


def client_for(env: SyncFixture, start_wait: float = 10) -> FBClient:
    return FBClient(Config(env.server.secret, env.server.event_url, env.server.streaming_url, namespace=env.namespace), start_wait=start_wait)


@pytest.mark.subprocess
def test_initial_full_sync(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    assert value(reader, "a") == "a1" and value(reader, "b") == "b1"
    assert reader.current().segment("s1") is not None
    conn = env.server.connections()[0]
    assert conn.messages[0] == {"messageType": "data-sync", "data": {"timestamp": 0}}
    client = client_for(env)
    assert client.initialize is True
    assert client.variation("a", {"key": "u"}, "d") == "a1"


@pytest.mark.subprocess
def test_patch_becomes_visible_in_a_reader_process(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    env.server.update_flag(flag("a", "a2", T0 + 1))
    assert eventually(lambda: value(reader, "a") == "a2")
    env.server.update_segment(b.segment("s1", included=["u9"], updated_at=T0 + 2))
    assert eventually(lambda: reader.current().segment("s1") is not None and "u9" in reader.current().segment("s1").included)


@pytest.mark.subprocess
def test_archived_flag_gives_flag_not_found(env: SyncFixture) -> None:
    env.spawn()
    client = client_for(env)
    assert client.variation("a", {"key": "u"}, "d") == "a1"
    env.server.update_flag(flag("a", "a1", T0 + 5, archived=True))
    assert eventually(lambda: client.variation_detail("a", {"key": "u"}, "d").reason == "flag not found")
    assert client.variation_detail("a", {"key": "u"}, "d").kind is ReasonKind.ERROR


@pytest.mark.subprocess
def test_out_of_order_patch_versions_keep_the_newest(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    env.server.update_flag(flag("a", "newest", T0 + 30))
    env.server.update_flag(flag("a", "older", T0 + 20))
    env.server.update_flag(flag("b", "b-marker", T0 + 40))  # arrives after both
    assert eventually(lambda: value(reader, "b") == "b-marker")
    assert value(reader, "a") == "newest"


@pytest.mark.subprocess
def test_one_malformed_entity_among_good_ones(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    bad = flag("bad", "x", T0 + 10)
    bad["variations"] = "oops"
    env.server._broadcast({"eventType": "patch", "featureFlags": [flag("c", "c1", T0 + 10), bad, flag("d", "d1", T0 + 10)], "segments": []})
    assert eventually(lambda: value(reader, "c") == "c1" and value(reader, "d") == "d1")
    assert reader.current().flag("bad") is None


@pytest.mark.subprocess
def test_invalid_json_frame_then_a_good_patch(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    env.server.send_raw("{this is not json")
    env.server.send_raw(json.dumps({"messageType": "something-new", "data": {}}))
    env.server.update_flag(flag("a", "after-garbage", T0 + 3))
    assert eventually(lambda: value(reader, "a") == "after-garbage")  # G-5: the stream goes on
    assert env.server.connections_accepted == 1


@pytest.mark.subprocess
def test_drop_then_reconnect_with_cursor_loses_no_update(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    server = env.server
    server.drop_connections()
    # While the sync process is away, the data moves on without a push.
    server.set_data([flag("a", "a-outage", T0 + 50), flag("b", "b1", T0), flag("new", "n1", T0 + 51)], [b.segment("s1", updated_at=T0)])
    assert eventually(lambda: reader.control.state is SyncState.INTERRUPTED or server.connections_accepted >= 2)
    assert eventually(lambda: value(reader, "a") == "a-outage" and value(reader, "new") == "n1")
    second = server.connections()[0]
    cursor = second.messages[0]["data"]["timestamp"]
    assert cursor == T0  # the cursor of the data held, not 0
    assert eventually(lambda: reader.control.state is SyncState.OK)


@pytest.mark.subprocess
def test_close_1000_reconnects(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    env.server.close_connections(1000)
    assert eventually(lambda: env.server.connections_accepted >= 2 and env.server.open_connections == 1)
    env.server.update_flag(flag("a", "after-1000", T0 + 60))
    assert eventually(lambda: value(reader, "a") == "after-1000")


@pytest.mark.subprocess
def test_close_1011_reconnects(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    env.server.close_connections(1011)
    assert eventually(lambda: env.server.connections_accepted >= 2 and env.server.open_connections == 1)


@pytest.mark.subprocess
def test_close_4003_stops_state_off_and_waiters_woken(env: SyncFixture) -> None:
    # R-18 as written: with FEATBIT_REJECTED_RETRY_INTERVAL=0 a 4003 is final.
    proc = env.spawn(rejected_retry_interval=0.0)
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    env.server.close_connections(4003)
    assert proc.wait(15) == 3  # EXIT_REJECTED
    assert reader.control.state is SyncState.OFF
    assert value(reader, "a") == "a1"  # the last good data keeps serving
    time.sleep(1.0)
    assert env.server.connections_accepted == 1  # never retried
    assert processes_of(env.namespace) == []


@pytest.mark.subprocess
def test_rejected_client_is_not_initialized_and_start_wait_returns_early(server: FeatBitStandIn) -> None:
    """G-1: a client whose sync is rejected is never 'initialized'."""
    with sync_env(server) as env:
        from featbit_shm.shm.names import StoreNames

        env.names = StoreNames.for_env("X" * 44, env.namespace)  # the store this client uses
        env.spawn(env_secret="X" * 44)  # an unknown secret: 4003 at once
        started = time.monotonic()
        client = FBClient(
            Config("X" * 44, server.event_url, server.streaming_url, namespace=env.namespace), start_wait=20
        )
        waited = time.monotonic() - started
        assert client.initialize is False
        assert client.variation_detail("a", {"key": "u"}, "d").kind is ReasonKind.CLIENT_NOT_READY
        assert waited < 15, f"start_wait was not cut short by the terminal outcome ({waited:.1f} s)"
        assert server.connections_rejected >= 1 and server.connections_accepted == 0
        assert client._source.state() is SyncState.OFF  # the store stays, saying why


@pytest.mark.subprocess
def test_clock_skew_over_30s_is_rejected_said_in_status_and_healed_once_the_clock_is_fixed(env: SyncFixture) -> None:
    """R-3: the token carries the host clock; more than 30 s of skew is a 4003.
    Issue 21.5: that stopped featbit-shm for good, even after NTP fixed the
    clock, and nothing said why. Now the log and status name the skew (from
    the handshake's Date), the state is OFF, and the connection is retried
    every FEATBIT_REJECTED_RETRY_INTERVAL: a fixed clock heals without a restart."""
    from featbit_shm.cli import read_status

    env.server.clock_offset_ms = 31_000  # FeatBit's clock 31 s ahead: this host is 31 s behind
    proc = env.spawn(rejected_retry_interval=1.0)
    reader = env.reader()
    assert eventually(lambda: reader.control is not None and reader.control.state is SyncState.OFF)
    status = eventually(lambda: (st := read_status(env.names))["last_error"] and st)
    # The Date header has whole seconds: 31 s of skew reads 30 or 31.
    assert re.search(r"host clock is 3[01] s behind FeatBit", status["last_error"]), status["last_error"]
    assert proc.poll() is None  # still there, retrying
    env.server.clock_offset_ms = 25_000  # within the window (NTP fixed it): the next retry is accepted
    assert eventually(lambda: env.leader_ready(reader), timeout=20)
    assert env.server.connections_rejected >= 1 and value(reader, "a") == "a1"


@pytest.mark.subprocess
def test_leader_sigkill_new_leader_within_2s(env: SyncFixture) -> None:
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    assert eventually(lambda: len(processes_of(env.namespace)) == 2)  # leader + standby
    old = reader.control.leader_pid
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()

    def new_leader_ok() -> bool:
        block = reader.control
        return block.leader_pid not in (old, 0) and block.state is SyncState.OK and time.time() - block.heartbeat < 1.0

    assert eventually(new_leader_ok, timeout=15)
    heal = time.monotonic() - killed
    log.warning("leader SIGKILL -> new leader OK in %.3f s", heal)
    print(f"\nleader SIGKILL -> new leader OK in {heal:.3f} s")
    assert heal < 10  # liveness; the 2 s figure is reported and benchmarked, not asserted on a loaded box
    env.server.update_flag(flag("a", "after-failover", T0 + 70))
    assert eventually(lambda: value(reader, "a") == "after-failover")
    assert env.server.open_connections == 1


@pytest.mark.subprocess
def test_ten_simultaneous_candidates_one_websocket(env: SyncFixture) -> None:
    procs = [env.spawn() for _ in range(10)]
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    exited = eventually(lambda: sum(p.poll() is not None for p in procs) >= 8, timeout=30)
    assert exited
    time.sleep(1.0)
    assert env.server.connections_accepted == 1 and env.server.open_connections == 1
    assert len(processes_of(env.namespace)) == 2  # one leader, one standby


@pytest.mark.subprocess
def test_owner_gone_leader_exits_and_cleans_up(env: SyncFixture) -> None:
    import subprocess
    import sys

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env.spawn(owner_pid=owner.pid)
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    owner.kill()
    owner.wait()
    gone = time.monotonic()
    assert eventually(lambda: processes_of(env.namespace) == [], timeout=15)
    log.warning("owner gone -> sync processes gone in %.2f s", time.monotonic() - gone)
    assert env.leftovers() == []  # the last owner unlinked every object


@pytest.mark.subprocess
def test_sigterm_is_a_clean_shutdown(env: SyncFixture) -> None:
    proc = env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    assert eventually(lambda: len(processes_of(env.namespace)) == 2)
    proc.terminate()
    assert proc.wait(15) == 0
    assert eventually(lambda: processes_of(env.namespace) == [], timeout=15)
    assert env.leftovers() == []
    assert value(reader, "a") == "a1"  # a worker's existing mapping stays valid


@pytest.mark.subprocess
def test_offline_file_source_publishes_and_republishes(tmp_path, server: FeatBitStandIn) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(b.data_sync([flag("f", "v1", T0)])))
    with sync_env(server) as env:
        from featbit_shm.shm.names import StoreNames
        from featbit_shm.shm.reader import SnapshotReader

        env.names = StoreNames.for_env("", env.namespace)
        env.spawn(offline=True, bootstrap_file=str(path))
        reader = SnapshotReader(env.names, retry_interval=0.02)
        assert eventually(lambda: value(reader, "f") == "v1")
        path.write_text("{ broken")
        time.sleep(0.8)
        assert value(reader, "f") == "v1"  # a bad file is logged; the previous snapshot stays
        changed = time.monotonic()
        path.write_text(json.dumps(b.data_sync([flag("f", "v2", T0 + 1)])))
        assert eventually(lambda: value(reader, "f") == "v2")
        log.warning("file change visible in %.2f s", time.monotonic() - changed)
        assert env.server.connections_accepted == 0  # offline: no network


@pytest.mark.subprocess
def test_client_starts_a_sync_process_when_none_runs_and_it_exits_when_idle(server: FeatBitStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN: a client starts one when none is running; it exits once no client lives (idle timeout)."""
    import subprocess
    import sys

    with sync_env(server) as env:
        monkeypatch.setenv("FEATBIT_SHM_IDLE_TIMEOUT", "1")
        code = (
            "import sys\n"
            "from featbit_shm import Config, FBClient\n"
            f"c = FBClient(Config({server.secret!r}, {server.event_url!r}, {server.streaming_url!r}, namespace={env.namespace!r}, start_sync=True), start_wait=20)\n"
            "print(c.initialize, c.variation('a', {'key': 'u'}, 'd'), flush=True)\n"
            "sys.stdin.readline()\n"
        )
        app = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert app.stdout is not None and app.stdout.readline().split() == ["True", "a1"]
        assert server.open_connections == 1
        second = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert second.stdout is not None and second.stdout.readline().split() == ["True", "a1"]
        assert server.connections_accepted == 1  # the second client found the leader running
        assert processes_of(env.namespace) != []
        for p in (app, second):
            p.communicate("\n", timeout=30)
        gone = time.monotonic()
        assert eventually(lambda: processes_of(env.namespace) == [], timeout=30)
        log.warning("last client exited -> idle sync process gone in %.2f s", time.monotonic() - gone)
        assert eventually(lambda: env.leftovers() == [], timeout=10)


@pytest.mark.subprocess
def test_update_status_provider_follows_the_sync_process(env: SyncFixture) -> None:
    """R-16 states from the control block; a heartbeat older than 3 s reads INTERRUPTED."""
    from featbit_shm import StateType

    proc = env.spawn()
    client = client_for(env)
    status = client.update_status_provider
    assert status.wait_for_OKState(10) is True
    assert status.current_state.state_type is StateType.OK and status.initialized
    assert status.latest_version == T0
    os.kill(proc.pid, signal.SIGSTOP)  # a hung sync process: no more heartbeats
    try:
        assert eventually(lambda: status.current_state.state_type is StateType.INTERRUPTED, timeout=15)
        assert status.current_state.error_track is not None
        assert client.variation("a", {"key": "u"}, "d") == "a1"  # evaluation goes on meanwhile
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert status.wait_for_OKState(10) is True
    env.server.close_connections(4003)
    assert eventually(lambda: status.current_state.state_type is StateType.OFF)
    started = time.monotonic()
    assert status.wait_for_OKState(30) is False  # OFF answers at once, not after the timeout
    assert time.monotonic() - started < 5


def test_offline_status_is_ok_at_once() -> None:
    from featbit_shm import StateType

    client = FBClient(Config(offline=True))
    assert client.update_status_provider.current_state.state_type is StateType.OK
    assert client.update_status_provider.wait_for_OKState(0.1) is True
