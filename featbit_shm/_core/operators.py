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
flags but inline ones (``(?i)``). Python's engine has no timeout, so the cost
of every pattern is bounded when the flag is loaded (see "regex safety"
below): a pattern is either refused as malformed or accepted with a *subject
cap*.

* Refused, with a reason naming the construct: longer than
  :data:`REGEX_MAX_PATTERN` characters, or not compiling; a *nested
  quantifier*, a repeat inside a repeated group that can match where the next
  repetition, or another repeat of the same one, starts (``(a+)+``,
  ``([a-z]+)*$``, ``(\\.\\d*\\d*)+``; ``(\\.[a-z]+)+`` is fine, each repetition
  starts with a ``.`` its repeat cannot read); a *quantified alternation with
  overlapping branches*, inside a repeated group, whose branches can start
  with the same character or match nothing (``(a|a)*``, ``(a|aa)*``;
  ``(foo|bar)+`` is fine); a *backreference inside a repeat*; *adjacent
  overlapping repeats*, repeats in sequence that can read each other's
  characters through whatever between them they can read too, so many that
  the cap would be under :data:`REGEX_MIN_SUBJECT` (64) characters
  (``\\d*\\d*\\d*x``, ``.*.*.*x``, ``(?:[a-z]+){4}!``). A group repeated at
  most 4 times is judged as if written out.
* Capped: the cap is the longest subject whose search fits
  :data:`REGEX_STEP_BUDGET` modelled backtracking steps (about 10 ms); a
  longer subject raises :class:`MalformedFlag`, as one longer than
  :data:`REGEX_MAX_SUBJECT` (1,024) does for every pattern. Without
  overlapping repeats the cap is 1,024 (``.*@example\\.com``,
  ``^[a-z0-9._%+-]+@example\\.com$``, ``version-[0-9]+\\.[0-9]+``), or less
  where a step costs more (about 900 for ``\\d+$``, 800 for ``(\\d)+x``,
  270 for ``.*a{100}x``); with two overlapping repeats it is about 100
  (``\\d*\\d*x``, ``.*foo.*bar``; 600 to 700 after ``^``); three are refused,
  unless after ``^``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from operator import methodcaller
from types import FunctionType, MethodType
from typing import Any, Final

from .schema import Condition
from .user import User, attr_string
from .wire import LIST_OPS, SEGMENT_IN, SEGMENT_NOT_IN

try:  # Python >= 3.11
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.9 / 3.10
    import sre_parse as _sre_parse

REGEX_MAX_SUBJECT: Final = 1024  # no subject is longer, whatever the pattern
REGEX_MAX_PATTERN: Final = 512
REGEX_STEP_BUDGET: Final = 4_500_000  # modelled backtracking steps of one search
REGEX_MIN_SUBJECT: Final = 64  # a pattern whose subject cap would be shorter is refused

SegmentOf = Callable[[str], Any]  # segment id -> Segment or None
Test = Callable[[User, SegmentOf], bool]
# A rule walk in two parts: fn(operands, user, segment_of) (compile_walk).
WalkParts = tuple[Callable[..., int], tuple[Any, ...]]

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
#
# ``re`` backtracks, holds the GIL and cannot be interrupted, so the worst case
# of a pattern is bounded when the flag is loaded, from the parsed pattern, in
# *steps* (a character read or a place tried along one path the engine may
# explore; weighted by what ``re`` spends on it, about 2 ns on CPython 3.11).
#
# * A *choice* is a repeat that can stop at several places (``\d*``, ``x?``,
#   ``[a-z]{2,9}``, a repeated group), an alternation whose branches can start
#   alike, or a backreference. Every place it can stop at starts a path that
#   the rest of the pattern is tried on.
# * The paths that stopped early *lag* behind the greedy one. They stay alive
#   only while what follows can read characters the choice could have read,
#   or what they read since (their *reach*). If they reach a later choice that
#   can start within their reach, the two choices are *linked*: the stretch
#   between them can be split many ways, all alive, and the paths multiply.
#   ``\d*\d*``, ``.*.*``, ``\d*1\d*`` and ``.*a.*`` are linked;
#   ``[a-z]+@[a-z]+``, ``\d+\.\d+`` and ``\w+\s+\w+`` are not. A chain of k
#   linked repeats costs about n^k steps from one start position, n^(k+1) for
#   a search, which tries every start unless the pattern begins with ``^`` or
#   ``\A``. Unlinked choices only add: the places of a path's choices share
#   the n characters of the subject.
# * Inside a repeated group, a choice linked to a choice of the same or of the
#   next repetition, or lagging paths that outlive a whole repetition, make
#   the cost exponential (``(a+)+``, ``(a|a)*``, ``(\.\d*\d*)+``): refused.
#   A group repeated at most _UNROLL times is walked written out instead.
# * How far lagging paths read is bounded by the overlap argument of string
#   matching: if two of them read a position, one reads it with a later item
#   that can match where the other's first item matched.
# * The search ends when a path reaches a tail that cannot fail (``.*``,
#   ``[a-z]*``): such a tail costs nothing.
#
# The cap of a pattern is the longest subject, at most REGEX_MAX_SUBJECT, whose
# modelled search fits REGEX_STEP_BUDGET (about 10 ms, for the worst patterns
# the model allows); a pattern whose cap would be under REGEX_MIN_SUBJECT is
# refused. tests/test_operators.py checks the model against an exact count of
# the paths a backtracking search explores, on generated patterns.

_c = _sre_parse
_REPEATS: Final = tuple(
    op for op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)) if op is not None
)
_ATOMIC = getattr(_c, "ATOMIC_GROUP", None)
_IGNORECASE: Final = int(re.IGNORECASE)
_MULTILINE: Final = int(re.MULTILINE)
_HUGE: Final = 1e30  # a cost this large is refused without walking further

