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

import re
import warnings
from collections.abc import Callable
from operator import methodcaller
from typing import Any, Final

from .schema import Condition
from .user import User, attr_string
from .wire import LIST_OPS, SEGMENT_IN, SEGMENT_NOT_IN

try:  # Python >= 3.11
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.9 / 3.10
    import sre_parse as _sre_parse

REGEX_MAX_SUBJECT: Final = 1024
REGEX_MAX_PATTERN: Final = 512

SegmentOf = Callable[[str], Any]  # segment id -> Segment or None
Test = Callable[[User, SegmentOf], bool]

class MalformedFlag(Exception):
    """The flag's data cannot be evaluated; evaluation returns the default."""


def parse_number(text: str) -> float | None:
    """A finite float in .NET ``double.TryParse`` syntax, or None (R-43).

    ``float()`` does the parsing; what it accepts beyond .NET's syntax is
    refused afterwards: non-finite values (``nan``, ``inf``), digit
    separators (``1_000``) and non-ASCII digits.
    """
    try:
        value = float(text)
    except ValueError:
        return None
    if value - value != 0.0 or "_" in text or not text.isascii():  # nan/inf, 1_000, non-ASCII
        return None
    return value


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


def compile_condition(cond: Condition, *, in_segment: bool = False) -> Test:
    """A normalised :class:`~.schema.Condition` -> its test."""
    prop, op, operand, error = cond.property, cond.op, cond.operand, cond.error
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
    if not prop.strip() or operand is None:
        return _never  # a blank property is absent; R-40: a null operand never matches
    v = operand
    if op in ("LessThan", "LessEqualThan", "BiggerThan", "BiggerEqualThan"):
        return _numeric(prop, op, parse_number(v))
    if op in ("MatchRegex", "NotMatchRegex"):
        return _regex(prop, v, negate=op == "NotMatchRegex")
    pred = _string_predicate(op or "", v)
    if pred is None:
        return _never  # unknown operators never match
    return _on_string(prop, pred)


def _string_predicate(op: str, v: Any) -> Callable[[str], bool] | None:
    """The test on the attribute's string value; C-level callables where possible."""
    if op == "Equal":
        return v.__eq__  # type: ignore[no-any-return]
    if op == "NotEqual":
        return v.__ne__  # type: ignore[no-any-return]
    if op == "Contains":
        return methodcaller("__contains__", v)
    if op == "NotContain":
        return lambda x: v not in x
    if op == "StartsWith":
        return methodcaller("startswith", v)
    if op == "EndsWith":
        return methodcaller("endswith", v)
    if op == "IsOneOf":
        return frozenset(v).__contains__
    if op == "NotOneOf":
        members = frozenset(v)
        return lambda x: x not in members
    if op == "IsTrue":
        return lambda x: x.lower() == "true"
    if op == "IsFalse":
        return lambda x: x.lower() == "false"
    return None


def _on_string(prop: str, pred: Callable[[str], bool]) -> Test:
    """Apply ``pred`` to the attribute; an absent attribute is False (R-40).

    The attribute fetch is written into each closure (not a getter call):
    this runs once per condition per evaluation.
    """
    if prop == "keyId":
        return lambda u, s: pred(u.key)
    if prop == "name":
        return lambda u, s: pred(u.name)

    def test(u: User, s: SegmentOf) -> bool:
        x = u.attrs.get(prop)
        if type(x) is not str:
            x = attr_string(x)
            if x is None:
                return False
        return pred(x)

    return test


def _numeric(prop: str, op: str, bound: float | None) -> Test:
    if bound is None:
        return _never  # an operand that is not a number never matches
    b: float = bound
    compare: Callable[[float], bool] = {  # b.__gt__(n) is n < b, and so on
        "LessThan": b.__gt__,
        "LessEqualThan": b.__ge__,
        "BiggerThan": b.__lt__,
        "BiggerEqualThan": b.__le__,
    }[op]

    def on_text(x: str) -> bool:
        n = parse_number(x)
        return n is not None and compare(n)

    if prop in ("keyId", "name"):
        return _on_string(prop, on_text)

    def test(u: User, s: SegmentOf) -> bool:
        raw = u.attrs.get(prop)
        t = type(raw)
        if t is str:
            return on_text(raw)  # type: ignore[arg-type]
        if t is int or t is float:  # numbers skip the text round trip
            try:
                n = float(raw)  # type: ignore[arg-type]
            except OverflowError:  # an int beyond float range
                return False
            return n - n == 0.0 and compare(n)  # n - n is nan for nan and inf
        return raw is not None and t is not bool and on_text(str(raw))

    return test


def _regex(prop: str, pattern: str, negate: bool) -> Test:
    try:
        search = compile_regex(pattern).search
    except MalformedFlag as exc:
        return _raiser(str(exc))

    def pred(x: str) -> bool:
        if len(x) > REGEX_MAX_SUBJECT:
            raise MalformedFlag(f"regex subject longer than {REGEX_MAX_SUBJECT} characters")
        return (search(x) is None) if negate else (search(x) is not None)

    return _on_string(prop, pred)


# --------------------------------------------------------------------------- whole rules

# String operators simple enough to inline into a rule's matcher: the
# expression on ``x`` (the attribute's string value) and ``V`` (the operand).
_INLINE: Final = {
    "Equal": "x == {V}",
    "NotEqual": "x != {V}",
    "Contains": "{V} in x",
    "NotContain": "{V} not in x",
    "StartsWith": "x.startswith({V})",
    "EndsWith": "x.endswith({V})",
    "IsOneOf": "x in {V}",
    "NotOneOf": "x not in {V}",
    "IsTrue": "x.lower() == 'true'",
    "IsFalse": "x.lower() == 'false'",
}


def compile_rule(conds: list[Condition], *, in_segment: bool = False) -> Test:
    """All of a rule's conditions as one matcher (R-38: AND, first failure stops).

    A rule runs once per evaluation and each condition used to cost a Python
    call or two; generating one function per rule with the simple string
    operators written inline makes a condition cost about a dict lookup and a
    comparison. Only fixed code is generated: property names and operands are
    bound as constants in the function's namespace, never pasted into source.
    Anything not inlined (numbers, regexes, segments, errors) calls its
    compiled test.
    """
    if not conds:
        return _always
    namespace: dict[str, Any] = {"_str": attr_string}
    lines = ["def match(u, s):", "    a = u.attrs"]
    for i, cond in enumerate(conds):
        prop, op, operand, error = cond.property, cond.op, cond.operand, cond.error
        inline = (
            not error
            and operand is not None
            and prop not in (SEGMENT_IN, SEGMENT_NOT_IN)
            and prop.strip() != ""
            and op in _INLINE
        )
        if not inline:
            namespace[f"T{i}"] = compile_condition(cond, in_segment=in_segment)
            lines.append(f"    if not T{i}(u, s): return False")
            continue
        namespace[f"V{i}"] = frozenset(operand) if op in LIST_OPS else operand
        expr = _INLINE[op or ""].format(V=f"V{i}")
        if prop == "keyId":
            lines.append("    x = u.key")
        elif prop == "name":
            lines.append("    x = u.name")
        else:
            namespace[f"P{i}"] = prop
            lines += [
                f"    x = a.get(P{i})",
                "    if type(x) is not str:",
                "        if x is None: return False",
                "        x = _str(x)",
            ]
        lines.append(f"    if not ({expr}): return False")
    lines.append("    return True")
    exec("\n".join(lines), namespace)  # fixed template; operands are bound constants
    return namespace["match"]  # type: ignore[no-any-return]


def _always(u: User, segment_of: SegmentOf) -> bool:
    return True
