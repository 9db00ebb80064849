"""FeatBitProvider through the real openfeature-sdk API, against the FeatBit stand-in (issue 10).

Every test evaluates with ``api.get_client().get_*_details(...)`` (or
``track``) on a provider set with ``api.set_provider_and_wait``; the client
behind it is an online FBClient fed by a real sync process from the stand-in
unless a test says otherwise. Reason kinds and their reason texts are those of
R-57/R-87; the OpenFeature mapping is documented in featbit_shm/openfeature.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

import pytest

pytest.importorskip("openfeature")

from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus
from openfeature.track import TrackingEventDetails

from featbit_shm import Config, EvalDetail, FBClient, ReasonKind, State, StateType
from featbit_shm.openfeature import FeatBitProvider, error_code_for, reason_for, status_for, user_from_context
from featbit_shm.status_types import ErrorTrack
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from .app_servers import ROOT, WORKERS, AppServer, banner_off, free_port, new_namespace, server
from .sync_helpers import SyncFixture, eventually, sync_env

# the module's fixture runs a sync process behind the provider: the integration lane.
pytestmark = pytest.mark.subprocess

__all__ = ["server"]  # the app-server fixture, imported for pytest

SEGMENT = "seg-beta"
SPLIT = b.split((0, 0.0, 0.5, 1.0), (1, 0.5, 1.0, 1.0))
WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def broken_off_flag() -> dict[str, Any]:
    flag = b.flag("broken-off", enabled=False)
    flag["disabledVariationId"] = "no-such-variation"  # a dangling variation id
    return flag


def context_flag() -> dict[str, Any]:
    """A string flag whose rules each look at one context attribute."""
    checks = [
        ("name", "Ann"),
        ("beta", "true"),
        ("age", "41"),
        ("ratio", "0.5"),
        ("since", WHEN.isoformat()),
        ("tags", '["a","b"]'),
        ("prefs", '{"x":1,"at":"2024-05-01T12:00:00+00:00"}'),
    ]
    return b.flag(
        "ctx",
        variations=["none", *(prop for prop, _ in checks)],
        variation_type="string",
        rules=[b.rule([b.cond(prop, "Equal", want)], b.serve(i + 1), name=prop) for i, (prop, want) in enumerate(checks)],
        fallthrough=b.serve(0),
    )


FLAGS = [
    b.flag("off", enabled=False, off=1),
    b.flag("target", targets={0: ["alice"]}, fallthrough=b.serve(1)),
    b.flag("rule", rules=[b.rule([b.cond("country", "Equal", "us")], b.serve(0))], fallthrough=b.serve(1)),
    b.flag("rule-split", rules=[b.rule([b.cond("country", "Equal", "us")], SPLIT)], fallthrough=b.serve(1)),
    b.flag("fallthrough", fallthrough=b.serve(0)),
    b.flag("split", fallthrough=SPLIT),
    b.flag("in-beta", rules=[b.rule([b.in_segment(SEGMENT)], b.serve(0))], fallthrough=b.serve(1)),
    b.flag("color", variations=["blue", "red"], variation_type="string"),
    b.flag("limit", variations=["42", "7"], variation_type="number"),
    b.flag("ratio", variations=["2.5", "1"], variation_type="number"),
    b.flag("config", variations=['{"theme": "dark", "size": 3}', "{}"], variation_type="json"),
    b.flag("config-list", variations=["[1, 2]", "{}"], variation_type="json"),
    b.flag("config-scalar", variations=["42", "{}"], variation_type="json"),
    broken_off_flag(),
    b.flag("broken-segment", rules=[b.rule([b.in_segment("no-such-segment")], b.serve(0))]),
    context_flag(),
]
SEGMENTS = [b.segment(SEGMENT, included=["bob"])]


def ctx(key: str | None = "u1", **attributes: Any) -> EvaluationContext:
    return EvaluationContext(key, attributes)


def register(provider: FeatBitProvider) -> None:
    """``api.set_provider_and_wait`` (openfeature-sdk 0.10+); 0.9's ``set_provider``
    initialises on the calling thread too, and reports a failure as PROVIDER_ERROR."""
    set_and_wait = getattr(api, "set_provider_and_wait", None)
    if set_and_wait is not None:
        set_and_wait(provider)
    else:
        api.set_provider(provider)


def register_not_ready(provider: FeatBitProvider) -> None:
    """Register a provider whose client has no data yet: 0.10+ raises from
    ``set_provider_and_wait``, 0.9 reports PROVIDER_ERROR."""
    if hasattr(api, "set_provider_and_wait"):
        with pytest.raises(ProviderNotReadyError):
            register(provider)
    else:
        register(provider)


def online_client(env: SyncFixture, start_wait: float = 15) -> FBClient:
    server = env.server
    return FBClient(Config(server.secret, server.event_url, server.streaming_url, namespace=env.namespace), start_wait=start_wait)


class Heard:
    """OpenFeature event handlers that remember what they were given (they run on OpenFeature's executor)."""

    def __init__(self, *events: ProviderEvent) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[ProviderEvent, EventDetails]] = []
        for event in events:
            api.add_handler(event, self._handler(event))

    def _handler(self, event: ProviderEvent) -> Any:
        def handle(details: EventDetails) -> None:
            with self._lock:
                self.items.append((event, details))

        return handle

    def of(self, event: ProviderEvent) -> list[EventDetails]:
        with self._lock:
            return [d for e, d in self.items if e is event]

    def kinds(self) -> list[ProviderEvent]:
        with self._lock:
            return [e for e, _ in self.items]


