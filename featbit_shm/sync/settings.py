"""How a sync process is configured: the FEATBIT_* variables it is started with.

The secret travels in the environment, never in argv (R-77): ``ps`` shows
argv to every user of the host. Every variable is parsed by
:mod:`featbit_shm._runtime.environment` (the one table, in
docs/CONFIGURATION.md); a launcher builds the child's variables with
:meth:`SyncSettings.to_env`, and a client turns its ``Config`` into the same
variables (``Config.to_env``), so the app and its sync process share one
configuration plane.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.errors import ConfigError
from .._core.settings import (
    EVENT_SCHEMES,
    FINGERPRINTED,
    STREAMING_SCHEMES,
    check_namespace,
    check_secret,
    check_url,
    fingerprint,
    websocket_url,
)
from .._runtime.environment import (
    DEFAULT_EVENT_RING_BYTES,
    env_bool,
    env_float,
    env_int,
    env_str,
    format_bool,
    format_number,
)


def host_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The sync settings that belong to the host, not to a client's Config
    (how to reach FeatBit, warm start): read from the variables, so a
    Config hands them on unchanged (``Config.sync_settings``)."""
    raw_state_dir = env_str("FEATBIT_SHM_STATE_DIR", env)
    return {
        "data_sync": env_str("FEATBIT_DATA_SYNC", env).lower(),
        "polling_interval": env_float("FEATBIT_POLLING_INTERVAL", env) or 10.0,
        "rejected_retry_interval": env_float("FEATBIT_REJECTED_RETRY_INTERVAL", env) or 0.0,  # unset: its default
        "warm_start": env_str("FEATBIT_SHM_WARM_START", env).lower(),
        "state_dir": raw_state_dir or None,
    }


