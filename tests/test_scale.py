"""A patch costs a worker what changed (issue 19, item 1, worker side).

A worker keeps every compiled flag and segment whose bytes did not change
(blob identity, :mod:`featbit_shm._core.view`), and a large segment is
stored as a key set plus a delta, so a one-key change rebuilds nothing of
the size of the segment (:mod:`featbit_shm._core.snapshot`). These tests
count compiles and key-set reads; speed lives in ``benchmarks/bench_scale.py``.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featbit_shm._core.dataset import Changes, DataSet
from featbit_shm._core.evaluator import evaluate
from featbit_shm._core.model import LayeredSegment
from featbit_shm._core.snapshot import (
    KEYSET_MIN,
    LAYOUT,
    PAGE_BYTES,
    PAGE_REF_SIZE,
    TABLES,
    SnapshotBuilder,
    SnapshotError,
    SnapshotImage,
    delta_limit,
    list_delta,
    root_crc,
)
from featbit_shm._core.user import make_user
from featbit_shm._core.view import CompiledView
from featbit_shm._core.wire import parse_data_sync
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.reader import SnapshotReader
from featbit_shm.shm.writer import SnapshotWriter
from featbit_shm.testing import builders as b

T0 = 1_700_000_000_000
SEG = "seg-big"
SMALL = "seg-small"
MEMBERS = [f"m-{i:05d}" for i in range(KEYSET_MIN * 3)]


def seg_flag(key: str, seg: str = SEG, version: int = T0) -> dict[str, Any]:
    """Serves "in" to members of ``seg``, "out" to everyone else."""
    return b.flag(
        key,
        variations=["in", "out"],
        variation_type="string",
        rules=[b.rule([b.in_segment(seg)], b.serve(0))],
        fallthrough=b.serve(1),
        updated_at=version,
    )


def plain(key: str, version: int = T0, value: str = "v") -> dict[str, Any]:
    return b.flag(key, variations=[value, "other"], variation_type="string", updated_at=version)


def apply(ds: DataSet, flags: list[dict[str, Any]], segments: list[dict[str, Any]], event_type: str = "patch") -> tuple[DataSet, Changes]:
    return ds.apply(parse_data_sync(b.data_sync(flags, segments, event_type=event_type)["data"]))


class Store:
    """A builder and its chunks, handing out views as a worker would see them
    (each generation's image reads the same chunk objects, as a reader's maps)."""

    def __init__(self) -> None:
        self.builder = SnapshotBuilder()
        self.chunks: dict[int, bytes] = {}
        self.gen = 0
        self.view: CompiledView | None = None
        self.ds = DataSet()

    def publish(self, flags: list[dict[str, Any]] = (), segments: list[dict[str, Any]] = (), event_type: str = "patch") -> CompiledView:  # type: ignore[assignment]
        self.ds, changes = apply(self.ds, list(flags), list(segments), event_type)
        self.gen += 1
        root, new = self.builder.build(self.ds, self.gen, changes)
        self.chunks.update({k: bytes(v) for k, v in new.items()})
        image = SnapshotImage(bytes(root), dict(self.chunks).get, length=len(root), crc=root_crc(root))
        self.view = CompiledView(image.generation, image.data_version, image.flag, image.segment, image.flag_keys, self.view, origin=image)
        return self.view


def answer(view: CompiledView, flag: str, user_key: str) -> str:
    f = view.flag(flag)
    assert f is not None
    decision = evaluate(f, make_user({"key": user_key}), view.segment)
    assert decision.variation is not None, decision
    return decision.variation.value


@pytest.fixture
def store() -> Store:
    s = Store()
    s.publish(
        [seg_flag("uses-big"), seg_flag("uses-small", SMALL), *(plain(f"f{i}") for i in range(50))],
        [b.segment(SEG, included=MEMBERS, excluded=["m-00007"], updated_at=T0), b.segment(SMALL, included=["s1"], updated_at=T0)],
        "full",
    )
    return s


# --------------------------------------------------------------------------- reuse across generations


def test_an_unrelated_patch_recompiles_nothing_and_reads_no_segment(store: Store) -> None:
    v1 = store.view
    assert v1 is not None
    assert answer(v1, "uses-big", "m-00100") == "in" and answer(v1, "uses-big", "m-00007") == "out"
    assert answer(v1, "uses-small", "s1") == "in"
    big, small, flag = v1.segment(SEG), v1.segment(SMALL), v1.flag("uses-big")
    assert isinstance(big, LayeredSegment)  # stored as a key set + delta
    before = v1.compiles
    v2 = store.publish([plain("f3", T0 + 1, "new")])
    assert answer(v2, "uses-big", "m-00100") == "in" and answer(v2, "uses-small", "s1") == "in"
    assert v2.segment(SEG) is big and v2.segment(SMALL) is small and v2.flag("uses-big") is flag
    assert v2.compiles == before  # no flag, no segment, no key set built again
    assert answer(v2, "f3", "u") == "new"
    assert v2.compiles.flags == before.flags + 1  # only the patched flag


def test_what_was_compiled_generations_ago_is_kept(store: Store) -> None:
    v1 = store.view
    assert v1 is not None
    kept = [v1.flag(f"f{i}") for i in range(40, 50)]
    seg = v1.segment(SEG)
    before = v1.compiles
    for gen in range(1, 8):  # patches of other flags; f40..f49 and the segment are not asked for
        store.publish([plain(f"f{gen}", T0 + gen)])
    view = store.view
    assert view is not None
    assert [view.flag(f"f{i}") for i in range(40, 50)] == kept
    assert all(a is b_ for a, b_ in zip(kept, [view.flag(f"f{i}") for i in range(40, 50)]))
    assert view.segment(SEG) is seg
    assert view.compiles == before


def test_a_one_key_change_rebuilds_the_segment_from_its_key_set_and_the_delta(store: Store) -> None:
    v1 = store.view
    assert v1 is not None
    assert answer(v1, "uses-big", "newcomer") == "out"
    old = v1.segment(SEG)
    before = v1.compiles
    v2 = store.publish([], [b.segment(SEG, included=[*MEMBERS[1:], "newcomer"], excluded=["m-00007"], updated_at=T0 + 1)])
    assert store.builder.incremental_builds == 1  # a delta, not a rewrite of the list
    assert answer(v2, "uses-big", "newcomer") == "in"
    assert answer(v2, "uses-big", MEMBERS[0]) == "out"  # removed
    assert answer(v2, "uses-big", "m-00007") == "out"  # still excluded
    assert answer(v2, "uses-big", MEMBERS[5]) == "in"
    new = v2.segment(SEG)
    assert new is not old and isinstance(new, LayeredSegment) and isinstance(old, LayeredSegment)
    assert new.included is old.included  # the key set the worker already held
    after = v2.compiles
    assert (after.segments, after.key_sets, after.flags) == (before.segments + 1, before.key_sets, before.flags)
    # The older view still answers from its own generation.
    assert answer(v1, "uses-big", "newcomer") == "out" and answer(v1, "uses-big", MEMBERS[0]) == "in"


def test_a_rebuild_moves_every_blob_but_recompiles_nothing(store: Store) -> None:
    v1 = store.view
    assert v1 is not None
    flags = {k: v1.flag(k) for k in ("uses-big", "uses-small", "f1")}
    segs = {s: v1.segment(s) for s in (SEG, SMALL)}
    before = v1.compiles
    full = [seg_flag("uses-big"), seg_flag("uses-small", SMALL), *(plain(f"f{i}") for i in range(50))]
    v2 = store.publish(full, [b.segment(SEG, included=MEMBERS, excluded=["m-00007"], updated_at=T0), b.segment(SMALL, included=["s1"], updated_at=T0)], "full")
    assert store.builder.full_builds == 2
    assert {k: v2.flag(k) for k in flags} == flags and all(v2.flag(k) is f for k, f in flags.items())
    assert all(v2.segment(s) is seg for s, seg in segs.items())
    assert v2.compiles == before


def test_a_view_of_other_chunks_under_the_same_ids_trusts_no_old_identity() -> None:
    """A reader that attaches to a new control block sees chunk ids again
    (numbering starts afresh): equal entries there are other bytes."""
    first, second = Store(), Store()
    first.publish([plain("a", T0, "old")], [], "full")
    assert first.view is not None and answer(first.view, "a", "u") == "old"
    second.publish([plain("a", T0, "new")], [], "full")  # same chunk id 1, same version, other content
    assert second.view is not None
    image = second.view.origin
    view = CompiledView(image.generation, image.data_version, image.flag, image.segment, image.flag_keys, first.view, origin=image)
    assert answer(view, "a", "u") == "new"


def test_a_data_set_view_keeps_compiled_objects_of_unchanged_entities() -> None:
    from featbit_shm.worker.sources import memory_view

    ds, _ = apply(DataSet(), [seg_flag("uses-small", SMALL), plain("a"), plain("b")], [b.segment(SMALL, included=["s1"])], "full")
    v1 = memory_view(ds, 1)
    objects = (v1.flag("a"), v1.segment(SMALL))
    ds2, _ = apply(ds, [plain("b", T0 + 1, "b2")], [])
    v2 = memory_view(ds2, 2, v1)
    v3 = memory_view(ds2, 3, v2)  # "a" not asked for in v2: still kept
    assert (v3.flag("a"), v3.segment(SMALL)) == objects and v3.flag("a") is objects[0]
    assert v3.compiles.segments == 1


# --------------------------------------------------------------------------- key sets in the codec


def test_segments_cross_the_key_set_threshold_both_ways_and_archive() -> None:
    s = Store()
    s.publish([seg_flag("uses-big")], [b.segment(SEG, included=["a", "b"], updated_at=T0)], "full")
    assert s.view is not None and not isinstance(s.view.segment(SEG), LayeredSegment)
    grown = [*MEMBERS[: KEYSET_MIN + 5]]
    v = s.publish([], [b.segment(SEG, included=grown, updated_at=T0 + 1)])
    assert isinstance(v.segment(SEG), LayeredSegment) and answer(v, "uses-big", grown[-1]) == "in" and answer(v, "uses-big", "a") == "out"
    v = s.publish([], [b.segment(SEG, included=["z"], updated_at=T0 + 2)])  # back under: stored inline, key set dropped
    assert not isinstance(v.segment(SEG), LayeredSegment) and answer(v, "uses-big", "z") == "in" and answer(v, "uses-big", grown[0]) == "out"
    image = v.origin
    assert isinstance(image, SnapshotImage) and image.key_set_count == 0
    v = s.publish([], [b.segment(SEG, included=grown, updated_at=T0 + 3, archived=True)])
    assert v.segment(SEG) is None
    ev = evaluate(v.flag("uses-big"), make_user({"key": "z"}), v.segment)  # type: ignore[arg-type]
    assert ev.variation is None  # a missing segment is an error, not a quiet "out"


def test_the_delta_is_folded_into_a_new_key_set_past_its_limit(store: Store) -> None:
    members = list(MEMBERS)
    limit = delta_limit(len(members))
    image = store.view.origin  # type: ignore[union-attr]
    first = image.segment(SEG)
    for step in range(limit // 50 + 2):
        members = members[50:] + [f"new-{step}-{i}" for i in range(50)]
        v = store.publish([], [b.segment(SEG, included=members, excluded=["m-00007"], updated_at=T0 + 1 + step)])
        assert answer(v, "uses-big", members[-1]) == "in" and answer(v, "uses-big", f"m-{step * 50:05d}") == "out"
    assert store.builder.full_builds >= 2  # rebased: a full build wrote a fresh key set
    assert v.compiles.key_sets >= 2
    seg = v.origin.segment(SEG)  # type: ignore[union-attr]
    assert set(seg["included"]) == set(members) and first is not None


keys = st.sampled_from([f"k{i}" for i in range(KEYSET_MIN + 300)])


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "dup", "replace", "shrink", "grow"]), st.integers(0, 10**6)), min_size=1, max_size=12))
def test_incremental_key_sets_keep_exactly_the_listed_keys(steps: list[tuple[str, int]]) -> None:
    """Random one-key edits (duplicates, growing past and shrinking under the
    threshold): the image and a worker's view agree with the data set."""
    included = [f"k{i}" for i in range(KEYSET_MIN + 10)]
    s = Store()
    s.publish([seg_flag("uses-big")], [b.segment(SEG, included=included, excluded=["k5"], updated_at=T0)], "full")
    for n, (op, at) in enumerate(steps, start=1):
        pos = at % max(1, len(included))
        if op == "add":
            included = [*included[:pos], f"x{at}", *included[pos:]]
        elif op == "remove" and included:
            included = included[:pos] + included[pos + 1 :]
        elif op == "dup" and included:
            included = [*included, included[pos]]  # listed twice
        elif op == "replace" and included:
            included = [*included[:pos], f"y{at}", *included[pos + 1 :]]
        elif op == "shrink":
            included = included[: KEYSET_MIN - 1]
        elif op == "grow":
            included = included + [f"g{at}-{i}" for i in range(KEYSET_MIN)]
        v = s.publish([], [b.segment(SEG, included=included, excluded=["k5"], updated_at=T0 + n)])
        image = v.origin
        assert isinstance(image, SnapshotImage)
        stored = image.segment(SEG)
        assert stored is not None and set(stored["included"]) == set(included) and stored["excluded"] == ["k5"]
        listed = set(included)
        for probe in {included[0] if included else "k0", included[pos % len(included)] if included else "k1", f"x{at}", f"y{at}", "k5", "k1", "nobody"}:
            assert answer(v, "uses-big", probe) == ("in" if probe in listed and probe != "k5" else "out"), (op, probe)
    restored = s.view.origin.to_dataset()  # type: ignore[union-attr]
    assert set(restored.segments[SEG]["included"]) == set(included)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcdefghij"), max_size=30), st.lists(st.sampled_from("abcdefghijkl"), max_size=30))
