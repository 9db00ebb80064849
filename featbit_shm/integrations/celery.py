"""Celery workers: the worker's main process owns the host's sync process.

    # tasks.py
    import featbit_shm
    from celery import Celery
    from featbit_shm.integrations import celery as featbit_celery

    app = Celery("tasks")
    featbit_celery.setup(app)      # before any client is built at import time

    @app.task
    def checkout(user_key):
        return featbit_shm.get().variation("checkout-theme", {"key": user_key}, "classic")

:func:`setup` connects featbit-shm to Celery's signals, the way the gunicorn
hooks connect it to gunicorn (``gunicorn_hooks``). Nothing runs at import
or in a process that only sends tasks; Celery is imported by :func:`setup`
alone, so featbit-shm does not depend on it.

* ``worker_init`` -- in the worker's main process (Celery's "MainProcess"),
  before the pool forks: sets ``FEATBIT_SHM_AUTOSTART=0``,
  ``FEATBIT_SHM_OWNER_PID`` (its own pid) and ``FEATBIT_SHM_SHARED=1`` in
  the environment the pool children inherit, starts the sync process as a
  fresh interpreter it owns, and waits up to ``FEATBIT_START_WAIT`` seconds
  (default 5) for the first snapshot, so the children start with data.
* Pool children need no signal: their first ``featbit_shm.get()`` maps the
  shared snapshot (no socket, no thread) and never starts a sync process.
  If the sync process dies, a child still heals the host (``FEATBIT_SHM_HEAL``):
  the one it starts belongs to the main process too, and exits with it.
  Offline with a bootstrap file, the children serve the file the sync
  process publishes, and see it change.
* ``worker_ready`` -- logs which sync process serves the worker.
* ``worker_shutdown`` -- in the main process, after the pool has stopped:
  stops the sync process (it delivers the events it still holds) and
  removes the store's shared-memory objects and lock files, unless another
  server's live processes still use the store, or a sync process still
  serves it (one a child started when healing stops once the main process
  has exited, and removes the store itself).

A client built at import time in the main process (``client =
FBClient(Config.from_env())``, fbclient's pattern) is forked into every
child, which adopts it. Call :func:`setup` before building it: in a
``celery worker`` process, :func:`setup` also turns autostart off and tells
such a client not to wait for data that only comes at ``worker_init``.

A cold shutdown (SIGQUIT, or a second Ctrl-C) sends no ``worker_shutdown``:
the sync process then sees its owner gone within half a second and, as the
last user of the store, removes it itself. None of the handlers ever
raises: a failure is logged and the worker goes on.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from featbit_shm._runtime.environment import env_raw

if TYPE_CHECKING:
    from featbit_shm.config import Config
    from featbit_shm.shm.names import StoreNames
    from featbit_shm.sync import SyncSettings

__all__ = ["setup"]

log = logging.getLogger("featbit_shm.celery")

_apps: list[Any] = []  # the Celery apps given to setup(); their workers start a sync process
_any_app = False  # setup() without an app: every worker of this process does
_sync: subprocess.Popen[bytes] | None = None
_deferred: list[str | None] = []  # FEATBIT_SHM_AUTOSTART as it was before setup() deferred clients
_owner = 0  # the pid that started _sync (a pool child inherits the module as it was)


def setup(app: Any = None, config: Config | None = None) -> None:
    """Connect featbit-shm to Celery's worker signals; see the module docstring.

    ``app``: the Celery app whose workers own a sync process (default: any
    worker of this process). ``config``: a :class:`featbit_shm.Config`,
    the same as calling ``featbit_shm.set_config(config)``; without it the
    app's ``set_config()`` or the FEATBIT_* variables configure both the
    sync process and the children's clients. Calling it again is harmless.
    """
    from celery import signals  # only here: featbit_shm does not depend on Celery

    global _any_app
    if config is not None:
        from featbit_shm import _singleton

        _singleton.set_config(config)
    if app is None:
        _any_app = True
    elif not any(known is app for known in _apps):
        _apps.append(app)
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="featbit_shm.worker_init")
    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="featbit_shm.worker_ready")
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False, dispatch_uid="featbit_shm.worker_shutdown")
    if _loading_worker():
        # The app is being imported by `celery worker`, before worker_init: a
        # client built at import time must neither start a sync process of
        # its own nor wait for data that worker_init brings.
        from featbit_shm.worker import host

        if not _deferred:
            _deferred.append(env_raw("FEATBIT_SHM_AUTOSTART"))
        os.environ["FEATBIT_SHM_AUTOSTART"] = "0"
        host.start_deferred = True


def _loading_worker() -> bool:
    """Is this process the ``celery worker`` command, loading its app? Read
    from the command line Celery parses with click (``celery -A proj worker``
    runs the ``worker`` subcommand); any other process is left alone."""
    click = sys.modules.get("click")
    current = getattr(click, "get_current_context", None)
    ctx = current(silent=True) if current is not None else None
    while ctx is not None:
        if "worker" in (ctx.invoked_subcommand, ctx.info_name):
            return True
        ctx = ctx.parent
    return False


def _ours(worker: Any) -> bool:
    """Is this worker's app one that setup() was given?"""
    if _any_app:
        return True
    app = _unwrap(getattr(worker, "app", None))
    return any(_unwrap(known) is app for known in _apps)


