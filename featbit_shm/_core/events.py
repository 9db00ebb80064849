"""Analytics events without I/O: ring records, FeatBit payloads, delivery rules (R-61..R-70).

A worker records an event as one small msgpack record (the cheapest thing it
can write); the sync process turns records into FeatBit's insight payload
objects (R-62..R-64), slices them into requests of at most 50 objects (R-67)
and classifies responses (R-68). Everything here is a function of its
inputs.

A record is ``u16 head length | head | user``, both msgpack (the encoders
return it framed with the ring's u32 length prefix)::

    head = [1, ts_ms, flag_key, variation_id, value, send_to_experiment]   evaluation
    head = [2, ts_ms, [[event_name, numeric_value], ...]]                  metrics
    head = [3, ts_ms]                                                      identify
    user = the caller's validated user dict, packed as it is

Turning the user into FeatBit's ``{keyId, name, customizedProperties}`` is
the sync process's work, and it is cached by the user's packed bytes: one
request evaluates many flags for one user. The sync process renders each
record straight to its JSON text (:class:`Renderer`), so posting 50 events
is one join, not 50 dicts through ``json.dumps``.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import msgpack

from .protocol import APP_TYPE
from .user import RESERVED, attr_string

EVAL: Final = 1
METRIC: Final = 2
IDENTIFY: Final = 3
MAX_BATCH: Final = 50  # payload objects per request
ATTEMPTS: Final = 2  # attempts in total
RETRY_DELAY_S: Final = 0.2  # between attempts


class RecordError(ValueError):
    """Bytes in a ring that are not a valid event record."""


_HEAD_LEN: Final = struct.Struct("<H")
_FRAME: Final = struct.Struct("<IH")  # ring length prefix (u32) + head length (u16)
# msgpack of ``(EVAL, ts_ms, ...)`` begins: fixarray of 6, positive fixint EVAL,
# uint64 marker and the big-endian timestamp (msgpack's choice for 2**32..2**64-1).
_EVAL_MARKERS: Final = bytes((0x96, EVAL, 0xCF))
_TS: Final = struct.Struct(">Q")
_EVAL_HEAD_FIXED: Final = len(_EVAL_MARKERS) + _TS.size
_UINT64_MIN: Final = 1 << 32
_UINT64_MAX: Final = (1 << 64) - 1


def frame(packer: msgpack.Packer, head: tuple[Any, ...], user: Mapping[str, Any]) -> bytes:
    """A record with its u32 ring length prefix, built in one concatenation:
    the ring copies it in as it is (this runs once per recorded event)."""
    packed = packer.pack(head)
    packed_user = packer.pack(user)
    return _FRAME.pack(2 + len(packed) + len(packed_user), len(packed)) + packed + packed_user  # type: ignore[no-any-return]


def encode_eval(packer: msgpack.Packer, ts_ms: int, user: Mapping[str, Any], flag_key: str, variation_id: str, value: str, expt: bool) -> bytes:
    return frame(packer, (EVAL, ts_ms, flag_key, variation_id, value, expt), user)


class EvalEncoder:
    """Encodes evaluation records (one per recorded evaluation, the hot path),
    byte for byte as :func:`encode_eval` does, with two caches:

    * the packed user, kept while the same dict comes back unchanged (a
      request evaluates several flags for one user): same object, equal to a
      copy taken when it was packed. Only users whose values are all strings
      are kept -- for them equality means identical bytes, where
      ``1 == 1.0 == True`` would not;
    * the packed tail of the head (flag key, variation id, value,
      experiment), per distinct tail, bounded. The head is a msgpack array
      ``[EVAL, ts, ...tail]`` and a millisecond timestamp after 1970-02-19
      always packs as a uint64, so head = fixed prefix + 8 timestamp bytes +
      cached tail.
    """

    __slots__ = ("_pack", "_user", "_copy", "_packed", "_tails", "_prefixes")

    MAX_TAILS: Final = 4096

    def __init__(self) -> None:
        self._pack = msgpack.Packer(autoreset=True).pack
        self._user: Any = None
        self._copy: dict[Any, Any] | None = None
        self._packed = b""
        self._tails: dict[tuple[str, str, str, bool], bytes] = {}
        # frame length prefix + array/EVAL/uint64 markers, by (tail, user) lengths
        self._prefixes: dict[int, bytes] = {}

    def user_bytes(self, user: Mapping[str, Any]) -> bytes:
        if user is self._user and user == self._copy:
            return self._packed
        packed: bytes = self._pack(user)
        if all(type(v) is str for v in user.values()):
            self._user, self._copy, self._packed = user, dict(user), packed
        else:
            self._user = self._copy = None
        return packed

    def eval(self, ts_ms: int, user: Mapping[str, Any], flag_key: str, variation_id: str, value: str, expt: bool) -> bytes:
        """The framed record, as :func:`encode_eval` makes it."""
        if user is self._user and user == self._copy:
            packed_user = self._packed
        else:
            packed_user = self.user_bytes(user)
        if not _UINT64_MIN <= ts_ms <= _UINT64_MAX:
            head: bytes = self._pack((EVAL, ts_ms, flag_key, variation_id, value, expt))
            return _FRAME.pack(2 + len(head) + len(packed_user), len(head)) + head + packed_user
        key = (flag_key, variation_id, value, expt)
        tail = self._tails.get(key)
        if tail is None:
            pack = self._pack
            tail = pack(flag_key) + pack(variation_id) + pack(value) + pack(expt)
            if len(self._tails) >= self.MAX_TAILS:
                self._tails.clear()
            self._tails[key] = tail
        lengths = len(tail) << 32 | len(packed_user)
        prefix = self._prefixes.get(lengths)
        if prefix is None:
            n = _EVAL_HEAD_FIXED + len(tail)
            prefix = _FRAME.pack(2 + n + len(packed_user), n) + _EVAL_MARKERS
            if len(self._prefixes) >= self.MAX_TAILS:
                self._prefixes.clear()
            self._prefixes[lengths] = prefix
        return prefix + _TS.pack(ts_ms) + tail + packed_user

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def encode_metrics(packer: msgpack.Packer, ts_ms: int, user: Mapping[str, Any], metrics: Sequence[tuple[str, float]]) -> bytes:
    return frame(packer, (METRIC, ts_ms, [list(m) for m in metrics]), user)


def encode_identify(packer: msgpack.Packer, ts_ms: int, user: Mapping[str, Any]) -> bytes:
    return frame(packer, (IDENTIFY, ts_ms), user)


def wire_user(user: Mapping[str, Any]) -> dict[str, Any]:
    """R-64: ``keyId``, ``name`` (``""`` if unset), ``customizedProperties`` as a list of pairs."""
    key = user.get("key")
    if key is None:
        key = user.get("keyId", user.get("keyid"))
    if not isinstance(key, str) or not key.strip():
        raise RecordError("event user has no key")
    name = user.get("name")
    customs = []
    for k, v in user.items():
        if isinstance(k, str) and k not in RESERVED:
            s = attr_string(v)
            if s is not None:
                customs.append({"name": k, "value": s})
    return {"keyId": key, "name": name if isinstance(name, str) else "", "customizedProperties": customs}


def _unpack(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types  # noqa: BLE001
        raise RecordError(f"record does not decode: {exc}") from None


class Renderer:
    """Turns ring records into insight payload objects as JSON bytes (R-62..R-64).

    Keeps a bounded cache of rendered users (by their packed bytes) and of
    rendered variations.
    """

    MAX_CACHE: Final = 20_000

    def __init__(self) -> None:
        self._users: dict[bytes, bytes] = {}
        self._variations: dict[tuple[str, str, str], bytes] = {}

    def _user(self, raw: bytes) -> bytes:
        cached = self._users.get(raw)
        if cached is None:
            user = _unpack(raw)
            if not isinstance(user, dict):
                raise RecordError("record user is not a map")
            cached = json.dumps(wire_user(user), separators=(",", ":")).encode()
            if len(self._users) >= self.MAX_CACHE:
                self._users.clear()
            self._users[raw] = cached
        return cached

    def render(self, record: bytes) -> bytes:
        """One record -> one payload object's JSON. Raises RecordError."""
        if len(record) < 2:
            raise RecordError("record is too short")
        head_len = _HEAD_LEN.unpack_from(record)[0]
        if 2 + head_len > len(record):
            raise RecordError("record head overruns the record")
        head = _unpack(record[2 : 2 + head_len])
        user = self._user(record[2 + head_len :])
        if not isinstance(head, list) or len(head) < 2 or not isinstance(head[1], int) or isinstance(head[1], bool):
            raise RecordError("record head has the wrong shape")
        kind, ts = head[0], head[1]
        if kind == EVAL and len(head) == 6:
            _k, _t, flag_key, var_id, value, expt = head
            if not (isinstance(flag_key, str) and isinstance(var_id, str) and isinstance(value, str)):
                raise RecordError("evaluation record has the wrong types")
            key = (flag_key, var_id, value)
            variation = self._variations.get(key)
            if variation is None:
                variation = (
                    b'{"featureFlagKey":' + json.dumps(flag_key).encode()
                    + b',"variation":' + json.dumps({"id": var_id, "value": value}, separators=(",", ":")).encode()
                )  # fmt: skip
                if len(self._variations) >= self.MAX_CACHE:
                    self._variations.clear()
                self._variations[key] = variation
            return (
                b'{"user":' + user + b',"variations":[' + variation + b',"timestamp":' + str(ts).encode()
                + (b',"sendToExperiment":true}]}' if expt else b',"sendToExperiment":false}]}')
            )  # fmt: skip
        if kind == METRIC and len(head) == 3 and isinstance(head[2], list):
            metrics = []
            for m in head[2]:
                if not (isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], (int, float)) and not isinstance(m[1], bool)):
                    raise RecordError("metric entry has the wrong shape")
                metrics.append(
                    {"appType": APP_TYPE, "route": "index/metric", "type": "CustomEvent", "eventName": m[0], "numericValue": float(m[1]), "timestamp": ts}
                )
            return b'{"user":' + user + b',"metrics":' + json.dumps(metrics, separators=(",", ":")).encode() + b"}"
        if kind == IDENTIFY and len(head) == 2:
            return b'{"user":' + user + b"}"
        raise RecordError(f"unknown record kind {kind!r}")


