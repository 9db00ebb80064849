"""Teardown in every kill order: once the last owner of a host's store is gone,
nothing of it is left.

One gunicorn server with the hooks (a master, its workers, the sync leader
and its standby) serves requests that record events, so every worker has an
event ring; then its processes are stopped in one of the orders below
(SIGTERM and SIGKILL, one at a time or together). Afterwards there must be
no process of that server or store, no ``/dev/shm`` object of the store and
no lock file of the store in the private lock directory. When every process
is SIGKILLed nobody is left to clean: then the next server on the same store
must adopt or clean what is there, and its own clean stop leave nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from featbit_shm.shm import locks, registry
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.shm.reader import SnapshotReader
from featbit_shm.testing.server import FeatBitStandIn

from .app_servers import WORKERS, ask, server
from .sync_helpers import eventually, processes_of
from .test_gunicorn import Gunicorn

pytestmark = pytest.mark.gunicorn

pytest.importorskip("gunicorn")

log = logging.getLogger(__name__)
__all__ = ["server"]  # the fixture, imported for pytest

LIVENESS_S = 20.0  # generous bounds for "eventually", never a speed assertion
# A gunicorn sync worker whose master died notices it only between two
# waits of up to half the worker timeout (30 s): 15 s with no request.
ORPHANS_S = 40.0


# --------------------------------------------------------------------------- the host


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Host:
    """A gunicorn server with the hooks, seen as the processes of one host."""

    def __init__(self, server: FeatBitStandIn, namespace: str, log_file: Path) -> None:
        self.namespace = namespace
        self.names = StoreNames.for_env(server.secret, namespace)
        self.log_file = log_file
        self.g = Gunicorn(
            server,
            namespace=namespace,
            extra_env={"FEATBIT_LOG_LEVEL": "INFO", "FEATBIT_SHM_LOG_FILE": str(log_file)},
        )
        self.reader = SnapshotReader(self.names, retry_interval=0.02)

    # ------------------------------------------------------------ who is who

    @property
    def master(self) -> int:
        return self.g.proc.pid

    def everything(self) -> list[int]:
        """Every process of this server or store: master, workers, sync processes
        (whoever started them), found by the namespace in their environment."""
        return processes_of(self.namespace, sync_only=False)

    def sync_pids(self) -> list[int]:
        return processes_of(self.namespace)

    def workers(self) -> list[int]:
        sync = set(self.sync_pids())
        return sorted(p for p in self.everything() if p not in sync and p != self.master and _ppid(p) == self.master)

    def leader(self) -> int:
        block = self.reader.control
        if block is None or not block.leader_alive(time.time()):
            return 0
        return int(block.leader_pid)

    def standby(self) -> int:
        others = [p for p in self.sync_pids() if p != self.leader()]
        return others[0] if len(others) == 1 else 0

    def rings(self) -> list[str]:
        return self.names.existing("r")

    def claimed_rings(self) -> list[int]:
        """Ids of the rings a process claimed (not spares), read without the
        registry lock (taking it would create the lock file)."""
        return sorted(ring_id for _pid, ring_id, state in registry.peek(self.names) if state == registry.CLAIMED)

    # ------------------------------------------------------------ what is left

    def objects(self) -> list[str]:
        return self.names.all_objects()

    def lock_files(self) -> list[str]:
        found = [p for p in self.names.lock_files if os.path.lexists(p)]
        directory = locks.runtime_directory(self.names.access)
        try:
            entries = os.listdir(directory)
        except OSError:
            entries = []
        found += [
            os.path.join(directory, e)
            for e in entries
            if e.startswith(self.names.tag) and os.path.join(directory, e) not in found
        ]
        return sorted(found)

    def describe(self) -> str:
        procs = {p: _cmdline(p) for p in self.everything()}
        return (
            f"processes {procs}, objects {self.objects()}, claimed rings {self.claimed_rings()}, "
            f"lock files {self.lock_files()}\nsync log:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------ driving it

    def settled(self) -> bool:
        """A leader with its standby, every worker up, a ring per worker."""
        leader = self.leader()
        sync = self.sync_pids()
        return (
            bool(leader)
            and leader in sync
            and len(sync) == 2
            and len(self.workers()) == WORKERS
            and len(self.rings()) >= WORKERS
        )

    def serve(self, requests: int = 40) -> None:
        """Requests that record events (3 evaluations each, examples/demo_app.py),
        from every worker."""
        assert len(self.g.workers()) == WORKERS
        for _ in range(requests):
            ask(self.g.port)

    def wait_master(self) -> None:
        """Reap the master (our child) once it exits, however it was stopped."""
        try:
            self.g.proc.wait(60)
        except Exception:  # noqa: BLE001 - the final check says what is left
            pass

    def term_master(self) -> None:
        self.g.proc.send_signal(signal.SIGTERM)
        self.wait_master()

    def cleanup(self) -> None:
        """Kill whatever is left and remove the store (finally blocks)."""
        for _ in range(3):
            pids = self.everything()
            if not pids and self.g.proc.poll() is not None:
                break
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            if self.g.proc.poll() is None:
                self.g.proc.kill()
            self.wait_master()
            eventually(lambda: not self.everything(), timeout=10)
        remove_objects(self.objects(), self.names.access)
        locks.remove_lock_files(self.lock_files(), self.names.access)


def assert_nothing_left(host: Host, processes_within: float = LIVENESS_S) -> None:
    gone = eventually(lambda: not host.everything(), timeout=processes_within, interval=0.1)
    assert gone, f"processes still run {processes_within:.0f} s after the last stop: {host.describe()}"
    # Nothing runs any more, so nothing changes; a short poll is only a margin.
    eventually(lambda: not host.objects() and not host.lock_files(), timeout=2, interval=0.1)
    assert host.objects() == [], f"/dev/shm objects of the store are left: {host.describe()}"
    assert host.lock_files() == [], f"lock files of the store are left: {host.describe()}"


# --------------------------------------------------------------------------- the orders


def term_master(host: Host) -> float:
    """(a) the normal stop."""
    host.term_master()
    return LIVENESS_S


def kill_leader_then_term_master(host: Host) -> float:
    """(b) the standby takes over (and starts a standby of its own)."""
    leader, standby = host.leader(), host.standby()
    assert leader and standby
    _kill(leader, signal.SIGKILL)
    assert eventually(lambda: host.leader() == standby and len(host.sync_pids()) == 2, timeout=LIVENESS_S), (
        host.describe()
    )
    host.serve(10)
    host.term_master()
    return LIVENESS_S


def kill_leader_then_term_master_at_once(host: Host) -> float:
    """(b2) SIGTERM while the standby is taking over."""
    leader = host.leader()
    assert leader
    _kill(leader, signal.SIGKILL)
    host.term_master()
    return LIVENESS_S


def kill_standby_then_term_master(host: Host) -> float:
    """(i) the leader starts a new standby (within a second or so); SIGTERM at once."""
    standby = host.standby()
    assert standby
    _kill(standby, signal.SIGKILL)
    host.term_master()
    return LIVENESS_S


def kill_leader_and_standby_then_term_master(host: Host) -> float:
    """(c) no sync process left; then SIGTERM at once, before any worker heals."""
    pids = host.sync_pids()
    assert len(pids) == 2
    for pid in pids:
        _kill(pid, signal.SIGKILL)
    assert eventually(lambda: not host.sync_pids(), timeout=LIVENESS_S), host.describe()
    host.term_master()
    return LIVENESS_S


def kill_leader_and_standby_heal_then_term_master(host: Host) -> float:
    """(c') no sync process left; a worker starts one (owned by the master), then SIGTERM."""
    dead = set(host.sync_pids())
    assert len(dead) == 2
    for pid in dead:
        _kill(pid, signal.SIGKILL)

    def healed() -> bool:
        ask(host.g.port)  # workers heal while they are used
        return bool(host.leader()) and host.leader() not in dead

    assert eventually(healed, timeout=LIVENESS_S, interval=0.05), host.describe()
    host.serve(10)
    host.term_master()
    return LIVENESS_S


def kill_worker_then_term_master(host: Host) -> float:
    """(d) gunicorn replaces the worker; the pump drains and removes its ring."""
    before = host.workers()
    victim = before[0]
    _kill(victim, signal.SIGKILL)
    assert eventually(lambda: victim not in host.workers() and len(host.workers()) == WORKERS, timeout=LIVENESS_S), (
        host.describe()
    )
    host.serve(20)  # the new worker records events too
    host.term_master()
    return LIVENESS_S


def term_leader_then_term_master(host: Host) -> float:
    """(e) the leader stops cleanly while workers still use the store (it
    hands over: leaves the store and stops its standby); then SIGTERM."""
    leader = host.leader()
    assert leader
    _kill(leader, signal.SIGTERM)
    assert eventually(lambda: not host.sync_pids(), timeout=LIVENESS_S), host.describe()
    host.term_master()
    return LIVENESS_S


def kill_master(host: Host) -> float:
    """(f) workers are orphaned: a gunicorn worker exits when its parent
    changes; the sync processes exit when their owner is gone."""
    host.g.proc.kill()
    host.wait_master()
    return ORPHANS_S


def kill_master_then_term_workers(host: Host) -> float:
    """(f2) the orphaned workers are stopped right away (as a supervisor would)."""
    workers = host.workers()
    host.g.proc.kill()
    host.wait_master()
    for pid in workers:
        _kill(pid, signal.SIGTERM)
    return LIVENESS_S


def kill_master_and_leader(host: Host) -> float:
    """(f3) orphaned workers, and a standby whose owner is gone."""
    victims = [host.master, host.leader()]
    for pid in victims:
        _kill(pid, signal.SIGKILL)
    host.wait_master()
    return ORPHANS_S


def kill_master_leader_and_standby(host: Host) -> float:
    """(f4) only the orphaned workers are left: they may not start a sync
    process (their owner is gone) and exit when they notice their parent changed."""
    victims = [host.master, *host.sync_pids()]
    for pid in victims:
        _kill(pid, signal.SIGKILL)
    host.wait_master()
    return ORPHANS_S


def kill_master_and_workers(host: Host) -> float:
    """(g) the server at once, its sync processes left to notice."""
    victims = [host.master, *host.workers()]
    for pid in victims:
        _kill(pid, signal.SIGKILL)
    host.wait_master()
    return LIVENESS_S


def kill_master_workers_and_leader(host: Host) -> float:
    """(g2) only the standby is left: it takes over (or sees its owner gone)."""
    victims = [host.master, *host.workers(), host.leader()]
    for pid in victims:
        _kill(pid, signal.SIGKILL)
    host.wait_master()
    return LIVENESS_S


ORDERS: dict[str, Callable[[Host], float]] = {
    "a-term-master": term_master,
    "b-kill-leader-term-master": kill_leader_then_term_master,
    "b2-kill-leader-term-master-at-once": kill_leader_then_term_master_at_once,
    "i-kill-standby-term-master": kill_standby_then_term_master,
    "c-kill-leader-standby-term-master": kill_leader_and_standby_then_term_master,
    "c2-kill-leader-standby-heal-term-master": kill_leader_and_standby_heal_then_term_master,
    "d-kill-worker-term-master": kill_worker_then_term_master,
    "e-term-leader-term-master": term_leader_then_term_master,
    "f-kill-master": kill_master,
    "f2-kill-master-term-workers": kill_master_then_term_workers,
    "f3-kill-master-and-leader": kill_master_and_leader,
    "f4-kill-master-leader-and-standby": kill_master_leader_and_standby,
    "g-kill-master-and-workers": kill_master_and_workers,
    "g2-kill-master-workers-and-leader": kill_master_workers_and_leader,
}


def new_host(server: FeatBitStandIn, namespace: str, tmp_path: Path, label: str) -> Host:
    host = Host(server, namespace, tmp_path / f"sync-{label}.log")
    assert eventually(host.settled, timeout=LIVENESS_S), host.describe()
    return host


@pytest.mark.parametrize("order", list(ORDERS))
def test_nothing_is_left_once_the_last_owner_is_gone(server: FeatBitStandIn, tmp_path: Path, order: str) -> None:
    namespace = f"down-{order.split('-')[0]}-{uuid.uuid4().hex[:8]}"
    host = new_host(server, namespace, tmp_path, "first")
    try:
        host.serve()
        assert len(host.rings()) >= WORKERS
        started = time.monotonic()
        within = ORDERS[order](host)
        assert_nothing_left(host, within)
        log.warning("%s: nothing left %.2f s after the first signal", order, time.monotonic() - started)
    finally:
        host.cleanup()


def test_after_everything_is_sigkilled_the_next_server_adopts_the_store_and_its_stop_leaves_nothing(
    server: FeatBitStandIn, tmp_path: Path
) -> None:
    """(h) SIGKILL master, workers, leader and standby at once: no process is
    left to clean, so objects may stay. The next server on the same store
    adopts or cleans them, and its own clean stop leaves nothing."""
    namespace = f"down-h-{uuid.uuid4().hex[:8]}"
    first = new_host(server, namespace, tmp_path, "first")
    second: Host | None = None
    try:
        first.serve()
        victims = [first.master, *first.workers(), *first.sync_pids()]
        for pid in victims:
            _kill(pid, signal.SIGKILL)
        first.wait_master()
        assert eventually(lambda: not first.everything(), timeout=LIVENESS_S), first.describe()
        left = first.objects()
        claimed = first.claimed_rings()
        log.warning(
            "everything SIGKILLed: left %s (claimed rings %s), lock files %s", left, claimed, first.lock_files()
        )
        # What must go: the old generations and the dead workers' rings (drained
        # first). The control block and the registry are reused, and so are
        # spare rings (no process owns them; the next workers may claim them).
        stale = {n for n in left if n in first.names.existing("gc")} | {first.names.ring(r) for r in claimed}

        second = new_host(server, namespace, tmp_path, "second")
        second.serve()

        def adopted() -> bool:
            ask(second.g.port)
            return not stale & set(second.objects())

        assert eventually(adopted, timeout=LIVENESS_S, interval=0.1), (
            f"stale {sorted(stale & set(second.objects()))}: {second.describe()}"
        )
        assert len(second.g.workers(lambda a: a["generation"] > 0, timeout=60)) == WORKERS
        second.term_master()
        assert_nothing_left(second)
    finally:
        if second is not None:
            second.cleanup()
        first.cleanup()
