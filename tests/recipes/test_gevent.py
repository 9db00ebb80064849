"""docs/recipes/gevent.md, run as written: the page's WSGI app
(tests/recipes/gevent_app/app.py, copied to a temporary folder) under real
gunicorn with monkey-patched gevent workers and featbit-shm's hooks
(``gunicorn -c python:gunicorn_hooks.conf -k gevent``), on loopback against
the FeatBit stand-in. It proves, with generous liveness bounds:

* every worker serves the flag from shared memory while it serves several
  requests at once (each answer counts the requests in flight in its worker),
  with one native thread per worker: featbit-shm starts none, and the
  page's flag watcher is a greenlet;
* one sync leader and one websocket for the whole server;
* a flag patch is heard by every worker's watcher greenlet while no request
  touches the client, and reaches every worker's requests within 10 s;
* the evaluations' events arrive at the stand-in;
* after SIGTERM no process, /dev/shm object or lock file of the store is left.

It prints the time from starting gunicorn to the first flag served.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..app_servers import free_port
from ..sync_helpers import eventually, processes_of
from .common import fenced_blocks, parent_of
from .test_flask_gunicorn import RecipeServer

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "gevent_app"
DOC = ROOT / "docs" / "recipes" / "gevent.md"
BIN = Path(sys.executable).parent  # the venv's bin (the page activates the venv)
WORKERS = 4  # --workers 4 in the page's command
FLAG = "checkout-theme"
COMMAND = "gunicorn -c python:gunicorn_hooks.conf -k gevent --workers 4 --bind 127.0.0.1:8000 app:app"
BURST = 4 * WORKERS  # requests sent at once


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


def test_the_page_shows_exactly_the_app_and_the_command_the_tests_run() -> None:
    text = DOC.read_text()
    assert (APP / "app.py").read_text() in fenced_blocks(text), (
        "docs/recipes/gevent.md does not show tests/recipes/gevent_app/app.py as it is"
    )
    assert COMMAND in text, f"docs/recipes/gevent.md no longer shows `{COMMAND}`"


@pytest.fixture
def gunicorn() -> str:
    pytest.importorskip("gevent", reason="gevent is not installed: the gevent recipe is skipped")
    pytest.importorskip("gunicorn", reason="gunicorn is not installed: the gevent recipe is skipped")
    path = shutil.which("gunicorn", path=str(BIN)) or shutil.which("gunicorn")
    if path is None:
        pytest.skip("no `gunicorn` program: the gevent recipe is skipped")
    return path


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[theme(patched=False)]) as s:
        yield s


def native_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class Recipe(RecipeServer):
    """gunicorn started from a copy of the page's app, with the page's command and environment."""

    def __init__(self, tmp_path: Path, gunicorn: str, server: FeatBitStandIn) -> None:
        self.folder = tmp_path / "app"
        shutil.copytree(APP, self.folder)
        namespace = f"gevent-{uuid.uuid4().hex[:10]}"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "GUNICORN_"))}
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `. .venv/bin/activate`
            # The page's three variables:
            FEATBIT_ENV_SECRET=server.secret,
            FEATBIT_STREAMING_URL=server.streaming_url,
            FEATBIT_EVENT_URL=server.event_url,
            # The test's own: a store of this test, the sync process's log,
            # no warm-start file in the home directory.
            FEATBIT_NAMESPACE=namespace,
            FEATBIT_SHM_LOG_FILE=str(tmp_path / "sync.log"),
            FEATBIT_LOG_LEVEL="INFO",
            FEATBIT_SHM_WARM_START="0",
        )
        argv = [gunicorn, *COMMAND.split()[1:]]
        argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in argv]
        super().__init__(
            argv, cwd=self.folder, env=env, logs=tmp_path, server=server, namespace=namespace, port=port, markers=(), parallel=BURST
        )

    def ask(self, wait: float = 0.0) -> dict[str, Any]:
        """GET /?user=...&wait=... for a user of its own."""
        status, answer = self.get(f"/?user={self.namespace}-{next(self._users)}&wait={wait}")
        assert status == 200, answer
        self.answers.append(answer)
        return answer

    def burst(self, wait: float = 0.0) -> list[dict[str, Any]]:
        """BURST requests at once, each waiting ``wait`` s in its worker (yielding)."""
        return list(self.pool.map(lambda _: self.ask(wait), range(BURST)))

    def changes(self) -> list[dict[str, Any]]:
        """BURST requests at once for /changes (they do not touch the client)."""
        return list(self.pool.map(lambda _: self.get("/changes")[1], range(BURST)))


def test_gevent_workers_serve_concurrent_requests_hear_a_patch_in_their_watcher_greenlet_and_stop_clean(
    gunicorn: str, server: FeatBitStandIn, tmp_path: Path
) -> None:
    r = Recipe(tmp_path, gunicorn, server)
    try:
        print(f"\ngevent: first flag served {r.first_flag():.3f} s after start")
        assert eventually(lambda: len(r.workers()) == WORKERS, timeout=30), (r.workers(), r.logs_tail())

        # Every worker serves the flag while it serves other requests (each
        # waits 0.3 s, yielding): two or more in flight in one worker at once.
        concurrent = r.every_worker(
            lambda a: a["theme"] == "new" and a["in_flight"] >= 2, since=time.monotonic(), ask=lambda: r.burst(0.3)
        )
        peak = {pid: max(a["in_flight"] for a in r.answers if a["pid"] == pid) for pid in concurrent}
        print(f"gevent: requests in flight at once, per worker: {peak}")
        assert set(concurrent) == r.workers(), (concurrent, r.workers(), r.logs_tail())
        assert all(a["kind"] == "Fallthrough" for a in r.answers), [a for a in r.answers if a["kind"] != "Fallthrough"]
        # featbit-shm starts no thread in a worker; the page's watcher is a greenlet.
        assert {pid: native_threads(pid) for pid in r.workers()} == dict.fromkeys(r.workers(), 1)

        # One sync leader (a child of the master, started in when_ready) and its standby; one websocket.
        assert eventually(lambda: len(processes_of(r.namespace)) == 2, timeout=30), processes_of(r.namespace)
        host = r.status()
        assert host["state"] == "OK" and host["leader_alive"] is True and host["exit_status"] == 0, host
        registered = eventually(lambda: r.status()["clients"] == WORKERS, timeout=10, interval=0.2)
        assert registered, r.status()  # every worker is a client of the store
        assert parent_of(host["leader_pid"]) == r.proc.pid
        assert server.open_connections == 1

        # A patch: every worker's watcher greenlet hears it, while no request
        # touches the client (/changes does not) ...
        pushed = time.monotonic()
        server.update_flag(theme(patched=True))
        change = {"flag": FLAG, "old": "new", "new": "dark"}
        heard = r.every_worker(
            lambda a: [{k: c[k] for k in change} for c in a["changes"]] == [change], since=pushed, timeout=10, ask=r.changes
        )
        last = max(heard.values(), default=float("inf"))
        print(f"gevent: the watchers of {len(heard)} workers heard the patch, the last after {last:.3f} s")
        assert set(heard) == r.workers() and last <= 10, (heard, r.logs_tail())
        # ... and every worker's requests serve it, within 10 s.
        following = r.every_worker(
            lambda a: a["theme"] == "dark" and a["kind"] == "Off", since=pushed, timeout=10, ask=lambda: r.burst(0.05)
        )
        last = max(following.values(), default=float("inf"))
        print(f"gevent: the patch reached {len(following)} workers, the last after {last:.3f} s")
        assert set(following) == r.workers() and last <= 10, (following, r.logs_tail())

        # Every evaluation's event arrives.
        evaluated = r.evaluated()
        assert eventually(lambda: evaluated <= r.received(), timeout=30), sorted(evaluated - r.received())[:10]

        r.stop_and_check_nothing_is_left()
        assert evaluated <= r.received()
    finally:
        r.cleanup()
