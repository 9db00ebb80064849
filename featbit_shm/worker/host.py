"""Joining the host's store from an app process.

A client built online (or offline on a shared store) joins its host in three
steps, all bounded and none of them fatal:

1. **Register** this process in the store's registry and claim its event
   ring, under one file lock (a worker's cold start pays for it once). A
   registered client keeps an autostarted sync process from idling out.
2. **Start a sync process** when none serves the store (by the one liveness
   rule, :meth:`~featbit_shm.shm.control.ControlBlock.leader_alive`) and the
   configuration allows it. How to start one is handed in by the public
   client (``start_sync``): this package never imports the sync package.
3. **Wait** up to ``start_wait`` for a published snapshot, returning early
   when the sync process reports OFF (R-22..R-24).

Server integrations start the sync process themselves (the gunicorn master,
a uWSGI mule) and turn step 2 off with ``FEATBIT_SHM_AUTOSTART=0``.

Afterwards the client keeps watching (:class:`HostWatch`, called by the
reader about every half second of use): a forked child registers itself,
and when no live sync process has served the store for
:data:`HEAL_GRACE_S` -- leader and standby SIGKILLed, OOM-killed, a server
that stopped and took its sync process along while this one still runs --
the worker starts one (``FEATBIT_SHM_HEAL``, on by default; at most every
:data:`HEAL_INTERVAL_S`), and says so in its log. A worker that may not
start one says loudly that it serves stale data.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .._core.evaluator import evaluate
from .._core.records import EvalEncoder
from .._core.user import make_user
from .._runtime.environment import env_bool, env_int, env_str
from .._runtime.notices import warn_limited
from ..shm.control import SyncState
from ..shm.names import StoreNames
from ..shm.reader import SnapshotReader, find_control
from ..shm.registry import Registry
from .recorder import EventRecorder

log = logging.getLogger("featbit_shm")

#: An autostarted sync process exits after this long with no live client
#: (``FEATBIT_SHM_IDLE_TIMEOUT`` overrides it).
AUTOSTART_IDLE_TIMEOUT_S = 30.0

#: How long no sync process may serve a store before a worker starts one
#: (a sync process that is just starting publishes well within it).
HEAL_GRACE_S = 2.0
#: A worker starts at most one sync process per this many seconds (the
#: election keeps one leader however many workers start one at once).
HEAL_INTERVAL_S = 10.0

_registered: set[tuple[str, int]] = set()  # (store, pid) already in the store's client registry


def leader_alive(reader: SnapshotReader) -> bool:
    """Does a sync process serve the store this reader reads (the one rule)?"""
    block = reader.control
    return block is not None and block.leader_alive(time.time())


def join(
    names: StoreNames,
    reader: SnapshotReader,
    registry: Registry,
    recorder: EventRecorder | None,
    *,
    ring_bytes: int,
    start_sync: Callable[[], int | None] | None,
) -> None:
    """Register this process (and claim its event ring for ``recorder``),
    then start a sync process with ``start_sync`` (it returns the new pid)
    when none serves the store. Never raises: a failure is logged and the
    client simply waits for data."""
    try:
        register(names, registry, recorder, ring_bytes)
        if start_sync is None or leader_alive(reader):
            return
        pid = start_sync()
        if pid:
            log.info("featbit_shm: started sync process %d for store %s", pid, names.tag)
    except Exception as exc:  # noqa: BLE001 - construction goes on; data may come later
        log.warning("featbit_shm: could not start a sync process: %s", exc)


def register(names: StoreNames, registry: Registry, recorder: EventRecorder | None, ring_bytes: int) -> None:
    """Register this process as a client of the store (once per process; a
    forked child registers itself), claiming its event ring in the same step."""
    if (names.tag, os.getpid()) in _registered:
        return
    ring = registry.register_client(ring_bytes if recorder is not None else None)
    _registered.add((names.tag, os.getpid()))
    if ring is not None and recorder is not None:
        recorder.adopt(ring)


class HostWatch:
    """What a worker does about its host at each watch of its reader
    (``SnapshotReader(on_watch=...)``): see the module docstring."""

    def __init__(
        self,
        names: StoreNames,
        registry: Registry,
        recorder: EventRecorder | None,
        *,
        ring_bytes: int,
        start_sync: Callable[[], int | None] | None,
        clock: Callable[[], float] = time.monotonic,
        config_fingerprint: int = 0,
        config_env: dict[str, str] | None = None,
    ) -> None:
        self._names = names
        self._fingerprint = config_fingerprint
        self._config_env = config_env or {}
        self.reader: SnapshotReader | None = None  # set once the reader exists
        self._registry = registry
        self._recorder = recorder
        self._ring_bytes = ring_bytes
        self._start_sync = start_sync
        self._clock = clock
        self._unserved_since: float | None = None
        self._next_start = 0.0
        self.started: list[int] = []  # pids of the sync processes this watch started
        self.status: Any = None  # the client's status provider, once built: polled for its listeners

    def __call__(self, served: bool) -> None:
        self._watch_host(served)
        reader, recorder = self.reader, self._recorder
        if reader is not None and recorder is not None:
            lag = reader.behind()
            recorder.report(reader.served_generation, int(lag[3] * 1000) if lag is not None else 0)
        status = self.status
        if status is not None:
            status.poll()

    def _watch_host(self, served: bool) -> None:
        if (self._names.tag, os.getpid()) not in _registered:
            try:
                register(self._names, self._registry, self._recorder, self._ring_bytes)
            except Exception as exc:  # noqa: BLE001 - registration is retried at the next watch
                warn_limited("register-failed", f"featbit_shm: cannot register pid {os.getpid()} with store {self._names.tag}: {exc}")
        now = self._clock()
        if served:
            self._unserved_since = None
            self._check_config()
            return
        if self._unserved_since is None:
            self._unserved_since = now
        if now - self._unserved_since < HEAL_GRACE_S:
            return
        if self._start_sync is None:
            warn_limited(
                "unserved",
                f"featbit_shm: no sync process serves store {self._names.tag}: pid {os.getpid()} keeps serving its "
                "last snapshot, which may be stale (starting one is off: FEATBIT_SHM_HEAL=0)",
                level=logging.ERROR,
            )
            return
        if now < self._next_start:
            return
        self._next_start = now + HEAL_INTERVAL_S
        try:
            pid = self._start_sync()
        except Exception as exc:  # noqa: BLE001 - retried after HEAL_INTERVAL_S
            warn_limited("heal-failed", f"featbit_shm: no sync process serves store {self._names.tag}, and starting one failed: {exc}", level=logging.ERROR)
            return
        if pid:
            self.started.append(pid)
            warn_limited("heal", f"featbit_shm: no sync process served store {self._names.tag}; pid {os.getpid()} started one (pid {pid})")


    def _check_config(self) -> None:
        """One configuration plane: say loudly when the sync process serving
        this store runs with another configuration than this client's."""
        block = self.reader.control if self.reader is not None else None
        theirs = block.config_fingerprint if block is not None else 0
        if not self._fingerprint or not theirs or theirs == self._fingerprint:
            return
        assert block is not None
        warn_limited(
            "config-mismatch",
            f"featbit_shm: the sync process serving store {self._names.tag} (pid {block.leader_pid}) runs with another "
            f"configuration than this client: {config_difference(block.leader_pid, self._config_env)}; it keeps its own "
            "until it is restarted (stop it, or the server that owns it)",
            level=logging.ERROR,
        )