# A character set as (explicit code points, whole non-ASCII classes, classes
# of the explicit non-ASCII code points). Non-ASCII characters are split in
# four classes (decimal, other word, space, other), enough to tell \d, \w and
# \s apart; every set is a superset of what ``re`` matches.
_Chars = tuple[frozenset[int], int, int]
_DEC, _WORD, _SPACE, _OTHER = 1, 2, 4, 8
_EVERY: Final = _DEC | _WORD | _SPACE | _OTHER
_ASCII: Final = frozenset(range(128))
_ANY: Final[_Chars] = (_ASCII, _EVERY, 0)
_NOTHING: Final[_Chars] = (frozenset(), 0, 0)
_ASCII_DIGIT: Final = frozenset(range(48, 58))
_ASCII_SPACE: Final = frozenset(i for i in range(128) if chr(i).isspace())
_ASCII_WORD: Final = frozenset(i for i in range(128) if chr(i).isalnum() or i == 95)
_CATEGORIES: Final = {
    _c.CATEGORY_DIGIT: (_ASCII_DIGIT, _DEC),
    _c.CATEGORY_NOT_DIGIT: (_ASCII - _ASCII_DIGIT, _WORD | _SPACE | _OTHER),
    _c.CATEGORY_SPACE: (_ASCII_SPACE, _SPACE),
    _c.CATEGORY_NOT_SPACE: (_ASCII - _ASCII_SPACE, _DEC | _WORD | _OTHER),
    _c.CATEGORY_WORD: (_ASCII_WORD, _DEC | _WORD),
    _c.CATEGORY_NOT_WORD: (_ASCII - _ASCII_WORD, _SPACE | _OTHER),
}
# The only non-ASCII characters IGNORECASE makes equal to ASCII ones (found by
# checking every code point with _sre.unicode_tolower and re._casefix).
_FOLD_TO: Final = {0x69: (0x130, 0x131), 0x73: (0x17F,), 0x6B: (0x212A,)}
_FOLD_FROM: Final = {0x130: (0x49, 0x69), 0x131: (0x49, 0x69), 0x17F: (0x53, 0x73), 0x212A: (0x4B, 0x6B)}


def _class_of(cp: int) -> int:
    ch = chr(cp)
    if ch.isdecimal():
        return _DEC
    if ch.isalnum():
        return _WORD
    if ch.isspace():
        return _SPACE
    return _OTHER


def _chars(points: set[int], classes: int) -> _Chars:
    mask = 0
    for cp in points:
        if cp > 127:
            mask |= _class_of(cp)
    return frozenset(points), classes, mask


def _overlap(a: _Chars, b: _Chars) -> bool:
    return bool(a[1] & (b[1] | b[2]) or b[1] & a[2]) or not a[0].isdisjoint(b[0])


def _union(a: _Chars, b: _Chars) -> _Chars:
    if a is b or (b[0] <= a[0] and not b[1] & ~a[1] and not b[2] & ~a[2]):
        return a
    return a[0] | b[0], a[1] | b[1], a[2] | b[2]


def _fold(points: set[int]) -> tuple[set[int], int]:
    """``points`` and what IGNORECASE makes equal to them (a superset)."""
    out, classes = set(points), 0
    for cp in points:
        ch = chr(cp)
        if cp < 128:
            if ch.isalpha():
                low = ord(ch.lower())
                out.update((low, ord(ch.upper())), _FOLD_TO.get(low, ()))
        elif ch.lower() != ch or ch.upper() != ch:
            classes |= _WORD | _OTHER  # its case partners are non-ASCII letters...
            out.update(_FOLD_FROM.get(cp, ()))  # ...or these ASCII ones
    return out, classes


def _complement(points: set[int], exact: int) -> _Chars:
    return _ASCII - points, _EVERY & ~exact, 0


def _atom_chars(op: Any, av: Any, icase: bool) -> _Chars | None:
    """What one character-reading item can match, or None for other items."""
    if op is _c.LITERAL or op is _c.NOT_LITERAL:
        points, classes = _fold({av}) if icase else ({av}, 0)
        return _chars(points, classes) if op is _c.LITERAL else _complement(points, 0)
    if op is _c.ANY:
        return _ANY
    if op is not _c.IN:
        return None
    points, classes, exact, negate = set(), 0, 0, False
    for iop, iav in av:
        if iop is _c.NEGATE:
            negate = True
        elif iop is _c.LITERAL:
            points.add(iav)
        elif iop is _c.RANGE:
            lo, hi = iav
            if hi - lo < 4096:
                points.update(range(lo, hi + 1))
            else:  # keep the ASCII part exact, take every non-ASCII class
                points.update(range(lo, min(hi, 127) + 1))
                classes = _EVERY
        elif iop is _c.CATEGORY and iav in _CATEGORIES:
            cat_points, cat_classes = _CATEGORIES[iav]
            points |= cat_points
            classes |= cat_classes
            exact |= cat_classes
        else:
            return _ANY
    if icase:
        points, more = _fold(points)
        classes |= more
    return _complement(points, exact) if negate else _chars(points, classes)


def _icase(icase: bool, add: int, remove: int) -> bool:
    return (icase or bool(add & _IGNORECASE)) and not remove & _IGNORECASE


def _single(items: Any, icase: bool) -> _Chars | None:
    """The atom a repeat body is, through groups, or None."""
    while len(items) == 1:
        op, av = items[0]
        if op is not _c.SUBPATTERN:
            return _atom_chars(op, av, icase)
        icase, items = _icase(icase, av[1], av[2]), av[-1]
    return None


def _inner_op(items: Any) -> Any:
    """The op of the atom a repeat body is (see _single)."""
    while items[0][0] is _c.SUBPATTERN:
        items = items[0][1][-1]
    return items[0][0]


_Summary = tuple[_Chars, bool, _Chars, int]  # first characters, nullable, all characters, shortest length


def _summary(items: Any, icase: bool) -> _Summary:
    first, nullable, reach, shortest = _NOTHING, True, _NOTHING, 0
    for op, av in items:
        f, n, r, s = _item_summary(op, av, icase)
        if nullable:
            first = _union(first, f)
        nullable = nullable and n
        reach = _union(reach, r)
        shortest += s
    return first, nullable, reach, shortest


