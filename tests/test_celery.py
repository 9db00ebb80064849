"""A real Celery prefork worker against the FeatBit stand-in.

Celery has no featbit_shm hooks: its app configures featbit_shm the way a
user does (``featbit_shm.get()`` from FEATBIT_* variables, or
``featbit_shm.set_config(Config(...))`` at import; tests/celery_app.py), and
the first pool child to evaluate starts the host's sync process (autostart,
detached; it leaves once no client has been alive for
``FEATBIT_SHM_IDLE_TIMEOUT``). The broker is kombu's filesystem transport
and the result backend Celery's ``file://`` one, in a pytest tmp_path: no
broker server, loopback only.

One run per configuration proves, with generous liveness bounds and no
assertion on speed:

1. after tasks ran in every pool child of ``--pool=prefork --concurrency=3``,
   exactly one live sync leader serves the store (``featbit-shm status
   --json``, the leader lock's holder, one websocket) and no celery process
   has a zombie child;
2. a flag patch pushed through the stand-in reaches tasks in every child
   within 10 s;
3. the events the tasks recorded arrive at the stand-in's insight endpoint;
4. after SIGTERM to the Celery master: no sync process, no /dev/shm object and
   no lock file of the store is left.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featbit_shm._runtime.processes import pid_alive
from featbit_shm.shm import locks
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from .sync_helpers import eventually, processes_of

pytestmark = pytest.mark.subprocess

pytest.importorskip("celery")

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 3
FLAG = "celery-theme"
MARKER = "FBSHM_CELERY_TEST"  # in the environment of every celery process a test starts (for cleanup)


def theme(*, patched: bool) -> dict[str, Any]:
    """A string flag: "before" to everyone; patched, it is off and serves "after"."""
    return b.flag(
        FLAG,
        variations=["before", "after"],
        variation_type="string",
        enabled=not patched,
        off=1,
        updated_at="2025-06-01T00:00:00.000Z" if patched else b.DEFAULT_UPDATED_AT,
    )


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[theme(patched=False)]) as s:
        yield s


# --------------------------------------------------------------------------- processes


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0].decode(), int(fields[1])


def descendants(root: int) -> dict[int, str]:
    """Every live or zombie descendant of ``root``: pid -> state (R, S, Z, ...)."""
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                states[int(entry)] = stat[0]
                children.setdefault(stat[1], []).append(int(entry))
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = states[pid]
            todo.extend(children.get(pid, []))
    return found


def zombies_under(root: int) -> dict[int, str]:
    """Zombie descendants of ``root`` (children of the master or of a pool child)."""
    return {pid: state for pid, state in descendants(root).items() if state == "Z"}


def pool_children(master: int) -> set[int]:
    """The pool processes: the master's live children."""
    return {
        pid for pid, state in descendants(master).items() if state != "Z" and (proc_stat(pid) or ("", 0))[1] == master
    }


def processes_marked(value: str) -> list[int]:
    """Pids of every process with ``MARKER=value`` in its environment."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def flock_holders(path: str) -> set[int]:
    """Pids holding a granted ``flock`` on the file at ``path`` (/proc/locks)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return set()
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    with open("/proc/locks") as fh:
        for line in fh:
            parts = line.split()
            if "->" in parts or len(parts) < 6:  # a waiter, not a holder
                continue
            if parts[1] == "FLOCK" and parts[5] == device:
                holders.add(int(parts[4]))
    return holders


# --------------------------------------------------------------------------- the worker


