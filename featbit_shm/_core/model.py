"""Evaluable flags and segments, built from the normalised rows of :mod:`.schema`.

Building happens once per stored entity (in the process that evaluates;
:mod:`.view` keeps what was built while the entity's bytes stay the same),
so everything that can be precomputed is: the target map, the walk over the
rules' conditions, rollout bounds, experiment bounds and each variation's
value converted by the flag's ``variationType``. Objects are read-only after
construction.

A worker may hold 100k of these for its lifetime, and every full garbage
collection walks each object that can hold references. So a compiled flag
holds few (12 for a flag with a target, a rule and a split): no decoded
copy of what it was built from (``source`` keeps it packed), no object per
rollout part (tuples of numbers), one tuple of all its prebuilt decisions
that targets and rollouts index, and a rule walk that is a shared function
bound to a tuple of operands.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import MethodType
from typing import Any, Final, NamedTuple, Union

import msgpack

from .operators import Walk, compile_walk
from .results import (
    CONVERTERS,
    REASON_FALLTHROUGH,
    REASON_OFF,
    REASON_RULE,
    REASON_TARGET,
    WRONG_TYPE,
    ReasonKind,
    to_str,
)
from .rollout import empty_range, experiment_upper, in_rollout, whole_range
from .schema import FlagEntry, RolloutPart, SegmentEntry, flag_entry
from .schema import Rule as RuleEntry
from .user import User


class Variation:
    """One variation: its id, raw string value and the pre-converted value."""

    __slots__ = ("id", "value", "typed", "reparse")

    def __init__(self, var_id: str, value: str, vtype: str) -> None:
        self.id = var_id
        self.value = value
        convert = CONVERTERS.get(vtype, to_str)
        typed = convert(value)
        # A parsed JSON object or list is mutable: re-parse it per call so no
        # caller can change what the next caller sees.
        self.reparse = vtype == "json" and isinstance(typed, (dict, list))
        self.typed = typed

    def converted(self) -> Any:
        """The value converted by the flag's variationType, or WRONG_TYPE."""
        if self.reparse:
            return CONVERTERS["json"](self.value)
        return self.typed

    def __repr__(self) -> str:
        return f"Variation({self.id!r}, {self.value!r})"


class ExperimentRange:
    """sendToExperiment of a rollout part whose experiment range splits users
    (R-55): a second, "expt"-prefixed bucket, hashed only when an event is
    recorded (only events need it)."""

    __slots__ = ("dispatch_key", "upper")

    def __init__(self, dispatch_key: str | None, upper: float) -> None:
        self.dispatch_key = dispatch_key
        self.upper = upper

    def includes(self, flag_key: str, user: User) -> bool:
        return in_rollout("expt" + dispatch_input(self.dispatch_key, flag_key, user), 0.0, self.upper)


# sendToExperiment: known for every user, or decided per user.
ExperimentSpec = Union[bool, ExperimentRange]


def dispatch_input(dispatch_key: str | None, flag_key: str, user: User) -> str:
    """R-48/R-49: ``flag.key`` + the dispatch attribute ("" when absent)."""
    if dispatch_key is None:
        return flag_key + user.key
    return flag_key + (user.value_of(dispatch_key) or "")


class Decision(NamedTuple):
    """The outcome of one evaluation (:func:`.evaluator.evaluate`).

    No outcome depends on the user beyond which branch was taken, so a
    compiled :class:`Flag` builds every one once: evaluation hands back a
    prebuilt Decision and allocates nothing (only a malformed flag's error
    decision is built when it happens).
    """

    kind: ReasonKind
    variation: Variation | None  # None: kind Error, the caller's default is served
    reason: str  # the reason text (fbclient's where it has one, R-87)
    rule: str  # the matching rule's name, or ""
    experiment: ExperimentSpec  # sendToExperiment, or how to decide it per user (evaluator.send_to_experiment)


# A part's bucket range, widened so that one comparison ``lo <= b <= hi``
# decides it for every b in [0, 1]: R-52's two shortcuts (a part that takes
# everyone, one that takes nobody) become ranges that hold every bucket, or
# none.
_EVERYONE: Final = (-1.0, 2.0)
_NOBODY: Final = (2.0, -1.0)
_NO_BUCKET: Final = 0.5  # what a rollout that needs no bucket compares: any b in [0, 1] would do