def _unwrap(app: Any) -> Any:
    """The app itself, behind Celery's ``current_app`` proxy."""
    current = getattr(app, "_get_current_object", None)
    return current() if callable(current) else app


def _undefer() -> None:
    """Undo what setup() did for a worker that turns out not to be ours."""
    if not _deferred:
        return
    from featbit_shm.worker import host

    before = _deferred.pop()
    if before is None:
        os.environ.pop("FEATBIT_SHM_AUTOSTART", None)
    else:
        os.environ["FEATBIT_SHM_AUTOSTART"] = before
    host.start_deferred = False


def _settings() -> SyncSettings:
    """The sync process's settings: the app's ``featbit_shm.set_config()``
    over the FEATBIT_* variables (one configuration plane, as the pool
    children's clients use)."""
    from featbit_shm import _singleton

    return _singleton.sync_settings()


def _names(settings: SyncSettings) -> StoreNames:
    from featbit_shm.shm.names import StoreNames

    return StoreNames.for_env(settings.store_secret, settings.namespace)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """The worker's main process, before the pool forks: start and own the sync process."""
    global _sync, _owner
    if not _ours(sender):
        _undefer()  # another app's worker: its clients behave as without setup()
        return
    try:
        from featbit_shm._runtime.environment import env_float
        from featbit_shm.shm.reader import SnapshotReader
        from featbit_shm.sync import spawn_sync_process
        from featbit_shm.worker import host

        host.start_deferred = False  # the children (forked after this) wait as usual
        # Inherited by every pool child: none starts a sync process when it
        # builds its client; one that heals the host starts it on behalf of
        # this process; offline, they read the file the sync process serves.
        os.environ["FEATBIT_SHM_AUTOSTART"] = "0"
        os.environ["FEATBIT_SHM_OWNER_PID"] = str(os.getpid())
        os.environ["FEATBIT_SHM_SHARED"] = "1"
        settings = _settings()
        _sync = spawn_sync_process(settings, owner_pid=os.getpid())
        _owner = os.getpid()
        names = _names(settings)
        reader = SnapshotReader(names, retry_interval=0.02)
        host.wait_ready(reader, env_float("FEATBIT_START_WAIT") or 0.0)  # logs why when no data comes
        if reader.generation > 0:
            host.warm_attach_path(names)  # children fork with the attach code warmed
    except Exception as exc:  # noqa: BLE001 - a signal handler must not stop the worker
        log.error("featbit_shm: could not start the sync process: %s", exc)


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Say which sync process serves the worker (Celery sets up its logging
    only after ``worker_init``: said there, it would be lost)."""
    if _owner == os.getpid() and _sync is not None:
        state = "running" if _sync.poll() is None else f"exited with {_sync.returncode}"
        log.info("featbit_shm: sync process %d of this worker (pid %d): %s", _sync.pid, os.getpid(), state)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    """The worker's main process, after the pool stopped: stop the sync
    process and leave nothing of the store behind."""
    global _sync
    if _owner != os.getpid():
        return  # not the process that started it
    try:
        from featbit_shm._runtime.processes import pid_alive
        from featbit_shm.shm.registry import Registry
        from featbit_shm.sync import stop_sync_process

        names = _names(_settings())
        # A client this process built (at import time) no longer keeps the
        # store: the sync process need not wait for it, nor leave it the store.
        registry = Registry(names)
        try:
            registry.leave(pid_alive)
        finally:
            registry.close()
        proc, _sync = _sync, None
        if proc is not None:
            stop_sync_process(proc, timeout=10)
        _remove_store(names)
    except Exception as exc:  # noqa: BLE001
        log.error("featbit_shm: worker_shutdown: %s", exc)


def _remove_store(names: StoreNames) -> None:
    """Remove the store's objects and lock files, as its last user -- unless
    a sync process still leads it (one a child started when healing the host
    exits with this process and removes the store itself; another server's
    is theirs) or another server's processes still use it."""
    from featbit_shm.sync.teardown import release_store

    kept = release_store(names)
    if kept is not None:
        log.info("featbit_shm: store %s stays: %s", names.tag, kept)
