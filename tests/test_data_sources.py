"""Where flag data comes from when the websocket cannot (issue 21): polling,
``auto`` fallback and return, warm start, and payload shapes.

Reproduces: "Corporate proxies that block websockets leave featbit-shm with
no data at all", and "a host that boots while FeatBit is unreachable serves
defaults until FeatBit returns".
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from featbit_shm._core.dataset import DataSet
from featbit_shm._core.protocol import Backoff
from featbit_shm._core.wire import DataSyncMessage, parse_data_sync
from featbit_shm.cli import read_status
from featbit_shm.shm.control import SyncState
from featbit_shm.sync import warmstart
from featbit_shm.sync.sources import AutoSource, PollingSource, StreamSource
from featbit_shm.sync.warmstart import WarmStart
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import DEFAULT_SECRET, FeatBitStandIn

from .sync_helpers import SyncFixture, eventually, processes_of, sync_env


def banner(value: str, updated_at: int) -> dict[str, object]:
    return b.flag("banner", variations=[value, "other"], variation_type="string", updated_at=updated_at)


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[banner("v1", 1_000)]) as s:
        yield s


def value_of(env: SyncFixture) -> str | None:
    """What a worker of this store would serve for the banner flag (a fresh reader)."""
    from featbit_shm import Config, FBClient

    client = FBClient(Config(env.server.secret, env.server.event_url, env.server.streaming_url, namespace=env.namespace, start_sync=False, disable_events=True), start_wait=0)
    try:
        result = client.variation("banner", {"key": "u1"}, None)
        return None if result is None else str(result)
    finally:
        client.stop()


# --------------------------------------------------------------------------- polling


@pytest.mark.subprocess
def test_polling_serves_flags_follows_patches_and_keeps_the_cursor_on_failure(server: FeatBitStandIn) -> None:
    server.refuse_websockets = True  # nothing here uses one
    with sync_env(server) as env:
        env.spawn(data_sync="polling", polling_interval=1.0)
        reader = env.reader()
        assert eventually(lambda: env.leader_ready(reader), timeout=20)
        assert value_of(env) == "v1" and server.polls >= 1
        started = time.monotonic()
        server.update_flag(banner("v2", 2_000))
        assert eventually(lambda: value_of(env) == "v2", timeout=15)
        print(f"\npolling at 1 s: a patch reached the store in {time.monotonic() - started:.2f} s")
        version = reader.control.read_pointer().data_version
        server.fail_polling(503, 503, retry_after=2)
        assert eventually(lambda: reader.control.state is SyncState.INTERRUPTED, timeout=15)  # a failure says so
        assert reader.control.read_pointer().data_version == version  # and moves no cursor
        assert eventually(lambda: reader.control.state is SyncState.OK, timeout=20)  # the next valid answer heals
        assert value_of(env) == "v2"


@pytest.mark.subprocess
def test_auto_falls_back_to_polling_when_websockets_are_blocked_and_returns_when_they_work(server: FeatBitStandIn) -> None:
    server.refuse_websockets = True  # a proxy that blocks websockets
    with sync_env(server) as env:
        env.spawn(data_sync="auto", polling_interval=1.0, streaming_first_retry_delay=0.1)
        reader = env.reader()
        assert eventually(lambda: env.leader_ready(reader), timeout=30)  # through polling
        assert server.polls >= 1 and server.connections_accepted == 0
        assert eventually(lambda: read_status(env.names)["data_source"] == "polling", timeout=10)  # status says so
        server.update_flag(banner("v2", 2_000))
        assert eventually(lambda: value_of(env) == "v2", timeout=15)
        server.refuse_websockets = False  # the proxy lets websockets through again
        assert eventually(lambda: server.open_connections == 1, timeout=30)  # probed every 6 polls: back to streaming
        assert eventually(lambda: read_status(env.names)["data_source"] == "streaming", timeout=10)
        polls = server.polls
        server.update_flag(banner("v3", 3_000))
        assert eventually(lambda: value_of(env) == "v3", timeout=10)
        time.sleep(2.5)
        assert server.polls == polls  # streaming again: polling stopped


class AutoRun:
    """An ``auto`` data source run in a thread of the test (no sync process),
    with fast websocket retries and a probe interval no test waits for."""

    def __init__(self, stream_base: str, polling_base: str) -> None:
        cursor = lambda: 0  # noqa: E731 - every answer a full: what arrives is counted, not applied
        self.received = 0
        self.stream = StreamSource(DEFAULT_SECRET, stream_base, cursor, backoff=Backoff(first=0.05, cap=0.2))
        self.polling = PollingSource(DEFAULT_SECRET, polling_base, cursor, interval=0.2)
        self.auto = AutoSource(self.stream, self.polling, probe_interval=600.0)
        self.sessions = 0
        session = self.stream._session

        def counted(*args: object) -> None:
            self.sessions += 1
            session(*args)  # type: ignore[arg-type]

        self.stream._session = counted  # type: ignore[method-assign]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.auto.run, args=(self._data, lambda state: None, lambda: None, self.stop))

    def _data(self, messages: list[DataSyncMessage]) -> None:
        self.received += len(messages)

    def __enter__(self) -> AutoRun:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_auto_streams_again_as_soon_as_featbit_is_back_after_an_outage() -> None:
    """A FeatBit restart of more than a few seconds refuses three websockets
    in a row, which the auto mode took for a proxy: it then polled until
    its next probe (a minute by default) while FeatBit was back."""
    port = _closed_port()
    with AutoRun(f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{port}") as run:
        assert eventually(lambda: run.auto.mode == "polling" and run.polling.failures >= 1, timeout=30)
        with FeatBitStandIn(port=port, flags=[banner("v1", 1_000)]) as server:
            assert eventually(lambda: run.auto.mode == "streaming" and server.open_connections == 1, timeout=30)
            assert run.received > 0


def test_auto_tries_a_refusing_proxy_only_at_its_probe_interval_even_when_polls_flap() -> None:
    """A review finding: polls alternating failure and success (a bad node
    behind a load balancer) brought a websocket attempt and an immediate
    poll after every success, about ten times the requests."""
    with FeatBitStandIn(flags=[banner("v1", 1_000)]) as server:
        server.refuse_websockets = True  # a proxy: it answers, with 403
        with AutoRun(server.streaming_url, server.streaming_url) as run:
            assert eventually(lambda: run.polling.polls >= 2, timeout=30)
            for _ in range(3):  # fail one poll, then let the next succeed
                failures, polls = run.polling.failures, run.polling.polls
                server.fail_polling(502)
                assert eventually(lambda f=failures: run.polling.failures > f, timeout=30)  # type: ignore[misc]
                assert eventually(lambda p=polls: run.polling.polls > p + 1, timeout=30)  # type: ignore[misc]
        assert run.auto.mode == "polling" and run.sessions == 3 and server.websockets_refused == 3


def test_auto_with_a_dead_websocket_endpoint_and_working_polling_does_not_probe_on_every_poll() -> None:
    with FeatBitStandIn(flags=[banner("v1", 1_000)]) as server:
        with AutoRun(f"ws://127.0.0.1:{_closed_port()}", server.streaming_url) as run:
            assert eventually(lambda: run.polling.polls >= 8, timeout=30)
        assert run.auto.mode == "polling" and run.received > 0
        assert run.sessions == 4  # three to fall back, one when the first poll showed FeatBit up


# --------------------------------------------------------------------------- warm start


@pytest.mark.subprocess
def test_a_host_restarted_while_featbit_is_unreachable_serves_last_known_flags(server: FeatBitStandIn, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with sync_env(server) as env:
        env.spawn(state_dir=str(state), warm_start="1", data_sync="streaming")
        reader = env.reader()
        assert eventually(lambda: env.leader_ready(reader), timeout=20)
        server.update_flag(banner("patched", 2_000))
        assert eventually(lambda: value_of(env) == "patched", timeout=10)
        warm_file = state / f"{env.names.environment}.json"  # named by the environment: it outlives a release
        assert eventually(lambda: warm_file.exists() and b"patched" in warm_file.read_bytes(), timeout=40)
        assert oct(warm_file.stat().st_mode & 0o777) == "0o600" and oct(state.stat().st_mode & 0o777) == "0o700"
        assert server.secret.encode() not in warm_file.read_bytes()
        # The host goes down (every process, and /dev/shm with it), and comes back while FeatBit is unreachable.
        env.kill_all()
        env.unlink_all()
        server.refuse_websockets = True
        started = time.monotonic()
        env.spawn(state_dir=str(state), warm_start="1", data_sync="streaming", streaming_first_retry_delay=0.2)
        assert eventually(lambda: value_of(env) == "patched", timeout=20)  # last-known values, not defaults
        waited = time.monotonic() - started
        print(f"\nwarm start: last-known value served {waited:.2f} s after the sync process started")
        status = read_status(env.names)
        assert status["state"] == "INTERRUPTED"  # and not claimed fresh
        # FeatBit returns with newer data: the server's version wins, whole.
        server.update_flag(banner("fresh", 3_000))
        server.refuse_websockets = False
        assert eventually(lambda: value_of(env) == "fresh", timeout=30)
        assert eventually(lambda: read_status(env.names)["state"] == "OK", timeout=10)
    assert processes_of(env.namespace) == []


def test_a_foreign_damaged_or_other_stores_warm_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.chmod(tmp_path, 0o700)
    dataset, _ = DataSet().apply(parse_data_sync(b.data_sync([banner("kept", 5)])["data"]))
    warm = WarmStart(str(tmp_path), "tag-a", "default")
    assert warm.save(dataset, 0.0)
    loaded = warm.load()
    assert loaded is not None and loaded.version == dataset.version and set(loaded.flags) == {"banner"}
    path = Path(warm.path)
    assert WarmStart(str(tmp_path), "tag-b", "default").load() is None  # another store's name: absent
    other = Path(tmp_path / "tag-b.json")
    other.write_bytes(path.read_bytes())
    os.chmod(other, 0o600)
    assert WarmStart(str(tmp_path), "tag-b", "default").load() is None  # another store's file, renamed
    document = json.loads(path.read_bytes())
    document["payload"]["flags"][0]["enabled"] = not document["payload"]["flags"][0]["enabled"]
    path.write_text(json.dumps(document))
    assert warm.load() is None  # the checksum no longer matches
    assert warm.save(dataset, 100.0)
    os.chmod(path, 0o644)
    assert warm.load() is None  # readable by others: not ours to trust
    os.chmod(path, 0o600)
    link = tmp_path / "tag-c.json"
    link.symlink_to(path)
    assert WarmStart(str(tmp_path), "tag-c", "default").load() is None  # a link is never followed
    assert "ignored" in caplog.text


def test_a_release_of_another_warm_file_format_keeps_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two releases side by side whose warm-start formats differ must not
    overwrite each other's file (each would ignore the other's and lose its own)."""
    os.chmod(tmp_path, 0o700)
    dataset, _ = DataSet().apply(parse_data_sync(b.data_sync([banner("kept", 5)])["data"]))
    this = WarmStart(str(tmp_path), "tag", "default")
    assert this.save(dataset, 0.0)
    monkeypatch.setattr(warmstart, "FORMAT", warmstart.FORMAT + 1)
    later = WarmStart(str(tmp_path), "tag", "default")
    assert later.path != this.path
    assert later.load() is None  # absent: the other format's file is not even opened
    newer, _ = DataSet().apply(parse_data_sync(b.data_sync([banner("newer", 6)])["data"]))
    assert later.save(newer, 0.0)
    theirs = later.load()
    assert theirs is not None and theirs.version == newer.version
    monkeypatch.setattr(warmstart, "FORMAT", warmstart.FORMAT - 1)
    kept = this.load()  # this release's file survived the other's save
    assert kept is not None and kept.version == dataset.version