def test_list_delta_gives_exactly_the_membership_changes(old: list[str], new: list[str]) -> None:
    delta = list_delta(old, new, 100)
    assert delta is not None
    added, removed = delta
    assert (set(old) - removed) | added == set(new)
    assert not removed & set(new) and not added & removed


def test_list_delta_gives_up_past_its_limit() -> None:
    old = [f"k{i}" for i in range(1000)]
    assert list_delta(old, [f"z{i}" for i in range(1000)], 10) is None
    assert list_delta(old, [*old[:500], "new", *old[501:]], 10) == (frozenset({"new"}), frozenset({"k500"}))


# --------------------------------------------------------------------------- layout and integrity


@pytest.mark.parametrize("layout", [2, 3])  # before key sets; before paged tables
def test_a_root_of_another_layout_is_refused_cleanly(store: Store, layout: int) -> None:
    image = store.view.origin  # type: ignore[union-attr]
    root = bytearray(image._buf)
    struct.pack_into("<I", root, 8, layout)  # what a writer of that layout wrote
    with pytest.raises(SnapshotError, match=f"layout {layout} is not {LAYOUT}"):
        SnapshotImage(bytes(root), store.chunks.get)


def test_a_changed_byte_in_a_table_page_is_caught_when_its_page_is_used() -> None:
    s = Store()
    s.publish([plain(f"f{i}") for i in range(2000)], [], "full")
    image = s.view.origin  # type: ignore[union-attr]
    pos = image.locate_flag("f77")
    page = (pos - TABLES) // PAGE_BYTES
    chunk_id, offset, _crc = struct.unpack_from("<QII", image._buf, TABLES + page * PAGE_REF_SIZE)
    chunk = bytearray(s.chunks[chunk_id])
    chunk[offset + (pos - TABLES) % PAGE_BYTES + 12] ^= 0x01  # the entry's chunk id, in its page
    chunks = {**s.chunks, chunk_id: bytes(chunk)}
    damaged = SnapshotImage(image._buf, chunks.get, crc=root_crc(image._buf))
    assert damaged.flag("f1500") is not None or damaged.flag("f1501") is not None  # other pages serve
    with pytest.raises(SnapshotError, match="crc"):
        damaged.flag("f77")
    with pytest.raises(SnapshotError):
        damaged.flag_keys()


