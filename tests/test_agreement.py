"""Every evaluation entry point agrees with every other one.

``variation`` is the hot path, written out by hand; ``variation_detail`` and
the typed helpers go through ``_detail``. Whatever the flag, key, user or
default, the two paths must give the same value (same Python type), and a
detail's kind must say whether that value is the caller's default. The flags,
segments and users are drawn from the pools of ``tests/flaggen.py`` (the
differential test's generator), rebuilt here as hypothesis strategies so that
a failure shrinks to a small example.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from featbit_shm import EvalDetail, FBClient, ReasonKind
from featbit_shm._core.results import to_bool, to_float, to_int, to_json, to_json_object, to_number, to_str
from featbit_shm.testing import builders as b

from .conftest import offline_client
from .flaggen import (
    ATTR_POOLS,
    BAD_LIST_OPERANDS,
    BAD_VARIATIONS,
    BOOL_OPS,
    DEFAULTS,
    DISPATCH_KEYS,
    INVALID_REGEXES,
    LIST_OPS,
    NAMES,
    NUMERIC_OPERANDS,
    NUMERIC_OPS,
    OPERATORS,
    PROPERTIES,
    RARE_PROPERTIES,
    REGEX_OPS,
    RISKY_REGEXES,
    SAFE_REGEXES,
    VARIATION_POOLS,
    World,
    attr_text,
)

SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

USER_KEYS = ("u-000", "u-001", "u-002", "test-user-7", "用户-5")
SEGMENT_IDS = ("seg-a", "seg-b")
ARCHIVED_SEGMENT = "seg-archived"
DEAD_SEGMENTS = (ARCHIVED_SEGMENT, "deadbeef-0000-4000-8000-000000000000")  # archived, never defined
VTYPES = ("boolean", "number", "string", "json")

SUCCESS_KINDS = frozenset({ReasonKind.OFF, ReasonKind.TARGET_MATCH, ReasonKind.RULE_MATCH, ReasonKind.FALLTHROUGH})
FALLBACK_KINDS = frozenset({ReasonKind.ERROR, ReasonKind.WRONG_TYPE, ReasonKind.CLIENT_NOT_READY})

HELPERS = ("bool", "int", "float", "number", "string", "json", "object")
# The typed helper whose conversion is the flag type's own: it must give what variation() gives.
HELPER_OF_TYPE = {"boolean": "bool", "number": "number", "string": "string", "json": "json"}


class K(str):
    """A str subclass, as frameworks hand out (e.g. markupsafe, enum values)."""

    def __repr__(self) -> str:
        return f"K({str.__repr__(self)})"


# ---------------------------------------------------------------- strategies

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)
VARIATION_DEFAULTS = st.sampled_from(DEFAULTS) | JSON_VALUES
HELPER_DEFAULTS = st.fixed_dictionaries(
    {
        "bool": st.booleans(),
        "int": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(allow_nan=False),
        "number": st.integers() | st.floats(allow_nan=False),
        "string": st.text(max_size=5),
        "json": JSON_VALUES,
        "object": st.none()
        | st.lists(JSON_VALUES, max_size=2)
        | st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=2),
    }
)


def _texts(prop: str) -> list[str]:
    """Strings users hold for ``prop`` (flaggen's operand pools)."""
    if prop in ATTR_POOLS:
        return [attr_text(v) for v in ATTR_POOLS[prop]]
    if prop in ("keyId", "key", "keyid", "KEYID"):
        return list(USER_KEYS)
    if prop in ("name", "Name"):
        return list(NAMES)
    return ["x", "", "us"]


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(st.sampled_from(OPERATORS))
    prop = draw(st.sampled_from(PROPERTIES + RARE_PROPERTIES))
    value: Any
    if op in NUMERIC_OPS:
        value = draw(st.sampled_from(NUMERIC_OPERANDS))
    elif op in BOOL_OPS:
        value = draw(st.sampled_from((op, "")))
    elif op in REGEX_OPS:
        value = draw(st.sampled_from(SAFE_REGEXES + INVALID_REGEXES + RISKY_REGEXES))
    elif op in LIST_OPS:
        value = draw(st.lists(st.sampled_from(_texts(prop)), max_size=3) | st.sampled_from(BAD_LIST_OPERANDS))
    else:
        text = draw(st.sampled_from(_texts(prop)) | st.text(max_size=3))
        i = draw(st.integers(0, len(text)))
        value = draw(st.sampled_from((text, text[:i], text[i:], text.upper())))
    return b.cond(prop, op, value)


def segment_conditions() -> st.SearchStrategy[dict[str, Any]]:
    ids = st.lists(st.sampled_from(SEGMENT_IDS + DEAD_SEGMENTS), max_size=2, unique=True)
    return st.builds(lambda ins, xs: (b.in_segment if ins else b.not_in_segment)(*xs), st.booleans(), ids)


def rollouts(n: int) -> st.SearchStrategy[list[b.Part]]:
    """flaggen's rollout shapes; index ``n`` (one past the end) is a dangling variation id."""
    v = st.integers(0, n - 1) | st.just(n)
    return st.one_of(
        v.map(b.serve),
        st.tuples(v, v, st.sampled_from((0.5, 0.25, 0.75, 0.333, 0.1))).map(
            lambda t: b.split((t[0], 0.0, t[2], 1.0), (t[1], t[2], 1.0, 0.5))
        ),
        st.tuples(v, v, v).map(lambda t: b.split((t[0], 0.0, 0.3, 1.0), (t[1], 0.3, 0.7, 0.2), (t[2], 0.7, 1.0, 0.0))),
        st.tuples(v, v).map(lambda t: b.split((t[0], 0.0, 0.0, 1.0), (t[1], 0.0, 1.0, 1.0))),
        st.tuples(v, st.sampled_from((0.999995, 0.9999999))).map(lambda t: b.split((t[0], 0.0, t[1], 1.0))),
        st.tuples(v, v).map(lambda t: b.split((t[0], 0.0, 0.6, 1.0), (t[1], 0.4, 1.0, 1.0))),
        st.tuples(v, v).map(lambda t: b.split((t[0], 0.0, 0.4, 1.0), (t[1], 0.6, 1.0, 1.0))),
    )


@st.composite
def flags(draw: st.DrawFn, index: int) -> dict[str, Any]:
    vtype = draw(st.sampled_from(VTYPES))
    pool = VARIATION_POOLS[vtype]
    if vtype == "boolean":
        values = draw(st.permutations(list(pool)))
    else:
        values = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=4, unique=True))
    bad = draw(st.sampled_from((None, None, *BAD_VARIATIONS.get(vtype, ()))))
    if bad is not None:
        values[draw(st.integers(0, len(values) - 1))] = bad
    n = len(values)
    targets = draw(
        st.dictionaries(st.integers(0, n - 1), st.lists(st.sampled_from(USER_KEYS), min_size=1, max_size=3), max_size=2)
    )
    rules = []
    for r in range(draw(st.integers(0, 2))):
        conds = draw(st.lists(conditions() | segment_conditions(), max_size=2))
        rules.append(
            b.rule(
                conds,
                draw(rollouts(n)),
                name=f"r{r}",
                dispatch_key=draw(st.sampled_from(DISPATCH_KEYS)),
                included_in_expt=draw(st.booleans()),
            )
        )
    return b.flag(
        f"ff-{index}-{vtype}",
        variations=values,
        variation_type=vtype,
        enabled=draw(st.booleans()),
        off=draw(st.integers(0, n - 1)),
        targets=targets,
        rules=rules,
        fallthrough=draw(rollouts(n)),
        fallthrough_dispatch_key=draw(st.sampled_from(DISPATCH_KEYS)),
        fallthrough_in_expt=draw(st.booleans()),
        expt_include_all_targets=draw(st.booleans()),
    )