@pytest.fixture(scope="module")
def standin() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=FLAGS, segments=SEGMENTS) as s:
        yield s


@pytest.fixture(scope="module")
def synced(standin: FeatBitStandIn) -> Iterator[tuple[SyncFixture, FBClient]]:
    with sync_env(standin) as env:
        env.spawn(standby=False)
        client = online_client(env)
        assert client.initialize
        yield env, client
        client.stop()


@pytest.fixture
def of_api() -> Iterator[None]:
    """OpenFeature's global state, reset after each test."""
    try:
        yield
    finally:
        api.shutdown()


@pytest.fixture
def flags(synced: tuple[SyncFixture, FBClient], of_api: None) -> OpenFeatureClient:
    register(FeatBitProvider(synced[1], status_interval=0))
    return api.get_client()


@pytest.fixture
def env(of_api: None) -> Iterator[SyncFixture]:
    """A stand-in and sync namespace of the test's own (for tests that change data or state)."""
    with FeatBitStandIn(flags=FLAGS, segments=SEGMENTS) as s, sync_env(s) as fixture:
        yield fixture


# --------------------------------------------------------------------------- reasons


def test_flag_off_is_disabled_with_the_off_variation(flags: OpenFeatureClient) -> None:
    d = flags.get_boolean_details("off", True, ctx())
    assert (d.value, d.reason, d.variant, d.error_code) == (False, Reason.DISABLED, "off-v1", None)
    assert d.flag_metadata == {"reasonKind": "Off", "reason": "flag off"}


def test_target_match_is_targeting_match(flags: OpenFeatureClient) -> None:
    d = flags.get_boolean_details("target", False, ctx("alice"))
    assert (d.value, d.reason, d.variant) == (True, Reason.TARGETING_MATCH, "target-v0")
    assert d.flag_metadata["reasonKind"] == "TargetMatch"
    other = flags.get_boolean_details("target", True, ctx("bob"))
    assert (other.value, other.reason, other.variant) == (False, Reason.DEFAULT, "target-v1")


def test_rule_match_is_targeting_match(flags: OpenFeatureClient) -> None:
    d = flags.get_boolean_details("rule", False, ctx(country="us"))
    assert (d.value, d.reason, d.variant) == (True, Reason.TARGETING_MATCH, "rule-v0")
    assert d.flag_metadata == {"reasonKind": "RuleMatch", "reason": "rule match"}
    assert flags.get_boolean_details("rule", True, ctx(country="fr")).reason == Reason.DEFAULT


def test_segment_rule_match_is_targeting_match(flags: OpenFeatureClient) -> None:
    assert flags.get_boolean_details("in-beta", False, ctx("bob")).reason == Reason.TARGETING_MATCH
    assert flags.get_boolean_details("in-beta", True, ctx("carol")).reason == Reason.DEFAULT


