"""Every environment variable featbit-shm reads: the one table and the one parser.

No other module reads ``os.environ`` for a ``FEATBIT_*`` variable: each asks
this one by name (``env_bool("FEATBIT_OFFLINE")``), and a name that is not
in :data:`VARIABLES` is a programming error (``KeyError``), so the table
below is complete by construction. ``docs/CONFIGURATION.md`` shows the same
table to users (a test holds the two equal).

Spelling rules, the same for every variable:

* surrounding white space is ignored; unset and empty mean "the default";
* booleans: ``1 true yes on`` and ``0 false no off``, any case; anything
  else is a :class:`~featbit_shm.errors.ConfigError` naming the variable
  (never silently false);
* numbers: decimal; a number that does not parse, or is out of range, is a
  ``ConfigError``.

The sync process is configured through the same variables: a launcher hands
its child the values of :meth:`to_env`-style dictionaries built with
:func:`format_bool` and friends, so one spelling goes both ways.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Union

from .._core.errors import ConfigError

#: Each worker's event ring: about 10 s of 10,000 events/s of ~150-byte records.
DEFAULT_EVENT_RING_BYTES: Final = 16 * 1024 * 1024

TRUE: Final = frozenset({"1", "true", "yes", "on"})
FALSE: Final = frozenset({"0", "false", "no", "off"})

Default = Union[str, bool, int, float, None]


@dataclass(frozen=True)
class Variable:
    """One row of the table: name, kind, default, who reads it, what it does."""

    name: str
    kind: str  # "str", "bool", "tristate", "int", "float", "secret"
    default: Default
    readers: str
    meaning: str


VARIABLES: Final[dict[str, Variable]] = {
    v.name: v
    for v in (
        # -- what a client and its sync process are configured with (Config.from_env) --
        Variable("FEATBIT_ENV_SECRET", "secret", "", "client, sync", "the environment's server secret (online); never logged, never in argv"),
        Variable("FEATBIT_STREAMING_URL", "str", "", "client, sync", "websocket base URL, e.g. wss://featbit.example.com"),
        Variable("FEATBIT_EVENT_URL", "str", "", "client, sync", "HTTP base URL for analytics events, e.g. https://featbit.example.com"),
        Variable("FEATBIT_OFFLINE", "bool", False, "client, sync", "no network: serve a bootstrap file (or data loaded by the app)"),
        Variable("FEATBIT_BOOTSTRAP_FILE", "str", "", "client, sync", "the data-sync JSON file served offline; the sync process watches it"),
        Variable("FEATBIT_NAMESPACE", "str", "default", "client, sync, CLI", "separates several stores of one environment on one host"),
        Variable("FEATBIT_DISABLE_EVENTS", "bool", False, "client, sync", "keep syncing, record and send no analytics events (R-74)"),
        Variable("FEATBIT_EVENTS_FLUSH_INTERVAL", "float", 1.0, "sync", "seconds between event posts"),
        Variable("FEATBIT_EVENTS_RETRY_INTERVAL", "float", 0.2, "sync", "seconds between the attempts of one event post"),
        Variable("FEATBIT_EVENTS_MAX_RETRIES", "int", 1, "sync", "retries of one event post after its first attempt"),
        Variable("FEATBIT_STREAMING_FIRST_RETRY_DELAY", "float", 1.0, "sync", "first websocket reconnect delay in seconds (doubles up to 60)"),
        # -- the host runtime --
        Variable("FEATBIT_SHM_SHARED", "tristate", None, "client", "1: evaluate from the host's shared store even offline with a bootstrap file (set by the gunicorn hooks; implied in the workers of a uWSGI server that runs featbit_shm's mule)"),
        Variable("FEATBIT_SHM_AUTOSTART", "bool", True, "client", "0: a client never starts a sync process when it is built (server hooks and tests set it)"),
        Variable("FEATBIT_SHM_HEAL", "bool", True, "client", "0: a worker never starts a sync process when it finds none serving its store (tests set it)"),
        Variable("FEATBIT_SHM_LOG_FILE", "str", "", "sync", "file a started sync process appends its log to (default: discarded)"),
        Variable("FEATBIT_SHM_IDLE_TIMEOUT", "float", None, "sync", "exit after this many seconds with no live client (autostarted: 30; unset: run until stopped)"),
        Variable("FEATBIT_SHM_OWNER_PID", "int", None, "sync", "exit when this process is gone (set by launchers)"),
        Variable("FEATBIT_SHM_GROUP", "str", "", "client, sync", "a group (name or gid) the store is shared with: workers in it that run under another uid may read snapshots and write their event rings (set by the server hooks for servers that switch uid)"),
        Variable("FEATBIT_SHM_STORE_UID", "int", None, "client", "the uid of the account whose store workers trust (default: their own; the server hooks set the master's uid for workers that switch uid)"),
        Variable("FEATBIT_SHM_STANDBY", "bool", True, "sync", "0: the leader starts no standby candidate"),
        Variable("FEATBIT_SHM_RING_BYTES", "int", DEFAULT_EVENT_RING_BYTES, "client, sync", "bytes of each worker's event ring (whole pages; memory follows the backlog)"),
        Variable("FEATBIT_SHM_RUNTIME_DIR", "str", "", "client, sync", "directory of the lock files (default /dev/shm/featbit-shm-<uid>, private to the account)"),
        Variable("FEATBIT_START_WAIT", "float", 5.0, "gunicorn hooks", "seconds when_ready waits for the first snapshot"),
        Variable("FEATBIT_LOG_LEVEL", "str", "INFO", "sync", "log level of the sync process (DEBUG, INFO, WARNING, ...)"),
        Variable("FEATBIT_SHM_PURE_PYTHON", "bool", False, "client", "1: never use the optional C fast path of evaluation events"),
        Variable("FEATBIT_DATA_SYNC", "str", "auto", "sync", "streaming (the websocket), polling (GET latest-all every FEATBIT_POLLING_INTERVAL), or auto: the websocket, polling after 3 attempts in a row bring no data, back when it works (tried every 6 polls, and as soon as FeatBit answers after an outage)"),
        Variable("FEATBIT_POLLING_INTERVAL", "float", 10.0, "sync", "seconds between two polls (polling mode, and auto's fallback)"),
        Variable("FEATBIT_REJECTED_RETRY_INTERVAL", "float", 300.0, "sync", "after FeatBit rejects the client (4003, or 401/403 when polling) the state is OFF and the sync is retried this often; 0: never (R-18)"),
        Variable("FEATBIT_SHM_WARM_START", "str", "auto", "sync", "keep the last good data on disk and serve it when FeatBit is unreachable at start: 1, 0, or auto (on when FEATBIT_SHM_STATE_DIR or a private home directory is there)"),
        Variable("FEATBIT_SHM_STATE_DIR", "str", "", "sync", "directory of the warm-start file (default ~/.local/state/featbit-shm; created 0700)"),
        Variable("FEATBIT_SHM_MAX_EVENT_BYTES", "int", 64 * 1024, "client", "an event whose user takes more bytes than this (packed) is not recorded, counted as too_large (a proxy's body limit would refuse it)"),
        Variable("FEATBIT_SHM_EVENT_CONCURRENCY", "int", 24, "sync", "insight requests in flight at once, at most (each with at most 50 events)"),
        Variable("FEATBIT_CA_BUNDLE", "str", "", "sync", "a PEM file of the CAs to trust for TLS to FeatBit (websocket and insight alike); default: the system's"),
        Variable("FEATBIT_SHM_FAULT_PUBLISH_DELAY", "str", "", "sync (tests only)", "fault injection: seconds (or a file holding them) every publish stalls"),
        Variable("FEATBIT_SHM_FAULT_PUBLISH_FAIL", "str", "", "sync (tests only)", "fault injection: while this file exists, every publish fails as on a full /dev/shm"),
        Variable("FEATBIT_SHM_FAULT_DNS_DELAY", "float", None, "sync (tests only)", "fault injection: seconds every DNS lookup of the streaming host stalls"),
    )
}


def _raw(name: str, kind: tuple[str, ...], env: Mapping[str, str] | None) -> tuple[Variable, str]:
    var = VARIABLES[name]  # KeyError: a variable missing from the table
    if var.kind not in kind:
        raise TypeError(f"{name} is a {var.kind} variable")
    source = os.environ if env is None else env
    return var, (source.get(name) or "").strip()


def env_raw(name: str) -> str | None:
    """A variable's text exactly as set (None: unset), for an integration
    that sets it for a while and must put back what was there."""
    VARIABLES[name]  # KeyError: a variable missing from the table
    return os.environ.get(name)


def env_given(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Is the variable set to something (not unset, not blank), whatever its kind?"""
    VARIABLES[name]  # KeyError: a variable missing from the table
    source = os.environ if env is None else env
    return bool((source.get(name) or "").strip())