class Rollout:
    """A rule's or the fallthrough's rollout with its dispatch settings.

    Its parts are held as two tuples of numbers (no object per part, which
    the garbage collector would walk for as long as the flag lives): part i
    takes the users whose bucket b has ``los[i] <= b <= his[i]`` (R-52, see
    ``_EVERYONE``) and gives the flag's ``decisions[first + i]``, None for a
    variation id that does not exist (R-37). ``needs_bucket`` is False when a
    part that takes everyone comes before any part that takes some: then no
    bucket is hashed, and ``taker`` is the part every user gets (-1: none).
    """

    __slots__ = ("dispatch_key", "in_expt", "needs_bucket", "taker", "first", "los", "his")

    def __init__(
        self,
        dispatch_key: str | None,
        in_expt: bool,
        parts: list[RolloutPart],
        variation: Callable[[str], Variation | None],
        kind: ReasonKind,
        reason: str,
        rule: str,
        expt_all: bool,
        decisions: list[Decision | None],
    ) -> None:
        self.dispatch_key = dispatch_key
        self.in_expt = in_expt
        self.first = len(decisions)  # this rollout's decisions follow, one per part
        los: list[float] = []
        his: list[float] = []
        needs: bool | None = None
        for p in parts:
            lo, hi = p.lo, p.hi
            if whole_range(lo, hi):
                lo, hi = _EVERYONE
                if needs is None:
                    needs = False
            elif empty_range(lo, hi):
                lo, hi = _NOBODY
            elif needs is None:
                needs = True
            los.append(lo)
            his.append(hi)
            var = variation(p.variation_id)
            if var is None:
                decisions.append(None)  # evaluation reports a malformed flag
                continue
            # sendToExperiment is constant unless the part's experiment
            # range splits users; then it is decided per user. A range
            # from 0 to about 1 takes everyone (R-52's shortcut).
            expt: ExperimentSpec
            if expt_all:
                expt = True
            elif not in_expt:
                expt = False
            else:
                upper = experiment_upper(p.lo, p.hi, p.expt_rollout)
                if upper is None:
                    expt = False
                elif whole_range(0.0, upper):
                    expt = True
                else:
                    expt = ExperimentRange(dispatch_key, upper)
            decisions.append(Decision(kind, var, reason, rule, expt))
        self.needs_bucket = bool(needs)
        self.taker = -1
        if not needs:
            self.taker = next((i for i, lo in enumerate(los) if lo <= _NO_BUCKET <= his[i]), -1)
        self.los = tuple(los)
        self.his = tuple(his)

    def dispatch_input(self, flag_key: str, user: User) -> str:
        """R-48/R-49: ``flag.key`` + the dispatch attribute ("" when absent)."""
        return dispatch_input(self.dispatch_key, flag_key, user)


class Rule(Rollout):
    """A flag rule's name and rollout; its conditions are matched by the
    flag's ``walk`` (R-38)."""

    __slots__ = ("name",)

    def __init__(
        self,
        rule: RuleEntry,
        variation: Callable[[str], Variation | None],
        expt_all: bool,
        decisions: list[Decision | None],
    ) -> None:
        kind, reason, name = ReasonKind.RULE_MATCH, REASON_RULE, rule.name
        super().__init__(
            rule.dispatch_key, rule.in_expt, rule.rollout, variation, kind, reason, name, expt_all, decisions
        )
        self.name = rule.name


