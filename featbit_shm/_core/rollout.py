"""Deterministic percentage rollout: the cross-SDK contract (R-48..R-55).

``bucket(flag_key + attribute)`` maps a user into [0, 1] with MD5; a rollout
variation ``[lo, hi]`` takes the user when the bucket lies in it, with both
bounds inclusive and two shortcuts (R-52). Every FeatBit SDK and the server
compute the same buckets, so a user lands on the same variation everywhere.
"""

from __future__ import annotations

import struct

try:  # CPython's built-in MD5 costs half of OpenSSL's for inputs this small
    from _md5 import md5
except ImportError:  # pragma: no cover - builds without it
    from hashlib import md5
from typing import Final

_INT32_LE: Final = struct.Struct("<i")
WHOLE_RANGE_TOLERANCE: Final = 0.00001


def bucket(dispatch_input: str) -> float:
    """R-50: first 4 bytes of MD5(UTF-8) as signed little-endian int32, scaled."""
    n = _INT32_LE.unpack_from(md5(dispatch_input.encode("utf-8")).digest())[0]
    return abs(float(n) / -2147483648.0)


def whole_range(lo: float, hi: float) -> bool:
    """R-52 step 1: ``[0, ~1]`` takes everyone without hashing."""
    return lo == 0 and 1 - hi < WHOLE_RANGE_TOLERANCE


def empty_range(lo: float, hi: float) -> bool:
    """R-52 step 2: ``[0, 0]`` takes nobody."""
    return lo == 0 and hi == 0


def in_rollout(dispatch_input: str, lo: float, hi: float) -> bool:
    """R-52: is the input's bucket inside ``[lo, hi]`` (both inclusive)?"""
    if whole_range(lo, hi):
        return True
    if empty_range(lo, hi):
        return False
    return lo <= bucket(dispatch_input) <= hi


def experiment_upper(lo: float, hi: float, expt_rollout: float) -> float | None:
    """R-55: the upper bound of the experiment range, or None for "never"."""
    width = hi - lo
    if width <= 0 or expt_rollout <= 0:
        return None
    return min(expt_rollout / width, 1.0)