def test_a_changed_byte_in_the_page_directory_is_caught_when_opened() -> None:
    s = Store()
    s.publish([plain(f"f{i}") for i in range(2000)], [], "full")
    image = s.view.origin  # type: ignore[union-attr]
    root = bytearray(image._buf)
    root[TABLES + 5 * PAGE_REF_SIZE + 8] ^= 0x01  # a page's offset
    with pytest.raises(SnapshotError, match="crc"):
        SnapshotImage(bytes(root), s.chunks.get, crc=root_crc(image._buf))


# --------------------------------------------------------------------------- through shared memory


@pytest.fixture
def names() -> Iterator[StoreNames]:
    names = StoreNames.for_env("", f"test-scale-{uuid.uuid4().hex[:12]}")
    yield names
    left = [n for n in os.listdir("/dev/shm") if n.startswith(names.base[1:] + ".")]
    assert not left, left


def test_a_worker_keeps_its_segment_across_unrelated_patches_in_shared_memory(names: StoreNames) -> None:
    ds, _ = apply(DataSet(), [seg_flag("uses-big"), plain("other")], [b.segment(SEG, included=MEMBERS, updated_at=T0)], "full")
    with SnapshotWriter(names) as writer:
        writer.publish(ds)
        reader = SnapshotReader(names)
        v1 = reader.current()
        assert v1 is not None and answer(v1, "uses-big", MEMBERS[3]) == "in"
        seg, before = v1.segment(SEG), v1.compiles
        for n in range(1, 4):
            ds, changes = apply(ds, [plain("other", T0 + n, f"v{n}")], [])
            writer.publish(ds, changes)
            view = reader.current()
            assert view is not None and view is not v1 and answer(view, "other", "u") == f"v{n}"
            assert view.segment(SEG) is seg
        ds, changes = apply(ds, [], [b.segment(SEG, included=[*MEMBERS, "late"], updated_at=T0 + 9)])
        writer.publish(ds, changes)
        view = reader.current()
        assert view is not None and answer(view, "uses-big", "late") == "in"
        assert view.compiles.segments == before.segments + 1 and view.compiles.key_sets == before.key_sets


