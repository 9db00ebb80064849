"""How a sync process is configured: FEATBIT_* environment variables.

The secret travels in the environment (or a pipe), never in argv (R-77):
``ps`` shows argv to every user of the host.

=========================  ===============================================
``FEATBIT_ENV_SECRET``     the environment's server secret (online)
``FEATBIT_STREAMING_URL``  websocket base, e.g. ``wss://featbit.example.com``
``FEATBIT_EVENT_URL``      HTTP base for events, e.g. ``https://featbit.example.com``
``FEATBIT_OFFLINE``        ``1``/``true``: no network; serve a bootstrap file
``FEATBIT_BOOTSTRAP_FILE`` the data-sync JSON file served offline (watched)
``FEATBIT_NAMESPACE``      separates several stores of one environment (``default``)
``FEATBIT_SHM_OWNER_PID``  exit when this process is gone (set by launchers)
``FEATBIT_SHM_MODE``       octal mode of shared-memory objects (``600``)
``FEATBIT_SHM_STANDBY``    ``0``: start no standby candidate (default ``1``)
``FEATBIT_DISABLE_EVENTS`` ``1``: keep syncing, send no analytics events (R-74)
``FEATBIT_EVENTS_FLUSH_INTERVAL`` seconds between event posts (default 1)
``FEATBIT_SHM_IDLE_TIMEOUT`` exit after this many seconds with no live client (set for sync
                           processes that clients start; unset: run until stopped)
=========================  ===============================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config import Config
from ..errors import ConfigError

TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class SyncSettings:
    env_secret: str = ""
    streaming_url: str = ""
    event_url: str = ""
    offline: bool = False
    bootstrap_file: str | None = None
    namespace: str = "default"
    owner_pid: int | None = None
    mode: int = 0o600
    heartbeat_interval: float = 0.5
    standby: bool = True  # keep a standby candidate ready to take over
    disable_events: bool = False
    events_flush_interval: float = 1.0
    idle_timeout: float | None = None  # exit after this long with no live client
    extra: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never show the secret
        return (
            f"SyncSettings(offline={self.offline}, streaming_url={self.streaming_url!r}, "
            f"namespace={self.namespace!r}, owner_pid={self.owner_pid})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SyncSettings:
        env = os.environ if env is None else env
        offline = env.get("FEATBIT_OFFLINE", "").strip().lower() in TRUE
        owner = env.get("FEATBIT_SHM_OWNER_PID", "").strip()
        mode = env.get("FEATBIT_SHM_MODE", "").strip()
        settings = cls(
            env_secret=env.get("FEATBIT_ENV_SECRET", "").strip(),
            streaming_url=env.get("FEATBIT_STREAMING_URL", "").strip(),
            event_url=env.get("FEATBIT_EVENT_URL", "").strip(),
            offline=offline,
            bootstrap_file=env.get("FEATBIT_BOOTSTRAP_FILE", "").strip() or None,
            namespace=env.get("FEATBIT_NAMESPACE", "").strip() or "default",
            owner_pid=int(owner) if owner.isdigit() else None,
            mode=int(mode, 8) if mode else 0o600,
            standby=env.get("FEATBIT_SHM_STANDBY", "1").strip().lower() in TRUE,
            disable_events=env.get("FEATBIT_DISABLE_EVENTS", "").strip().lower() in TRUE,
            events_flush_interval=float(env.get("FEATBIT_EVENTS_FLUSH_INTERVAL", "") or 1.0),
            idle_timeout=float(env["FEATBIT_SHM_IDLE_TIMEOUT"]) if env.get("FEATBIT_SHM_IDLE_TIMEOUT", "").strip() else None,
        )
        settings.validate()
        return settings

    @classmethod
    def from_config(cls, config: Config, owner_pid: int | None = None) -> SyncSettings:
        return cls(
            env_secret=config.env_secret,
            streaming_url=config.streaming_url,
            event_url=config.event_url,
            offline=config.offline,
            bootstrap_file=config.bootstrap_file,
            namespace=config.namespace,
            owner_pid=owner_pid,
            disable_events=config.disable_events,
            events_flush_interval=config.events_flush_interval,
        )

    def validate(self) -> None:
        if self.offline:
            if not self.bootstrap_file:
                raise ConfigError("FEATBIT_OFFLINE needs FEATBIT_BOOTSTRAP_FILE: there is nothing else to serve")
            return
        # Config validates secret and URLs the same way clients do; say which
        # variable is wrong, since that is what an operator sets.
        try:
            Config(self.env_secret, self.event_url or "http://unset.invalid", self.streaming_url, namespace=self.namespace)
        except ConfigError as exc:
            text = str(exc)
            for param, var in (("env_secret", "FEATBIT_ENV_SECRET"), ("streaming_url", "FEATBIT_STREAMING_URL"), ("event_url", "FEATBIT_EVENT_URL"), ("namespace", "FEATBIT_NAMESPACE")):
                text = text.replace(param, var)
            raise ConfigError(text) from None

    def to_env(self) -> dict[str, str]:
        """The variables a child sync process needs (merge into os.environ)."""
        env = {
            "FEATBIT_ENV_SECRET": self.env_secret,
            "FEATBIT_STREAMING_URL": self.streaming_url,
            "FEATBIT_EVENT_URL": self.event_url,
            "FEATBIT_OFFLINE": "1" if self.offline else "0",
            "FEATBIT_BOOTSTRAP_FILE": self.bootstrap_file or "",
            "FEATBIT_NAMESPACE": self.namespace,
            "FEATBIT_SHM_MODE": f"{self.mode:o}",
            "FEATBIT_SHM_STANDBY": "1" if self.standby else "0",
            "FEATBIT_DISABLE_EVENTS": "1" if self.disable_events else "0",
            "FEATBIT_EVENTS_FLUSH_INTERVAL": str(self.events_flush_interval),
            "FEATBIT_SHM_IDLE_TIMEOUT": "" if self.idle_timeout is None else str(self.idle_timeout),
        }
        if self.owner_pid:
            env["FEATBIT_SHM_OWNER_PID"] = str(self.owner_pid)
        return env

    @property
    def store_secret(self) -> str:
        """What store names derive from: offline stores have no secret."""
        return "" if self.offline else self.env_secret