def _item_summary(op: Any, av: Any, icase: bool) -> _Summary:
    atom = _atom_chars(op, av, icase)
    if atom is not None:
        return atom, False, atom, 1
    if op in _REPEATS:
        f, n, r, s = _summary(av[2], icase)
        return f, n or av[0] == 0, r, s * av[0]
    if op is _c.SUBPATTERN:
        return _summary(av[-1], _icase(icase, av[1], av[2]))
    if op is _ATOMIC:
        return _summary(av, icase)
    if op is _c.BRANCH or op is _c.GROUPREF_EXISTS:
        branches = av[1] if op is _c.BRANCH else [av[1], av[2] or []]
        parts = [_summary(b, icase) for b in branches]
        first, reach = _NOTHING, _NOTHING
        for f, _, r, _ in parts:
            first, reach = _union(first, f), _union(reach, r)
        return first, any(p[1] for p in parts), reach, min(p[3] for p in parts)
    if op is _c.AT or op is _c.ASSERT or op is _c.ASSERT_NOT:
        return _NOTHING, True, _NOTHING, 0
    return _ANY, True, _ANY, 0  # a backreference: anything, maybe nothing


def _cannot_fail(item: Any, icase: bool) -> bool:
    """True for ``x*``, ``[a-z]*?``, groups of these: whatever follows, re goes on."""
    op, av = item
    if op in _REPEATS:
        return av[0] == 0 and _single(av[2], icase) is not None
    if op is _c.SUBPATTERN:
        return all(_cannot_fail(i, _icase(icase, av[1], av[2])) for i in av[-1])
    return False


class _Refused(Exception):
    """The pattern's cost cannot be bounded; the message names the construct."""


class _Chain:
    """The paths that stopped one choice early, lagging behind the main ones."""

    __slots__ = (
        "again", "cheap", "ends", "exact", "fail", "first", "key", "kind", "loops", "met", "mult", "reach", "read",
        "reads", "weight",
    )

    def __init__(
        self, key: int, kind: str, loops: frozenset[int], reach: _Chars, mult: float, ends: float, cheap: bool
    ) -> None:
        self.key = key  # the choice, in _Walk.stops
        self.kind = kind  # "repeat", "alternation" or "backreference"
        self.loops = loops  # the repeated groups the choice is inside
        self.reach = reach  # what they may have to read again
        self.mult = mult  # main paths at the choice, times choices passed since
        self.ends = ends  # how many places the choice can stop at
        # ``re`` skips a stopping place at once when the next item is a
        # character it does not match (greedy single-character repeats only)
        self.cheap: bool | None = None if cheap else False
        self.first: _Chars | None = None  # the first item read since
        self.read = 0  # items read since
        self.again = 0  # of which could match where ``first`` did
        self.exact = True  # only fixed items read since (the overlap bound holds)
        self.reads = 0.0  # characters read so far, counted plainly
        self.weight = 1.0  # the most a character read cost
        self.met = 0.0  # other steps: anchors, groups, skipped choices
        self.fail = 1.0  # what the step they fail at costs

    def copy(self) -> _Chain:
        new = _Chain(self.key, self.kind, self.loops, self.reach, self.mult, self.ends, False)
        new.cheap, new.first, new.read, new.again = self.cheap, self.first, self.read, self.again
        new.exact, new.reads, new.met = self.exact, self.reads, self.met
        new.weight, new.fail = self.weight, self.fail
        return new

    def merge(self, other: _Chain, add: bool) -> None:
        self.reach = _union(self.reach, other.reach)
        self.mult = self.mult + other.mult if add else max(self.mult, other.mult)
        self.reads = self.reads + other.reads if add else max(self.reads, other.reads)
        self.met = self.met + other.met if add else max(self.met, other.met)
        self.weight, self.fail = max(self.weight, other.weight), max(self.fail, other.fail)
        self.ends = max(self.ends, other.ends)
        self.read, self.again = max(self.read, other.read), max(self.again, other.again)
        if self.cheap is not other.cheap:
            self.cheap = False
        if self.first is None or other.first is None:
            self.exact = self.exact and other.exact and self.first is other.first
        else:
            self.first = _union(self.first, other.first)
        self.exact = self.exact and other.exact

    def step(self, weight: float) -> None:
        """The lagging paths take a step that reads nothing."""
        self.cheap = False
        self.met += self.mult * self.ends * weight


class _State:
    __slots__ = ("chains", "paths")

    def __init__(self, paths: float, chains: dict[int, _Chain]) -> None:
        self.paths = paths  # main paths at this point (more than one once choices link)
        self.chains = chains

    def fork(self) -> _State:
        return _State(self.paths, {k: ch.copy() for k, ch in self.chains.items()})


def _merge(states: list[_State], add: bool) -> _State:
    out = _State(0.0, {})
    for st in states:
        out.paths = out.paths + st.paths if add else max(out.paths, st.paths)
        for key, ch in st.chains.items():
            have = out.chains.get(key)
            if have is None:
                out.chains[key] = ch
            else:
                have.merge(ch, add)
    return out


# Step weights, measured on CPython 3.11 (a step is about 2 ns there): a path
# that stopped a repeat early resumes the rest of the pattern; entering a
# repeated or optional group; one repetition of a group; an anchor.
_JUMP: Final = 5.0
_CLASS: Final = 3.0  # reading a character class, not one character
_SCAN: Final = 3.0  # a place in a repeated character class
_ENTER: Final = 12.0
_GROUP: Final = 8.0
_ANCHOR: Final = 2.0


class _Shared:
    """What the walks over one pattern share: summaries, and a bound on work."""

    __slots__ = ("atoms", "left", "summaries")

    def __init__(self) -> None:
        self.left = _MAX_VISITS
        # keyed by id(); the value keeps the object alive, so the id stays its own
        self.summaries: dict[tuple[int, bool], tuple[Any, _Summary]] = {}
        self.atoms: dict[tuple[Any, int, bool], tuple[Any, _Chars | None]] = {}


_MAX_VISITS: Final = 20_000  # items visited for one pattern, all walks together
_UNROLL: Final = 4  # a group repeated at most this many times is walked written out


