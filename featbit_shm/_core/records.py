"""Analytics events without I/O: ring records, FeatBit payloads, delivery rules (R-61..R-70).

A worker records an event as one small msgpack record (the cheapest thing it
can write); the sync process turns records into FeatBit's insight payload
objects (R-62..R-64), slices them into requests of at most 50 objects (R-67)
and classifies responses (R-68). Everything here is a function of its
inputs.

A record is ``u16 head length | head | user``, both msgpack (the encoders
return it framed with the ring's u32 length prefix)::

    head = [2, ts_ms, [[event_name, numeric_value], ...]]                  metrics
    head = [3, ts_ms]                                                      identify
    user = the caller's validated user dict, packed as it is

An evaluation -- the one recorded on every ``variation()`` -- has a binary
head instead, so a worker writes it with one ``struct`` pack and one join::

    u16 0xFFFF | u64 ts_ns (little-endian) | u16 tail length | tail | user
    tail = msgpack(flag_key) msgpack(variation_id) msgpack(value) msgpack(send_to_experiment)

The tail is the same bytes for every event of one flag variation, and the
user the same bytes for every flag of one request, so both are cached; the
clock is stored as ``time.time_ns()`` gives it (the sync process divides).

Turning the user into FeatBit's ``{keyId, name, customizedProperties}`` is
the sync process's work, and it is cached by the user's packed bytes: one
request evaluates many flags for one user. The sync process renders each
record straight to its JSON text (:class:`Renderer`), so posting 50 events
is one join, not 50 dicts through ``json.dumps``.
"""

from __future__ import annotations

import email.utils
import enum
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import msgpack

from .protocol import APP_TYPE
from .user import InvalidUser, make_user, pack_user, wire_user

# Record kinds in a msgpack head (an evaluation's binary head is marked by EVAL_MARK instead).
METRIC: Final = 2
IDENTIFY: Final = 3
MAX_BATCH: Final = 50  # payload objects per request
MAX_BODY: Final = 900 * 1024  # bytes per request body: under the 1 MiB limit proxies commonly set
DEFAULT_MAX_EVENT_BYTES: Final = 64 * 1024  # a user bigger than this, packed, is not recorded (counted)
ATTEMPTS: Final = 2  # attempts in total
RETRY_DELAY_S: Final = 0.2  # between attempts


class RecordError(ValueError):
    """Bytes in a ring that are not a valid event record."""


class EventTooLarge(ValueError):
    """An event bigger than the event size bound: not recorded (counted)."""


_HEAD_LEN: Final = struct.Struct("<H")
_FRAME: Final = struct.Struct("<IH")  # ring length prefix (u32) + head length (u16)
EVAL_MARK: Final = 0xFFFF  # in the head-length field: a binary evaluation head follows
_EVAL_HEAD: Final = struct.Struct("<IHQH")  # ring length prefix, EVAL_MARK, ts_ns, tail length
_EVAL_REST: Final = struct.Struct("<QH")  # ts_ns, tail length (after the mark)
EVAL_HEAD_SIZE: Final = _EVAL_HEAD.size - 4  # the record's bytes before the tail


def frame(packer: msgpack.Packer, head: tuple[Any, ...], user: Mapping[str, Any]) -> bytes:
    """A record with its u32 ring length prefix, built in one concatenation:
    the ring copies it in as it is."""
    packed = packer.pack(head)
    packed_user = pack_user(packer.pack, user)
    return _FRAME.pack(2 + len(packed) + len(packed_user), len(packed)) + packed + packed_user  # type: ignore[no-any-return]


def encode_eval(packer: msgpack.Packer, ts_ns: int, user: Mapping[str, Any], flag_key: str, variation_id: str, value: str, expt: bool) -> bytes:
    """An evaluation record, framed (what :class:`EvalEncoder` must equal)."""
    tail = packer.pack(flag_key) + packer.pack(variation_id) + packer.pack(value) + packer.pack(expt)
    packed_user = pack_user(packer.pack, user)
    return _EVAL_HEAD.pack(EVAL_HEAD_SIZE + len(tail) + len(packed_user), EVAL_MARK, ts_ns, len(tail)) + tail + packed_user  # type: ignore[no-any-return]