@st.composite
def segments(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for seg_id in (*SEGMENT_IDS, ARCHIVED_SEGMENT):
        rules = draw(st.lists(st.lists(conditions(), min_size=1, max_size=2), max_size=1))
        out.append(
            b.segment(
                seg_id,
                included=draw(st.lists(st.sampled_from(USER_KEYS), max_size=2, unique=True)),
                excluded=draw(st.lists(st.sampled_from(USER_KEYS), max_size=2, unique=True)),
                rules=rules,
                archived=seg_id == ARCHIVED_SEGMENT,
            )
        )
    return out


def users() -> st.SearchStrategy[dict[str, Any]]:
    """Valid users: a key from a small pool, flaggen's names and attribute pools."""
    optional: dict[str, st.SearchStrategy[Any]] = {"name": st.sampled_from(NAMES)}
    optional.update({attr: st.sampled_from(pool) for attr, pool in ATTR_POOLS.items()})
    return st.fixed_dictionaries({"key": st.sampled_from(USER_KEYS)}, optional=optional)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n_flags = draw(st.integers(1, 2))
    fs = [draw(flags(i)) for i in range(n_flags)]
    return World(
        flags=fs,
        segments=draw(segments()),
        users=draw(st.lists(users(), min_size=1, max_size=2)),
        defaults={f["key"]: draw(VARIATION_DEFAULTS) for f in fs},
    )


BLANKS = st.sampled_from(("", " ", "\t", " \n "))
SCALAR_ATTRS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4)


