"""One scenario script, run against fbclient (PyPI) and featbit_shm (issue 6).

Each SDK gets its own FeatBit stand-in holding the same flags; fbclient
connects its own websocket, featbit_shm evaluates from shared memory fed by
a real sync process. Every step of the script must give the same result in
both, except the steps listed in ``DIFFERENCES``: there the test asserts the
exact result of each SDK, so a documented difference (MIGRATING.md, with its
R-/G- reason) that disappears or changes fails here too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fbclient.client
import fbclient.config
import pytest

import featbit_shm
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from .sync_helpers import eventually, sync_env

# fbclient and a featbit_shm sync process, each against its own stand-in: the integration lane.
pytestmark = pytest.mark.subprocess

T0 = 1_700_000_000_000
VIP = {"key": "vip", "name": "V"}
US = {"key": "u-us", "name": "U1", "country": "us"}
FR = {"key": "u-fr", "name": "U2", "country": "fr"}
USERS = (VIP, US, FR)
EVENTS_USER = {"key": "events-user", "name": "E", "plan": "pro"}


def flags() -> list[dict[str, Any]]:
    return [
        b.flag(
            "bool-flag",
            targets={0: ["vip"]},
            rules=[b.rule([b.cond("country", "Equal", "us")], b.serve(0), name="us")],
            fallthrough=b.serve(1),
            updated_at=T0,
        ),
        b.flag("str-flag", variations=["on-text", "off-text"], variation_type="string", enabled=False, updated_at=T0),
        b.flag("num-int", variations=["42", "7"], variation_type="number", updated_at=T0),
        b.flag("num-float", variations=["3.5", "0"], variation_type="number", updated_at=T0),
        b.flag("json-flag", variations=['{"a": 1, "b": [true, null]}', "[]"], variation_type="json", updated_at=T0),
        b.flag(
            "seg-flag",
            variations=["in", "out"],
            variation_type="string",
            rules=[b.rule([b.in_segment("beta")], b.serve(0), name="beta")],
            fallthrough=b.serve(1),
            updated_at=T0,
        ),
        b.flag("split-flag", variations=["A", "B"], variation_type="string", fallthrough=b.split((0, 0.0, 0.5, 1.0), (1, 0.5, 1.0, 1.0)), updated_at=T0),
    ]


SEGMENTS = [b.segment("beta", included=["u-fr"], updated_at=T0)]
FLAG_KEYS = [f["key"] for f in flags()]


@dataclass
class Harness:
    """What a step may use: the client, its server, and a way to wait."""

    client: Any
    server: FeatBitStandIn
    calls: list[Any] = field(default_factory=list)

    def until(self, predicate: Callable[[], Any]) -> Any:
        # Touching the client is how featbit_shm learns of new data; fbclient
        # gets it on its own thread. Both are polled the same way here.
        return eventually(predicate, timeout=15, interval=0.01)


def detail_dict(d: Any) -> dict[str, Any]:
    return d.to_json_dict()  # type: ignore[no-any-return]


def all_states(c: Any, user: dict[str, Any]) -> dict[str, Any]:
    states = c.get_all_latest_flag_variations(user).to_json_dict()
    states["data"] = sorted(states["data"], key=lambda d: d["keyName"])
    return states  # type: ignore[no-any-return]


def step_push_then_wait(h: Harness) -> Any:
    h.server.update_flag(b.flag("str-flag", variations=["on-text", "off-text"], variation_type="string", updated_at=T0 + 10))
    return h.until(lambda: h.client.variation("str-flag", US, "d") == "on-text")


def step_value_listener(h: Harness) -> Any:
    h.client.flag_tracker.add_flag_value_changed_listener("num-int", US, lambda k, old, new: h.calls.append([k, old, new]))
    h.server.update_flag(b.flag("num-int", variations=["43", "7"], variation_type="number", updated_at=T0 + 20))
    h.until(lambda: h.client.variation("num-float", US) == 3.5 and h.calls)
    return h.calls


def step_archive(h: Harness) -> Any:
    h.server.update_flag(b.flag("json-flag", archived=True, updated_at=T0 + 30))
    h.until(lambda: not h.client.is_flag_known("json-flag"))
    return [h.client.variation("json-flag", US, "gone"), detail_dict(h.client.variation_detail("json-flag", US, "gone"))]


def step_segment_change(h: Harness) -> Any:
    h.server.update_segment(b.segment("beta", included=["u-fr", "u-us"], updated_at=T0 + 40))
    return h.until(lambda: h.client.variation("seg-flag", US) == "in")


def step_events(h: Harness) -> Any:
    """What FeatBit receives for a fixed set of calls, timestamps aside (R-61..R-65)."""
    c = h.client
    c.variation("bool-flag", EVENTS_USER, False)
    c.variation_detail("num-int", EVENTS_USER, 0)
    c.variation("missing-flag", EVENTS_USER, "d")  # a fallback: no event
    c.track_metric(EVENTS_USER, "checkout", 9.5)
    c.track_metrics(EVENTS_USER, {"m1": 1.0, "m2": 2.0})
    c.identify(EVENTS_USER)
    c.flush()
    mine = lambda: [e for e in h.server.events if e.get("user", {}).get("keyId") == "events-user"]  # noqa: E731
    h.until(lambda: len(mine()) >= 5)

    def strip(event: dict[str, Any]) -> str:
        for part in (*event.get("variations", ()), *event.get("metrics", ())):
            part.pop("timestamp", None)
            for m in event.get("metrics", ()):
                m.pop("timestamp", None)
        return json.dumps(event, sort_keys=True)

    return sorted(strip(json.loads(json.dumps(e))) for e in mine())


def step_stop(h: Harness) -> Any:
    h.client.stop()
    h.client.stop()  # idempotent
    return h.client.variation("bool-flag", VIP, False)


STEPS: list[tuple[str, Callable[[Harness], Any]]] = [
    ("initialize", lambda h: h.client.initialize),
    ("is_offline", lambda h: h.client.is_offline()),
    ("status", lambda h: [h.client.update_status_provider.current_state.state_type.name, h.client.update_status_provider.wait_for_OKState(5)]),
    ("variation", lambda h: {k: [h.client.variation(k, u, "default") for u in USERS] for k in FLAG_KEYS}),
    ("variation_detail", lambda h: {k: [detail_dict(h.client.variation_detail(k, u, "default")) for u in USERS] for k in FLAG_KEYS}),
    ("unknown flag", lambda h: [h.client.variation("nope", US, "d"), detail_dict(h.client.variation_detail("nope", US, "d"))]),
    ("dict default", lambda h: h.client.variation("nope", US, {"x": [1, 2]})),
    ("number default", lambda h: h.client.variation("nope", US, 5)),
    ("is_enabled", lambda h: [h.client.is_enabled("bool-flag", u) for u in USERS] if hasattr(h.client, "is_enabled") else "absent"),
    ("is_flag_known", lambda h: [h.client.is_flag_known("bool-flag"), h.client.is_flag_known("nope")]),
    ("get_all", lambda h: [all_states(h.client, u) for u in USERS]),
    ("invalid user", lambda h: detail_dict(h.client.variation_detail("bool-flag", {"name": "no key"}, False))),
    ("latest_version", lambda h: h.client.update_status_provider.latest_version),
    ("patch", step_push_then_wait),
    ("value listener", step_value_listener),
    ("archive", step_archive),
    ("segment change", step_segment_change),
    ("events", step_events),
    ("after stop", step_stop),
]

# step -> (why, fbclient's result, featbit_shm's result). Mirrors MIGRATING.md.
DIFFERENCES: dict[str, tuple[str, Any, Any]] = {
    "invalid user": (
        "G-13: fbclient says 'user not specified'; featbit_shm says why the user is invalid",
        {"reason": "user not specified", "variation": False, "keyName": "bool-flag", "name": "flag name unknown"},
        {"reason": "invalid user: user key must be a non-blank string", "variation": False, "keyName": "bool-flag", "name": "bool-flag"},
    ),
    "is_enabled": ("fbclient 1.2.1 has no is_enabled; featbit_shm adds it (issue 6)", "absent", [True, True, False]),
}


def run(client: Any, server: FeatBitStandIn) -> dict[str, Any]:
    harness = Harness(client, server)
    results: dict[str, Any] = {}
    for name, step in STEPS:
        try:
            results[name] = step(harness)
        except Exception as exc:  # noqa: BLE001 - an exception is a result to compare too
            results[name] = f"raised {type(exc).__name__}: {exc}"
    return results


@pytest.fixture(scope="module")
def results() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    with FeatBitStandIn(flags=flags(), segments=SEGMENTS) as fb_server, FeatBitStandIn(flags=flags(), segments=SEGMENTS) as shm_server:
        old = fbclient.client.FBClient(fbclient.config.Config(fb_server.secret, fb_server.event_url, fb_server.streaming_url), start_wait=15)
        try:
            old_results = run(old, fb_server)
        finally:
            old.stop()
        with sync_env(shm_server) as env:
            env.spawn()
            new = featbit_shm.FBClient(
                featbit_shm.Config(shm_server.secret, shm_server.event_url, shm_server.streaming_url, namespace=env.namespace), start_wait=15
            )
            try:
                new_results = run(new, shm_server)
            finally:
                new.stop()
    yield old_results, new_results


@pytest.mark.parametrize("step", [name for name, _ in STEPS if name != "events"])
def test_same_result_as_fbclient(step: str, results: tuple[dict[str, Any], dict[str, Any]]) -> None:
    old, new = results
    if step in DIFFERENCES:
        why, expect_old, expect_new = DIFFERENCES[step]
        assert old[step] == expect_old, f"fbclient changed: {why}"
        assert new[step] == expect_new, f"featbit_shm changed: {why}"
        assert expect_old != expect_new
    else:
        assert new[step] == old[step]


def test_the_script_exercised_every_step_without_raising(results: tuple[dict[str, Any], dict[str, Any]]) -> None:
    for sdk in results:
        raised = {k: v for k, v in sdk.items() if isinstance(v, str) and v.startswith("raised ")}
        assert raised == {}


def test_fbclient_listener_ran_on_a_thread_and_featbit_shm_on_the_caller() -> None:
    """The documented difference in *how* listeners run (R-88): fbclient on
    its broadcaster thread, featbit_shm on the thread that touched the client."""
    threads: list[str] = []
    with FeatBitStandIn(flags=flags(), segments=SEGMENTS) as server, sync_env(server) as env:
        env.spawn()
        client = featbit_shm.FBClient(featbit_shm.Config(server.secret, server.event_url, server.streaming_url, namespace=env.namespace), start_wait=15)
        try:
            client.flag_tracker.add_flag_value_maybe_changed_listener("num-int", US, lambda k, v: threads.append(threading.current_thread().name))
            server.update_flag(b.flag("num-int", variations=["44", "7"], variation_type="number", updated_at=T0 + 50))
            assert eventually(lambda: client.variation("num-int", US) == 44 and threads, timeout=15)
        finally:
            client.stop()
    assert threads == [threading.current_thread().name]


def test_event_shapes_differ_only_as_documented(results: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Same events for the same calls: same users, metrics, identify and
    variation ids and values. Evaluation events differ in two fields only:
    R-62's golden shape carries ``sendToExperiment``, which fbclient 1.2.1
    omits, and fbclient adds ``variation.reason``, which the server ignores."""
    old, new = ([json.loads(e) for e in r["events"]] for r in results)
    assert len(old) == len(new) == 5  # 2 evaluations (no event for the fallback), 2 metric objects, 1 identify

    def normal(event: dict[str, Any], drop: str) -> dict[str, Any]:
        for v in event.get("variations", ()):
            assert drop in v or drop in v["variation"], f"expected {drop} in {v}"
            v.pop(drop, None)
            v["variation"].pop(drop, None)
        return event

    def canonical(events: list[dict[str, Any]], drop: str) -> list[str]:
        return sorted(json.dumps(normal(e, drop), sort_keys=True) for e in events)

    assert canonical(old, "reason") == canonical(new, "sendToExperiment")


