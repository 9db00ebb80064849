"""The evaluation user, built from an fbclient-style dict (R-34, R-35).

Accepted input, the same dict users already pass to ``fbclient``::

    {"key": "u-1", "name": "Ann", "country": "us", "age": 41, "beta": True}

* The key comes from ``key`` (or ``keyId`` / ``keyid``): a non-blank string.
* ``name`` is optional (default ``""``; fbclient requires it, G-8).
* Custom values may be ``str``, ``int``, ``float`` or ``bool``; ``None`` means
  the attribute is absent. Anything else (a dict, a list, a date...) makes the
  user invalid: evaluation returns the default with a reason instead of
  silently dropping the attribute (fbclient drops it, G-8).
* Lookup is exact and case-sensitive (R-35): ``keyId`` is the key, ``name`` is
  the name, anything else is a custom attribute. Non-string values are turned
  into strings when read: ``True`` -> ``"true"`` (fbclient gives ``"True"``,
  G-8), numbers with ``str()``.

The user is validated once per call and not copied: evaluation finishes inside
the call, and the event path serialises what it needs at once (R-34).

This module is the ONE reading of a user dict. Evaluation reads it with
:func:`make_user`; an analytics event carries the same dict (packed by
:func:`pack_user`) and the sync process reads it back with
:func:`make_user` again and renders FeatBit's user object with
:func:`wire_user` -- so an event always names the user evaluation saw.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Final

_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
RESERVED: Final = frozenset({"key", "keyId", "keyid", "name"})


class InvalidUser(ValueError):
    """The user dict cannot be evaluated; the message says why."""


class User:
    """A validated user. ``attrs`` is the caller's mapping, read lazily."""

    __slots__ = ("key", "name", "attrs")

    def __init__(self, key: str, name: str, attrs: Mapping[str, Any]) -> None:
        self.key = key
        self.name = name
        self.attrs = attrs

    def value_of(self, prop: str) -> str | None:
        """R-35 lookup: the attribute as a string, or None when absent."""
        if prop == "keyId":
            return self.key
        if prop == "name":
            return self.name
        return attr_string(self.attrs.get(prop))

    def __repr__(self) -> str:
        return f"User(key={self.key!r})"


def attr_string(value: object) -> str | None:
    """A custom attribute value as the string operators compare."""
    if value is None or type(value) is str:
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def check_user(obj: object) -> User:
    """Validate an fbclient-style user dict. Raises :class:`InvalidUser`.

    The reference reading of a user dict: :func:`user_key` (the C fast
    path) must agree with it. Exact type checks first, the ABC check only
    for mappings that are not dicts.
    """
    if type(obj) is not dict and not isinstance(obj, Mapping):
        raise InvalidUser(f"user must be a dict, not {type(obj).__name__}")
    get = obj.get
    key = get("key")
    if key is None:
        key = get("keyId")
        if key is None:
            key = get("keyid")
    if type(key) is not str or not key or key.isspace():
        raise InvalidUser("user key must be a non-blank string")
    name = get("name")
    if name is None:
        name = ""
    elif type(name) is not str:
        raise InvalidUser("user name must be a string")
    scalars = _SCALARS
    for v in obj.values():
        if type(v) not in scalars and not isinstance(v, (str, int, float)):
            bad = next(k for k, x in obj.items() if x is v)
            raise InvalidUser(f"user attribute {bad!r} holds a {type(v).__name__}, not str/int/float/bool")
    return User(key, name, obj)


def _checked_key(obj: object) -> str | None:
    """Pure-Python :func:`user_key`: the key of any valid user, else None."""
    try:
        return check_user(obj).key
    except InvalidUser:
        return None


def _fast_make_user(obj: object) -> User:
    key = user_key(obj)
    if key is not None:
        name = obj.get("name")  # type: ignore[attr-defined]  # user_key only says yes to a dict
        return User(key, "" if name is None else name, obj)  # type: ignore[arg-type]
    return check_user(obj)


try:
    # By name: the C module has no Python source, so import checkers
    # (grimp, import-linter) would resolve ``from ._fastuser`` to the root package.
    _c_user_key = importlib.import_module(f"{__package__}._fastuser").user_key
except ImportError:  # pragma: no cover - built without a C compiler: the reference path alone
    _c_user_key = None

#: ``user_key(obj)``: the key when ``obj`` is a valid user, else None. The C
#: fast path decides plain dicts with exact scalar values (a few ns per
#: attribute) and returns None for anything else, valid or not, so a caller
#: that gets None asks :func:`check_user`, which accepts or says why not.
user_key: Callable[[object], str | None]
#: ``make_user(obj)``: the validated user of ``obj``; raises :class:`InvalidUser`.
#: Runs on every evaluation that reads the user.
make_user: Callable[[object], User]
if _c_user_key is not None:
    user_key, make_user = _c_user_key, _fast_make_user
else:  # pragma: no cover
    user_key, make_user = _checked_key, check_user


def record_form(obj: Mapping[Any, Any]) -> dict[str, str]:
    """The user as a plain dict of strings that :func:`make_user` reads
    exactly as it reads ``obj`` (absent values and names that are not
    strings dropped, values as :func:`attr_string` gives them): what an
    event carries when ``obj`` itself does not pack (a non-dict mapping, an
    int beyond 64 bits)."""
    form: dict[str, str] = {}
    for name, value in obj.items():
        if isinstance(name, str):
            text = attr_string(value)
            if text is not None:
                form[str(name)] = text
    return form


def pack_user(pack: Callable[[Any], bytes], obj: Mapping[Any, Any]) -> bytes:
    """The user's bytes in an event record: the dict as it is (the cheap,
    common case), else its :func:`record_form`."""
    try:
        return pack(obj)
    except (TypeError, ValueError, OverflowError):
        return pack(record_form(obj))


def wire_user(user: User) -> dict[str, Any]:
    """R-64: FeatBit's user object for a user evaluation read -- ``keyId``,
    ``name`` (``""`` if unset), ``customizedProperties`` as name/value pairs
    in the dict's order (reserved names and absent values left out)."""
    customs = []
    for name, value in user.attrs.items():
        if isinstance(name, str) and name not in RESERVED:
            text = attr_string(value)
            if text is not None:
                customs.append({"name": name, "value": text})
    return {"keyId": user.key, "name": user.name, "customizedProperties": customs}
