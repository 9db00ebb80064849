"""The official fbclient as a differential oracle for ``variation()``.

``flaggen`` builds a seeded world of flags, segments and users. Every flag is
evaluated for every user on featbit_shm and on fbclient (offline, loaded
from the same data-sync document), and the two values must be identical
(same type, equal value).

Where they differ, the difference must be explained by one of fbclient's
documented bugs (``docs/PROTOCOL.md`` section 10, G-n) or by featbit_shm's
documented regex cost bound (R-42). The explanation is computed from the
data, independently of either SDK's evaluator: for this user, is there a
condition whose outcome differs between the contract's semantics and
fbclient's (a negative operator on a missing attribute, numbers rounded to 5
decimals, ``True`` spelled ``"True"``...), a rollout whose part selection
differs (exclusive upper bound, a gap, a whitespace dispatch key), a missing
segment, an invalid or unbounded regex, a variation value that does not
convert, or a user fbclient refuses? A deviation only counts when the
observed results carry its evidence (a missing segment, for instance, must
have made featbit_shm return the default with reason kind Error). The first
such deviation, in evaluation order, names the exclusion. A difference with
none of them fails the test.

Exclusions are counted per G number and must stay a small fraction, and
coverage counters make sure every operator, segment path, rollout kind and
decision kind was really exercised, so the test cannot go vacuous.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import md5
from typing import Any

import pytest

from featbit_shm import Config, FBClient, ReasonKind
from featbit_shm._core.evaluator import evaluate
from featbit_shm._core.model import Flag, Segment
from featbit_shm._core.operators import MalformedFlag, compile_regex
from featbit_shm._core.user import make_user
from featbit_shm._core.wire import normalize_flag, normalize_segment
from featbit_shm.testing import builders as b

from .flaggen import (
    BAD_LIST_OPERANDS,
    INVALID_REGEXES,
    LIST_OPS,
    NEGATIVE_OPS,
    NUMERIC_OPS,
    OPERATORS,
    REGEX_OPS,
    RISKY_REGEXES,
    SAFE_REGEXES,
    SEGMENT_IN,
    SEGMENT_NOT_IN,
    World,
    generate,
    valid_for_type,
)

pytest.importorskip("fbclient")
from fbclient.client import FBClient as OfficialClient
from fbclient.common_types import FBUser
from fbclient.config import Config as OfficialConfig

SEED = 20240611
N_FLAGS = 400
N_USERS = 250
MAX_EXCLUDED_FRACTION = 0.25


# --------------------------------------------------------------------------- clients


@pytest.fixture(scope="module")
def world() -> World:
    return generate(SEED, N_FLAGS, N_USERS)


@contextmanager
def _official(document: str) -> Iterator[Any]:
    """An offline fbclient loaded with ``document``, quiet, stopped afterwards."""
    logger = logging.getLogger("fbclient")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    client = OfficialClient(
        OfficialConfig("offline-secret", "http://localhost", "ws://localhost", offline=True), start_wait=0
    )
    try:
        assert client.initialize_from_external_json(document)
        yield client
    finally:
        client.stop()
        logger.setLevel(level)


@pytest.fixture(scope="module")
def official(world: World) -> Iterator[Any]:
    with _official(world.document()) as client:
        yield client


@pytest.fixture(scope="module")
def ours(world: World) -> FBClient:
    client = FBClient(Config(offline=True))
    assert client.initialize_from_external_json(world.document())
    return client


class Raised:
    """fbclient's ``variation`` raised instead of returning (G-4)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        return f"<raised {type(self.exc).__name__}: {self.exc}>"


def same(a: Any, b: Any) -> bool:
    """Identical results: equal and of the same type (``1`` is not ``1.0`` or ``True``)."""
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------- independent semantics

_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*", re.ASCII)


def spec_value(user: dict[str, Any], prop: str) -> str | None:
    """R-35 attribute lookup: exact-case, ``True`` -> ``"true"``, blank name -> absent."""
    if not prop.strip():
        return None
    if prop == "keyId":
        return str(user["key"])
    if prop == "name":
        return str(user.get("name") or "")
    v = user.get(prop)
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def spec_number(text: str | None) -> float | None:
    """R-43: .NET-style finite double, no rounding."""
    if text is None or not _NUMBER.fullmatch(text):
        return None
    f = float(text)
    return f if math.isfinite(f) else None