class _Walk:
    """One pass over a parsed pattern, counting steps for subjects of length n."""

    def __init__(self, n: int, shared: _Shared, in_repeat: bool = False) -> None:
        self.n = n
        self.shared = shared
        self.steps = 0.0
        self.loops: frozenset[int] = frozenset()  # repeated groups being walked
        self.in_repeat = in_repeat
        self.next_id = 0
        self.linked = False
        # Steps that come once per stopping place of a choice: its places,
        # the characters one place uses, and the steps per place.
        self.stops: dict[int, list[float]] = {}

    def run(self, items: Any, icase: bool, paths: float = 1.0) -> float:
        st = self.seq(items, _State(paths, {}), icase)
        for ch in st.chains.values():
            self.close(ch)
        # A path's choices share the subject: the places beyond the first of
        # all of them cannot use more than n characters together. Give the
        # characters to the costliest places first.
        total, room, extra = self.steps, float(self.n), []
        for ends, unit, per in self.stops.values():
            total += per
            if ends > 1:
                extra.append((per / unit, (ends - 1) * unit))
        for density, width in sorted(extra, reverse=True):
            take = min(width, room)
            total += density * take
            room -= take
            if room <= 0:
                break
        return total

    def seq(self, items: Any, st: _State, icase: bool) -> _State:
        last = len(items) - 1
        for i, (op, av) in enumerate(items):
            mark = self.next_id
            st = self.item(op, av, st, icase)
            if i == last or items[i + 1][0] is not _c.LITERAL or icase:
                for key, ch in st.chains.items():  # no literal right after: no quick skip
                    if key >= mark and ch.cheap is None:
                        ch.cheap = False
        return st

    def summary(self, items: Any, icase: bool) -> _Summary:
        key = (id(items), icase)
        got = self.shared.summaries.get(key)
        if got is None:
            got = self.shared.summaries[key] = (items, _summary(items, icase))
        return got[1]

    def item(self, op: Any, av: Any, st: _State, icase: bool) -> _State:
        self.shared.left -= 1
        if self.shared.left < 0:
            raise _Refused("too complex to bound")
        key = (op, id(av), icase)
        got = self.shared.atoms.get(key)
        if got is None:
            got = self.shared.atoms[key] = (av, _atom_chars(op, av, icase))
        atom = got[1]
        if atom is not None:
            self.read(atom, 1, st, op)
        elif op in _REPEATS:
            st = self.repeat(op, av, st, icase)
        elif op is _c.SUBPATTERN:
            if av[0] is not None:
                self.meet(1.0, st)  # re marks where a capturing group starts
            st = self.seq(av[-1], st, _icase(icase, av[1], av[2]))
        elif op is _ATOMIC:
            st = self.seq(av, st, icase)
        elif op is _c.BRANCH:
            st = self.branch(av[1], st, icase)
        elif op is _c.GROUPREF_EXISTS:
            st = self.branch([av[1], av[2] or []], st, icase)
        elif op is _c.ASSERT or op is _c.ASSERT_NOT:
            sub = _Walk(self.n, self.shared, bool(self.loops) or self.in_repeat)
            steps = sub.run(av[1], icase)
            self.linked = self.linked or sub.linked
            self.meet(_ANCHOR + steps, st)
        elif op is _c.GROUPREF:
            if self.loops or self.in_repeat:
                raise _Refused("backreference inside a repeat")
            self.choice(_ANY, _ANY, self.n + 1, st, "backreference", _GROUP, False)
        elif op is _c.AT:
            self.meet(_ANCHOR, st)
        else:  # pragma: no cover - the parser makes no other
            raise _Refused(f"unsupported construct {op}")
        return st

    def meet(self, weight: float, st: _State) -> None:
        """Every path, lagging ones too, takes a step that reads nothing."""
        self.steps += st.paths * weight
        for ch in st.chains.values():
            ch.step(weight)

    def read(self, atom: _Chars, count: int, st: _State, op: Any) -> None:
        """Every path reads ``count`` characters matching ``atom`` (an ``op``)."""
        weight = _CLASS if op is _c.IN else 1.0
        self.steps += st.paths * count * weight
        for key in list(st.chains):
            ch = st.chains[key]
            if ch.cheap is None:
                ch.cheap = op is _c.LITERAL
            if not _overlap(atom, ch.reach):
                ch.fail = weight
                self.close(ch)  # lagging paths cannot read it: they fail here
                del st.chains[key]
                continue
            ch.reads += ch.mult * ch.ends * count * weight
            ch.weight = max(ch.weight, weight)
            if ch.first is None:
                ch.first, ch.again = atom, count - 1
            elif _overlap(atom, ch.first):
                ch.again += count
            ch.read += count
            ch.reach = _union(ch.reach, atom)

    def close(self, ch: _Chain) -> None:
        reads = ch.reads
        if ch.exact and ch.first is not None:
            # Overlap bound: two stopping places both read as far as a
            # position only if an item read there could match where the
            # first item read matched; so each position is read by at most
            # 1 + again of them.
            reads = min(reads, ch.mult * (ch.ends + ch.read) * (1 + ch.again) * ch.weight)
        if ch.cheap and not ch.read:  # re skipped every place at the literal that follows
            cost = ch.mult * ch.ends / 2
        else:  # every place resumes the rest, and fails once
            cost = reads + ch.met + ch.mult * ch.ends * (ch.fail + _JUMP)
        stops = self.stops.get(ch.key)
        if stops is None:
            self.steps += cost
        else:
            stops[2] += cost / ch.ends

    def choice(
        self, first: _Chars, reach: _Chars, ends: float, st: _State, kind: str, weight: float, cheap: bool
    ) -> None:
        """Every path may stop at ``ends`` places, reading characters in ``reach``."""
        main = st.paths * weight
        if ends <= 1:
            self.steps += main
            return
        added = 0.0
        for ch in st.chains.values():
            if _overlap(first, ch.reach):
                self.link(ch)
                added += ch.mult * min(ch.ends, ends)
            if _overlap(reach, ch.reach):  # lagging paths can pass through it in ``ends`` ways
                ch.cheap = False
                ch.reads += ch.mult * ch.ends * ends * weight
                ch.mult *= ends
                ch.reach = _union(ch.reach, reach)
                ch.exact = False
            else:
                ch.step(weight)
        st.paths += added
        if st.paths > _HUGE:
            raise _Refused("adjacent overlapping repeats")
        self.stops[self.open(kind, reach, st.paths, ends, st, cheap)] = [ends, 1.0, main]

    def open(self, kind: str, reach: _Chars, mult: float, ends: float, st: _State, cheap: bool) -> int:
        key = self.next_id
        st.chains[key] = _Chain(key, kind, self.loops, reach, mult, ends, cheap)
        self.next_id += 1
        if len(st.chains) > 64:
            raise _Refused("too many repeats")
        return key

    def link(self, ch: _Chain) -> None:
        if ch.loops & self.loops:
            raise _Refused(_NESTED[ch.kind])
        self.linked = True

    def repeat(self, op: Any, av: Any, st: _State, icase: bool) -> _State:
        lo, hi, body = av
        unbounded = hi is _c.MAXREPEAT
        atom = _single(body, icase)
        if atom is not None:
            # re runs a repeated character in a tight loop, unless a capturing
            # group around it makes every repetition a group repetition.
            simple = body[0][0] is not _c.SUBPATTERN or body[0][1][0] is None
            if lo:
                self.read(atom, min(lo, self.n + 1), st, _inner_op(body))
            if unbounded or hi > lo:
                span = self.n + 1 if unbounded else hi - lo + 1
                weight = (_SCAN if _inner_op(body) is _c.IN else 1.0) if simple else _GROUP
                self.choice(atom, atom, min(span, self.n + 1), st, "repeat", weight, simple and op is _c.MAX_REPEAT)
            return st
        if hi == 0:
            return st
        first, _, reach, shortest = self.summary(body, icase)
        span = self.n + 1 if unbounded else hi - lo + 1
        ends = min(span, self.n // max(shortest, 1) + 1)
        added = 0.0
        if ends > 1:  # how many repetitions is itself a choice
            for ch in st.chains.values():
                if _overlap(first, ch.reach):
                    self.link(ch)
                    added += ch.mult * min(ch.ends, ends)
        paths = st.paths
        self.steps += paths * (_ENTER + _GROUP * lo)  # re's bookkeeping
        for ch in st.chains.values():
            ch.step(_ENTER)
        if not unbounded and 1 < hi <= _UNROLL:  # a few repetitions: walk them as if written out
            exits = [st.fork()] if lo == 0 else []
            cur = st
            for count in range(1, hi + 1):
                cur = self.seq(body, cur.fork(), icase)
                if count >= lo:
                    exits.append(cur)
            out = _merge(exits, add=False)
            out.paths += added
            if ends > 1:
                key = self.open("repeat", reach, out.paths, ends, out, False)
                self.stops[key] = [ends, float(max(shortest, 1)), paths * _GROUP]
            return out
        looping = unbounded or hi > 1
        exits = [st.fork()] if lo == 0 else []
        outer = self.loops
        if looping:
            self.loops = outer | {id(av)}
        mark = self.next_id
        one = self.seq(body, st.fork(), icase)
        if looping:
            inner = range(mark, self.next_id)
            two = self.seq(body, one.fork(), icase)
            for key in two.chains:
                if key in inner:  # lagging paths survive a whole repetition
                    raise _Refused(_NESTED[two.chains[key].kind])
            exits.append(two)
            self.loops = outer
        if lo <= 1:
            exits.append(one)
        walked, again = (2 if looping else 1), 0.0
        if lo > walked or (looping and ends > 1):  # the repetitions not walked, each as short as can be
            again = _Walk(max(shortest, 1), self.shared, True).run(body, icase, paths)
            self.steps += max(lo - walked, 0) * again
        out = _merge(exits, add=False)
        out.paths += added
        if ends > 1:
            key = self.open("repeat", reach, out.paths, ends, out, False)
            self.stops[key] = [ends, float(max(shortest, 1)), paths * _GROUP + again]
        return out

    def branch(self, branches: Any, st: _State, icase: bool) -> _State:
        parts = [self.summary(b, icase) for b in branches]
        exclusive = not any(p[1] for p in parts) and all(
            not _overlap(a[0], b[0]) for i, a in enumerate(parts) for b in parts[i + 1 :]
        )
        if exclusive:  # each path goes on in one branch at most
            return _merge([self.seq(b, st.fork(), icase) for b in branches], add=False)
        if self.loops:  # the repetitions could be split among the branches in many ways
            raise _Refused(_NESTED["alternation"])
        added, reach = 0.0, _NOTHING
        for p in parts:
            reach = _union(reach, p[2])
        for ch in st.chains.values():
            if any(_overlap(p[0], ch.reach) for p in parts):
                self.link(ch)
                added += ch.mult * min(ch.ends, len(parts))
        # Branches that can start alike: every path may go on in all of them.
        out = _merge([self.seq(b, st.fork(), icase) for b in branches], add=True)
        out.paths += added
        self.open("alternation", reach, st.paths, len(parts), out, False)
        return out


_NESTED: Final = {
    "repeat": "nested quantifier",
    "alternation": "quantified alternation with overlapping branches",
    "backreference": "backreference inside a repeat",
}


class _SearchCost:
    """The modelled steps of one search, by subject length; refuses on creation."""

    def __init__(self, parsed: Any) -> None:
        flags = parsed.state.flags
        self.icase = bool(flags & _IGNORECASE)
        items = list(parsed)
        self.shared = _Shared()
        full = _Walk(REGEX_MAX_SUBJECT, self.shared)
        full.run(items, self.icase)  # refuses what is exponential, also in parts that never fail
        self.linked = full.linked
        lead = items[0] if items else None
        self.anchored = lead is not None and lead[0] is _c.AT and (
            lead[1] is _c.AT_BEGINNING_STRING or (lead[1] is _c.AT_BEGINNING and not flags & _MULTILINE)
        )
        # A tail that cannot fail ends the search as soon as a path reaches it:
        # drop it, and keep only the repetitions a final repeat needs.
        while items and _cannot_fail(items[-1], self.icase):
            items.pop()
        if items and items[-1][0] in _REPEATS and _single(items[-1][1][2], self.icase) is not None:
            op, (lo, _, body) = items[-1]
            items[-1] = (op, (lo, lo, body))
        self.items = items
        self.walked: dict[int, float] = {}
        self.totals = [0.0]

    def per_start(self, n: int) -> float:
        """Steps of one attempt with at most n characters left (walked on a grid)."""
        grid = next(g for g in _GRID if g >= n)
        if grid not in self.walked:
            self.walked[grid] = _Walk(grid, self.shared).run(self.items, self.icase) + 1
        return self.walked[grid]

    def total(self, n: int) -> float:
        """Steps of a search of a subject of length n: every start, or only the first."""
        if self.anchored:  # ``re`` tries ``^`` and ``\A`` patterns at position 0 only
            return self.per_start(n)
        while len(self.totals) <= n:
            self.totals.append(self.totals[-1] + self.per_start(len(self.totals)))
        return self.totals[n]

    def cap(self) -> int:
        """The longest subject within the budget; raises _Refused if too short."""
        lo, hi = 0, REGEX_MAX_SUBJECT
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.total(mid) <= REGEX_STEP_BUDGET:
                lo = mid
            else:
                hi = mid - 1
        if lo < REGEX_MIN_SUBJECT:
            raise _Refused("adjacent overlapping repeats" if self.linked else "too many overlapping steps")
        return lo


_GRID: Final = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512,
                576, 640, 704, 768, 832, 896, 960, 1024)


