"""Reason kinds, reason texts and value conversion (R-57, R-58, R-87).

A variation value is always a string on the wire. The typed APIs convert it
strictly; a failed conversion is reason kind ``WrongType`` with the caller's
default and no event (R-58). ``variation()`` (the fbclient drop-in) converts
by the flag's ``variationType`` like fbclient does (R-83), but a value that
does not convert gives ``WrongType`` and the default instead of the raw
string (G-10).

Ranges: ``int`` results are limited to signed 64-bit ([-2**63, 2**63 - 1]),
``float`` results must be finite.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Final

from .operators import parse_number


class ReasonKind(str, Enum):
    """The stable reason kinds of the FeatBit contract (R-57)."""

    CLIENT_NOT_READY = "ClientNotReady"
    OFF = "Off"
    TARGET_MATCH = "TargetMatch"
    RULE_MATCH = "RuleMatch"
    FALLTHROUGH = "Fallthrough"
    WRONG_TYPE = "WrongType"
    ERROR = "Error"

    def __str__(self) -> str:
        return self.value


# Why an evaluation ended in kind Error: ``EvalDetail.error``, stable for
# code to branch on (the reason text carries the details and may change).
ERROR_FLAG_NOT_FOUND = "FlagNotFound"  # unknown or archived key
ERROR_MALFORMED_FLAG = "MalformedFlag"  # data that cannot be evaluated
ERROR_INVALID_USER = "InvalidUser"  # a user dict FeatBit cannot take
ERROR_EXCEPTION = "Exception"  # a bug: logged with its traceback
ERROR_STORE_REFUSED = "StoreRefused"  # the host's store is another account's (issue 16): never read


# Reason texts: fbclient's where fbclient has one, so code that compares
# them keeps working after a migration; the kind is the stable contract.
REASON_CLIENT_NOT_READY: Final = "client not ready"
REASON_FLAG_NOT_FOUND: Final = "flag not found"
REASON_OFF: Final = "flag off"
REASON_TARGET: Final = "target match"
REASON_RULE: Final = "rule match"
REASON_FALLTHROUGH: Final = "fall through all rules"
REASON_WRONG_TYPE: Final = "wrong type"
REASON_ERROR: Final = "error in evaluation"


class _WrongType:
    """Sentinel: the value does not convert to the requested type."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WRONG_TYPE"


WRONG_TYPE: Final = _WrongType()

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def to_bool(raw: str) -> bool | _WrongType:
    """Only a case-insensitive ``true`` or ``false`` (no truthiness)."""
    low = raw.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    return WRONG_TYPE


def to_int(raw: str) -> int | _WrongType:
    """A decimal integer within int64; fractions and overflow are refused."""
    text = raw.strip()
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body.isdigit() or not body.isascii():
        return WRONG_TYPE
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else WRONG_TYPE


def to_float(raw: str) -> float | _WrongType:
    """A finite float, locale-free, .NET ``double.TryParse`` syntax."""
    value = parse_number(raw)
    return WRONG_TYPE if value is None else value


_EXACT_FLOAT_INT: Final = 2**53


def to_number(raw: str) -> int | float | _WrongType:
    """fbclient's number rule (R-83): an int when the value is integral
    (``"33"``, ``"1.0"``, ``"1e3"``), else a float. Integral floats become
    ints only while a float holds them exactly (|v| <= 2**53)."""
    as_int = to_int(raw)
    if as_int is not WRONG_TYPE:
        return as_int
    value = to_float(raw)
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_INT:
        return int(value)
    return value


def to_json(raw: str) -> Any:
    """Parsed JSON (a fresh object on every call), or WRONG_TYPE."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return WRONG_TYPE


def to_json_object(raw: str) -> Any:
    """A JSON object or array (a fresh one per call), or WRONG_TYPE -- what
    structured values (OpenFeature's object flags) accept."""
    value = to_json(raw)
    return value if isinstance(value, (dict, list)) else WRONG_TYPE


def to_str(raw: str) -> str:
    return raw


# What ``variation()`` converts to, by the flag's variationType.
# json is re-parsed per call so callers never share a mutable object.
CONVERTERS: Final = {
    "boolean": to_bool,
    "number": to_number,
    "json": to_json,
    "string": to_str,
}