def fb_number(text: str | None) -> float | None:
    """fbclient: anything ``float()`` accepts, rounded to 5 decimals (G-9)."""
    try:
        return round(float(str(text)), 5)
    except ValueError:
        return None


def _compare(op: str, a: float, v: float) -> bool:
    return {"LessThan": a < v, "LessEqualThan": a <= v, "BiggerThan": a > v, "BiggerEqualThan": a >= v}[op]


def op_outcome(op: str, u: str | None, v: str, *, official: bool) -> bool:
    """One ordinary condition, by the contract (R-40..R-43) or as fbclient does it.

    Only called for well-formed operands (list operands that are JSON arrays
    of strings, regexes that compile and are bounded).
    """
    if op in NUMERIC_OPS:
        if u is None:
            return False
        a, w = (fb_number(u), fb_number(v)) if official else (spec_number(u), spec_number(v))
        return a is not None and w is not None and _compare(op, a, w)
    if op in NEGATIVE_OPS:
        if u is None and not official:
            return False  # R-40; fbclient builds negatives as `not positive` (G-7)
        return not op_outcome(NEGATIVE_OPS[op], u, v, official=official)
    if u is None:
        return False
    if op == "Equal":
        return u == v
    if op == "Contains":
        return v in u
    if op == "StartsWith":
        return u.startswith(v)
    if op == "EndsWith":
        return u.endswith(v)
    if op == "IsOneOf":
        return u in json.loads(v)
    if op == "IsTrue":
        return u.lower() == "true"
    if op == "IsFalse":
        return u.lower() == "false"
    if op == "MatchRegex":
        return re.search(v, u) is not None
    return False


def string_list(text: str | None) -> list[str] | None:
    try:
        value = json.loads(text or "")
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(x, str) for x in value) else None


def bucket(text: str) -> float:
    """R-50, written out again so the oracle's classification does not trust either SDK."""
    return abs(struct.unpack("<i", md5(text.encode("utf-8")).digest()[:4])[0] / -2147483648.0)


# Each deviation names the evidence it needs in the observed results, so a
# deviation that is merely present in the flag cannot excuse a difference it
# did not cause. Evidence: SHM_ERROR, featbit_shm returned the default with
# reason kind Error (the contract's "malformed flag"); SHM_WRONG_TYPE, kind
# WrongType; FB_RAW, fbclient returned a variation's raw string (its cast
# failed); FB_DEFAULT, fbclient returned the default; ANY, none needed.
ANY, SHM_ERROR, SHM_WRONG_TYPE, FB_RAW, FB_DEFAULT = "any", "shm error", "shm wrong type", "fb raw", "fb default"

NAMELESS = ("G-8 user without a non-blank name (fbclient rejects it)", {FB_DEFAULT})
BAD_VALUE = ("G-10 variation value does not convert to its variationType", {SHM_WRONG_TYPE, FB_RAW})
MISSING_SEGMENT = ("G-7 missing or archived segment (fbclient: not a member)", {SHM_ERROR})
BAD_NOT_ONE_OF = ("G-7 NotOneOf with an operand that is not a JSON array of strings", {SHM_ERROR})
BAD_IS_ONE_OF = ("G-6 IsOneOf with an operand that is not a JSON array of strings", {SHM_ERROR})
BAD_REGEX = ("G-6 invalid regex", {SHM_ERROR})
RISKY_REGEX = ("R-42 regex cost bound (featbit_shm refuses the pattern)", {SHM_ERROR})
LOOKUP = ("G-8 attribute lookup (case-insensitive built-ins, bool spelled True/False)", {ANY})
NUMERIC = ("G-9 numeric compare (5-decimal rounding, nan/inf/1_000)", {ANY})
NEGATIVE_MISSING = ("G-7 negative operator on a missing attribute", {ANY})
BLANK_DISPATCH = ("G-4 whitespace dispatchKey", {ANY})
DISPATCH_LOOKUP = ("G-8 dispatch attribute spelled differently", {ANY})
NO_PART = ("G-4 no rollout part takes the user (fbclient falls through or raises)", {SHM_ERROR})
BOUNDS = ("G-4 rollout bounds (exclusive upper bound, whole range only for exactly [0,1])", {ANY})

Deviation = tuple[str, set[str]]


