"""A seeded generator of FeatBit wire flags, segments and users.

It feeds the differential test (``test_differential.py``), which evaluates
every generated flag for every generated user on both featbit_shm and the
official ``fbclient``. Everything is drawn from small, overlapping pools so
that conditions really match (operands are taken from the values users hold,
or from their prefixes and suffixes), and a few pools deliberately contain the
inputs on which the two SDKs are documented to differ (G-4, G-6..G-10, R-42),
so the test's classification of those differences is exercised too. Every
``PLANT_EVERY``-th flag also gets one planted rule (or a value that does not
convert) so that the rarest of those cases occur whatever the seed.

All randomness goes through one ``random.Random(seed)``: the same seed gives
the same world, byte for byte.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from featbit_shm.testing import builders as b

SEGMENT_IN = "User is in segment"
SEGMENT_NOT_IN = "User is not in segment"

NUMERIC_OPS = ("LessThan", "LessEqualThan", "BiggerThan", "BiggerEqualThan")
STRING_OPS = ("Equal", "NotEqual", "Contains", "NotContain", "StartsWith", "EndsWith")
LIST_OPS = ("IsOneOf", "NotOneOf")
BOOL_OPS = ("IsTrue", "IsFalse")
REGEX_OPS = ("MatchRegex", "NotMatchRegex")
OPERATORS = NUMERIC_OPS + STRING_OPS + LIST_OPS + BOOL_OPS + REGEX_OPS
NEGATIVE_OPS = {"NotEqual": "Equal", "NotContain": "Contains", "NotOneOf": "IsOneOf", "NotMatchRegex": "MatchRegex"}

# Regex operands. SAFE ones must evaluate identically on both SDKs. INVALID
# ones do not compile (G-6); RISKY ones can backtrack exponentially, and
# featbit_shm refuses them as malformed while fbclient runs them.
SAFE_REGEXES = (
    "^u-0",
    "gmail\\.com$",
    "^[a-z]+$",
    "colou?r",
    "\\d{2}",
    "^(pro|free)$",
    "US|us",
    "^$",
    "a.*n",
    "(\\.[a-z]+)+$",
    "[0-9]+",
    "^用户",
    "(?i)^pro",
    "e$",
)
INVALID_REGEXES = ("(unclosed", "*bad", "[z-a]")
RISKY_REGEXES = ("(a+)+$", "(a|aa)*b", "(\\w+\\s?)*$", "(.*)*x")

# Malformed IsOneOf/NotOneOf operands: not a JSON array of strings.
BAD_LIST_OPERANDS = ("[bad", '"us"', "{}", "[1, 2]")

# Custom attribute pools. Values are the Python objects users pass; the mix
# of str/int/float/bool, near-equal numbers, numbers as strings, blanks and
# case variants is deliberate.
ATTR_POOLS: dict[str, tuple[Any, ...]] = {
    "country": ("us", "US", "cn", "CHN", "fr", "", "u s", "usa"),
    "age": (17, 18, 21, 65, 0, -1, "18", "21.0", " 30 ", "1e1", "abc", 18.5),
    "score": (0.5, 1.0, 1.000001, 2.25, 99.999999, 1e-06, "1.000001", "nan", "inf", "1_000", "-inf", 1000),
    "beta": (True, False, "true", "TRUE", "False", "false", "yes", ""),
    "email": ("ann@gmail.com", "bob@GMAIL.com", "c@corp.io", "gmail", "", "x@gmail.com.cn"),
    "plan": ("free", "pro", "Pro", "pro-plus", "enterprise", "color", "colour"),
}
NAMES = (
    "Ann",
    "bob",
    "carol-admin",
    "group-admin-user",
    "test-user-3",
    "test-user-4",
    "Émile",
    "用户-1",
    "aaaa",
    "dan",
)

# Condition properties: mostly real attributes, a missing one, the two
# built-ins, and rarely the case variants fbclient resolves case-insensitively
# (G-8) and a blank name (always absent).
PROPERTIES = (*ATTR_POOLS, "keyId", "name", "missing")
RARE_PROPERTIES = ("Name", "KEYID", "keyid", "key", " ")

NUMERIC_OPERANDS = (
    "18",
    "21",
    "1",
    "1.0000001",
    "0",
    "-1",
    "99.999995",
    "100",
    "2.25",
    "abc",
    "1e1",
    "nan",
    "inf",
    " 18 ",
    "",
)

DISPATCH_KEYS = (
    None,
    None,
    None,
    None,
    None,
    "keyId",
    "keyId",
    "name",
    "name",
    "country",
    "missing",
    "",
    " ",
    "beta",
    "age",
)

VARIATION_POOLS: dict[str, tuple[str, ...]] = {
    "boolean": ("true", "false"),
    "string": ("a", "b", "c", "", "a b", "日本", "teamA", "teamB", "true", "42"),
    # Integral text ("1.0", "1e3") must come back as an int, as in fbclient.
    # Integers beyond 2**53 are left out: featbit_shm keeps them as floats.
    "number": ("0", "1", "-3", "2.5", "1000", "0.125", "-0.5", "12345678", "7", "99", "1.0", "1e3", "-2.000"),
    "json": ('{"code": 200}', "[1, 2]", '"str"', "3", '{"a": {"b": [true, null]}}', "true", '{"code": 404}', "[]"),
}
# Values that do not convert to their variationType (G-10).
BAD_VARIATIONS: dict[str, tuple[str, ...]] = {
    "boolean": ("True", "yes", "1"),
    "number": ("abc", "1,5", ""),
    "json": ("{bad", "undefined"),
}

# Every PLANT_EVERY-th flag (from the first) gets one planted rule, the kinds in turn.
PLANT_EVERY = 20

DEFAULTS: tuple[Any, ...] = ("__default__", -7, {"fallback": True}, None)


@dataclass(frozen=True)
class World:
    """Everything one differential run evaluates."""

    flags: list[dict[str, Any]]
    segments: list[dict[str, Any]]  # archived ones included
    users: list[dict[str, Any]]
    defaults: dict[str, Any]  # the default passed to variation(), per flag key

    def document(self) -> str:
        return json.dumps(b.data_sync(self.flags, self.segments))


def valid_for_type(vtype: str, value: str) -> bool:
    """Does ``value`` convert to ``vtype`` the same way on both SDKs?"""
    if vtype == "boolean":
        return value in ("true", "false")
    if vtype == "number":
        return value in VARIATION_POOLS["number"]
    if vtype == "json":
        try:
            json.loads(value)
        except ValueError:
            return False
        return True
    return True


def attr_text(value: Any) -> str:
    """A pool value as featbit_shm compares it (``True`` -> ``"true"``)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


