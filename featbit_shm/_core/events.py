"""Analytics events without I/O: ring records, FeatBit payloads, delivery rules (R-61..R-70).

A worker records an event as one small msgpack record (the cheapest thing it
can write); the sync process turns records into FeatBit's insight payload
objects (R-62..R-64), slices them into requests of at most 50 objects (R-67)
and classifies responses (R-68). Everything here is a function of its
inputs.

Records (msgpack arrays)::

    [1, ts_ms, user, flag_key, variation_id, value, send_to_experiment]   evaluation
    [2, ts_ms, user, [[event_name, numeric_value], ...]]                   metrics
    [3, ts_ms, user]                                                       identify

``user`` is the caller's validated user dict, packed as it is: turning it into
FeatBit's ``{keyId, name, customizedProperties}`` happens in the sync process.
"""

from __future__ import annotations

import enum
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


def encode_eval(packer: msgpack.Packer, ts_ms: int, user: Mapping[str, Any], flag_key: str, variation_id: str, value: str, expt: bool) -> bytes:
    return packer.pack([EVAL, ts_ms, user, flag_key, variation_id, value, expt])  # type: ignore[no-any-return]


def encode_metrics(packer: msgpack.Packer, ts_ms: int, user: Mapping[str, Any], metrics: Sequence[tuple[str, float]]) -> bytes:
    return packer.pack([METRIC, ts_ms, user, [list(m) for m in metrics]])  # type: ignore[no-any-return]


def encode_identify(packer: msgpack.Packer, ts_ms: int, user: Mapping[str, Any]) -> bytes:
    return packer.pack([IDENTIFY, ts_ms, user])  # type: ignore[no-any-return]


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


def to_payload(record: bytes) -> dict[str, Any]:
    """One ring record -> one insight payload object. Raises RecordError."""
    try:
        fields = msgpack.unpackb(record, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types  # noqa: BLE001
        raise RecordError(f"record does not decode: {exc}") from None
    if not isinstance(fields, list) or len(fields) < 3 or not isinstance(fields[1], int) or not isinstance(fields[2], dict):
        raise RecordError("record has the wrong shape")
    kind, ts, user = fields[0], fields[1], wire_user(fields[2])
    if kind == EVAL and len(fields) == 7:
        _k, _t, _u, flag_key, var_id, value, expt = fields
        if not (isinstance(flag_key, str) and isinstance(var_id, str) and isinstance(value, str)):
            raise RecordError("evaluation record has the wrong types")
        return {
            "user": user,
            "variations": [
                {
                    "featureFlagKey": flag_key,
                    "variation": {"id": var_id, "value": value},
                    "timestamp": ts,
                    "sendToExperiment": bool(expt),
                }
            ],
        }
    if kind == METRIC and len(fields) == 4 and isinstance(fields[3], list):
        metrics = []
        for m in fields[3]:
            if not (isinstance(m, list) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], (int, float))):
                raise RecordError("metric entry has the wrong shape")
            metrics.append(
                {
                    "appType": APP_TYPE,
                    "route": "index/metric",
                    "type": "CustomEvent",
                    "eventName": m[0],
                    "numericValue": float(m[1]),
                    "timestamp": ts,
                }
            )
        return {"user": user, "metrics": metrics}
    if kind == IDENTIFY and len(fields) == 3:
        return {"user": user}
    raise RecordError(f"unknown record kind {kind!r}")


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