def test_percentage_split_in_a_rule_stays_targeting_match(flags: OpenFeatureClient) -> None:
    """The rule decided, so the reason is TARGETING_MATCH even though its rollout split (documented)."""
    seen = {flags.get_boolean_details("rule-split", False, ctx(f"user-{i}", country="us")).variant for i in range(40)}
    assert seen == {"rule-split-v0", "rule-split-v1"}
    assert flags.get_boolean_details("rule-split", False, ctx("user-0", country="us")).reason == Reason.TARGETING_MATCH


def test_fallthrough_to_one_variation_is_default(flags: OpenFeatureClient) -> None:
    d = flags.get_boolean_details("fallthrough", False, ctx())
    assert (d.value, d.reason, d.variant) == (True, Reason.DEFAULT, "fallthrough-v0")
    assert d.flag_metadata == {"reasonKind": "Fallthrough", "reason": "fall through all rules"}


def test_fallthrough_percentage_rollout_is_split_and_matches_the_client(flags: OpenFeatureClient, synced: tuple[SyncFixture, FBClient]) -> None:
    """R-50 bucketing decides the variant; the provider only labels it SPLIT."""
    client = synced[1]
    variants = set()
    for i in range(40):
        d = flags.get_boolean_details("split", False, ctx(f"user-{i}"))
        direct = client.bool_variation_detail("split", {"key": f"user-{i}"}, False)
        assert (d.value, d.variant, d.reason) == (direct.variation, direct.variation_id, Reason.SPLIT)
        variants.add(d.variant)
    assert variants == {"split-v0", "split-v1"}


# --------------------------------------------------------------------------- typed values


def test_typed_values_convert_strictly(flags: OpenFeatureClient) -> None:
    assert flags.get_string_details("color", "d", ctx()).value == "blue"
    limit = flags.get_integer_details("limit", 0, ctx())
    assert (limit.value, type(limit.value), limit.variant) == (42, int, "limit-v0")
    ratio = flags.get_float_details("ratio", 0.0, ctx())
    assert (ratio.value, type(ratio.value)) == (2.5, float)
    assert flags.get_float_details("limit", 0.0, ctx()).value == 42.0
    assert flags.get_object_details("config", {}, ctx()).value == {"theme": "dark", "size": 3}
    assert flags.get_object_details("config-list", {}, ctx()).value == [1, 2]
    assert flags.get_boolean_value("fallthrough", False, ctx()) is True


def test_objects_are_fresh_per_call(flags: OpenFeatureClient) -> None:
    """R-32: a caller changing its object never changes what the next caller gets."""
    first = flags.get_object_value("config", {}, ctx())
    assert isinstance(first, dict)
    first["theme"] = "mutated"
    assert flags.get_object_value("config", {}, ctx()) == {"theme": "dark", "size": 3}


# --------------------------------------------------------------------------- errors


def assert_error(details: Any, default: Any, code: ErrorCode) -> None:
    assert (details.value, details.reason, details.error_code, details.variant) == (default, Reason.ERROR, code, None)
    assert details.error_message


def test_unknown_flag_is_flag_not_found(flags: OpenFeatureClient) -> None:
    d = flags.get_boolean_details("no-such-flag", True, ctx())
    assert_error(d, True, ErrorCode.FLAG_NOT_FOUND)
    assert d.error_message == "flag not found"


@pytest.mark.parametrize(
    ("call", "key", "default"),
    [
        ("get_boolean_details", "color", False),  # "blue" is not a boolean
        ("get_integer_details", "ratio", 0),  # "2.5" is not an int
        ("get_float_details", "color", 1.5),
        ("get_string_details", "limit", "d"),  # any value is a string: not an error
        ("get_object_details", "color", {"d": 1}),  # "blue" is not JSON
        ("get_object_details", "config-scalar", {"d": 1}),  # JSON 42: not an object or an array
        ("get_integer_details", "config", 7),
    ],
)
def test_a_value_that_does_not_convert_is_type_mismatch(flags: OpenFeatureClient, call: str, key: str, default: Any) -> None:
    """R-58: WrongType (and a JSON scalar asked for as an object) is TYPE_MISMATCH with the default."""
    d = getattr(flags, call)(key, default, ctx())
    if call == "get_string_details":
        assert (d.value, d.error_code) == ("42", None)
        return
    assert_error(d, default, ErrorCode.TYPE_MISMATCH)


