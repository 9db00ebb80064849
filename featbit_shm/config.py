"""Client configuration: fbclient's ``Config`` signature, frozen at construction.

The positional order is fbclient's: ``Config(env_secret, event_url,
streaming_url, ...)``. The object is immutable and validated when it is built
(R-81; fbclient shares a mutable config by reference, G-14).

Every fbclient option either works or is refused with a clear error, never
silently ignored:

* ``streaming_first_retry_delay``, ``events_flush_interval``,
  ``events_retry_interval`` and ``events_max_retries`` configure the sync
  process: they reach it through :meth:`Config.to_env` when a client starts
  it (and through the same FEATBIT_* variables when a server hook or
  ``featbit-shm sync`` does);
* ``events_max_in_queue`` is accepted only at fbclient's default (10000):
  events wait in a per-worker ring bounded in bytes (``event_ring_bytes``);
* ``data_storage``, ``update_processor_imp``, ``event_processor_imp``,
  ``http`` and ``websocket`` are refused when set: flag data lives in shared
  memory fed by one sync process per host, which makes every connection.
"""

from __future__ import annotations

import copy as copy_module
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ._core.errors import ConfigError
from ._core.protocol import insight_url
from ._core.settings import (
    EVENT_SCHEMES,
    check_count,
    check_namespace,
    check_positive,
    check_secret,
    check_url,
    websocket_url,
)
from ._runtime.environment import (
    DEFAULT_EVENT_RING_BYTES,
    env_bool,
    env_float,
    env_int,
    env_str,
    env_tristate,
)
from ._runtime.servers import runs_featbit_mule
from .sync.settings import SyncSettings, host_settings

_UNSUPPORTED = ("data_storage", "update_processor_imp", "event_processor_imp")
#: fbclient's default queue length, the one value featbit_shm accepts (see Config).
_EVENTS_MAX_IN_QUEUE = 10000