class Flag:
    """An evaluable flag.

    What it was built from is kept packed (``source``: the flag's msgpack
    bytes as the snapshot stores them, which ``schema.flag_entry`` reads
    back; bytes the garbage collector never walks), not decoded: a compiled
    flag is reused while that is equal (:mod:`.view`), and ``norm`` decodes
    it again for whoever wants to look. A flag built without ``source`` keeps
    the normalised form it was given (its owner, a data set, holds it anyway).
    """

    __slots__ = (
        "key",
        "id",
        "name",
        "variation_type",
        "version",
        "enabled",
        "off",
        "off_id",
        "expt_all",
        "targets",
        "decisions",
        "rules",
        "walk_fn",
        "walk_ops",
        "fallthrough",
        "static",
        "static_expt",
        "static_decision",
        "off_decision",
        "details",
        "source",
        "_norm",
    )

    def __init__(self, norm: FlagEntry, source: bytes | None = None) -> None:
        self.source = source
        self._norm = norm if source is None else None
        self.key: str = norm["key"]
        self.id: str = norm["id"]
        self.name: str = norm["name"]
        self.variation_type: str = norm["type"]
        self.version: int = norm["version"]
        self.enabled: bool = norm["enabled"]
        self.expt_all: bool = norm["expt_all"]
        expt_all = self.expt_all
        vtype = self.variation_type
        # Variations are built when something refers to them (the first one
        # listed under an id wins).
        listed: dict[str, str] = {}
        for v in norm["variations"]:
            listed.setdefault(v.id, v.value)
        built: dict[str, Variation] = {}

        def variation(var_id: str) -> Variation | None:
            var = built.get(var_id)
            if var is None and var_id in listed:
                var = built[var_id] = Variation(var_id, listed[var_id], vtype)
            return var

        self.off_id: str = norm["off"]
        self.off = variation(self.off_id)
        # Only a disabled flag serves its off variation (a flag is replaced, never changed).
        off = self.off
        self.off_decision = (
            None if off is None or self.enabled else Decision(ReasonKind.OFF, off, REASON_OFF, "", False)
        )
        # Every prebuilt decision of targets and rollouts, in one tuple
        # (``decisions``); targets and rollouts refer to theirs by index.
        # None stands for a dangling variation id: "malformed flag".
        decisions: list[Decision | None] = []
        # Targets in stored order; the first target listing a key wins.
        # Key -> index in ``decisions``: a dict of strings and ints, which the
        # garbage collector does not track.
        targets: dict[str, int] = {}
        for target in norm["targets"]:
            var = variation(target.variation_id)
            index = len(decisions)
            decisions.append(
                None if var is None else Decision(ReasonKind.TARGET_MATCH, var, REASON_TARGET, "", expt_all)
            )
            for k in target.keys:
                targets.setdefault(k, index)
        self.targets = targets
        self.rules = tuple(Rule(rule, variation, expt_all, decisions) for rule in norm["rules"])
        # walk_fn(walk_ops, user, segment_of): the index of the first rule
        # whose conditions hold, or -1 (the shape's shared function and this
        # flag's operands, kept apart: see settle()).
        self.walk_fn, self.walk_ops = compile_walk([rule.conditions for rule in norm["rules"]])
        fall = norm["fallthrough"]
        kind, reason = ReasonKind.FALLTHROUGH, REASON_FALLTHROUGH
        self.fallthrough = Rollout(
            fall.dispatch_key, fall.in_expt, fall.rollout, variation, kind, reason, "", expt_all, decisions
        )
        self.decisions = tuple(decisions)
        # The variation every user gets when the result cannot depend on the
        # user (flag off, or no targets, no rules and a whole-range
        # fallthrough), so evaluation can skip the decision steps.
        self.static: Variation | None = None
        # sendToExperiment for the static variation when it, too, cannot
        # depend on the user; None means "hash per user".
        self.static_expt: bool | None = None
        # The decision every user gets then (None: evaluate), whose
        # experiment may still be decided per user (an ExperimentRange).
        self.static_decision: Decision | None = None
        # Results built from this flag's decisions: id(decision) ->
        # (decision, result), a cache the caller fills (the client's prebuilt
        # EvalDetails), so it lives and dies with the decisions it was built from.
        self.details: dict[int, tuple[Decision, Any]] = {}
        if not self.enabled:
            self.static = self.off
            self.static_expt = False
            self.static_decision = self.off_decision
        elif not targets and not self.rules and not self.fallthrough.needs_bucket:
            taker = self.fallthrough.taker
            decision = self.decisions[self.fallthrough.first + taker] if taker >= 0 else None
            self.static_decision = decision
            if decision is not None:
                self.static = decision.variation
                expt = decision.experiment
                self.static_expt = expt if expt is True or expt is False else None

    @property
    def walk(self) -> Walk:
        """``walk(user, segment_of)``: the rule walk as one callable (evaluation calls its parts)."""
        return MethodType(self.walk_fn, self.walk_ops)

    @property
    def norm(self) -> FlagEntry:
        """The normalised form this flag was built from."""
        if self._norm is not None:
            return self._norm
        assert self.source is not None
        return flag_entry(msgpack.unpackb(self.source, raw=False, strict_map_key=True))

    def __repr__(self) -> str:
        return f"Flag({self.key!r}, version={self.version})"


