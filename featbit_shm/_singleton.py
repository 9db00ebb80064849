"""fbclient's module-level singleton: ``featbit_shm.set_config()`` / ``featbit_shm.get()`` (R-82).

``get()`` builds the client lazily on first use in each process, so a server
that imports the app in its master and forks workers (``preload_app``) gets
one client per worker without doing anything. With no ``set_config()`` the
FEATBIT_* environment variables configure it (see README, "Configuration").
"""

from __future__ import annotations

import os
import threading

from ._core.errors import ConfigError
from ._runtime.environment import env_bool, env_str
from .client import FBClient
from .config import Config
from .sync import SyncSettings

_lock = threading.RLock()
_config: Config | None = None
_client: FBClient | None = None
_client_pid = 0


def set_config(config: Config) -> None:
    """Set the configuration; a client built before is stopped and rebuilt on next ``get()``."""
    global _config, _client
    if not isinstance(config, Config):
        raise ConfigError("Config is not valid")
    with _lock:
        old, _client = _client, None
        _config = config
    if old is not None:
        old.stop()


def configured() -> Config | None:
    """The Config given to :func:`set_config` in this process, if any (the
    server integrations start the sync process with it)."""
    return _config


def sync_settings() -> SyncSettings:
    """The settings a server integration (the gunicorn hooks, Celery's
    ``worker_init``) starts the host's sync process with: the Config given
    to :func:`set_config` over the FEATBIT_* variables, the one
    configuration plane the workers' clients use too."""
    config = _config
    if config is None:
        return SyncSettings.from_env()
    return SyncSettings.from_env({**os.environ, **config.to_env()})


def get() -> FBClient:
    """The process's client, created on first call (with ``featbit_shm.start_wait``)."""
    global _client, _client_pid
    client = _client
    if client is not None and _client_pid == os.getpid():
        return client
    with _lock:
        if _client is None or _client_pid != os.getpid():
            config = _config
            if config is None:
                if not env_str("FEATBIT_ENV_SECRET") and not env_bool("FEATBIT_OFFLINE"):
                    # fbclient's message first, so code matching it keeps working.
                    raise Exception(
                        "config is not initialized: call featbit_shm.set_config(Config(...)) "
                        "or set FEATBIT_ENV_SECRET (online) or FEATBIT_OFFLINE=1"
                    )
                config = Config.from_env()
            import featbit_shm

            _client = FBClient(config, start_wait=float(getattr(featbit_shm, "start_wait", 15)))
            _client_pid = os.getpid()
        return _client


def _after_fork_in_child() -> None:
    # A client built in a parent keeps working in the child (its reader is
    # fork-safe), so the child simply adopts it as its own. The lock is new:
    # another thread of the parent may have held it inside get() at the fork,
    # and no thread of the child would ever release it.
    global _client_pid, _lock
    _lock = threading.RLock()
    if _client is not None:
        _client_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
