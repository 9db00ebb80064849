"""Flag evaluation: a pure function of (flag, user, segment lookup) (R-36..R-56).

``evaluate`` returns a :class:`Decision` and never logs, records events,
reads a clock or touches configuration; the client turns decisions into
values, details and events. Malformed data inside the flag (a dangling
variation id, a rule with no matching rollout, an invalid operand, a missing
segment) becomes an ``Error`` decision for that flag only (R-37, R-42, R-47).

The experiment flag (``sendToExperiment``, R-54/R-55) costs a second MD5, and
only events need it, so the decision carries what is needed to compute it and
:func:`send_to_experiment` does the work when an event is recorded.
"""

from __future__ import annotations

from typing import NamedTuple, Union

from .model import ALWAYS, RANGE, Flag, Rollout, Variation
from .operators import MalformedFlag, SegmentOf
from .results import REASON_FALLTHROUGH, REASON_OFF, REASON_RULE, REASON_TARGET, ReasonKind
from .rollout import bucket, in_rollout
from .user import User

# True/False, or (dispatch_input, upper) still to be hashed.
ExperimentSpec = Union[bool, tuple[str, float]]


class Decision(NamedTuple):
    """The outcome of one evaluation."""

    kind: ReasonKind
    variation: Variation | None  # None: kind Error, the caller's default is served
    reason: str  # the reason text (fbclient's where it has one, R-87)
    rule: str  # the matching rule's name, or ""
    experiment: ExperimentSpec  # sendToExperiment, or what to hash for it (send_to_experiment)


_decision = tuple.__new__  # builds a Decision without NamedTuple's keyword-parsing __new__ (hot path)

OFF = ReasonKind.OFF
TARGET_MATCH = ReasonKind.TARGET_MATCH
RULE_MATCH = ReasonKind.RULE_MATCH
FALLTHROUGH = ReasonKind.FALLTHROUGH
ERROR = ReasonKind.ERROR


def _malformed(message: str) -> Decision:
    return _decision(Decision, (ERROR, None, f"malformed flag: {message}", "", False))


def _select(flag: Flag, rollout: Rollout, user: User) -> tuple[Variation, ExperimentSpec] | None:
    """The first rollout part that takes the user (R-52), with its expt spec."""
    dispatch_input: str | None = None
    b = -1.0
    if rollout.needs_bucket:
        dispatch_input = rollout.dispatch_input(flag.key, user)
        b = bucket(dispatch_input)
    for part in rollout.parts:
        mode = part.mode
        if mode == ALWAYS or (mode == RANGE and part.lo <= b <= part.hi):
            var = part.variation
            if var is None:
                raise MalformedFlag("rollout names a variation that does not exist")
            # sendToExperiment for a rule match or the fallthrough.
            if flag.expt_all:
                return var, True
            if not rollout.in_expt or part.expt_upper is None:
                return var, False
            if dispatch_input is None:
                dispatch_input = rollout.dispatch_input(flag.key, user)
            return var, (dispatch_input, part.expt_upper)
    return None


def evaluate(flag: Flag, user: User, segment_of: SegmentOf) -> Decision:
    """R-36 decision order, for an active flag and a validated user."""
    try:
        if not flag.enabled:
            if flag.off is None:
                return _malformed("disabledVariationId does not exist")
            return _decision(Decision, (OFF, flag.off, REASON_OFF, "", False))
        targets = flag.targets
        if targets and user.key in targets:
            var = targets[user.key]
            if var is None:
                return _malformed("target names a variation that does not exist")
            return _decision(Decision, (TARGET_MATCH, var, REASON_TARGET, "", flag.expt_all))
        for rule in flag.rules:
            if rule.match(user, segment_of):
                picked = _select(flag, rule.rollout, user)
                if picked is None:
                    # never fall through to later rules or the fallthrough.
                    return _malformed(f"rule {rule.name!r} has no rollout for this user")
                return _decision(Decision, (RULE_MATCH, picked[0], REASON_RULE, rule.name, picked[1]))
        picked = _select(flag, flag.fallthrough, user)
        if picked is None:
            return _malformed("fallthrough has no rollout for this user")
        return _decision(Decision, (FALLTHROUGH, picked[0], REASON_FALLTHROUGH, "", picked[1]))
    except MalformedFlag as exc:
        return _malformed(str(exc))


def send_to_experiment(spec: ExperimentSpec) -> bool:
    """Resolve a decision's experiment spec (R-55): a separate "expt" bucket."""
    if spec is True or spec is False:
        return spec
    dispatch_input, upper = spec
    return in_rollout("expt" + dispatch_input, 0.0, upper)
