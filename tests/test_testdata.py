"""featbit_shm.testing.TestData: flags for users' unit tests (issue 20.5)."""

from __future__ import annotations

import os

from featbit_shm.flag_change_notification import FlagChangedListener, FlagChangedNotice
from featbit_shm.testing import TestData
from featbit_shm.testing import builders as b


def shm_objects() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith("fbshm.")}


def test_values_rules_segments_and_updates_reach_every_client_without_shared_memory() -> None:
    before = shm_objects()
    td = TestData()
    td.set_value("banner", True)
    td.set_value("limit", 25)
    td.set_value("theme", {"color": "blue"})
    first, second = td.client(), td.client(defaults={"missing": "dflt"})
    user = {"key": "u1", "country": "fr"}
    assert first.initialize and first.variation("banner", user, False) is True
    assert first.variation("limit", user, 0) == 25 and first.variation("theme", user, {}) == {"color": "blue"}
    td.set_value("banner", False)
    assert first.variation("banner", user, True) is False and second.variation("banner", user, True) is False
    td.update(
        b.segment("vips", included=["u1"]),
        b.flag("checkout", variations=["old", "new"], variation_type="string", rules=[b.rule([b.in_segment("vips")], b.serve(1))], fallthrough=b.serve(0)),
    )
    assert first.variation("checkout", user, "x") == "new"
    assert first.variation("checkout", {"key": "u2"}, "x") == "old"
    detail = first.variation_detail("checkout", user, "x")
    assert detail.reason and detail.variation == "new"
    td.delete("checkout")
    assert first.variation("checkout", user, "x") == "x"  # flag not found: the default
    assert second.variation("missing", user, None) == "dflt"  # Config options pass through
    assert shm_objects() == before  # in this process only


def test_flag_change_listeners_hear_updates() -> None:
    td = TestData([b.flag("banner")])
    client = td.client()
    seen: list[str] = []
    values: list[tuple[str, object, object]] = []

    class Listener(FlagChangedListener):
        def on_flag_change(self, notice: FlagChangedNotice) -> None:
            seen.append(notice.flag_key)

    client.flag_tracker.add_flag_changed_listener(Listener())
    client.flag_tracker.add_flag_value_changed_listener("banner", {"key": "u"}, lambda key, old, new: values.append((key, old, new)))
    td.set_value("banner", False)
    client.variation("other", {"key": "u"}, None)  # the next use of the client dispatches
    assert seen == ["banner"] and values == [("banner", True, False)]


def test_a_bad_entity_is_a_clear_error() -> None:
    td = TestData()
    try:
        td.update({"nothing": "here"})
    except ValueError as exc:
        assert "not a flag or a segment" in str(exc)
    else:
        raise AssertionError("accepted an entity that is neither a flag nor a segment")


def test_the_documented_example_runs_as_written() -> None:
    import textwrap

    import featbit_shm.testing.testdata as module

    doc = module.__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\nClients made here", 1)[0]  # the indented example
    example = textwrap.dedent(block)
    namespace: dict[str, object] = {}
    exec(compile(example, "testdata-example", "exec"), namespace)  # our own docstring
    test = namespace["test_banner_can_be_switched_off"]
    assert callable(test)
    test()


def test_all_flags_follow_every_update_of_static_and_per_user_flags() -> None:
    # get_all keeps, per snapshot view, the details no user can change; a
    # later view must never answer from an earlier view's (promise 1).
    td = TestData([b.flag("kill", enabled=True), b.flag("toggle")])
    client = td.client()
    user, other = {"key": "u1", "country": "fr"}, {"key": "u2", "country": "us"}

    def values(u: dict[str, str]) -> dict[str, object]:
        states = client.get_all_latest_flag_variations(u)
        return {k: states.get_variation(k) for k in states.keys()}

    assert values(user) == {"kill": True, "toggle": True}
    td.update(b.flag("kill", enabled=False))  # the kill switch: static, and changed
    assert values(user) == values(other) == {"kill": False, "toggle": True}
    td.update(b.flag("toggle", rules=[b.rule([b.cond("country", "Equal", "us")], b.serve(1))], fallthrough=b.serve(0)))
    assert values(user) == {"kill": False, "toggle": True} and values(other) == {"kill": False, "toggle": False}
    td.update(b.flag("toggle", enabled=False))  # per user again static
    assert values(user) == values(other) == {"kill": False, "toggle": False}
    td.delete("kill")
    assert values(other) == {"toggle": False}