def compile_regex_capped(pattern: str) -> tuple[re.Pattern[str], int]:
    """Compile a MatchRegex operand and find its subject cap: the longest
    subject it may be searched in (REGEX_MAX_SUBJECT for most patterns).
    Raises MalformedFlag for a pattern that does not compile or whose cost
    cannot be bounded (the message names the construct)."""
    if len(pattern) > REGEX_MAX_PATTERN:
        raise MalformedFlag(f"regex longer than {REGEX_MAX_PATTERN} characters")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarnings about set syntax
            compiled = re.compile(pattern)
            parsed = _sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise MalformedFlag(f"regex does not compile: {exc}") from None
    try:
        cap = _SearchCost(parsed).cap()
    except _Refused as exc:
        raise MalformedFlag(f"regex refused ({exc}): its cost could not be bounded") from None
    except RecursionError:
        raise MalformedFlag("regex refused (nesting too deep): its cost could not be bounded") from None
    return compiled, cap


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a MatchRegex operand, refusing unbounded-cost patterns."""
    return compile_regex_capped(pattern)[0]


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
        compiled, cap = compile_regex_capped(pattern)
    except MalformedFlag as exc:
        return _raiser(str(exc))
    search = compiled.search
    too_long = f"regex subject longer than {cap} characters" + (
        "" if cap == REGEX_MAX_SUBJECT else " (the limit for this pattern: its search cost grows faster)"
    )

    def pred(x: str) -> bool:
        if len(x) > cap:
            raise MalformedFlag(too_long)
        return (search(x) is None) if negate else (search(x) is not None)

    return _on_string(prop, pred)


# --------------------------------------------------------------------------- whole rules

# All of a flag's rules (or one rule) are matched by one generated function
# per *shape* -- which test each condition is and which property it reads --
# bound to the rules' operands: ``walk(user, segment_of)`` runs
# ``shape(operands, user, segment_of)``. Operands (property names, values,
# compiled regexes) are read from the tuple, never pasted into source, so the
# source depends only on the shape and flags share these functions. Building
# rules is then a lookup and a tuple (compile() was 90% of building a flag),
# and the garbage collector has two objects to walk, the bound method and the
# operand tuple (a tuple of strings and numbers not even that: the collector
# stops tracking it), instead of a function with its namespace and closures
# per rule and condition. All the functions share one namespace, so the
# interpreter's specialisation of one holds for every flag that uses it.
#
# Inside, a user attribute that several conditions read is looked up once
# (``p0``, ``p1``...: a slot per distinct property, read where it is first
# needed on each path), and rules follow each other without a call. Bounded:
# cleared when full.
#
# Shapes of whole flags vary more than shapes of rules, and compiling one
# costs about as much as building a hundred flags. So the first
# _FLAG_SHAPE_BUDGET flag shapes of a process are compiled when met; after
# that a flag whose shape is not compiled yet walks its rules' own matchers
# in a loop (rule shapes are few) and its shape is compiled the second time
# it is seen. A flag set of many distinct shapes thus pays at most the budget
# in compiles beyond what one matcher per rule costs, and a set of few shapes
# gets the single walk for every flag.
_TEMPLATES: dict[tuple[Any, ...], Callable[..., Any]] = {}
_MAX_TEMPLATES: Final = 4096
_FLAG_SHAPE_BUDGET: Final = 256
_flag_shapes_compiled = [0]
_SEEN: dict[tuple[Any, ...], int] = {}  # flag shapes seen once, not compiled yet
_MAX_SEEN: Final = 16384

# String operators inlined: the expression on ``{x}`` (the attribute's string
# value), ``{V}`` the operand and ``{W}`` a second operand made from it.
_INLINE: Final = {
    "Equal": "{x} == {V}",
    "NotEqual": "{x} != {V}",
    "Contains": "{V} in {x}",
    "NotContain": "{V} not in {x}",
    "StartsWith": "{x}[:{W}] == {V}",  # str.startswith parses its arguments: this is cheaper
    "EndsWith": "{x}[{W}:] == {V}",
    "IsOneOf": "{x} in {V}",
    "NotOneOf": "{x} not in {V}",
    "IsTrue": "{x}.lower() == 'true'",
    "IsFalse": "{x}.lower() == 'false'",
}
# n < bound and so on: the attribute's number on the left.
_NUMERIC: Final = {"LessThan": "<", "LessEqualThan": "<=", "BiggerThan": ">", "BiggerEqualThan": ">="}
_REGEX: Final = frozenset({"MatchRegex", "NotMatchRegex"})
# A list operand this short is kept as a tuple: ``in`` reads it about as fast
# as a frozenset, and a tuple of strings is no work for the garbage collector.
_SHORT_LIST: Final = 4
# Every int of at most this magnitude is exactly a float, so comparing it with
# the float bound gives what comparing float(n) would.
_EXACT_INT: Final = 2**53


class _Unread:
    """A property slot not read yet on this path."""


def number_value(raw: object) -> float | None:
    """A custom attribute's value as a numeric operator reads it (R-43): a
    finite float, or None when it is not a number (absent, a bool, nan,
    inf, an int beyond float range, text that does not parse)."""
    t = type(raw)
    if t is str:
        return parse_number(raw)  # type: ignore[arg-type]
    if t is int or t is float:
        try:
            n = float(raw)  # type: ignore[arg-type]
        except OverflowError:  # an int beyond float range
            return None
        return n if n - n == 0.0 else None  # n - n is nan for nan and inf
    if raw is None or t is bool:
        return None
    return parse_number(str(raw))


def in_any_segment(ids: tuple[str, ...], user: User, segment_of: SegmentOf) -> bool:
    """Is the user in one of these segments? (R-46, R-47)"""
    for seg_id in ids:
        seg = segment_of(seg_id)
        if seg is None:
            # never turn a missing segment into a quiet negative.
            raise MalformedFlag(f"segment {seg_id} is missing or archived")
        if seg.matches(user):
            return True
    return False


def _raise_malformed(message: str) -> bool:
    raise MalformedFlag(message)


_NAMESPACE: Final[dict[str, Any]] = {
    "__builtins__": __builtins__,
    "_str": attr_string,
    "_parse": parse_number,
    "_number": number_value,
    "_raise": _raise_malformed,
    "_in_any": in_any_segment,
    "_U": _Unread,
}

# One condition, as its part of a shape: (step, property, operands). The step
# names the test and how the value is read ("key", "name", or "attr" with the
# property name given separately); operands are what the test reads, in order.
_Step = tuple[str, "str | None", tuple[Any, ...]]
_NEVER: Final[_Step] = ("never", None, ())


def _step(cond: Condition, in_segment: bool) -> _Step:
    """One condition as a step. Decides exactly what :func:`compile_condition` decides."""
    prop, op, operand, error = cond.property, cond.op, cond.operand, cond.error
    if prop in (SEGMENT_IN, SEGMENT_NOT_IN):
        if in_segment:
            return _NEVER  # segments never reference other segments
        if error:
            return "raise", None, (error,)
        if operand is None:
            return _NEVER
        ids = tuple(i.lower() for i in operand)
        return ("in segment" if prop == SEGMENT_IN else "not in segment"), None, (ids,)
    if error:
        return "raise", None, (error,)
    if not prop.strip() or operand is None:
        return _NEVER  # a blank property is absent; R-40: a null operand never matches
    fetch = "key" if prop == "keyId" else "name" if prop == "name" else "attr"
    attr = prop if fetch == "attr" else None
    if op in _NUMERIC:
        bound = parse_number(operand)
        if bound is None:
            return _NEVER  # an operand that is not a number never matches
        return f"{op} {fetch}", attr, (bound,)
    if op in _REGEX:
        try:
            compiled, cap = compile_regex_capped(operand)
        except MalformedFlag as exc:
            return "raise", None, (str(exc),)
        too_long = f"regex subject longer than {cap} characters" + (
            "" if cap == REGEX_MAX_SUBJECT else " (the limit for this pattern: its search cost grows faster)"
        )
        return f"{op} {fetch}", attr, (compiled.search, cap, too_long)
    if op == "StartsWith" or op == "EndsWith":
        if op == "EndsWith" and not operand:
            op = "StartsWith"  # every string ends with "" as it starts with it (x[-0:] would be all of x)
        return f"{op} {fetch}", attr, (operand, len(operand) if op == "StartsWith" else -len(operand))
    if op in _INLINE:
        if op in LIST_OPS:
            operand = tuple(operand) if len(operand) <= _SHORT_LIST else frozenset(operand)
        return f"{op} {fetch}", attr, (operand,)
    return _NEVER  # unknown operators never match


def _build(rules: list[list[Condition]], in_segment: bool, walker: bool) -> WalkParts:
    """The shared function of these rules' shape and their operands: the
    walk is ``fn(operands, user, segment_of)``."""
    props: dict[str, int] = {}  # property -> slot
    shape: list[tuple[str, ...]] = []
    operands: list[Any] = []
    for conds in rules:
        steps: list[str] = []
        for cond in conds:
            step, attr, values = _step(cond, in_segment)
            if attr is not None:
                step = f"{step} {props.setdefault(attr, len(props))}"
            steps.append(step)
            operands += values
            if step == "never" or step == "raise":
                break  # the conditions after it are never reached
        shape.append(tuple(steps))
    key = (walker, len(props), *shape)
    template = _TEMPLATES.get(key)
    if template is None:
        if walker and len(rules) > 1:
            if _flag_shapes_compiled[0] >= _FLAG_SHAPE_BUDGET and key not in _SEEN:
                if len(_SEEN) >= _MAX_SEEN:
                    _SEEN.clear()
                _SEEN[key] = 1
                return _walk_each, tuple(_build([conds], in_segment, walker=False) for conds in rules)
            _SEEN.pop(key, None)
            _flag_shapes_compiled[0] += 1
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.clear()
        template = _TEMPLATES[key] = _template(shape, len(props), walker)
    return template, (*props, *operands)


def _walk_each(matchers: tuple[WalkParts, ...], u: User, s: SegmentOf) -> int:
    """A walk over rules' own matchers: what a flag of a shape not compiled yet uses."""
    i = 0
    for match, operands in matchers:
        if match(operands, u, s):
            return i
        i += 1
    return -1


