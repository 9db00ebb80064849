"""The shared-memory snapshot store with real processes (issue 3; DESIGN "Shared memory")."""

from __future__ import annotations

import errno
import json
import mmap
import multiprocessing
import os
import random
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from featbit_shm import Config, FBClient, SharedMemoryError
from featbit_shm._core.dataset import Changes, DataSet
from featbit_shm.shm.control import W_FLAGS, W_SEGMENTS, W_SEQ, ControlBlock, SyncState
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import kind_of, map_readonly
from featbit_shm.shm.reader import SnapshotReader
from featbit_shm.shm.trust import CONTROL, SNAPSHOT, StoreAccess
from featbit_shm.shm.writer import SnapshotWriter
from featbit_shm.testing import builders as b

from . import shm_workers

SPAWN = multiprocessing.get_context("spawn")


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll for liveness with a generous bound (never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def shm_objects() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith("fbshm.")}


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Every test must leave /dev/shm as it found it."""
    before = shm_objects()
    yield
    left = shm_objects() - before
    for name in left:  # clean up so one failure does not cascade
        os.unlink(f"/dev/shm/{name}")
    assert not left, f"shared-memory objects left behind: {sorted(left)}"


@pytest.fixture
def names() -> StoreNames:
    return StoreNames.for_env("", f"test-{uuid.uuid4().hex[:12]}")


def dataset(*flags: dict, segments: tuple = ()) -> DataSet:  # type: ignore[type-arg]
    from featbit_shm._core.wire import parse_data_sync

    ds, _ = DataSet().apply(parse_data_sync(b.data_sync(flags, segments)["data"]))
    return ds


def test_publish_then_read_in_another_reader(names: StoreNames) -> None:
    with SnapshotWriter(names) as writer:
        reader = SnapshotReader(names)
        assert reader.current() is None  # nothing published: not ready
        gen = writer.publish(dataset(b.flag("a"), b.flag("gone", archived=True), segments=(b.segment("s1"),)))
        view = reader.current()
        assert view is not None and view.generation == gen
        assert view.flag("a") is not None and view.flag("gone") is None
        assert view.segment("s1") is not None
        assert list(view.flag_keys()) == ["a"]
        assert reader.state() is SyncState.OK


def test_reader_mapping_is_read_only(names: StoreNames) -> None:
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a")))
        mm = map_readonly(writer.current_name, SNAPSHOT, names.access)
        with pytest.raises(TypeError):
            mm[0:1] = b"x"
        ctl = map_readonly(names.control, CONTROL, names.access)
        with pytest.raises(TypeError):
            ctl[16:24] = bytes(8)
        assert ControlBlock(ctl).readonly


def test_generation_check_reuses_compiled_flags_whose_version_did_not_change(names: StoreNames) -> None:
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("same", updated_at=1), b.flag("moves", updated_at=1)))
        reader = SnapshotReader(names)
        v1 = reader.current()
        same, moves = v1.flag("same"), v1.flag("moves")
        assert reader.current() is v1  # no change: the very same view
        ds = dataset(b.flag("same", updated_at=1), b.flag("moves", updated_at=2))
        writer.publish(ds, Changes(False, frozenset({"moves"}), frozenset()))
        v2 = reader.current()
        assert v2 is not v1
        assert v2.flag("same") is same
        assert v2.flag("moves") is not moves and v2.flag("moves").version == 2


def test_old_generations_are_unlinked_after_grace(names: StoreNames) -> None:
    now = [0.0]
    with SnapshotWriter(names, grace=1.0, keep=10, clock=lambda: now[0]) as writer:
        for i in range(5):
            writer.publish(dataset(b.flag("a", updated_at=i + 1)))
        assert len(names.existing("g")) == 5  # roots; full rebuilds left one chunk each too
        now[0] = 2.0
        writer.heartbeat()
        assert names.existing("g") == [writer.current_name]
        assert len(names.existing("c")) == 1


def test_old_generations_are_bounded_in_number(names: StoreNames) -> None:
    with SnapshotWriter(names, grace=3600, keep=2) as writer:
        for i in range(10):
            writer.publish(dataset(b.flag("a", updated_at=i + 1)))
        assert len(names.existing("g")) == 3  # current + 2 kept
        assert len(names.existing("c")) == 3


def test_full_dev_shm_is_a_clear_error_and_previous_snapshot_stays(names: StoreNames) -> None:
    real = os.posix_fallocate
    full = [False]

    def fallocate(fd: int, offset: int, size: int) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, size)

    with SnapshotWriter(names, fallocate=fallocate) as writer:
        gen = writer.publish(dataset(b.flag("a", variations=["old", "x"], variation_type="string")))
        reader = SnapshotReader(names)
        assert reader.current().generation == gen
        full[0] = True
        with pytest.raises(SharedMemoryError, match=r"needs \d+ bytes, \d+ bytes are free"):
            writer.publish(dataset(b.flag("a", variations=["new", "x"], variation_type="string", updated_at=5)))
        assert names.existing("g") == [writer.current_name]  # the partial objects are gone
        assert len(names.existing("c")) == 1
        view = reader.current()
        assert view.generation == gen and view.flag("a").static.value == "old"
        full[0] = False
        gen2 = writer.publish(dataset(b.flag("a", variations=["new", "x"], variation_type="string", updated_at=5)))
        assert reader.current().flag("a").static.value == "new" and gen2 == gen + 1
        assert writer.control.counter("publish_errors") == 1


def test_secret_never_appears_in_names_or_shared_memory() -> None:
    secret = "very-secret-env-key-0123456789abcdefghijkl"
    names = StoreNames.for_env(secret, "ns")
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a")))
        for name in (names.control, writer.current_name, names.lock_path):
            assert secret not in name and "very-secret" not in name
        for name in (names.control, *names.existing()):
            assert secret.encode() not in bytes(map_readonly(name, kind_of(name), names.access))
    assert StoreNames.for_env(secret, "ns") != StoreNames.for_env(secret, "other")
    assert StoreNames.for_env(secret, "ns") != StoreNames.for_env(secret + "x", "ns")


def test_objects_are_created_0600_by_default(names: StoreNames) -> None:
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a")))
        for name in (names.control, *names.existing()):
            assert stat.S_IMODE(os.stat("/dev/shm" + name).st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as nobody")
@pytest.mark.subprocess
def test_0600_object_cannot_be_opened_by_another_uid(names: StoreNames) -> None:
    def read_as_nobody(path: str, group: int | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["/bin/cat", path], user="nobody", group=group, extra_groups=[], capture_output=True, timeout=30)

    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a")))
        denied = read_as_nobody("/dev/shm" + writer.current_name)
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    # The positive control: a store shared with nobody's group is readable by it.
    import grp
    import pwd

    group = pwd.getpwnam("nobody").pw_gid
    other = StoreNames.for_env("", names.tag + "-open", StoreAccess(os.geteuid(), group))
    assert grp.getgrgid(group)
    with SnapshotWriter(other) as writer:
        writer.publish(dataset(b.flag("a")))
        assert read_as_nobody("/dev/shm" + writer.current_name, group).returncode == 0


def test_reader_before_writer_attaches_later(names: StoreNames) -> None:
    now = [0.0]
    reader = SnapshotReader(names, clock=lambda: now[0], retry_interval=1.0)
    assert reader.current() is None
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a")))
        assert reader.current() is None  # not retried before the interval
        now[0] = 1.5
        assert reader.current() is not None


def test_offline_client_serves_the_hosts_published_snapshot(names: StoreNames) -> None:
    namespace = f"client-{uuid.uuid4().hex[:8]}"
    shared = StoreNames.for_env("", namespace)
    client = FBClient(Config(offline=True, namespace=namespace))
    user = {"key": "u"}
    assert client.initialize is True  # offline is ready at once
    assert client.variation("a", user, "default") == "default"
    with SnapshotWriter(shared) as writer:
        writer.publish(dataset(b.flag("a", variations=["shared", "x"], variation_type="string")))
        assert eventually(lambda: client.variation("a", user, "default") == "shared")
        writer.publish(dataset(b.flag("a", variations=["v2", "x"], variation_type="string", updated_at=9)))
        assert client.variation("a", user, "default") == "v2"
    assert client.variation("a", user, "default") == "v2"  # writer gone: keep serving the last good


# --------------------------------------------------------------------------- fork


@pytest.mark.subprocess
def test_fork_parent_and_child_both_evaluate(names: StoreNames) -> None:
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a", variations=["one", "x"], variation_type="string")))
        reader = SnapshotReader(names)
        assert reader.current().flag("a").static.value == "one"
        r, w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: evaluate the inherited reader, then a new generation
            try:
                ok = reader.current().flag("a").static.value == "one"
                os.write(ready_w, b"1")  # the parent publishes only after this
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if reader.current().flag("a").static.value == "two":
                        break
                    time.sleep(0.01)
                ok = ok and reader.current().flag("a").static.value == "two"
                os.write(w, b"ok" if ok else b"no")
            finally:
                os._exit(0)
        assert os.read(ready_r, 1) == b"1"
        writer.publish(dataset(b.flag("a", variations=["two", "x"], variation_type="string", updated_at=7)))
        os.close(w)
        answer = os.read(r, 2)
        os.waitpid(pid, 0)
        for fd in (r, ready_r, ready_w):
            os.close(fd)
        assert answer == b"ok"
        assert reader.current().flag("a").static.value == "two"


def test_fork_with_injected_pid_rebuilds_a_lock_held_at_fork_time(names: StoreNames) -> None:
    pid = [100]
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a", updated_at=1)))
        reader = SnapshotReader(names, getpid=lambda: pid[0])
        assert reader.current().generation == 1
        reader._lock.acquire()  # another thread of the parent was refreshing at fork time
        writer.publish(dataset(b.flag("a", updated_at=2)))
        assert reader.current().generation == 1  # same process: the holder will finish
        pid[0] = 101  # now we are the child: nobody will ever release that lock
        assert reader.current().generation == 2


# --------------------------------------------------------------------------- torture and crashes


@pytest.mark.subprocess
def test_torture_2000_generations_4_reader_processes(names: StoreNames, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    with SPAWN.Pool(5) as pool:
        readers = [pool.apply_async(shm_workers.read_marked, (names.tag, 120.0, str(stop))) for _ in range(4)]
        time.sleep(1.0)  # let the readers start
        writer = pool.apply_async(shm_workers.publish_marked, (names.tag, 2000), {"patch": True})
        last = writer.get(timeout=120)
        stop.touch()
        results = [r.get(timeout=130) for r in readers]
    for result in results:
        assert result["errors"] == []
        assert result["seen"] > 10  # they really did read while the writer wrote
        assert result["last"] == last
    assert last >= 2000
    with SnapshotWriter(names):  # the test owns cleanup: unlink everything
        pass


@pytest.mark.subprocess
def test_writer_sigkilled_mid_publish_readers_keep_last_good_new_writer_recovers(names: StoreNames) -> None:
    rng = random.Random(7)
    reader = SnapshotReader(names)
    last_good = 0
    for _round in range(12):
        proc = SPAWN.Process(target=shm_workers.publish_marked, args=(names.tag, 100_000), kwargs={"patch": True})
        proc.start()
        deadline = time.monotonic() + 30
        while (reader.current() is None or reader.current().generation <= last_good) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.05))  # kill at a different point each round
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        view = reader.current()
        assert view is not None and view.generation > last_good
        values = {view.flag(k).static.value for k in shm_workers.MARKED_FLAGS}
        assert values == {str(view.generation)}
        last_good = view.generation
    # A new writer adopts the block and carries the numbering on.
    with SnapshotWriter(names) as writer:
        assert writer.generation >= last_good
        gen = writer.publish(shm_workers.marked_dataset(writer.generation + 1, 2_000_000_000_000))
        assert reader.current().generation == gen
        assert len(names.existing("g")) <= 4


def test_writer_killed_between_sequence_writes_is_recovered(names: StoreNames) -> None:
    with SnapshotWriter(names) as first:
        gen = first.publish(shm_workers.marked_dataset(1, 1))
        reader = SnapshotReader(names)
        assert reader.current().generation == gen
        # Simulate death inside write_pointer: sequence odd, generation moved.
        first.control.q[W_SEQ] += 1
        first.control.q[3] = gen + 1
        assert reader.current().generation == gen  # torn: keep the last good
        second = SnapshotWriter(names)
        assert second.control.q[W_SEQ] % 2 == 0
        gen2 = second.publish(shm_workers.marked_dataset(second.generation + 1, 2))
        assert eventually(lambda: reader.current().generation == gen2)
        second.close()


def test_corrupt_control_block_is_reinitialised_by_a_new_writer(names: StoreNames) -> None:
    fd = os.open("/dev/shm" + names.control, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 4096)
    with mmap.mmap(fd, 4096) as mm:
        mm[:8] = b"GARBAGE!"
    os.close(fd)
    reader = SnapshotReader(names)
    assert reader.current() is None  # not a control block: not ready, no crash
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a")))
        assert eventually(lambda: reader.current() is not None)


def test_status_fields_in_control_block(names: StoreNames) -> None:
    clock = [1000.0]
    with SnapshotWriter(names, wallclock=lambda: clock[0], getpid=lambda: 4242) as writer:
        writer.publish(dataset(b.flag("a"), b.flag("b"), segments=(b.segment("s"),)))
        block = ControlBlock(map_readonly(names.control, CONTROL, names.access))
        assert (block.leader_pid, block.heartbeat, block.state) == (4242, 1000.0, SyncState.OK)
        assert block.read_pointer().data_version == dataset(b.flag("a")).version
        assert (block.counter("publishes"), block.q[W_FLAGS], block.q[W_SEGMENTS]) == (1, 2, 1)
        writer.set_state(SyncState.INTERRUPTED)
        assert block.state is SyncState.INTERRUPTED


def test_restarted_writer_resumes_from_published_snapshot(names: StoreNames) -> None:
    from featbit_shm.shm.writer import open_image

    first = SnapshotWriter(names)
    gen = first.publish(dataset(b.flag("a", updated_at=5), b.flag("t", archived=True, updated_at=9)))
    first.close()  # crash-like: objects stay
    second = SnapshotWriter(names)
    pointer = second.control.read_pointer()
    image = open_image(names, pointer.name, pointer.length, pointer.crc)
    restored = image.to_dataset()
    assert restored.version == 9 and restored.flag("a") is not None and "t" in restored.flags
    assert second.generation == gen
    second.close(unlink=True)


def test_json_dump_of_snapshot_is_possible(names: StoreNames) -> None:
    with SnapshotWriter(names) as writer:
        writer.publish(dataset(b.flag("a")))
        view = SnapshotReader(names).current()
        assert json.dumps(view.flag("a").norm)


# --------------------------------------------------------------------------- review regressions


def test_reader_follows_a_restarted_writer_to_its_new_control_block(names: StoreNames) -> None:
    first = SnapshotWriter(names)
    first.publish(dataset(b.flag("a", variations=["old", "x"], variation_type="string")))
    reader = SnapshotReader(names, retry_interval=0.01)
    assert reader.current().flag("a").static.value == "old"
    first.close(unlink=True)  # a clean stop removes the block
    assert reader.current().flag("a").static.value == "old"  # last good view meanwhile
    with SnapshotWriter(names) as second:
        second.publish(dataset(b.flag("a", variations=["new", "x"], variation_type="string", updated_at=9)))
        assert eventually(lambda: reader.current().flag("a").static.value == "new")


def test_restart_after_death_inside_write_pointer_keeps_the_current_root(names: StoreNames) -> None:
    first = SnapshotWriter(names)
    first.publish(dataset(b.flag("a", updated_at=1)))
    first.publish(dataset(b.flag("a", updated_at=2)))
    # Died after name/length/crc but before the generation word: it still says 1.
    first.control.q[W_SEQ] += 1
    first.control.q[3] = 1
    first.close()
    second = SnapshotWriter(names)
    assert second.generation >= 2
    second.publish(dataset(b.flag("a", updated_at=3)))
    second.heartbeat()
    fresh = SnapshotReader(names)
    assert fresh.current() is not None and fresh.current().flag("a").version == 3
    assert second.current_name in names.existing("g")
    second.close(unlink=True)


def test_state_since_moves_when_a_publish_changes_the_state(names: StoreNames) -> None:
    now = [100.0]
    with SnapshotWriter(names, wallclock=lambda: now[0]) as writer:
        writer.set_state(SyncState.INTERRUPTED)
        assert writer.control.state_since == 100.0
        now[0] = 200.0
        writer.publish(dataset(b.flag("a")))
        assert (writer.control.state, writer.control.state_since) == (SyncState.OK, 200.0)


def test_a_snapshot_of_another_layout_is_reported_not_waited_on_silently(names: StoreNames, caplog: pytest.LogCaptureFixture) -> None:
    # Store names carry every format (names.py), so this takes a hash
    # collision or a foreign writer; still, a reader says why it serves
    # nothing rather than looking like a slow start (promise 1).
    import logging
    import struct

    with SnapshotWriter(names) as writer:
        gen = writer.publish(dataset(b.flag("a")))
        with open(f"/dev/shm{names.root(gen)}", "r+b") as fh:
            fh.seek(8)
            fh.write(struct.pack("<I", 3))
        reader = SnapshotReader(names)
        with caplog.at_level(logging.ERROR, logger="featbit_shm"):
            assert reader.current() is None
        assert reader.map_error is not None and "layout 3" in reader.map_error, reader.map_error
        assert "layout 3" in caplog.text


def test_store_names_carry_the_formats_and_the_environment_tag_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two releases whose formats differ get two stores and two leader locks
    # (tests/test_lifecycle.py runs them); what outlives a release (the
    # warm-start file) is named by the environment alone.
    import hashlib

    from featbit_shm._core import snapshot
    from featbit_shm.shm import control, formats, registry, ring
    from featbit_shm.shm import names as names_module

    assert (formats.SNAPSHOT_LAYOUT, formats.CONTROL_LAYOUT, formats.RING_LAYOUT) == (snapshot.LAYOUT, control.LAYOUT, ring.LAYOUT)
    assert registry.REGISTRY_LAYOUT is formats.REGISTRY_LAYOUT and registry._LAYOUT_AT + 4 <= registry.HEADER
    this = StoreNames.for_env("secret", "ns")
    monkeypatch.setattr(names_module, "STORE_FORMAT", formats.STORE_FORMAT.replace(f"ring {ring.LAYOUT}", "ring 99"))
    other = StoreNames.for_env("secret", "ns")
    assert this.tag != other.tag and this.base != other.base and this.lock_path != other.lock_path
    assert this.environment == other.environment != StoreNames.for_env("secret", "ns2").environment
    # The environment tag is the store tag of releases before formats were
    # named, so their warm-start files are found after an upgrade.
    assert this.environment == hashlib.sha256(b"featbit-shm/1\0secret\0ns").hexdigest()[:20]
