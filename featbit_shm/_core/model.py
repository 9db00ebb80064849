"""Evaluable flags and segments, built from the normalised rows of :mod:`.schema`.

Building happens once per stored entity (in the process that evaluates;
:mod:`.view` keeps what was built while the entity's bytes stay the same),
so everything that can be precomputed is: the target map, compiled condition
tests, rollout modes, experiment bounds and each variation's value converted
by the flag's ``variationType``. Objects are read-only after construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple, Union

from .operators import Test, compile_rule
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
from .rollout import WHOLE_RANGE_TOLERANCE, empty_range, experiment_upper, in_rollout, whole_range
from .schema import FlagEntry, RolloutPart, SegmentEntry
from .user import User

ALWAYS: Final = 0
NEVER: Final = 1
RANGE: Final = 2



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

    __slots__ = ("rollout", "upper")

    def __init__(self, rollout: Rollout, upper: float) -> None:
        self.rollout = rollout
        self.upper = upper

    def includes(self, flag_key: str, user: User) -> bool:
        return in_rollout("expt" + self.rollout.dispatch_input(flag_key, user), 0.0, self.upper)


# sendToExperiment: known for every user, or decided per user.
ExperimentSpec = Union[bool, ExperimentRange]


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


class Part:
    """One rollout variation: ``[lo, hi]`` of the bucket range (R-52), and
    the decision it gives when sendToExperiment does not depend on the user."""

    __slots__ = ("variation", "lo", "hi", "mode", "expt_upper", "decision")

    def __init__(self, variation: Variation | None, lo: float, hi: float, expt: float) -> None:
        self.variation = variation
        self.lo = lo
        self.hi = hi
        self.mode = ALWAYS if whole_range(lo, hi) else NEVER if empty_range(lo, hi) else RANGE
        self.expt_upper = experiment_upper(lo, hi, expt)
        self.decision: Decision | None = None  # set by Flag._rollout; None: a dangling variation id


class Rollout:
    """A rule's or the fallthrough's rollout with its dispatch settings."""

    __slots__ = ("dispatch_key", "in_expt", "parts", "needs_bucket")

    def __init__(self, dispatch_key: str | None, in_expt: bool, parts: tuple[Part, ...]) -> None:
        self.dispatch_key = dispatch_key
        self.in_expt = in_expt
        self.parts = parts
        # No bucket is needed when an ALWAYS part comes before any RANGE part.
        needs = False
        for p in parts:
            if p.mode == ALWAYS:
                break
            if p.mode == RANGE:
                needs = True
                break
        self.needs_bucket = needs

    def dispatch_input(self, flag_key: str, user: User) -> str:
        """R-48/R-49: ``flag.key`` + the dispatch attribute ("" when absent)."""
        if self.dispatch_key is None:
            return flag_key + user.key
        return flag_key + (user.value_of(self.dispatch_key) or "")


class Rule:
    __slots__ = ("name", "match", "rollout")

    def __init__(self, name: str, match: Test, rollout: Rollout) -> None:
        self.name = name
        self.match = match  # all conditions of the rule
        self.rollout = rollout


class Flag:
    """An evaluable flag. ``norm`` keeps the normalised form it came from."""

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
        "variations",
        "targets",
        "rules",
        "fallthrough",
        "static",
        "static_expt",
        "static_decision",
        "off_decision",
        "details",
        "norm",
    )

    def __init__(self, norm: FlagEntry) -> None:
        self.norm = norm
        self.key: str = norm["key"]
        self.id: str = norm["id"]
        self.name: str = norm["name"]
        self.variation_type: str = norm["type"]
        self.version: int = norm["version"]
        self.enabled: bool = norm["enabled"]
        self.expt_all: bool = norm["expt_all"]
        vtype = self.variation_type
        variations: dict[str, Variation] = {}
        for v in norm["variations"]:
            variations.setdefault(v.id, Variation(v.id, v.value, vtype))
        self.variations = variations
        self.off_id: str = norm["off"]
        self.off = variations.get(self.off_id)
        self.off_decision = None if self.off is None else Decision(ReasonKind.OFF, self.off, REASON_OFF, "", False)
        # Targets in stored order; the first target listing a key wins.
        # A dangling variation id maps to None: "malformed flag".
        targets: dict[str, Decision | None] = {}
        for target in norm["targets"]:
            var = variations.get(target.variation_id)
            decision = None if var is None else Decision(ReasonKind.TARGET_MATCH, var, REASON_TARGET, "", self.expt_all)
            for k in target.keys:
                targets.setdefault(k, decision)
        self.targets = targets
        self.rules = tuple(
            Rule(
                rule.name,
                compile_rule(rule.conditions),
                self._rollout(rule.dispatch_key, rule.in_expt, rule.rollout, ReasonKind.RULE_MATCH, REASON_RULE, rule.name),
            )
            for rule in norm["rules"]
        )
        fall = norm["fallthrough"]
        self.fallthrough = self._rollout(fall.dispatch_key, fall.in_expt, fall.rollout, ReasonKind.FALLTHROUGH, REASON_FALLTHROUGH, "")
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
            first = next((p for p in self.fallthrough.parts if p.mode == ALWAYS), None)
            self.static = first.variation if first is not None else None
            self.static_decision = first.decision if first is not None else None
            if first is not None:
                if self.expt_all:
                    self.static_expt = True
                elif not self.fallthrough.in_expt or first.expt_upper is None:
                    self.static_expt = False
                elif first.expt_upper >= 1 - WHOLE_RANGE_TOLERANCE:
                    self.static_expt = True  # R-52 shortcut: [0, ~1] takes everyone

    def _rollout(
        self, dispatch_key: str | None, in_expt: bool, parts: list[RolloutPart], kind: ReasonKind, reason: str, rule: str
    ) -> Rollout:
        built = tuple(Part(self.variations.get(p.variation_id), p.lo, p.hi, p.expt_rollout) for p in parts)
        rollout = Rollout(dispatch_key, in_expt, built)
        for part in built:
            if part.variation is None:
                continue  # evaluation reports a malformed flag
            # sendToExperiment is constant unless the part's experiment
            # range splits users; then it is decided per user.
            expt: ExperimentSpec
            if self.expt_all:
                expt = True
            elif not in_expt or part.expt_upper is None:
                expt = False
            else:
                expt = ExperimentRange(rollout, part.expt_upper)
            part.decision = Decision(kind, part.variation, reason, rule, expt)
        return rollout

    def __repr__(self) -> str:
        return f"Flag({self.key!r}, version={self.version})"


#: An out-of-line key list, compiled: (key set, added keys, removed keys);
#: a key is listed when it is added, or in the set and not removed.
Layers = tuple[frozenset[str], frozenset[str], frozenset[str]]
_NONE: Final[frozenset[str]] = frozenset()


class Segment:
    """An evaluable segment (R-46)."""

    __slots__ = ("id", "version", "included", "excluded", "rules", "norm")

    def __init__(self, norm: SegmentEntry) -> None:
        self.norm = norm
        self.id: str = norm["id"]
        self.version: int = norm["version"]
        self.included: frozenset[str] = frozenset(norm["included"])
        self.excluded: frozenset[str] = frozenset(norm["excluded"])
        self.rules = tuple(compile_rule(rule, in_segment=True) for rule in norm["rules"])

    def matches(self, user: User) -> bool:
        key = user.key
        if key in self.excluded:  # exclusion wins over inclusion
            return False
        if key in self.included:
            return True
        for match in self.rules:
            if match(user, _no_segments):
                return True
        return False


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
        for match in self.rules:
            if match(user, _no_segments):
                return True
        return False


def _no_segments(seg_id: str) -> None:
    return None


def is_tombstone(norm: FlagEntry | SegmentEntry) -> bool:
    return bool(norm.get("archived"))


__all__ = ["Decision", "ExperimentRange", "ExperimentSpec", "Flag", "LayeredSegment", "Layers", "Segment", "Variation", "Part", "Rollout", "Rule", "is_tombstone", "WRONG_TYPE"]