# --------------------------------------------------------------------------- payload shapes


def test_every_payload_shape_current_featbit_sends_is_read() -> None:
    """Issue 21.4: flag tags; segment key/tags, shareable segments' type,
    scopes and workspaceId; entities without isArchived (older Postgres paths)
    or without key/tags; archived entities are tombstones."""
    flag = banner("v1", 10)
    flag["tags"] = ["checkout", "beta"]
    old_flag = b.flag("legacy", updated_at=11)
    del old_flag["isArchived"]
    shared = b.segment("seg-shared", included=["u1"], updated_at=12)
    shared.update({"key": "vip-users", "tags": ["shared"], "type": "shared", "scopes": ["project:*"], "workspaceId": "w-1", "envId": "rewritten-env"})
    bare = b.segment("seg-bare", included=["u2"], updated_at=13)
    archived = b.flag("gone", archived=True, updated_at=14)
    message = parse_data_sync(b.data_sync([flag, old_flag, archived], [shared, bare])["data"])
    assert message.skipped == []
    dataset, _ = DataSet().apply(message)
    assert {f["key"] for f in dataset.active_flags()} == {"banner", "legacy"}  # the archived one is a tombstone
    assert set(dataset.segments) == {"seg-shared", "seg-bare"}
    assert dataset.version == 14


