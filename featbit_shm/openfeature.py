"""An OpenFeature provider backed by featbit-shm (``pip install 'featbit-shm[openfeature]'``).

::

    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from featbit_shm.openfeature import FeatBitProvider

    api.set_provider_and_wait(FeatBitProvider())          # binds featbit_shm.get() on first use
    flags = api.get_client()
    flags.get_boolean_value("new-checkout", False, EvaluationContext("user-42", {"country": "us"}))

Theory of operation. The provider is a thin translation layer over
:class:`~featbit_shm.FBClient`; it adds no thread, no socket and no copy of
the flags, so it works in a gunicorn or uWSGI worker exactly as the client
does. Each ``resolve_*`` call:

1. turns the evaluation context into a FeatBit user (see *Context* below);
   a missing targeting key is reported before anything is evaluated;
2. calls the client's strict typed detail method
   (``bool_variation_detail``, ``string_variation_detail``,
   ``int_variation_detail``, ``float_variation_detail``,
   ``json_variation_detail``), which evaluates from shared memory and records
   the insight event like any other evaluation (R-66);
3. maps the detail's reason kind to an OpenFeature reason or error code and
   its variation id to the ``variant``.

Provider state has no thread to drive it either. When the provider is
touched (any resolve or track) and ``status_interval`` seconds have passed
since the last look, it reads ``client.update_status_provider`` (a few
shared-memory loads) and emits READY, STALE or ERROR when the derived state
changed. Flag changes come from ``client.flag_tracker``: its listeners fire
on the first touch of the client after the sync process published a new
generation (or from the tracker's opt-in watcher thread), and each changed
flag becomes one PROVIDER_CONFIGURATION_CHANGED event naming it.

Mappings (the detail's ``kind`` is the contract's reason kind, R-57):

============================  ==========================================
FeatBit                       OpenFeature
============================  ==========================================
``Off``                       reason ``DISABLED``
``TargetMatch``               reason ``TARGETING_MATCH``
``RuleMatch``                 reason ``TARGETING_MATCH``
``Fallthrough``, split        reason ``SPLIT`` (the fallthrough buckets users)
``Fallthrough``, one variant  reason ``DEFAULT``
``ClientNotReady``            ``PROVIDER_NOT_READY``
``WrongType``                 ``TYPE_MISMATCH`` (also: an object flag whose JSON is not a dict or list)
``Error``, flag not found     ``FLAG_NOT_FOUND`` (unknown or archived key)
``Error``, malformed flag     ``PARSE_ERROR`` (flag data that cannot be evaluated, R-37, R-42, R-47)
``Error``, invalid user       ``INVALID_CONTEXT``
``Error``, anything else      ``GENERAL``
no targeting key              ``TARGETING_KEY_MISSING`` (checked first)
============================  ==========================================

Every error has reason ``ERROR`` and the caller's default. A successful
result carries ``flag_metadata = {"reasonKind": <kind>, "reason": <text>}``
so the FeatBit detail (e.g. RuleMatch versus TargetMatch) is not lost.

Context. ``targeting_key`` becomes the user key, the ``name`` attribute the
user name, and every other attribute a custom property: strings, numbers and
booleans as they are (booleans read as ``"true"``/``"false"``); ``datetime``
as ISO-8601 text; lists and mappings as compact JSON text; ``None`` as
absent. Attributes named ``key``, ``keyId`` or ``keyid`` are skipped: they
are the user key's names in FeatBit (R-84), and the key is the targeting key.
A context that cannot be turned into a user (a targeting key that is not a
string, an attribute JSON cannot represent) is ``INVALID_CONTEXT``.

Provider state, derived from ``client.update_status_provider`` (R-16):

==================================  ======================================
client                              provider status / event
==================================  ======================================
data, state OK                      READY
data, INTERRUPTED or INITIALIZING   STALE (values come from the last snapshot)
data, state OFF                     ERROR, ``GENERAL`` (rejected or stopped;
                                    evaluation still serves the last snapshot)
no data yet                         ERROR, ``PROVIDER_NOT_READY``
==================================  ======================================

FATAL is never used: OpenFeature stops calling a FATAL provider, and the
client keeps serving its last good snapshot whatever the sync process does.

Threads and fork. Nothing here starts a thread, but openfeature-sdk may:
0.10's ``api.set_provider`` runs ``initialize`` on a new thread (use
``api.set_provider_and_wait``, which runs it on the caller's), and event
handlers (``api.add_handler``) run on the SDK's own executor, started the
first time an event has a handler. Threads do not survive ``fork()``, so
register handlers in each worker, never in a pre-fork master.

Known limits: an object flag whose JSON is a scalar records its insight
event before the provider reports TYPE_MISMATCH (the client's JSON
conversion succeeded); SPLIT is read from the flag in the client's current
view right after the evaluation, so a generation published in between
labels the result by the newer flag.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import featbit_shm

from ._core.results import ERROR_FLAG_NOT_FOUND, ERROR_INVALID_USER, ERROR_MALFORMED_FLAG, ReasonKind
from ._core.user import attr_string
from ._runtime.notices import warn_limited
from .client import FBClient
from .common_types import EvalDetail
from .flag_change_notification import FlagChangedListener, FlagChangedNotice
from .status_types import State, StateType

#: The oldest openfeature-sdk this module is tested with (providers' ``track`` came in 0.9).
MIN_OPENFEATURE_SDK = "0.9.0"

try:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.event import ProviderEventDetails
    from openfeature.exception import ErrorCode, ProviderNotReadyError
    from openfeature.flag_evaluation import FlagResolutionDetails, Reason
    from openfeature.provider import AbstractProvider, Metadata, ProviderStatus
    from openfeature.track import TrackingEventDetails
except ImportError as exc:
    if (exc.name or "").partition(".")[0] != "openfeature":
        raise
    raise ImportError(
        f"featbit_shm.openfeature needs openfeature-sdk>={MIN_OPENFEATURE_SDK} ({exc}); "
        "install it with: pip install 'featbit-shm[openfeature]'",
        name=exc.name,
    ) from exc

if TYPE_CHECKING:
    from openfeature.flag_evaluation import FlagValueType

__all__ = ["FeatBitProvider", "error_code_for", "reason_for", "status_for", "user_from_context"]

log = logging.getLogger("featbit_shm")
T = TypeVar("T")
Detail = Callable[[FBClient, str, Any, Any], EvalDetail]  # an unbound FBClient *_variation_detail

PROVIDER_NAME = "featbit-shm"
_METADATA = Metadata(name=PROVIDER_NAME)

_ERROR_CODES: dict[str, ErrorCode] = {  # EvalDetail.error -> OpenFeature code
    ERROR_FLAG_NOT_FOUND: ErrorCode.FLAG_NOT_FOUND,
    ERROR_MALFORMED_FLAG: ErrorCode.PARSE_ERROR,  # the flag's data cannot be evaluated
    ERROR_INVALID_USER: ErrorCode.INVALID_CONTEXT,
}

_SUCCESS: dict[ReasonKind, Reason] = {
    ReasonKind.OFF: Reason.DISABLED,
    ReasonKind.TARGET_MATCH: Reason.TARGETING_MATCH,
    ReasonKind.RULE_MATCH: Reason.TARGETING_MATCH,
    ReasonKind.FALLTHROUGH: Reason.DEFAULT,  # SPLIT when the fallthrough buckets users
}
# Compared by identity on the hot path: hashing an Enum member runs Python code.
_OFF = ReasonKind.OFF
_TARGET_MATCH = ReasonKind.TARGET_MATCH
_RULE_MATCH = ReasonKind.RULE_MATCH
_FALLTHROUGH = ReasonKind.FALLTHROUGH
_RESERVED_ATTRIBUTES = frozenset({"key", "keyId", "keyid"})  # the user key's names
_PLAIN = frozenset({str, int, float, bool})

_READY = ProviderStatus.READY
_STALE = ProviderStatus.STALE
_ERROR = ProviderStatus.ERROR
StatusKey = tuple[ProviderStatus, Optional[ErrorCode]]


class _Failure(Exception):
    """Why a call cannot be evaluated: an OpenFeature error code and a message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------- mappings (pure)