def bad_users() -> st.SearchStrategy[Any]:
    """Users FeatBit cannot take: every entry point must give the default with kind Error."""
    valid = users()
    return st.one_of(
        # not a dict
        st.none(),
        st.integers(),
        st.text(max_size=5),
        st.sampled_from(USER_KEYS),
        st.binary(max_size=4),
        st.lists(st.tuples(st.just("key"), st.sampled_from(USER_KEYS)), max_size=2),
        st.sampled_from(USER_KEYS).map(lambda k: [("key", k)]),
        st.sampled_from(USER_KEYS).map(lambda k: {k}),
        # no key, key None, blank key, key not a str
        st.fixed_dictionaries(
            {}, optional={"name": st.sampled_from(NAMES), "country": st.sampled_from(ATTR_POOLS["country"])}
        ),
        st.fixed_dictionaries({"key": st.none()}, optional={"name": st.sampled_from(NAMES)}),
        st.fixed_dictionaries({"key": BLANKS}, optional={"name": st.sampled_from(NAMES)}),
        st.fixed_dictionaries({"keyId": BLANKS}),
        st.fixed_dictionaries(
            {"key": st.integers() | st.booleans() | st.binary(max_size=3) | st.sampled_from(USER_KEYS).map(K)}
        ),
        # an attribute that is not a scalar
        st.tuples(
            valid,
            st.sampled_from(("country", "extra", "name")),
            st.dictionaries(st.text(max_size=2), SCALAR_ATTRS, max_size=2),
        ).map(lambda t: {**t[0], t[1]: t[2]}),
        st.tuples(valid, st.sampled_from(("country", "extra", "name")), st.lists(SCALAR_ATTRS, max_size=2)).map(
            lambda t: {**t[0], t[1]: t[2]}
        ),
        # a name that is not a string
        st.tuples(valid, st.integers() | st.booleans()).map(lambda t: {**t[0], "name": t[1]}),
    )


KEY_ALIAS_VALUES = st.sampled_from((None, "", " ", "u-001", "x", 1, K("u-001")))


def key_alias_users() -> st.SearchStrategy[dict[str, Any]]:
    """``{"keyId": None, "keyid": "x"}`` and friends: any mix of the three key spellings."""
    return st.fixed_dictionaries(
        {},
        optional={
            "key": KEY_ALIAS_VALUES,
            "keyId": KEY_ALIAS_VALUES,
            "keyid": KEY_ALIAS_VALUES,
            "name": st.sampled_from(NAMES),
        },
    )


def arbitrary_users() -> st.SearchStrategy[Any]:
    """Anything a caller might pass as a user, valid or not."""
    attr = (
        SCALAR_ATTRS
        | st.lists(SCALAR_ATTRS, max_size=2)
        | st.dictionaries(st.text(max_size=2), SCALAR_ATTRS, max_size=2)
    )
    names = st.sampled_from(("key", "keyId", "keyid", "name", "country", "age", "beta")) | st.text(max_size=3)
    dicts = st.dictionaries(names, attr, max_size=4)
    return dicts | dicts.map(MappingProxyType) | bad_users() | key_alias_users() | users()


