"""Start, watch and clean up real sync processes in tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.shm.reader import SnapshotReader
from featbit_shm.sync import SyncSettings, spawn_sync_process
from featbit_shm.testing.server import FeatBitStandIn


def eventually(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.005) -> Any:
    """Poll for liveness with a generous bound (never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def processes_of(namespace: str, *, sync_only: bool = True) -> list[int]:
    """Pids of sync processes (leaders and standbys) serving this namespace;
    with ``sync_only=False`` every process that has it in its environment."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if (not sync_only or b"featbit_shm.sync" in cmd) and f"FEATBIT_NAMESPACE={namespace}".encode() in env:
            found.append(int(entry))
    return found


class SyncFixture:
    def __init__(self, server: FeatBitStandIn, namespace: str) -> None:
        self.server = server
        self.namespace = namespace
        self.names = StoreNames.for_env(server.secret, namespace)
        self.procs: list[subprocess.Popen[bytes]] = []

    def settings(self, **overrides: Any) -> SyncSettings:
        base = {
            "env_secret": self.server.secret,
            "streaming_url": self.server.streaming_url,
            "event_url": self.server.event_url,
            "namespace": self.namespace,
        }
        base.update(overrides)
        return SyncSettings(**base)

    def spawn(self, owner_pid: int | None = None, **overrides: Any) -> subprocess.Popen[bytes]:
        proc = spawn_sync_process(self.settings(**overrides), owner_pid=owner_pid or os.getpid())
        self.procs.append(proc)
        return proc

    def reader(self) -> SnapshotReader:
        return SnapshotReader(self.names, retry_interval=0.02)

    def leader_ready(self, reader: SnapshotReader) -> Any:
        view = reader.current()
        block = reader.control
        return view is not None and block is not None and block.state.name == "OK"

    def kill_all(self) -> None:
        for pid in processes_of(self.namespace):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        eventually(lambda: not processes_of(self.namespace), timeout=10)

    def leftovers(self) -> list[str]:
        return self.names.all_objects()

    def unlink_all(self) -> None:
        remove_objects(self.leftovers(), self.names.access)


@contextmanager
def sync_env(server: FeatBitStandIn) -> Iterator[SyncFixture]:
    fixture = SyncFixture(server, f"sync-{uuid.uuid4().hex[:10]}")
    try:
        yield fixture
    finally:
        fixture.kill_all()
        fixture.unlink_all()