def unframe(framed: bytes) -> bytes:
    """The record inside an encoder's output (what a ring gives back)."""
    if len(framed) < 4 or struct.unpack_from("<I", framed)[0] != len(framed) - 4:
        raise RecordError("bad record frame")
    return framed[4:]


def to_payload(framed: bytes) -> dict[str, Any]:
    """An encoder's output as a payload dict (tests, tools; the pump uses :class:`Renderer`)."""
    return json.loads(Renderer().render(unframe(framed)))  # type: ignore[no-any-return]


def join_json(objects: Sequence[bytes]) -> bytes:
    """A JSON array of already-rendered objects: the request body (R-61)."""
    return b"[" + b",".join(objects) + b"]"


def batches(objects: Sequence[Any], size: int = MAX_BATCH) -> Iterator[Sequence[Any]]:
    """Slices of at most ``size`` payload objects, in order (R-67)."""
    for i in range(0, len(objects), size):
        yield objects[i : i + size]


class Outcome(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    TERMINAL = "terminal"


def classify(status: int | None) -> Outcome:
    """R-68: 2xx success; 400/408/429, 5xx, other non-4xx and network errors
    (``None``) retry; any other 4xx stops delivery for good."""
    if status is None:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.SUCCESS
    if status in (400, 408, 429) or not 400 <= status < 500:
        return Outcome.RETRY
    return Outcome.TERMINAL
