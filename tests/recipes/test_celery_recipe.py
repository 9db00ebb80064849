"""docs/recipes/celery.md, run as written: a real ``celery worker
--pool=prefork --concurrency=3`` with featbit_shm.integrations.celery, on
the page's own files (tests/recipes/celery_app/), against the FeatBit
stand-in.

The page's broker is Redis; there is none here, so the worker runs in a
folder where ``celeryconfig`` is the page's celeryconfig.py with the broker
and result backend swapped for kombu's filesystem transport and Celery's
``file://`` backend (loopback only, no server), plus one test-only task
(``recipe_probe.checkout_after``: the page's ``checkout`` after a pause, so
that a batch of tasks spreads over the pool processes). The task code and
the featbit-shm lines are the page's.

Each run proves, with generous liveness bounds:

1. the worker's main process owns the one sync process: it is the leader's
   parent and its FEATBIT_SHM_OWNER_PID (read from /proc/<pid>/environ),
   the standby is the leader's child, so no pool process started one; one
   websocket; ``featbit-shm status`` exits 0;
2. every pool process serves the flag from shared memory;
3. a flag patch reaches every pool process within 10 s;
4. (the page's tasks.py) with the leader and its standby SIGKILLed, a pool
   process heals the host with a sync process owned by the main process,
   which serves the next patch;
5. the evaluations' events arrive at the stand-in;
6. after SIGTERM to the main process: no process, /dev/shm object or lock
   file of the store is left.

It prints the time from starting the worker to the first flag served.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featbit_shm.shm.locks import remove_lock_files
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..sync_helpers import eventually, processes_of
from .common import fenced_blocks

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "celery_app"
DOC = ROOT / "docs" / "recipes" / "celery.md"
UWSGI_FLAGS = APP.parent / "uwsgi_app" / "flags.json"
FILES = ("tasks.py", "celeryconfig.py", "tasks_client_at_import.py")
BIN = Path(sys.executable).parent  # the venv's bin (the page activates the venv)
CONCURRENCY = 3
FLAG = "checkout-theme"

#: The folder's ``celeryconfig``: the page's settings, then the broker swapped.
TEST_CONFIG = '''\
"""The page's celeryconfig.py, with kombu's filesystem transport for the broker."""

import runpy as _runpy
from pathlib import Path as _Path

_page = _runpy.run_path(str(_Path(__file__).with_name("page_celeryconfig.py")))
globals().update({{k: v for k, v in _page.items() if not k.startswith("_") and k.islower() and k != "os"}})
broker_url = "filesystem://"
broker_transport_options = {transport!r}
result_backend = {results!r}
broker_connection_retry_on_startup = True
worker_prefetch_multiplier = 1  # a task waits in the queue, not behind a busy pool process
worker_enable_remote_control = False  # no broadcast on the filesystem transport
include = ["recipe_probe"]
'''

PROBE = '''\
"""Test-only: the page's task after a pause, so that a batch spreads over the pool processes."""

import importlib
import os
import time

from celery import shared_task

page = importlib.import_module(os.environ["RECIPE_TASKS_MODULE"])


@shared_task(name="recipe_probe.checkout_after")
def checkout_after(user_key, pause):
    time.sleep(pause)
    return page.checkout(user_key)
