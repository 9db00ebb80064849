"""Shared test setup, and the test lanes.

Lanes (markers): ``unit`` -- the pure core and in-process shared memory, no
process started (the default lane: plain ``pytest``); ``slow`` -- in-process
but long (the fbclient differential oracle, the regex cost sweep); ``subprocess`` --
real sync processes, worker processes, forks; ``gunicorn``, ``uwsgi`` --
real servers; ``soak`` -- the chaos soak. A test marked with no lane is in
``unit``, and a guard fails a ``unit`` test that starts a process, so the
fast lane stays fast and honest. ``scripts/test`` runs every lane CI runs
(all but the soak).
"""

from __future__ import annotations

import _posixsubprocess  # type: ignore[import-not-found]
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

# Tests start their own sync processes; an online client must not start one
# behind their back (test_sync.py checks auto-start on its own).
os.environ["FEATBIT_SHM_AUTOSTART"] = "0"
# Nor heal a store whose sync process a test stopped on purpose; the healing
# tests turn it on for their own clients and servers.
os.environ["FEATBIT_SHM_HEAL"] = "0"
# No warm-start files under the home directory from test stores; the tests of
# warm start name their own state directory and turn it on.
os.environ["FEATBIT_SHM_WARM_START"] = "0"

from featbit_shm import Config, FBClient
from featbit_shm.testing import builders as b

FIXTURES = Path(__file__).parent / "fixtures"


def offline_client(*flags: dict[str, Any], segments: tuple[dict[str, Any], ...] = (), **config: Any) -> FBClient:
    """An offline client loaded with the given wire flags and segments."""
    client = FBClient(Config(offline=True, **config))
    assert client.initialize_from_external_json(json.dumps(b.data_sync(flags, segments)))
    return client


INTEGRATION_LANES = ("slow", "subprocess", "gunicorn", "uwsgi", "recipes", "soak")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(lane) for lane in INTEGRATION_LANES):
            item.add_marker(pytest.mark.unit)


def pytest_report_header(config: pytest.Config) -> str:
    return f"lanes selected: -m {config.getoption('markexpr') or '(all)'!r} (scripts/test runs every lane CI runs)"


@contextlib.contextmanager
def _no_process(nodeid: str) -> Iterator[None]:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(f"{nodeid} starts a process: mark it @pytest.mark.subprocess (tests/conftest.py)")

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(subprocess.Popen, "__init__", refuse))
        stack.enter_context(mock.patch.object(_posixsubprocess, "fork_exec", refuse))  # multiprocessing's spawn
        stack.enter_context(mock.patch.object(os, "fork", refuse))
        stack.enter_context(mock.patch.object(os, "posix_spawn", refuse))
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """A test in the unit lane that starts a process -- in its own body or in
    any fixture it uses, module-scoped ones included -- is in the wrong lane."""
    if item.get_closest_marker("unit") is None:
        yield
        return
    with _no_process(item.nodeid):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("unit") is None:
        yield
        return
    with _no_process(item.nodeid):
        yield


SESSION_STARTED = time.time()


def _remove_warm_files_of_this_session() -> None:
    """A test that runs a server with an environment of its own (no
    FEATBIT_SHM_WARM_START=0) may leave a warm-start file in the default
    state directory: remove those written during this session."""
    directory = os.path.join(os.path.expanduser("~"), ".local", "state", "featbit-shm")
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            path = os.path.join(directory, entry)
            if os.lstat(path).st_mtime >= SESSION_STARTED - 1:
                os.unlink(path)
        os.rmdir(directory)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave no lock file behind: the test stores' lock files whose store has
    no object left (every test removes its objects; nothing of them runs
    any more), and the lock directory once it is empty. Lock files are
    otherwise never removed while a store may still be in use."""
    from featbit_shm.shm import locks
    from featbit_shm.shm.trust import StoreAccess

    _remove_warm_files_of_this_session()

    try:
        directory = locks.runtime_directory(StoreAccess.from_env())
        entries = os.listdir(directory)
    except (OSError, ValueError):
        return
    live = {e.split(".", 2)[2].split(".")[0] for e in os.listdir("/dev/shm") if e.startswith("fbshm.") and e.count(".") >= 3}
    for entry in entries:
        if entry.split(".")[0] not in live:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, entry))
    with contextlib.suppress(OSError):
        os.rmdir(directory)
