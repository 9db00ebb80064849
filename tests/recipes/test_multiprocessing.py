"""docs/recipes/multiprocessing.md, run as written: the page's pool jobs
(tests/recipes/multiprocessing_app/) with the fork, forkserver and spawn
start methods, against the FeatBit stand-in.

``pool_job.py`` builds the client with ``featbit_shm.get()`` in the parent
and in the Pool initializer; ``pool_job_module.py`` builds it at module level
(fbclient's pattern). Each run proves, with generous liveness bounds:

* every pool process answers from shared memory (users are fed until each
  of the pool's processes answered, bounded in count and time), and they are
  the job's own descendants;
* a flag patch pushed through the stand-in reaches every pool process within
  10 s;
* every evaluation's event arrives at the stand-in, those of pool processes
  that have exited included;
* after the job ends (``pool.close()``/``join()``) no pool process is left,
  and once ``FEATBIT_SHM_IDLE_TIMEOUT`` has passed no process, /dev/shm object
  or lock file of the store.

Test-only settings: a unique ``FEATBIT_NAMESPACE``,
``FEATBIT_SHM_IDLE_TIMEOUT=2`` (30 s by default), ``FEATBIT_SHM_WARM_START=0``
and ``--processes 3``. The time from starting the job to its first answer is
printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featbit_shm._runtime.processes import pid_alive
from featbit_shm.shm.locks import remove_lock_files
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..sync_helpers import eventually, processes_of
from .common import fenced_blocks

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "multiprocessing_app"
DOC = ROOT / "docs" / "recipes" / "multiprocessing.md"
PROCESSES = 3
IDLE_TIMEOUT_S = 2.0
FLAG = "pricing-model"


def test_the_page_shows_exactly_the_files_the_tests_run() -> None:
    blocks = fenced_blocks(DOC.read_text())
    for name in ("pool_job.py", "pool_job_module.py"):
        assert (APP / name).read_text() in blocks, f"docs/recipes/multiprocessing.md does not show {name} as it is"


def pricing(*, patched: bool) -> dict[str, Any]:
    """The job's flag: "standard" for everyone; patched, it is off and serves "dynamic"."""
    return b.flag(
        FLAG,
        variations=["standard", "dynamic"],
        variation_type="string",
        enabled=not patched,
        off=1,
        updated_at="2025-06-01T00:00:00.000Z" if patched else b.DEFAULT_UPDATED_AT,
    )


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[pricing(patched=False)]) as s:
        yield s


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return int(raw[raw.rindex(b")") + 2 :].split()[1])