# --------------------------------------------------------------------------- the public surface, by introspection

SURFACE = [
    ("fbclient", "featbit_shm"),
    ("fbclient.client", "featbit_shm.client"),
    ("fbclient.config", "featbit_shm.config"),
    ("fbclient.status_types", "featbit_shm.status_types"),
    ("fbclient.common_types", "featbit_shm.common_types"),
    ("fbclient.flag_change_notification", "featbit_shm.flag_change_notification"),
]


def _public_names() -> list[tuple[str, str]]:
    """(featbit_shm module, dotted name) of every public name fb-python-sdk
    defines in the modules users import, classes' public attributes
    included, and the attributes of its status provider."""
    import importlib
    import inspect

    names = []
    for theirs, ours in SURFACE:
        module = importlib.import_module(theirs)
        for name in sorted(n for n in dir(module) if not n.startswith("_")):
            obj = getattr(module, name)
            defined_in = getattr(obj, "__module__", "") or ""
            if not (defined_in == theirs or (theirs == "fbclient" and defined_in.startswith("fbclient"))):
                continue  # imported from elsewhere: the package's API is what it defines (and re-exports at its top)
            names.append((ours, name))
            if inspect.isclass(obj):
                names.extend((ours, f"{name}.{attr}") for attr in sorted(dir(obj)) if not attr.startswith("_"))
    import fbclient.interfaces

    provider = fbclient.interfaces.DataUpdateStatusProvider
    names.extend(("featbit_shm.status_types", f"DataUpdateStatusProvider.{a}") for a in sorted(dir(provider)) if not a.startswith("_"))
    return names


