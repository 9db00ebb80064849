"""Real uWSGI (compiled from PyPI) with the featbit_shm mule, against the stand-in (issue 7)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import featbit_shm.uwsgi_mule
from featbit_shm.testing.server import FeatBitStandIn

from .sync_helpers import eventually, processes_of
from .test_gunicorn import ROOT, ask, banner_off, free_port

UWSGI = shutil.which("uwsgi") or str(Path(sys.executable).with_name("uwsgi"))
if not os.access(UWSGI, os.X_OK):
    pytest.skip("uWSGI is not installed (its compile from PyPI failed or was skipped): uWSGI tests skipped", allow_module_level=True)

WORKERS = 4


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    doc = json.loads((ROOT / "examples" / "flags.json").read_text())
    with FeatBitStandIn(flags=doc["data"]["featureFlags"], segments=doc["data"]["segments"]) as s:
        yield s


class UWSGIServer:
    def __init__(self, server: FeatBitStandIn) -> None:
        self.server = server
        self.port = free_port()
        self.namespace = f"uwsgi-{uuid.uuid4().hex[:10]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEATBIT_")}
        env.update(
            FEATBIT_ENV_SECRET=server.secret,
            FEATBIT_STREAMING_URL=server.streaming_url,
            FEATBIT_EVENT_URL=server.event_url,
            FEATBIT_NAMESPACE=self.namespace,
            FEATBIT_SHM_AUTOSTART="0",
            FEATBIT_LOG_LEVEL="WARNING",
            PYTHONPATH=str(ROOT / "examples") + os.pathsep + str(ROOT),
        )
        self.proc = subprocess.Popen(
            [
                UWSGI, "--master", "--processes", str(WORKERS), "--http-socket", f"127.0.0.1:{self.port}",
                f"--mule={featbit_shm.uwsgi_mule.__file__}", "--wsgi-file", str(ROOT / "examples" / "demo_app.py"),
                "--callable", "app", "--die-on-term", "--disable-logging", "--virtualenv", sys.prefix,
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert eventually(self._up, timeout=60), "uWSGI did not start"

    def _up(self) -> bool:
        try:
            ask(self.port)
            return True
        except OSError:
            return False

    def workers(self, predicate: Any = None, timeout: float = 20) -> dict[int, dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        for _ in range(3000):
            if time.monotonic() > deadline or len(seen) >= WORKERS:
                break
            answer = ask(self.port)
            if predicate is None or predicate(answer):
                seen[answer["pid"]] = answer
        return seen

    def store_objects(self) -> list[str]:
        from featbit_shm.store.names import StoreNames

        return StoreNames.for_env(self.server.secret, self.namespace).all_objects()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in processes_of(self.namespace, sync_only=False):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        import posix_ipc

        for name in self.store_objects():
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                pass


def test_uwsgi_mule_one_websocket_patch_to_every_worker_clean_stop(server: FeatBitStandIn) -> None:
    u = UWSGIServer(server)
    try:
        assert eventually(lambda: len(u.workers(lambda a: a["generation"] > 0)) >= 2, timeout=30)
        before = u.workers(lambda a: a["generation"] > 0)
        assert len(before) >= 2  # uWSGI's accept balancing may favour some workers
        assert server.open_connections == 1 and server.connections_accepted == 1
        pushed = time.monotonic()
        banner_off(server)
        after = u.workers(lambda a: a["flags"]["welcome-banner"] is False)
        assert len(after) >= len(before)
        print(f"\nuWSGI: patch reached {len(after)} workers in {time.monotonic() - pushed:.3f} s")
        u.proc.send_signal(signal.SIGTERM)  # die-on-term: a graceful stop
        assert u.proc.wait(30) is not None
        assert eventually(lambda: processes_of(u.namespace) == [], timeout=15)
        assert eventually(lambda: u.store_objects() == [], timeout=10)
        evaluated = [e for e in server.events if e["user"]["keyId"] == "alice"]
        assert evaluated  # the workers' events were delivered
    finally:
        u.cleanup()