def env_str(name: str, env: Mapping[str, str] | None = None) -> str:
    """A text variable, stripped (its default when unset or empty)."""
    var, raw = _raw(name, ("str", "secret"), env)
    return raw or str(var.default or "")


def parse_bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use one of 1/true/yes/on or 0/false/no/off")


def env_bool(name: str, env: Mapping[str, str] | None = None) -> bool:
    var, raw = _raw(name, ("bool",), env)
    return parse_bool(name, raw) if raw else bool(var.default)


def env_tristate(name: str, env: Mapping[str, str] | None = None) -> bool | None:
    """A boolean whose absence means "decide for me" (None)."""
    _var, raw = _raw(name, ("tristate",), env)
    return parse_bool(name, raw) if raw else None


def env_float(name: str, env: Mapping[str, str] | None = None) -> float | None:
    """A finite number >= 0 (its default, possibly None, when unset)."""
    var, raw = _raw(name, ("float",), env)
    if not raw:
        return None if var.default is None else float(var.default)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r} must be a finite number >= 0")
    return value


def env_int(name: str, env: Mapping[str, str] | None = None) -> int | None:
    """A whole number >= 0 (its default, possibly None, when unset)."""
    var, raw = _raw(name, ("int",), env)
    if not raw:
        return None if var.default is None else int(var.default)
    if not raw.isdigit():
        raise ConfigError(f"{name}={raw!r} is not a whole number >= 0")
    return int(raw)


def format_bool(value: bool) -> str:
    return "1" if value else "0"


def format_number(value: float | int | None) -> str:
    """A number as its variable holds it; None (unset) is the empty string."""
    return "" if value is None else repr(value)


_KIND_NAMES: Final = {"str": "text", "secret": "text (secret)", "bool": "boolean", "tristate": "boolean or unset", "int": "whole number", "float": "number"}


def markdown_table() -> str:
    """The table of docs/CONFIGURATION.md (``python -m featbit_shm._runtime.environment``)."""

    def default(v: Variable) -> str:
        if v.default is None:
            return "unset"
        if v.kind in ("bool", "tristate"):
            return "1" if v.default else "0"
        return "empty" if v.default == "" else str(v.default)

    rows = ["| variable | kind | default | read by | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{v.name}` | {_KIND_NAMES[v.kind]} | {default(v)} | {v.readers} | {v.meaning} |" for v in VARIABLES.values()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
