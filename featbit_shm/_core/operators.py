"""The 16 condition operators (R-40..R-44), compiled once per condition.

:func:`compile_condition` turns one normalised condition into a *test*: a
function ``test(user, segment_of) -> bool``. Everything that can be decided
when the flag is loaded (which attribute to read, the parsed number, the list
as a frozenset, the compiled regex) is decided then, so a test does one
lookup and one comparison.

Semantics kept here:

* An absent attribute, or a null operand, makes the condition **false for
  every operator, negative ones included** (R-40; fbclient builds negatives as
  ``not positive``, G-7).
* Numbers are parsed like .NET ``double.TryParse``: optional sign, decimals,
  exponent, surrounding blanks; no ``nan``/``inf``/``1_000``, no rounding
  (G-9). A parse failure on either side makes the comparison false.
* Malformed data (a list operand that is not a JSON array of strings, a regex
  that does not compile or is unsafe, a missing segment) raises
  :class:`MalformedFlag` when the condition is reached, so that one flag
  evaluates to the default with reason kind Error (R-42, R-47).

Regex dialect: Python :mod:`re`, search semantics (``re.search(v, u)``), no
flags. Python's engine has no timeout, so cost is bounded up front: patterns
whose repetition can backtrack exponentially (a quantifier inside a
quantified group unless each repetition must start with a character its inner
quantifiers cannot match, or a quantified alternation whose branches do not start with
distinct literals; backreferences inside a repeat) are rejected as malformed,
and subjects longer than :data:`REGEX_MAX_SUBJECT` characters are an error.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from typing import Any, Final

from .user import User, attr_string
from .wire import SEGMENT_IN, SEGMENT_NOT_IN

try:  # Python >= 3.11
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.9 / 3.10
    import sre_parse as _sre_parse

REGEX_MAX_SUBJECT: Final = 1024
REGEX_MAX_PATTERN: Final = 512

SegmentOf = Callable[[str], Any]  # segment id -> Segment or None
Test = Callable[[User, SegmentOf], bool]

_NUMBER = re.compile(r"[ \t\r\n]*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t\r\n]*")


class MalformedFlag(Exception):
    """The flag's data cannot be evaluated; evaluation returns the default."""


def parse_number(text: str) -> float | None:
    """A finite float in .NET ``double.TryParse`` syntax, or None (R-43)."""
    if _NUMBER.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- regex safety


_ALL = None  # "any character" in the character-set helpers below


def _atom_chars(op: Any, av: Any) -> set[int] | None:
    """Characters one atom can match, or None for "too many to tell"."""
    c = _sre_parse
    if op is c.LITERAL:
        return {av}
    if op is c.IN:
        chars: set[int] = set()
        for iop, iav in av:
            if iop is c.LITERAL:
                chars.add(iav)
            elif iop is c.RANGE and iav[1] - iav[0] < 4096:
                chars.update(range(iav[0], iav[1] + 1))
            else:
                return _ALL
        return chars
    return _ALL


def _repeated_chars(subpattern: Any) -> set[int] | None:
    """Characters any atom inside ``subpattern`` can match."""
    c = _sre_parse
    out: set[int] = set()
    for op, av in subpattern:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            inner = _repeated_chars(av[2])
        elif op is c.SUBPATTERN:
            inner = _repeated_chars(av[-1])
        elif op is c.BRANCH:
            inner = set()
            for b in av[1]:
                got = _repeated_chars(b)
                if got is None:
                    return _ALL
                inner |= got
        elif op in (c.AT, c.ASSERT, c.ASSERT_NOT):
            continue
        else:
            inner = _atom_chars(op, av)
        if inner is None:
            return _ALL
        out |= inner
    return out


def _has_repeat(subpattern: Any) -> bool:
    c = _sre_parse
    for op, av in subpattern:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            if av[1] is c.MAXREPEAT or av[1] > 1:
                return True
            if _has_repeat(av[2]):
                return True
        elif op is c.SUBPATTERN and _has_repeat(av[-1]):
            return True
        elif op is c.BRANCH and any(_has_repeat(b) for b in av[1]):
            return True
    return False


def _unambiguous_body(body: Any) -> bool:
    """A repeated body with inner repeats is safe when it starts with a
    mandatory character that none of its inner repeats can match, as in
    ``(\\.[a-z]+)+``: each repetition then has one place to begin."""
    c = _sre_parse
    items = list(body)
    while len(items) == 1 and items[0][0] is c.SUBPATTERN:
        items = list(items[0][1][-1])
    if not items:
        return False
    first = _atom_chars(*items[0])
    inner = _repeated_chars(items[1:])
    return first is not None and inner is not None and not (first & inner)


