"""The normalised flag and segment: the one schema every process shares.

:mod:`.wire` turns FeatBit's JSON into these rows once, in the process that
reads it (the sync process, or an offline client). The snapshot codec
stores them as msgpack and gives them back as the same rows
(:func:`flag_entry` / :func:`segment_entry` rebuild them from the decoded
lists), and :mod:`.model` compiles them into evaluable objects. Nothing
reads a row by position: each field has a name here.

A flag entry is a dict (the snapshot stores it as a msgpack map)::

    FlagEntry
      key, id, name      str
      type               the variationType ("boolean", "number", "string", "json")
      version            int: updatedAt as Unix ms (R-27)
      enabled            bool
      off                the disabled variation's id
      expt_all           bool: exptIncludeAllTargets
      variations         [Variation(id, value), ...]
      targets            [Target(variation_id, keys), ...]
      rules              [Rule(name, dispatch_key, in_expt, conditions, rollout), ...]
      fallthrough        Fallthrough(dispatch_key, in_expt, rollout)

    rollout    = [RolloutPart(variation_id, lo, hi, expt_rollout), ...]
    conditions = [Condition(property, op, operand, error), ...]

A condition's ``operand`` is the parsed list of strings for list and segment
conditions and the raw string otherwise; ``error`` says why the condition
can never be evaluated (R-42), or is None. A segment entry::

    SegmentEntry: id, version, included [str], excluded [str], rules [[Condition, ...], ...]

An archived entity is a tombstone: ``{"key" or "id", "version", "archived": True}``
(R-29), with none of the other fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypedDict


class Condition(NamedTuple):
    property: str
    op: str | None
    operand: Any  # list[str] for list and segment operators, else str; None when absent
    error: str | None  # why this condition cannot be evaluated, or None


class RolloutPart(NamedTuple):
    variation_id: str
    lo: float  # bucket range [lo, hi], both inclusive
    hi: float
    expt_rollout: float  # exptRollout


class Rule(NamedTuple):
    name: str
    dispatch_key: str | None  # None: the user key
    in_expt: bool  # includedInExpt
    conditions: list[Condition]
    rollout: list[RolloutPart]


class Fallthrough(NamedTuple):
    dispatch_key: str | None
    in_expt: bool
    rollout: list[RolloutPart]


class Target(NamedTuple):
    variation_id: str
    keys: list[str]


class Variation(NamedTuple):
    id: str
    value: str  # always a string on the wire; converted by the flag's type when evaluated


class _FlagKey(TypedDict):
    key: str
    version: int


class FlagEntry(_FlagKey, total=False):
    """A normalised flag; a tombstone has only key, version and archived."""

    archived: bool
    id: str
    name: str
    type: str
    enabled: bool
    off: str
    expt_all: bool
    variations: list[Variation]
    targets: list[Target]
    rules: list[Rule]
    fallthrough: Fallthrough


class _SegmentKey(TypedDict):
    id: str
    version: int


class SegmentEntry(_SegmentKey, total=False):
    """A normalised segment; a tombstone has only id, version and archived."""

    archived: bool
    included: list[str]
    excluded: list[str]
    rules: list[list[Condition]]


def _rollout(parts: Any) -> list[RolloutPart]:
    return [RolloutPart(*p) for p in parts]


def _conditions(conds: Any) -> list[Condition]:
    return [Condition(*c) for c in conds]


def flag_entry(plain: dict[str, Any]) -> FlagEntry:
    """A flag entry from its decoded msgpack form (lists where rows were).

    Raises TypeError or ValueError when the shape is wrong; callers turn that
    into their own error (the snapshot codec: :class:`~.snapshot.SnapshotError`).
    """
    if plain.get("archived"):
        return plain  # type: ignore[return-value]
    entry = dict(plain)
    entry["variations"] = [Variation(*v) for v in plain["variations"]]
    entry["targets"] = [Target(*t) for t in plain["targets"]]
    entry["rules"] = [Rule(n, dk, ie, _conditions(c), _rollout(r)) for n, dk, ie, c, r in plain["rules"]]
    dk, ie, parts = plain["fallthrough"]
    entry["fallthrough"] = Fallthrough(dk, ie, _rollout(parts))
    return entry  # type: ignore[return-value]


def segment_entry(plain: dict[str, Any]) -> SegmentEntry:
    """A segment entry from its decoded msgpack form (see :func:`flag_entry`)."""
    if plain.get("archived"):
        return plain  # type: ignore[return-value]
    entry = dict(plain)
    entry["rules"] = [_conditions(rule) for rule in plain["rules"]]
    return entry  # type: ignore[return-value]