# --------------------------------------------------------------------------- cold workers (item 2)


def test_rules_of_one_shape_share_a_compiled_template_and_keep_their_operands() -> None:
    from featbit_shm._core import operators
    from featbit_shm._core.operators import compile_rule
    from featbit_shm._core.schema import Condition

    def rule(countries: list[str], plan: str, age: str) -> Any:
        return compile_rule(
            [Condition("country", "IsOneOf", countries, None), Condition("plan", "Equal", plan, None), Condition("age", "BiggerThan", age, None)]
        )

    templates = len(operators._TEMPLATES)
    r1, r2 = rule(["us"], "pro", "30"), rule(["fr", "de"], "basic", "60")
    assert len(operators._TEMPLATES) <= templates + 1  # compiled once per shape, not per rule
    assert r1.__func__ is r2.__func__  # one function per shape, shared (its specialisation holds for every rule)
    assert r1.__self__ != r2.__self__  # bound to each rule's own operands
    ann = make_user({"key": "k", "country": "us", "plan": "pro", "age": 40})
    bob = make_user({"key": "b", "country": "de", "plan": "basic", "age": 61})
    assert (r1(ann, lambda s: None), r2(ann, lambda s: None)) == (True, False)
    assert (r1(bob, lambda s: None), r2(bob, lambda s: None)) == (False, True)


