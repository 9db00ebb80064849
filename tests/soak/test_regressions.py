"""Bugs the chaos soak (issue 9) found, each pinned by a focused test.

These run in the default suite (they are not marked ``soak``); each one
failed before its fix. Liveness bounds are generous; no timing is asserted.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from featbit_shm.store.control import SyncState
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..sync_helpers import SyncFixture, eventually, processes_of, sync_env

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
