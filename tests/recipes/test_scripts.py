"""docs/recipes/scripts.md, run as written: a cron job or one-off script
(tests/recipes/scripts_app/flag_report.py) and a CI step
(tests/recipes/scripts_app/ci_step.sh) against the FeatBit stand-in.

The script proves, with generous liveness bounds:

* cold (no sync process yet) it starts a detached one and answers from
  shared memory; warm it uses the running one; either way it returns when it
  ends although its output is captured (``subprocess.run(capture_output=True)``)
  or piped (``| cat``): no process it started holds its stdout or stderr;
* a flag patch pushed through the stand-in is what the next run answers
  (within 10 s);
* every event the runs recorded arrives at the stand-in, and the script's
  exit status says so (``flush_and_wait``);
* once ``FEATBIT_SHM_IDLE_TIMEOUT`` has passed with no client, no process,
  /dev/shm object or lock file of the store is left.

The CI step proves the exit codes of ``featbit-shm status`` (1 with no store,
0 while served) and ``featbit-shm eval`` (0 evaluated, 1 no such flag or no
data, 2 bad arguments), and that it leaves nothing, even when the step's
shell is killed.

Test-only settings: a unique ``FEATBIT_NAMESPACE`` per test,
``FEATBIT_SHM_IDLE_TIMEOUT=2`` (30 s by default) and
``FEATBIT_SHM_WARM_START=0`` (no warm-start file in the home directory of the
account running the tests). The time from starting the script to its first
flag is printed (``pytest -s``).
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

from featbit_shm.shm.locks import remove_lock_files
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from ..sync_helpers import eventually, processes_of
from .common import fenced_blocks

pytestmark = pytest.mark.recipes

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "scripts_app"
DOC = ROOT / "docs" / "recipes" / "scripts.md"
BIN = Path(sys.executable).parent  # the venv's bin: python, featbit-shm
SCRIPT = APP / "flag_report.py"
CI_STEP = APP / "ci_step.sh"
IDLE_TIMEOUT_S = 2.0


def test_the_page_shows_exactly_the_files_the_tests_run() -> None:
    blocks = fenced_blocks(DOC.read_text())
    for path in (SCRIPT, CI_STEP):
        assert path.read_text() in blocks, f"docs/recipes/scripts.md does not show {path.relative_to(ROOT)} as it is"


def report_format(*, patched: bool) -> dict[str, Any]:
    """The script's flag: "csv" for everyone; patched, it is off and serves "pdf"."""
    return b.flag(
        "report-format",
        variations=["csv", "pdf"],
        variation_type="string",
        enabled=not patched,
        off=1,
        updated_at="2025-06-01T00:00:00.000Z" if patched else b.DEFAULT_UPDATED_AT,
    )


def deploy_strategy() -> dict[str, Any]:
    return b.flag("deploy-strategy", variations=["rolling", "blue-green"], variation_type="string")


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[report_format(patched=False), deploy_strategy()]) as s:
        yield s


class Host:
    """The environment a cron job or CI step runs in: the FEATBIT_* variables
    of the page, a namespace of its own, the venv's bin on PATH."""

    def __init__(self, server: FeatBitStandIn, tmp_path: Path) -> None:
        self.namespace = f"scripts-recipe-{uuid.uuid4().hex[:10]}"
        self.names = StoreNames.for_env(server.secret, self.namespace)
        self.log = tmp_path / "sync.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FEATBIT_")}
        self.env.update(
            PATH=f"{BIN}{os.pathsep}{self.env.get('PATH', '')}",
            FEATBIT_ENV_SECRET=server.secret,
            FEATBIT_STREAMING_URL=server.streaming_url,
            FEATBIT_EVENT_URL=server.event_url,
            FEATBIT_NAMESPACE=self.namespace,
            FEATBIT_SHM_IDLE_TIMEOUT=str(IDLE_TIMEOUT_S),
            FEATBIT_SHM_WARM_START="0",
            FEATBIT_SHM_LOG_FILE=str(self.log),
        )

    def run(self, command: list[str], timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
        """Run ``command`` with its output captured; (result, seconds taken)."""
        started = time.monotonic()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=APP)
        return done, time.monotonic() - started

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done, _ = self.run([str(BIN / "featbit-shm"), *args])
        return done

    def lock_files(self) -> list[str]:
        return [p for p in self.names.lock_files if os.path.lexists(p)]

    def left(self) -> tuple[list[int], list[str], list[str]]:
        """(processes, /dev/shm objects, lock files) of the store still there."""
        return processes_of(self.namespace, sync_only=False), self.names.all_objects(), self.lock_files()

    def sync_log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no sync log)"

    def cleanup(self) -> None:
        for pid in processes_of(self.namespace, sync_only=False):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        eventually(lambda: not processes_of(self.namespace, sync_only=False), timeout=10)
        remove_objects(self.names.all_objects(), self.names.access)
        remove_lock_files(self.lock_files(), self.names.access)