@pytest.mark.parametrize("context", [None, EvaluationContext(), ctx(None, country="us"), ctx(""), ctx("  \t")])
def test_no_targeting_key_is_targeting_key_missing(flags: OpenFeatureClient, context: EvaluationContext | None) -> None:
    assert_error(flags.get_boolean_details("fallthrough", False, context), False, ErrorCode.TARGETING_KEY_MISSING)


def test_targeting_key_missing_wins_over_flag_not_found(flags: OpenFeatureClient) -> None:
    """Checked before evaluating: the context is wrong whatever the flag."""
    assert_error(flags.get_boolean_details("no-such-flag", False, ctx(None)), False, ErrorCode.TARGETING_KEY_MISSING)


@pytest.mark.parametrize("key", ["broken-off", "broken-segment"])
def test_malformed_flag_data_is_parse_error(flags: OpenFeatureClient, key: str) -> None:
    """R-37 (dangling variation id), R-47 (missing segment): malformed flag -> PARSE_ERROR."""
    d = flags.get_boolean_details(key, True, ctx())
    assert_error(d, True, ErrorCode.PARSE_ERROR)
    assert d.error_message is not None and d.error_message.startswith("malformed flag")


@pytest.mark.parametrize(
    "context",
    [
        EvaluationContext(42, {}),  # type: ignore[arg-type]
        ctx(blob=b"bytes"),
        ctx(things={1, 2}),
        ctx(nested=[object()]),
    ],
)
def test_a_context_featbit_cannot_use_is_invalid_context(flags: OpenFeatureClient, context: EvaluationContext) -> None:
    """R-59: bad user input is an error result, never an exception."""
    assert_error(flags.get_boolean_details("fallthrough", False, context), False, ErrorCode.INVALID_CONTEXT)


def test_mapping_tables() -> None:
    """Every reason kind of R-57 has its OpenFeature reason or error code (no server needed)."""

    def detail(kind: ReasonKind, reason: str, vid: str = "", error: str = "", split: bool = False) -> EvalDetail:
        return EvalDetail(reason, None, "f", "f", vid, kind, error, split)

    served = [
        (detail(ReasonKind.OFF, "flag off", "v"), Reason.DISABLED),
        (detail(ReasonKind.TARGET_MATCH, "target match", "v"), Reason.TARGETING_MATCH),
        (detail(ReasonKind.RULE_MATCH, "rule match", "v"), Reason.TARGETING_MATCH),
        (detail(ReasonKind.FALLTHROUGH, "fall through all rules", "v"), Reason.DEFAULT),
        (detail(ReasonKind.FALLTHROUGH, "fall through all rules", "v", split=True), Reason.SPLIT),
    ]
    for d, reason in served:
        assert (reason_for(d), error_code_for(d)) == (reason, None)
    failed = [
        (detail(ReasonKind.CLIENT_NOT_READY, "client not ready"), ErrorCode.PROVIDER_NOT_READY),
        (detail(ReasonKind.WRONG_TYPE, "wrong type"), ErrorCode.TYPE_MISMATCH),
        (detail(ReasonKind.ERROR, "flag not found", error="FlagNotFound"), ErrorCode.FLAG_NOT_FOUND),
        (detail(ReasonKind.ERROR, "malformed flag: rule 'r' has no rollout", error="MalformedFlag"), ErrorCode.PARSE_ERROR),
        (detail(ReasonKind.ERROR, "invalid user: user key must be a non-blank string", error="InvalidUser"), ErrorCode.INVALID_CONTEXT),
        (detail(ReasonKind.ERROR, "error in evaluation: boom", error="Exception"), ErrorCode.GENERAL),
    ]
    for d, code in failed:
        assert (reason_for(d), error_code_for(d)) == (Reason.ERROR, code)


def test_status_table() -> None:
    """R-16 states -> provider status; data is what decides between ERROR and STALE."""
    now = 0.0
    assert status_for(True, State(StateType.OK, now))[:2] == (ProviderStatus.READY, None)
    assert status_for(True, State(StateType.INTERRUPTED, now))[:2] == (ProviderStatus.STALE, None)
    assert status_for(True, State(StateType.INITIALIZING, now))[:2] == (ProviderStatus.STALE, None)
    off = status_for(True, State(StateType.OFF, now, ErrorTrack("SyncStopped", "rejected")))
    assert off[:2] == (ProviderStatus.ERROR, ErrorCode.GENERAL) and "rejected" in off[2]
    for kind in StateType:
        assert status_for(False, State(kind, now))[:2] == (ProviderStatus.ERROR, ErrorCode.PROVIDER_NOT_READY)