def reason_for(detail: EvalDetail) -> Reason:
    """The OpenFeature reason of a detail (SPLIT: a fallthrough percentage rollout chose it)."""
    if detail.kind is _FALLTHROUGH:
        return Reason.SPLIT if detail.split else Reason.DEFAULT
    return _SUCCESS.get(detail.kind, Reason.ERROR)


def error_code_for(detail: EvalDetail) -> ErrorCode | None:
    """The OpenFeature error code of a detail, or None for a served variation."""
    kind = detail.kind
    if kind in _SUCCESS:
        return None
    if kind is ReasonKind.CLIENT_NOT_READY:
        return ErrorCode.PROVIDER_NOT_READY
    if kind is ReasonKind.WRONG_TYPE:
        return ErrorCode.TYPE_MISMATCH
    return _ERROR_CODES.get(detail.error, ErrorCode.GENERAL)


def status_for(ready: bool, state: State) -> tuple[ProviderStatus, ErrorCode | None, str]:
    """Provider status, error code and message for the client's data and sync state."""
    track = state.error_track
    why = track.message if track is not None else ""
    if not ready:
        return _ERROR, ErrorCode.PROVIDER_NOT_READY, why or "no flag data yet"
    kind = state.state_type
    if kind is StateType.OK:
        return _READY, None, ""
    if kind is StateType.OFF:
        return _ERROR, ErrorCode.GENERAL, (why or "the sync process stopped") + "; serving the last snapshot"
    return _STALE, None, (why or f"sync state {kind.name}") + "; serving the last snapshot"