def _risky(subpattern: Any, inside_repeat: bool) -> str | None:
    """Why a parsed pattern can backtrack badly, or None when it cannot."""
    c = _sre_parse
    for op, av in subpattern:
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            lo, hi, body = av
            repeats = hi is c.MAXREPEAT or hi > 1
            if repeats and inside_repeat:
                return "nested quantifier"
            if repeats and _has_repeat(body):
                if not _unambiguous_body(body):
                    return "nested quantifier"
                continue  # the inner repeats are anchored by the body's first character
            why = _risky(body, inside_repeat or repeats)
            if why:
                return why
        elif op is c.BRANCH:
            branches = av[1]
            if inside_repeat:
                firsts = []
                for b in branches:
                    if not b or b[0][0] is not c.LITERAL:
                        return "quantified alternation"
                    firsts.append(b[0][1])
                if len(set(firsts)) != len(firsts):
                    return "quantified alternation with overlapping branches"
            for b in branches:
                why = _risky(b, inside_repeat)
                if why:
                    return why
        elif op is c.SUBPATTERN:
            why = _risky(av[-1], inside_repeat)
            if why:
                return why
        elif op in (c.ASSERT, c.ASSERT_NOT):
            why = _risky(av[1], inside_repeat)
            if why:
                return why
        elif op is c.GROUPREF and inside_repeat:
            return "backreference inside a repeat"
    return None


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a MatchRegex operand, refusing unbounded-cost patterns."""
    if len(pattern) > REGEX_MAX_PATTERN:
        raise MalformedFlag(f"regex longer than {REGEX_MAX_PATTERN} characters")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarnings about set syntax
            compiled = re.compile(pattern)
        why = _risky(_sre_parse.parse(pattern), False)
    except (re.error, RecursionError, OverflowError) as exc:
        raise MalformedFlag(f"regex does not compile: {exc}") from None
    if why:
        raise MalformedFlag(f"regex refused ({why}): its cost could not be bounded")
    return compiled


# --------------------------------------------------------------------------- compiling


def _getter(prop: str) -> Callable[[User], str | None] | None:
    if not prop.strip():
        return None  # a blank property name is always absent
    if prop == "keyId":
        return lambda u: u.key
    if prop == "name":
        return lambda u: u.name

    def custom(u: User) -> str | None:
        v = u.attrs.get(prop)
        return v if type(v) is str else attr_string(v)

    return custom


def _never(u: User, segment_of: SegmentOf) -> bool:
    return False


def _raiser(message: str) -> Test:
    def test(u: User, segment_of: SegmentOf) -> bool:
        raise MalformedFlag(message)

    return test


def _segment_test(ids: list[str], negate: bool) -> Test:
    wanted = [i.lower() for i in ids]

    def test(u: User, segment_of: SegmentOf) -> bool:
        for seg_id in wanted:
            seg = segment_of(seg_id)
            if seg is None:
                # never turn a missing segment into a quiet negative.
                raise MalformedFlag(f"segment {seg_id} is missing or archived")
            if seg.matches(u):
                return not negate
        return negate

    return test


def compile_condition(cond: list[Any], *, in_segment: bool = False) -> Test:
    """A normalised ``[property, op, operand, error]`` -> its test."""
    prop, op, operand, error = cond
    if prop in (SEGMENT_IN, SEGMENT_NOT_IN):
        if in_segment:
            return _never  # segments never reference other segments
        if error:
            return _raiser(error)
        if operand is None:
            return _never
        return _segment_test(operand, negate=prop == SEGMENT_NOT_IN)
    if error:
        return _raiser(error)
    get = _getter(prop)
    if get is None or operand is None:
        return _never
    v = operand
    if op in ("LessThan", "LessEqualThan", "BiggerThan", "BiggerEqualThan"):
        return _numeric(get, op, parse_number(v))
    if op == "Equal":
        return lambda u, s: get(u) == v
    if op == "NotEqual":
        return lambda u, s: (x := get(u)) is not None and x != v
    if op == "Contains":
        return lambda u, s: (x := get(u)) is not None and v in x
    if op == "NotContain":
        return lambda u, s: (x := get(u)) is not None and v not in x
    if op == "StartsWith":
        return lambda u, s: (x := get(u)) is not None and x.startswith(v)
    if op == "EndsWith":
        return lambda u, s: (x := get(u)) is not None and x.endswith(v)
    if op == "IsOneOf":
        members = frozenset(v)
        return lambda u, s: get(u) in members
    if op == "NotOneOf":
        members = frozenset(v)
        return lambda u, s: (x := get(u)) is not None and x not in members
    if op == "IsTrue":
        return lambda u, s: (x := get(u)) is not None and x.lower() == "true"
    if op == "IsFalse":
        return lambda u, s: (x := get(u)) is not None and x.lower() == "false"
    if op in ("MatchRegex", "NotMatchRegex"):
        return _regex(get, v, negate=op == "NotMatchRegex")
    return _never  # unknown operators never match


def _numeric(get: Callable[[User], str | None], op: str, bound: float | None) -> Test:
    if bound is None:
        return _never
    b: float = bound

    def test(u: User, s: SegmentOf) -> bool:
        x = get(u)
        if x is None:
            return False
        n = parse_number(x)
        if n is None:
            return False
        if op == "LessThan":
            return n < b
        if op == "LessEqualThan":
            return n <= b
        if op == "BiggerThan":
            return n > b
        return n >= b

    return test


def _regex(get: Callable[[User], str | None], pattern: str, negate: bool) -> Test:
    try:
        search = compile_regex(pattern).search
    except MalformedFlag as exc:
        return _raiser(str(exc))

    def test(u: User, s: SegmentOf) -> bool:
        x = get(u)
        if x is None:
            return False
        if len(x) > REGEX_MAX_SUBJECT:
            raise MalformedFlag(f"regex subject longer than {REGEX_MAX_SUBJECT} characters")
        return (search(x) is None) if negate else (search(x) is not None)

    return test