def key_specs() -> st.SearchStrategy[Any]:
    """Flag keys of every sort, as specs resolved against a world by :func:`resolve_key`:
    real ones, str subclasses, None, ints, bytes, blanks, unknown, unhashable."""
    index = st.integers(0, 1)
    return st.one_of(
        st.tuples(st.just("real"), index),
        st.tuples(st.just("K"), index),
        st.tuples(st.just("bytes"), index),
        st.tuples(st.just("tuple"), index),
        st.tuples(st.just("list"), index),
        st.tuples(
            st.just("as is"),
            st.none()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.binary(max_size=4)
            | st.sampled_from(("", " ", "unknown", "ff-9-boolean", K(""), K("unknown")))
            | st.text(max_size=6)
            | st.just({}),
        ),
    )


def resolve_key(world: World, spec: tuple[str, Any]) -> Any:
    how, arg = spec
    if how == "as is":
        return arg
    real = world.flags[arg % len(world.flags)]["key"]
    return {"real": real, "K": K(real), "bytes": real.encode(), "tuple": (real,), "list": [real]}[how]


# ---------------------------------------------------------------- helpers


@contextmanager
def client_for(world: World, **config: Any) -> Iterator[FBClient]:
    client = offline_client(*world.flags, segments=tuple(world.segments), **config)
    try:
        yield client
    finally:
        client.stop()


def same(a: Any, b: Any) -> bool:
    """Equal value of the same type, nested types included (1 vs 1.0 vs True)."""
    return type(a) is type(b) and a == b and repr(a) == repr(b)


def call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # turned into a readable failure
        raise AssertionError(f"{fn.__name__}{args!r} raised {exc!r}") from exc


def check_detail(detail: Any, default: Any, what: str) -> None:
    """A detail's kind says whether its value is the caller's default."""
    assert isinstance(detail, EvalDetail), what
    assert isinstance(detail.kind, ReasonKind), what
    if detail.kind in FALLBACK_KINDS:
        assert detail.variation is default, f"{what}: kind {detail.kind} but not the default: {detail!r}"
        assert detail.variation_id == "", f"{what}: kind {detail.kind} with a variation id: {detail!r}"
    else:
        assert detail.kind in SUCCESS_KINDS, f"{what}: {detail!r}"
        assert detail.variation_id, f"{what}: kind {detail.kind} without a variation id: {detail!r}"


def check_value_type(detail: EvalDetail, vtype: str) -> None:
    """variation() converts by the flag's variationType."""
    if detail.kind not in SUCCESS_KINDS:
        return
    value = detail.variation
    if vtype == "boolean":
        assert type(value) is bool, detail
    elif vtype == "number":
        assert type(value) in (int, float), detail
    elif vtype == "string":
        assert type(value) is str, detail


def all_entry_points(
    client: FBClient, key: Any, user: Any, default: Any, typed_defaults: dict[str, Any]
) -> dict[str, tuple[Any, EvalDetail, Any]]:
    """name -> (plain result, detail twin's result, default passed) for every entry point."""
    out = {
        "variation": (
            call(client.variation, key, user, default),
            call(client.variation_detail, key, user, default),
            default,
        )
    }
    for name in HELPERS:
        d = typed_defaults[name]
        plain = call(getattr(client, f"{name}_variation"), key, user, d)
        detail = call(getattr(client, f"{name}_variation_detail"), key, user, d)
        out[name] = (plain, detail, d)
    return out


def check_agreement(results: dict[str, tuple[Any, EvalDetail, Any]], what: str) -> None:
    for name, (plain, detail, default) in results.items():
        label = f"{what} {name}"
        check_detail(detail, default, label)
        assert same(plain, detail.variation), f"{label}: plain {plain!r} != detail {detail!r}"


# The smallest worlds showing each known disagreement, checked first on every run
# (so a failure is reported at once, without a long shrink).
PLAIN_USER = {"key": "u-000"}
SIMPLE_DEFAULTS = {"bool": False, "int": 0, "float": 0.0, "number": 0, "string": "", "json": None, "object": None}
BOOLEAN_WORLD = World([b.flag("ff-0-boolean")], [], [PLAIN_USER], {"ff-0-boolean": "__default__"})
BAD_NUMBER_WORLD = World(
    [b.flag("ff-0-number", variations=["abc", "1"], variation_type="number")],
    [],
    [PLAIN_USER],
    {"ff-0-number": "__default__"},
)


