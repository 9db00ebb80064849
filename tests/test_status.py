"""A worker's own staleness in its status, and fbclient's status listeners (issue 17.7).

Reproduces: "A worker that cannot map new generations (e.g. after a uid
switch) logs the error on every request while its status provider says OK",
and "fbclient's ``update_status_provider.add_listener`` is missing". The
store is written in-process (a SnapshotWriter beats for this pid, so the
host looks served); the new generation's root is handed to another account,
which this worker must refuse to map -- exactly what a worker sees after a
uid switch, or when another user squats a retired name.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from featbit_shm import Config, FBClient
from featbit_shm._core.dataset import DataSet
from featbit_shm._core.wire import parse_data_sync
from featbit_shm.shm.locks import remove_lock_files
from featbit_shm.shm.names import SHM_DIR, StoreNames
from featbit_shm.shm.registry import Registry
from featbit_shm.shm.writer import SnapshotWriter
from featbit_shm.status_types import State, StateType
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from .sync_helpers import sync_env

SECRET = "c3RhdHVzLXRlc3Qtc2VjcmV0LXgtMTIzNDU2Nzg5MA"
USER = {"key": "u1"}


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll for liveness with a generous bound (never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def dataset(value: str, updated_at: int) -> DataSet:
    flag = b.flag("banner", variations=[value, "other"], variation_type="string", updated_at=updated_at)
    ds, _ = DataSet().apply(parse_data_sync(b.data_sync([flag], [])["data"]))
    return ds


@pytest.fixture
def store() -> Iterator[tuple[StoreNames, SnapshotWriter, FBClient]]:
    namespace = f"status-{uuid.uuid4().hex[:10]}"
    names = StoreNames.for_env(SECRET, namespace)
    writer = SnapshotWriter(names)
    config = Config(SECRET, "http://127.0.0.1:9", "ws://127.0.0.1:9", namespace=namespace, disable_events=True, start_sync=False)
    client = FBClient(config, start_wait=0)
    try:
        yield names, writer, client
    finally:
        client.stop()
        for name in names.existing("g"):  # hand the roots given away back, so they can be removed
            os.chown(SHM_DIR + name, os.geteuid(), -1)
        writer.close(unlink=True)
        Registry(names).unlink_if_empty(lambda pid: False)
        for name in names.all_objects():  # what a writer closed without unlinking left (test 2)
            os.unlink(SHM_DIR + name)
        remove_lock_files(names.lock_files, names.access)


def test_a_worker_that_cannot_map_the_new_generation_says_so_in_its_status_and_listeners(
    store: tuple[StoreNames, SnapshotWriter, FBClient], caplog: pytest.LogCaptureFixture
) -> None:
    names, writer, client = store
    seen: list[State] = []
    writer.publish(dataset("v1", 1))
    assert client.variation("banner", USER, "default") == "v1"
    provider = client.update_status_provider
    assert provider.current_state.state_type is StateType.OK
    assert client.health() and client.health().to_json_dict()["generation"] == 1
    provider.add_listener(seen.append)
    provider.add_listener(seen.append)  # added once (fbclient's rule)

    writer.publish(dataset("v2", 2))
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(SHM_DIR + writer.current_name, nobody, -1)  # the new root now belongs to another account
    caplog.set_level(logging.ERROR, logger="featbit_shm")
    for _ in range(200):
        assert client.variation("banner", USER, "default") == "v1"  # keeps serving its last good generation

    state = provider.current_state
    assert state.state_type is StateType.INTERRUPTED
    assert state.error_track is not None and state.error_track.error_type == "StaleWorker"
    assert "generation 1 of 2" in state.error_track.message and writer.current_name in state.error_track.message
    assert [s.state_type for s in seen] == [StateType.INTERRUPTED]
    assert sum("cannot map snapshot" in r.getMessage() for r in caplog.records) <= 1  # rate-limited, not per request
    health = client.health()  # a web health endpoint sees it too
    assert not health and "cannot map snapshot" in health.reason and health.to_json_dict()["error"]["type"] == "StaleWorker"

    writer.publish(dataset("v3", 3))  # a generation it can map: caught up (after its short retry pause)
    assert eventually(lambda: client.variation("banner", USER, "default") == "v3")
    assert provider.current_state.state_type is StateType.OK
    assert [s.state_type for s in seen] == [StateType.INTERRUPTED, StateType.OK]

    provider.remove_listener(seen.append)
    writer.publish(dataset("v4", 4))
    os.chown(SHM_DIR + writer.current_name, nobody, -1)
    assert eventually(lambda: client.variation("banner", USER, "default") == "v3" and provider.current_state.state_type is StateType.INTERRUPTED)
    assert len(seen) == 2  # removed: no more calls


def test_listeners_hear_the_host_going_silent_at_the_store_watch_without_reading_the_state(
    store: tuple[StoreNames, SnapshotWriter, FBClient],
) -> None:
    _names, writer, client = store
    writer.publish(dataset("v1", 1))
    seen: list[State] = []
    client.update_status_provider.add_listener(seen.append)
    failing: list[State] = []

    def broken(state: State) -> None:
        failing.append(state)
        raise RuntimeError("a listener's own bug")

    client.update_status_provider.add_listener(broken)
    writer.close()  # its sync process stops: nothing keeps this worker's data fresh any more
    # The watch comes due within about 0.5 s of use; nobody reads the state.
    assert eventually(lambda: client.variation("banner", USER, "default") is not None and bool(seen))
    assert [s.state_type for s in seen] == [StateType.INTERRUPTED]
    assert seen[0].error_track is not None and seen[0].error_track.error_type == "StaleHeartbeat"
    assert len(failing) == 1  # a failing listener neither stops the others nor the evaluation


# --------------------------------------------------------------------------- featbit-shm status


def status_of(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "featbit_shm.cli", "status", "--json", *args], capture_output=True, text=True, env=env, timeout=60)
    return done.returncode, json.loads(done.stdout)


@pytest.mark.subprocess
def test_status_shows_namespace_last_error_and_the_workers_that_cannot_follow() -> None:
    with FeatBitStandIn(flags=[b.flag("banner", variations=["v1", "x"], variation_type="string", updated_at=1)]) as server, sync_env(server) as sync:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEATBIT_")}
        named = env | {"FEATBIT_ENV_SECRET": server.secret, "FEATBIT_NAMESPACE": sync.namespace}
        sync.spawn()
        config = Config(server.secret, server.event_url, server.streaming_url, namespace=sync.namespace, start_sync=False)
        client = FBClient(config, start_wait=15)
        try:
            assert client.variation("banner", USER, "d") == "v1"
            rc, status = status_of(named)
            assert rc == 0, status
            assert status["namespace"] == sync.namespace and status["clients"] >= 1 and status["workers_behind"] == []
            # Every store of this account, found without the app's environment.
            rc_all, listing = status_of(env)
            assert sync.names.tag in [s["store"] for s in listing["stores"]]

            server.drop_connections()  # the leader logs the lost connection: status shows it
            assert eventually(lambda: status_of(named)[1]["last_error"])
            status = status_of(named)[1]
            assert server.secret not in json.dumps(status) and status["last_error_age_s"] >= 0

            # This process cannot map the next generation (its root handed to another account).
            block = client.update_status_provider
            published = sync.names.existing("g")
            server.update_flag(b.flag("banner", variations=["v2", "x"], variation_type="string", updated_at=2))
            assert eventually(lambda: len(sync.names.existing("g")) > len(published) or set(sync.names.existing("g")) != set(published))
            newest = max(sync.names.existing("g"), key=lambda n: int(n.rsplit(".g", 1)[1]))
            os.chown(SHM_DIR + newest, pwd.getpwnam("nobody").pw_uid, -1)
            assert eventually(lambda: client.variation("banner", USER, "d") == "v1" and block.current_state.state_type is StateType.INTERRUPTED)
            # Its ring says so at the next store watch (about 0.5 s of use).
            assert eventually(lambda: client.variation("banner", USER, "d") and status_of(named)[1]["workers_behind"], timeout=20)
            rc, status = status_of(named)
            assert rc == 1 and [w["pid"] for w in status["workers_behind"]] == [os.getpid()]
            assert "cannot map" in status["problem"]
            metrics = subprocess.run(
                [sys.executable, "-m", "featbit_shm.cli", "status", "--format", "prometheus"], capture_output=True, text=True, env=named, timeout=60
            ).stdout
            labels = f'store="{sync.names.tag}",namespace="{sync.namespace}"'
            assert f"featbit_shm_up{{{labels}}} 0" in metrics and f"featbit_shm_workers_behind{{{labels}}} 1" in metrics
            assert f'featbit_shm_state{{{labels},state="OK"}} 1' in metrics
            sample = re.compile(r'^[a-z_]+\{store="[0-9a-f]+",namespace="[^"]*"(,[a-z]+="[A-Za-z_]+")?\} -?[0-9.e+]+$')
            assert all(line.startswith("# ") or sample.match(line) for line in metrics.splitlines()), metrics
            os.chown(SHM_DIR + newest, os.geteuid(), -1)
        finally:
            client.stop()
            for name in sync.names.existing("g"):
                os.chown(SHM_DIR + name, os.geteuid(), -1)