@pytest.fixture
def host(server: FeatBitStandIn, tmp_path: Path) -> Iterator[Host]:
    h = Host(server, tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def answers(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run_timed(command: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, str, float]:
    """Run ``command`` with stdout and stderr on pipes and wait for both to
    close, as ``subprocess.run(capture_output=True)`` does; (exit status,
    stdout, stderr, seconds from the start to its first line: its first flag)."""
    started = time.monotonic()
    # Unbuffered: readline() takes the first line byte by byte and leaves the
    # rest in the pipe for communicate().
    proc = subprocess.Popen(command, env=env, cwd=APP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        elapsed = time.monotonic() - started
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    rest, err_text = out.decode(), err.decode()
    return proc.returncode, first + rest, err_text, elapsed


def test_a_cron_script_returns_when_it_ends_cold_and_warm_captured_and_piped_and_leaves_nothing(
    server: FeatBitStandIn, host: Host
) -> None:
    python = str(BIN / "python")
    assert host.left() == ([], [], [])
    # --- cold: no sync process runs; the script starts one, detached. Its
    # output is captured, and it returns although that process lives on.
    status, out, err, cold_s = run_timed([python, str(SCRIPT), "cold-1", "cold-2"], host.env)
    assert status == 0, (out, err, host.sync_log())
    assert [(a["user"], a["format"], a["kind"]) for a in answers(out)] == [
        ("cold-1", "csv", "Fallthrough"),
        ("cold-2", "csv", "Fallthrough"),
    ]
    sync = processes_of(host.namespace)
    assert sync, "the cold run started no sync process"

    # --- warm: the sync process runs; a patch is what the next run answers.
    status, out, err, warm_s = run_timed([python, str(SCRIPT), "warm-0"], host.env)
    assert status == 0 and answers(out)[0]["format"] == "csv", (out, err)
    pushed = time.monotonic()
    server.update_flag(report_format(patched=True))
    seen: list[dict[str, Any]] = []
    started_after = 0.0
    for i in range(40):  # bounded in count and time
        started_after = time.monotonic() - pushed
        done, _ = host.run([python, str(SCRIPT), f"warm-{i + 1}"])
        assert done.returncode == 0, (done.stdout, done.stderr)
        seen = answers(done.stdout)
        if seen[0]["format"] == "pdf" or started_after > 10:
            break
    assert seen[0]["format"] == "pdf" and seen[0]["kind"] == "Off", seen
    assert started_after <= 10, f"the first run to answer the patch started {started_after:.1f} s after it"
    assert set(processes_of(host.namespace)) == set(sync), "a warm run started another sync process"

    # --- piped: `python flag_report.py ... | cat` returns too.
    piped, _ = host.run(["sh", "-c", f"'{python}' '{SCRIPT}' piped-1 | cat"])
    assert piped.returncode == 0 and answers(piped.stdout)[0]["user"] == "piped-1", (piped.stdout, piped.stderr)

    # --- every event arrived (each run waited for its own with flush_and_wait).
    users = {"cold-1", "cold-2", "warm-0", "piped-1"} | {a["user"] for a in seen}
    received = {e["user"]["keyId"] for e in server.events}
    assert users <= received, sorted(users - received)
    metrics = [e for e in server.events if e.get("metrics")]
    assert {e["user"]["keyId"] for e in metrics} >= users  # track_metric too

    # --- nothing is left once the idle timeout has passed with no client.
    assert eventually(lambda: host.left() == ([], [], []), timeout=IDLE_TIMEOUT_S + 30), (host.left(), host.sync_log())
    print(f"\nscripts recipe: first flag {cold_s:.3f} s after starting the script cold, {warm_s:.3f} s warm")


def test_a_script_with_output_captured_returns_even_when_the_sync_process_it_started_keeps_running(
    host: Host,
) -> None:
    # A long idle timeout: the sync process outlives the script by far, and
    # capture_output would hang if it held the script's stdout or stderr.
    host.env["FEATBIT_SHM_IDLE_TIMEOUT"] = "120"
    done, elapsed = host.run([str(BIN / "python"), str(SCRIPT), "held-1"], timeout=30)
    assert done.returncode == 0 and answers(done.stdout)[0]["format"] == "csv", (done.stdout, done.stderr)
    assert processes_of(host.namespace), "no sync process outlives the script"
    assert elapsed < 30
    # The documented way to stop it before its idle timeout: SIGTERM.
    for pid in processes_of(host.namespace):
        os.kill(pid, signal.SIGTERM)
    assert eventually(lambda: host.left() == ([], [], []), timeout=30), (host.left(), host.sync_log())


def test_a_ci_step_evaluates_with_featbit_shm_eval_and_status_and_leaves_nothing(host: Host) -> None:
    # Exit codes with no store: status 1, eval 1 (no data after --wait).
    absent = host.cli("status")
    assert absent.returncode == 1 and "absent" in absent.stdout, absent
    no_data = host.cli("eval", "deploy-strategy", "--user", '{"key": "ci"}', "--wait", "0.2")
    assert no_data.returncode == 1 and json.loads(no_data.stdout)["kind"] == "ClientNotReady", no_data
    bad = host.cli("eval", "deploy-strategy", "--user", "not json")
    assert bad.returncode == 2, bad

    # The step as the page shows it.
    step, step_s = host.run(["sh", str(CI_STEP)])
    assert step.returncode == 0, (step.stdout, step.stderr)
    assert step.stdout.strip() == "deploy strategy: rolling", step.stdout
    assert eventually(lambda: host.left() == ([], [], []), timeout=30), host.left()
    print(f"\nCI step: whole step (sync process, eval, status, stop) {step_s:.3f} s")

    # While a sync process serves: status 0, eval 0, a missing flag 1.
    sync = subprocess.Popen(
        [str(BIN / "featbit-shm"), "sync"],
        env=host.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert eventually(lambda: host.cli("status").returncode == 0, timeout=30, interval=0.1)
        evaluated = host.cli("eval", "deploy-strategy", "--user", '{"key": "ci"}')
        assert evaluated.returncode == 0 and json.loads(evaluated.stdout)["variation"] == "rolling", evaluated
        missing = host.cli("eval", "no-such-flag", "--user", '{"key": "ci"}')
        assert missing.returncode == 1 and json.loads(missing.stdout)["reason"] == "flag not found", missing
    finally:
        sync.terminate()
        assert sync.wait(30) == 0
    assert eventually(lambda: host.left() == ([], [], []), timeout=30), host.left()


def test_a_killed_ci_step_leaves_no_sync_process_behind(host: Host) -> None:
    # SIGKILL to the step's shell: no trap runs; the sync process sees its
    # owner (FEATBIT_SHM_OWNER_PID=$$) gone and stops, removing the store.
    step = subprocess.Popen(
        ["sh", str(CI_STEP)], env=host.env, cwd=APP, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert eventually(lambda: processes_of(host.namespace), timeout=30)
        os.kill(step.pid, signal.SIGKILL)
        step.wait(10)
        assert eventually(lambda: host.left() == ([], [], []), timeout=30), host.left()
    finally:
        if step.poll() is None:
            step.kill()
            step.wait(10)