# ---------------------------------------------------------------- 1. variation vs variation_detail


@SETTINGS
@given(worlds(), st.data())
def test_variation_and_variation_detail_agree_on_value_and_type_for_generated_flags_and_users(
    world: World, data: st.DataObject
) -> None:
    with client_for(world) as client:
        for f in world.flags:
            key, vtype = f["key"], f["variationType"]
            ids = {v["id"] for v in f["variations"]}
            for user in world.users:
                for default in (world.defaults[key], data.draw(VARIATION_DEFAULTS, label="default")):
                    value = call(client.variation, key, user, default)
                    detail = call(client.variation_detail, key, user, default)
                    check_detail(detail, default, f"variation_detail({key!r})")
                    assert same(value, detail.variation), f"variation {value!r} != variation_detail {detail!r}"
                    if detail.kind in SUCCESS_KINDS:
                        assert detail.variation_id in ids, detail
                    check_value_type(detail, vtype)


# ---------------------------------------------------------------- 2. typed helpers


@SETTINGS
@given(worlds(), HELPER_DEFAULTS)
def test_typed_helpers_agree_with_their_detail_twins_on_value_type_and_kind(
    world: World, typed_defaults: dict[str, Any]
) -> None:
    with client_for(world) as client:
        for f in world.flags:
            key, vtype = f["key"], f["variationType"]
            for user in world.users:
                results = all_entry_points(client, key, user, world.defaults[key], typed_defaults)
                check_agreement(results, f"{key!r} {user!r}")
                vd = results["variation"][1]
                for name in HELPERS:
                    typed = results[name][1]
                    if typed.kind is not ReasonKind.WRONG_TYPE and vd.kind is not ReasonKind.WRONG_TYPE:
                        assert typed.kind == vd.kind, f"{name}: {typed!r} vs variation_detail {vd!r}"
                # The helper whose conversion is the flag type's own gives what variation() gives.
                own = results[HELPER_OF_TYPE[vtype]]
                if vd.kind in SUCCESS_KINDS:
                    assert same(own[0], results["variation"][0]), f"{HELPER_OF_TYPE[vtype]}: {own[1]!r} vs {vd!r}"
                    assert own[1].kind == vd.kind and own[1].variation_id == vd.variation_id


@SETTINGS
@given(worlds(), HELPER_DEFAULTS)
@example(BAD_NUMBER_WORLD, SIMPLE_DEFAULTS)
def test_typed_helpers_agree_with_variation_detail_on_variation_id_whenever_both_conversions_succeed(
    world: World, typed_defaults: dict[str, Any]
) -> None:
    # A WrongType result is a fallback, and a fallback has no variation id
    # (R-57, R-58): variation_detail converts by the flag's variationType, so
    # "abc" in a number flag is WrongType there and a fine string for
    # string_variation_detail. Ids are compared where both converted.
    with client_for(world) as client:
        for f in world.flags:
            key = f["key"]
            for user in world.users:
                vd = call(client.variation_detail, key, user, world.defaults[key])
                for name in HELPERS:
                    typed = call(getattr(client, f"{name}_variation_detail"), key, user, typed_defaults[name])
                    if ReasonKind.WRONG_TYPE not in (typed.kind, vd.kind):
                        assert typed.variation_id == vd.variation_id, (
                            f"{name}_variation_detail {typed!r} vs variation_detail {vd!r}"
                        )


# ---------------------------------------------------------------- 3. keys


@SETTINGS
@given(worlds(), HELPER_DEFAULTS, st.lists(key_specs(), min_size=1, max_size=4), VARIATION_DEFAULTS)
@example(BOOLEAN_WORLD, SIMPLE_DEFAULTS, [("K", 0)], "__default__")
def test_every_entry_point_agrees_and_none_raises_for_keys_of_any_type(
    world: World, typed_defaults: dict[str, Any], specs: list[tuple[str, Any]], default: Any
) -> None:
    with client_for(world) as client:
        for spec in specs:
            key = resolve_key(world, spec)
            for user in world.users:
                results = all_entry_points(client, key, user, default, typed_defaults)
                check_agreement(results, f"key {key!r}")
                if not isinstance(key, str):
                    for name, (_plain, detail, d) in results.items():
                        assert detail.kind is ReasonKind.ERROR and detail.variation is d, f"{name} {detail!r}"


