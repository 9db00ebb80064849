"""Result types, shaped like ``fbclient.common_types`` (R-86).

On top of fbclient's fields every detail carries the contract's reason
``kind`` and the ``variation_id`` (R-57); a fallback has an empty
``variation_id``. ``AllFlagStates`` never records events (R-60; fbclient
records one per ``get()``, G-10).
"""

from __future__ import annotations

import json
from collections.abc import KeysView, Mapping
from typing import Any

from ._core.model import Decision, Flag, settle
from ._core.results import ERROR_FLAG_NOT_FOUND, WRONG_TYPE, ReasonKind

FLAG_KEY_UNKNOWN = "flag key unknown"
FLAG_NAME_UNKNOWN = "flag name unknown"


class EvalDetail:
    """A flag's value with how it was calculated.

    Read it, do not assign to it (fbclient's fields are read-only
    properties): the client hands the same detail to every caller whose
    evaluation took the same path, and such a shared detail raises
    AttributeError when assigned to. A JSON value is parsed afresh per call.
    """

    __slots__ = ("reason", "variation", "key_name", "name", "kind", "variation_id", "error", "split")

    def __init__(
        self,
        reason: str,
        variation: Any,
        key_name: str | None = None,
        name: str | None = None,
        variation_id: str = "",
        kind: ReasonKind = ReasonKind.ERROR,
        error: str = "",
        split: bool = False,
    ) -> None:
        self.reason = reason
        self.variation = variation
        self.key_name = key_name
        self.name = name
        self.variation_id = variation_id
        self.kind = kind
        # featbit_shm extensions: why kind is Error (FlagNotFound, MalformedFlag,
        # InvalidUser, Exception; "" otherwise), and whether a fallthrough
        # percentage rollout chose the variation (OpenFeature's SPLIT).
        self.error = error
        self.split = split

    @property
    def is_default(self) -> bool:
        """True when ``variation`` is the caller's default (no variation was chosen)."""
        return not self.variation_id

    def to_json_dict(self, *, extended: bool = False) -> dict[str, Any]:
        """fbclient's exact shape (``reason``, ``variation``, ``keyName``,
        ``name``), so JSON built from it does not change on migration;
        ``extended=True`` adds ``kind`` and ``variationId`` (R-57)."""
        out = {"reason": self.reason, "variation": self.variation, "keyName": self.key_name, "name": self.name}
        if extended:
            out["kind"] = self.kind.value
            out["variationId"] = self.variation_id
        return out

    def to_json_str(self) -> str:
        return json.dumps(self.to_json_dict())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EvalDetail):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy or an unpickled detail is a plain (assignable) one.
        return (EvalDetail, (self.reason, self.variation, self.key_name, self.name, self.variation_id, self.kind, self.error, self.split))

    def __repr__(self) -> str:
        return (
            f"EvalDetail(kind={self.kind.value}, variation={self.variation!r}, "
            f"variation_id={self.variation_id!r}, reason={self.reason!r}, key_name={self.key_name!r})"
        )


class _SharedDetail(EvalDetail):
    """A detail built once per flag decision and returned to every caller
    it applies to (:func:`shared_detail`); assigning to it raises."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"EvalDetail is read-only (cannot set {name!r}); copy.copy() gives an assignable one")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"EvalDetail is read-only (cannot delete {name!r})")


def shared_detail(flag: Flag, decision: Decision) -> EvalDetail | None:
    """The result of ``decision`` for ``variation_detail`` and
    ``get_all_latest_flag_variations``, built once and kept in
    ``flag.details``; None when it must be built per call (a JSON object or
    list, which every caller gets its own copy of; a value the flag's type
    does not convert; an error).

    Only decisions that chose a variation are kept, each with its detail
    (so its id is not reused while the entry exists: a caller finding the
    entry by id checks it is the same decision, ``kept[0] is decision``).
    Such decisions are built with the flag and live as long as it does.
    """
    var = decision.variation
    if var is None or var.reparse or var.typed is WRONG_TYPE:
        return None
    kind = decision.kind
    split = kind is ReasonKind.FALLTHROUGH and flag.fallthrough.needs_bucket
    detail = EvalDetail.__new__(_SharedDetail)
    fields = (decision.reason, var.typed, flag.key, flag.name, var.id, kind, "", split)
    for field, value in zip(("reason", "variation", "key_name", "name", "variation_id", "kind", "error", "split"), fields):
        object.__setattr__(detail, field, value)
    details = flag.details
    details[id(decision)] = (decision, detail)
    # The entry (and the dict, which CPython tracks again as it gains a
    # tracked value) live with the flag: out of the collector's view too.
    settle(details, (_SharedDetail,))
    return detail


class BasicFlagState:
    """fbclient's base of FlagState and AllFlagStates: ``success`` and ``reason``."""

    __slots__ = ("success", "reason")

    def __init__(self, success: bool, reason: str) -> None:
        self.success = success
        self.reason = "OK" if success else reason


class FlagState(BasicFlagState):
    """fbclient's ``FlagState``: success, reason and the detail."""

    __slots__ = ("data",)

    def __init__(self, success: bool, reason: str, data: EvalDetail) -> None:
        self.success = success
        self.reason = "OK" if success else reason
        self.data = data

    def to_json_dict(self) -> dict[str, Any]:
        return {"success": self.success, "reason": self.reason, "data": self.data.to_json_dict()}

    def to_json_str(self) -> str:
        return json.dumps(self.to_json_dict())


class AllFlagStates(BasicFlagState):
    """Every active flag evaluated for one user; raw string values (R-60)."""

    __slots__ = ("_details",)

    def __init__(self, success: bool, reason: str, details: Mapping[str, EvalDetail]) -> None:
        self.success = success
        self.reason = "OK" if success else reason
        self._details = dict(details)

    @classmethod
    def _taking(cls, details: dict[str, EvalDetail]) -> AllFlagStates:
        """A successful result that takes ``details`` as it is (no copy: the caller made it for this)."""
        states = cls.__new__(cls)
        states.success, states.reason, states._details = True, "OK", details
        return states

    def keys(self) -> KeysView[str]:
        return self._details.keys()

    def get(self, key_name: str, default: Any = None) -> EvalDetail:
        detail = self._details.get(key_name)
        if detail is None:
            return EvalDetail("flag not found", default, key_name, FLAG_NAME_UNKNOWN, "", ReasonKind.ERROR, ERROR_FLAG_NOT_FOUND)
        return detail

    def get_variation(self, key_name: str, default: Any = None) -> Any:
        return self.get(key_name, default).variation

    def __len__(self) -> int:
        return len(self._details)

    def __contains__(self, key_name: object) -> bool:
        return key_name in self._details

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "message": self.reason,
            "data": [d.to_json_dict() for d in self._details.values()],
        }

    def to_json_str(self) -> str:
        return json.dumps(self.to_json_dict())
