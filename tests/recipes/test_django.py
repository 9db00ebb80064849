"""docs/recipes/django.md, run as written: the page's Django site
(tests/recipes/django_site/, copied to a temporary folder), whose settings.py
configures featbit-shm with ``featbit_shm.set_config(Config(...))`` from the
site's own variables (``MYSITE_FEATBIT_*``; no FEATBIT_* connection variable
is set anywhere), on loopback against the FeatBit stand-in:

* under real gunicorn with featbit-shm's hooks and ``--preload``: every
  worker serves the flag from shared memory from its first answer on, with
  one sync leader and one websocket; a patch reaches every worker within
  10 s; the page's management command, run meanwhile with its output
  captured, answers at once from the server's store and starts no sync
  process; every event arrives; after SIGTERM nothing of the store is left;
* under gunicorn without ``--preload`` (the page's "Without --preload"):
  the master cannot see the Config, a worker starts the sync process for
  it, every worker serves once it runs, and nothing is left after SIGTERM;
* the management command on a host where nothing runs: it starts a detached
  sync process, returns as soon as it has printed although its output is
  captured, a second run uses that sync process, their events arrive, and
  once ``FEATBIT_SHM_IDLE_TIMEOUT`` (3 s here, 30 s by default) has passed
  no process, /dev/shm object or lock file is left;
* ``manage.py runserver`` with its autoreloader (two processes: the
  reloader and the server it restarts when a file changes) and with
  ``--noreload``: the flag is served, follows a patch, survives a reload on
  the same sync process and websocket, events arrive, and after Ctrl-C
  (SIGINT to the process group) and the idle timeout nothing is left.

It prints the time from starting each to the first flag served (``pytest -s``).
"""

from __future__ import annotations

import http.client
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
from featbit_shm.testing.server import FeatBitStandIn

from ..app_servers import free_port
from ..sync_helpers import eventually, processes_of
from .test_flask_gunicorn import (
    WORKERS,
    RecipeServer,
    clean_environment,
    command,
    fenced_blocks,
    processes_with,
    program,
    prove_the_recipe,
    theme,
)

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(__file__).resolve().parent / "django_site"
DOC = ROOT / "docs" / "recipes" / "django.md"
FLAG = "checkout-theme"
IDLE_TIMEOUT = "3"  # FEATBIT_SHM_IDLE_TIMEOUT for the runs without the hooks (30 s by default)
COMMANDS = {
    "gunicorn": "gunicorn -c python:gunicorn_hooks.conf --preload --workers 4 --bind 127.0.0.1:8000 mysite.wsgi",
    "gunicorn-no-preload": "gunicorn -c python:gunicorn_hooks.conf --workers 4 --bind 127.0.0.1:8000 mysite.wsgi",
    "flag_value": "python manage.py flag_value checkout-theme --user alice",
    "runserver": "python manage.py runserver 127.0.0.1:8000",
    "runserver-noreload": "python manage.py runserver --noreload 127.0.0.1:8000",
}


