"""The snapshot image and control block as pure codecs: round trips and fuzzing (issue 3)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featbit_shm._core.dataset import DataSet
from featbit_shm._core.snapshot import SnapshotBuilder, SnapshotError, SnapshotImage, tables_crc
from featbit_shm._core.wire import parse_data_sync
from featbit_shm.store.control import SIZE, ControlBlock, SyncState
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
    for gen, (event, flags, segs) in enumerate(seq, start=1):
        ds, changes = apply(ds, flags, segs, event)
        image = builder.build(ds, gen, changes)
        parsed = SnapshotImage(bytes(image), length=len(image), crc=tables_crc(image))
        assert parsed.generation == gen
        same_content(parsed, ds)
        assert parsed.active_flags == sum(1 for f in ds.flags.values() if not f.get("archived"))


def test_patch_of_one_flag_in_ten_thousand_is_incremental() -> None:
    ds, _ = apply(DataSet(), [b.flag(f"f{i}", updated_at=1) for i in range(10_000)], [], "full")
    builder = SnapshotBuilder()
    first = builder.build(ds, 1)
    ds2, changes = apply(ds, [b.flag("f5", updated_at=2)], [], "patch")
    second = builder.build(ds2, 2, changes)
    assert builder.incremental_builds == 1 and builder.full_builds == 1
    assert len(second) - len(first) < 1000  # one blob appended, not a rewrite
    assert SnapshotImage(second).flag("f5")["version"] == 2


def valid_image() -> bytes:
    ds, _ = apply(DataSet(), [b.flag("a"), b.flag("b", rules=[b.rule([b.cond("x", "Equal", "y")], b.serve(0))])], [b.segment("s")], "full")
    return bytes(SnapshotBuilder().build(ds, 3))


def exercise(image: SnapshotImage) -> None:
    for k in image.flag_keys(active_only=False):
        image.flag(k)
    for k in image.segment_ids(active_only=False):
        image.segment(k)
    image.flag("a")
    image.segment("s")


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_snapshot_decoder(data: bytes) -> None:
    try:
        exercise(SnapshotImage(data))
    except SnapshotError:
        pass


@settings(max_examples=400)
@given(st.data())
def test_corrupted_valid_images_give_a_clean_error_or_valid_entities(data: st.DataObject) -> None:
    raw = bytearray(valid_image())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    try:
        image = SnapshotImage(bytes(raw))
        exercise(image)
    except SnapshotError:
        pass


def test_crc_catches_any_change_to_the_tables() -> None:
    raw = bytearray(valid_image())
    good = tables_crc(raw)
    raw[70] ^= 0xFF  # a byte inside the flag table
    try:
        SnapshotImage(bytes(raw), crc=good)
        raise AssertionError("corrupted tables were accepted")
    except SnapshotError:
        pass


def test_truncated_image_is_rejected() -> None:
    raw = valid_image()
    for cut in (0, 10, 63, 64, 200, len(raw) - 1):
        try:
            exercise(SnapshotImage(raw[:cut], length=len(raw)))
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