#: An out-of-line key list, compiled: (key set, added keys, removed keys);
#: a key is listed when it is added, or in the set and not removed.
Layers = tuple[frozenset[str], frozenset[str], frozenset[str]]
_NONE: Final[frozenset[str]] = frozenset()


class Segment:
    """An evaluable segment (R-46)."""

    __slots__ = ("id", "version", "included", "excluded", "walk_fn", "walk_ops", "norm")

    def __init__(self, norm: SegmentEntry) -> None:
        self.norm = norm
        self.id: str = norm["id"]
        self.version: int = norm["version"]
        self.included: frozenset[str] = frozenset(norm["included"])
        self.excluded: frozenset[str] = frozenset(norm["excluded"])
        self.walk_fn, self.walk_ops = compile_walk(norm["rules"], in_segment=True)  # the first matching rule, or -1

    def matches(self, user: User) -> bool:
        key = user.key
        if key in self.excluded:  # exclusion wins over inclusion
            return False
        if key in self.included:
            return True
        return self.walk_fn(self.walk_ops, user, _no_segments) >= 0


class LayeredSegment(Segment):
    """A segment whose lists are (partly) a shared key set plus a delta:
    what a worker builds from a segment stored with key sets, in time that
    grows with the delta, not the list."""

    __slots__ = ("included_added", "included_removed", "excluded_added", "excluded_removed")

    def __init__(self, norm: SegmentEntry, layers: Mapping[str, Layers]) -> None:
        super().__init__(norm)
        self.included_added = self.included_removed = self.excluded_added = self.excluded_removed = _NONE
        if "included" in layers:
            self.included, self.included_added, self.included_removed = layers["included"]
        if "excluded" in layers:
            self.excluded, self.excluded_added, self.excluded_removed = layers["excluded"]

    def matches(self, user: User) -> bool:
        key = user.key
        if key in self.excluded_added or (key in self.excluded and key not in self.excluded_removed):
            return False
        if key in self.included_added or (key in self.included and key not in self.included_removed):
            return True
        return self.walk_fn(self.walk_ops, user, _no_segments) >= 0


def _no_segments(seg_id: str) -> None:
    return None


def is_tombstone(norm: FlagEntry | SegmentEntry) -> bool:
    return bool(norm.get("archived"))


__all__ = [
    "Decision",
    "ExperimentRange",
    "ExperimentSpec",
    "Flag",
    "LayeredSegment",
    "Layers",
    "Segment",
    "Variation",
    "Rollout",
    "Rule",
    "dispatch_input",
    "is_tombstone",
    "WRONG_TYPE",
]


try:
    # By name, as user.py imports _fastuser (import checkers would resolve
    # ``from ._untrack`` to the root package).
    _c_untrack = importlib.import_module(f"{__package__}._untrack").untrack
except ImportError:  # pragma: no cover - built without a C compiler: everything stays tracked
    _c_untrack = None

#: The model's classes whose instances settle() may untrack (with exact
#: tuples, frozensets, dicts and lists); anything else it meets stays tracked.
_SETTLED: tuple[type, ...] = (Flag, Segment, LayeredSegment, Variation, Decision, Rule, Rollout, ExperimentRange)


def settle(obj: object, also: tuple[type, ...] = ()) -> None:
    """Take a compiled flag or segment, or a result kept in one, out of the
    cycle collector's view (with the C accelerator; else a no-op).

    A compiled flag is a tree of immutable objects (a dozen) that only its
    view refers to, so it can be in no reference cycle, and reference
    counting frees it. Left tracked, every full collection walks all of
    them: about 0.4 s for a worker that has evaluated 100k flags, at any
    moment of its life. ``also`` names further classes of the tree (the
    client's shared results). See ``_untrack.c`` for why this is safe.
    """
    if _c_untrack is not None:
        _c_untrack(obj, _SETTLED + also if also else _SETTLED)