class Explainer:
    """Finds the documented deviations that can make the SDKs differ for one flag and user."""

    def __init__(self, world: World) -> None:
        self.segments = {s["id"]: s for s in world.segments if not s["isArchived"]}

    def condition(self, cond: dict[str, Any], user: dict[str, Any], fbu: FBUser) -> Iterator[Deviation]:
        prop, op, v = cond["property"], cond["op"], cond["value"]
        if prop in (SEGMENT_IN, SEGMENT_NOT_IN):
            for seg_id in json.loads(v):
                seg = self.segments.get(seg_id)
                if seg is None:
                    yield MISSING_SEGMENT
                    continue
                if user["key"] in seg["excluded"] or user["key"] in seg["included"]:
                    continue
                for rule in seg["rules"]:
                    for c in rule["conditions"]:
                        yield from self.condition(c, user, fbu)
            return
        if op in LIST_OPS and string_list(v) is None:
            yield BAD_NOT_ONE_OF if op == "NotOneOf" else BAD_IS_ONE_OF
            return
        if op in REGEX_OPS and v in INVALID_REGEXES:
            yield BAD_REGEX
            return
        if op in REGEX_OPS and v in RISKY_REGEXES:
            yield RISKY_REGEX
            return
        sv, fv = spec_value(user, prop), fbu.get(prop)
        if op_outcome(op, sv, v, official=False) == op_outcome(op, fv, v, official=True):
            return
        if sv != fv:
            yield LOOKUP
        elif op in NUMERIC_OPS:
            yield NUMERIC
        elif sv is None and op in NEGATIVE_OPS:
            yield NEGATIVE_MISSING

    def rollout(self, flag_key: str, ro: dict[str, Any], user: dict[str, Any], fbu: FBUser) -> Iterator[Deviation]:
        dk = ro.get("dispatchKey")
        if dk and not dk.strip():
            yield BLANK_DISPATCH
        spec_attr = user["key"] if not dk or not dk.strip() else (spec_value(user, dk) or "")
        fb_attr = fbu.get(dk or "keyid", "")
        if spec_attr != fb_attr and dk and dk.strip():
            yield DISPATCH_LOOKUP
        parts = [p["rollout"] for p in ro["variations"]]
        x = bucket(flag_key + spec_attr)
        spec = next(
            (
                i
                for i, (lo, hi) in enumerate(parts)
                if (lo == 0 and 1 - hi < 1e-5) or (not lo == hi == 0 and lo <= x <= hi)
            ),
            None,
        )
        y = bucket(flag_key + fb_attr)
        off = next((i for i, (lo, hi) in enumerate(parts) if (lo == 0 and hi == 1) or lo <= y < hi), None)
        if spec is None:
            yield NO_PART
        elif spec != off and spec_attr == fb_attr:
            yield BOUNDS

    def deviations(self, flag: dict[str, Any], user: dict[str, Any]) -> Iterator[Deviation]:
        """Every documented deviation for this flag and user, in evaluation order."""
        name = user.get("name")
        if not isinstance(name, str) or not name.strip():
            yield NAMELESS
            return
        fbu = FBUser.from_dict(user)
        if any(not valid_for_type(flag["variationType"], var["value"]) for var in flag["variations"]):
            yield BAD_VALUE
        if not flag["isEnabled"] or any(user["key"] in t["keyIds"] for t in flag["targetUsers"]):
            return
        for rule in flag["rules"]:
            for cond in rule["conditions"]:
                yield from self.condition(cond, user, fbu)
            yield from self.rollout(flag["key"], rule, user, fbu)
        yield from self.rollout(flag["key"], flag["fallthrough"], user, fbu)

    def explain(
        self, flag: dict[str, Any], user: dict[str, Any], shm_kind: ReasonKind, theirs: Any, default: Any
    ) -> str:
        """The first deviation consistent with the observed results, or "" when none explains them."""
        seen = {ANY}
        if shm_kind is ReasonKind.ERROR:
            seen.add(SHM_ERROR)
        if shm_kind is ReasonKind.WRONG_TYPE:
            seen.add(SHM_WRONG_TYPE)
        if isinstance(theirs, str) and any(theirs == v["value"] for v in flag["variations"]):
            seen.add(FB_RAW)
        if theirs == default:
            seen.add(FB_DEFAULT)
        for why, needs in self.deviations(flag, user):
            if needs & seen:
                return why
        return ""


# --------------------------------------------------------------------------- coverage