class EvalEncoder:
    """Encodes evaluation records (one per recorded evaluation, the hot path),
    byte for byte as :func:`encode_eval` does, with two caches:

    * the packed user, kept while the same dict comes back unchanged (a
      request evaluates several flags for one user): same object, equal to a
      copy taken when it was packed. Only users whose values are all strings
      are kept -- for them equality means identical bytes, where
      ``1 == 1.0 == True`` would not;
    * the tail (flag key, variation id, value, experiment), per distinct
      tail, bounded.

    :meth:`eval` is the whole encoding. The recorder runs the same steps
    inline, reading these attributes (its hot path; a test holds the two to
    the same bytes).
    """

    __slots__ = ("_pack", "user", "copy", "packed", "tails", "max_bytes")

    MAX_TAILS: Final = 4096

    def __init__(self, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_bytes = max_bytes
        self._pack = msgpack.Packer(autoreset=True).pack
        self.user: Any = None
        self.copy: dict[Any, Any] | None = None
        self.packed = b""
        self.tails: dict[tuple[str, str, str, bool], bytes] = {}

    def user_bytes(self, user: Mapping[str, Any]) -> bytes:
        if user is self.user and user == self.copy:
            return self.packed
        packed = pack_user(self._pack, user)
        if len(packed) > self.max_bytes:  # checked here, where a user is packed: never on a cache hit
            raise EventTooLarge(f"the user is {len(packed)} bytes packed, over the event size bound of {self.max_bytes}")
        if all(type(v) is str for v in user.values()):
            self.user, self.copy, self.packed = user, dict(user), packed
        else:
            self.user = self.copy = None
        return packed

    def tail(self, flag_key: str, variation_id: str, value: str, expt: bool) -> bytes:
        tails = self.tails
        key = (flag_key, variation_id, value, expt)
        tail = tails.get(key)
        if tail is None:
            pack = self._pack
            tail = pack(flag_key) + pack(variation_id) + pack(value) + pack(expt)
            if len(tails) >= self.MAX_TAILS:
                tails.clear()
            tails[key] = tail
        return tail

    def eval(self, ts_ns: int, user: Mapping[str, Any], flag_key: str, variation_id: str, value: str, expt: bool) -> bytes:
        """The framed record, as :func:`encode_eval` makes it."""
        packed_user = self.packed if user is self.user and user == self.copy else self.user_bytes(user)
        tail = self.tails.get((flag_key, variation_id, value, expt)) or self.tail(flag_key, variation_id, value, expt)
        return _EVAL_HEAD.pack(EVAL_HEAD_SIZE + len(tail) + len(packed_user), EVAL_MARK, ts_ns, len(tail)) + tail + packed_user

    def reset(self) -> None:
        self.__init__(self.max_bytes)  # type: ignore[misc]


def encode_metrics(packer: msgpack.Packer, ts_ms: int, user: Mapping[str, Any], metrics: Sequence[tuple[str, float]]) -> bytes:
    return frame(packer, (METRIC, ts_ms, [list(m) for m in metrics]), user)


def encode_identify(packer: msgpack.Packer, ts_ms: int, user: Mapping[str, Any]) -> bytes:
    return frame(packer, (IDENTIFY, ts_ms), user)


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
        self._variations: dict[bytes, tuple[bytes, bytes]] = {}  # eval tail -> JSON around the timestamp

    def _eval(self, record: bytes) -> bytes:
        if len(record) < EVAL_HEAD_SIZE:
            raise RecordError("evaluation record is too short")
        ts_ns, tail_len = _EVAL_REST.unpack_from(record, 2)
        end = EVAL_HEAD_SIZE + tail_len
        if end > len(record):
            raise RecordError("evaluation tail overruns the record")
        tail = record[EVAL_HEAD_SIZE:end]
        user = self._user(record[end:])
        rendered = self._variations.get(tail)
        if rendered is None:
            unpacker = msgpack.Unpacker(raw=False)
            unpacker.feed(tail)
            try:
                items = list(unpacker)
            except Exception as exc:  # msgpack raises several types  # noqa: BLE001
                raise RecordError(f"evaluation tail does not decode: {exc}") from None
            if len(items) != 4:
                raise RecordError("evaluation tail has the wrong shape")
            flag_key, var_id, value, expt = items
            if not (isinstance(flag_key, str) and isinstance(var_id, str) and isinstance(value, str) and isinstance(expt, bool)):
                raise RecordError("evaluation record has the wrong types")
            rendered = (
                b'{"featureFlagKey":' + json.dumps(flag_key).encode()
                + b',"variation":' + json.dumps({"id": var_id, "value": value}, separators=(",", ":")).encode()
                + b',"timestamp":',
                b',"sendToExperiment":true}]}' if expt else b',"sendToExperiment":false}]}',
            )  # fmt: skip
            if len(self._variations) >= self.MAX_CACHE:
                self._variations.clear()
            self._variations[tail] = rendered
        return b'{"user":' + user + b',"variations":[' + rendered[0] + str(ts_ns // 1_000_000).encode() + rendered[1]

    def _user(self, raw: bytes) -> bytes:
        cached = self._users.get(raw)
        if cached is None:
            # Read back with the worker's own rule (make_user), so the event
            # names the user evaluation saw. Names need not be strings
            # (strict_map_key off): evaluation never reads such a name, and
            # wire_user leaves it out.
            try:
                user = make_user(msgpack.unpackb(raw, raw=False, strict_map_key=False))
            except InvalidUser as exc:
                raise RecordError(f"event user is invalid: {exc}") from None
            except Exception as exc:  # msgpack raises several types  # noqa: BLE001
                raise RecordError(f"record user does not decode: {exc}") from None
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
        if head_len == EVAL_MARK:
            return self._eval(record)
        if 2 + head_len > len(record):
            raise RecordError("record head overruns the record")
        head = _unpack(record[2 : 2 + head_len])
        user = self._user(record[2 + head_len :])
        if not isinstance(head, list) or len(head) < 2 or not isinstance(head[1], int) or isinstance(head[1], bool):
            raise RecordError("record head has the wrong shape")
        kind, ts = head[0], head[1]
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
    RETRY = "retry"  # may pass: try again after a backoff (or the server's Retry-After)
    REFUSED = "refused"  # this payload is refused (400, 413): split it to find the event(s) at fault
    TERMINAL = "terminal"  # the credentials are refused: stop delivery for good


def classify(status: int | None) -> Outcome:
    """The response rules (docs/PROTOCOL.md, "Delivery"): 2xx success; 400
    and 413 refuse the payload, not the sender (split it, drop only the
    event at fault); 408, 429, 5xx, other non-4xx and network errors
    (``None``) retry; any other 4xx (401, 403, 404...) stops delivery."""
    if status is None:
        return Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.SUCCESS
    if status in (400, 413):
        return Outcome.REFUSED
    if status in (408, 429) or not 400 <= status < 500:
        return Outcome.RETRY
    return Outcome.TERMINAL


MAX_RETRY_AFTER_S: Final = 300.0  # a Retry-After longer than this is capped
BACKOFF_BASE_S: Final = 0.2  # the first retry comes this long after a failure
BACKOFF_MAX_S: Final = 10.0  # while failing, one probe this often at least: recovery within 10 s


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an
    HTTP date; ``now`` is Unix time), capped at MAX_RETRY_AFTER_S; None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - now), MAX_RETRY_AFTER_S)


def backoff(failures: int, rand: float, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_MAX_S) -> float:
    """Seconds before the next attempt after ``failures`` retryable failures
    in a row: ``base`` after the first (R-68's 200 ms), then doubling up to
    ``cap``, with "equal jitter" from ``rand`` in [0, 1): half fixed, half
    random, so hosts that failed together do not retry together."""
    ceiling = min(cap, base * (2 ** max(0, failures - 1)))
    return ceiling / 2 + ceiling / 2 * rand if failures > 1 else base


def describe_payload(payload: bytes) -> str:
    """What a refused payload object was, for a log line: its kind, flag keys
    or event names, and size -- never the user's attributes."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return f"an unreadable object of {len(payload)} bytes"
    if isinstance(obj, dict):
        if obj.get("variations"):
            keys = [v.get("featureFlagKey") for v in obj["variations"] if isinstance(v, dict)]
            return f"an evaluation of flag(s) {keys} of {len(payload)} bytes"
        if obj.get("metrics"):
            names = [m.get("eventName") for m in obj["metrics"] if isinstance(m, dict)]
            return f"metric(s) {names} of {len(payload)} bytes"
    return f"a user object of {len(payload)} bytes"
