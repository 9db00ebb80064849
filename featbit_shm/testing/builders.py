"""Build FeatBit wire JSON (flags, segments, data-sync envelopes) for tests.

Everything here returns plain dicts in FeatBit's exact camelCase wire shape,
so the same objects feed a bootstrap file, ``initialize_from_external_json``,
the official SDK and the FeatBit stand-in server alike::

    from featbit_shm.testing import builders as b

    doc = b.data_sync(
        [b.flag("new-checkout", rules=[b.rule([b.cond("country", "Equal", "us")], b.serve(0))])],
    )

Variations are referred to by index; their ids are ``"<flag key>-v<index>"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

DEFAULT_UPDATED_AT = "2024-01-01T00:00:00.000Z"

Part = tuple[int, float, float, float]  # (variation index, lo, hi, exptRollout)


def iso_ms(ms: int) -> str:
    """Unix milliseconds -> the ISO-8601 form FeatBit sends."""
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def serve(index: int) -> list[Part]:
    """A rollout that gives everyone one variation."""
    return [(index, 0.0, 1.0, 1.0)]


def split(*parts: Part) -> list[Part]:
    """A percentage rollout: ``split((0, 0, 0.5, 1), (1, 0.5, 1, 1))``."""
    return list(parts)


def cond(prop: str, op: str | None, value: str | Sequence[str] | None) -> dict[str, Any]:
    """A condition; a list value is JSON-encoded into the string, as on the wire."""
    if value is not None and not isinstance(value, str):
        value = json.dumps(list(value))
    return {"property": prop, "op": op, "value": value}


def in_segment(*segment_ids: str) -> dict[str, Any]:
    return cond("User is in segment", None, list(segment_ids))


def not_in_segment(*segment_ids: str) -> dict[str, Any]:
    return cond("User is not in segment", None, list(segment_ids))


def rule(
    conditions: Iterable[Mapping[str, Any]],
    rollout: Sequence[Part],
    *,
    name: str = "rule",
    dispatch_key: str | None = None,
    included_in_expt: bool = True,
    rule_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": rule_id or f"rule-{name}",
        "name": name,
        "dispatchKey": dispatch_key,
        "includedInExpt": included_in_expt,
        "conditions": [dict(c) for c in conditions],
        "variations": list(rollout),  # resolved to ids by flag()
    }


def _parts(key: str, rollout: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for part in rollout:
        if isinstance(part, Mapping):
            out.append(dict(part))
            continue
        index, lo, hi, expt = part
        out.append({"id": f"{key}-v{index}", "rollout": [lo, hi], "exptRollout": expt})
    return out


def flag(
    key: str,
    *,
    variations: Sequence[str] = ("true", "false"),
    variation_type: str = "boolean",
    enabled: bool = True,
    off: int = 1,
    targets: Mapping[int, Sequence[str]] | None = None,
    rules: Sequence[Mapping[str, Any]] = (),
    fallthrough: Sequence[Part] | None = None,
    fallthrough_dispatch_key: str | None = None,
    fallthrough_in_expt: bool = True,
    expt_include_all_targets: bool = False,
    updated_at: str | int = DEFAULT_UPDATED_AT,
    archived: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """A complete wire flag; by default a boolean flag serving ``true`` to everyone."""
    if isinstance(updated_at, int):
        updated_at = iso_ms(updated_at)
    wire_rules = []
    for r in rules:
        wr = dict(r)
        wr["variations"] = _parts(key, r["variations"])
        wire_rules.append(wr)
    return {
        "envId": "00000000-0000-0000-0000-000000000000",
        "id": f"id-{key}",
        "key": key,
        "name": name if name is not None else key,
        "variationType": variation_type,
        "variations": [{"id": f"{key}-v{i}", "value": v} for i, v in enumerate(variations)],
        "targetUsers": [
            {"variationId": f"{key}-v{i}", "keyIds": list(keys)} for i, keys in (targets or {}).items()
        ],
        "rules": wire_rules,
        "isEnabled": enabled,
        "disabledVariationId": f"{key}-v{off}",
        "fallthrough": {
            "dispatchKey": fallthrough_dispatch_key,
            "includedInExpt": fallthrough_in_expt,
            "variations": _parts(key, fallthrough if fallthrough is not None else serve(0)),
        },
        "exptIncludeAllTargets": expt_include_all_targets,
        "tags": [],
        "isArchived": archived,
        "updatedAt": updated_at,
    }


def segment(
    segment_id: str,
    *,
    included: Sequence[str] = (),
    excluded: Sequence[str] = (),
    rules: Sequence[Sequence[Mapping[str, Any]]] = (),
    updated_at: str | int = DEFAULT_UPDATED_AT,
    archived: bool = False,
) -> dict[str, Any]:
    """A wire segment; ``rules`` is a list of condition lists."""
    if isinstance(updated_at, int):
        updated_at = iso_ms(updated_at)
    return {
        "id": segment_id,
        "name": segment_id,
        "included": list(included),
        "excluded": list(excluded),
        "rules": [{"id": f"{segment_id}-r{i}", "name": f"rule {i}", "conditions": [dict(c) for c in conds]} for i, conds in enumerate(rules)],
        "isArchived": archived,
        "updatedAt": updated_at,
    }


def data_sync(
    flags: Iterable[Any] = (),
    segments: Iterable[Any] = (),
    *,
    event_type: str = "full",
) -> dict[str, Any]:
    """A data-sync envelope (the bootstrap file format, R-72).

    Entities are copied; anything that is not a mapping is passed through as
    is, so tests can plant malformed entities.
    """

    def copy(items: Iterable[Any]) -> list[Any]:
        return [dict(x) if isinstance(x, Mapping) else x for x in items]

    return {
        "messageType": "data-sync",
        "data": {"eventType": event_type, "featureFlags": copy(flags), "segments": copy(segments)},
    }