@SETTINGS
@given(worlds(), HELPER_DEFAULTS)
@example(BOOLEAN_WORLD, SIMPLE_DEFAULTS)
def test_a_str_subclass_key_evaluates_like_the_plain_str_key(world: World, typed_defaults: dict[str, Any]) -> None:
    with client_for(world) as client:
        for f in world.flags:
            key = f["key"]
            default = world.defaults[key]
            for user in world.users:
                plain = all_entry_points(client, key, user, default, typed_defaults)
                sub = all_entry_points(client, K(key), user, default, typed_defaults)
                for name in plain:
                    p_value, p_detail, _ = plain[name]
                    s_value, s_detail, _ = sub[name]
                    assert same(s_value, p_value), f"{name}: K key gives {s_value!r}, str key gives {p_value!r}"
                    assert (s_detail.kind, s_detail.variation_id) == (p_detail.kind, p_detail.variation_id), (
                        f"{name}: {s_detail!r} vs {p_detail!r}"
                    )
                    assert same(s_detail.variation, p_detail.variation), f"{name}: {s_detail!r} vs {p_detail!r}"


# ---------------------------------------------------------------- 4. users


@SETTINGS
@given(worlds(), HELPER_DEFAULTS, st.lists(bad_users(), min_size=1, max_size=4))
def test_every_entry_point_returns_the_default_with_kind_error_for_a_bad_user(
    world: World, typed_defaults: dict[str, Any], bad: list[Any]
) -> None:
    with client_for(world) as client:
        for user in bad:
            for key in [*(f["key"] for f in world.flags), "unknown"]:
                results = all_entry_points(client, key, user, world.defaults.get(key, "d"), typed_defaults)
                check_agreement(results, f"user {user!r}")
                for name, (plain, detail, d) in results.items():
                    assert plain is d, f"{name}: {plain!r} is not the default {d!r} for user {user!r}"
                    assert detail.kind is ReasonKind.ERROR, f"{name}: {detail!r} for user {user!r}"


@SETTINGS
@given(worlds(), HELPER_DEFAULTS, st.lists(key_alias_users(), min_size=1, max_size=4))
def test_every_entry_point_agrees_for_users_spelling_the_key_as_key_keyid_or_keyid_lowercase(
    world: World, typed_defaults: dict[str, Any], alias_users: list[dict[str, Any]]
) -> None:
    with client_for(world) as client:
        for user in [{"keyId": None, "keyid": "x"}, {"key": None, "keyId": "u-001"}, *alias_users]:
            for f in world.flags:
                key = f["key"]
                check_agreement(
                    all_entry_points(client, key, user, world.defaults[key], typed_defaults), f"user {user!r}"
                )


@SETTINGS
@given(worlds(), HELPER_DEFAULTS, st.lists(arbitrary_users(), min_size=1, max_size=4))
def test_every_entry_point_agrees_and_none_raises_for_arbitrary_users(
    world: World, typed_defaults: dict[str, Any], any_users: list[Any]
) -> None:
    with client_for(world) as client:
        for user in any_users:
            for f in world.flags:
                key = f["key"]
                check_agreement(
                    all_entry_points(client, key, user, world.defaults[key], typed_defaults), f"user {user!r}"
                )


# ---------------------------------------------------------------- 5. events


@SETTINGS
@given(worlds(), HELPER_DEFAULTS)
def test_results_do_not_depend_on_disable_events_or_on_call_order(world: World, typed_defaults: dict[str, Any]) -> None:
    with client_for(world) as quiet, client_for(world, disable_events=True) as no_events:
        for f in world.flags:
            key = f["key"]
            for user in world.users:
                first = all_entry_points(quiet, key, user, world.defaults[key], typed_defaults)
                # Details first this time, then the plain calls.
                again = {
                    name: (
                        None,
                        call(
                            getattr(no_events, f"{name}_detail" if name == "variation" else f"{name}_variation_detail"),
                            key,
                            user,
                            d,
                        ),
                        d,
                    )
                    for name, (_p, _d, d) in first.items()
                }
                other = all_entry_points(no_events, key, user, world.defaults[key], typed_defaults)
                for name in first:
                    a, b_, c = first[name][1], again[name][1], other[name][1]
                    assert same(first[name][0], other[name][0]), name
                    for x in (b_, c):
                        assert (x.kind, x.variation_id, x.reason) == (a.kind, a.variation_id, a.reason), (
                            f"{name}: {x!r} vs {a!r}"
                        )
                        assert same(x.variation, a.variation), f"{name}: {x!r} vs {a!r}"