#: Set by a server integration in a process that will start the host's sync
#: process only later (the gunicorn master loads a preloaded app before
#: ``when_ready``): a client built meanwhile does not wait for data that
#: cannot come yet. The integration clears it before workers fork.
start_deferred = False


def _blocking_would_stall() -> str | None:
    """Why waiting here would stall more than this caller, or None."""
    if start_deferred:
        return "the server starts the sync process once it is ready (gunicorn when_ready)"
    # A running loop implies asyncio is imported; importing it here would
    # cost a fresh worker ~20 ms of its attach.
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "this thread runs an asyncio event loop (await client.wait_until_ready() instead)"


_COMPARED = ("FEATBIT_STREAMING_URL", "FEATBIT_EVENT_URL", "FEATBIT_OFFLINE", "FEATBIT_BOOTSTRAP_FILE", "FEATBIT_DISABLE_EVENTS")


def config_difference(pid: int, mine: dict[str, str]) -> str:
    """Which settings differ between this client (``mine``: its Config as
    variables) and the sync process ``pid``, read from its environment when
    this account may read it. Never names the secret."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read().split(b"\0")
    except OSError:
        return "its environment is not readable here (compare the FEATBIT_* variables it was started with)"
    theirs = dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
    diffs = [
        f"{name}={theirs.get(name, '')!r} there, {mine.get(name, '')!r} here"
        for name in _COMPARED
        if (theirs.get(name, "") or "").rstrip("/") != (mine.get(name, "") or "").rstrip("/")
    ]
    return "; ".join(diffs) or "the same FEATBIT_* variables, another fingerprint"


def _server_serves_another_store(names: StoreNames) -> bool:
    """Under a server integration (FEATBIT_SHM_OWNER_PID), does a sync
    process serve the store the server's FEATBIT_* variables name, while
    this client's Config names another? Then the two configurations differ;
    without that evidence nothing is said about them."""
    if not env_int("FEATBIT_SHM_OWNER_PID"):
        return False
    offline = env_bool("FEATBIT_OFFLINE")
    secret = env_str("FEATBIT_ENV_SECRET")
    if not (offline or secret):
        return False  # the variables name no store
    # Offline stores are named without a secret (SyncSettings.store_secret).
    theirs = StoreNames.for_env("" if offline else secret, env_str("FEATBIT_NAMESPACE") or "default", names.access)
    return theirs.tag != names.tag and find_control(theirs)[0] is not None


def wait_ready(reader: SnapshotReader, start_wait: float) -> None:
    """Block up to ``start_wait`` for a published snapshot (R-22..R-24).

    Returns early when the sync reports OFF (a rejected client, R-23), so
    a terminal failure never looks like a timeout -- or like success (G-1).
    Never blocks where blocking stalls more than its caller: inside a
    running event loop, or in a server master that starts the sync process
    later (see :data:`start_deferred`); the client is then not ready until
    data arrives, as with ``start_wait=0``.
    """
    why = _blocking_would_stall() if start_wait > 0 else None
    if why is not None and (reader.current() is None or reader.generation == 0):
        log.info("featbit_shm: not waiting for flag data: %s", why)
        return
    started = time.monotonic()
    deadline = started + max(0.0, start_wait)
    while (reader.current() is None or reader.generation == 0) and time.monotonic() < deadline:
        if reader.state() is SyncState.OFF:
            break
        time.sleep(0.01)
    if start_wait > 0 and (reader.current() is None or reader.generation == 0):
        if reader.state() is SyncState.OFF:
            why = "its sync process stopped (state OFF: rejected by FeatBit, or shut down)"
        elif reader.control is None and _server_serves_another_store(reader.names):
            why = (
                "no sync process serves this client's configuration: the server started one for its own (the "
                "FEATBIT_* variables, or a preloaded app's set_config()), and this client's Config differs from "
                "it; a worker starts one for this Config within seconds. Configure in one place: the variables "
                "alone, or set_config() in an app the server preloads"
            )
        elif reader.control is None:
            why = (
                "no sync process runs for it (start one with the gunicorn hooks or `featbit-shm sync`, of this "
                "featbit_shm release: a sync process of a release with other shared-memory formats serves another store)"
            )
        else:
            error = reader.control.last_error()
            why = "its sync process has not published yet" + (f"; its last error: {error[1]}" if error else "")
        log.warning(
            "featbit_shm: no flag data after %.1f s for store %s: %s; evaluations return defaults "
            "(ClientNotReady) until data arrives",
            time.monotonic() - started,
            reader.names.tag,
            why,
        )


async def wait_ready_async(reader: SnapshotReader, timeout: float) -> bool:
    """:func:`wait_ready` for an event loop: polls without blocking it.
    True once a snapshot is served; False on OFF or when ``timeout`` ends."""
    import asyncio

    deadline = time.monotonic() + max(0.0, timeout)
    while reader.current() is None or reader.generation == 0:
        if reader.state() is SyncState.OFF or time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def warm_attach_path(names: StoreNames) -> None:
    """Run a worker's attach path once in a process about to fork workers
    (the gunicorn master's ``when_ready``), leaving no state behind.

    A fresh fork pays for every piece of code it runs for the first time:
    CPython specialises bytecode in place and touches module objects, and
    each page written is a copy-on-write fault. Run here once, the children
    inherit the warmed code: on 2 cores this takes about 0.4 ms off a forked
    worker's attach (median of 40 forks at 10k flags). Nothing is registered, claimed or
    kept: a reader, a registry lock taken and released, one evaluation and
    one encoded event, all dropped. Never raises.
    """
    try:
        reader = SnapshotReader(names, retry_interval=0.0)
        view = reader.current()
        registry = Registry(names)
        registry.attach(create=False)  # never creates the store's registry
        registry.close()
        user = make_user({"key": "featbit-shm-warm-up", "name": "warm-up"})
        if view is not None:
            key = next(iter(view.flag_keys()), None)
            flag = view.flag(key) if key is not None else None
            if key is not None and flag is not None:
                var = evaluate(flag, user, view.segment).variation
                if var is not None:
                    EvalEncoder().eval(time.time_ns(), {"key": user.key}, key, var.id, var.value, False)
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        log.debug("featbit_shm: warm-up skipped: %s", exc)