@pytest.mark.subprocess
def test_a_rate_limited_handshake_waits_what_retry_after_asks(server: FeatBitStandIn) -> None:
    # Issue 21.6: FeatBit can rate-limit the streaming endpoint per environment (429 with Retry-After).
    server.refuse_websockets, server.websocket_retry_after = 429, 4
    with sync_env(server) as env:
        env.spawn(data_sync="streaming", streaming_first_retry_delay=0.1)
        assert eventually(lambda: server.websockets_refused >= 1, timeout=15)
        first = time.monotonic()
        time.sleep(3.0)
        assert server.websockets_refused == 1  # not before the 4 s asked (the backoff alone would be 0.1 s)
        server.refuse_websockets = False
        reader = env.reader()
        assert eventually(lambda: env.leader_ready(reader), timeout=15)
        assert time.monotonic() - first >= 3.0


@pytest.mark.subprocess
def test_hosts_of_a_site_share_one_upstream_agent_with_one_connection_each(server: FeatBitStandIn) -> None:
    """Issue 21.2: the FeatBit Agent serves the evaluation server's websocket,
    polling and insight endpoints; a site points every host at it. The
    stand-in plays the Agent here: two hosts (two stores), one websocket
    each however many workers they have, both follow one patch."""
    with sync_env(server) as first, sync_env(server) as second:
        first.spawn()
        second.spawn(data_sync="polling", polling_interval=1.0)  # a host behind a proxy that blocks websockets
        readers = [first.reader(), second.reader()]
        assert eventually(lambda: all(env.leader_ready(r) for env, r in zip((first, second), readers)), timeout=20)
        server.update_flag(banner("site-wide", 5_000))
        assert eventually(lambda: value_of(first) == "site-wide" and value_of(second) == "site-wide", timeout=15)
        assert server.open_connections == 1  # the streaming host's one websocket; the other polls