class Coverage:
    """What the agreeing comparisons exercised, from featbit_shm's decision."""

    def __init__(self, world: World) -> None:
        self.flags = {f["key"]: (f, Flag(normalize_flag(f))) for f in world.flags}
        self.segments = {s["id"]: s for s in world.segments if not s["isArchived"]}
        compiled = {s["id"]: Segment(normalize_segment(s)) for s in self.segments.values()}
        self.segment_of = compiled.get
        self.kinds: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()  # operators inside rules that matched
        self.segment_paths: Counter[str] = Counter()
        self.rollouts: Counter[str] = Counter()
        self.values: dict[str, set[str]] = {}

    def _segment_path(self, seg_id: str, key: str) -> str:
        seg = self.segments[seg_id]
        if key in seg["excluded"]:
            return "excluded"
        if key in seg["included"]:
            return "included"
        return "rule" if seg["rules"] else "none"

    def record(self, key: str, user: dict[str, Any], value: Any) -> None:
        raw, flag = self.flags[key]
        kind, var, _reason, rule_name, _expt = evaluate(flag, make_user(user), self.segment_of)
        self.kinds[kind.value] += 1
        self.values.setdefault(key, set()).add(repr(value))
        if kind is ReasonKind.RULE_MATCH:
            rule = next(r for r in raw["rules"] if r["name"] == rule_name)
            for cond in rule["conditions"]:
                prop = cond["property"]
                if prop in (SEGMENT_IN, SEGMENT_NOT_IN):
                    ids = json.loads(cond["value"])
                    paths = {self._segment_path(i, user["key"]) for i in ids if i in self.segments}
                    for path in paths or {"empty list"}:
                        self.segment_paths[f"{'in' if prop == SEGMENT_IN else 'not in'}: {path}"] += 1
                else:
                    self.ops[cond["op"]] += 1
            if not rule["conditions"]:
                self.ops["(no conditions)"] += 1
            self._rollout("rule", rule, var)
        elif kind is ReasonKind.FALLTHROUGH:
            self._rollout("fallthrough", raw["fallthrough"], var)

    def _rollout(self, where: str, ro: dict[str, Any], var: Any) -> None:
        parts = [p for p in ro["variations"] if p["rollout"] != [0.0, 0.0]]
        if len(parts) < 2:
            return
        dk = ro["dispatchKey"]
        kind = "user key" if not dk else dk if dk in ("keyId", "name") else "custom"
        self.rollouts[f"{where} split"] += 1
        self.rollouts[f"dispatch by {kind}"] += 1
        if var is not None and var.id != parts[0]["id"]:
            self.rollouts["a later part chosen"] += 1


# --------------------------------------------------------------------------- the test


def _failure(flag: dict[str, Any], user: dict[str, Any], default: Any, ours_v: Any, theirs: Any, detail: Any) -> str:
    return (
        "featbit_shm and fbclient differ with no documented deviation to explain it\n"
        f"  user:        {user!r}\n"
        f"  default:     {default!r}\n"
        f"  featbit_shm: {ours_v!r} ({detail.kind}: {detail.reason}, variation id {detail.variation_id!r})\n"
        f"  fbclient:    {theirs!r}\n"
        f"  flag:        {json.dumps(flag, ensure_ascii=False)}"
    )


