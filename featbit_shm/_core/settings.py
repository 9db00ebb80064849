"""What a valid setting is: the rules ``Config`` and the sync process's
settings share, so a value a client accepts is one its sync process accepts.

Each check names the setting in its error (callers pass the name the user
wrote: ``streaming_url`` for ``Config``, ``FEATBIT_STREAMING_URL`` for a
variable).
"""

from __future__ import annotations

import hashlib
import math
from urllib.parse import urlsplit

from .errors import ConfigError

EVENT_SCHEMES = ("http", "https")
STREAMING_SCHEMES = ("ws", "wss", "http", "https")


def check_secret(name: str, value: object) -> str:
    """An env secret: a non-empty ASCII string (surrounding space dropped)."""
    if not isinstance(value, str) or not value.strip() or not value.strip().isascii():
        raise ConfigError(f"{name} must be a non-empty ASCII string when not offline")
    return value.strip()


def check_url(name: str, value: object, schemes: tuple[str, ...]) -> str:
    """An absolute URL of one of ``schemes``, without a trailing slash."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(f"{name} must be an absolute {'/'.join(schemes)} URL")
    return value.rstrip("/")


def check_namespace(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ConfigError(f"{name} must be a non-empty string of at most 64 characters")
    return value


def check_positive(name: str, value: object, *, maximum: float | None = None) -> float:
    """A finite number > 0 (capped at ``maximum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, not {value!r}")
    return float(min(value, maximum) if maximum is not None else value)


def check_count(name: str, value: object, *, minimum: int = 0) -> int:
    """A whole number >= ``minimum`` (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}")
    return value


def websocket_url(name: str, value: object) -> str:
    """A streaming base URL as the websocket client needs it: ``http`` and
    ``https`` (what FeatBit's other SDKs accept too) become ``ws`` and ``wss``."""
    url = check_url(name, value, STREAMING_SCHEMES)
    scheme, rest = url.split(":", 1)
    return {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme) + ":" + rest


#: What a client and the sync process serving it must agree on (the secret
#: and namespace already name the store).
FINGERPRINTED = ("streaming_url", "event_url", "offline", "bootstrap_file", "disable_events")


def fingerprint(values: dict[str, object]) -> int:
    """A 64-bit fingerprint of the :data:`FINGERPRINTED` settings (never 0:
    0 means "no fingerprint", a leader older than this field)."""
    def canonical(value: object) -> str:
        return str(value).rstrip("/") if value else ""

    text = "\0".join(f"{k}={canonical(values.get(k))}" for k in FINGERPRINTED)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") or 1
