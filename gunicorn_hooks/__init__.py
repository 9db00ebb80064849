"""gunicorn server hooks for featbit_shm: one sync process per server, every worker reading shared memory.

Use them from your own gunicorn config::

    # gunicorn.conf.py
    from gunicorn_hooks import *   # when_ready, post_fork, worker_exit, child_exit, on_exit, on_reload

or run with the complete config file, driven by FEATBIT_* variables::

    FEATBIT_ENV_SECRET=... FEATBIT_STREAMING_URL=wss://... FEATBIT_EVENT_URL=https://... \\
        gunicorn -c gunicorn_hooks/featbit.conf.py app:app

In the app, ``featbit_shm.get()`` is the worker's client (a drop-in for
``fbclient.get()``).

What each hook does (gunicorn's names and arity; none of them ever raises,
because an exception in a hook halts the arbiter):

* ``when_ready(server)`` -- with gunicorn's ``user``/``group`` set, shares the
  store with the workers' group (``FEATBIT_SHM_GROUP``, readable snapshots,
  writable rings; :mod:`featbit_shm.shm.trust`); then the master starts the sync process (a fresh
  interpreter, configured through the environment; it owns the websocket and
  exits if the master disappears) and waits up to ``FEATBIT_START_WAIT``
  seconds (default 5) for the first snapshot, so workers start with data;
  then runs a worker's attach path once, so every forked worker inherits
  that code warmed (about 0.4 ms less per worker attach; nothing is kept).
* ``post_fork(server, worker)`` -- the worker attaches to the shared snapshot
  (two small mappings: no socket, no thread), registers with the store and
  claims its event ring.
* ``worker_exit(server, worker)`` -- stops the worker's client within a bound.
* ``child_exit(server, worker)`` -- nothing to do: the sync process drains a
  gone worker's event ring, then removes it and frees its registry slot.
* ``on_reload(server)`` -- SIGHUP: the sync process keeps running; new
  workers attach to the same store.
* ``on_exit(server)`` -- stops the sync process (it removes the store's
  shared-memory objects as their last owner) and removes anything left.

No thread is started in the master.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

__all__ = ["child_exit", "on_exit", "on_reload", "post_fork", "when_ready", "worker_exit"]

# The master starts the sync process in when_ready; clients (even one built by
# a preloaded app before that) must not start their own, nor make the master
# wait start_wait for data that only comes after when_ready.
os.environ.setdefault("FEATBIT_SHM_AUTOSTART", "0")
_host: Any = None
try:
    from featbit_shm.worker import host as _host

    _host.start_deferred = True
except Exception:  # noqa: BLE001 - a config module must load even if featbit_shm cannot
    _host = None

_sync: subprocess.Popen[bytes] | None = None


def _log(server: Any, level: str, message: str, *args: Any) -> None:
    text = message % args if args else message
    log = getattr(server, "log", None)
    if log is not None:
        getattr(log, level)(text)
    else:
        print(text, file=sys.stderr)


def when_ready(server: Any) -> None:
    """Start the sync process for this server (the master owns it)."""
    global _sync
    try:
        from featbit_shm._runtime.environment import env_float
        from featbit_shm.shm.control import SyncState
        from featbit_shm.shm.names import StoreNames
        from featbit_shm.shm.reader import SnapshotReader
        from featbit_shm.sync import spawn_sync_process
        from featbit_shm.worker.host import warm_attach_path

        if _host is not None:
            _host.start_deferred = False  # workers (forked after this) wait as usual
        _share_with_workers(server)
        # The master owns the host's sync process; a worker that finds none
        # serving the store starts one on the master's behalf (it exits with
        # the master), and none once the master is gone.
        os.environ["FEATBIT_SHM_OWNER_PID"] = str(os.getpid())
        if not _configured_here():
            # An app configured by featbit_shm.set_config() and not preloaded:
            # only the workers will see its Config. The first client built
            # starts the sync process, for this master (FEATBIT_SHM_OWNER_PID).
            os.environ["FEATBIT_SHM_AUTOSTART"] = "1"
            os.environ["FEATBIT_SHM_SHARED"] = "1"
            _log(server, "info", "featbit_shm: no FEATBIT_* configuration here and no preloaded set_config(): "
                 "the first worker to build its client starts the sync process")
            return
        settings = _settings()
        # Workers read the shared store, even offline with a bootstrap file.
        os.environ["FEATBIT_SHM_SHARED"] = "1"
        _sync = spawn_sync_process(settings, owner_pid=os.getpid())
        _log(server, "info", "featbit_shm: sync process %d started", _sync.pid)
        reader = SnapshotReader(StoreNames.for_env(settings.store_secret, settings.namespace), retry_interval=0.02)
        deadline = time.monotonic() + (env_float("FEATBIT_START_WAIT") or 0.0)
        while time.monotonic() < deadline:
            view = reader.current()
            if view is not None and view.generation > 0:
                _log(server, "info", "featbit_shm: snapshot generation %d ready", view.generation)
                warm_attach_path(reader.names)  # workers fork with the attach code warmed
                return
            if reader.state() is SyncState.OFF or _sync.poll() is not None:
                break
            time.sleep(0.02)
        _log(server, "warning", "featbit_shm: no flag data yet; workers serve defaults until the sync process publishes")
    except Exception as exc:  # noqa: BLE001 - a hook must never halt the arbiter
        _log(server, "error", "featbit_shm: could not start the sync process: %s", exc)


def _settings() -> Any:
    """The sync process's settings: the app's ``featbit_shm.set_config()``
    when it made one (a preloaded Django or Flask app), over the FEATBIT_*
    variables. Without preload the master never sees the app's Config: the
    workers then start a sync process with it (featbit_shm.worker.host)."""
    from featbit_shm import _singleton

    return _singleton.sync_settings()


def _configured_here() -> bool:
    """Does this process know featbit_shm's configuration (set_config() of a
    preloaded app, or the FEATBIT_* variables)?"""
    from featbit_shm import _singleton
    from featbit_shm._runtime.environment import env_bool, env_str

    return _singleton.configured() is not None or bool(env_str("FEATBIT_ENV_SECRET")) or env_bool("FEATBIT_OFFLINE")


def _share_with_workers(server: Any) -> None:
    """gunicorn's ``user``/``group``: workers switch to another uid after the
    fork. Share the store with their group, and tell them whose store to
    trust (the master's account), through the environment they inherit: the
    sync process then makes snapshots readable (never writable) by that
    group, and event rings, the registry and its lock writable by it
    (featbit_shm.shm.trust). An explicit FEATBIT_SHM_GROUP wins."""
    cfg = getattr(server, "cfg", None)
    uid = getattr(cfg, "uid", os.geteuid())
    gid = getattr(cfg, "gid", os.getegid())
    if uid != os.geteuid() or gid != os.getegid():
        os.environ.setdefault("FEATBIT_SHM_GROUP", str(gid))
        os.environ.setdefault("FEATBIT_SHM_STORE_UID", str(os.geteuid()))
        from featbit_shm._runtime.environment import env_str

        _log(server, "info", "featbit_shm: workers run as uid %s gid %s: the store is shared with group %s", uid, gid, env_str("FEATBIT_SHM_GROUP"))


def post_fork(server: Any, worker: Any) -> None:
    """Attach this worker to the shared snapshot."""
    try:
        import featbit_shm

        featbit_shm.start_wait = min(float(getattr(featbit_shm, "start_wait", 15)), 1.0)
        if not _configured_here():
            return  # the app configures featbit_shm when the worker imports it; its first get() builds the client
        featbit_shm.get()
    except Exception as exc:  # noqa: BLE001
        _log(server, "error", "featbit_shm: worker %s could not attach: %s", getattr(worker, "pid", "?"), exc)


def worker_exit(server: Any, worker: Any) -> None:
    """Stop the worker's client (bounded); the last worker of a master that
    is gone removes the store."""
    try:
        from featbit_shm import _singleton

        client = _singleton._client
        if client is not None:
            client.stop()
    except Exception as exc:  # noqa: BLE001
        _log(server, "error", "featbit_shm: worker_exit: %s", exc)
    try:
        _leave_orphaned_store(server)
    except Exception as exc:  # noqa: BLE001
        _log(server, "error", "featbit_shm: worker_exit: %s", exc)


#: How long an orphaned worker waits for a stopping sync process to let go of the store.
ORPHAN_WAIT_S = 20.0


def _leave_orphaned_store(server: Any) -> None:
    """A master killed with SIGKILL runs no on_exit. Its workers outlive it
    (a gunicorn worker notices its parent changed only between two waits,
    up to half the worker timeout later), and its sync process, which stops
    when its owner is gone, leaves the store to the clients still registered
    -- these workers, which may not start a sync process any more (their
    owner is gone). So each of them gives up its registry slots on its way
    out, and the last one out removes the store as on_exit would have: under
    the leader lock, so never while a sync process still runs for it (a
    sidecar's, or another server's: then it is theirs)."""
    from featbit_shm._runtime.environment import env_int
    from featbit_shm._runtime.processes import pid_alive

    owner = env_int("FEATBIT_SHM_OWNER_PID")
    if not owner or pid_alive(owner):
        return  # the master is there: its on_exit removes the store
    from featbit_shm.shm.names import StoreNames
    from featbit_shm.shm.registry import Registry
    from featbit_shm.sync.teardown import release_store

    settings = _settings()
    names = StoreNames.for_env(settings.store_secret, settings.namespace)
    registry = Registry(names)
    try:
        others = registry.leave(pid_alive)
    finally:
        registry.close()
    if others:
        return  # the last one out removes it
    kept = release_store(names, wait=ORPHAN_WAIT_S)
    if kept is not None:
        _log(server, "warning", "featbit_shm: store %s left as it is: %s", names.tag, kept)
    else:
        _log(server, "info", "featbit_shm: the master is gone; its last worker removed store %s", names.tag)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone (any cause). The sync process drains its event ring,
    then reclaims it: nothing to do here."""


def on_reload(server: Any) -> None:
    """SIGHUP: keep the sync process; new workers attach to the same store."""
    _log(server, "info", "featbit_shm: reload; sync process %s keeps running", _sync.pid if _sync else "(none)")


def on_exit(server: Any) -> None:
    """Stop the sync process and remove the store's shared-memory objects."""
    global _sync
    try:
        from featbit_shm.shm.names import StoreNames
        from featbit_shm.sync import stop_sync_process
        from featbit_shm.sync.teardown import release_store

        if _sync is not None:
            stop_sync_process(_sync, timeout=10)
        _sync = None
        if not _configured_here():
            return  # the workers' sync process belongs to this master: it exits with it and removes the store
        settings = _settings()
        names = StoreNames.for_env(settings.store_secret, settings.namespace)
        # The last owner out removes the store; it stays while another
        # server's live workers use it (they start a sync process) or a
        # sync process this master did not start (a supervisor's) leads it.
        kept = release_store(names)
        if kept is not None:
            _log(server, "info", "featbit_shm: store %s stays: %s", names.tag, kept)
    except Exception as exc:  # noqa: BLE001
        _log(server, "error", "featbit_shm: on_exit: %s", exc)