def user_from_context(context: EvaluationContext | None) -> dict[str, Any]:
    """The FeatBit user dict for an evaluation context (see the module doc).

    Raises :class:`_Failure` with TARGETING_KEY_MISSING or INVALID_CONTEXT.
    """
    key = context.targeting_key if context is not None else None
    if type(key) is not str or not key or key.isspace():
        if key is None or (isinstance(key, str) and (not key or key.isspace())):
            raise _Failure(
                ErrorCode.TARGETING_KEY_MISSING,
                "FeatBit needs a targeting key (the user key) in the evaluation context",
            )
        if not isinstance(key, str):
            raise _Failure(ErrorCode.INVALID_CONTEXT, f"the targeting key must be a string, not {type(key).__name__}")
        key = str.__str__(key)  # a str subclass as its plain text
    attributes = context.attributes if context is not None else None
    if not attributes:
        return {"key": key, "name": ""}
    if type(attributes) is dict:
        # The common case, at C speed: copy, then one pass to confirm every
        # name is a string and every value a plain scalar.
        user = dict(attributes)
        plain = _PLAIN
        for name, value in user.items():
            if type(name) is not str or type(value) not in plain:
                return _user_from_attributes(key, attributes)
        if not _RESERVED_ATTRIBUTES.isdisjoint(user):
            for reserved in _RESERVED_ATTRIBUTES:
                user.pop(reserved, None)
        name = user.get("name")
        if type(name) is not str:
            user["name"] = "" if name is None else attr_string(name)
        user["key"] = key
        return user
    if not isinstance(attributes, Mapping):
        raise _Failure(ErrorCode.INVALID_CONTEXT, "the context's attributes must be a mapping")
    return _user_from_attributes(key, attributes)


def _user_from_attributes(key: str, attributes: Mapping[Any, Any]) -> dict[str, Any]:
    user: dict[str, Any] = {"key": key, "name": ""}
    for name, value in attributes.items():
        if value is None or name in _RESERVED_ATTRIBUTES:
            continue
        if type(name) is not str:
            raise _Failure(ErrorCode.INVALID_CONTEXT, f"attribute name {name!r} is not a string")
        if type(value) not in _PLAIN:
            value = _flatten(name, value)
        if name == "name":
            user["name"] = value if type(value) is str else attr_string(value)
        else:
            user[name] = value
    return user