# --------------------------------------------------------------------------- context -> user


@pytest.mark.parametrize(
    ("attributes", "variant"),
    [
        ({}, "ctx-v0"),
        ({"name": "Ann"}, "ctx-v1"),
        ({"beta": True}, "ctx-v2"),  # booleans read "true" (G-8)
        ({"age": 41}, "ctx-v3"),
        ({"ratio": 0.5}, "ctx-v4"),
        ({"since": WHEN}, "ctx-v5"),  # ISO-8601
        ({"tags": ["a", "b"]}, "ctx-v6"),  # compact JSON
        ({"prefs": {"x": 1, "at": WHEN}}, "ctx-v7"),
        ({"name": None, "beta": None}, "ctx-v0"),  # None is absent
    ],
)
def test_context_attributes_become_custom_properties(flags: OpenFeatureClient, attributes: dict[str, Any], variant: str) -> None:
    d = flags.get_string_details("ctx", "d", ctx("u1", **attributes))
    assert (d.variant, d.error_code) == (variant, None)


def test_targeting_key_is_the_user_key_and_key_attributes_cannot_replace_it(flags: OpenFeatureClient) -> None:
    impostor = {"key": "mallory", "keyId": "mallory", "keyid": "mallory"}
    d = flags.get_boolean_details("target", False, EvaluationContext("alice", impostor))
    assert (d.reason, d.value) == (Reason.TARGETING_MATCH, True)
    assert user_from_context(EvaluationContext("alice", {**impostor, "name": "Al"})) == {"key": "alice", "name": "Al"}


def test_user_from_context_plain_and_rich_attributes() -> None:
    """Plain dicts take a fast path, anything else the general one; both give the same users."""
    assert user_from_context(EvaluationContext("u", {"name": 42, "beta": True, "n": None})) == {"key": "u", "name": "42", "beta": True}
    rich = MappingProxyType({"name": "A", "when": WHEN, "n": None, "keyId": "x"})
    assert user_from_context(EvaluationContext("u", rich)) == {"key": "u", "name": "A", "when": WHEN.isoformat()}
    assert user_from_context(EvaluationContext("u")) == {"key": "u", "name": ""}


