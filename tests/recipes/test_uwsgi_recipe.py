"""docs/recipes/uwsgi.md, run as written: real uWSGI (compiled from PyPI) on
loopback against the FeatBit stand-in, with the page's own files
(tests/recipes/uwsgi_app/, copied to a temporary folder) and its commands.

Each recipe proves, with generous liveness bounds:

* every worker serves the flag from shared memory (one request held open per
  worker, so each of the four answers, whatever uWSGI's accept balancing);
* a flag change reaches every worker within 10 s;
* the evaluations' events arrive at the stand-in (online);
* after SIGTERM no process, /dev/shm object or lock file of the store is left.

It prints the time from starting uWSGI to the first flag served.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from featbit_shm.shm.locks import remove_lock_files
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.testing.server import FeatBitStandIn

from ..app_servers import free_port
from ..sync_helpers import eventually, processes_of
from .common import fenced_blocks, parent_of

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "uwsgi_app"
DOC = ROOT / "docs" / "recipes" / "uwsgi.md"
FILES = ("app.py", "uwsgi.ini", "uwsgi-lazy.ini", "uwsgi-offline.ini", "flags.json")
WORKERS = 4  # processes = 4 in every ini of the page
FLAG = "checkout-theme"
BIN = Path(sys.executable).parent  # the venv's bin: uwsgi, python3, featbit-shm (the page activates the venv)
UWSGI = shutil.which("uwsgi", path=str(BIN)) or shutil.which("uwsgi")


def command(ini: str, port: int) -> list[str]:
    """The page's command for ``ini``, on ``port`` instead of 8000."""
    line = f"uwsgi --ini {ini} --http-socket 127.0.0.1:8000"
    assert line in DOC.read_text(), f"docs/recipes/uwsgi.md no longer shows `{line}`"
    assert UWSGI is not None
    return [UWSGI, *line.split()[1:-1], f"127.0.0.1:{port}"]


def test_the_page_shows_exactly_the_files_the_tests_run() -> None:
    blocks = fenced_blocks(DOC.read_text())
    for name in FILES:
        assert (APP / name).read_text() in blocks, (
            f"docs/recipes/uwsgi.md does not show tests/recipes/uwsgi_app/{name} as it is"
        )


@pytest.fixture
def uwsgi() -> str:
    if UWSGI is None:
        pytest.skip(
            "uWSGI is not installed (`pip install uwsgi` compiles it; scripts/test tries): uWSGI recipe skipped"
        )
    return UWSGI


def recipe_flags() -> list[dict[str, Any]]:
    """The page's flags.json: what the stand-in serves, and what offline mode reads."""
    flags: list[dict[str, Any]] = json.loads((APP / "flags.json").read_text())["data"]["featureFlags"]
    return flags


def changed(flag: dict[str, Any], *, enabled: bool, version: int) -> dict[str, Any]:
    """``flag`` switched on (serves "new") or off (serves "classic"), newer than before."""
    return {**flag, "isEnabled": enabled, "updatedAt": f"2025-07-{version:02d}T00:00:00.000Z"}


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=recipe_flags()) as s:
        yield s