'''


def test_the_page_shows_exactly_the_files_the_tests_run() -> None:
    blocks = fenced_blocks(DOC.read_text())
    for name in FILES:
        assert (APP / name).read_text() in blocks, (
            f"docs/recipes/celery.md does not show tests/recipes/celery_app/{name} as it is"
        )


def command(module: str) -> list[str]:
    """The page's command for ``module``."""
    line = f"celery -A {module} worker --pool=prefork --concurrency={CONCURRENCY} --loglevel=INFO"
    assert line in DOC.read_text(), f"docs/recipes/celery.md no longer shows `{line}`"
    celery = shutil.which("celery", path=str(BIN))
    return [celery, *line.split()[1:]] if celery else [sys.executable, "-m", *line.split()]


def theme(*, enabled: bool, version: int = 0) -> dict[str, Any]:
    """The page's flag: "new" to everyone when on, "classic" when off."""
    return b.flag(
        FLAG,
        variations=["classic", "new"],
        variation_type="string",
        off=0,
        fallthrough=b.serve(1),
        enabled=enabled,
        updated_at=f"2025-07-{version:02d}T00:00:00.000Z" if version else b.DEFAULT_UPDATED_AT,
        name="Checkout theme",
    )


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[theme(enabled=True)]) as s:
        yield s


def atomic_filesystem_transport() -> type:
    """kombu's filesystem transport, writing each message under a temporary
    name first: kombu's own writer creates the file, then fills it, and a
    worker polling in between reads an empty message and its consumer dies."""
    from kombu.transport import filesystem
    from kombu.utils.json import dumps

    class Channel(filesystem.Channel):  # type: ignore[misc]
        def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
            name = os.path.join(self.data_folder_out, f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg")
            with open(f"{name}.part", "wb") as fh:  # not a message name: the worker skips it
                fh.write(dumps(payload).encode())
            os.replace(f"{name}.part", name)

    class Transport(filesystem.Transport):  # type: ignore[misc]
        pass

    Transport.Channel = Channel
    return Transport


# --------------------------------------------------------------------------- processes


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0].decode(), int(fields[1])


def parent_of(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat[1] if stat is not None else None


def environ_of(pid: int) -> dict[bytes, bytes]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        return dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)


def children_of(pid: int) -> set[int]:
    """Live (not zombie) children of ``pid``."""
    found = set()
    for entry in os.listdir("/proc"):
        stat = proc_stat(int(entry)) if entry.isdigit() else None
        if stat is not None and stat[1] == pid and stat[0] != "Z":
            found.add(int(entry))
    return found


def is_sync_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"featbit_shm.sync" in fh.read()
    except OSError:
        return False


# --------------------------------------------------------------------------- the worker


class Worker:
    """The page's worker in a folder of its own, and a producer that sends it tasks."""

    def __init__(self, server: FeatBitStandIn | None, tmp_path: Path, module: str) -> None:
        from celery import Celery
        from kombu import Connection

        self.server = server
        self.namespace = f"celery-recipe-{uuid.uuid4().hex[:10]}"
        self.names = StoreNames.for_env(server.secret if server is not None else "", self.namespace)
        self.logs = tmp_path
        folder = tmp_path / "worker"
        shutil.copytree(APP, folder)
        shutil.copy(UWSGI_FLAGS, folder / "flags.json")  # the offline recipe's flag file (docs/recipes/uwsgi.md)
        os.rename(folder / "celeryconfig.py", folder / "page_celeryconfig.py")
        queue, control, results = (tmp_path / "broker" / p for p in ("queue", "control", "results"))
        for path in (queue, control, results):
            path.mkdir(parents=True)
        transport = {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "control_folder": str(control),
            "polling_interval": 0.05,
        }
        (folder / "celeryconfig.py").write_text(TEST_CONFIG.format(transport=transport, results=f"file://{results}"))
        (folder / "recipe_probe.py").write_text(PROBE)
        self.producer = Celery("producer", broker="filesystem://", backend=f"file://{results}")
        self.producer.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
        self.connection = Connection(transport=atomic_filesystem_transport(), transport_options=transport)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "CELERY_"))}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])]),
            RECIPE_TASKS_MODULE=module,
            FEATBIT_NAMESPACE=self.namespace,
            FEATBIT_SHM_LOG_FILE=str(tmp_path / "sync.log"),
        )
        if server is not None:
            env.update(
                FEATBIT_ENV_SECRET=server.secret,
                FEATBIT_STREAMING_URL=server.streaming_url,
                FEATBIT_EVENT_URL=server.event_url,
            )
        else:  # the page's offline command
            env.update(FEATBIT_OFFLINE="1", FEATBIT_BOOTSTRAP_FILE=str(folder / "flags.json"))
        self.folder = folder
        self.env = env
        self.output = open(tmp_path / "celery.log", "wb")  # closed in cleanup()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            command(module), env=env, cwd=folder, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT
        )
        self.task = f"{module}.checkout"
        self.users = 0
        self.answers: list[dict[str, Any]] = []

    @property
    def master(self) -> int:
        return self.proc.pid

    def pool(self) -> set[int]:
        """The pool processes: the main process's live children that are not its sync process."""
        return {pid for pid in children_of(self.master) if not is_sync_process(pid)}

    def _user(self) -> str:
        self.users += 1
        return f"{self.namespace}-{self.users}"

    def checkout(self, timeout: float = 60.0) -> dict[str, Any]:
        """The page's task, sent as the page's check does."""
        answer: dict[str, Any] = self.producer.send_task(
            self.task, args=[self._user()], connection=self.connection
        ).get(timeout=timeout, interval=0.05)
        self.answers.append(answer)
        return answer

    def batch(self, pause: float = 0.3, timeout: float = 60.0) -> list[dict[str, Any]]:
        """One task per pool process, sent at once; each holds its process ``pause`` s."""
        pending = [
            self.producer.send_task(
                "recipe_probe.checkout_after", args=[self._user(), pause], connection=self.connection
            )
            for _ in range(CONCURRENCY)
        ]
        answers = [r.get(timeout=timeout, interval=0.05) for r in pending]
        self.answers.extend(answers)
        return answers

    def first_flag(self, timeout: float = 120.0) -> float:
        """Seconds from starting the worker to the first flag served (not ClientNotReady)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"celery exited with {self.proc.returncode}\n{self.logs_tail()}"
            if self.checkout(timeout=timeout)["kind"] != "ClientNotReady":
                return time.monotonic() - self.started
        raise AssertionError(f"no flag served within {timeout} s\n{self.logs_tail()}")

    def every_pool_process(self, timeout: float = 60.0) -> dict[int, dict[str, Any]]:
        """The latest answer of each pool process, bounded in count and time."""
        pool = self.pool()
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        for _ in range(50):
            if set(seen) >= pool or time.monotonic() > deadline:
                break
            seen.update((a["pid"], a) for a in self.batch())
        return seen

    def following(self, value: str, since: float, timeout: float = 10.0) -> dict[int, float]:
        """Seconds after ``since`` at which each pool process first answered ``value``."""
        pool = self.pool()
        found: dict[int, float] = {}
        for _ in range(100):
            if set(found) >= pool or time.monotonic() - since > timeout:
                break
            for answer in self.batch(pause=0.1):
                if answer["theme"] == value:
                    found.setdefault(answer["pid"], time.monotonic() - since)
        return found

    def status(self) -> dict[str, Any]:
        tool = shutil.which("featbit-shm", path=str(BIN))
        argv = [tool] if tool else [sys.executable, "-m", "featbit_shm.cli"]
        done = subprocess.run([*argv, "status", "--json"], env=self.env, capture_output=True, text=True, timeout=60)
        status: dict[str, Any] = json.loads(done.stdout)
        status["exit_status"] = done.returncode
        return status

    def received(self) -> set[str]:
        assert self.server is not None
        return {
            e["user"]["keyId"]
            for e in self.server.events
            if e.get("variations") and e["variations"][0]["featureFlagKey"] == FLAG
        }

    def evaluated(self) -> set[str]:
        return {a["user"] for a in self.answers if a["kind"] != "ClientNotReady"}

    def lock_files(self) -> list[str]:
        return [path for path in self.names.lock_files if os.path.exists(path)]

    def stop_and_check_nothing_is_left(self) -> None:
        """The page's stop: SIGTERM to the main process (a warm shutdown)."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, self.logs_tail()
        assert eventually(lambda: processes_of(self.namespace, sync_only=False) == [], timeout=30), (
            processes_of(self.namespace, sync_only=False),
            self.logs_tail(),
        )
        assert eventually(lambda: self.names.all_objects() == [], timeout=15), (
            self.names.all_objects(),
            self.logs_tail(),
        )
        assert self.lock_files() == [], (self.lock_files(), self.logs_tail())

    def cleanup(self) -> None:
        """Whatever happened: no process, object or lock file of this store is left."""
        for pid in [self.master, *processes_of(self.namespace, sync_only=False)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        eventually(lambda: not processes_of(self.namespace, sync_only=False), timeout=15)
        remove_objects(self.names.all_objects(), self.names.access)
        remove_lock_files(self.lock_files(), self.names.access)
        self.connection.release()
        self.output.close()

    def logs_tail(self) -> str:
        tails = []
        for name in ("celery.log", "sync.log"):
            path = self.logs / name
            if path.exists():
                tails.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(tails)


def assert_the_main_process_owns_the_one_sync_process(w: Worker) -> int:
    """The leader is the main process's child, owned by it; its standby is the leader's child. The leader's pid."""
    assert eventually(lambda: len(processes_of(w.namespace)) == 2, timeout=30), (
        processes_of(w.namespace),
        w.logs_tail(),
    )
    status = w.status()
    assert status["state"] == "OK" and status["leader_alive"] and status["exit_status"] == 0, status
    leader = status["leader_pid"]
    standby = set(processes_of(w.namespace)) - {leader}
    assert parent_of(leader) == w.master, (leader, parent_of(leader), w.master)
    assert environ_of(leader)[b"FEATBIT_SHM_OWNER_PID"] == str(w.master).encode()
    assert {parent_of(pid) for pid in standby} == {leader}, standby  # so no pool process started one
    assert all(environ_of(pid)[b"FEATBIT_SHM_OWNER_PID"] == str(w.master).encode() for pid in standby)
    assert w.server is None or w.server.open_connections == 1
    said = f"featbit_shm: sync process {leader} of this worker (pid {w.master}): running"  # the page's check
    assert said in (w.logs / "celery.log").read_text(errors="replace"), w.logs_tail()
    return int(leader)


def assert_every_pool_process_follows(w: Worker, value: str, since: float, what: str) -> None:
    found = w.following(value, since)
    print(f"Celery: {what} reached {len(found)} pool processes, the last after {max(found.values(), default=0):.3f} s")
    assert set(found) >= w.pool() and max(found.values()) <= 10, (found, w.pool(), w.logs_tail())


# --------------------------------------------------------------------------- the recipes


def test_the_celery_recipe_main_process_owns_the_sync_process_children_follow_patches_heal_and_it_stops_clean(
    server: FeatBitStandIn, tmp_path: Path
) -> None:
    pytest.importorskip("celery")
    w = Worker(server, tmp_path, "tasks")
    try:
        print(f"\nCelery tasks.py: first flag served {w.first_flag():.3f} s after start")
        assert len(w.pool()) == CONCURRENCY, (w.pool(), w.logs_tail())
        served = w.every_pool_process()
        assert set(served) == w.pool() and all(a["theme"] == "new" for a in served.values()), (served, w.logs_tail())
        assert_the_main_process_owns_the_one_sync_process(w)

        pushed = time.monotonic()
        server.update_flag(theme(enabled=False, version=1))
        assert_every_pool_process_follows(w, "classic", pushed, "a patch")

        # Leader and standby SIGKILLed: the pool processes heal the host on the main process's behalf.
        for pid in processes_of(w.namespace):
            os.kill(pid, signal.SIGKILL)
        healed = None
        deadline = time.monotonic() + 60
        for _ in range(200):  # bounded in count and time: tasks keep the pool processes watching
            status = w.status()
            if (status["state"] == "OK" and status["leader_alive"]) or time.monotonic() > deadline:
                healed = status["leader_pid"] if status["leader_alive"] else None
                break
            w.batch(pause=0.1)
        assert healed is not None, (w.status(), w.logs_tail())
        assert environ_of(healed)[b"FEATBIT_SHM_OWNER_PID"] == str(w.master).encode()
        assert parent_of(healed) != w.master and healed not in w.pool()  # started (detached) by a pool process
        pushed = time.monotonic()
        server.update_flag(theme(enabled=True, version=2))
        assert_every_pool_process_follows(w, "new", pushed, "a patch after healing")

        evaluated = w.evaluated()
        assert eventually(lambda: evaluated <= w.received(), timeout=30), sorted(evaluated - w.received())[:10]
        w.stop_and_check_nothing_is_left()
    finally:
        w.cleanup()


def test_a_client_built_at_import_time_is_adopted_by_every_pool_process_and_the_main_process_still_owns_the_sync_process(
    server: FeatBitStandIn, tmp_path: Path
) -> None:
    pytest.importorskip("celery")
    w = Worker(server, tmp_path, "tasks_client_at_import")
    try:
        print(f"\nCelery tasks_client_at_import.py: first flag served {w.first_flag():.3f} s after start")
        served = w.every_pool_process()
        assert set(served) == w.pool() and all(a["theme"] == "new" for a in served.values()), (served, w.logs_tail())
        assert_the_main_process_owns_the_one_sync_process(w)
        pushed = time.monotonic()
        server.update_flag(theme(enabled=False, version=1))
        assert_every_pool_process_follows(w, "classic", pushed, "a patch")
        evaluated = w.evaluated()
        assert eventually(lambda: evaluated <= w.received(), timeout=30), sorted(evaluated - w.received())[:10]
        w.stop_and_check_nothing_is_left()
    finally:
        w.cleanup()


def test_offline_every_pool_process_serves_the_flag_file_and_follows_its_edits(tmp_path: Path) -> None:
    pytest.importorskip("celery")
    w = Worker(None, tmp_path, "tasks")
    try:
        print(f"\nCelery tasks.py offline: first flag served {w.first_flag():.3f} s after start")
        served = w.every_pool_process()
        assert set(served) == w.pool() and all(a["theme"] == "new" for a in served.values()), (served, w.logs_tail())
        assert_the_main_process_owns_the_one_sync_process(w)
        # The page's edit: a new version moved into place.
        flags = w.folder / "flags.json"
        doc = json.loads(flags.read_text())
        doc["data"]["featureFlags"][0].update(isEnabled=False, updatedAt="2025-07-01T00:00:00.000Z")
        (w.folder / "flags.json.new").write_text(json.dumps(doc, indent=1))
        edited = time.monotonic()
        os.replace(w.folder / "flags.json.new", flags)
        assert_every_pool_process_follows(w, "classic", edited, "a file edit")
        w.stop_and_check_nothing_is_left()
    finally:
        w.cleanup()