@dataclass(frozen=True)
class SyncSettings:
    env_secret: str = ""
    streaming_url: str = ""
    event_url: str = ""
    offline: bool = False
    bootstrap_file: str | None = None
    namespace: str = "default"
    owner_pid: int | None = None
    heartbeat_interval: float = 0.5
    standby: bool = True  # keep a standby candidate ready to take over
    disable_events: bool = False
    events_flush_interval: float = 1.0
    events_retry_interval: float = 0.2
    events_max_retries: int = 1
    streaming_first_retry_delay: float = 1.0
    idle_timeout: float | None = None  # exit after this long with no live client
    ring_bytes: int = DEFAULT_EVENT_RING_BYTES  # spare event rings are made at the size workers ask for
    event_concurrency: int = 24  # insight requests in flight at once, at most
    ca_bundle: str | None = None  # CAs to trust for TLS (websocket and insight)
    # The host's settings (how to reach FeatBit, warm start): unless given,
    # from the process's variables, so whoever builds settings hands them on.
    data_sync: str = field(default_factory=lambda: host_settings()["data_sync"])  # streaming | polling | auto
    polling_interval: float = field(default_factory=lambda: host_settings()["polling_interval"])
    rejected_retry_interval: float = field(default_factory=lambda: host_settings()["rejected_retry_interval"])  # 0: final
    warm_start: str = field(default_factory=lambda: host_settings()["warm_start"])  # 1 | 0 | auto
    state_dir: str | None = field(default_factory=lambda: host_settings()["state_dir"])  # where the warm-start file lives

    def __repr__(self) -> str:  # never show the secret
        return (
            f"SyncSettings(offline={self.offline}, streaming_url={self.streaming_url!r}, "
            f"namespace={self.namespace!r}, owner_pid={self.owner_pid})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SyncSettings:
        """Settings from the variables (the process environment by default);
        a bad value is a ConfigError naming its variable."""
        streaming = env_str("FEATBIT_STREAMING_URL", env)
        settings = cls(
            env_secret=env_str("FEATBIT_ENV_SECRET", env),
            # http(s) becomes ws(s), as for Config (a bad one is refused by validate)
            streaming_url=websocket_url("FEATBIT_STREAMING_URL", streaming) if streaming.startswith(("http:", "https:")) else streaming,
            event_url=env_str("FEATBIT_EVENT_URL", env),
            offline=env_bool("FEATBIT_OFFLINE", env),
            bootstrap_file=env_str("FEATBIT_BOOTSTRAP_FILE", env) or None,
            namespace=env_str("FEATBIT_NAMESPACE", env),
            owner_pid=env_int("FEATBIT_SHM_OWNER_PID", env) or None,
            standby=env_bool("FEATBIT_SHM_STANDBY", env),
            disable_events=env_bool("FEATBIT_DISABLE_EVENTS", env),
            events_flush_interval=env_float("FEATBIT_EVENTS_FLUSH_INTERVAL", env) or 1.0,
            events_retry_interval=env_float("FEATBIT_EVENTS_RETRY_INTERVAL", env) or 0.2,
            events_max_retries=env_int("FEATBIT_EVENTS_MAX_RETRIES", env) or 0,
            streaming_first_retry_delay=env_float("FEATBIT_STREAMING_FIRST_RETRY_DELAY", env) or 1.0,
            idle_timeout=env_float("FEATBIT_SHM_IDLE_TIMEOUT", env),
            ring_bytes=env_int("FEATBIT_SHM_RING_BYTES", env) or DEFAULT_EVENT_RING_BYTES,
            event_concurrency=env_int("FEATBIT_SHM_EVENT_CONCURRENCY", env) or 24,
            ca_bundle=env_str("FEATBIT_CA_BUNDLE", env) or None,
            **host_settings(env),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """The rules a client's ``Config`` follows, named by variable."""
        if self.offline:
            if not self.bootstrap_file:
                raise ConfigError("FEATBIT_OFFLINE needs FEATBIT_BOOTSTRAP_FILE: there is nothing else to serve")
            return
        check_secret("FEATBIT_ENV_SECRET", self.env_secret)
        check_url("FEATBIT_STREAMING_URL", self.streaming_url, STREAMING_SCHEMES)
        if self.event_url:
            check_url("FEATBIT_EVENT_URL", self.event_url, EVENT_SCHEMES)
        check_namespace("FEATBIT_NAMESPACE", self.namespace)
        if self.data_sync not in ("streaming", "polling", "auto"):
            raise ConfigError(f"FEATBIT_DATA_SYNC must be streaming, polling or auto, not {self.data_sync!r}")
        if self.polling_interval < 1:
            raise ConfigError(f"FEATBIT_POLLING_INTERVAL must be at least 1 s, not {self.polling_interval}")
        if self.warm_start not in ("1", "0", "auto"):
            raise ConfigError(f"FEATBIT_SHM_WARM_START must be 1, 0 or auto, not {self.warm_start!r}")
        if not 1 <= self.event_concurrency <= 256:
            raise ConfigError(f"FEATBIT_SHM_EVENT_CONCURRENCY must be 1..256, not {self.event_concurrency}")
        if self.ca_bundle and not os.path.isfile(self.ca_bundle):
            raise ConfigError(f"FEATBIT_CA_BUNDLE names {self.ca_bundle!r}, which is not a file")

    def to_env(self) -> dict[str, str]:
        """The variables a child sync process needs (merge into os.environ)."""
        env = {
            "FEATBIT_ENV_SECRET": self.env_secret,
            "FEATBIT_STREAMING_URL": self.streaming_url,
            "FEATBIT_EVENT_URL": self.event_url,
            "FEATBIT_OFFLINE": format_bool(self.offline),
            "FEATBIT_BOOTSTRAP_FILE": self.bootstrap_file or "",
            "FEATBIT_NAMESPACE": self.namespace,
            "FEATBIT_SHM_STANDBY": format_bool(self.standby),
            "FEATBIT_DISABLE_EVENTS": format_bool(self.disable_events),
            "FEATBIT_EVENTS_FLUSH_INTERVAL": format_number(self.events_flush_interval),
            "FEATBIT_EVENTS_RETRY_INTERVAL": format_number(self.events_retry_interval),
            "FEATBIT_EVENTS_MAX_RETRIES": format_number(self.events_max_retries),
            "FEATBIT_STREAMING_FIRST_RETRY_DELAY": format_number(self.streaming_first_retry_delay),
            "FEATBIT_SHM_IDLE_TIMEOUT": format_number(self.idle_timeout),
            "FEATBIT_SHM_OWNER_PID": format_number(self.owner_pid),
            "FEATBIT_SHM_RING_BYTES": format_number(self.ring_bytes),
            "FEATBIT_SHM_EVENT_CONCURRENCY": format_number(self.event_concurrency),
            "FEATBIT_CA_BUNDLE": self.ca_bundle or "",
            "FEATBIT_DATA_SYNC": self.data_sync,
            "FEATBIT_POLLING_INTERVAL": format_number(self.polling_interval),
            "FEATBIT_REJECTED_RETRY_INTERVAL": format_number(self.rejected_retry_interval),
            "FEATBIT_SHM_WARM_START": self.warm_start,
            "FEATBIT_SHM_STATE_DIR": self.state_dir or "",
        }
        return env

    def fingerprint(self) -> int:
        """What clients compare with their own Config (control block, W_CONFIG)."""
        return fingerprint({k: getattr(self, k) for k in FINGERPRINTED})

    @property
    def store_secret(self) -> str:
        """What store names derive from: offline stores have no secret."""
        return "" if self.offline else self.env_secret