def compile_rule(conds: list[Condition], *, in_segment: bool = False) -> Test:
    """All of a rule's conditions as one matcher (R-38: AND, first failure stops).

    Agrees with running each condition's :func:`compile_condition` test in
    order (tests/test_operators.py checks it on generated rules).
    """
    if not conds:
        return _always
    match: Test = MethodType(*_build([conds], in_segment, walker=False))
    return match


Walk = Callable[[User, SegmentOf], int]


def compile_rules(rules: list[list[Condition]], *, in_segment: bool = False) -> Walk:
    """A list of rules as one function: ``walk(user, segment_of)`` is the
    index of the first rule whose conditions all hold (R-38), or -1. Rules
    are tried in order; a condition that raises :class:`MalformedFlag`
    raises from the walk, as it would from the rule's own matcher."""
    walk: Walk = MethodType(*compile_walk(rules, in_segment=in_segment))
    return walk


def compile_walk(rules: list[list[Condition]], *, in_segment: bool = False) -> WalkParts:
    """:func:`compile_rules` in its two parts, the shape's shared function
    and the rules' operands: ``fn(operands, user, segment_of)``. What a
    compiled flag keeps: a bound method is an object the garbage collector
    must track (and may never be untracked), a tuple of operands is not
    (see model.settle)."""
    if not rules:
        return _NO_RULES
    return _build(rules, in_segment, walker=True)


