"""Wire parsing and the data set: R-8, R-12, R-13, R-15, R-26..R-31, G-2, G-3, G-11."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from featbit_shm._core.dataset import DataSet
from featbit_shm._core.wire import WireError, normalize_flag, parse_data_sync, parse_envelope, parse_version
from featbit_shm.testing import builders as b


def test_r27_version_is_truncated_not_rounded() -> None:
    # G-11: fbclient rounds this to ...643.
    assert parse_version("2023-01-19T07:49:19.642555Z") == 1674114559642
    assert parse_version("2023-01-19T08:04:54.3264271Z") == 1674115494326
    assert parse_version("2023-01-19T09:18:47.6291759Z") == 1674119927629


def test_r27_offset_is_kept() -> None:
    assert parse_version("2023-01-19T09:49:19.642+02:00") == parse_version("2023-01-19T07:49:19.642Z")
    assert parse_version("2023-01-19T02:49:19.642-0500") == 1674114559642


def test_version_forms() -> None:
    assert parse_version("2023-01-19T07:49:19Z") == 1674114559000
    assert parse_version("2023-01-19T07:49:19") == 1674114559000  # no zone: UTC
    assert parse_version(1674114559642) == 1674114559642


@pytest.mark.parametrize("raw", ["", "yesterday", "2023-13-01T00:00:00Z", None, True, 1.5, "2023-01-19"])
def test_unparseable_version_is_an_error_not_zero(raw: object) -> None:
    with pytest.raises(WireError):
        parse_version(raw)


@given(st.integers(min_value=0, max_value=253402300799999))
def test_version_round_trips_builder_iso(ms: int) -> None:
    assert parse_version(b.iso_ms(ms)) == ms


def test_r26_unknown_fields_are_ignored() -> None:
    raw = b.flag("f")
    raw["somethingNew"] = {"x": [1, 2]}
    raw["variations"][0]["name"] = "on"
    assert normalize_flag(raw)["key"] == "f"


def test_r15_malformed_entity_is_skipped_and_reported_by_key_siblings_load() -> None:
    bad = b.flag("bad")
    bad["variations"] = "not a list"
    no_date = b.flag("no-date")
    del no_date["updatedAt"]
    msg = parse_data_sync(
        b.data_sync([b.flag("good-1"), bad, 42, no_date, b.flag("good-2")], [b.segment("s1"), {"id": 5}])["data"]
    )
    assert [f["key"] for f in msg.flags] == ["good-1", "good-2"]
    assert [s["id"] for s in msg.segments] == ["s1"]
    assert {(s.kind, s.key) for s in msg.skipped} == {("flag", "bad"), ("flag", "#2"), ("flag", "no-date"), ("segment", "#1")}
    assert all(s.error for s in msg.skipped)


def test_r38_null_conditions_list_is_malformed_not_empty() -> None:
    raw = b.flag("f", rules=[b.rule([], b.serve(0))])
    raw["rules"][0]["conditions"] = None
    with pytest.raises(WireError):
        normalize_flag(raw)


@pytest.mark.parametrize("envelope", [{"messageType": "ping", "data": {}}, {"data": {}}, [], "x"])
def test_r11_invalid_envelope_is_rejected(envelope: object) -> None:
    with pytest.raises(WireError):
        parse_envelope(envelope)


def test_r11_unknown_event_type_is_rejected() -> None:
    with pytest.raises(WireError):
        parse_data_sync({"eventType": "delta", "featureFlags": [], "segments": []})


def test_r29_archived_becomes_tombstone_with_version() -> None:
    assert normalize_flag(b.flag("f", archived=True, updated_at=5)) == {"key": "f", "version": 5, "archived": True}


# --- DataSet: full and patch.


def _apply(ds: DataSet, flags: list[dict], segments: list[dict] = (), event_type: str = "patch") -> DataSet:  # type: ignore[assignment]
    new, _ = ds.apply(parse_data_sync(b.data_sync(flags, segments, event_type=event_type)["data"]))
    return new


def test_r12_full_replaces_everything_whatever_the_versions() -> None:
    ds = _apply(DataSet(), [b.flag("a", updated_at=100), b.flag("b", updated_at=100)], event_type="full")
    ds = _apply(ds, [b.flag("a", updated_at=1)], event_type="full")
    assert ds.flag("b") is None
    assert ds.flag("a")["version"] == 1  # G-3: fbclient ignores an older full
    assert ds.version == 1


def test_r12_empty_full_clears_store() -> None:
    ds = _apply(DataSet(), [b.flag("a", updated_at=100)], event_type="full")
    assert len(_apply(ds, [], event_type="full")) == 0


def test_r13_patch_compares_versions_per_entity_not_globally() -> None:
    # G-2: fbclient drops the segment at t=8 because a flag at t=10 came first.
    ds = _apply(DataSet(), [b.flag("f", updated_at=1)], [b.segment("s", updated_at=1)], event_type="full")
    ds = _apply(ds, [b.flag("f", updated_at=10)], [b.segment("s", updated_at=8, included=["u"])])
    assert ds.flag("f")["version"] == 10
    assert ds.segment("s")["included"] == ["u"]


def test_r13_equal_or_older_versions_are_ignored() -> None:
    ds = _apply(DataSet(), [b.flag("f", updated_at=10, variations=["a", "b"], variation_type="string")], event_type="full")
    for v in (10, 9):
        new, changes = ds.apply(parse_data_sync(b.data_sync([b.flag("f", updated_at=v)], event_type="patch")["data"]))
        assert new is ds and not changes


def test_r13_out_of_order_patches_converge_to_newest() -> None:
    ds = _apply(DataSet(), [], event_type="full")
    for v in (5, 9, 7, 3, 9, 8):
        ds = _apply(ds, [b.flag("f", updated_at=v)])
    assert ds.flag("f")["version"] == 9


def test_r29_tombstone_hides_entity_blocks_older_and_newer_revives() -> None:
    ds = _apply(DataSet(), [b.flag("f", updated_at=5)], event_type="full")
    ds = _apply(ds, [b.flag("f", updated_at=6, archived=True)])
    assert ds.flag("f") is None
    assert ds.version == 6  # R-30: tombstones count towards the cursor
    ds = _apply(ds, [b.flag("f", updated_at=5)])
    assert ds.flag("f") is None
    ds = _apply(ds, [b.flag("f", updated_at=7)])
    assert ds.flag("f")["version"] == 7


def test_r31_cursor_is_max_over_flags_and_segments() -> None:
    ds = _apply(DataSet(), [b.flag("f", updated_at=5)], [b.segment("s", updated_at=9)], event_type="full")
    assert ds.version == 9
    assert DataSet().version == 0


def test_r15_skipped_patch_entity_keeps_previous_copy() -> None:
    ds = _apply(DataSet(), [b.flag("f", updated_at=5)], event_type="full")
    bad = b.flag("f", updated_at=9)
    bad["fallthrough"] = None
    ds = _apply(ds, [bad])
    assert ds.flag("f")["version"] == 5
    assert ds.version == 5
