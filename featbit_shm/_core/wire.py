"""Read FeatBit's wire JSON once and turn it into normalised plain data.

This is the only module that knows FeatBit's camelCase field names and ISO
dates. It turns each flag and segment of a data-sync message into a small,
msgpack-friendly structure of lists, strings, numbers and booleans
("normalised form"); :mod:`featbit_shm._core.model` builds evaluable objects
from that form, in the sync process and in every worker alike, without ever
parsing JSON or dates again.

Rules kept here (numbers refer to ``docs/PROTOCOL.md``):

* ``updatedAt`` becomes signed int64 Unix milliseconds, **truncated** (R-27;
  the official SDK rounds, G-11). An integer is taken as milliseconds.
* Unknown fields are ignored (R-26).
* A malformed entity is skipped and reported by key while its siblings load
  (R-15, newer rule). Problems that only matter when a condition is reached
  (a list operand that is not a JSON array of strings, a regex that does not
  compile) do not skip the flag: the condition carries the error and that
  flag evaluates to the default with reason kind Error (R-42).
* Archived entities become versioned tombstones (R-29).

Each entity of a message comes out :class:`Packed`: its normalised form as
msgpack bytes, made while the wire document is still alive. The sync process
keeps entities that way (a 100,000-flag data set is about 40 MiB of bytes
instead of about 700 MiB of dicts, lists and rows) and the snapshot writer
stores the bytes as they are; nothing it keeps points into the wire document,
so when the document is freed its memory goes back to the system.

The normalised form (rows with named fields) is defined in :mod:`.schema`.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Union

import msgpack

from .schema import (
    Condition,
    Fallthrough,
    FlagEntry,
    RolloutPart,
    Rule,
    SegmentEntry,
    Target,
    Variation,
    flag_entry,
    segment_entry,
)

SEGMENT_IN: Final = "User is in segment"
SEGMENT_NOT_IN: Final = "User is not in segment"
LIST_OPS: Final = frozenset({"IsOneOf", "NotOneOf"})


_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)


class WireError(ValueError):
    """One entity (or one whole message) does not follow the wire format."""


def parse_version(raw: object) -> int:
    """``updatedAt`` as int64 Unix milliseconds, truncated (R-27, not G-11).

    A string must be ISO-8601; without a zone it is read as UTC. An integer is
    taken as milliseconds already (handy for hand-written bootstrap files).
    """
    if isinstance(raw, bool):
        raise WireError("updatedAt is a boolean")
    if isinstance(raw, int):
        ms = raw
    elif isinstance(raw, str):
        m = _ISO.fullmatch(raw.strip())
        if m is None:
            raise WireError(f"updatedAt {raw[:40]!r} is not an ISO-8601 date")
        y, mo, d, h, mi, s, frac, _z, sign, oh, om = m.groups()
        try:
            seconds = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
        except (ValueError, OverflowError) as exc:  # pragma: no cover - timegm is lenient
            raise WireError(f"updatedAt {raw[:40]!r}: {exc}") from None
        if not (1 <= int(mo) <= 12 and 1 <= int(d) <= 31 and int(h) <= 23 and int(mi) <= 59 and int(s) <= 60):
            raise WireError(f"updatedAt {raw[:40]!r} has an out-of-range field")
        millis = int((frac or "")[:3].ljust(3, "0"))
        offset = 0
        if sign is not None:
            offset = (int(oh) * 60 + int(om)) * 60
            if sign == "-":
                offset = -offset
        ms = (seconds - offset) * 1000 + millis
    else:
        raise WireError(f"updatedAt has type {type(raw).__name__}")
    if not _INT64_MIN <= ms <= _INT64_MAX:
        raise WireError("updatedAt is outside the int64 millisecond range")
    return ms


# --------------------------------------------------------------------------- helpers


def _str(obj: Mapping[str, Any], name: str, *, optional: bool = False) -> str:
    value = obj.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise WireError(f"{name} must be a string, not {type(value).__name__}")
    return value


def _bool(obj: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = obj.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise WireError(f"{name} must be a boolean")
    return value


def _list(obj: Mapping[str, Any], name: str) -> list[Any]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise WireError(f"{name} must be a list")
    return value


def _dict(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WireError(f"{what} must be an object")
    return value


def _fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{what} must be a number")
    f = float(value)
    if not math.isfinite(f) or f < 0:
        raise WireError(f"{what} must be finite and >= 0")
    return f


def _dispatch_key(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("dispatchKey")
    if value is None:
        return None
    if not isinstance(value, str):
        raise WireError("dispatchKey must be a string or null")
    # null, empty and whitespace-only all mean "the user key".
    return value if value.strip() else None


def _rollout(obj: Mapping[str, Any], what: str) -> list[RolloutPart]:
    parts: list[RolloutPart] = []
    for i, raw in enumerate(_list(obj, "variations")):
        part = _dict(raw, f"{what}.variations[{i}]")
        bounds = part.get("rollout")
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise WireError(f"{what}.variations[{i}].rollout must be [lower, upper]")
        lo = _fraction(bounds[0], f"{what} rollout lower bound")
        hi = _fraction(bounds[1], f"{what} rollout upper bound")
        expt = part.get("exptRollout")
        expt_f = 0.0 if expt is None else _fraction(expt, f"{what} exptRollout")
        parts.append(RolloutPart(_str(part, "id"), lo, hi, expt_f))
    return parts


def _string_list(raw: str) -> list[str]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise WireError("operand is not a JSON array") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise WireError("operand is not a JSON array of strings")
    return value


def normalize_condition(raw: object, what: str) -> Condition:
    cond = _dict(raw, what)
    prop = _str(cond, "property", optional=True)
    op = cond.get("op")
    if op is not None and not isinstance(op, str):
        raise WireError(f"{what}.op must be a string or null")
    value = cond.get("value")
    if value is not None and not isinstance(value, str):
        raise WireError(f"{what}.value must be a string or null")
    error: str | None = None
    operand: Any = value
    # the property alone marks a segment condition; op is ignored.
    if prop in (SEGMENT_IN, SEGMENT_NOT_IN) or op in LIST_OPS:
        if value is None:
            operand = None
        else:
            try:
                operand = _string_list(value)
            except WireError as exc:
                operand, error = value, f"{prop or op}: {exc}"
    return Condition(prop, op, operand, error)


# --------------------------------------------------------------------------- entities


def normalize_flag(raw: object) -> FlagEntry:
    """One wire flag -> normalised form. Raises :class:`WireError`."""
    flag = _dict(raw, "flag")
    key = _str(flag, "key")
    if not key:
        raise WireError("key is empty")
    version = parse_version(flag.get("updatedAt"))
    if _bool(flag, "isArchived"):
        return {"key": key, "version": version, "archived": True}
    variations = []
    for i, v in enumerate(_list(flag, "variations")):
        var = _dict(v, f"variations[{i}]")
        variations.append(Variation(_str(var, "id"), _str(var, "value", optional=True)))
    targets = []
    for i, t in enumerate(_list(flag, "targetUsers")):
        target = _dict(t, f"targetUsers[{i}]")
        keys = _list(target, "keyIds")
        if not all(isinstance(k, str) for k in keys):
            raise WireError(f"targetUsers[{i}].keyIds must hold strings")
        targets.append(Target(_str(target, "variationId"), keys))
    rules = []
    for i, r in enumerate(_list(flag, "rules")):
        rule = _dict(r, f"rules[{i}]")
        if not isinstance(rule.get("conditions"), list):
            # a null or malformed list must not be treated as empty.
            raise WireError(f"rules[{i}].conditions must be a list")
        conds = [normalize_condition(c, f"rules[{i}].conditions[{j}]") for j, c in enumerate(rule["conditions"])]
        rules.append(Rule(_str(rule, "name", optional=True), _dispatch_key(rule), _bool(rule, "includedInExpt"), conds, _rollout(rule, f"rules[{i}]")))
    fall = _dict(flag.get("fallthrough"), "fallthrough")
    vtype = flag.get("variationType")
    return {
        "key": key,
        "id": _str(flag, "id", optional=True),
        "name": _str(flag, "name", optional=True),
        "type": vtype if isinstance(vtype, str) else "string",
        "version": version,
        "enabled": _bool(flag, "isEnabled"),
        "off": _str(flag, "disabledVariationId", optional=True),
        "expt_all": _bool(flag, "exptIncludeAllTargets"),
        "variations": variations,
        "targets": targets,
        "rules": rules,
        "fallthrough": Fallthrough(_dispatch_key(fall), _bool(fall, "includedInExpt"), _rollout(fall, "fallthrough")),
    }


def normalize_segment(raw: object) -> SegmentEntry:
    """One wire segment -> normalised form. Raises :class:`WireError`."""
    seg = _dict(raw, "segment")
    # segments are looked up by the canonical lowercase id.
    seg_id = _str(seg, "id").lower()
    if not seg_id:
        raise WireError("id is empty")
    version = parse_version(seg.get("updatedAt"))
    if _bool(seg, "isArchived"):
        return {"id": seg_id, "version": version, "archived": True}
    included = _list(seg, "included")
    excluded = _list(seg, "excluded")
    if not all(isinstance(k, str) for k in included + excluded):
        raise WireError("included/excluded must hold strings")
    rules = []
    for i, r in enumerate(_list(seg, "rules")):
        rule = _dict(r, f"rules[{i}]")
        if not isinstance(rule.get("conditions"), list):
            raise WireError(f"rules[{i}].conditions must be a list")
        rules.append([normalize_condition(c, f"rules[{i}].conditions[{j}]") for j, c in enumerate(rule["conditions"])])
    return {"id": seg_id, "version": version, "included": included, "excluded": excluded, "rules": rules}


# --------------------------------------------------------------------------- messages


class Packed(Mapping[str, Any]):
    """One normalised flag or segment kept as the msgpack of its normalised
    form (the bytes a snapshot blob holds after the key).

    ``key`` (a flag's key or a segment's id), ``version`` and ``archived``
    are kept apart, so merging and publishing never decode; reading any other
    field (``packed["rules"]``) decodes the whole entity, and :meth:`unpack`
    gives the normalised dict. Two packed entities are equal when their
    bytes are.
    """

    __slots__ = ("key", "version", "archived", "blob", "is_segment", "_plain")

    def __init__(self, key: str, version: int, archived: bool, blob: bytes, is_segment: bool) -> None:
        self.key = key
        self.version = version
        self.archived = archived
        self.blob = blob
        self.is_segment = is_segment
        self._plain: Any = None

    @classmethod
    def of(cls, entity: Mapping[str, Any], is_segment: bool) -> Packed:
        """Pack a normalised entity. The key is copied, so the packed form
        keeps nothing of the wire document alive.

        A segment also keeps the form it was packed from until the snapshot
        writer takes it (:meth:`take_plain`): the writer reads a segment's
        lists to store long ones as key sets, and decoding 200,000 keys again
        cost 9 ms of a one-key change's publish."""
        key = entity["id" if is_segment else "key"]
        ordered = dict(sorted(entity.items()))  # fields sorted: one entity, one blob
        packed = cls(key.encode("utf-8").decode("utf-8"), int(entity["version"]), bool(entity.get("archived")), msgpack.packb(ordered, use_bin_type=True), is_segment)
        if is_segment:
            packed._plain = ordered
        return packed

    def unpack(self) -> Any:
        """The normalised entity (a new dict every call)."""
        plain = msgpack.unpackb(self.blob, raw=False, strict_map_key=True)
        return segment_entry(plain) if self.is_segment else flag_entry(plain)

    def take_plain(self) -> Any:
        """The normalised entity, for a reader that needs it once: the form a
        segment was packed from, handed over and then dropped (so only the
        bytes stay in memory), else :meth:`unpack`. Do not change it."""
        plain = self._plain
        if plain is not None:
            self._plain = None
            return plain
        return self.unpack()

    def __getitem__(self, name: str) -> Any:
        if name == ("id" if self.is_segment else "key"):
            return self.key
        if name == "version":
            return self.version
        if name == "archived":
            if self.archived:
                return True
            raise KeyError(name)  # a live entity has no archived field
        return self.unpack()[name]

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self.unpack())

    def __len__(self) -> int:
        return len(self.unpack())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Packed):
            return self.blob == other.blob and self.is_segment == other.is_segment
        if isinstance(other, Mapping):
            return bool(self.unpack() == dict(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Packed({'segment' if self.is_segment else 'flag'} {self.key!r}, version={self.version}, {len(self.blob)} bytes)"


#: A flag or segment as a message or a data set holds it: normalised, or packed.
AnyFlag = Union[FlagEntry, Packed]  # not ``|``: evaluated at import, and Python 3.9 has no ``X | Y`` of these
AnySegment = Union[SegmentEntry, Packed]


@dataclass(frozen=True)
class Skipped:
    """An entity left out of a message because it was malformed (R-15)."""

    kind: str  # "flag" or "segment"
    key: str  # its key or id, or "#<index>" when even that was unusable
    error: str


@dataclass(frozen=True)
class DataSyncMessage:
    """A parsed ``data-sync`` payload: full replacement or patch (R-8)."""

    event_type: str  # "full" or "patch"
    flags: Sequence[AnyFlag]  # parse_data_sync gives them packed
    segments: Sequence[AnySegment]
    skipped: list[Skipped] = field(default_factory=list)


def _identity(raw: object, name: str, index: int) -> str:
    if isinstance(raw, Mapping):
        value = raw.get(name)
        if isinstance(value, str) and value:
            # Printable and storable whatever it holds (a lone surrogate is shown escaped).
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"#{index}"


class Entities:
    """One entity list of a data-sync message, packed (:class:`Packed`) as
    it is read, with the entities skipped as malformed (R-15).

    :func:`parse_data_sync` makes one of each list it is given; the
    streaming document reader (:mod:`.jsonstream`) makes them while it
    parses, and puts them where the lists were, so that no list is ever
    held parsed whole.
    """

    __slots__ = ("is_segment", "packed", "skipped")

    def __init__(self, is_segment: bool, raw: Iterator[object] | Sequence[object] = ()) -> None:
        self.is_segment = is_segment
        self.packed: list[Packed] = []
        self.skipped: list[Skipped] = []
        for raw_entity in raw:
            self.add(raw_entity)

    def add(self, raw: object) -> None:
        """Normalise and pack the next entity of the list, or note why it is skipped."""
        try:
            normal = normalize_segment(raw) if self.is_segment else normalize_flag(raw)
            self.packed.append(Packed.of(normal, self.is_segment))
            return
        except WireError as exc:
            why = str(exc)
        except (ValueError, OverflowError) as exc:
            # Valid JSON that cannot be kept: a string with a lone surrogate
            # (no UTF-8 for it), a number no float holds. R-15: this entity
            # is skipped, never the whole message.
            why = f"cannot be stored: {exc}"
        index = len(self.packed) + len(self.skipped)
        kind, name = ("segment", "id") if self.is_segment else ("flag", "key")
        self.skipped.append(Skipped(kind, _identity(raw, name, index), why))


def parse_data_sync(data: object) -> DataSyncMessage:
    """The ``data`` object of a data-sync message -> :class:`DataSyncMessage`.

    Raises :class:`WireError` only when the envelope itself is unusable (R-11);
    malformed entities are reported in ``skipped`` and left out (R-15).
    Entities come out :class:`Packed` (module docstring). An entity list may
    be given already packed, as :class:`Entities` (from :mod:`.jsonstream`).
    """
    body = _dict(data, "data")
    event_type = body.get("eventType")
    if event_type not in ("full", "patch"):
        raise WireError(f"unsupported eventType {event_type!r}")
    lists = []
    for name, is_segment in (("featureFlags", False), ("segments", True)):
        raw = body.get(name, [])
        if raw is None:
            raw = []
        if isinstance(raw, list):
            raw = Entities(is_segment, raw)
        elif not isinstance(raw, Entities) or raw.is_segment is not is_segment:
            raise WireError("featureFlags and segments must be lists")
        lists.append(raw)
    flags, segments = lists
    return DataSyncMessage(event_type, flags.packed, segments.packed, flags.skipped + segments.skipped)


def parse_envelope(document: object) -> DataSyncMessage:
    """A whole ``{"messageType": "data-sync", "data": {...}}`` document (R-72)."""
    envelope = _dict(document, "document")
    if envelope.get("messageType") != "data-sync":
        raise WireError("messageType must be 'data-sync'")
    return parse_data_sync(envelope.get("data"))
