"""Real app servers (gunicorn, uWSGI) on loopback running examples/demo_app.py, for tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featbit_shm.testing.server import FeatBitStandIn

from .sync_helpers import eventually, processes_of

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/?user=alice&country=us", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    """The stand-in serving examples/flags.json."""
    doc = json.loads((ROOT / "examples" / "flags.json").read_text())
    with FeatBitStandIn(flags=doc["data"]["featureFlags"], segments=doc["data"]["segments"]) as s:
        yield s


def banner_off(server: FeatBitStandIn) -> None:
    """Push a patch that disables welcome-banner."""
    doc = json.loads((ROOT / "examples" / "flags.json").read_text())
    banner = next(f for f in doc["data"]["featureFlags"] if f["key"] == "welcome-banner")
    banner["isEnabled"] = False
    banner["updatedAt"] = "2025-06-01T00:00:00.000Z"
    server.update_flag(banner)


class AppServer:
    """One server process; subclasses build the command line."""

    kind = "app"

    def __init__(self, server: FeatBitStandIn, command: list[str], extra_env: dict[str, str]) -> None:
        self.server = server
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "GUNICORN_"))}
        env.update(
            FEATBIT_ENV_SECRET=server.secret,
            FEATBIT_STREAMING_URL=server.streaming_url,
            FEATBIT_EVENT_URL=server.event_url,
            FEATBIT_NAMESPACE=self.namespace,
            FEATBIT_LOG_LEVEL="WARNING",
            PYTHONPATH=str(ROOT / "examples") + os.pathsep + str(ROOT),
        )
        env.update(extra_env)
        self.proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        assert eventually(self._up, timeout=60), f"{self.kind} did not start"

    port: int
    namespace: str

    def _up(self) -> bool:
        try:
            ask(self.port)
            return True
        except OSError:
            return False

    def workers(self, predicate: Any = None, want: int = WORKERS, timeout: float = 20) -> dict[int, dict[str, Any]]:
        """An answer from each of ``want`` worker pids (bounded in count and time)."""
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        for _ in range(3000):
            if time.monotonic() > deadline or len(seen) >= want:
                break
            answer = ask(self.port)
            if predicate is None or predicate(answer):
                seen[answer["pid"]] = answer
        return seen

    def store_objects(self) -> list[str]:
        from featbit_shm.shm.names import StoreNames

        return StoreNames.for_env(self.server.secret, self.namespace).all_objects()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def cleanup(self) -> None:
        self.stop()
        for pid in processes_of(self.namespace, sync_only=False):  # orphaned workers too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        from featbit_shm.shm.names import StoreNames
        from featbit_shm.shm.objects import remove_objects

        remove_objects(self.store_objects(), StoreNames.for_env(self.server.secret, self.namespace).access)


def new_namespace(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