def _flatten(name: str, value: Any) -> str | int | float | bool:
    """A non-scalar attribute as a value FeatBit can compare (text, mostly)."""
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (a StrEnum, say) as its plain text
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Mapping, Sequence)) and not isinstance(value, (bytes, bytearray)):
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)
        except (TypeError, ValueError, RecursionError) as exc:
            raise _Failure(ErrorCode.INVALID_CONTEXT, f"attribute {name!r} cannot be written as JSON: {exc}") from None
    raise _Failure(
        ErrorCode.INVALID_CONTEXT, f"attribute {name!r} holds a {type(value).__name__}, which FeatBit cannot compare"
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


_METADATA_BY_REASON: dict[str, tuple[ReasonKind, Mapping[str, str]]] = {}


def _metadata(detail: EvalDetail) -> Mapping[str, str]:
    """``{"reasonKind", "reason"}`` of a served detail: one read-only mapping per
    (text, kind), built once (success texts are a handful of constants)."""
    kind, text = detail.kind, detail.reason
    found = _METADATA_BY_REASON.get(text)
    if found is not None and found[0] is kind:
        return found[1]
    mapping = MappingProxyType({"reasonKind": kind.value, "reason": text})
    if len(_METADATA_BY_REASON) < 64:
        _METADATA_BY_REASON[text] = (kind, mapping)
    return mapping


# ---------------------------------------------------------------------- the provider


class _ChangeRelay(FlagChangedListener):
    """A flag_tracker listener turning each changed flag into a configuration-changed event."""

    def __init__(self, provider: FeatBitProvider) -> None:
        self._provider = weakref.ref(provider)

    def on_flag_change(self, notice: FlagChangedNotice) -> None:
        provider = self._provider()
        if provider is not None:
            provider.emit_provider_configuration_changed(
                ProviderEventDetails(flags_changed=[notice.flag_key], message="flag changed in FeatBit")
            )


_providers: weakref.WeakSet[FeatBitProvider] = weakref.WeakSet()


class FeatBitProvider(AbstractProvider):
    """OpenFeature provider evaluating FeatBit flags from featbit-shm's shared memory.

    ``client``: the :class:`~featbit_shm.FBClient` to evaluate with; None (the
    default) means ``featbit_shm.get()``, the process's client, looked up on
    each use, so the provider may be set in a server's master before it
    forks (``preload_app``) and each worker evaluates with its own client.

    ``init_timeout``: how long ``initialize`` (``api.set_provider_and_wait``)
    waits for a given client to have data; without data it raises
    ``ProviderNotReadyError`` and the provider turns READY by itself once data
    arrives. A lazily bound client is checked on first use instead.

    ``status_interval``: the least time between two looks at the sync state
    (each look is a few shared-memory loads; 0 looks on every call).

    The provider never starts a thread. Shutting it down removes its flag
    listener but leaves the client running: the client belongs to its creator.
    """

    def __init__(
        self,
        client: FBClient | None = None,
        *,
        init_timeout: float = 5.0,
        status_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        if client is not None and not isinstance(client, FBClient):
            raise TypeError("client must be a featbit_shm.FBClient (or None for featbit_shm.get())")
        if not (init_timeout >= 0 and status_interval >= 0):
            raise ValueError("init_timeout and status_interval must be >= 0")
        self._client = client
        self._init_timeout = float(init_timeout)
        self._interval = float(status_interval)
        self._clock = clock
        self._sleep = sleep
        self._next_check = -math.inf
        self._state: StatusKey | None = None  # what the OpenFeature registry was last told
        self._active = False  # between initialize() and shutdown()
        self._bound: FBClient | None = None  # the client our change listener is on
        self._relay = _ChangeRelay(self)
        self._lock = threading.Lock()  # state transitions and binding; never waited on by evaluation
        _providers.add(self)

    # ------------------------------------------------------------------ lifecycle

    def get_metadata(self) -> Metadata:
        return _METADATA

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Bind to the client and wait up to ``init_timeout`` for its data."""
        self._active = True
        self._next_check = -math.inf  # the first touch compares the real state
        client = self._client
        if client is None:
            # featbit_shm.get() is not called here: in a pre-fork master it
            # would build a client before the sync process exists. Each
            # process binds on first use and reports what it finds.
            self._state = (_READY, None)
            return
        self._bind(client)
        deadline = self._clock() + self._init_timeout
        status = client.update_status_provider
        while not client.initialize:
            if self._clock() >= deadline or status.current_state.state_type is StateType.OFF:
                break
            self._sleep(0.01)
        if not client.initialize:
            _status, code, why = status_for(False, status.current_state)
            self._state = (_ERROR, code)
            raise ProviderNotReadyError(f"featbit-shm has no flag data: {why}")
        self._state = (_READY, None)

    def shutdown(self) -> None:
        """Remove the change listener; the client keeps running."""
        self._active = False
        with self._lock:
            bound, self._bound = self._bound, None
            self._state = None
        if bound is not None:
            bound.flag_tracker.remove_flag_change_notifier(self._relay)

    def _bind(self, client: FBClient) -> None:
        """Listen to this client's flag changes (and stop listening to the previous one)."""
        with self._lock:
            old, self._bound = self._bound, client
        if old is not None and old is not client:
            old.flag_tracker.remove_flag_change_notifier(self._relay)
        if self._active and old is not client:
            client.flag_tracker.add_flag_changed_listener(self._relay)

    def _client_now(self) -> FBClient:
        """The client to use now (a lazily bound one is looked up and bound)."""
        client = self._client
        if client is None:
            try:
                client = featbit_shm.get()
            except Exception as exc:  # noqa: BLE001 - no configuration: an error result, never a raise
                message = f"featbit_shm.get() failed: {exc}"
                self._transition((_ERROR, ErrorCode.GENERAL), message)
                raise _Failure(ErrorCode.GENERAL, message) from None
            if client is not self._bound:
                self._bind(client)
        return client

    def _look(self, client: FBClient) -> None:
        """Compare the sync state with what the registry was told, when a look is due.

        Called after an evaluation, never before: data may arrive between the
        two, and the status must not lag behind a value just served.
        """
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._interval
            status, code, why = status_for(client.initialize, client.update_status_provider.current_state)
            self._transition((status, code), why)

    def _transition(self, key: StatusKey, message: str) -> None:
        """Emit the event for a new provider state (one thread at a time; others skip)."""
        if key == self._state or not self._lock.acquire(blocking=False):
            return
        try:
            if key == self._state:
                return
            self._state = key
            status, code = key
            details = ProviderEventDetails(message=message or None, error_code=code)
            if status is _READY:
                self.emit_provider_ready(details)
            elif status is _STALE:
                self.emit_provider_stale(details)
            else:
                self.emit_provider_error(details)
        finally:
            self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ evaluation

    def _resolve(
        self,
        flag_key: str,
        default: T,
        context: EvaluationContext | None,
        detail_of: Detail,
    ) -> FlagResolutionDetails[T]:
        try:
            client = self._client_now()
            try:
                detail = detail_of(client, flag_key, user_from_context(context), default)
            finally:
                self._look(client)
            kind = detail.kind
            if kind is _FALLTHROUGH:
                reason = Reason.DEFAULT
            elif kind is _RULE_MATCH or kind is _TARGET_MATCH:
                reason = Reason.TARGETING_MATCH
            elif kind is _OFF:
                reason = Reason.DISABLED
            else:
                return FlagResolutionDetails(default, error_code_for(detail), detail.reason, Reason.ERROR)
            if detail.split:
                reason = Reason.SPLIT
            return FlagResolutionDetails(detail.variation, None, None, reason, detail.variation_id or None, _metadata(detail))
        except _Failure as failure:
            return FlagResolutionDetails(default, failure.code, str(failure), Reason.ERROR)
        except Exception as exc:  # noqa: BLE001 - evaluation never raises (STYLE 6)
            warn_limited("openfeature-resolve", f"featbit_shm: OpenFeature evaluation of {flag_key!r} failed: {exc!r}")
            return FlagResolutionDetails(default, ErrorCode.GENERAL, f"featbit-shm provider error: {exc}", Reason.ERROR)

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, FBClient.bool_variation_detail)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, FBClient.string_variation_detail)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context, FBClient.int_variation_detail)

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, evaluation_context, FBClient.float_variation_detail)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        # A JSON scalar is WrongType inside the client, so no event is recorded for it.
        return self._resolve(flag_key, default_value, evaluation_context, FBClient.object_variation_detail)

    # ------------------------------------------------------------------ tracking

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        """A FeatBit custom metric (R-63): the event name, the details' ``value``
        as the numeric value (1.0 when absent). FeatBit metrics have no
        attributes, so the details' attributes are not sent. Never raises."""
        try:
            value = tracking_event_details.value if tracking_event_details is not None else None
            if value is None:
                value = 1.0
            if not isinstance(tracking_event_name, str) or not tracking_event_name:
                raise _Failure(ErrorCode.GENERAL, "the event name must be a non-empty string")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _Failure(ErrorCode.GENERAL, f"the value must be a finite number, not {value!r}")
            client = self._client_now()
            client.track_metric(user_from_context(evaluation_context), tracking_event_name, float(value))
            self._look(client)
        except _Failure as failure:
            warn_limited(
                f"openfeature-track-{failure.code}",
                f"featbit_shm: OpenFeature track({tracking_event_name!r}) not recorded: {failure}",
            )
        except Exception as exc:  # noqa: BLE001 - tracking never raises into the app
            warn_limited(
                "openfeature-track", f"featbit_shm: OpenFeature track({tracking_event_name!r}) failed: {exc!r}"
            )


def _after_fork_in_child() -> None:
    for provider in list(_providers):
        provider._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