def _has(module_name: str, dotted: str) -> bool:
    import importlib

    obj: Any = importlib.import_module(module_name)
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


@pytest.mark.unit
def test_every_public_name_of_fbclient_exists_or_is_documented_in_migrating() -> None:
    # Issue 20.6: "fbclient's update_status_provider.add_listener is missing
    # and MIGRATING.md does not say so".
    from pathlib import Path

    migrating = (Path(__file__).resolve().parents[1] / "MIGRATING.md").read_text(encoding="utf-8")
    names = _public_names()
    assert len(names) > 100  # the introspection found fbclient's surface
    def documented(name: str) -> bool:
        # The name, or (for an attribute) its class as a whole, is on the page.
        return f"`{name}`" in migrating or ("." in name and f"`{name.split('.')[0]}`" in migrating and not _has("featbit_shm", name.split(".")[0]))

    missing = [(m, n) for m, n in names if not _has(m, n) and not documented(n)]
    assert missing == [], "fbclient names neither provided nor listed in MIGRATING.md"
    for name in ("DataUpdateStatusProvider.add_listener", "DataUpdateStatusProvider.remove_listener", "State.ok_state", "FlagState.to_json_str"):
        assert _has("featbit_shm.status_types" if not name.startswith("FlagState") else "featbit_shm.common_types", name)