# --------------------------------------------------------------------------- compiled flags and the cycle collector


def _compile_everything(store: Store) -> tuple[CompiledView, list[Any]]:
    """Every flag of the store's view evaluated for users that reach its rules
    and targets, with the shared results the client keeps; the compiled objects."""
    from featbit_shm.common_types import shared_detail

    view = store.view
    assert view is not None
    compiled: list[Any] = []
    for key in view.flag_keys():
        flag = view.flag(key)
        assert flag is not None
        for user_key in ("m-00001", "m-00007", "s1", "nobody"):
            shared_detail(flag, evaluate(flag, make_user({"key": user_key}), view.segment))
        compiled.append(flag)
    compiled += [view.segment(SEG), view.segment(SMALL)]
    return view, compiled


def test_compiled_flags_and_segments_hold_nothing_the_cycle_collector_walks(store: Store) -> None:
    # Issue 19: a worker that had evaluated 100k flags held 1.3M tracked
    # objects, and each full collection walked them all (432 ms). A compiled
    # flag is a tree only its view refers to: it is taken out of the
    # collector's view (model.settle, the C accelerator _untrack).
    import enum
    import gc
    import types

    from featbit_shm._core import model

    if model._c_untrack is None:
        pytest.skip("built without a C compiler: compiled flags stay tracked (slower full collections, same answers)")
    store.publish([plain("f1", T0 + 1, "patched")])  # a compile after a patch, from a later view
    view, compiled = _compile_everything(store)
    shared = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, enum.Enum)
    seen: set[int] = set()
    stack = list(compiled)
    tracked = []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, shared):
            continue  # functions of a rule shape, classes, reason kinds: shared by every flag, not per flag
        seen.add(id(obj))
        if gc.is_tracked(obj):
            tracked.append(obj)
        stack += gc.get_referents(obj)
    assert len(seen) > 20 * len(compiled)
    assert not tracked, tracked[:5]
    assert view.flag("f1") is not None and answer(view, "f1", "u") == "patched"  # and they still evaluate


def test_settled_flags_are_freed_when_their_views_go() -> None:
    # An untracked object in a reference cycle would never be freed; the
    # compiled tree has none, so building and dropping views returns the memory.
    import gc
    import tracemalloc

    def round_trip() -> None:
        s = Store()
        s.publish(
            [seg_flag("uses-big"), *(plain(f"f{i}", value=f"v{i}") for i in range(300))],
            [b.segment(SEG, included=MEMBERS, updated_at=T0), b.segment(SMALL, included=["s1"], updated_at=T0)],
            "full",
        )
        _compile_everything(s)

    round_trip()  # caches of the first round (templates, interned strings) are not growth
    gc.collect()
    tracemalloc.start()
    try:
        round_trip()
        gc.collect()
        after_one, peak = tracemalloc.get_traced_memory()
        for _ in range(4):
            round_trip()
        gc.collect()
        after_five, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_round = peak - after_one  # at least what one round's views held
    assert per_round > 0
    assert after_five - after_one < per_round / 2, (after_one, after_five, per_round)