# ---------------------------------------------------------------- 4. fast paths vs the full path

CONVERTERS_OF = {"bool": to_bool, "int": to_int, "float": to_float, "number": to_number, "string": to_str, "json": to_json, "object": to_json_object}


def same_detail(a: EvalDetail, b_: EvalDetail) -> bool:
    fields = ("reason", "key_name", "name", "variation_id", "kind", "error", "split")
    return all(getattr(a, f) == getattr(b_, f) for f in fields) and same(a.variation, b_.variation)


@SETTINGS
@given(worlds(), HELPER_DEFAULTS, st.lists(arbitrary_users(), max_size=3), st.lists(key_specs(), max_size=2))
def test_the_fast_paths_give_exactly_what_the_full_path_gives(
    world: World, typed_defaults: dict[str, Any], odd_users: list[Any], odd_keys: list[Any]
) -> None:
    # variation_detail, the typed helpers and get_all take a fast path (a
    # prebuilt, shared detail; no EvalDetail built) when the key is a str and
    # the C check accepts the user; the full path (_typed -> _detail) is the
    # reference for every field, whatever the flag, key or user.
    with client_for(world) as client:
        keys = [f["key"] for f in world.flags] + [resolve_key(world, spec) for spec in odd_keys]
        for user in [*world.users, *odd_users]:
            for key in keys:
                default = world.defaults.get(key) if isinstance(key, str) else None
                full = client._typed(key, user, default, None)
                fast = call(client.variation_detail, key, user, default)
                assert same_detail(fast, full), f"variation_detail({key!r}, {user!r}): {fast!r} vs full {full!r}"
                for name, convert in CONVERTERS_OF.items():
                    d = typed_defaults[name]
                    reference = client._typed(key, user, d, convert)
                    value = call(getattr(client, f"{name}_variation"), key, user, d)
                    assert same(value, reference.variation), f"{name}_variation({key!r}, {user!r}): {value!r} vs {reference!r}"
            states = client.get_all_latest_flag_variations(user)
            if states.success:
                # Every active flag, in the snapshot's key order (static ones
                # come from a per-view template, the rest are evaluated into place).
                view = client._source.current()
                assert list(states.keys()) == [k for k in view.flag_keys() if view.flag(k) is not None]
                for key in states.keys():
                    reference = client._typed(key, user, None, None)
                    if reference.kind is ReasonKind.WRONG_TYPE or reference.error == "MalformedFlag":
                        reference = EvalDetail(reference.reason, None, key, reference.name, "", reference.kind, reference.error)
                    assert same_detail(states.get(key), reference), f"get_all {key!r} {user!r}: {states.get(key)!r} vs {reference!r}"


def test_a_shared_detail_is_read_only_and_a_copy_or_pickle_of_it_is_a_plain_one() -> None:
    import copy
    import pickle

    client = offline_client(b.flag("f"), b.flag("j", variations=['{"a": [1]}', "[]"], variation_type="json"))
    first = client.variation_detail("f", PLAIN_USER, False)
    assert client.variation_detail("f", {"key": "other"}, False) is first  # one detail per decision
    with pytest.raises(AttributeError, match="read-only"):
        first.variation = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del first.reason
    for twin in (copy.copy(first), pickle.loads(pickle.dumps(first))):
        assert twin == first and type(twin) is EvalDetail
        twin.variation = "changed"
    assert first.variation is True
    # A JSON value is parsed afresh for every caller: changing one changes no other.
    j = client.variation_detail("j", PLAIN_USER)
    j.variation["a"].append(2)
    assert client.variation_detail("j", PLAIN_USER).variation == {"a": [1]}
    assert client.get_all_latest_flag_variations(PLAIN_USER).get("j").variation == {"a": [1]}