@pytest.mark.slow
def test_variation_matches_fbclient_except_documented_deviations(world: World, official: Any, ours: FBClient) -> None:
    explainer = Explainer(world)
    coverage = Coverage(world)
    excluded: Counter[str] = Counter()
    examples: dict[str, tuple[str, str]] = {}
    unexplained: list[str] = []  # the first few, in full
    n_unexplained = 0
    compared = 0
    started = time.perf_counter()
    for flag in world.flags:
        key = flag["key"]
        default = world.defaults[key]
        for user in world.users:
            compared += 1
            mine = ours.variation(key, user, default)
            try:
                theirs = official.variation(key, user, default)
            except Exception as exc:  # noqa: BLE001 - G-4: fbclient raises when no rollout part matches
                theirs = Raised(exc)
            if same(mine, theirs):
                coverage.record(key, user, mine)
                continue
            detail = ours.variation_detail(key, user, default)
            why = explainer.explain(flag, user, detail.kind, theirs, default)
            if not why:
                n_unexplained += 1
                if len(unexplained) < 5:
                    unexplained.append(_failure(flag, user, default, mine, theirs, detail))
                continue
            label = why.split(" ", 1)[0]
            excluded[why] += 1
            examples.setdefault(label, (key, user["key"]))
    elapsed = time.perf_counter() - started

    per_g: Counter[str] = Counter()
    for why, n in excluded.items():
        per_g[why.split(" ", 1)[0]] += n
    total_excluded = sum(excluded.values())
    summary = [
        f"differential: {compared} comparisons ({len(world.flags)} flags x {len(world.users)} users) in {elapsed:.1f}s",
        f"  agreed: {compared - total_excluded - n_unexplained}, excluded: {total_excluded} "
        f"({total_excluded / compared:.1%}), unexplained: {n_unexplained}",
        *(f"  {g}: {n} (e.g. flag {examples[g][0]}, user {examples[g][1]})" for g, n in sorted(per_g.items())),
        *(f"    {n:6d}  {why}" for why, n in excluded.most_common()),
        f"  kinds (agreed): {dict(coverage.kinds)}",
        f"  operators in matched rules: {dict(sorted(coverage.ops.items()))}",
        f"  segment paths in matched rules: {dict(sorted(coverage.segment_paths.items()))}",
        f"  rollouts: {dict(sorted(coverage.rollouts.items()))}",
    ]
    print("\n".join(summary))

    assert not unexplained, f"{n_unexplained} unexplained differences; the first ones:\n\n" + "\n\n".join(unexplained)
    assert compared >= 40_000
    assert total_excluded / compared < MAX_EXCLUDED_FRACTION, "\n".join(summary)
    # Each planted deviation was seen (so the classification itself is exercised).
    for g in ("G-4", "G-6", "G-7", "G-8", "G-9", "G-10", "R-42"):
        assert per_g[g] > 0, f"no {g} exclusion seen:\n" + "\n".join(summary)
    # Every comparison category was exercised by comparisons that agreed.
    for kind in ("Off", "TargetMatch", "RuleMatch", "Fallthrough", "Error"):
        assert coverage.kinds[kind] > 0, f"decision kind {kind} never agreed:\n" + "\n".join(summary)
    for op in OPERATORS:
        assert coverage.ops[op] > 0, f"operator {op} never matched in an agreeing rule:\n" + "\n".join(summary)
    for path in ("in: included", "in: rule", "not in: excluded", "not in: none", "not in: empty list"):
        assert coverage.segment_paths[path] > 0, f"segment path {path!r} never matched:\n" + "\n".join(summary)
    for what in (
        "rule split",
        "fallthrough split",
        "a later part chosen",
        "dispatch by user key",
        "dispatch by keyId",
        "dispatch by name",
        "dispatch by custom",
    ):
        assert coverage.rollouts[what] > 0, f"rollout case {what!r} never exercised:\n" + "\n".join(summary)
    split_flags = sum(1 for vals in coverage.values.values() if len(vals) > 1)
    assert split_flags > len(world.flags) // 4, "too few flags gave different users different values"
    assert elapsed < 60


def test_generator_is_deterministic() -> None:
    assert generate(SEED, 20, 20).document() == generate(SEED, 20, 20).document()
    assert generate(SEED, 20, 20).document() != generate(SEED + 1, 20, 20).document()


def test_planted_pools_are_what_they_claim() -> None:
    """The classification trusts these pools; check them independently."""
    for pattern in INVALID_REGEXES:
        with pytest.raises(re.error):
            re.compile(pattern)
    for text in BAD_LIST_OPERANDS:
        assert string_list(text) is None
    for pattern in SAFE_REGEXES:
        compile_regex(pattern)  # featbit_shm accepts it
    for pattern in RISKY_REGEXES:
        with pytest.raises(MalformedFlag):
            compile_regex(pattern)


# --------------------------------------------------------------------------- number conversion


@pytest.mark.parametrize("text", ["1.0", "1e3", "-2.000", "33", "2.5", "-0.5", "0"])
def test_number_variation_has_fbclient_int_float_rule(text: str) -> None:
    """R-83: int if integral ("1.0" -> 1), else float; found by this differential test."""
    doc = json.dumps(b.data_sync([b.flag("n", variations=[text], variation_type="number", off=0)]))
    client = FBClient(Config(offline=True))
    assert client.initialize_from_external_json(doc)
    user = {"key": "u", "name": "n"}
    with _official(doc) as theirs:
        expected = theirs.variation("n", user, None)
    assert same(client.variation("n", user, None), expected)
