"""FeatBit's data-sync protocol without I/O (R-1..R-25).

Everything the sync process needs to talk to FeatBit that can be decided
without a socket or a clock lives here: URLs, the connection token, the
frames it sends, how a received frame is classified, the reconnect schedule
and the reconnect policy. The websocket runner
(:class:`featbit_shm.sync.sources.StreamSource`) only moves bytes and time
through these functions; the states themselves are
:class:`featbit_shm.shm.control.SyncState`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Union
from urllib.parse import quote

from . import jsonstream
from .wire import DataSyncMessage, WireError, parse_data_sync

USER_AGENT: Final = "fb-python-server-sdk"  # R-4: [PY]'s value; the server does not read it
APP_TYPE: Final = "pythonserverside"
# R-9 lets the interval be chosen. 5 s, not the specification's 15: with the
# 5 s pong deadline a black-holed connection is noticed within 10 s, not 20,
# and a host sends one ping per 5 s however many workers it runs (fbclient:
# one per process every 10 s).
PING_INTERVAL_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 5.0  # R-21 ([PY] default)
TERMINAL_CLOSE: Final = 4003
PING_FRAME: Final = '{"messageType":"ping","data":{}}'

_DIGITS: Final = "QBWSPHDXZU"  # 0->Q 1->B 2->W ... 9->U


# --------------------------------------------------------------------------- URLs


def streaming_url(base: str, token: str) -> str:
    """R-1/R-2: strip trailing '/', append '/streaming', keep any prefix."""
    return f"{base.rstrip('/')}/streaming?type=server&token={quote(token, safe='')}"


def insight_url(base: str) -> str:
    """R-2/R-61: ``<event base>/api/public/insight/track``."""
    return f"{base.rstrip('/')}/api/public/insight/track"


def polling_url(base: str, timestamp: int) -> str:
    """FeatBit's polling endpoint on the evaluation server (or Agent) whose
    streaming URL is ``base``: ``ws(s)://host`` becomes ``http(s)://host``."""
    head = base.rstrip("/")
    if head.startswith("ws"):
        head = "http" + head[2:]
    return f"{head}/api/public/sdk/server/latest-all?timestamp={int(timestamp)}"


def clock_skew_text(skew_s: float | None) -> str:
    """How far the host clock is from the server's, for a log line."""
    if skew_s is None:
        return "the server sent no Date to compare the host clock with"
    if abs(skew_s) < 2:
        return "the host clock agrees with the server's (so check the env secret)"
    return f"the host clock is {abs(skew_s):.0f} s {'ahead of' if skew_s > 0 else 'behind'} FeatBit's"


def redact(url: str) -> str:
    """A URL safe to log (R-77): the token is reversible into the secret."""
    head, sep, _query = url.partition("?")
    return head + (sep + "token=<redacted>" if sep else "")


# --------------------------------------------------------------------------- token


def _encode_number(n: int, width: int) -> str:
    digits = str(n).rjust(width, "0")[-width:]
    return "".join(_DIGITS[int(d)] for d in digits)


def build_token(secret: str, now_ms: int, random_fraction: float) -> str:
    """The connection token, exactly as R-5 says (not JWT, not Base64).

    ``random_fraction`` is a draw from [0, 1); tests pass fixed values (R-6).
    """
    s = secret.rstrip("=")
    t = str(now_ms)
    p = max(math.floor(random_fraction * len(s)), 2)
    return _encode_number(p, 3) + _encode_number(len(t), 2) + s[:p] + _encode_number(int(t), len(t)) + s[p:]


def decode_token(token: str) -> tuple[str, int]:
    """The server's decoding (R-5): (secret re-padded to a multiple of 4, timestamp ms).

    Raises ValueError on anything the server would reject. The stand-in
    server uses this; it is here so both sides share one definition.
    """
    reverse = {c: str(i) for i, c in enumerate(_DIGITS)}
    if len(token) < 5 or any(c not in reverse for c in token[:5]):
        raise ValueError("token header is not encoded digits")
    p = int("".join(reverse[c] for c in token[:3]))
    length = int("".join(reverse[c] for c in token[3:5]))
    if p > 255 or length > 255:
        raise ValueError("token header out of range")
    payload = token[5:]
    if p + length > len(payload):
        raise ValueError("token is too short")
    stamp = payload[p : p + length]
    if any(c not in reverse for c in stamp):
        raise ValueError("token timestamp is not encoded digits")
    secret = payload[:p] + payload[p + length :]
    secret += "=" * (-len(secret) % 4)
    return secret, int("".join(reverse[c] for c in stamp))


# --------------------------------------------------------------------------- frames (R-7..R-11)


def data_sync_request(cursor: int) -> str:
    """R-7: sent right after every open; cursor 0 asks for a full sync."""
    return json.dumps({"messageType": "data-sync", "data": {"timestamp": int(cursor)}}, separators=(",", ":"))


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Ignored:
    """A frame that changes nothing (R-11): unknown type or invalid content."""

    reason: str


Frame = Union[DataSyncMessage, Pong, Ignored]


def parse_frame(text: str | bytes) -> Frame:
    """Classify one received message. Never raises (G-5: bad JSON is ignored)."""
    try:
        envelope = jsonstream.loads(text)  # a full sync's entity lists packed as they are read
    except (ValueError, RecursionError):
        return Ignored("invalid JSON")
    if not isinstance(envelope, dict):
        return Ignored("not a JSON object")
    kind = envelope.get("messageType")
    if kind == "pong":
        return Pong()
    if kind != "data-sync":
        return Ignored(f"unknown messageType {str(kind)[:40]!r}")
    try:
        return parse_data_sync(envelope.get("data"))
    except WireError as exc:
        return Ignored(f"invalid data-sync: {exc}")
    except Exception as exc:  # noqa: BLE001 - never raises: a frame that breaks the parser is ignored, and said
        return Ignored(f"invalid data-sync: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- reconnects (R-17..R-21)


def close_is_terminal(code: int | None) -> bool:
    """R-17/R-18: only 4003 stops for good; 1000, 1011 and the rest reconnect."""
    return code == TERMINAL_CLOSE


class Backoff:
    """Jittered exponential reconnect delays (R-19, the [PY] policy, documented).

    The n-th delay is ``b/2 + U[0,1) * b/2`` with ``b = min(first * 2**n, cap)``;
    ``first`` defaults to 1 s and ``cap`` to 60 s, so delays run about
    0.5-1, 1-2, 2-4, ... 30-60 s. :meth:`reset` (after a connection that
    committed a sync) starts again at n = 0 -- unlike fbclient, which resets
    before connecting (G-16).
    """

    def __init__(self, first: float = 1.0, cap: float = 60.0, rand: Callable[[], float] | None = None) -> None:
        if first <= 0 or cap <= 0:
            raise ValueError("backoff delays must be positive")
        import random

        self.first = min(first, cap)
        self.cap = cap
        self._rand = rand or random.random
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.first * 2.0 ** min(self.attempt, 30), self.cap)
        self.attempt += 1
        return float(base / 2 + self._rand() * base / 2)

    def reset(self) -> None:
        self.attempt = 0