class CeleryWorker:
    """``celery -A tests.celery_app worker --pool=prefork --concurrency=3`` and a producer."""

    def __init__(self, server: FeatBitStandIn, tmp_path: Path, config: str) -> None:
        from .celery_app import CONFIG_VARIABLE, FOLDER_VARIABLE, TASK, make_app

        self.server = server
        self.namespace = f"celery-{uuid.uuid4().hex[:10]}"
        self.names = StoreNames.for_env(server.secret, self.namespace)
        self.lock_directory = locks.runtime_directory(self.names.access)
        self.logs = tmp_path
        folder = tmp_path / "celery"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "CELERY_"))}
        env.update(
            {
                MARKER: self.namespace,
                FOLDER_VARIABLE: str(folder),
                CONFIG_VARIABLE: config,
                "PYTHONPATH": str(ROOT),
                # What a user's environment has: the defaults, which the test
                # session's conftest turned off for its own processes.
                "FEATBIT_SHM_AUTOSTART": "1",
                "FEATBIT_SHM_HEAL": "1",
                "FEATBIT_SHM_IDLE_TIMEOUT": "5",  # (30 by default) keeps the run short
                "FEATBIT_SHM_LOG_FILE": str(tmp_path / "sync.log"),
                "FEATBIT_LOG_LEVEL": "INFO",
            }
        )
        connection = {
            "SECRET": server.secret,
            "EVENTS": server.event_url,
            "STREAMING": server.streaming_url,
            "NAMESPACE": self.namespace,
        }
        if config in ("env", "client_at_import"):
            env.update(
                {
                    "FEATBIT_ENV_SECRET": connection["SECRET"],
                    "FEATBIT_EVENT_URL": connection["EVENTS"],
                    "FEATBIT_STREAMING_URL": connection["STREAMING"],
                    "FEATBIT_NAMESPACE": connection["NAMESPACE"],
                }
            )
        else:
            env.update({f"APP_FEATBIT_{k}": v for k, v in connection.items()})
        self.producer = make_app(str(folder))  # folders made before the worker starts
        self.task = TASK
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            "--pool=prefork",
            f"--concurrency={CONCURRENCY}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            f"{self.namespace}@127.0.0.1",
            "--logfile",
            str(tmp_path / "celery.log"),
        ]
        self.output = open(tmp_path / "celery.out", "wb")  # closed in cleanup()
        self.proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT
        )
        self.users = 0
        self.results: list[dict[str, Any]] = []  # every task answer, in order

    @property
    def master(self) -> int:
        return self.proc.pid

    def run_batch(self, size: int, pause: float, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Send ``size`` tasks at once (each keeps its child busy ``pause`` s)
        and return their answers; each task evaluates for a user of its own."""
        pending = []
        for _ in range(size):
            self.users += 1
            pending.append(self.producer.send_task(self.task, args=[FLAG, f"{self.namespace}-{self.users}", pause]))
        answers = [r.get(timeout=timeout, interval=0.05) for r in pending]
        self.results.extend(answers)
        return answers

    def status(self) -> dict[str, Any]:
        """``featbit-shm status --json`` for this store, as an operator runs it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEATBIT_")}
        env.update(FEATBIT_ENV_SECRET=self.server.secret, FEATBIT_NAMESPACE=self.namespace)
        done = subprocess.run(
            [sys.executable, "-m", "featbit_shm.cli", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        status: dict[str, Any] = json.loads(done.stdout)
        status["exit_status"] = done.returncode
        return status

    def lock_files(self) -> list[str]:
        try:
            return sorted(e for e in os.listdir(self.lock_directory) if e.startswith(self.names.tag))
        except FileNotFoundError:
            return []

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to the master (Celery's warm shutdown) and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        return self.proc.returncode

    def cleanup(self) -> None:
        """Whatever happened: no celery or sync process, object or lock file of this store is left."""
        for pid in [self.master, *processes_marked(self.namespace), *processes_of(self.namespace)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        eventually(lambda: not processes_marked(self.namespace) and not processes_of(self.namespace), timeout=15)
        remove_objects(self.names.all_objects(), self.names.access)
        locks.remove_lock_files([os.path.join(self.lock_directory, e) for e in self.lock_files()], self.names.access)
        self.output.close()

    def logs_tail(self) -> str:
        """The last lines of the celery and sync logs (for assertion messages)."""
        tails = []
        for name in ("celery.log", "celery.out", "sync.log"):
            path = self.logs / name
            if path.exists():
                tails.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(tails)


# --------------------------------------------------------------------------- the test


@pytest.mark.parametrize("config", ["env", "set_config", "client_at_import"])
def test_a_celery_prefork_worker_shares_one_sync_process_follows_patches_delivers_events_and_leaves_nothing(
    server: FeatBitStandIn, tmp_path: Path, config: str
) -> None:
    w = CeleryWorker(server, tmp_path, config)
    try:
        # The worker is up once its tasks come back. Sent before it started,
        # one task per child: the children build their clients at the same
        # moment, each finds no sync process, and each may start one.
        first = w.run_batch(CONCURRENCY, 0.3, timeout=120)
        assert all(a["value"] == "before" for a in first), (first, w.logs_tail())

        # --- 1. tasks in every pool child; one leader; no zombie.
        children = pool_children(w.master)
        assert len(children) == CONCURRENCY, (children, w.logs_tail())
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        for _ in range(40):  # bounded in count and time
            if children <= seen or time.monotonic() > deadline:
                break
            for answer in w.run_batch(2 * CONCURRENCY, 0.3):
                seen.add(answer["pid"])
        assert seen == children, f"tasks ran in {sorted(seen)}, pool children are {sorted(children)}"
        assert all(a["value"] == "before" and a["kind"] != "ClientNotReady" for a in w.results), w.results
        assert pool_children(w.master) == children  # no child was replaced meanwhile

        # A leader and its standby; any extra candidate the children started at once has left.
        assert eventually(lambda: len(processes_of(w.namespace)) == 2, timeout=30), (
            processes_of(w.namespace),
            w.logs_tail(),
        )
        status = w.status()
        assert status["state"] == "OK" and status["leader_alive"] is True and status["exit_status"] == 0, status
        leader = status["leader_pid"]
        sync = set(processes_of(w.namespace))
        assert leader in sync, (leader, sync)
        assert flock_holders(w.names.lock_path) == {leader}  # the one leader
        assert flock_holders(w.names.standby_lock_path) == sync - {leader}  # the other one stands by
        assert server.open_connections == 1  # one websocket for the whole worker
        everything = descendants(w.master)
        assert not sync & set(everything), "a sync process is a child of a celery process"
        assert eventually(lambda: not zombies_under(w.master), timeout=10), (
            zombies_under(w.master),
            descendants(w.master),
        )

        # --- 2. a patch reaches tasks in every child within 10 s.
        pushed = time.monotonic()
        server.update_flag(theme(patched=True))
        following: dict[int, float] = {}
        for _ in range(100):  # bounded in count and time
            if set(following) >= children or time.monotonic() - pushed > 10:
                break
            for answer in w.run_batch(2 * CONCURRENCY, 0.1, timeout=30):
                if answer["value"] == "after":
                    following.setdefault(answer["pid"], time.monotonic() - pushed)
        log.warning(
            "%s: the patch reached the pool children after %s s", config, {p: round(t, 3) for p, t in following.items()}
        )
        late = {p: t for p, t in following.items() if t > 10}
        assert set(following) >= children and not late, (following, sorted(children), w.logs_tail())

        # --- 3. every evaluation's event arrives at the insight endpoint.
        expected = {a["user"]: a["value"] for a in w.results}

        def received() -> dict[str, str]:
            return {
                e["user"]["keyId"]: e["variations"][0]["variation"]["value"]
                for e in server.events
                if e["user"]["keyId"] in expected
                and e.get("variations")
                and e["variations"][0]["featureFlagKey"] == FLAG
            }

        assert eventually(lambda: received() == expected, timeout=30), (
            f"{len(received())} of {len(expected)} events arrived; missing {sorted(set(expected) - set(received()))[:10]}"
        )

        # --- 4. SIGTERM to the master: nothing of the store is left.
        pool = pool_children(w.master)
        assert w.stop() == 0, f"celery did not stop cleanly within 60 s of SIGTERM\n{w.logs_tail()}"
        assert eventually(lambda: not any(pid_alive(p) for p in pool), timeout=30), "a pool child outlived its master"
        assert eventually(lambda: processes_of(w.namespace) == [], timeout=60), (
            processes_of(w.namespace),
            w.logs_tail(),
        )
        assert eventually(lambda: w.names.all_objects() == [], timeout=30), (w.names.all_objects(), w.logs_tail())
        # Every process of the store is gone: no lock file of it may be left.
        assert w.lock_files() == [], (w.lock_files(), w.logs_tail())
        assert received() == expected  # the final drain lost nothing
    finally:
        w.cleanup()
