"""Bugs the chaos soak (issue 9) found, each pinned by a focused test.

These run in the default suite (they are not marked ``soak``); each one
failed before its fix. Liveness bounds are generous; no timing is asserted.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from featbit_shm.shm.control import SyncState
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..sync_helpers import SyncFixture, eventually, processes_of, sync_env

# Real sockets to the stand-in and liveness timeouts: the integration lane.
pytestmark = pytest.mark.subprocess

T0 = 1_700_000_000_000


def flag(key: str, value: str, version: int) -> dict:  # type: ignore[type-arg]
    return b.flag(key, variations=[value, "other"], variation_type="string", updated_at=version)


def served(env: SyncFixture, reader, key: str):  # type: ignore[no-untyped-def]
    view = reader.current()
    f = view.flag(key) if view is not None else None
    return f.static.value if f is not None and f.static is not None else None


@pytest.fixture
def env() -> Iterator[SyncFixture]:
    with FeatBitStandIn(flags=[flag("a", "a1", T0)]) as server, sync_env(server) as fixture:
        yield fixture


def test_leader_replaces_a_killed_standby_so_a_later_leader_kill_still_heals(env: SyncFixture) -> None:
    """Soak finding: the leader started its standby once and never again. After
    the standby died, the next leader death left the host with no sync process
    at all (nothing else restarts one), serving stale flags for good."""
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    assert eventually(lambda: len(processes_of(env.namespace)) == 2)
    leader = reader.control.leader_pid
    standby = next(p for p in processes_of(env.namespace) if p != leader)
    os.kill(standby, signal.SIGKILL)
    assert eventually(lambda: [p for p in processes_of(env.namespace) if p not in (leader, standby)], timeout=20), "no new standby"

    os.kill(leader, signal.SIGKILL)

    def healed() -> bool:
        block = reader.control
        return block.leader_pid not in (0, leader) and block.state is SyncState.OK

    assert eventually(healed, timeout=20), "no sync process took over"
    env.server.update_flag(flag("a", "after", T0 + 10))
    assert eventually(lambda: served(env, reader, "a") == "after")


def test_reconnects_counter_counts_every_reconnect_and_a_new_leaders_connection(env: SyncFixture) -> None:
    """Soak finding: ``featbit-shm status`` showed ``reconnects: 0`` after the
    stand-in had accepted many connections: nothing ever incremented it."""
    env.spawn()
    reader = env.reader()
    assert eventually(lambda: env.leader_ready(reader))
    for n in (2, 3):
        assert env.server.drop_connections() == 1
        assert eventually(lambda n=n: env.server.connections_accepted == n and env.server.open_connections == 1, timeout=20)
    assert eventually(lambda: reader.control.counter("reconnects") == 2)
    assert eventually(lambda: len(processes_of(env.namespace)) == 2)
    os.kill(reader.control.leader_pid, signal.SIGKILL)  # the new leader's connection is a reconnect of the store
    assert eventually(lambda: env.server.connections_accepted == 4 and reader.control.counter("reconnects") == 3, timeout=20)


def test_a_silent_connection_is_abandoned_and_the_missed_patch_arrives_by_cursor() -> None:
    """A connection that goes silent for good (a dead peer or middlebox: the
    socket looks open, nothing arrives, pings go unanswered) held the sync
    process forever: it reported OK while FeatBit moved on. Now a ping left
    unanswered for ``pong_timeout`` (5 s by default; R-9 allows a documented
    liveness timeout) ends the connection, and the reconnect's cursor (R-7)
    fetches what was lost."""
    import threading

    from featbit_shm.sync.sources import StreamSource

    with FeatBitStandIn(flags=[flag("a", "a1", T0)]) as server:
        seen: list[str] = []
        states: list[SyncState] = []
        cursor = [0]

        def on_data(messages) -> None:  # type: ignore[no-untyped-def]
            for f in (f for m in messages for f in m.flags):
                cursor[0] = max(cursor[0], f["version"])
                seen.append(f["key"] + "=" + str(f["version"]))

        stop = threading.Event()
        source = StreamSource(server.secret, server.streaming_url, lambda: cursor[0], ping_interval=0.2, pong_timeout=0.8)
        thread = threading.Thread(target=source.run, args=(on_data, states.append, lambda: None, stop), daemon=True)
        thread.start()
        try:
            assert eventually(lambda: seen == [f"a={T0}"])
            server.silence(3.0, lose=True)  # a black hole: the next push is lost on this connection
            server.update_flag(flag("a", "a2", T0 + 1))
            assert eventually(lambda: f"a={T0 + 1}" in seen, timeout=30), "the lost patch never arrived"
            assert server.connections_accepted >= 2
            assert SyncState.INTERRUPTED in states
        finally:
            stop.set()
            thread.join(15)


def test_a_push_before_the_initial_full_never_publishes_a_partial_store() -> None:
    """Soak finding (R-22, R-7): a push that overtook the reply to the first
    data-sync request was published alone -- a one-flag store, marked
    ready, with the data version of that push."""
    with FeatBitStandIn(flags=[flag("a", "a1", T0), flag("b", "b1", T0)]) as server, sync_env(server) as env:
        server.reply_delay = 1.0  # the server is slow to answer data-sync
        env.spawn()
        reader = env.reader()
        assert eventually(lambda: server.open_connections == 1)
        server.update_flag(flag("a", "a2", T0 + 1))  # reaches the client before the full
        assert eventually(lambda: reader.current() is not None and reader.generation > 0)
        first = reader.current()
        assert first.flag("b") is not None, "published before the full arrived"
        assert served(env, reader, "a") == "a2"


def test_a_push_before_the_reply_does_not_advance_the_cursor_past_what_the_reply_brings() -> None:
    """Soak finding: after a reconnect, a push that overtook the reply was
    applied and published at once. The snapshot claimed the push's version
    while lacking older changes the reply would bring; when that connection
    dropped before the reply, the next cursor skipped those changes for good
    (the soak saw flags served 10 s stale under a newer data version)."""
    with FeatBitStandIn(flags=[flag("a", "a1", T0), flag("b", "b1", T0)]) as server, sync_env(server) as env:
        env.spawn(standby=False)
        reader = env.reader()
        assert eventually(lambda: env.leader_ready(reader))
        server.reply_delay = 1.5
        server.drop_connections()
        server.update_flag(flag("b", "b2", T0 + 1))  # while the client is away: only a reply brings it
        assert eventually(lambda: server.open_connections == 1, timeout=20)
        server.update_flag(flag("a", "a2", T0 + 2))  # overtakes the delayed reply
        import time

        time.sleep(0.5)  # the push is in; the reply is still a second away
        server.drop_connections()  # ... and never comes on this connection
        server.reply_delay = 0.0
        assert eventually(lambda: served(env, reader, "a") == "a2", timeout=20)
        assert eventually(lambda: served(env, reader, "b") == "b2", timeout=10), "b2 was skipped by the cursor"
        view = reader.current()
        assert view.version == T0 + 2
