"""docs/recipes/fastapi.md, run as written: the page's FastAPI app
(tests/recipes/fastapi_app/app.py, copied to a temporary folder) under

* gunicorn with uvicorn workers and featbit-shm's hooks
  (``gunicorn -c python:gunicorn_hooks.conf -k uvicorn_worker.UvicornWorker``), and
* plain ``uvicorn --workers 4``: no hooks; the first worker's client starts
  a detached sync process, every worker waits for data in the ASGI lifespan
  without blocking its event loop,

each a real server on loopback against the FeatBit stand-in. Each run
proves, with generous liveness bounds:

* every worker serves the flag from shared memory, from its first answer on
  (the lifespan waited for data), with one sync leader and one websocket;
* a flag patch reaches every worker within 10 s;
* the evaluations' events arrive at the stand-in;
* after the page's stop no process, /dev/shm object or lock file of the
  store is left (plain uvicorn: once the sync process's idle timeout ran
  out; the test shortens it from 30 s to 5 s).

It prints the time from starting the server to the first flag served.

The page's test file for the app's own tests (tests/recipes/fastapi_app/
app_tests.py, shown on the page as test_app.py) is run with pytest, offline,
as a user runs it. A last test checks that the page shows these files and
commands exactly as the tests run them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featbit_shm.shm.names import StoreNames
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..app_servers import free_port
from ..sync_helpers import eventually, processes_of
from .common import fenced_blocks, parent_of
from .test_flask_gunicorn import RecipeServer

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "fastapi_app"
DOC = ROOT / "docs" / "recipes" / "fastapi.md"
BIN = Path(sys.executable).parent  # the venv's bin (the page activates the venv)
WORKERS = 4  # --workers 4 in both commands of the page
FLAG = "checkout-theme"
COMMANDS = {
    "gunicorn": "gunicorn -c python:gunicorn_hooks.conf -k uvicorn_worker.UvicornWorker --workers 4 --bind 127.0.0.1:8000 app:app",
    "uvicorn": "uvicorn app:app --host 127.0.0.1 --port 8000 --workers 4",
}
#: What each command needs installed: its program and the modules it imports.
NEEDS = {"gunicorn": ("gunicorn", ("fastapi", "uvicorn_worker")), "uvicorn": ("uvicorn", ("fastapi", "uvicorn"))}


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
    for name in ("app.py", "app_tests.py"):
        assert (APP / name).read_text() in fenced_blocks(text), (
            f"docs/recipes/fastapi.md does not show tests/recipes/fastapi_app/{name} as it is"
        )
    for line in COMMANDS.values():
        assert line in text, f"docs/recipes/fastapi.md no longer shows `{line}`"


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[theme(patched=False)]) as s:
        yield s


def program(recipe: str) -> str:
    """The recipe's server program from the venv, or skip when it is not installed."""
    name, modules = NEEDS[recipe]
    for module in modules:
        pytest.importorskip(module, reason=f"{module} is not installed: the FastAPI recipe ({recipe}) is skipped")
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"no `{name}` program: the FastAPI recipe ({recipe}) is skipped")
    return path


class Recipe(RecipeServer):
    """One server started from a copy of the page's app, with the page's command and environment."""

    def __init__(self, tmp_path: Path, recipe: str, server: FeatBitStandIn) -> None:
        self.recipe = recipe
        self.folder = tmp_path / "app"
        shutil.copytree(APP, self.folder)
        namespace = f"fastapi-{recipe}-{uuid.uuid4().hex[:8]}"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "GUNICORN_", "UVICORN_"))}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `. .venv/bin/activate`
            # The page's three variables:
            FEATBIT_ENV_SECRET=server.secret,
            FEATBIT_STREAMING_URL=server.streaming_url,
            FEATBIT_EVENT_URL=server.event_url,
            # The test's own: a store of this test, the sync process's log, no
            # warm-start file in the home directory, and (plain uvicorn) a
            # 5 s idle timeout instead of 30 s, so the run stays short.
            FEATBIT_NAMESPACE=namespace,
            FEATBIT_SHM_LOG_FILE=str(tmp_path / "sync.log"),
            FEATBIT_LOG_LEVEL="INFO",
            FEATBIT_SHM_WARM_START="0",
            FEATBIT_SHM_IDLE_TIMEOUT="5",
        )
        argv = [program(recipe), *COMMANDS[recipe].split()[1:]]
        argv = [str(port) if a == "8000" else a.replace(":8000", f":{port}") for a in argv]
        super().__init__(argv, cwd=self.folder, env=env, logs=tmp_path, server=server, namespace=namespace, port=port, markers=())

    def workers(self) -> set[int]:
        """The server's worker processes: the master's children but the sync
        processes (gunicorn's) and multiprocessing's resource tracker (uvicorn's)."""
        found = set()
        for pid in super().workers():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"resource_tracker" not in fh.read():
                        found.add(pid)
            except OSError:
                continue
        return found


