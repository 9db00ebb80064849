"""Trust model (issue 16): no other local user can feed, stop or squat a store.

The attacker is a real unprivileged account made with ``useradd`` for this
module (skipped, saying why, when the tests do not run as root). Its attacks
run the package's own code in a child forked from the test process that
switched to that account (``setuid``), so it needs no access to the source
tree or the venv. The victim is this (root) process and the processes it
starts. Everything the attacker made is removed afterwards, and so is the
account.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from featbit_shm import Config, FBClient, ReasonKind
from featbit_shm._core.dataset import DataSet
from featbit_shm._core.wire import parse_data_sync
from featbit_shm._runtime import redaction
from featbit_shm.shm import locks, objects, trust
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.shm.reader import SnapshotReader
from featbit_shm.shm.registry import Registry
from featbit_shm.shm.trust import StoreAccess
from featbit_shm.shm.writer import SnapshotWriter
from featbit_shm.testing import builders as b

from .accounts import unprivileged_account
from .sync_helpers import eventually

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[1]


def dataset(value: str) -> DataSet:
    flag = b.flag("kill-switch", variations=[value, "other"], variation_type="string")
    return DataSet().apply(parse_data_sync(b.data_sync([flag])["data"]))[0]


@pytest.fixture(scope="module")
def attacker() -> Iterator[pwd.struct_passwd]:
    with unprivileged_account("fbshm-atk") as account:
        yield account


def as_account(account: pwd.struct_passwd, attack: Callable[[], None]) -> None:
    """Run ``attack`` in a child that has become ``account``; fail on its error."""
    pid = os.fork()
    if pid == 0:  # the child: drop to the attacker's account, attack, exit
        code = 1
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            attack()
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attack itself failed (see its traceback above)"


class Victim:
    """The victim's store: an offline namespace of this (root) account."""

    def __init__(self) -> None:
        self.namespace = f"trust-{uuid.uuid4().hex[:8]}"
        self.names = StoreNames.for_env("", self.namespace, StoreAccess(os.geteuid()))

    def client(self) -> FBClient:
        return FBClient(Config(offline=True, namespace=self.namespace, shared=True), start_wait=0)

    def owned_by(self, uid: int) -> list[str]:
        return [n for n in self.names.all_objects() if os.lstat("/dev/shm" + n).st_uid == uid]


@pytest.fixture
def victim() -> Iterator[Victim]:
    v = Victim()
    yield v
    remove_objects(v.names.all_objects(), v.names.access)  # the victim's own; the attacker's go with the account


def test_a_forged_store_under_the_victims_names_is_refused_and_never_served(attacker: pwd.struct_passwd, victim: Victim) -> None:
    # The attacker publishes a complete, valid store (control block and
    # snapshot) under the victim's names, with the package's own writer,
    # before the victim's sync process runs.
    names = victim.names

    def forge() -> None:
        writer = SnapshotWriter(names)
        writer.publish(dataset("attacker"))
        writer.close(unlink=False)

    as_account(attacker, forge)
    forged = victim.owned_by(attacker.pw_uid)
    assert names.control in forged
    client = victim.client()
    detail = client.variation_detail("kill-switch", {"key": "u"}, "default")
    assert (detail.kind, detail.variation, detail.error) == (ReasonKind.ERROR, "default", "StoreRefused")
    assert f"owner uid {attacker.pw_uid}" in detail.reason and names.control in detail.reason
    assert any(r.name == names.control and r.owner == attacker.pw_uid for r in trust.refusals)
    # The victim's writer neither adopts, crashes on nor removes the forgery:
    # it takes the next control block name, and clients follow it.
    with SnapshotWriter(names) as writer:
        assert writer.control_name == names.controls[1]
        writer.publish(dataset("victim"))
        assert eventually(lambda: client.variation("kill-switch", {"key": "u"}, "default") == "victim")
        assert client.variation_detail("kill-switch", {"key": "u"}, "default").kind is ReasonKind.FALLTHROUGH
    assert set(forged) <= set(victim.owned_by(attacker.pw_uid))  # never unlinked
    client.stop()