class _Gen:
    def __init__(self, seed: int, n_users: int) -> None:
        self.rng = random.Random(seed)
        self.user_keys = [self._user_key(i) for i in range(n_users)]
        self.segment_ids: list[str] = []  # active segments
        self.dead_segment_ids: list[str] = []  # archived or never defined

    # ------------------------------------------------------------ users

    def _user_key(self, i: int) -> str:
        if i % 17 == 5:
            return f"用户-{i}"
        if i % 13 == 7:
            return f"test-user-{i}"
        return f"u-{i:03d}"

    def user(self, i: int) -> dict[str, Any]:
        rng = self.rng
        u: dict[str, Any] = {"key": self.user_keys[i]}
        r = rng.random()
        if r < 0.025:
            pass  # no name at all (fbclient rejects the user, G-8)
        elif r < 0.035:
            u["name"] = rng.choice(("", "  "))
        else:
            u["name"] = rng.choice(NAMES)
        for attr, pool in ATTR_POOLS.items():
            if rng.random() < 0.7:
                u[attr] = rng.choice(pool)
        if rng.random() < 0.05:
            u["country"] = None  # None means absent on both sides
        return u

    # ------------------------------------------------------------ conditions

    def _texts(self, prop: str) -> list[str]:
        """Strings users hold for ``prop``, to build matching operands from."""
        if prop in ATTR_POOLS:
            out = [attr_text(v) for v in ATTR_POOLS[prop]]
            if prop == "beta":
                out.append("True")  # fbclient's spelling of True (G-8)
            return out
        if prop in ("keyId", "key", "keyid", "KEYID"):
            return self.rng.sample(self.user_keys, 6)
        if prop in ("name", "Name"):
            return list(NAMES)
        return ["x", "", "us"]

    def _property(self, op: str) -> str:
        rng = self.rng
        if op in BOOL_OPS and rng.random() < 0.7:
            return "beta"
        if op in NUMERIC_OPS and rng.random() < 0.7:
            return rng.choice(("age", "score"))
        if op in REGEX_OPS and rng.random() < 0.7:
            return rng.choice(("email", "plan", "country", "keyId", "name"))  # what the patterns are about
        if rng.random() < 0.04:
            return rng.choice(RARE_PROPERTIES)
        return rng.choice(PROPERTIES)

    def condition(self) -> dict[str, Any]:
        rng = self.rng
        op = rng.choice(OPERATORS)
        prop = self._property(op)
        if op in NUMERIC_OPS:
            return b.cond(prop, op, rng.choice(NUMERIC_OPERANDS))
        if op in BOOL_OPS:
            return b.cond(prop, op, rng.choice((op, op, "")))
        if op in REGEX_OPS:
            r = rng.random()
            pool = INVALID_REGEXES if r < 0.02 else RISKY_REGEXES if r < 0.05 else SAFE_REGEXES
            return b.cond(prop, op, rng.choice(pool))
        texts = self._texts(prop)
        if op in LIST_OPS:
            r = rng.random()
            if r < 0.02:
                return b.cond(prop, op, rng.choice(BAD_LIST_OPERANDS))
            if r < 0.08:
                return b.cond(prop, op, [])
            return b.cond(prop, op, rng.sample(texts, min(len(texts), rng.randint(1, 3))))
        text = rng.choice(texts)
        if op in ("Contains", "NotContain"):
            i = rng.randint(0, len(text))
            text = text[i : rng.randint(i, len(text))]
        elif op == "StartsWith":
            text = text[: rng.randint(0, len(text))]
        elif op == "EndsWith":
            text = text[rng.randint(0, len(text)) :]
        if rng.random() < 0.2:
            text = rng.choice((str.upper, str.lower, str.swapcase))(text)  # case-only near misses
        return b.cond(prop, op, text)

    def segment_condition(self) -> dict[str, Any]:
        rng = self.rng
        r = rng.random()
        if r < 0.10:
            ids: list[str] = []
        elif r < 0.17:
            ids = [rng.choice(self.dead_segment_ids), *rng.sample(self.segment_ids, rng.randint(0, 1))]
            rng.shuffle(ids)
        else:
            ids = rng.sample(self.segment_ids, rng.choice((1, 1, 1, 2)))
        return (b.in_segment if rng.random() < 0.6 else b.not_in_segment)(*ids)

    N_PLANTS = 5

    def planted_condition(self, kind: int) -> dict[str, Any]:
        """One of the rarest cases, planted so that every seed has it."""
        rng = self.rng
        if kind == 0:  # G-6 (only differs when the attribute is missing)
            return b.cond(rng.choice(("missing", "country")), "MatchRegex", rng.choice(INVALID_REGEXES))
        if kind == 1:
            return b.cond(rng.choice(("plan", "email")), rng.choice(REGEX_OPS), rng.choice(RISKY_REGEXES))
        if kind == 2:  # G-6 / G-7
            return b.cond(rng.choice(("plan", "country")), rng.choice(LIST_OPS), rng.choice(BAD_LIST_OPERANDS))
        if kind == 3:  # "not in" an empty list: true
            return b.not_in_segment()
        return b.in_segment(rng.choice(self.dead_segment_ids))  # G-7

    # ------------------------------------------------------------ segments

    def segments(self, n: int) -> list[dict[str, Any]]:
        rng = self.rng
        out = []
        for i in range(n + 1):
            seg_id = f"{i:08x}-5e6d-4c7b-9a1f-{rng.getrandbits(48):012x}"
            keys = self.user_keys
            included = rng.sample(keys, min(len(keys), rng.randint(3, 25)))
            excluded = rng.sample(keys, min(len(keys), rng.randint(0, 8))) + rng.sample(included, min(len(included), 2))
            n_rules = 0 if i % 3 == 0 else rng.choice((1, 1, 2))  # a third have included/excluded only
            rules = [[self.condition() for _ in range(rng.randint(1, 2))] for _ in range(n_rules)]
            archived = i == n  # the last one is archived: as good as missing
            out.append(b.segment(seg_id, included=included, excluded=excluded, rules=rules, archived=archived))
            (self.dead_segment_ids if archived else self.segment_ids).append(seg_id)
        self.dead_segment_ids.append("deadbeef-0000-4000-8000-000000000000")  # never defined
        return out

    # ------------------------------------------------------------ flags

    def rollout(self, n_vars: int) -> list[b.Part]:
        rng = self.rng

        def v() -> int:
            return rng.randrange(n_vars)

        r = rng.random()
        if r < 0.50:
            return b.serve(v())
        if r < 0.70:
            x = rng.choice((0.5, 0.25, 0.75, 0.333, 0.1))
            return b.split((v(), 0.0, x, 1.0), (v(), x, 1.0, 0.5))
        if r < 0.82:
            return b.split((v(), 0.0, 0.3, 1.0), (v(), 0.3, 0.7, 0.2), (v(), 0.7, 1.0, 0.0))
        if r < 0.86:
            return b.split((v(), 0.0, 0.0, 1.0), (v(), 0.0, 1.0, 1.0))  # an empty part first
        if r < 0.90:
            return b.split((v(), 0.0, rng.choice((0.999995, 0.9999999)), 1.0))  # near-whole (G-4)
        if r < 0.94:
            return b.split((v(), 0.0, 0.6, 1.0), (v(), 0.4, 1.0, 1.0))  # overlapping
        return b.split((v(), 0.0, 0.4, 1.0), (v(), 0.6, 1.0, 1.0))  # a gap (G-4)

    def flag(self, i: int) -> dict[str, Any]:
        rng = self.rng
        vtype = rng.choice(("boolean", "string", "number", "json"))
        pool = VARIATION_POOLS[vtype]
        values = list(pool) if vtype == "boolean" else rng.sample(pool, rng.randint(2, 4))
        if vtype in BAD_VARIATIONS and (rng.random() < 0.03 or i % PLANT_EVERY == PLANT_EVERY // 2):
            values[rng.randrange(len(values))] = rng.choice(BAD_VARIATIONS[vtype])
        if vtype == "boolean":
            rng.shuffle(values)
        n = len(values)
        targets: dict[int, list[str]] = {}
        if rng.random() < 0.2:
            for _ in range(rng.randint(1, 2)):
                targets.setdefault(rng.randrange(n), []).extend(
                    rng.sample(self.user_keys, min(len(self.user_keys), rng.randint(1, 6)))
                )
        rules = []
        for r in range(rng.choices((0, 1, 2, 3, 4), (20, 30, 25, 15, 10))[0]):
            n_conds = rng.choices((0, 1, 2, 3), (3, 50, 35, 12))[0]
            conds = [self.segment_condition() if rng.random() < 0.2 else self.condition() for _ in range(n_conds)]
            rules.append(
                b.rule(
                    conds,
                    self.rollout(n),
                    name=f"r{r}",
                    dispatch_key=rng.choice(DISPATCH_KEYS),
                    included_in_expt=rng.random() < 0.5,
                )
            )
        if i % PLANT_EVERY == 0:
            # A planted rule makes the rarest cases certain whatever the seed.
            conds = [self.planted_condition((i // PLANT_EVERY) % self.N_PLANTS)]
            rules.insert(rng.randint(0, len(rules)), b.rule(conds, self.rollout(n), name=f"r{len(rules)}"))
        return b.flag(
            f"ff-{i:03d}-{vtype}",
            variations=values,
            variation_type=vtype,
            enabled=rng.random() >= 0.08,
            off=rng.randrange(n),
            targets=targets,
            rules=rules,
            fallthrough=self.rollout(n),
            fallthrough_dispatch_key=rng.choice(DISPATCH_KEYS),
            fallthrough_in_expt=rng.random() < 0.5,
            expt_include_all_targets=rng.random() < 0.2,
        )


def generate(seed: int, n_flags: int = 200, n_users: int = 200, n_segments: int = 8) -> World:
    """A reproducible world of flags, segments (one archived) and users."""
    gen = _Gen(seed, n_users)
    segments = gen.segments(n_segments)
    flags = [gen.flag(i) for i in range(n_flags)]
    users = [gen.user(i) for i in range(n_users)]
    defaults = {f["key"]: DEFAULTS[i % len(DEFAULTS)] for i, f in enumerate(flags)}
    return World(flags, segments, users, defaults)
