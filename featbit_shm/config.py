"""Client configuration: fbclient's ``Config`` signature, frozen at construction.

The positional order is fbclient's: ``Config(env_secret, event_url,
streaming_url, ...)``. The object is immutable and validated when it is built
(R-81; fbclient shares a mutable config by reference, G-14). Options fbclient
offers that cannot work with a shared-memory store (``data_storage``,
``update_processor_imp``, ``event_processor_imp``) are refused with a clear
error instead of being silently ignored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

#: Each worker's event ring: about 10 s of 10,000 events/s of ~150-byte records.
DEFAULT_EVENT_RING_BYTES = 16 * 1024 * 1024

_UNSUPPORTED = ("data_storage", "update_processor_imp", "event_processor_imp")


def _positive(name: str, value: float, *, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, not {value!r}")
    return float(min(value, maximum) if maximum is not None else value)


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(f"{name} must be an absolute {'/'.join(schemes)} URL")
    return value


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
            if not self._env_secret or not self._env_secret.isascii():
                raise ConfigError("env_secret must be a non-empty ASCII string when not offline")
            _url("event_url", event_url, ("http", "https"))
            _url("streaming_url", streaming_url, ("ws", "wss", "http", "https"))
        self._event_url = (event_url or "").rstrip("/")
        self._streaming_url = (streaming_url or "").rstrip("/")
        self._bootstrap_file = os.fspath(bootstrap_file) if bootstrap_file is not None else None
        self._disable_events = bool(disable_events)
        if not isinstance(namespace, str) or not namespace or len(namespace) > 64:
            raise ConfigError("namespace must be a non-empty string of at most 64 characters")
        self._namespace = namespace
        self._streaming_first_retry_delay = _positive("streaming_first_retry_delay", streaming_first_retry_delay, maximum=60)
        if isinstance(events_max_in_queue, bool) or not isinstance(events_max_in_queue, int) or events_max_in_queue <= 0:
            raise ConfigError("events_max_in_queue must be a positive int")
        self._events_max_in_queue = events_max_in_queue
        self._events_flush_interval = _positive("events_flush_interval", events_flush_interval)
        self._events_retry_interval = _positive("events_retry_interval", events_retry_interval)
        if isinstance(events_max_retries, bool) or not isinstance(events_max_retries, int) or events_max_retries < 0:
            raise ConfigError("events_max_retries must be an int >= 0")
        self._events_max_retries = events_max_retries
        if defaults is not None and not isinstance(defaults, Mapping):
            raise ConfigError("defaults must be a mapping of flag key to default value")
        self._defaults: Mapping[str, Any] = MappingProxyType(dict(defaults or {}))
        self._http = http
        self._websocket = websocket
        self._shared = shared
        if isinstance(event_ring_bytes, bool) or not isinstance(event_ring_bytes, int) or event_ring_bytes < 4096:
            raise ConfigError("event_ring_bytes must be an int >= 4096")
        self._event_ring_bytes = event_ring_bytes
        if start_sync is None:
            start_sync = os.environ.get("FEATBIT_SHM_AUTOSTART", "1").strip().lower() not in ("0", "false", "no", "off")
        self._start_sync = bool(start_sync)

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
        shared otherwise. Server integrations set ``shared=True`` (through
        ``FEATBIT_SHM_SHARED=1``) so offline workers serve the file their sync
        process publishes, and see it change.
        """
        if self._shared is not None:
            return self._shared
        return not (self._offline and self._bootstrap_file)

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """A Config from the FEATBIT_* variables (see README, "Configuration")."""
        env = os.environ if env is None else env
        offline = env.get("FEATBIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        shared = env.get("FEATBIT_SHM_SHARED", "").strip().lower()
        return cls(
            env.get("FEATBIT_ENV_SECRET", ""),
            env.get("FEATBIT_EVENT_URL", ""),
            env.get("FEATBIT_STREAMING_URL", ""),
            offline=offline,
            bootstrap_file=env.get("FEATBIT_BOOTSTRAP_FILE") or None,
            namespace=env.get("FEATBIT_NAMESPACE") or "default",
            disable_events=env.get("FEATBIT_DISABLE_EVENTS", "").strip().lower() in ("1", "true", "yes", "on"),
            shared=True if shared in ("1", "true", "yes", "on") else False if shared in ("0", "false", "no", "off") else None,
            event_ring_bytes=int(env.get("FEATBIT_SHM_RING_BYTES") or DEFAULT_EVENT_RING_BYTES),
        )

    def __repr__(self) -> str:
        # never show the secret.
        return (
            f"Config(offline={self._offline}, streaming_url={self._streaming_url!r}, "
            f"event_url={self._event_url!r}, namespace={self._namespace!r})"
        )
