"""compile_rules: one generated walk over all of a flag's rules must pick the
rule that running each condition's own test (compile_condition) in order
picks, raise where that raises, and read segments as that does -- for rules
that share attributes, mix string and numeric reads of one attribute, and
follow each other in any order."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from featbit_shm._core.model import Flag, Segment
from featbit_shm._core.operators import MalformedFlag, compile_condition, compile_rules
from featbit_shm._core.schema import Condition
from featbit_shm._core.user import make_user
from featbit_shm._core.wire import SEGMENT_IN, SEGMENT_NOT_IN, normalize_condition, normalize_flag, normalize_segment
from featbit_shm.testing import builders as b

OPS = [
    "Equal",
    "NotEqual",
    "Contains",
    "NotContain",
    "StartsWith",
    "EndsWith",
    "IsOneOf",
    "NotOneOf",
    "IsTrue",
    "IsFalse",
    "MatchRegex",
    "NotMatchRegex",
    "LessThan",
    "LessEqualThan",
    "BiggerThan",
    "BiggerEqualThan",
    "Other",
]
pool = st.sampled_from(["", "a", "A", "ab", "ba", "b", "true", "FALSE", "1", "1.5", "10", "-2", " 7 ", "1e400", "é"])
user_values = st.one_of(
    st.none(),
    pool,
    st.integers(-20, 20),
    st.sampled_from([2**53, 2**53 + 1, -(2**60), 10**400]),
    st.booleans(),
    st.floats(allow_nan=True, width=32),
)
props = st.sampled_from(["p", "q", "keyId", "name", " "])
SEGMENTS = ["seg-in", "seg-out", "seg-gone"]


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 9)) == 0:
        prop = draw(st.sampled_from([SEGMENT_IN, SEGMENT_NOT_IN]))
        ids = draw(st.lists(st.sampled_from(SEGMENTS), max_size=2))
        return {"property": prop, "op": None, "value": json.dumps(ids) if draw(st.booleans()) else "not json"}
    op = draw(st.sampled_from(OPS))
    if op.endswith("OneOf"):
        value: Any = json.dumps(draw(st.lists(pool, max_size=6)))
    elif op.endswith("Regex"):
        value = draw(st.sampled_from(["a", "^a", "b$", "[", "(a+)+", "a{2}"]))
    else:
        value = draw(st.one_of(st.none(), pool))
    return {"property": draw(props), "op": op, "value": value}


def segment_of(seg_id: str) -> Any:
    if seg_id == "seg-gone":
        return None
    included = ["k1"] if seg_id == "seg-in" else []
    return Segment(normalize_segment(b.segment(seg_id, included=included, rules=[[b.cond("p", "Equal", "a")]])))


def reference(rules: list[list[Condition]], user: Any) -> Any:
    """The index of the first rule all of whose conditions hold, each run by its own test."""
    try:
        for i, conds in enumerate(rules):
            if all(compile_condition(c)(user, segment_of) for c in conds):
                return i
        return -1
    except MalformedFlag:
        return MalformedFlag


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.lists(conditions(), max_size=4), max_size=5),
    st.dictionaries(st.sampled_from(["p", "q"]), user_values),
    st.sampled_from(["k1", "k2"]),
    pool,
)
def test_the_walk_picks_the_rule_the_condition_tests_pick(
    raw: list[list[dict[str, Any]]], attrs: dict[str, Any], key: str, name: str
) -> None:
    rules = [[normalize_condition(c, "c") for c in conds] for conds in raw]
    user = make_user({"key": key, "name": name, **attrs})
    want = reference(rules, user)
    for _ in range(2):  # a shape seen once walks its rules' matchers; the second time it is compiled whole
        try:
            got: Any = compile_rules(rules)(user, segment_of)
        except MalformedFlag:
            got = MalformedFlag
        assert got == want


def test_an_attribute_read_by_several_rules_as_text_and_as_a_number() -> None:
    rules = [
        [Condition("age", "Equal", "41", None), Condition("age", "LessThan", "40", None)],
        [Condition("plan", "StartsWith", "pro", None), Condition("age", "BiggerThan", "40.5", None)],
        [Condition("age", "EndsWith", "", None)],
    ]
    walk = compile_rules(rules)
    assert walk(make_user({"key": "k", "age": 41, "plan": "pro-plus"}), segment_of) == 1
    assert walk(make_user({"key": "k", "age": "41", "plan": "basic"}), segment_of) == 2  # text is a number too
    assert walk(make_user({"key": "k", "age": 39, "plan": "basic"}), segment_of) == 2
    assert walk(make_user({"key": "k", "plan": "pro"}), segment_of) == -1  # absent: no condition on it holds


def test_a_missing_segment_raises_only_when_its_condition_is_reached() -> None:
    gone = normalize_condition(b.in_segment("seg-gone"), "c")
    rules = [[Condition("p", "Equal", "a", None)], [gone]]
    walk = compile_rules(rules)
    assert walk(make_user({"key": "k", "p": "a"}), segment_of) == 0
    try:
        walk(make_user({"key": "k", "p": "b"}), segment_of)
    except MalformedFlag as exc:
        assert "seg-gone" in str(exc)
    else:
        raise AssertionError("a missing segment must not be a quiet negative (R-47)")


def test_flags_of_one_shape_share_the_walk_and_keep_their_operands() -> None:
    def flag(key: str, country: str, age: str) -> Flag:
        rule = b.rule([b.cond("country", "Equal", country), b.cond("age", "BiggerThan", age)], b.serve(0))
        return Flag(normalize_flag(b.flag(key, rules=[rule, rule])))

    one, two, three = flag("one", "us", "30"), flag("two", "fr", "60"), flag("three", "de", "10")
    assert two.walk.__func__ is three.walk.__func__  # type: ignore[attr-defined]
    ann = make_user({"key": "a", "country": "us", "age": 40})
    assert [f.walk(ann, segment_of) for f in (one, two, three)] == [0, -1, -1]


def test_a_flag_keeps_its_normalised_form_packed_and_gives_it_back() -> None:
    import msgpack

    norm = normalize_flag(b.flag("f", rules=[b.rule([b.cond("country", "IsOneOf", '["us", "fr"]')], b.serve(1))]))
    packed = Flag(norm, msgpack.packb(norm, use_bin_type=True))
    assert packed.norm == norm and packed.norm is not norm
    assert Flag(norm).norm is norm  # built from a data set's entity: kept as given


def test_past_the_compile_budget_a_new_flag_shape_walks_its_rule_matchers_until_seen_again() -> None:
    from featbit_shm._core import operators

    ops = ["Equal", "NotEqual", "Contains", "StartsWith", "EndsWith", "IsTrue", "IsFalse", "LessThan", "BiggerThan"]
    for a in ops:  # spend the budget on distinct shapes (what a varied flag set does)
        for b_ in ops:
            for c in ops[:4]:
                compile_rules(
                    [[Condition("p", a, "1", None)], [Condition("q", b_, "1", None)], [Condition("p", c, "1", None)]]
                )
    assert operators._flag_shapes_compiled[0] >= operators._FLAG_SHAPE_BUDGET
    rules = [
        [Condition("z1", "Equal", "a", None)],
        [Condition("z2", "LessThan", "5", None), Condition("z1", "EndsWith", "b", None)],
    ]
    first, second = compile_rules(rules), compile_rules(rules)
    assert first.__func__ is operators._walk_each and second.__func__ is not operators._walk_each  # type: ignore[attr-defined]
    for attrs in ({"z1": "a"}, {"z1": "ab", "z2": 4}, {"z1": "ab", "z2": "9"}, {}):
        user = make_user({"key": "k", **attrs})
        assert first(user, segment_of) == second(user, segment_of) == reference(rules, user)


def test_no_flag_data_becomes_source_of_the_generated_walk(tmp_path: Any) -> None:
    # The walk is generated Python; operators, property names and operands
    # come from FeatBit (or whoever can write its data). None of them may
    # reach the source: an unknown operator is a false condition, a property
    # name is only ever a dictionary key.
    marker = tmp_path / "ran"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"
    hostile_ops = [f"Equal): pass\n{payload} #", f"Equal u.__class__\n{payload}", "Equal key 0", "IsOneOf attr 0"]
    hostile_props = [f"a)\n{payload}\n#", "V[0]", "__class__", "u.attrs"]
    user = make_user({"key": "k", "country": "us", **{p: "us" for p in hostile_props}})
    for op in hostile_ops:
        flag = Flag(normalize_flag(b.flag("f", rules=[b.rule([b.cond("country", op, "us"), b.cond("keyId", op, "x")], b.serve(0))])))
        assert flag.walk(user, lambda _s: None) == -1  # an unknown operator never matches
    for prop in hostile_props:
        flag = Flag(normalize_flag(b.flag("g", rules=[b.rule([b.cond(prop, "Equal", "us")], b.serve(0))])))
        assert flag.walk(user, lambda _s: None) == 0  # read as an attribute name, nothing else
    assert not marker.exists()
