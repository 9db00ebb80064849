"""The sync process's side of a patch (issue 19.1): paged tables and packed entities.

A patch writes the changed blobs, the table pages that point at them and a
root of page refs (snapshot layout 4); the sync process keeps entities as
their msgpack bytes (``wire.Packed``). These tests check that readers still
see exactly the data set after long runs of patches -- through chunk folds,
compactions and table growth -- and that change notices and warm start work
from a packed data set.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from featbit_shm._core.dataset import DataSet
from featbit_shm._core.snapshot import (
    LAYOUT,
    MAX_CHUNKS,
    PAGE_BYTES,
    SnapshotBuilder,
    SnapshotError,
    SnapshotImage,
    root_crc,
)
from featbit_shm._core.wire import Packed, parse_data_sync
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.reader import SnapshotReader
from featbit_shm.shm.writer import SnapshotWriter, open_image
from featbit_shm.sync.warmstart import WarmStart
from featbit_shm.testing import builders as b

T0 = 1_700_000_000_000


def apply(
    ds: DataSet, flags: list[dict[str, Any]], segments: list[dict[str, Any]], event_type: str = "patch"
) -> tuple[DataSet, Any]:
    return ds.apply(parse_data_sync(b.data_sync(flags, segments, event_type=event_type)["data"]))


def flag(
    key: str, version: int, value: str = "v", segment: str | None = None, archived: bool = False
) -> dict[str, Any]:
    rules = [b.rule([b.in_segment(segment)], b.serve(0))] if segment else []
    return b.flag(
        key, variations=[value, "other"], variation_type="string", rules=rules, updated_at=version, archived=archived
    )


def same_content(image: SnapshotImage, ds: DataSet) -> None:
    assert image.data_version == ds.version
    assert sorted(image.flag_keys(active_only=False)) == sorted(ds.flags)
    assert sorted(image.segment_ids(active_only=False)) == sorted(ds.segments)
    for key, f in ds.flags.items():
        assert image.flag(key) == f, key
    for seg_id, s in ds.segments.items():
        assert image.segment(seg_id) == s, seg_id
    assert image.to_dataset(packed=True).stored_flags == ds.stored_flags


class Builds:
    """A builder over bytearrays, keeping every chunk a live root names."""

    def __init__(self) -> None:
        self.builder = SnapshotBuilder()
        self.chunks: dict[int, bytes] = {}
        self.generation = 0

    def build(self, ds: DataSet, changes: Any = None) -> SnapshotImage:
        self.generation += 1
        root, new = self.builder.build(ds, self.generation, changes)
        self.chunks.update({k: bytes(v) for k, v in new.items()})
        return SnapshotImage(bytes(root), self.chunks.get, length=len(root), crc=root_crc(root))


def test_a_long_run_of_patches_folds_chunks_and_readers_see_exactly_the_data_set() -> None:
    rng = random.Random(19)
    ds, _ = apply(
        DataSet(packed=True),
        [flag(f"f{i}", T0) for i in range(2000)],
        [b.segment("s", included=["u1"], updated_at=T0)],
        "full",
    )
    s = Builds()
    image = s.build(ds)
    folds = 0
    for r in range(1, 3 * MAX_CHUNKS + 10):
        key = f"f{rng.randrange(2060)}"  # some new keys (the table stays under 3/4 of its 4096 slots)
        patch = [flag(key, T0 + r, value=f"v{r}", segment="s" if r % 7 == 0 else None, archived=r % 11 == 0)]
        segs = [b.segment("s", included=[f"u{r}"], updated_at=T0 + r)] if r % 5 == 0 else []
        ds, changes = apply(ds, patch, segs)
        before = len(image.chunks)
        image = s.build(ds, changes)
        folds += len(image.chunks) < before
        assert len(image.chunks) <= MAX_CHUNKS
        assert image.flag(key) == ds.flags[key] and image.segment("s") == ds.segments["s"]
        if r % 25 == 0:
            same_content(image, ds)
    same_content(image, ds)
    assert folds >= 2 and s.builder.full_builds == 1  # folded, never rebuilt


def test_a_patch_writes_one_small_chunk_and_a_root_of_page_refs() -> None:
    ds, _ = apply(DataSet(packed=True), [flag(f"f{i}", T0) for i in range(20_000)], [], "full")
    s = Builds()
    full = s.build(ds)
    ds, changes = apply(ds, [flag("f77", T0 + 1, value="new")], [])
    image = s.build(ds, changes)
    (new_chunk,) = set(image.chunks) - set(full.chunks)
    assert len(s.chunks[new_chunk]) < PAGE_BYTES + 300  # one page and one blob
    assert image.size == full.size < 40 * 1024  # 16 bytes per 16 slots, not the tables
    assert image.flag("f77")["variations"][0].value == "new"  # type: ignore[index]
    assert image.diff(full).flags == {"f77"}


def test_dead_bytes_past_the_live_ones_compact_into_a_full_build() -> None:
    ds, _ = apply(DataSet(packed=True), [flag(f"f{i}", T0) for i in range(20)], [], "full")
    s = Builds()
    s.build(ds)
    for r in range(1, 200):
        ds, changes = apply(ds, [flag(f"f{r % 20}", T0 + r, value="x" * (r % 13))], [])
        image = s.build(ds, changes)
        same_content(image, ds)
    assert s.builder.full_builds > 1  # compacted on the way
    assert len(image.chunks) <= MAX_CHUNKS


def test_a_table_past_three_quarters_is_rebuilt_bigger() -> None:
    ds, _ = apply(DataSet(packed=True), [flag(f"f{i}", T0) for i in range(10)], [], "full")
    s = Builds()
    first = s.build(ds)
    for r in range(1, 40):
        ds, changes = apply(ds, [flag(f"new{r}", T0 + r)], [])
        image = s.build(ds, changes)
        same_content(image, ds)
    assert image.size > first.size and s.builder.full_builds >= 2
    assert image.diff(first).flags == {f"new{r}" for r in range(1, 40)}


def test_a_root_of_layout_3_is_refused() -> None:
    ds, _ = apply(DataSet(), [flag("a", T0)], [], "full")
    s = Builds()
    image = s.build(ds)
    root = bytearray(image._buf)
    root[8] = 3
    with pytest.raises(SnapshotError, match=f"snapshot layout 3 is not {LAYOUT}"):
        SnapshotImage(bytes(root), s.chunks.get)


def test_patches_through_shared_memory_reach_a_fresh_reader_exactly() -> None:
    names = StoreNames.for_env("", f"test-patches-{uuid.uuid4().hex[:8]}")
    ds, _ = apply(DataSet(packed=True), [flag(f"f{i}", T0) for i in range(500)], [], "full")
    with SnapshotWriter(names) as writer:
        writer.publish(ds)
        for r in range(1, 2 * MAX_CHUNKS):
            ds, changes = apply(ds, [flag(f"f{(r * 37) % 600}", T0 + r, value=f"v{r}")], [])
            writer.publish(ds, changes)
        pointer = writer.control.read_pointer()
        assert pointer is not None
        same_content(open_image(names, pointer.name, pointer.length, pointer.crc), ds)
        view = SnapshotReader(names, retry_interval=0.0).current()
        assert view is not None and view.version == ds.version
        assert sorted(view.flag_keys()) == sorted(k for k, f in ds.flags.items() if not f.get("archived"))


# --------------------------------------------------------------------------- packed entities


def test_messages_carry_packed_entities_that_read_like_the_normalised_ones() -> None:
    message = parse_data_sync(
        b.data_sync([flag("a", T0, segment="s")], [b.segment("S", included=["u"], updated_at=T0)])["data"]
    )
    (f,) = message.flags
    (s,) = message.segments
    assert isinstance(f, Packed) and f["key"] == "a" and f["version"] == T0 and f.get("archived") is None
    assert s["id"] == "s" and s["included"] == ["u"]
    plain = DataSet().apply(message)[0]
    packed = DataSet(packed=True).apply(message)[0]
    assert plain.flags == packed.flags and plain.segments == packed.segments
    assert packed.flag("a") == plain.flag("a") and not isinstance(packed.flag("a"), Packed)
    assert not isinstance(plain.stored_flags["a"], Packed) and isinstance(packed.stored_flags["a"], Packed)


def test_a_packed_data_set_tells_listeners_what_changed() -> None:
    flags = [flag("uses-s", T0, segment="s"), flag("plain", T0), flag("gone", T0)]
    ds1, _ = apply(DataSet(packed=True), flags, [b.segment("s", included=["u"], updated_at=T0)], "full")
    ds2, _ = apply(
        ds1,
        [flag("plain", T0 + 1, value="w"), flag("gone", T0 + 1, archived=True)],
        [b.segment("s", included=["u", "v"], updated_at=T0 + 1)],
    )
    change = ds2.diff(ds1)
    assert change.flags == {"uses-s", "plain", "gone"} and change.segments == {"s"}
    same, _ = apply(ds2, flags, [], "full")  # a full that changed nothing but versions back: content differs
    assert ds2.diff(ds2).flags == set()
    assert "plain" in same.diff(ds2).flags


def test_warm_start_round_trips_a_packed_data_set(tmp_path: Path) -> None:
    ds, _ = apply(
        DataSet(packed=True),
        [flag(f"f{i}", T0 + i, segment="s" if i % 3 == 0 else None, archived=i == 5) for i in range(50)],
        [b.segment("s", included=["u"], updated_at=T0)],
        "full",
    )
    warm = WarmStart(str(tmp_path), "tag", "default")
    assert warm.save(ds, 0.0)
    loaded = warm.load()
    assert loaded is not None and loaded.packed
    assert loaded.version == ds.version and loaded.flags == ds.flags and loaded.segments == ds.segments
    assert loaded.stored_flags == ds.stored_flags  # the very bytes


def test_a_packed_segment_hands_its_parsed_form_to_the_writer_once_then_keeps_only_bytes() -> None:
    # Decoding a 2,000-key segment again for its key-set delta was half of a
    # one-key change's publish; the writer now takes the form it was packed from.
    keys = [f"member-{i:05d}" for i in range(2000)]
    ds, _ = apply(DataSet(packed=True), [flag("uses", T0, segment="s")], [b.segment("s", included=keys, updated_at=T0)], "full")
    builds = Builds()
    builds.build(ds)
    ds, changes = apply(ds, [], [b.segment("s", included=[*keys, "newcomer"], updated_at=T0 + 1)])
    stored = ds.stored_segments["s"]
    assert isinstance(stored, Packed) and stored._plain is not None
    image = builds.build(ds, changes)
    assert stored._plain is None  # taken: only the bytes stay
    same_content(image, ds)
    assert "newcomer" in stored.take_plain()["included"]  # afterwards: decoded from the bytes