def descendants(root: int) -> set[int]:
    """Every live process under ``root``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_of(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


class Job:
    """``python <app> --start-method M --processes 3``, fed users on stdin."""

    def __init__(self, server: FeatBitStandIn, tmp_path: Path, app: str, start_method: str) -> None:
        self.namespace = f"mp-recipe-{uuid.uuid4().hex[:10]}"
        self.names = StoreNames.for_env(server.secret, self.namespace)
        self.log = tmp_path / "sync.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEATBIT_")}
        env.update(
            FEATBIT_ENV_SECRET=server.secret,
            FEATBIT_STREAMING_URL=server.streaming_url,
            FEATBIT_EVENT_URL=server.event_url,
            FEATBIT_NAMESPACE=self.namespace,
            FEATBIT_SHM_IDLE_TIMEOUT=str(IDLE_TIMEOUT_S),
            FEATBIT_SHM_WARM_START="0",
            FEATBIT_SHM_LOG_FILE=str(self.log),
        )
        self.err = tmp_path / "job.err"
        self.started = time.monotonic()
        with open(self.err, "wb") as err:  # the child has its own copy
            self.proc = subprocess.Popen(
                [sys.executable, str(APP / app), "--start-method", start_method, "--processes", str(PROCESSES)],
                env=env,
                cwd=tmp_path,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.users = 0
        self.answers: list[dict[str, Any]] = []

    def batch(self, size: int) -> list[dict[str, Any]]:
        """Feed ``size`` users and read their answers (in order)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        keys = []
        for _ in range(size):
            self.users += 1
            keys.append(f"{self.namespace}-{self.users}")
        self.proc.stdin.write("".join(json.dumps({"key": k, "country": "us"}) + "\n" for k in keys))
        self.proc.stdin.flush()
        got = []
        for key in keys:
            line = self.proc.stdout.readline()
            assert line, f"the job ended early:\n{self.logs()}"
            answer = json.loads(line)
            assert answer["user"] == key, (answer, key)
            got.append(answer)
        self.answers.extend(got)
        return got

    def finish(self, timeout: float = 60) -> int:
        """End of input: the job closes and joins its pool and exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout)

    def left(self) -> tuple[list[int], list[str], list[str]]:
        locks = [p for p in self.names.lock_files if os.path.lexists(p)]
        return processes_of(self.namespace, sync_only=False), self.names.all_objects(), locks

    def logs(self) -> str:
        text = self.err.read_text(errors="replace")[-2000:] if self.err.exists() else ""
        return text + "\n--- sync log\n" + (self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "")

    def cleanup(self) -> None:
        for pid in [self.proc.pid, *descendants(self.proc.pid), *processes_of(self.namespace, sync_only=False)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        eventually(lambda: not processes_of(self.namespace, sync_only=False), timeout=10)
        remove_objects(self.names.all_objects(), self.names.access)
        remove_lock_files([p for p in self.names.lock_files if os.path.lexists(p)], self.names.access)


@pytest.mark.parametrize(
    ("app", "start_method"),
    [
        ("pool_job.py", "fork"),
        ("pool_job.py", "forkserver"),
        ("pool_job.py", "spawn"),
        ("pool_job_module.py", "fork"),
        ("pool_job_module.py", "forkserver"),
        ("pool_job_module.py", "spawn"),
    ],
)
def test_a_pool_serves_flags_in_every_process_follows_patches_delivers_events_and_leaves_nothing(
    server: FeatBitStandIn, tmp_path: Path, app: str, start_method: str
) -> None:
    job = Job(server, tmp_path, app, start_method)
    try:
        first = job.batch(1)[0]
        first_s = time.monotonic() - job.started
        assert (first["value"], first["kind"]) == ("standard", "Fallthrough"), (first, job.logs())

        # --- every pool process answers from shared memory.
        pool: set[int] = set()
        deadline = time.monotonic() + 60
        for _ in range(100):  # bounded in count and time
            if len(pool) >= PROCESSES or time.monotonic() > deadline:
                break
            pool |= {a["pid"] for a in job.batch(4 * PROCESSES)}
        assert len(pool) == PROCESSES, (pool, job.logs())
        assert pool <= descendants(job.proc.pid) and job.proc.pid not in pool, "answers came from outside the pool"
        assert all(a["value"] == "standard" and a["kind"] == "Fallthrough" for a in job.answers), job.answers
        everything = descendants(job.proc.pid)

        # --- a patch reaches every pool process within 10 s.
        pushed = time.monotonic()
        server.update_flag(pricing(patched=True))
        following: dict[int, float] = {}
        for _ in range(200):  # bounded in count and time
            if set(following) >= pool or time.monotonic() - pushed > 10:
                break
            for answer in job.batch(2 * PROCESSES):
                if answer["value"] == "dynamic":
                    following.setdefault(answer["pid"], time.monotonic() - pushed)
        assert set(following) >= pool, (following, pool, job.logs())
        assert max(following.values()) <= 10, following

        # --- end of input: the pool closes, every pool process exits.
        assert job.finish() == 0, job.logs()
        assert eventually(lambda: not any(pid_alive(p) for p in everything), timeout=30), (
            "a pool process outlived the job"
        )

        # --- every evaluation's event arrives (pool processes have exited).
        expected = {a["user"]: a["value"] for a in job.answers}

        def received() -> dict[str, str]:
            return {
                e["user"]["keyId"]: e["variations"][0]["variation"]["value"]
                for e in server.events
                if e["user"]["keyId"] in expected and e.get("variations")
            }

        assert eventually(lambda: received() == expected, timeout=30), (
            f"{len(received())} of {len(expected)} events arrived\n{job.logs()}"
        )

        # --- the idle timeout passes: nothing of the store is left.
        assert eventually(lambda: job.left() == ([], [], []), timeout=IDLE_TIMEOUT_S + 30), (job.left(), job.logs())
        print(f"\nmultiprocessing recipe, {app} {start_method}: first answer {first_s:.3f} s after starting the job")
    finally:
        job.cleanup()
