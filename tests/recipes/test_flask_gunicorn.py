"""docs/recipes/flask-gunicorn.md, run as written: the page's Flask app
(tests/recipes/flask_app/app.py, copied to a temporary folder) under real
gunicorn with featbit-shm's hooks (``gunicorn -c python:gunicorn_hooks.conf``),
configured by the FEATBIT_* variables, on loopback against the FeatBit
stand-in: sync and gthread workers, each with ``--preload`` on and off, and
once with ``--user``/``--group`` (workers that switch to an unprivileged
account made with useradd). Each run proves, with generous liveness bounds:

* every worker serves the flag from shared memory, from its first answer on
  (the master waited for data before it forked them), with one sync leader,
  its standby and one websocket for the whole server;
* a flag patch pushed through the stand-in reaches every worker within 10 s;
* the evaluations' events arrive at the stand-in;
* after SIGTERM to the master no process, /dev/shm object or lock file of
  the store is left.

It prints the time from starting gunicorn to the first flag served
(``pytest -s``). The server class here is shared with test_django.py.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from featbit_shm.shm.locks import remove_lock_files
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..accounts import unprivileged_account
from ..app_servers import free_port
from ..sync_helpers import eventually, processes_of
from .common import fenced_blocks, parent_of

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "flask_app"
DOC = ROOT / "docs" / "recipes" / "flask-gunicorn.md"
BIN = Path(sys.executable).parent  # the venv's bin (the page activates the venv)
WORKERS = 4  # --workers 4 in every command of the page
FLAG = "checkout-theme"
ACCOUNT = "flaskapp"  # the page's account in --user/--group; the test makes its own
COMMANDS = {
    "sync": "gunicorn -c python:gunicorn_hooks.conf --workers 4 --bind 127.0.0.1:8000 app:app",
    "sync-preload": "gunicorn -c python:gunicorn_hooks.conf --preload --workers 4 --bind 127.0.0.1:8000 app:app",
    "gthread": (
        "gunicorn -c python:gunicorn_hooks.conf --worker-class gthread --threads 4 --workers 4 "
        "--bind 127.0.0.1:8000 app:app"
    ),
    "gthread-preload": (
        "gunicorn -c python:gunicorn_hooks.conf --worker-class gthread --threads 4 --preload --workers 4 "
        "--bind 127.0.0.1:8000 app:app"
    ),
    "user": (
        "gunicorn -c python:gunicorn_hooks.conf --user flaskapp --group flaskapp --preload --workers 4 "
        "--bind 127.0.0.1:8000 app:app"
    ),
}


def theme(*, patched: bool) -> dict[str, Any]:
    """The flag the app evaluates: "new" to everyone; patched, it is off and serves "dark"."""
    return b.flag(
        FLAG,
        variations=["new", "dark"],
        variation_type="string",
        enabled=not patched,
        off=1,
        updated_at="2025-06-01T00:00:00.000Z" if patched else b.DEFAULT_UPDATED_AT,
    )


def test_the_page_shows_exactly_the_app_and_the_commands_the_tests_run() -> None:
    text = DOC.read_text()
    assert (APP / "app.py").read_text() in fenced_blocks(text), (
        "docs/recipes/flask-gunicorn.md does not show tests/recipes/flask_app/app.py as it is"
    )
    for line in COMMANDS.values():
        assert line in text, f"docs/recipes/flask-gunicorn.md no longer shows `{line}`"


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[theme(patched=False)]) as s:
        yield s


# --------------------------------------------------------------------------- processes


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid:
                    found.add(int(entry))
            except (OSError, ValueError):
                continue
    return found


def processes_with(entries: Sequence[str]) -> list[int]:
    """Pids of every process with one of ``entries`` ("NAME=value") in its environment."""
    wanted = {entry.encode() for entry in entries}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if wanted & set(fh.read().split(b"\0")):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def program(name: str, *modules: str) -> str:
    """A program from the venv, or skip when it or a module it needs is missing."""
    for module in modules:
        pytest.importorskip(module, reason=f"{module} is not installed: the recipe is skipped")
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"no `{name}` program: the recipe is skipped")
    return path


def clean_environment() -> dict[str, str]:
    """The test's environment without featbit-shm's, gunicorn's or Django's variables
    (tests/conftest.py sets some for the test process), the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "GUNICORN_", "DJANGO_", "MYSITE_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `. .venv/bin/activate`
    return env


