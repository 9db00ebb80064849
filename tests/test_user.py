"""The user check: the C fast path (``user_key``) against the reference (``check_user``).

``make_user`` runs on every evaluation that reads the user, and the
user-independent flags only check it, so the check is written in C
(``featbit_shm/_core/_fastuser.c``) for the common case and says "not
decided here" (None) for the rest. These tests hold it to the reference on
generated users: a key from the C check always means the reference accepts
the user with that key; a plain dict of exact scalar values is decided by
the C check exactly as the reference decides it; and ``make_user`` gives the
reference's user or the reference's error.
"""

from __future__ import annotations

import enum
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featbit_shm._core import user as user_module
from featbit_shm._core.user import InvalidUser, User, check_user, make_user

c_user_key = user_module._c_user_key
pytestmark = pytest.mark.skipif(c_user_key is None, reason="the C user check was not built (no compiler at install)")


class Text(str):
    pass


class Level(enum.IntEnum):
    LOW = 1


# Every whitespace sort str.isspace() knows, and characters it does not count.
SPACES = st.sampled_from(["", " ", "\t", "\n", "\x1c", "\x85", "\u00a0", "\u2028", "\u3000", "\u200b", "x", "é", "用"])
KEYS = st.lists(SPACES, max_size=3).map("".join) | st.text(max_size=4)
EXACT_SCALARS = st.none() | st.booleans() | st.integers() | st.integers(min_value=2**64) | st.floats() | st.text(max_size=3)
ODD_VALUES = (
    st.builds(Text, st.text(max_size=2))
    | st.just(Level.LOW)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=1), st.integers(), max_size=1)
    | st.binary(max_size=2)
    | st.just(object())
    | st.just(1j)
)
NAMES = st.sampled_from(["key", "keyId", "keyid", "name", "country", "age", "KEY", ""]) | st.text(max_size=3) | st.integers(0, 3)


def plain_users(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, Any]]:
    keyed = st.fixed_dictionaries({}, optional={"key": KEYS | st.none(), "keyId": KEYS | st.none(), "keyid": KEYS | st.none(), "name": KEYS | st.none()})
    return st.tuples(keyed, st.dictionaries(NAMES, values, max_size=5)).map(lambda t: {**t[1], **t[0]})


def reference(obj: Any) -> User | str:
    try:
        return check_user(obj)
    except InvalidUser as exc:
        return f"InvalidUser: {exc}"


@settings(max_examples=400, deadline=None)
@given(plain_users(EXACT_SCALARS))
def test_a_plain_dict_of_exact_scalars_is_decided_by_the_c_check_as_the_reference_decides_it(obj: dict[Any, Any]) -> None:
    expected = reference(obj)
    key = c_user_key(obj)
    if isinstance(expected, User):
        assert key == expected.key and type(key) is str
    else:
        assert key is None, f"C accepted {obj!r} with key {key!r}; the reference says {expected}"


@settings(max_examples=400, deadline=None)
@given(plain_users(EXACT_SCALARS | ODD_VALUES) | plain_users(EXACT_SCALARS).map(MappingProxyType) | st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)))
def test_a_key_from_the_c_check_always_means_the_reference_accepts_and_make_user_agrees(obj: Any) -> None:
    expected = reference(obj)
    key = c_user_key(obj)
    if key is not None:
        assert isinstance(expected, User) and expected.key == key
    try:
        made: User | str = make_user(obj)
    except InvalidUser as exc:
        made = f"InvalidUser: {exc}"
    if isinstance(expected, User):
        assert isinstance(made, User), made
        assert (made.key, made.name, made.attrs) == (expected.key, expected.name, expected.attrs)
        assert made.attrs is obj  # read lazily, never copied
    else:
        assert made == expected


def test_a_key_that_raises_in_a_lookup_leaves_the_answer_to_the_reference() -> None:
    class Angry:
        armed = False

        def __hash__(self) -> int:
            return hash("key")

        def __eq__(self, other: object) -> bool:
            if Angry.armed:
                raise RuntimeError("no comparing")
            return False

    obj = {Angry(): 1, "key": "u"}
    Angry.armed = True
    assert c_user_key(obj) is None  # the error is cleared, not raised
    with pytest.raises(RuntimeError):
        make_user(obj)  # the reference meets the same error (the client gives the default)
