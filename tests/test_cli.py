"""featbit-shm status / dump (issue 3 item 4), run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from featbit_shm._core.dataset import DataSet
from featbit_shm._core.wire import parse_data_sync
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.writer import SnapshotWriter
from featbit_shm.testing import builders as b

STATUS_KEYS = {"state", "generation", "data_version", "flags", "segments", "leader_pid", "heartbeat_age_s", "snapshot_bytes"}


def run(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATBIT_")}
    env["FEATBIT_NAMESPACE"] = namespace
    return subprocess.run([sys.executable, "-m", "featbit_shm.cli", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.subprocess
def test_status_json_and_dump_of_a_published_store() -> None:
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    ds, _ = DataSet().apply(parse_data_sync(b.data_sync([b.flag("a", updated_at=5), b.flag("b")], [b.segment("s")])["data"]))
    with SnapshotWriter(StoreNames.for_env("", namespace)) as writer:
        gen = writer.publish(ds)
        done = run(namespace, "status", "--json")
        assert done.returncode == 0, done.stderr
        status: dict[str, Any] = json.loads(done.stdout)
        assert STATUS_KEYS <= set(status)
        assert (status["state"], status["generation"], status["flags"], status["segments"]) == ("OK", gen, 2, 1)
        assert status["data_version"] == ds.version
        assert status["leader_pid"] == os.getpid() and status["leader_alive"] is True
        assert 0 <= status["heartbeat_age_s"] < 60
        assert status["snapshot_bytes"] > 0
        dump = json.loads(run(namespace, "dump").stdout)
        assert set(dump["flags"]) == {"a", "b"} and set(dump["segments"]) == {"s"}
        one = json.loads(run(namespace, "dump", "--flag", "a").stdout)
        assert one["key"] == "a" and one["version"] == 5
        assert run(namespace, "dump", "--flag", "nope").returncode == 1
        text = run(namespace, "status")
        assert "generation" in text.stdout


@pytest.mark.subprocess
def test_status_of_a_missing_store_says_absent_and_fails() -> None:
    done = run(f"missing-{uuid.uuid4().hex[:8]}", "status", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["state"] == "absent"
    assert run(f"missing-{uuid.uuid4().hex[:8]}", "dump").returncode == 1


@pytest.mark.subprocess
def test_eval_evaluates_from_the_hosts_store() -> None:
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    ds, _ = DataSet().apply(
        parse_data_sync(
            b.data_sync([b.flag("f", variations=["red", "blue"], variation_type="string", rules=[b.rule([b.cond("country", "Equal", "fr")], b.serve(1))])])["data"]
        )
    )
    env_extra = {"FEATBIT_OFFLINE": "1"}
    with SnapshotWriter(StoreNames.for_env("", namespace)) as writer:
        writer.publish(ds)
        out = run_env(namespace, env_extra, "eval", "f", "--user", '{"key": "u1", "country": "fr"}')
        assert out.returncode == 0, out.stderr
        detail = json.loads(out.stdout)
        assert (detail["variation"], detail["kind"], detail["generation"]) == ("blue", "RuleMatch", 1)
        missing = run_env(namespace, env_extra, "eval", "nope", "--user", '{"key": "u1"}')
        assert missing.returncode == 1 and json.loads(missing.stdout)["reason"] == "flag not found"
        assert run_env(namespace, env_extra, "eval", "f", "--user", "not json").returncode == 2


def run_env(namespace: str, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATBIT_")}
    env.update(extra, FEATBIT_NAMESPACE=namespace)
    return subprocess.run([sys.executable, "-m", "featbit_shm.cli", *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.subprocess
def test_status_fails_when_no_sync_process_serves_the_store() -> None:
    # Issue 17: status said OK and exited 0 with no sync process alive.
    namespace = f"cli-{uuid.uuid4().hex[:8]}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    with SnapshotWriter(StoreNames.for_env("", namespace), getpid=lambda: dead.pid) as writer:
        writer.publish(DataSet())
        done = run(namespace, "status", "--json")
        status = json.loads(done.stdout)
        assert (status["state"], status["leader_alive"]) == ("OK", False)
        assert done.returncode == 1 and "no live sync process" in status["problem"]