def command(line: str, port: int, program_path: str, replace: dict[str, str] | None = None) -> list[str]:
    """The page's command line as argv: its program from ``program_path``, port 8000 moved to ``port``."""
    argv = [program_path, *line.split()[1:]]
    argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in argv]
    return [(replace or {}).get(a, a) for a in argv]


# --------------------------------------------------------------------------- one server


class RecipeServer:
    """A server started from a copy of a page's files, with the page's command.

    ``markers`` are "NAME=value" entries of its environment that only this
    run's processes carry (its namespace): every process of the recipe,
    sync processes included, has one of them.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        logs: Path,
        server: FeatBitStandIn,
        namespace: str,
        port: int,
        markers: Sequence[str],
        user: Callable[[dict[str, Any]], str] = lambda answer: str(answer["user"]),
        parallel: int = 2 * WORKERS,
        **popen: Any,
    ) -> None:
        self.server = server
        self.namespace = namespace
        self.names = StoreNames.for_env(server.secret, namespace)
        self.port = port
        self.env = env
        self.logs = logs
        self.markers = [*markers, f"FEATBIT_NAMESPACE={namespace}"]
        self._user = user
        self.output = open(logs / "server.log", "wb")  # closed in cleanup()
        self.parallel = parallel
        self.pool = ThreadPoolExecutor(parallel)  # shut down in cleanup()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT, **popen
        )
        self._users = itertools.count(1)
        self.answers: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ requests

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def ask(self) -> dict[str, Any]:
        """GET /?user=... (the page's check), for a user of its own."""
        status, answer = self.get(f"/?user={self.namespace}-{next(self._users)}")
        assert status == 200, answer
        self.answers.append(answer)
        return answer

    def burst(self) -> list[dict[str, Any]]:
        """Requests on parallel connections, so several workers accept."""
        return list(self.pool.map(lambda _: self.ask(), range(self.parallel)))

    def first_flag(self, timeout: float = 60.0) -> float:
        """Seconds from starting the server to the first flag served (not ClientNotReady)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}\n{self.logs_tail()}"
            try:
                if self.ask()["kind"] != "ClientNotReady":
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError(f"no flag served within {timeout} s\n{self.logs_tail()}")

    def workers(self) -> set[int]:
        """The server's workers: the master's children but its sync process."""
        return children_of(self.proc.pid) - set(processes_of(self.namespace))

    def every_worker(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        since: float | None = None,
        timeout: float = 30.0,
        ask: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> dict[int, float]:
        """Seconds after ``since`` (default: now) at which each worker first
        gave an answer that ``predicate`` accepts to ``ask()``'s requests (by
        default :meth:`burst`); bounded in count and time."""
        began = time.monotonic() if since is None else since
        workers = self.workers()
        found: dict[int, float] = {}
        for _ in range(200):
            if (found and set(found) >= workers) or time.monotonic() - began > timeout:
                break
            for answer in (ask or self.burst)():
                if predicate(answer):
                    found.setdefault(answer["pid"], time.monotonic() - began)
        return found

    # ------------------------------------------------------------------ the host

    def status(self) -> dict[str, Any]:
        """``featbit-shm status --json`` for the store, as an operator runs it."""
        tool = shutil.which("featbit-shm", path=str(BIN))
        argv = [tool] if tool else [sys.executable, "-m", "featbit_shm.cli"]
        env = {k: v for k, v in self.env.items() if not k.startswith("FEATBIT_")}
        env.update(FEATBIT_ENV_SECRET=self.server.secret, FEATBIT_NAMESPACE=self.namespace)
        done = subprocess.run([*argv, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
        status: dict[str, Any] = json.loads(done.stdout)
        status["exit_status"] = done.returncode
        return status

    def received(self) -> set[str]:
        """Users whose evaluation of the flag reached the stand-in."""
        return {
            e["user"]["keyId"]
            for e in self.server.events
            if e.get("variations") and e["variations"][0]["featureFlagKey"] == FLAG
        }

    def evaluated(self) -> set[str]:
        return {self._user(a) for a in self.answers if a["kind"] != "ClientNotReady"}

    def processes(self) -> list[int]:
        """Every process of this run still there (server, workers, sync processes)."""
        return processes_with(self.markers)

    def lock_files(self) -> list[str]:
        return [path for path in self.names.lock_files if os.path.exists(path)]

    def check_nothing_is_left(self, timeout: float = 60.0) -> float:
        """Seconds until no process, /dev/shm object or lock file of the run is left."""
        began = time.monotonic()
        assert eventually(lambda: self.processes() == [], timeout=timeout), (self.processes(), self.logs_tail())
        assert eventually(lambda: self.names.all_objects() == [], timeout=15), (
            self.names.all_objects(),
            self.logs_tail(),
        )
        assert self.lock_files() == [], (self.lock_files(), self.logs_tail())
        return time.monotonic() - began

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """The page's stop: ``sig`` to the master; its exit status."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not stop within {timeout} s\n{self.logs_tail()}") from None

    def stop_and_check_nothing_is_left(self) -> float:
        """The page's stop, SIGTERM to the master; seconds until nothing of the store is left."""
        assert self.stop() == 0, self.logs_tail()
        return self.check_nothing_is_left()

    def cleanup(self) -> None:
        """Whatever happened: no process, object or lock file of this store is left."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for pid in [self.proc.pid, *self.processes()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        eventually(lambda: not self.processes(), timeout=15)
        remove_objects(self.names.all_objects(), self.names.access)
        remove_lock_files(self.lock_files(), self.names.access)
        self.output.close()

    def logs_tail(self) -> str:
        tails = []
        for name in ("server.log", "sync.log"):
            path = self.logs / name
            if path.exists():
                lines = [line for line in path.read_text(errors="replace").splitlines() if '"GET /' not in line]
                tails.append(f"--- {name}\n" + "\n".join(lines[-40:]))  # without the access log
        return "\n".join(tails)


def prove_the_recipe(r: RecipeServer, label: str, *, account: int | None = None) -> None:
    """The checks every gunicorn-served recipe passes, up to its stop:
    every worker serves the flag, one leader and one websocket, a patch
    reaches every worker within 10 s, every event arrives."""
    server = r.server
    print(f"\n{label}: first flag served {r.first_flag():.3f} s after start")

    # Every worker serves the flag; none ever answered without data: the
    # master waited for the first snapshot before it forked them.
    assert eventually(lambda: len(r.workers()) == WORKERS, timeout=30), (r.workers(), r.logs_tail())
    served = r.every_worker(lambda a: a["theme"] == "new" and a["kind"] == "Fallthrough")
    assert set(served) == r.workers(), (served, r.workers(), r.logs_tail())
    assert all(a["kind"] != "ClientNotReady" for a in r.answers), r.answers
    if account is not None:
        assert {a["uid"] for a in r.answers} == {account}, "a worker did not switch to the account"
    status, health = r.get("/health")
    assert status == 200 and health["ok"] is True, health

    # One sync leader and its standby (started by the master), one websocket.
    assert eventually(lambda: len(processes_of(r.namespace)) == 2, timeout=30), processes_of(r.namespace)
    host = r.status()
    assert host["state"] == "OK" and host["leader_alive"] is True and host["exit_status"] == 0, host
    assert server.open_connections == 1

    # A patch reaches every worker within 10 s.
    pushed = time.monotonic()
    server.update_flag(theme(patched=True))
    following = r.every_worker(lambda a: a["theme"] == "dark" and a["kind"] == "Off", since=pushed, timeout=10)
    last = max(following.values(), default=0.0)
    print(f"{label}: the patch reached {len(following)} workers, the last after {last:.3f} s")
    assert set(following) == r.workers() and last <= 10, (following, r.workers(), r.logs_tail())

    # Every evaluation's event arrives.
    evaluated = r.evaluated()
    assert eventually(lambda: evaluated <= r.received(), timeout=30), sorted(evaluated - r.received())[:10]


# --------------------------------------------------------------------------- the runs


class FlaskGunicorn(RecipeServer):
    """The page's gunicorn command in a copy of flask_app/, configured by the page's FEATBIT_* variables."""

    def __init__(
        self,
        server: FeatBitStandIn,
        recipe: str,
        folder: Path,
        logs: Path,
        *,
        gunicorn: str,
        python_path: str = "",
        account: str = ACCOUNT,
    ) -> None:
        namespace = f"flask-{recipe}-{uuid.uuid4().hex[:8]}"
        port = free_port()
        env = clean_environment()
        env.update(
            # The page's three variables:
            FEATBIT_ENV_SECRET=server.secret,
            FEATBIT_STREAMING_URL=server.streaming_url,
            FEATBIT_EVENT_URL=server.event_url,
            # The test's own: a store of this test, the sync process's log,
            # no warm-start file in the home directory.
            FEATBIT_NAMESPACE=namespace,
            FEATBIT_SHM_LOG_FILE=str(logs / "sync.log"),
            FEATBIT_LOG_LEVEL="INFO",
            FEATBIT_SHM_WARM_START="0",
        )
        if python_path:
            env["PYTHONPATH"] = python_path
        argv = command(COMMANDS[recipe], port, gunicorn, {ACCOUNT: account})
        super().__init__(
            argv, cwd=folder, env=env, logs=logs, server=server, namespace=namespace, port=port, markers=()
        )


@pytest.mark.parametrize("recipe", ["sync", "sync-preload", "gthread", "gthread-preload"])
def test_the_recipe_serves_every_worker_follows_a_patch_delivers_events_and_stops_clean(
    recipe: str, server: FeatBitStandIn, tmp_path: Path
) -> None:
    gunicorn = program("gunicorn", "flask", "gunicorn")
    folder = tmp_path / "app"
    shutil.copytree(APP, folder)
    r = FlaskGunicorn(server, recipe, folder, tmp_path, gunicorn=gunicorn)
    try:
        prove_the_recipe(r, f"Flask, gunicorn {recipe}")
        evaluated = r.evaluated()
        assert r.stop() == 0, r.logs_tail()
        gone = r.check_nothing_is_left()
        print(f"Flask, gunicorn {recipe}: nothing of the store left {gone:.1f} s after gunicorn exited")
        assert evaluated <= r.received()  # the final drain lost nothing
    finally:
        r.cleanup()


# --------------------------------------------------------------------------- another account


@pytest.fixture(scope="module")
def shared_folder() -> Iterator[Path]:
    """A folder other accounts can read (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="featbit-flask-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def readable_venv(shared_folder: Path) -> str:
    """A venv another account can run, with gunicorn, Flask and featbit-shm's
    dependencies: the test's interpreter may live under a private home (pyenv
    in /root). featbit-shm itself comes from the checkout (PYTHONPATH), as it
    would from ``pip install /path/to/featbit-shm``."""
    pytest.importorskip("flask", reason="flask is not installed: the Flask recipe is skipped")
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    if system is None:
        pytest.skip("no system python3 that another account could run")
    venv = shared_folder / "venv"
    subprocess.run([system, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    packages = ["gunicorn", "flask", "msgpack", "websocket-client"]
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *packages],
        capture_output=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.skip(f"could not install {packages} for the system python: {install.stderr.decode()[-300:]}")
    return str(venv / "bin")


@pytest.fixture(scope="module")
def account(readable_venv: str, shared_folder: Path) -> Iterator[pwd.struct_passwd]:
    with unprivileged_account("fbshm-flask") as made:
        app = shared_folder / "app"
        shutil.copytree(APP, app, dirs_exist_ok=True)
        for path in [app, *app.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        probe = subprocess.run(
            [str(Path(readable_venv) / "python"), "-c", "import featbit_shm, gunicorn_hooks, flask, app"],
            user=made.pw_uid,
            group=made.pw_gid,
            extra_groups=[],
            capture_output=True,
            timeout=60,
            cwd=app,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if probe.returncode != 0:
            pytest.skip(f"the checkout is not readable by another account: {probe.stderr.decode()[-300:]}")
        yield made


def test_workers_that_switch_to_another_account_serve_follow_a_patch_deliver_events_and_stop_clean(
    server: FeatBitStandIn, account: pwd.struct_passwd, readable_venv: str, shared_folder: Path, tmp_path: Path
) -> None:
    # The master runs as root (it starts the sync process, which owns the
    # store); the workers switch to the account after the fork and must read
    # every snapshot and write their event rings.
    r = FlaskGunicorn(
        server,
        "user",
        shared_folder / "app",
        tmp_path,
        gunicorn=str(Path(readable_venv) / "gunicorn"),
        python_path=str(ROOT),
        account=account.pw_name,
    )
    try:
        prove_the_recipe(r, "Flask, gunicorn --user/--group", account=account.pw_uid)
        names = r.names
        control = os.stat("/dev/shm" + names.control)
        assert control.st_uid == os.geteuid() and control.st_mode & 0o022 == 0  # never writable by the workers
        evaluated = r.evaluated()
        assert r.stop() == 0, r.logs_tail()
        r.check_nothing_is_left()
        assert evaluated <= r.received()
    finally:
        r.cleanup()