@pytest.mark.parametrize("recipe", ["gunicorn", "uvicorn"])
def test_the_recipe_serves_every_worker_follows_a_patch_delivers_events_and_stops_clean(
    recipe: str, server: FeatBitStandIn, tmp_path: Path
) -> None:
    program(recipe)
    r = Recipe(tmp_path, recipe, server)
    try:
        print(f"\nFastAPI, {recipe}: first flag served {r.first_flag():.3f} s after start")

        # Every worker serves the flag; none ever answered without data (the
        # lifespan, or the hooks' post_fork, waited for it before serving).
        assert eventually(lambda: len(r.workers()) == WORKERS, timeout=30), (r.workers(), r.logs_tail())
        served = r.every_worker(lambda a: a["theme"] == "new" and a["kind"] == "Fallthrough")
        assert set(served) == r.workers(), (served, r.workers(), r.logs_tail())
        assert all(a["kind"] != "ClientNotReady" for a in r.answers), r.answers
        status, health = r.get("/health")
        assert status == 200 and health["ok"] is True, health

        # One sync leader and its standby, one websocket. Under plain uvicorn
        # they were started by a worker, detached: no uvicorn process is their parent.
        assert eventually(lambda: len(processes_of(r.namespace)) == 2, timeout=30), processes_of(r.namespace)
        host = r.status()
        assert host["state"] == "OK" and host["leader_alive"] is True and host["exit_status"] == 0, host
        registered = eventually(lambda: r.status()["clients"] == WORKERS, timeout=10, interval=0.2)
        assert registered, r.status()  # every worker is a client of the store
        assert server.open_connections == 1
        if recipe == "uvicorn":
            server_processes = {r.proc.pid, *r.workers()}
            sync_parents = {pid: parent_of(pid) for pid in processes_of(r.namespace)}
            assert not set(sync_parents.values()) & server_processes, sync_parents

        # A patch reaches every worker within 10 s.
        pushed = time.monotonic()
        server.update_flag(theme(patched=True))
        following = r.every_worker(lambda a: a["theme"] == "dark" and a["kind"] == "Off", since=pushed, timeout=10)
        last = max(following.values(), default=float("inf"))
        print(f"FastAPI, {recipe}: the patch reached {len(following)} workers, the last after {last:.3f} s")
        assert set(following) == r.workers() and last <= 10, (following, r.logs_tail())

        # Every evaluation's event arrives.
        evaluated = r.evaluated()
        assert eventually(lambda: evaluated <= r.received(), timeout=30), sorted(evaluated - r.received())[:10]

        gone = r.stop_and_check_nothing_is_left()
        print(f"FastAPI, {recipe}: nothing of the store left {gone:.1f} s after the server exited")
        assert evaluated <= r.received()
    finally:
        r.cleanup()


def test_the_apps_own_tests_pass_offline_without_waiting(tmp_path: Path) -> None:
    # The page's test_app.py (stored as app_tests.py, so that this suite does
    # not collect it), run with pytest next to a copy of app.py, as a user
    # runs it. FEATBIT_OFFLINE=1: no server, flags loaded by each test, and
    # the lifespan must not wait for data that no sync process will publish.
    pytest.importorskip("fastapi", reason="fastapi is not installed: the FastAPI recipe is skipped")
    if importlib.util.find_spec("httpx2") is None and importlib.util.find_spec("httpx") is None:
        pytest.skip("FastAPI's TestClient needs httpx2 (or httpx): the app's tests are skipped")
    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copy(APP / "app.py", folder / "app.py")
    shutil.copy(APP / "app_tests.py", folder / "test_app.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "PYTEST_"))}
    namespace = f"fastapi-offline-{uuid.uuid4().hex[:8]}"
    env["FEATBIT_NAMESPACE"] = namespace  # the test's own: no other offline store on this host is read
    names = StoreNames.for_env("", namespace)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:logging", "-p", "no:cacheprovider", "test_app.py"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - began
    print(f"\nFastAPI, the app's own tests (offline): {took:.2f} s")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "no flag data yet" not in output, (
        f"the lifespan waited its whole timeout (10 s) for an offline client: FBClient.wait_until_ready() waits "
        f"for a published generation where none will come (took {took:.1f} s)\n{output}"
    )
    assert names.all_objects() == []  # an offline client makes no shared-memory object