def test_the_page_shows_exactly_the_site_and_the_commands_the_tests_run() -> None:
    text = DOC.read_text()
    blocks = fenced_blocks(text)
    for path in sorted(SITE.rglob("*.py")):
        name = path.relative_to(SITE).as_posix()
        if path.read_text():
            assert path.read_text() in blocks, f"docs/recipes/django.md does not show {name} as it is"
        else:
            assert name in text, f"docs/recipes/django.md does not name the empty file {name}"
    for line in COMMANDS.values():
        assert line in text, f"docs/recipes/django.md no longer shows `{line}`"


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[theme(patched=False)]) as s:
        yield s


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of the page's site."""
    pytest.importorskip("django", reason="django is not installed: the Django recipe is skipped")
    folder = tmp_path / "site"
    shutil.copytree(SITE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def site_environment(server: FeatBitStandIn, namespace: str, logs: Path, *, hooks: bool = False) -> dict[str, str]:
    """The page's variables, read by settings.py, and the test's own."""
    env = clean_environment()
    env.update(
        # The page's three variables (settings.py's names, not featbit-shm's):
        MYSITE_FEATBIT_ENV_SECRET=server.secret,
        MYSITE_FEATBIT_STREAMING_URL=server.streaming_url,
        MYSITE_FEATBIT_EVENT_URL=server.event_url,
        # The test's own: a store of this test (settings.py reads it too),
        # the sync process's log, no warm-start file in the home directory,
        # and without the hooks, a short idle timeout for the sync process a
        # client starts (the hooks' sync process runs as long as gunicorn).
        MYSITE_FEATBIT_NAMESPACE=namespace,
        FEATBIT_SHM_LOG_FILE=str(logs / "sync.log"),
        FEATBIT_LOG_LEVEL="INFO",
        FEATBIT_SHM_WARM_START="0",
    )
    connection = ("FEATBIT_ENV_SECRET", "FEATBIT_STREAMING_URL", "FEATBIT_EVENT_URL", "FEATBIT_NAMESPACE")
    assert not set(connection) & set(env), "the site must be configured by settings.py alone"
    if not hooks:
        env["FEATBIT_SHM_IDLE_TIMEOUT"] = IDLE_TIMEOUT
    return env


def flag_value(site: Path, env: dict[str, str], user: str) -> tuple[dict[str, Any], float, str]:
    """The page's management command for ``user``, its output captured as a
    cron job or a CI runner captures it: its JSON answer, how long the
    command took, its stderr."""
    argv = command(COMMANDS["flag_value"], 0, sys.executable, {"alice": user})
    began = time.monotonic()
    done = subprocess.run(argv, cwd=site, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - began
    assert done.returncode == 0, (done.stdout, done.stderr)
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer, took, done.stderr


def received_users(server: FeatBitStandIn) -> set[str]:
    return {
        e["user"]["keyId"]
        for e in server.events
        if e.get("variations") and e["variations"][0]["featureFlagKey"] == FLAG
    }


# --------------------------------------------------------------------------- gunicorn


def test_gunicorn_with_preload_serves_every_worker_from_the_settings_config_and_stops_clean(
    server: FeatBitStandIn, site: Path, tmp_path: Path
) -> None:
    gunicorn = program("gunicorn", "django", "gunicorn")
    namespace = f"django-guni-{uuid.uuid4().hex[:8]}"
    env = site_environment(server, namespace, tmp_path, hooks=True)
    port = free_port()
    r = RecipeServer(
        command(COMMANDS["gunicorn"], port, gunicorn),
        cwd=site,
        env=env,
        logs=tmp_path,
        server=server,
        namespace=namespace,
        port=port,
        markers=[f"MYSITE_FEATBIT_NAMESPACE={namespace}"],
    )
    try:
        prove_the_recipe(r, "Django, gunicorn --preload")

        # The management command on the server's host: it maps the server's
        # store (the patched flag) and starts no sync process of its own.
        sync = set(processes_of(namespace))
        answer, took, _ = flag_value(site, env, f"{namespace}-command")
        print(f"Django, manage.py flag_value beside gunicorn: answered and exited in {took:.3f} s")
        assert answer == {"flag": FLAG, "user": f"{namespace}-command", "value": "dark", "kind": "Off"}, answer
        assert set(processes_of(namespace)) == sync
        assert eventually(lambda: f"{namespace}-command" in received_users(server), timeout=30)

        evaluated = r.evaluated()
        assert r.stop() == 0, r.logs_tail()
        gone = r.check_nothing_is_left()
        print(f"Django, gunicorn --preload: nothing of the store left {gone:.1f} s after gunicorn exited")
        assert evaluated <= r.received()
    finally:
        r.cleanup()


def test_gunicorn_without_preload_serves_once_a_worker_has_started_the_sync_process_and_stops_clean(
    server: FeatBitStandIn, site: Path, tmp_path: Path
) -> None:
    # The page's "Without --preload": the master never sees settings.py's
    # Config, so it starts no sync process; a worker starts one for it (2 s
    # after its first request found none), owned by the master. Until then
    # the workers answer with the default.
    gunicorn = program("gunicorn", "django", "gunicorn")
    namespace = f"django-lazy-{uuid.uuid4().hex[:8]}"
    port = free_port()
    r = RecipeServer(
        command(COMMANDS["gunicorn-no-preload"], port, gunicorn),
        cwd=site,
        env=site_environment(server, namespace, tmp_path, hooks=True),
        logs=tmp_path,
        server=server,
        namespace=namespace,
        port=port,
        markers=[f"MYSITE_FEATBIT_NAMESPACE={namespace}"],
    )
    try:
        print(f"\nDjango, gunicorn without --preload: first flag served {r.first_flag():.3f} s after start")
        assert eventually(lambda: len(r.workers()) == WORKERS, timeout=30), (r.workers(), r.logs_tail())
        served = r.every_worker(lambda a: a["theme"] == "new" and a["kind"] == "Fallthrough")
        assert set(served) == r.workers(), (served, r.workers(), r.logs_tail())
        assert eventually(lambda: len(processes_of(namespace)) == 2, timeout=30), processes_of(namespace)
        sync = set(processes_of(namespace))
        assert not sync & r.workers()
        assert server.open_connections == 1
        evaluated = r.evaluated()
        assert eventually(lambda: evaluated <= r.received(), timeout=30), sorted(evaluated - r.received())[:10]
        assert r.stop() == 0, r.logs_tail()
        gone = r.check_nothing_is_left()
        print(f"Django, gunicorn without --preload: nothing of the store left {gone:.1f} s after gunicorn exited")
    finally:
        r.cleanup()


# --------------------------------------------------------------------------- the management command


def test_the_management_command_returns_promptly_and_its_sync_process_idles_out(
    server: FeatBitStandIn, site: Path, tmp_path: Path
) -> None:
    namespace = f"django-cmd-{uuid.uuid4().hex[:8]}"
    env = site_environment(server, namespace, tmp_path)
    names = StoreNames.for_env(server.secret, namespace)
    markers = [f"MYSITE_FEATBIT_NAMESPACE={namespace}", f"FEATBIT_NAMESPACE={namespace}"]
    try:
        # Cold: nothing serves the store; the command starts a sync process,
        # detached, and returns although that process outlives it.
        cold, took, stderr = flag_value(site, env, f"{namespace}-1")
        print(f"\nDjango, manage.py flag_value on a cold host: answered and exited in {took:.3f} s")
        assert cold == {"flag": FLAG, "user": f"{namespace}-1", "value": "new", "kind": "Fallthrough"}, (cold, stderr)
        assert eventually(lambda: len(processes_of(namespace)) == 2, timeout=30), processes_of(namespace)
        sync = set(processes_of(namespace))  # the leader and its standby

        # Warm: the next run uses that sync process; a patch shows.
        server.update_flag(theme(patched=True))
        pushed = time.monotonic()
        warm: dict[str, Any] = {}
        for attempt in range(20):  # bounded: the patch shows within 10 s
            warm, took, stderr = flag_value(site, env, f"{namespace}-{2 + attempt}")
            if warm["value"] == "dark" or time.monotonic() - pushed > 10:
                break
        print(f"Django, manage.py flag_value on a warm host: answered and exited in {took:.3f} s")
        assert warm["value"] == "dark" and warm["kind"] == "Off", (warm, stderr)
        assert set(processes_of(namespace)) == sync, "the warm run did not use the cold run's sync process"

        users = {f"{namespace}-{n}" for n in range(1, 3 + attempt)}
        assert eventually(lambda: users <= received_users(server), timeout=30), sorted(users - received_users(server))

        # No client left: the sync process exits after its idle timeout and removes the store.
        began = time.monotonic()
        assert eventually(lambda: processes_with(markers) == [], timeout=60), processes_with(markers)
        assert eventually(lambda: names.all_objects() == [], timeout=15), names.all_objects()
        assert [p for p in names.lock_files if os.path.exists(p)] == []
        print(f"Django, manage.py flag_value: nothing left {time.monotonic() - began:.1f} s after the last run")
    finally:
        for pid in processes_with(markers):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        eventually(lambda: not processes_with(markers), timeout=15)
        remove_objects(names.all_objects(), names.access)
        remove_lock_files([p for p in names.lock_files if os.path.exists(p)], names.access)


# --------------------------------------------------------------------------- runserver


class Runserver(RecipeServer):
    """``manage.py runserver`` in its own process group, as a terminal runs it
    (Ctrl-C sends SIGINT to the group: the reloader and its server alike)."""

    def __init__(self, server: FeatBitStandIn, site: Path, logs: Path, recipe: str) -> None:
        namespace = f"django-{recipe}-{uuid.uuid4().hex[:8]}"
        port = free_port()
        argv = command(COMMANDS[recipe], port, sys.executable)
        self.reloads = recipe == "runserver"
        super().__init__(
            argv,
            cwd=site,
            env=site_environment(server, namespace, logs),
            logs=logs,
            server=server,
            namespace=namespace,
            port=port,
            markers=[f"MYSITE_FEATBIT_NAMESPACE={namespace}"],
            start_new_session=True,
        )

    def workers(self) -> set[int]:
        """The process that serves: the reloader's child, or runserver itself with --noreload."""
        return super().workers() if self.reloads else {self.proc.pid}

    def control_c(self, timeout: float = 30.0) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runserver did not stop within {timeout} s of Ctrl-C\n{self.logs_tail()}") from None


@pytest.mark.parametrize("recipe", ["runserver", "runserver-noreload"])
def test_runserver_serves_follows_a_patch_and_a_reload_and_leaves_nothing_after_ctrl_c(
    recipe: str, server: FeatBitStandIn, site: Path, tmp_path: Path
) -> None:
    r = Runserver(server, site, tmp_path, recipe)
    label = f"Django, manage.py {recipe}"
    try:
        print(f"\n{label}: first flag served {r.first_flag():.3f} s after start")
        serving = r.workers()
        assert len(serving) == 1, (serving, r.logs_tail())
        assert {a["pid"] for a in r.answers if a["kind"] != "ClientNotReady"} <= serving
        if r.reloads:
            assert serving != {r.proc.pid}  # the reloader serves nothing; its child does

        # The first request's client started one sync process (and its
        # standby), detached: neither is a child of a runserver process.
        assert eventually(lambda: len(processes_of(r.namespace)) == 2, timeout=30), processes_of(r.namespace)
        host = r.status()
        assert host["state"] == "OK" and host["exit_status"] == 0, host
        leader = host["leader_pid"]
        assert server.open_connections == 1

        pushed = time.monotonic()
        server.update_flag(theme(patched=True))
        following = r.every_worker(lambda a: a["theme"] == "dark" and a["kind"] == "Off", since=pushed, timeout=10)
        print(f"{label}: the patch reached the server after {max(following.values(), default=0.0):.3f} s")
        assert set(following) == serving, (following, serving, r.logs_tail())

        if r.reloads:
            # A code change: the reloader starts a new server process, which
            # maps the same store at once; same sync process, same websocket.
            views = site / "flags" / "views.py"
            later = time.time() + 2
            os.utime(views, (later, later))
            changed = time.monotonic()
            answer: dict[str, Any] = {}
            for _ in range(3000):  # bounded in count and time
                if time.monotonic() - changed > 30:
                    break
                try:
                    answer = r.ask()
                except (OSError, http.client.HTTPException, json.JSONDecodeError):
                    # The old server is gone or the new one not listening yet;
                    # or the reloader ended the old server process while it
                    # was writing an answer, which arrives cut off (empty).
                    time.sleep(0.05)
                    continue
                if answer["pid"] not in serving:
                    break
                time.sleep(0.05)
            print(f"{label}: a new server process answered {time.monotonic() - changed:.3f} s after the change")
            assert answer.get("pid") not in serving and answer["theme"] == "dark", (answer, r.logs_tail())
            assert r.workers() == {answer["pid"]}, (r.workers(), answer)
            assert r.status()["leader_pid"] == leader and server.open_connections == 1

        evaluated = r.evaluated()
        assert eventually(lambda: evaluated <= r.received(), timeout=30), sorted(evaluated - r.received())[:10]

        assert r.control_c() == 0, r.logs_tail()
        gone = r.check_nothing_is_left()
        print(f"{label}: nothing of the store left {gone:.1f} s after Ctrl-C (idle timeout {IDLE_TIMEOUT} s)")
    finally:
        r.cleanup()