def test_a_provider_needs_an_fbclient() -> None:
    with pytest.raises(TypeError):
        FeatBitProvider(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FeatBitProvider(None, status_interval=-1)


def test_global_and_client_contexts_merge_into_one_user(flags: OpenFeatureClient) -> None:
    api.set_evaluation_context(EvaluationContext(None, {"country": "us"}))
    flags.context = EvaluationContext("alice")
    assert flags.get_boolean_details("rule", False).reason == Reason.TARGETING_MATCH
    assert flags.get_boolean_details("target", False).reason == Reason.TARGETING_MATCH


# --------------------------------------------------------------------------- events and track (R-62..R-66)


def events_for(server: FeatBitStandIn, client: FBClient, user_key: str, count: int) -> list[dict[str, Any]]:
    assert client.flush_and_wait(10)

    def mine() -> list[dict[str, Any]]:
        return [e for e in server.events if e.get("user", {}).get("keyId") == user_key]

    assert server.wait_for(lambda: len(mine()) >= count)
    return mine()


def test_a_served_evaluation_records_one_event_and_an_error_none(flags: OpenFeatureClient, synced: tuple[SyncFixture, FBClient]) -> None:
    env, client = synced
    flags.get_boolean_details("no-such-flag", False, ctx("ev-user"))  # no event for a fallback
    flags.get_boolean_details("color", False, ctx("ev-user"))  # WrongType: none either
    flags.get_boolean_details("rule", False, ctx("ev-user", name="Eve", country="us"))
    [event] = events_for(env.server, client, "ev-user", 1)
    assert event["user"]["name"] == "Eve"
    assert {"name": "country", "value": "us"} in event["user"]["customizedProperties"]
    [variation] = event["variations"]
    assert (variation["featureFlagKey"], variation["variation"]["id"]) == ("rule", "rule-v0")


def test_track_records_a_custom_metric_with_the_value(flags: OpenFeatureClient, synced: tuple[SyncFixture, FBClient]) -> None:
    env, client = synced
    flags.track("checkout", ctx("tr-user", plan="pro"), TrackingEventDetails(value=99.5, attributes={"ignored": "yes"}))
    flags.track("visit", ctx("tr-user"))
    flags.track("no-user", ctx(None))  # no targeting key: nothing recorded, nothing raised
    flags.track("bad-value", ctx("tr-user"), TrackingEventDetails(value=float("nan")))
    events = events_for(env.server, client, "tr-user", 2)
    metrics = [m for e in events for m in e.get("metrics", [])]
    assert [(m["eventName"], m["numericValue"], m["type"]) for m in metrics] == [("checkout", 99.5, "CustomEvent"), ("visit", 1.0, "CustomEvent")]
    assert {"name": "plan", "value": "pro"} in events[0]["user"]["customizedProperties"]


# --------------------------------------------------------------------------- provider status and events


def status_after_touch(flags: OpenFeatureClient) -> ProviderStatus:
    """The provider looks at the sync state when it is used: use it, then read its status."""
    flags.get_boolean_value("fallthrough", False, ctx())
    return flags.get_provider_status()


def test_metadata_names_the_provider(flags: OpenFeatureClient) -> None:
    assert api.get_provider_metadata().name == "featbit-shm"
    assert flags.get_provider_status() is ProviderStatus.READY


def test_not_ready_until_the_sync_process_publishes_then_ready(env: SyncFixture) -> None:
    """R-25: ClientNotReady is PROVIDER_NOT_READY; the first touch after data arrives emits READY."""
    client = online_client(env, start_wait=0)
    provider = FeatBitProvider(client, init_timeout=0, status_interval=0)
    register_not_ready(provider)
    flags = api.get_client()
    assert flags.get_provider_status() is ProviderStatus.ERROR
    assert_error(flags.get_boolean_details("fallthrough", False, ctx()), False, ErrorCode.PROVIDER_NOT_READY)
    heard = Heard(ProviderEvent.PROVIDER_READY)
    env.spawn(standby=False)
    assert eventually(lambda: flags.get_boolean_details("fallthrough", False, ctx()).value is True)
    assert flags.get_provider_status() is ProviderStatus.READY
    assert eventually(lambda: heard.of(ProviderEvent.PROVIDER_READY))


def test_data_arriving_during_an_evaluation_is_ready_in_that_same_call(
    env: SyncFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status is looked at after the evaluation, so it never lags behind a value just served.

    Reproduces a CI failure: the look ran first, saw no data, and the
    evaluation that followed found the first snapshot; the value was the
    flag's while the status still said ERROR until the next call.
    """
    client = online_client(env, start_wait=0)
    env.spawn(standby=False)
    assert eventually(lambda: client.initialize)
    arrived = threading.Event()  # data "arrives" when the evaluation runs
    real_ready = FBClient.initialize
    real_detail = FBClient.bool_variation_detail

    def evaluate(self: FBClient, *args: Any) -> Any:
        arrived.set()
        return real_detail(self, *args)

    monkeypatch.setattr(FBClient, "initialize", property(lambda self: arrived.is_set() and real_ready.fget(self)))
    monkeypatch.setattr(FBClient, "bool_variation_detail", evaluate)
    provider = FeatBitProvider(client, init_timeout=0, status_interval=0)
    register_not_ready(provider)
    flags = api.get_client()
    assert flags.get_provider_status() is ProviderStatus.ERROR
    details = flags.get_boolean_details("fallthrough", False, ctx())
    assert details.value is True
    assert flags.get_provider_status() is ProviderStatus.READY


def test_initialize_waits_for_data(env: SyncFixture) -> None:
    """set_provider_and_wait blocks (up to init_timeout) until the client has data."""
    client = online_client(env, start_wait=0)
    env.spawn(standby=False)
    register(FeatBitProvider(client, init_timeout=15))
    flags = api.get_client()
    assert flags.get_provider_status() is ProviderStatus.READY
    assert flags.get_boolean_value("fallthrough", False, ctx()) is True


def test_a_hung_sync_process_makes_the_provider_stale_then_ready(env: SyncFixture) -> None:
    """R-16: INTERRUPTED (a heartbeat older than 3 s) is STALE; values keep coming from the last snapshot."""
    proc = env.spawn(standby=False)
    client = online_client(env)
    register(FeatBitProvider(client, status_interval=0))
    flags = api.get_client()
    heard = Heard(ProviderEvent.PROVIDER_STALE, ProviderEvent.PROVIDER_READY)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert eventually(lambda: status_after_touch(flags) is ProviderStatus.STALE)
        d = flags.get_boolean_details("rule", False, ctx(country="us"))
        assert (d.value, d.reason, d.error_code) == (True, Reason.TARGETING_MATCH, None)
        assert eventually(lambda: heard.of(ProviderEvent.PROVIDER_STALE))
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert eventually(lambda: status_after_touch(flags) is ProviderStatus.READY)
    assert eventually(lambda: len(heard.of(ProviderEvent.PROVIDER_READY)) >= 2)  # one at registration, one on recovery
    assert heard.of(ProviderEvent.PROVIDER_STALE)[0].message


def test_a_rejected_sync_process_is_an_error_but_values_keep_coming(env: SyncFixture) -> None:
    """R-18: a 4003 turns the sync OFF; the provider reports ERROR (not FATAL) and serves the last snapshot."""
    env.spawn(standby=False)
    client = online_client(env)
    register(FeatBitProvider(client, status_interval=0))
    flags = api.get_client()
    heard = Heard(ProviderEvent.PROVIDER_ERROR)
    env.server.close_connections(4003)
    assert eventually(lambda: status_after_touch(flags) is ProviderStatus.ERROR)
    assert eventually(lambda: heard.of(ProviderEvent.PROVIDER_ERROR))
    assert heard.of(ProviderEvent.PROVIDER_ERROR)[0].error_code == ErrorCode.GENERAL
    d = flags.get_boolean_details("fallthrough", False, ctx())
    assert (d.value, d.reason, d.error_code) == (True, Reason.DEFAULT, None)


def test_flag_changes_emit_configuration_changed_naming_the_flags(env: SyncFixture) -> None:
    """R-80/R-88: a patched flag, and a flag whose segment changed, each emit PROVIDER_CONFIGURATION_CHANGED."""
    env.spawn(standby=False)
    client = online_client(env)
    register(FeatBitProvider(client, status_interval=0))
    flags = api.get_client()
    heard = Heard(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)
    env.server.update_flag(b.flag("color", variations=["green", "red"], variation_type="string", updated_at=env.server.now_ms()))
    assert eventually(lambda: flags.get_string_value("color", "d", ctx()) == "green")
    assert eventually(lambda: heard.of(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED))
    assert [d.flags_changed for d in heard.of(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)] == [["color"]]
    env.server.update_segment(b.segment(SEGMENT, included=["bob", "carol"], updated_at=env.server.now_ms()))
    assert eventually(lambda: flags.get_boolean_details("in-beta", False, ctx("carol")).reason == Reason.TARGETING_MATCH)
    assert eventually(lambda: len(heard.of(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)) == 2)
    assert heard.of(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)[1].flags_changed == ["in-beta"]


def test_archived_flag_becomes_flag_not_found(env: SyncFixture) -> None:
    """R-29: an archived flag is not found, and its removal is a configuration change."""
    env.spawn(standby=False)
    register(FeatBitProvider(online_client(env), status_interval=0))
    flags = api.get_client()
    heard = Heard(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)
    env.server.update_flag(b.flag("color", variations=["blue", "red"], variation_type="string", updated_at=env.server.now_ms(), archived=True))
    assert eventually(lambda: flags.get_string_details("color", "d", ctx()).error_code == ErrorCode.FLAG_NOT_FOUND)
    assert eventually(lambda: [d.flags_changed for d in heard.of(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)] == [["color"]])


def test_shutdown_stops_change_events_and_leaves_the_client_running(env: SyncFixture) -> None:
    env.spawn(standby=False)
    client = online_client(env)
    register(FeatBitProvider(client, status_interval=0))
    api.shutdown()
    heard = Heard(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED)
    env.server.update_flag(b.flag("color", variations=["green", "red"], variation_type="string", updated_at=env.server.now_ms()))
    assert eventually(lambda: client.string_variation("color", {"key": "u1"}, "d") == "green")
    assert client.flag_tracker.dispatched >= 1  # the change was dispatched ... to no listener of ours
    assert heard.items == []


# --------------------------------------------------------------------------- processes: no thread, imports, fork


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FEATBIT_")}
    clean.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60, check=False)


def test_the_provider_starts_no_thread() -> None:
    """Evaluation, track, status and change events run on the caller's thread (DESIGN: no thread in a worker)."""
    code = """
import json, threading
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from featbit_shm import Config, FBClient
from featbit_shm.testing import builders as b
from featbit_shm.openfeature import FeatBitProvider
client = FBClient(Config(offline=True))
client.initialize_from_external_json(json.dumps(b.data_sync([b.flag("f")])))
getattr(api, "set_provider_and_wait", api.set_provider)(FeatBitProvider(client, status_interval=0))
flags = api.get_client()
values = [flags.get_boolean_value("f", False, EvaluationContext("u"))]
flags.track("t", EvaluationContext("u"))
client.initialize_from_external_json(json.dumps(b.data_sync([b.flag("f", enabled=False)])))
values.append(flags.get_boolean_value("f", True, EvaluationContext("u")))
print(json.dumps({"values": values, "threads": [t.name for t in threading.enumerate()]}))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"values": [True, False], "threads": ["MainThread"]}


def test_core_does_not_import_openfeature_and_a_missing_sdk_is_explained() -> None:
    done = run_python("import sys, featbit_shm; print(sorted(m for m in sys.modules if m.split('.')[0] == 'openfeature'))")
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    done = run_python("import sys; sys.modules['openfeature'] = None; import featbit_shm.openfeature")
    assert done.returncode == 1
    assert "pip install 'featbit-shm[openfeature]'" in done.stderr and "openfeature-sdk>=" in done.stderr


def test_lazy_provider_without_configuration_is_a_general_error() -> None:
    """FeatBitProvider() uses featbit_shm.get(); with nothing configured each evaluation is GENERAL, never a raise."""
    code = """
import json
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from featbit_shm.openfeature import FeatBitProvider
getattr(api, "set_provider_and_wait", api.set_provider)(FeatBitProvider())
flags = api.get_client()
d = flags.get_boolean_details("f", True, EvaluationContext("u"))
print(json.dumps([d.value, str(d.reason), str(d.error_code), flags.get_provider_status().value]))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [True, "ERROR", "GENERAL", "ERROR"]


class OpenFeatureGunicorn(AppServer):
    kind = "gunicorn"

    def __init__(self, server: FeatBitStandIn, *, preload: bool) -> None:
        self.port = free_port()
        self.namespace = new_namespace("of")
        env = {
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "GUNICORN_WORKERS": str(WORKERS),
            "GUNICORN_PRELOAD": "1" if preload else "0",
        }
        command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn_hooks" / "featbit.conf.py"), "--log-level", "warning", "tests.openfeature_app:app"]
        super().__init__(server, command, env)


@pytest.mark.parametrize("preload", [False, True])
@pytest.mark.gunicorn
def test_gunicorn_workers_evaluate_through_openfeature_without_threads(server: FeatBitStandIn, preload: bool) -> None:
    """One websocket for the host; each sync worker evaluates from shared memory on its only thread."""
    pytest.importorskip("gunicorn")
    g = OpenFeatureGunicorn(server, preload=preload)
    try:
        before = g.workers(lambda a: a["status"] == "READY", timeout=60)  # once each has data (a loaded machine)
        assert len(before) == WORKERS
        for answer in before.values():
            assert answer["threads"] == ["MainThread"]
            assert answer["status"] == "READY"
            assert answer["flags"]["welcome-banner"] is True
            assert answer["flags"]["welcome-banner.reason"] == "TARGETING_MATCH"
            assert answer["flags"]["welcome-banner.variant"] == "welcome-banner-v0"
            assert answer["flags"]["checkout-theme.reason"] == "TARGETING_MATCH"  # alice is a beta tester
        assert server.open_connections == 1
        banner_off(server)
        after = g.workers(lambda a: a["flags"]["welcome-banner"] is False)
        assert set(after) == set(before)
        for answer in after.values():
            assert answer["flags"]["welcome-banner.reason"] == "DISABLED"
            assert answer["threads"] == ["MainThread"]
        assert g.stop() == 0
        assert eventually(lambda: g.store_objects() == [], timeout=15)
    finally:
        g.cleanup()
