"""The snapshot image and control block as pure codecs: round trips and fuzzing (issue 3)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featbit_shm._core.dataset import DataSet
from featbit_shm._core.snapshot import SnapshotBuilder, SnapshotError, SnapshotImage, root_crc
from featbit_shm._core.wire import parse_data_sync
from featbit_shm.shm.control import SIZE, ControlBlock, SyncState
from featbit_shm.testing import builders as b

keys = st.text(alphabet="abcdefgh-._0123456789é", min_size=1, max_size=12)


def apply(ds: DataSet, flags: list[dict[str, Any]], segments: list[dict[str, Any]], event_type: str) -> tuple[DataSet, Any]:
    return ds.apply(parse_data_sync(b.data_sync(flags, segments, event_type=event_type)["data"]))


def same_content(image: SnapshotImage, ds: DataSet) -> None:
    assert image.data_version == ds.version
    assert sorted(image.flag_keys(active_only=False)) == sorted(ds.flags)
    assert sorted(image.segment_ids(active_only=False)) == sorted(ds.segments)
    for k, f in ds.flags.items():
        assert image.flag(k) == f
    for k, s in ds.segments.items():
        assert image.segment(k) == s
    assert image.flag("\x00not-there") is None


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    out = []
    for _ in range(draw(st.integers(1, 8))):
        event = draw(st.sampled_from(["full", "patch", "patch", "patch"]))
        flags = [
            b.flag(k, updated_at=draw(st.integers(1, 50)), archived=draw(st.booleans()))
            for k in draw(st.lists(keys, max_size=12, unique=True))
        ]
        segs = [b.segment(k, updated_at=draw(st.integers(1, 50))) for k in draw(st.lists(keys, max_size=3, unique=True))]
        out.append((event, flags, segs))
    return out


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_incremental_images_equal_the_data_set_after_every_batch(seq: list[Any]) -> None:
    builder = SnapshotBuilder()
    ds = DataSet()
    chunks: dict[int, bytes] = {}
    for gen, (event, flags, segs) in enumerate(seq, start=1):
        ds, changes = apply(ds, flags, segs, event)
        root, new_chunks = builder.build(ds, gen, changes)
        chunks.update({k: bytes(v) for k, v in new_chunks.items()})
        parsed = SnapshotImage(bytes(root), chunks.get, length=len(root), crc=root_crc(root))
        assert parsed.generation == gen
        same_content(parsed, ds)
        assert parsed.active_flags == sum(1 for f in ds.flags.values() if not f.get("archived"))


def test_patch_of_one_flag_in_ten_thousand_is_incremental() -> None:
    ds, _ = apply(DataSet(), [b.flag(f"f{i}", updated_at=1) for i in range(10_000)], [], "full")
    builder = SnapshotBuilder()
    _root1, chunks1 = builder.build(ds, 1)
    ds2, changes = apply(ds, [b.flag("f5", updated_at=2)], [], "patch")
    root2, chunks2 = builder.build(ds2, 2, changes)
    assert builder.incremental_builds == 1 and builder.full_builds == 1
    assert len(chunks2[2]) < 1000  # one blob in a new chunk, not a rewrite
    image = SnapshotImage(bytes(root2), {**chunks1, **chunks2}.get)
    assert image.chunks == (1, 2)
    assert image.flag("f5")["version"] == 2 and image.flag("f6")["version"] == 1


def valid_image() -> tuple[bytes, bytes]:
    """A root and its one chunk (id 3)."""
    ds, _ = apply(DataSet(), [b.flag("a"), b.flag("b", rules=[b.rule([b.cond("x", "Equal", "y")], b.serve(0))])], [b.segment("s")], "full")
    root, chunks = SnapshotBuilder().build(ds, 3)
    return bytes(root), bytes(chunks[3])


def exercise(image: SnapshotImage) -> None:
    for k in image.flag_keys(active_only=False):
        image.flag(k)
    for k in image.segment_ids(active_only=False):
        image.segment(k)
    image.flag("a")
    image.segment("s")


@settings(max_examples=300)
@given(st.binary(max_size=1200), st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_snapshot_decoder(root: bytes, chunk: bytes) -> None:
    try:
        exercise(SnapshotImage(root, {3: chunk}.get))
    except SnapshotError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_arbitrary_chunk_bytes_under_a_valid_root_never_crash(chunk: bytes) -> None:
    root, _ = valid_image()
    try:
        exercise(SnapshotImage(root, {3: chunk}.get))
    except SnapshotError:
        pass


@settings(max_examples=400)
@given(st.data())
def test_corrupted_valid_images_give_a_clean_error_or_valid_entities(data: st.DataObject) -> None:
    root, chunk = valid_image()
    target = data.draw(st.sampled_from(["root", "chunk"]))
    raw = bytearray(root if target == "root" else chunk)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if target == "root":
        root = bytes(raw)
    else:
        chunk = bytes(raw)
    try:
        exercise(SnapshotImage(root, {3: chunk}.get))
    except SnapshotError:
        pass


def test_crc_catches_any_change_to_the_root() -> None:
    root, chunk = valid_image()
    good = root_crc(root)
    for pos in (20, 70, 600, len(root) - 1):  # header, chunk list, tables
        raw = bytearray(root)
        raw[pos] ^= 0xFF
        try:
            SnapshotImage(bytes(raw), {3: chunk}.get, crc=good)
            raise AssertionError(f"a root changed at {pos} was accepted")
        except SnapshotError:
            pass


def test_blob_crc_catches_a_changed_chunk() -> None:
    root, chunk = valid_image()
    raw = bytearray(chunk)
    raw[-3] ^= 0x01
    image = SnapshotImage(root, {3: bytes(raw)}.get, crc=root_crc(root))
    try:
        exercise(image)
        raise AssertionError("a changed blob was accepted")
    except SnapshotError:
        pass


def test_missing_chunk_is_a_snapshot_error() -> None:
    root, _ = valid_image()
    try:
        SnapshotImage(root, {}.get).flag("a")
        raise AssertionError("a missing chunk was not reported")
    except SnapshotError:
        pass


def test_truncated_image_is_rejected() -> None:
    raw, chunk = valid_image()
    for cut in (0, 10, 63, 64, 200, len(raw) - 1):
        try:
            exercise(SnapshotImage(raw[:cut], {3: chunk}.get, length=len(raw)))
            raise AssertionError(f"a snapshot cut at {cut} was accepted")
        except SnapshotError:
            pass


@settings(max_examples=300)
@given(st.binary(max_size=320), st.booleans())
def test_arbitrary_control_block_bytes_never_crash_or_hang(data: bytes, stamped: bool) -> None:
    raw = bytearray(data.ljust(SIZE, b"\0"))  # everything past 288 is reserved
    if stamped:
        raw[:16] = b"FBSHMCTL" + (1).to_bytes(4, "little") + SIZE.to_bytes(4, "little")
    block = ControlBlock(raw)
    block.valid()
    pointer = block.read_pointer(attempts=3)
    assert pointer is None or isinstance(pointer.name, str)
    assert isinstance(block.state, SyncState)


def test_control_block_pointer_round_trip() -> None:
    block = ControlBlock(bytearray(SIZE))
    block.initialize()
    block.check()
    block.write_pointer(7, 1234, 0xDEADBEEF, 99, "/fbshm.x.g7", SyncState.INTERRUPTED)
    p = block.read_pointer()
    assert (p.generation, p.length, p.crc, p.data_version, p.name, p.state) == (7, 1234, 0xDEADBEEF, 99, "/fbshm.x.g7", 2)
    assert block.q[2] % 2 == 0


def test_many_small_patches_keep_chunks_bounded_without_full_rebuilds() -> None:
    from featbit_shm._core.snapshot import MAX_CHUNKS

    ds, _ = apply(DataSet(), [b.flag(f"f{i}", updated_at=1) for i in range(500)], [b.segment("s", updated_at=1)], "full")
    builder = SnapshotBuilder()
    root, chunks = builder.build(ds, 1)
    store: dict[int, bytes] = {k: bytes(v) for k, v in chunks.items()}
    for gen in range(2, 302):
        flags = [b.flag(f"f{gen % 37}", updated_at=gen)]
        segs = [b.segment("s", updated_at=gen)] if gen % 50 == 0 else []
        ds, changes = apply(ds, flags, segs, "patch")
        root, chunks = builder.build(ds, gen, changes)
        store.update({k: bytes(v) for k, v in chunks.items()})
        image = SnapshotImage(bytes(root), store.get, crc=root_crc(root))
        assert len(image.chunks) <= MAX_CHUNKS
        assert image.flag(f"f{gen % 37}")["version"] == gen
    same_content(image, ds)
    assert builder.full_builds == 1  # chunks were folded, never rebuilt wholesale


def test_full_sync_with_same_versions_but_new_content_is_not_served_stale() -> None:
    """R-12: a full replaces content whatever its versions say (a hand-edited file)."""
    builder = SnapshotBuilder()
    store: dict[int, bytes] = {}
    ds, _ = apply(DataSet(), [b.flag("f", variations=["true", "false"], updated_at=5)], [], "full")
    root, chunks = builder.build(ds, 1)
    store.update({k: bytes(v) for k, v in chunks.items()})
    ds2, _ = apply(DataSet(), [b.flag("f", variations=["false", "true"], updated_at=5)], [], "full")
    root, chunks = builder.build(ds2, 2)
    store.update({k: bytes(v) for k, v in chunks.items()})
    assert SnapshotImage(bytes(root), store.get).flag("f")["variations"][0][1] == "false"
