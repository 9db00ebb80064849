"""The offline FBClient: fbclient's surface, bad input, typed results (R-57..R-60, R-71..R-73, R-83..R-87)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from featbit_shm import Config, ConfigError, DataError, EvalDetail, FBClient, ReasonKind
from featbit_shm._core.document import load_document
from featbit_shm.testing import builders as b

from .conftest import offline_client

U = {"key": "u1", "name": "Ann", "country": "us"}


def test_r71_offline_is_ready_at_once_even_without_data() -> None:
    with FBClient(Config(offline=True)) as client:
        assert client.initialize is True
        assert client.is_offline() is True
        detail = client.variation_detail("nope", U, "d")
        assert (detail.kind, detail.reason, detail.variation) == (ReasonKind.ERROR, "flag not found", "d")


def test_bootstrap_file_is_served(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(b.data_sync([b.flag("f", variations=["x", "y"], variation_type="string")])))
    client = FBClient(Config(offline=True, bootstrap_file=path))
    assert client.variation("f", U, "d") == "x"


def test_missing_bootstrap_file_is_a_clear_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read bootstrap file"):
        FBClient(Config(offline=True, bootstrap_file=tmp_path / "missing.json"))


def test_r72_bootstrap_must_be_full(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(b.data_sync([b.flag("f")], event_type="patch")))
    with pytest.raises(DataError, match="full"):
        FBClient(Config(offline=True, bootstrap_file=path))


def test_malformed_flag_loads_the_others_and_is_reported_by_key(caplog: pytest.LogCaptureFixture) -> None:
    bad = b.flag("broken")
    bad["rules"] = "nope"
    doc = json.dumps(b.data_sync([b.flag("ok-1"), bad, b.flag("ok-2")]))
    client = FBClient(Config(offline=True))
    with caplog.at_level(logging.WARNING, logger="featbit_shm"):
        assert client.initialize_from_external_json(doc) is True
    assert client.variation("ok-1", U, False) is True
    assert client.variation("ok-2", U, False) is True
    assert client.variation_detail("broken", U, "d").reason == "flag not found"
    assert "broken" in caplog.text
    assert [s.key for s in load_document(doc).skipped] == ["broken"]


@pytest.mark.parametrize("doc", ["{not json", json.dumps({"messageType": "x", "data": {}}), json.dumps([1])])
def test_r73_unusable_document_returns_false_and_keeps_previous_data(doc: str) -> None:
    client = offline_client(b.flag("f"))
    assert client.initialize_from_external_json(doc) is False
    assert client.variation("f", U, False) is True


def test_r73_load_always_replaces_even_older_data() -> None:
    # G-3: fbclient ignores a second load whose versions are not newer.
    client = offline_client(b.flag("f", updated_at=10_000))
    assert client.initialize_from_external_json(json.dumps(b.data_sync([b.flag("g", updated_at=1)]))) is True
    assert client.is_flag_known("f") is False
    assert client.is_flag_known("g") is True


def test_r25_online_client_without_a_sync_process_is_not_ready() -> None:
    import uuid

    from featbit_shm.shm.names import StoreNames
    from featbit_shm.shm.objects import remove_objects

    config = Config("secret-" + uuid.uuid4().hex, "http://localhost:5100", "ws://localhost:5100", namespace="t", start_sync=False)
    try:
        client = FBClient(config, start_wait=0.2)
        assert client.initialize is False  # not G-1: no data, no "initialized"
        detail = client.variation_detail("f", U, "d")
        assert (detail.kind, detail.variation, detail.reason) == (ReasonKind.CLIENT_NOT_READY, "d", "client not ready")
        assert client.variation("f", U, "d") == "d"
    finally:
        names = StoreNames.for_env(config.env_secret, "t")
        remove_objects(names.all_objects(), names.access)  # its client registry


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        Config("", "http://x", "ws://x")
    with pytest.raises(ConfigError):
        Config("s", "not a url", "ws://x")
    with pytest.raises(ConfigError):
        Config(offline=True, events_flush_interval=0)
    with pytest.raises(ConfigError, match="data_storage"):
        Config(offline=True, data_storage=object())
    with pytest.raises(ValueError):  # fbclient users catch ValueError
        FBClient("not a config")  # type: ignore[arg-type]
    assert "secret" not in repr(Config("very-secret", "http://x", "ws://x"))


# --- bad input never raises out of evaluation


BAD_USERS: list[Any] = [
    None,
    "u1",
    42,
    {},
    {"name": "no key"},
    {"key": ""},
    {"key": "   "},
    {"key": 17},
    {"key": "u", "name": 5},
    {"key": "u", "nested": {"a": 1}},
    {"key": "u", "tags": ["a"]},
    {"key": "u", "when": object()},
]


@pytest.mark.parametrize("user", BAD_USERS, ids=repr)
def test_r59_invalid_user_gives_default_with_reason_never_raises(user: Any) -> None:
    client = offline_client(b.flag("f"))
    assert client.variation("f", user, "dflt") == "dflt"
    detail = client.variation_detail("f", user, "dflt")
    assert (detail.kind, detail.variation, detail.variation_id) == (ReasonKind.ERROR, "dflt", "")
    assert detail.reason.startswith("invalid user")
    assert client.bool_variation("f", user, False) is False
    states = client.get_all_latest_flag_variations(user)
    assert states.success is False and len(states) == 0


def test_user_forms_accepted() -> None:
    client = offline_client(b.flag("f", rules=[b.rule([b.cond("keyId", "Equal", "k")], b.serve(1))], fallthrough=b.serve(0)))
    for user in ({"key": "k"}, {"keyId": "k"}, {"keyid": "k", "name": None}, {"key": "k", "email": None}):
        assert client.variation("f", user, None) is False, user


@pytest.mark.parametrize("key", [None, 5, "", "no-such-flag"])
def test_r59_bad_flag_key_gives_default(key: Any) -> None:
    client = offline_client(b.flag("f"))
    assert client.variation(key, U, "d") == "d"
    assert client.variation_detail(key, U, "d").kind is ReasonKind.ERROR


def test_r42_uncompilable_regex_gives_default_with_error() -> None:
    client = offline_client(b.flag("f", rules=[b.rule([b.cond("country", "MatchRegex", "([us")], b.serve(1))]))
    detail = client.variation_detail("f", U, "d")
    assert (detail.kind, detail.variation) == (ReasonKind.ERROR, "d")
    assert "regex" in detail.reason


# --- results (R-57, R-58)


def test_r57_detail_carries_kind_variation_id_and_names() -> None:
    client = offline_client(b.flag("f", name="Fancy", targets={1: ["u1"]}))
    d = client.variation_detail("f", U, None)
    assert (d.variation, d.kind, d.variation_id, d.key_name, d.name, d.reason) == (
        False, ReasonKind.TARGET_MATCH, "f-v1", "f", "Fancy", "target match"
    )
    assert d.to_json_dict(extended=True)["kind"] == "TargetMatch"
    assert set(d.to_json_dict()) == {"reason", "variation", "keyName", "name"}  # fbclient's shape


def test_r57_fallback_is_the_callers_exact_object() -> None:
    client = offline_client()
    default = {"a": [1]}
    assert client.variation("missing", U, default) is default
    assert client.variation_detail("missing", U, default).variation is default


def test_json_values_are_fresh_objects_per_call() -> None:
    client = offline_client(b.flag("j", variations=['{"a": [1]}', "{}"], variation_type="json"))
    first = client.variation("j", U)
    first["a"].append(2)
    assert client.variation("j", U) == {"a": [1]}


@pytest.mark.parametrize(
    ("vtype", "raw", "expected"),
    [("boolean", "TRUE", True), ("number", "33", 33), ("number", "2.5", 2.5), ("string", "x", "x"), ("json", "[1]", [1])],
)
def test_variation_converts_by_flag_type(vtype: str, raw: str, expected: Any) -> None:
    client = offline_client(b.flag("f", variations=[raw, raw], variation_type=vtype))
    assert client.variation("f", U, None) == expected


@pytest.mark.parametrize(("vtype", "raw"), [("boolean", "yes"), ("number", "12abc"), ("json", "{oops"), ("number", "nan")])
def test_r58_value_that_does_not_convert_is_wrong_type_not_raw_string(vtype: str, raw: str) -> None:
    # G-10: fbclient returns the raw string.
    client = offline_client(b.flag("f", variations=[raw, raw], variation_type=vtype))
    assert client.variation("f", U, "d") == "d"
    d = client.variation_detail("f", U, "d")
    assert (d.kind, d.variation, d.variation_id) == (ReasonKind.WRONG_TYPE, "d", "")


def test_r58_typed_variations() -> None:
    client = offline_client(
        b.flag("b", variations=["true", "false"]),
        b.flag("i", variations=["42", "1.5"], variation_type="number"),
        b.flag("big", variations=[str(2**63), "0"], variation_type="number"),
        b.flag("s", variations=["hello", "x"], variation_type="string"),
        b.flag("j", variations=['{"k": 1}', "{}"], variation_type="json"),
    )
    assert client.bool_variation("b", U, False) is True
    assert client.is_enabled("b", U) is True
    assert client.int_variation("i", U, 0) == 42
    assert client.float_variation("i", U, 0.0) == 42.0
    assert client.number_variation("i", U, 0) == 42
    assert client.string_variation("i", U, "") == "42"
    assert client.json_variation("j", U) == {"k": 1}
    # WrongType: a string is not a bool; int64 overflow is refused.
    assert client.bool_variation_detail("s", U, False).kind is ReasonKind.WRONG_TYPE
    assert client.int_variation_detail("big", U, -1).kind is ReasonKind.WRONG_TYPE
    assert client.int_variation("big", U, -1) == -1
    assert client.is_enabled("s", U) is False


def test_r39_typed_apis_ignore_variation_type() -> None:
    client = offline_client(b.flag("n", variations=["true", "false"], variation_type="string"))
    assert client.bool_variation("n", U, False) is True


# --- bulk (R-60)


def test_r60_bulk_evaluates_every_active_flag_and_contains_bad_ones() -> None:
    client = offline_client(
        b.flag("good"),
        b.flag("bad-regex", rules=[b.rule([b.cond("country", "MatchRegex", "(")], b.serve(0))]),
        b.flag("dangling", fallthrough=b.serve(5)),
        b.flag("gone", archived=True),
        b.flag("after"),
    )
    states = client.get_all_latest_flag_variations(U)
    assert states.success is True
    assert set(states.keys()) == {"good", "bad-regex", "dangling", "after"}  # G-6: fbclient fails the whole call
    assert states.get_variation("good") is True
    assert states.get_variation("after") is True
    for key in ("bad-regex", "dangling"):
        d = states.get(key)
        assert (d.kind, d.variation, d.variation_id) == (ReasonKind.ERROR, None, "")
    missing = states.get("nope", "dflt")
    assert (missing.reason, missing.variation) == ("flag not found", "dflt")
    assert len(states.to_json_dict()["data"]) == 4


def test_r60_bulk_on_empty_store() -> None:
    states = offline_client().get_all_latest_flag_variations(U)
    assert states.success is True and len(states) == 0


# --- lifecycle


def test_r79_stop_is_idempotent_and_evaluation_keeps_serving() -> None:
    client = offline_client(b.flag("f"))
    client.stop()
    client.stop()
    assert client.variation("f", U, False) is True


def test_context_manager_stops() -> None:
    with offline_client(b.flag("f")) as client:
        assert client.variation("f", U, False) is True
    assert client._closed is True


def test_config_defaults_apply_only_when_call_default_is_none() -> None:
    client = offline_client(defaults={"missing": "from-config"})
    assert client.variation("missing", U) == "from-config"
    assert client.variation("missing", U, "from-call") == "from-call"  # G-10: fbclient lets config win


def test_no_thread_is_started() -> None:
    before = threading.active_count()
    offline_client(b.flag("f")).variation("f", U)
    assert threading.active_count() == before


def test_r32_evaluation_concurrent_with_reload_sees_whole_snapshots() -> None:
    """Each reload flips two flags together; a reader must never see them disagree."""
    def doc(gen: int) -> str:
        value = "true" if gen % 2 else "false"
        return json.dumps(b.data_sync([b.flag(k, variations=[value, value]) for k in ("a", "b")]))

    client = FBClient(Config(offline=True))
    client.initialize_from_external_json(doc(0))
    stop = threading.Event()
    torn: list[tuple[Any, Any]] = []

    def reader() -> None:
        while not stop.is_set():
            states = client.get_all_latest_flag_variations(U)
            a, c = states.get_variation("a"), states.get_variation("b")
            if a != c:
                torn.append((a, c))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for gen in range(1, 300):
        client.initialize_from_external_json(doc(gen))
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert torn == []


def test_detail_equality_and_repr() -> None:
    d = EvalDetail("flag off", True, "f", "F", "v", ReasonKind.OFF)
    assert d == EvalDetail("flag off", True, "f", "F", "v", ReasonKind.OFF)
    assert "Off" in repr(d)


def test_reload_with_same_versions_but_new_content_serves_the_new_content() -> None:
    client = offline_client(b.flag("f", variations=["true", "false"], updated_at=5))
    assert client.variation("f", U, None) is True
    doc = json.dumps(b.data_sync([b.flag("f", variations=["false", "true"], updated_at=5)]))
    assert client.initialize_from_external_json(doc)
    assert client.variation("f", U, None) is False


def test_variation_never_raises_even_with_unhashable_key_and_config_defaults() -> None:
    client = offline_client(b.flag("f"), defaults={"f": True})
    assert client.variation(["not", "hashable"], U, "d") == "d"  # type: ignore[arg-type]
    assert client.variation_detail(["x"], U, "d").variation == "d"  # type: ignore[arg-type]


def test_detail_error_and_split_are_stable_fields() -> None:
    """EvalDetail.error names why kind is Error without parsing the reason
    text; EvalDetail.split says a fallthrough percentage rollout chose the
    value (OpenFeature's SPLIT)."""
    client = offline_client(
        b.flag("split", variations=["a", "b"], variation_type="string", fallthrough=b.split((0, 0, 0.5, 1), (1, 0.5, 1, 1))),
        b.flag("plain", variations=["a", "b"], variation_type="string"),
        b.flag("seg", rules=[b.rule([b.in_segment("missing")], b.serve(0))]),
    )
    user = {"key": "u1"}
    d = client.string_variation_detail("split", user, "d")
    assert d.kind is ReasonKind.FALLTHROUGH and d.split and d.error == ""
    d = client.string_variation_detail("plain", user, "d")
    assert d.kind is ReasonKind.FALLTHROUGH and not d.split
    assert client.variation_detail("nope", user, "d").error == "FlagNotFound"
    assert client.variation_detail("plain", {"name": "no key"}, "d").error == "InvalidUser"
    assert client.variation_detail("seg", user, False).error == "MalformedFlag"  # R-47
    assert client.string_variation_detail("plain", user, "d").error == ""


def test_object_variation_takes_objects_and_arrays_only() -> None:
    client = offline_client(
        b.flag("obj", variations=['{"a": 1}', "[]"], variation_type="json"),
        b.flag("scalar", variations=["42", "0"], variation_type="json"),
    )
    user = {"key": "u1"}
    assert client.object_variation("obj", user, {}) == {"a": 1}
    d = client.object_variation_detail("scalar", user, {"dflt": True})
    assert (d.variation, d.kind) == ({"dflt": True}, ReasonKind.WRONG_TYPE)  # R-58: no event either (R-66)
    assert client.json_variation("scalar", user, None) == 42