def _template(shape: list[tuple[str, ...]], n_props: int, walker: bool) -> Callable[..., Any]:
    """The source of one shape: ``match(V, u, s)``; V holds the property
    names (slots 0..n_props-1), then every step's operands in order.

    Slot k's value has three forms, each computed where first needed on a
    path and then kept in a local: ``pk`` as the user gave it, ``sk`` as the
    string operators read it and ``nk`` as the numeric ones do (None:
    absent, or not a number). Where a form may or may not have been computed
    on the way, it starts as ``_U`` and is computed if still that.
    """
    body: list[str] = []
    j = n_props  # the next operand
    done: set[str] = set()  # forms computed on every path to here
    maybe: set[str] = set()  # forms computed on some path to here
    unread: set[str] = set()  # forms that need the "not computed yet" mark
    compute = {
        "p": "a.get(V[{k}])",
        "s": "p{k} if type(p{k}) is str else _str(p{k})",
        "n": f"p{{k}} if type(p{{k}}) is int and -{_EXACT_INT} <= p{{k}} <= {_EXACT_INT} else _number(p{{k}})",
    }
    for r, steps in enumerate(shape):
        if walker:
            body.append(f"    while True:  # rule {r}")
            ind, fail, win = "        ", "break", f"return {r}"
        else:
            ind, fail, win = "    ", "return False", "return True"
        lines: list[str] = []
        out = lines.append
        rule_done = set(done)
        first_step: set[str] = set()

        def need(form: str, k: int) -> str:
            name, raw = f"{form}{k}", f"p{k}"
            if name in rule_done:  # noqa: B023 - used before the loop moves on
                return name
            value = compute[form].format(k=k)
            if form != "p" and name in maybe and raw not in rule_done:  # noqa: B023
                # Read the value only if this form is still to be computed.
                out(f"if {name} is _U:")  # noqa: B023
                if raw in maybe:
                    out(f"    if {raw} is _U: {raw} = {compute['p'].format(k=k)}")  # noqa: B023
                    unread.add(raw)
                else:
                    out(f"    {raw} = {compute['p'].format(k=k)}")  # noqa: B023
                    maybe.add(raw)
                out(f"    {name} = {value}")  # noqa: B023
                unread.add(name)
            else:
                if form != "p":
                    need("p", k)
                if name in maybe:
                    out(f"if {name} is _U: {name} = {value}")  # noqa: B023
                    unread.add(name)
                else:
                    out(f"{name} = {value}")  # noqa: B023
            rule_done.add(name)  # noqa: B023
            maybe.add(name)
            return name

        for i, step in enumerate(steps):
            if step == "never":
                out(fail)
                break
            if step == "raise":
                out(f"_raise(V[{j}])")
                j += 1
                break
            if step.endswith("in segment"):
                out(f"if {'not ' if step == 'in segment' else ''}_in_any(V[{j}], u, s): {fail}")
                j += 1
                continue
            op, fetch, *slot = step.split(" ")
            before = set(rule_done)
            if op in _NUMERIC:
                if slot:
                    n = need("n", int(slot[0]))
                    out(f"if {n} is None or not ({n} {_NUMERIC[op]} V[{j}]): {fail}")
                else:
                    out(f"x = _parse(u.{fetch})")
                    out(f"if x is None or not (x {_NUMERIC[op]} V[{j}]): {fail}")
                j += 1
            else:
                if slot:
                    x = need("s", int(slot[0]))
                    out(f"if {x} is None: {fail}")
                else:
                    x = f"u.{fetch}"
                if op in _REGEX:
                    out(f"if len({x}) > V[{j + 1}]: _raise(V[{j + 2}])")
                    out(f"if V[{j}]({x}) is {'' if op == 'MatchRegex' else 'not '}None: {fail}")
                    j += 3
                elif op == "StartsWith" or op == "EndsWith":
                    out(f"if not ({_INLINE[op].format(x=x, V=f'V[{j}]', W=f'V[{j + 1}]')}): {fail}")
                    j += 2
                else:
                    out(f"if not ({_INLINE[op].format(x=x, V=f'V[{j}]')}): {fail}")
                    j += 1
            if i == 0:
                first_step = rule_done - before
        else:
            out(win)
        body += [ind + line for line in lines]
        done |= first_step  # a rule's first condition always runs
    if walker:
        body.append("    return -1")
    head = ["def match(V, u, s):"]
    if n_props:
        head.append("    a = u.attrs")
    if unread:
        head.append("    " + " = ".join(sorted(unread)) + " = _U")
    namespace = dict(_NAMESPACE)  # exec adds "match"; the function runs with the shared namespace
    exec(compile("\n".join(head + body), "<rules>", "exec"), namespace)  # fixed template: operands are never source
    template: Callable[..., Any] = FunctionType(namespace["match"].__code__, _NAMESPACE, "match")
    return template


def _always(u: User, segment_of: SegmentOf) -> bool:
    return True


def _no_rule_walk(operands: tuple[()], u: User, segment_of: SegmentOf) -> int:
    return -1


_NO_RULES: Final[WalkParts] = (_no_rule_walk, ())