def test_squatted_generation_ring_and_registry_names_are_skipped_and_left_alone(attacker: pwd.struct_passwd, victim: Victim) -> None:
    names = victim.names

    def squat() -> None:
        for i in range(1, 4):
            for name in (names.root(i), names.chunk(i), names.ring(i)):
                os.close(os.open("/dev/shm" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666))
        os.close(os.open("/dev/shm" + names.registry, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666))

    as_account(attacker, squat)
    squatted = set(victim.owned_by(attacker.pw_uid))
    assert len(squatted) == 10
    reader = SnapshotReader(names, retry_interval=0.0)
    with SnapshotWriter(names) as writer:
        first = writer.publish(dataset("one"))
        second = writer.publish(dataset("two"))
        assert first > 3 and second == first + 1  # numbered past every squatted name
        view = reader.current()
        assert view is not None and view.generation == second
        registry = Registry(names)
        ring = registry.claim(1 << 16)  # the registry and the ring skip the squatted names
        assert registry.name == names.registries[1] and ring.ring_id > 3
        ring.close()
        registry.close()
    assert squatted <= set(victim.owned_by(attacker.pw_uid))  # nothing of the attacker's was removed


def test_a_0600_squat_at_the_next_generation_name_is_skipped_by_a_non_root_victim(
    attacker: pwd.struct_passwd, victim: Victim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker review: another account's 0600 file at the next snapshot
    name. A non-root victim's open of it fails with EACCES, which was not
    taken for a foreign object: every publish failed, status OK. Root is never
    refused an open, so the non-root victim's kernel answer is emulated."""
    real_open = os.open

    def open_as_non_root(path: str, flags: int, *args: int) -> int:
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        exclusive = flags & os.O_CREAT and flags & os.O_EXCL  # EEXIST comes first, as from the kernel
        if st is not None and not exclusive and st.st_uid != os.geteuid() and not st.st_mode & 0o077:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(objects.os, "open", open_as_non_root)
    names = victim.names
    reader = SnapshotReader(names, retry_interval=0.0)
    with SnapshotWriter(names) as writer:
        first = writer.publish(dataset("one"))

        def squat() -> None:
            for name in (names.root(first + 1), names.chunk(first + 1)):
                os.close(real_open("/dev/shm" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))

        as_account(attacker, squat)
        second = writer.publish(dataset("two"))  # raised PermissionError before
        assert second > first + 1
        view = reader.current()
        assert view is not None and view.generation == second
    assert len(victim.owned_by(attacker.pw_uid)) == 2  # left alone


def test_a_squatted_lock_directory_and_planted_links_are_refused(
    attacker: pwd.struct_passwd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for /dev/shm (sticky, world-writable), so the test owns the
    # directory names: the attacker makes the victim's lock directory first,
    # and a link in the place of the second one.
    import tempfile

    shm = Path(tempfile.mkdtemp(prefix="featbit-trust-", dir="/dev/shm"))
    os.chmod(shm, 0o1777)
    target = tmp_path / "never-created"
    monkeypatch.setattr(locks, "SHM_ROOT", str(shm))
    monkeypatch.delenv("FEATBIT_SHM_RUNTIME_DIR", raising=False)
    uid = os.geteuid()
    names = StoreNames.for_env("", f"trust-{uuid.uuid4().hex[:8]}", StoreAccess(uid))

    def squat() -> None:
        os.mkdir(shm / f"featbit-shm-{uid}", 0o777)
        os.chmod(shm / f"featbit-shm-{uid}", 0o777)
        os.symlink(target, shm / f"featbit-shm-{uid}" / f"{names.tag}.lock.registry")
        os.symlink(tmp_path, shm / f"featbit-shm-{uid}.1")

    try:
        as_account(attacker, squat)
        chosen = locks.runtime_directory(names.access)
        assert chosen == str(shm / f"featbit-shm-{uid}.2")
        registry = Registry(names)
        try:
            with registry._locked():
                pass
            assert os.path.dirname(registry.lock_path) == chosen
            assert os.stat(chosen).st_mode & 0o7777 == 0o700
            assert not target.exists()
        finally:
            registry.close()
            remove_objects(names.all_objects(), names.access)
        # A lock file that is a link is refused, never followed.
        link = Path(chosen) / "planted.lock"
        link.symlink_to(target)
        with pytest.raises(trust.Untrusted):
            locks.open_lock_file(str(link), names.access)
        assert not target.exists()
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_the_victims_sync_process_serves_its_own_data_whatever_was_squatted(
    attacker: pwd.struct_passwd, victim: Victim, tmp_path: Path
) -> None:
    names = victim.names

    def forge() -> None:
        writer = SnapshotWriter(names)
        writer.publish(dataset("attacker"))
        writer.close(unlink=False)
        for i in range(2, 6):
            os.close(os.open("/dev/shm" + names.root(i), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644))

    as_account(attacker, forge)
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps(b.data_sync([b.flag("kill-switch", variations=["victim", "other"], variation_type="string")])))
    env = {**os.environ, "FEATBIT_OFFLINE": "1", "FEATBIT_BOOTSTRAP_FILE": str(flags), "FEATBIT_NAMESPACE": victim.namespace}
    sync = subprocess.Popen([sys.executable, "-m", "featbit_shm.sync"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = victim.client()
    try:
        assert eventually(lambda: client.variation("kill-switch", {"key": "u"}, "d") == "victim", timeout=30)
        assert sync.poll() is None  # it did not crash on the forgery
        status = subprocess.run(
            [sys.executable, "-m", "featbit_shm.cli", "status", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        report = json.loads(status.stdout)
        refused = {r["name"]: r for r in report["refused"]}
        assert refused[names.control]["owner"] == attacker.pw_uid and refused[names.control]["kind"] == "control block"
        assert names.root(2) in refused and report["state"] == "OK"
    finally:
        sync.terminate()
        _out, err = sync.communicate(timeout=30)
        client.stop()
    assert b"refusing control block" in err  # one clear log line naming the object
    assert victim.owned_by(attacker.pw_uid)  # the forgery is still there: never unlinked


# --------------------------------------------------------------------------- secrets in logs


class EchoingServer:
    """Answers every websocket upgrade with an error page that quotes the request line."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    body = b"<html>bad request: " + request.split(b"\r\n", 1)[0] + b"</html>"
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.unit
def test_no_token_or_secret_reaches_the_log_when_a_server_echoes_the_request(caplog: pytest.LogCaptureFixture) -> None:
    from featbit_shm._core.protocol import build_token
    from featbit_shm.sync.sources import StreamSource

    secret = "c2VjcmV0LWVudi1rZXktZm9yLWEtdGVzdC0wMTIzNDU2Nzg5"
    now_ms = 1_700_000_000_000
    server = EchoingServer()
    stop = threading.Event()
    source = StreamSource(secret, f"ws://127.0.0.1:{server.port}", lambda: 0, clock_ms=lambda: now_ms, rand=lambda: 0.5)
    token = build_token(secret, now_ms, 0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="featbit_shm"):
            redaction.install(secret)  # what the sync process does when it starts
            for handler in (caplog.handler,):
                handler.addFilter(redaction.REDACTOR)
            source.run(lambda _m: None, lambda _s: None, stop.set, stop)
    finally:
        server.close()
    text = caplog.text
    assert "400" in text and "bad request: GET" in text  # the echoed page reached the log...
    assert token not in text and secret not in text and token[5:25] not in text  # ...without the token
    assert "<redacted>" in text