class Recipe:
    """One uWSGI server started from a copy of the page's files, with the page's command."""

    def __init__(self, tmp_path: Path, ini: str, server: FeatBitStandIn | None) -> None:
        self.folder = tmp_path / "app"
        shutil.copytree(APP, self.folder)
        self.ini = self.folder / ini
        self.logs = tmp_path
        self.namespace = f"uwsgi-recipe-{uuid.uuid4().hex[:10]}"
        self.names = StoreNames.for_env(server.secret if server is not None else "", self.namespace)
        self.server = server
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "UWSGI_"))}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `. .venv/bin/activate`
            FEATBIT_NAMESPACE=self.namespace,
            FEATBIT_SHM_LOG_FILE=str(tmp_path / "sync.log"),
            FEATBIT_LOG_LEVEL="INFO",
        )
        if server is not None:
            env.update(
                FEATBIT_ENV_SECRET=server.secret,
                FEATBIT_STREAMING_URL=server.streaming_url,
                FEATBIT_EVENT_URL=server.event_url,
            )
        self.env = env
        self.output = open(tmp_path / "uwsgi.log", "wb")  # closed in cleanup()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            command(ini, self.port), env=env, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT
        )  # fmt: skip
        self.users = 0
        self.answers: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ requests

    def _user(self) -> str:
        self.users += 1
        return f"{self.namespace}-{self.users}"

    def ask(self) -> dict[str, Any]:
        """One request: GET /?user=... (the page's check)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(f"GET /?user={self._user()} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            return self._answer(s)

    def _answer(self, s: socket.socket) -> dict[str, Any]:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        answer: dict[str, Any] = json.loads(data.split(b"\r\n\r\n", 1)[1])
        self.answers.append(answer)
        return answer

    def one_round(self) -> list[dict[str, Any]]:
        """One request per worker: each request's first line is sent and held
        until all are, so each idle worker accepts one and waits for the rest
        (a worker busy with one request accepts no other). Then all complete."""
        held: list[socket.socket] = []
        try:
            for _ in range(WORKERS):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                held.append(s)
                s.sendall(f"GET /?user={self._user()} HTTP/1.0\r\n".encode())
            time.sleep(0.1)
            for s in held:
                s.sendall(b"Host: 127.0.0.1\r\n\r\n")
            return [self._answer(s) for s in held]
        finally:
            for s in held:
                s.close()

    def every_worker(self, exclude: Collection[int] = (), timeout: float = 30.0) -> dict[int, dict[str, Any]]:
        """The latest answer of each of the WORKERS workers (pids not in ``exclude``), bounded in count and time."""
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        for _ in range(100):
            if len(seen) >= WORKERS or time.monotonic() > deadline:
                break
            try:
                answers = self.one_round()
            except OSError:
                time.sleep(0.1)  # a reload in progress
                continue
            seen.update((a["pid"], a) for a in answers if a["pid"] not in exclude and a["kind"] != "ClientNotReady")
        return seen

    def first_flag(self, timeout: float = 60.0) -> float:
        """Seconds from starting uWSGI to the first flag served (not ClientNotReady)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"uWSGI exited with {self.proc.returncode}\n{self.logs_tail()}"
            try:
                if self.ask()["kind"] != "ClientNotReady":
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError(f"no flag served within {timeout} s\n{self.logs_tail()}")

    def following(self, theme: str, since: float, timeout: float = 10.0) -> dict[int, float]:
        """Seconds after ``since`` at which each worker first answered ``theme`` (every worker, or after ``timeout``)."""
        found: dict[int, float] = {}
        pids: set[int] = set()
        for _ in range(200):
            if (len(found) >= WORKERS and set(found) >= pids) or time.monotonic() - since > timeout:
                break
            for answer in self.one_round():
                pids.add(answer["pid"])
                if answer["theme"] == theme:
                    found.setdefault(answer["pid"], time.monotonic() - since)
        return found

    # ------------------------------------------------------------------ the host

    def status(self) -> dict[str, Any]:
        """`featbit-shm status --json`, with the server's FEATBIT_* variables."""
        tool = shutil.which("featbit-shm", path=str(BIN))
        argv = [tool] if tool else [sys.executable, "-m", "featbit_shm.cli"]
        env = {**self.env, **({"FEATBIT_OFFLINE": "1"} if self.server is None else {})}
        done = subprocess.run([*argv, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
        status: dict[str, Any] = json.loads(done.stdout)
        status["exit_status"] = done.returncode
        return status

    def sync_owner(self, pid: int) -> int:
        """FEATBIT_SHM_OWNER_PID of a sync process (read from /proc)."""
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
        return int(env.get(b"FEATBIT_SHM_OWNER_PID") or 0)

    def lock_files(self) -> list[str]:
        return [path for path in self.names.lock_files if os.path.exists(path)]

    def received(self) -> set[str]:
        """Users whose evaluation of the flag reached the stand-in."""
        assert self.server is not None
        return {
            e["user"]["keyId"]
            for e in self.server.events
            if e.get("variations") and e["variations"][0]["featureFlagKey"] == FLAG
        }

    def evaluated(self) -> set[str]:
        return {a["user"] for a in self.answers if a["kind"] != "ClientNotReady"}

    def stop_and_check_nothing_is_left(self) -> None:
        """The page's stop: SIGTERM to the master."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, self.logs_tail()
        assert eventually(lambda: processes_of(self.namespace, sync_only=False) == [], timeout=30), (
            processes_of(self.namespace, sync_only=False),
            self.logs_tail(),
        )
        assert eventually(lambda: self.names.all_objects() == [], timeout=15), self.names.all_objects()
        assert self.lock_files() == [], self.lock_files()

    def cleanup(self) -> None:
        """Whatever happened: no process, object or lock file of this store is left."""
        for pid in [self.proc.pid, *processes_of(self.namespace, sync_only=False)]:
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
        self.output.close()

    def logs_tail(self) -> str:
        tails = []
        for name in ("uwsgi.log", "sync.log"):
            path = self.logs / name
            if path.exists():
                lines = [
                    line for line in path.read_text(errors="replace").splitlines() if not line.startswith("[pid: ")
                ]
                tails.append(f"--- {name}\n" + "\n".join(lines[-40:]))  # without uWSGI's request log
        return "\n".join(tails)


def push(server: FeatBitStandIn, *, enabled: bool, version: int) -> float:
    server.update_flag(changed(recipe_flags()[0], enabled=enabled, version=version))
    return time.monotonic()


def assert_every_worker_follows(r: Recipe, theme: str, since: float, what: str) -> None:
    found = r.following(theme, since)
    print(
        f"uWSGI {r.ini.name}: {what} reached {len(found)} workers, the last after {max(found.values(), default=0):.3f} s"
    )
    assert len(found) >= WORKERS and max(found.values()) <= 10, (found, r.logs_tail())


# --------------------------------------------------------------------------- online: the mule


def test_the_mule_recipe_serves_every_worker_follows_patches_across_sighup_and_touch_reload_and_stops_clean(
    uwsgi: str, server: FeatBitStandIn, tmp_path: Path
) -> None:
    r = Recipe(tmp_path, "uwsgi.ini", server)
    try:
        print(f"\nuWSGI uwsgi.ini: first flag served {r.first_flag():.3f} s after start")
        workers = r.every_worker()
        assert len(workers) == WORKERS and all(a["theme"] == "new" for a in workers.values()), (workers, r.logs_tail())

        # One sync process (and its standby), owned by the mule; one websocket.
        assert eventually(lambda: len(processes_of(r.namespace)) == 2, timeout=15), processes_of(r.namespace)
        status = r.status()
        assert status["state"] == "OK" and status["exit_status"] == 0, status
        mule = r.sync_owner(status["leader_pid"])
        assert parent_of(mule) == r.proc.pid and mule not in workers, (mule, r.logs_tail())  # the mule
        assert server.open_connections == 1

        assert_every_worker_follows(r, "classic", push(server, enabled=False, version=1), "a patch")

        # SIGHUP: uWSGI replaces its workers and its mule; the new mule's sync process takes over.
        r.proc.send_signal(signal.SIGHUP)
        renewed = r.every_worker(exclude=set(workers), timeout=60)
        assert len(renewed) == WORKERS, (renewed, r.logs_tail())
        assert eventually(lambda: server.open_connections == 1, timeout=15)
        assert_every_worker_follows(r, "new", push(server, enabled=True, version=2), "a patch after SIGHUP")

        # touch-reload: the same graceful reload, from `touch uwsgi.ini`.
        os.utime(r.ini)
        touched = r.every_worker(exclude=set(workers) | set(renewed), timeout=60)
        assert len(touched) == WORKERS, (touched, r.logs_tail())
        assert eventually(lambda: server.open_connections == 1, timeout=15)
        assert_every_worker_follows(r, "classic", push(server, enabled=False, version=3), "a patch after touch-reload")

        evaluated = r.evaluated()
        assert eventually(lambda: evaluated <= r.received(), timeout=30), sorted(evaluated - r.received())[:10]
        r.stop_and_check_nothing_is_left()
    finally:
        r.cleanup()


def test_the_lazy_apps_recipe_chain_reloads_workers_while_the_mule_and_its_websocket_stay(
    uwsgi: str, server: FeatBitStandIn, tmp_path: Path
) -> None:
    r = Recipe(tmp_path, "uwsgi-lazy.ini", server)
    try:
        print(f"\nuWSGI uwsgi-lazy.ini: first flag served {r.first_flag():.3f} s after start")
        workers = r.every_worker()
        assert len(workers) == WORKERS, (workers, r.logs_tail())
        assert eventually(lambda: r.status()["state"] == "OK", timeout=15)
        leader = r.status()["leader_pid"]

        os.utime(r.ini)  # touch-chain-reload: the workers are replaced one at a time
        renewed = r.every_worker(exclude=set(workers), timeout=60)
        assert len(renewed) == WORKERS, (renewed, r.logs_tail())
        assert r.status()["leader_pid"] == leader  # the mule and its sync process stayed
        assert server.connections_accepted == 1 and server.open_connections == 1

        assert_every_worker_follows(
            r, "classic", push(server, enabled=False, version=1), "a patch after a chain reload"
        )
        evaluated = r.evaluated()
        assert eventually(lambda: evaluated <= r.received(), timeout=30), sorted(evaluated - r.received())[:10]
        r.stop_and_check_nothing_is_left()
    finally:
        r.cleanup()


# --------------------------------------------------------------------------- offline: a flag file


def test_the_offline_recipe_serves_the_flag_file_and_every_worker_follows_its_edits(uwsgi: str, tmp_path: Path) -> None:
    r = Recipe(tmp_path, "uwsgi-offline.ini", None)
    try:
        print(f"\nuWSGI uwsgi-offline.ini: first flag served {r.first_flag():.3f} s after start")
        workers = r.every_worker()
        assert len(workers) == WORKERS and all(a["theme"] == "new" for a in workers.values()), (workers, r.logs_tail())
        assert eventually(lambda: r.status()["state"] == "OK", timeout=15), r.status()

        # Edit the file as the page says: write a new version, move it into place.
        flags = r.folder / "flags.json"
        doc = json.loads(flags.read_text())
        doc["data"]["featureFlags"][0] = changed(doc["data"]["featureFlags"][0], enabled=False, version=1)
        (r.folder / "flags.json.new").write_text(json.dumps(doc, indent=1))
        edited = time.monotonic()
        os.replace(r.folder / "flags.json.new", flags)
        # The mule's sync process republishes the file ...
        assert eventually(lambda: r.status()["generation"] >= 2, timeout=10), r.status()
        # ... and every worker serves it, with no FEATBIT_SHM_SHARED in the page.
        found = r.following("classic", edited)
        print(f"uWSGI uwsgi-offline.ini: the file edit reached {len(found)} of {WORKERS} workers")
        assert len(found) >= WORKERS and max(found.values()) <= 10, (
            f"workers still serve the file as they loaded it: {found}; each loaded its own copy, because an "
            "offline Config with a bootstrap file is local unless FEATBIT_SHM_SHARED=1, which the mule (a sibling "
            f"of the workers) cannot set for them\n{r.logs_tail()}"
        )
        r.stop_and_check_nothing_is_left()
    finally:
        r.cleanup()
