"""Flag evaluation: a pure function of (flag, user, segment lookup) (R-36..R-56).

``evaluate`` returns a :class:`~.model.Decision` (prebuilt by the compiled
flag in almost every case, so evaluating allocates nothing) and never logs, records events,
reads a clock or touches configuration; the client turns decisions into
values, details and events. Malformed data inside the flag (a dangling
variation id, a rule with no matching rollout, an invalid operand, a missing
segment) becomes an ``Error`` decision for that flag only (R-37, R-42, R-47).

The experiment flag (``sendToExperiment``, R-54/R-55) costs a second MD5, and
only events need it, so a decision whose experiment range splits users carries
an :class:`~.model.ExperimentRange` and :func:`send_to_experiment` hashes when
an event is recorded.
"""

from __future__ import annotations

from .model import Decision, ExperimentSpec, Flag, Rollout
from .operators import MalformedFlag, SegmentOf
from .results import ReasonKind
from .rollout import bucket
from .user import User

ERROR = ReasonKind.ERROR


def _malformed(message: str) -> Decision:
    return Decision(ERROR, None, f"malformed flag: {message}", "", False)


def _select(flag: Flag, rollout: Rollout, user: User) -> Decision | None:
    """The prebuilt decision of the first rollout part that takes the user (R-52)."""
    if rollout.needs_bucket:
        key = rollout.dispatch_key  # as model.dispatch_input
        b = bucket(flag.key + (user.key if key is None else user.value_of(key) or ""))
        his = rollout.his
        i = 0
        for lo in rollout.los:
            if lo <= b <= his[i]:
                break
            i += 1
        else:
            return None
    else:
        i = rollout.taker
        if i < 0:
            return None
    decision = flag.decisions[rollout.first + i]
    if decision is None:
        raise MalformedFlag("rollout names a variation that does not exist")
    return decision


def evaluate(flag: Flag, user: User, segment_of: SegmentOf) -> Decision:
    """R-36 decision order, for an active flag and a validated user."""
    try:
        if not flag.enabled:
            off = flag.off_decision
            return off if off is not None else _malformed("disabledVariationId does not exist")
        targets = flag.targets
        if targets and user.key in targets:
            target = flag.decisions[targets[user.key]]
            return target if target is not None else _malformed("target names a variation that does not exist")
        rules = flag.rules
        if rules:
            i = flag.walk_fn(flag.walk_ops, user, segment_of)
            if i >= 0:
                rule = rules[i]
                picked = _select(flag, rule, user)
                # never fall through to later rules or the fallthrough.
                return picked if picked is not None else _malformed(f"rule {rule.name!r} has no rollout for this user")
        picked = _select(flag, flag.fallthrough, user)
        return picked if picked is not None else _malformed("fallthrough has no rollout for this user")
    except MalformedFlag as exc:
        return _malformed(str(exc))


def send_to_experiment(spec: ExperimentSpec, flag_key: str, user: User) -> bool:
    """A decision's sendToExperiment for this user (R-54, R-55)."""
    if spec is True or spec is False:
        return spec
    return spec.includes(flag_key, user)
