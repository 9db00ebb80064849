"""Condition operators: R-40..R-44, with the G-7 and G-9 fixes pinned."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from featbit_shm._core.operators import MalformedFlag, compile_condition, compile_regex, parse_number
from featbit_shm._core.user import make_user
from featbit_shm._core.wire import normalize_condition
from featbit_shm.testing import builders as b


def matches(user_value: Any, op: str, value: Any, prop: str = "prop") -> bool:
    user = {"key": "u1", "name": "n1"}
    if user_value is not None:
        user[prop] = user_value
    test = compile_condition(normalize_condition(b.cond(prop, op, value), "c"))
    return test(make_user(user), lambda _id: None)


# the operator vectors from .NET ConditionMatcherTests.
R44 = [
    ("10", "BiggerThan", "9", True), ("10", "BiggerThan", "11", False),
    ("10", "BiggerEqualThan", "10", True), ("10", "BiggerEqualThan", "11", False),
    ("10", "LessThan", "11", True), ("10", "LessThan", "9", False),
    ("10", "LessEqualThan", "10", True), ("10", "LessEqualThan", "9", False),
    ("v1.0.0", "Equal", "v1.0.0", True), ("v1.1.0", "Equal", "v1.0.0", False),
    ("v1.1.0", "NotEqual", "v1.1.0", False), ("v1.1.0", "NotEqual", "v1.0.0", True),
    ("vvip", "Contains", "vip", True), ("vvip", "Contains", "sv", False),
    ("svip", "NotContain", "vv", True), ("svip", "NotContain", "vip", False),
    ("abc", "StartsWith", "ab", True), ("abc", "StartsWith", "b", False),
    ("abc", "EndsWith", "bc", True), ("abc", "EndsWith", "cd", False),
    ("color", "MatchRegex", "colou?r", True), ("colour", "MatchRegex", "colorr?", False),
    ("colouur", "NotMatchRegex", "colou?r", True), ("color", "NotMatchRegex", "colou?r", False),
    ("a", "IsOneOf", '["a", "b"]', True), ("c", "IsOneOf", '["a", "b"]', False),
    ("c", "NotOneOf", '["a", "b"]', True), ("a", "NotOneOf", '["a", "b"]', False),
    ("true", "IsTrue", "IsTrue", True), ("TRue", "IsTrue", "IsTrue", True),
    ("false", "IsFalse", "IsFalse", True), ("falSE", "IsFalse", "IsFalse", True),
    ("not-true-string", "IsTrue", "IsTrue", False), ("not-false-string", "IsFalse", "IsFalse", False),
]


@pytest.mark.parametrize(("user_value", "op", "value", "expected"), R44)
def test_r44_operator_vectors(user_value: str, op: str, value: str, expected: bool) -> None:
    assert matches(user_value, op, value) is expected


ALL_OPS = sorted({op for _, op, _, _ in R44})


@pytest.mark.parametrize("op", ALL_OPS)
def test_r40_missing_attribute_is_false_for_every_operator_including_negatives(op: str) -> None:
    # G-7: fbclient makes NotEqual/NotContain/NotOneOf/NotMatchRegex true here.
    value = '["a"]' if op.endswith("OneOf") else "a"
    assert matches(None, op, value) is False


@pytest.mark.parametrize("op", ALL_OPS)
def test_r40_null_operand_is_false(op: str) -> None:
    assert matches("a", op, None) is False


def test_r40_empty_string_attribute_is_compared_normally() -> None:
    assert matches("", "Equal", "") is True
    assert matches("", "NotEqual", "x") is True
    assert matches("", "NotOneOf", '["a"]') is True


def test_r35_blank_property_name_is_absent() -> None:
    assert matches("x", "NotEqual", "y", prop="   ") is False


def test_r41_equal_is_ordinal_not_numeric() -> None:
    assert matches("1.0", "Equal", "1") is False
    assert matches("ABC", "Equal", "abc") is False


def test_r41_unknown_operator_never_matches() -> None:
    assert matches("a", "NotStartsWith", "b") is False
    assert matches("a", "Whatever", "a") is False


def test_r41_is_one_of_empty_list() -> None:
    assert matches("a", "IsOneOf", "[]") is False
    assert matches("a", "NotOneOf", "[]") is True


def test_r42_invalid_list_json_is_malformed_not_a_negative_match() -> None:
    with pytest.raises(MalformedFlag):
        matches("a", "NotOneOf", "not json")
    with pytest.raises(MalformedFlag):
        matches("a", "IsOneOf", "[1, 2]")


def test_r42_invalid_regex_is_malformed() -> None:
    with pytest.raises(MalformedFlag):
        matches("a", "MatchRegex", "([a-")
    with pytest.raises(MalformedFlag):
        matches("a", "NotMatchRegex", "([a-")


def test_r41_regex_uses_search_semantics() -> None:
    assert matches("my colour is", "MatchRegex", "colou?r") is True
    assert matches("xabcx", "MatchRegex", "^abc$") is False


@pytest.mark.parametrize(
    "pattern",
    [r"(a+)+b", r"(a|aa)*b", r"(\w+\s?)+$", r"(x+x+)+y", r"((ab)*)+", r"(a*)*"],
)
def test_r42_regex_with_unbounded_backtracking_is_refused(pattern: str) -> None:
    with pytest.raises(MalformedFlag, match="cost"):
        compile_regex(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[a-zA-Z0-9_-]+@[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)+$",
        r"^(\+?0?86\-?)?1[345789]\d{9}$",
        r"(foo|bar)+",
        r"colou?r",
        r".*@gmail\.com$",
    ],
)
def test_r42_ordinary_regexes_are_accepted(pattern: str) -> None:
    compile_regex(pattern)


def test_r42_regex_subject_length_is_bounded() -> None:
    with pytest.raises(MalformedFlag, match="subject"):
        matches("a" * 5000, "MatchRegex", "b")


# R-43 and G-9: numbers.


@pytest.mark.parametrize("text", ["1", "-1.5", "+2", ".5", "5.", "1e3", "1E-3", " 7 ", "0"])
def test_r43_accepts_dotnet_numbers(text: str) -> None:
    assert parse_number(text) == float(text)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity", "1_000", "", " ", "1,5", "0x10", "1e999", "abc"])
def test_r43_rejects_non_numbers_and_non_finite(text: str) -> None:
    assert parse_number(text) is None


def test_g9_numbers_are_not_rounded() -> None:
    assert matches("1.000001", "BiggerThan", "1") is True
    assert matches("5", "BiggerEqualThan", "5.000001") is False


def test_numeric_operator_with_non_numeric_side_is_false() -> None:
    assert matches("abc", "LessThan", "5") is False
    assert matches("5", "LessThan", "abc") is False
    assert matches("nan", "BiggerEqualThan", "0") is False


def test_custom_values_of_other_types_are_compared_as_strings() -> None:
    assert matches(2500, "BiggerThan", "2000") is True
    assert matches(True, "Equal", "true") is True  # not "True" (G-8)
    assert matches(False, "IsFalse", "IsFalse") is True
    assert matches(1.5, "Equal", "1.5") is True


# Properties.

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(finite, finite)
def test_numeric_operators_agree_with_float_comparison(x: float, y: float) -> None:
    u, v = repr(x), repr(y)
    assert matches(u, "LessThan", v) is (x < y)
    assert matches(u, "LessEqualThan", v) is (x <= y)
    assert matches(u, "BiggerThan", v) is (x > y)
    assert matches(u, "BiggerEqualThan", v) is (x >= y)


texts = st.text(max_size=20)


@given(texts, texts)
def test_negative_operators_are_exact_complements_when_attribute_present(u: str, v: str) -> None:
    assert matches(u, "Equal", v) is not matches(u, "NotEqual", v)
    assert matches(u, "Contains", v) is not matches(u, "NotContain", v)


@given(texts, st.lists(texts, max_size=5))
def test_one_of_is_exact_membership(u: str, members: list[str]) -> None:
    import json

    raw = json.dumps(members)
    assert matches(u, "IsOneOf", raw) is (u in members)
    assert matches(u, "NotOneOf", raw) is (u not in members)


@given(st.text(max_size=30))
def test_parse_number_never_raises_and_is_finite(text: str) -> None:
    value = parse_number(text)
    assert value is None or math.isfinite(value)


@given(st.text(max_size=40))
def test_compile_regex_gives_pattern_or_malformed_never_other_errors(pattern: str) -> None:
    try:
        compile_regex(pattern)
    except MalformedFlag:
        pass


def test_numeric_user_values_of_every_python_type() -> None:
    assert matches(10**400, "BiggerThan", "1") is False  # beyond float range: not a number
    assert matches(float("nan"), "BiggerThan", "1") is False
    assert matches(float("inf"), "BiggerThan", "1") is False
    assert matches(True, "BiggerThan", "0") is False  # a bool is not a number
    assert matches(2.5, "LessThan", "3") is True
    assert matches("٣", "LessThan", "5") is False  # non-ASCII digits are refused


# compile_rule inlines simple operators into one generated matcher; it must
# agree with the per-condition tests everywhere.

OPS = [*ALL_OPS, "Unknown", "LessThan", "BiggerEqualThan"]
pool = st.sampled_from(["", "a", "A", "ab", "b", "true", "FALSE", "1", "1.5", "10", "-2", "x y", "é"])
user_values = st.one_of(st.none(), pool, st.integers(-20, 20), st.booleans(), st.floats(allow_nan=True, width=32))
props = st.sampled_from(["prop", "other", "keyId", "name", " ", "User is in segment"])


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    import json as _json

    op = draw(st.sampled_from(OPS))
    if op.endswith("OneOf") and draw(st.booleans()):
        value: Any = _json.dumps(draw(st.lists(pool, max_size=3)))
    elif op.endswith("Regex"):
        value = draw(st.sampled_from(["a", "^a", "b$", "[", "(a+)+"]))
    else:
        value = draw(st.one_of(st.none(), pool))
    return {"property": draw(props), "op": op, "value": value}


@given(st.lists(conditions(), max_size=4), st.dictionaries(st.sampled_from(["prop", "other"]), user_values), pool)
def test_compiled_rule_agrees_with_condition_tests(conds: list[dict[str, Any]], attrs: dict[str, Any], name: str) -> None:
    from featbit_shm._core.operators import compile_rule

    normalized = [normalize_condition(c, "c") for c in conds]
    user = make_user({"key": "k1", "name": name, **attrs})

    def expected() -> bool:
        for n in normalized:
            if not compile_condition(n)(user, lambda _id: None):
                return False
        return True

    try:
        want: Any = expected()
    except MalformedFlag:
        want = MalformedFlag
    try:
        got: Any = compile_rule(normalized)(user, lambda _id: None)
    except MalformedFlag:
        got = MalformedFlag
    assert got == want