class Config:
    """How a client finds its data. Immutable once built."""

    __slots__ = (
        "_env_secret",
        "_event_url",
        "_streaming_url",
        "_offline",
        "_bootstrap_file",
        "_disable_events",
        "_namespace",
        "_streaming_first_retry_delay",
        "_events_max_in_queue",
        "_events_flush_interval",
        "_events_retry_interval",
        "_events_max_retries",
        "_defaults",
        "_http",
        "_websocket",
        "_shared",
        "_event_ring_bytes",
        "_start_sync",
        "_max_event_bytes",
        "_event_concurrency",
        "_ca_bundle",
    )

    def __init__(
        self,
        env_secret: str = "",
        event_url: str = "",
        streaming_url: str = "",
        streaming_first_retry_delay: float = 1.0,
        events_max_in_queue: int = 10000,
        events_flush_interval: float = 1.0,
        events_retry_interval: float = 0.2,
        events_max_retries: int = 1,
        offline: bool = False,
        data_storage: Any = None,
        update_processor_imp: Any = None,
        event_processor_imp: Any = None,
        http: Any = None,
        websocket: Any = None,
        defaults: Mapping[str, Any] | None = None,
        *,
        bootstrap_file: str | os.PathLike[str] | None = None,
        disable_events: bool = False,
        namespace: str = "default",
        shared: bool | None = None,
        event_ring_bytes: int = DEFAULT_EVENT_RING_BYTES,
        start_sync: bool | None = None,
        max_event_bytes: int | None = None,
        event_concurrency: int | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        for name, value in zip(_UNSUPPORTED, (data_storage, update_processor_imp, event_processor_imp)):
            if value is not None:
                raise ConfigError(
                    f"{name} is not supported by featbit_shm: flag data lives in shared memory "
                    "fed by one sync process per host (see MIGRATING.md, 'Extension points')"
                )
        if not isinstance(env_secret, str):
            raise ConfigError("env_secret must be a string")
        self._offline = bool(offline)
        self._env_secret = env_secret.strip()
        if not self._offline:
            check_secret("env_secret", env_secret)
            check_url("event_url", event_url, EVENT_SCHEMES)
            streaming_url = websocket_url("streaming_url", streaming_url)
        self._event_url = (event_url or "").rstrip("/")
        self._streaming_url = (streaming_url or "").rstrip("/")
        self._bootstrap_file = os.fspath(bootstrap_file) if bootstrap_file is not None else None
        self._disable_events = bool(disable_events)
        self._namespace = check_namespace("namespace", namespace)
        # Read by the sync process (this Config reaches it through to_env()):
        # its reconnect schedule and its event posts' retries.
        self._streaming_first_retry_delay = check_positive("streaming_first_retry_delay", streaming_first_retry_delay, maximum=60)
        # fbclient bounds its in-process queue by a count of events; here each
        # worker's queue is a ring in shared memory bounded in bytes
        # (event_ring_bytes), so a count cannot be honoured: refuse it rather
        # than ignore it.
        if check_count("events_max_in_queue", events_max_in_queue, minimum=1) != _EVENTS_MAX_IN_QUEUE:
            raise ConfigError(
                "events_max_in_queue is not supported by featbit_shm: each worker's events wait in a shared-memory "
                "ring bounded in bytes; size it with Config(event_ring_bytes=...) or FEATBIT_SHM_RING_BYTES "
                "(see MIGRATING.md, 'Config options')"
            )
        self._events_max_in_queue = events_max_in_queue
        self._events_flush_interval = check_positive("events_flush_interval", events_flush_interval)
        self._events_retry_interval = check_positive("events_retry_interval", events_retry_interval)
        self._events_max_retries = check_count("events_max_retries", events_max_retries)
        for name, value in (("http", http), ("websocket", websocket)):
            if value is not None:
                raise ConfigError(
                    f"{name} is not supported by featbit_shm yet: the sync process makes every connection with its "
                    "own settings (see MIGRATING.md, 'Config options')"
                )
        if defaults is not None and not isinstance(defaults, Mapping):
            raise ConfigError("defaults must be a mapping of flag key to default value")
        self._defaults: Mapping[str, Any] = MappingProxyType(dict(defaults or {}))
        self._http = None
        self._websocket = None
        self._shared = shared
        self._event_ring_bytes = check_count("event_ring_bytes", event_ring_bytes, minimum=4096)
        if start_sync is None:
            start_sync = env_bool("FEATBIT_SHM_AUTOSTART")
        self._start_sync = bool(start_sync)
        # Unset: the variable, else the default (docs/CONFIGURATION.md).
        self._max_event_bytes = check_count("max_event_bytes", max_event_bytes if max_event_bytes is not None else env_int("FEATBIT_SHM_MAX_EVENT_BYTES") or 64 * 1024, minimum=1024)
        self._event_concurrency = check_count("event_concurrency", event_concurrency if event_concurrency is not None else env_int("FEATBIT_SHM_EVENT_CONCURRENCY") or 24, minimum=1)
        self._ca_bundle = os.fspath(ca_bundle) if ca_bundle else env_str("FEATBIT_CA_BUNDLE") or None

    # fbclient's accessors --------------------------------------------------

    @property
    def env_secret(self) -> str:
        return self._env_secret

    @property
    def event_url(self) -> str:
        return self._event_url

    @property
    def streaming_url(self) -> str:
        return self._streaming_url

    @property
    def is_offline(self) -> bool:
        return self._offline

    @property
    def offline(self) -> bool:
        return self._offline

    @property
    def streaming_first_retry_delay(self) -> float:
        return self._streaming_first_retry_delay

    @property
    def events_max_in_queue(self) -> int:
        return self._events_max_in_queue

    @property
    def events_flush_interval(self) -> float:
        return self._events_flush_interval

    @property
    def events_retry_interval(self) -> float:
        return self._events_retry_interval

    @property
    def events_max_retries(self) -> int:
        return self._events_max_retries

    @property
    def defaults(self) -> Mapping[str, Any]:
        return self._defaults

    @property
    def http(self) -> Any:
        return self._http

    @property
    def websocket(self) -> Any:
        return self._websocket

    def get_default_value(self, key: str, default: Any = None) -> Any:
        return self._defaults.get(key, default)

    def validate(self) -> None:
        """Kept for fbclient compatibility: validation already ran in ``__init__``."""

    # featbit_shm additions --------------------------------------------------

    @property
    def bootstrap_file(self) -> str | None:
        """A data-sync JSON file to load (R-72); offline mode only for now."""
        return self._bootstrap_file

    @property
    def disable_events(self) -> bool:
        """Keep syncing but record no analytics events (R-74)."""
        return self._disable_events

    @property
    def namespace(self) -> str:
        """Separates several stores of one environment on one host."""
        return self._namespace

    @property
    def shared(self) -> bool:
        """Evaluate from the host's shared-memory store (True), or from data
        this process loads itself (False).

        Default: shared online; offline, local when a ``bootstrap_file`` is
        given (the file is loaded into this process, as fbclient does) and
        shared otherwise. Server integrations make it shared so offline
        workers serve the file their sync process publishes, and see it
        change: the gunicorn hooks set ``FEATBIT_SHM_SHARED=1`` for the
        workers they fork; a uWSGI worker sees featbit_shm's mule in
        uWSGI's options (the mule cannot set the workers' environment).
        """
        if self._shared is not None:
            return self._shared
        if self._offline and self._bootstrap_file:
            return runs_featbit_mule()
        return True

    @property
    def start_sync(self) -> bool:
        """Online: start a sync process when none runs on the host (default
        True; ``FEATBIT_SHM_AUTOSTART=0`` or the gunicorn hooks turn it off)."""
        return self._start_sync

    @property
    def event_ring_bytes(self) -> int:
        """Size of each worker's event ring in shared memory (default 16 MiB:
        about 10 s of 10,000 events/s; reserved up front)."""
        return self._event_ring_bytes

    @property
    def events_uri(self) -> str:
        """The insight endpoint (fbclient's ``events_uri``)."""
        return insight_url(self._event_url) if self._event_url else ""

    @property
    def streaming_uri(self) -> str:
        """The streaming endpoint without its token (fbclient's ``streaming_uri``)."""
        return f"{self._streaming_url}/streaming" if self._streaming_url else ""

    # fbclient's extension points are not supported (the constructor refuses
    # them): these read back as None, as fbclient's would when unset.
    @property
    def data_storage(self) -> None:
        return None

    @property
    def update_processor_imp(self) -> None:
        return None

    @property
    def event_processor_imp(self) -> None:
        return None

    def copy_config_in_a_new_env(self, env_secret: str, defaults: Mapping[str, Any] | None = None, data_storage: Any = None) -> Config:
        """This configuration for another environment (fbclient's helper).
        The copy uses its own store: the store is named by the secret."""
        copy = copy_module.copy(self)
        copy._env_secret = env_secret.strip()
        if not self._offline:
            check_secret("env_secret", copy._env_secret)
        if data_storage is not None:
            raise ConfigError("data_storage is not supported by featbit_shm (see MIGRATING.md, 'Extension points')")
        if defaults is not None:
            copy._defaults = MappingProxyType(dict(defaults))
        return copy

    @property
    def max_event_bytes(self) -> int:
        """An event whose user takes more bytes than this (packed) is not
        recorded, and counted as too_large (default 64 KiB)."""
        return self._max_event_bytes

    @property
    def event_concurrency(self) -> int:
        """Insight requests the sync process keeps in flight at once, at most (default 24)."""
        return self._event_concurrency

    @property
    def ca_bundle(self) -> str | None:
        """A PEM file of CAs the sync process trusts for TLS to FeatBit (websocket and insight)."""
        return self._ca_bundle

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """A Config from the FEATBIT_* variables (docs/CONFIGURATION.md)."""
        return cls(
            env_str("FEATBIT_ENV_SECRET", env),
            env_str("FEATBIT_EVENT_URL", env),
            env_str("FEATBIT_STREAMING_URL", env),
            streaming_first_retry_delay=env_float("FEATBIT_STREAMING_FIRST_RETRY_DELAY", env) or 1.0,
            events_flush_interval=env_float("FEATBIT_EVENTS_FLUSH_INTERVAL", env) or 1.0,
            events_retry_interval=env_float("FEATBIT_EVENTS_RETRY_INTERVAL", env) or 0.2,
            events_max_retries=env_int("FEATBIT_EVENTS_MAX_RETRIES", env) or 0,
            offline=env_bool("FEATBIT_OFFLINE", env),
            bootstrap_file=env_str("FEATBIT_BOOTSTRAP_FILE", env) or None,
            namespace=env_str("FEATBIT_NAMESPACE", env),
            disable_events=env_bool("FEATBIT_DISABLE_EVENTS", env),
            shared=env_tristate("FEATBIT_SHM_SHARED", env),
            event_ring_bytes=env_int("FEATBIT_SHM_RING_BYTES", env) or DEFAULT_EVENT_RING_BYTES,
            start_sync=env_bool("FEATBIT_SHM_AUTOSTART", env),
            max_event_bytes=env_int("FEATBIT_SHM_MAX_EVENT_BYTES", env),
            event_concurrency=env_int("FEATBIT_SHM_EVENT_CONCURRENCY", env),
            ca_bundle=env_str("FEATBIT_CA_BUNDLE", env) or None,
        )

    def sync_settings(self) -> SyncSettings:
        """The settings a sync process serving this client runs with (the
        one configuration plane: the client hands them over as variables)."""
        return SyncSettings(
            env_secret=self._env_secret,
            streaming_url=self._streaming_url,
            event_url=self._event_url,
            offline=self._offline,
            bootstrap_file=self._bootstrap_file,
            namespace=self._namespace,
            disable_events=self._disable_events,
            events_flush_interval=self._events_flush_interval,
            events_retry_interval=self._events_retry_interval,
            events_max_retries=self._events_max_retries,
            streaming_first_retry_delay=self._streaming_first_retry_delay,
            ring_bytes=self._event_ring_bytes,
            event_concurrency=self._event_concurrency,
            ca_bundle=self._ca_bundle,
            **host_settings(),  # the host's, from its variables: a client hands them on unchanged
        )

    def fingerprint(self) -> int:
        """What this client and the sync process serving it must agree on,
        hashed as the sync process writes it into the control block."""
        return self.sync_settings().fingerprint()

    def to_env(self) -> dict[str, str]:
        """This configuration as the FEATBIT_* variables a sync process is
        started with (:meth:`from_env` reads them back)."""
        return self.sync_settings().to_env()

    def __repr__(self) -> str:
        # never show the secret.
        return (
            f"Config(offline={self._offline}, streaming_url={self._streaming_url!r}, "
            f"event_url={self._event_url!r}, namespace={self._namespace!r})"
        )
