"""The README demo: real gunicorn, 4 workers, flags from shared memory, no FeatBit server.

1. Starts gunicorn with gunicorn_hooks/featbit.conf.py (4 sync workers) in
   offline mode: its sync process publishes examples/flags.json (a copy) to
   shared memory, and every worker evaluates from that one snapshot.
2. Asks the app repeatedly and prints which worker pid answered, from which
   snapshot generation, with which flag values.
3. Edits the flag file (turns welcome-banner off) and shows the change
   reaching every worker within about a second.
4. Prints ``featbit-shm status``, stops gunicorn, and checks that no process
   and no /dev/shm object is left behind.

Run it with ``scripts/demo`` (which makes the venv) or ``python scripts/demo.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(port: int, user: str = "alice") -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/?user={user}&country=us", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def sample(port: int, want_pids: int, deadline_s: float, predicate: Any = None) -> dict[int, dict[str, Any]]:
    """One answer per worker pid (bounded in requests and time)."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + deadline_s
    for _ in range(400):
        if time.monotonic() > deadline:
            break
        answer = ask(port)
        if predicate is None or predicate(answer):
            seen[answer["pid"]] = answer
        if len(seen) >= want_pids:
            break
        time.sleep(0.01)
    return seen


def show(title: str, answers: dict[int, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"  {'worker pid':>10}  {'generation':>10}  {'welcome-banner':>14}  {'checkout-theme':>14}  {'max-cart-items':>14}")
    for pid, a in sorted(answers.items()):
        f = a["flags"]
        print(f"  {pid:>10}  {a['generation']:>10}  {f['welcome-banner']!s:>14}  {f['checkout-theme']:>14}  {f['max-cart-items']:>14}")


def leftovers(tag_namespace: str) -> tuple[list[str], list[str]]:
    shm = [e for e in os.listdir("/dev/shm") if e.startswith("fbshm.")]
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    procs = [line for line in out.splitlines() if "featbit_shm.sync" in line and "grep" not in line]
    return shm, procs


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="featbit-shm-demo-"))
    flags_file = workdir / "flags.json"
    shutil.copy(ROOT / "examples" / "flags.json", flags_file)
    port = free_port()
    namespace = f"demo-{os.getpid()}"
    shm_before, _ = leftovers(namespace)
    env = dict(os.environ)
    env.update(
        FEATBIT_OFFLINE="1",
        FEATBIT_BOOTSTRAP_FILE=str(flags_file),
        FEATBIT_NAMESPACE=namespace,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=str(WORKERS),
        PYTHONPATH=str(ROOT / "examples") + os.pathsep + env.get("PYTHONPATH", ""),
        FEATBIT_LOG_LEVEL=env.get("FEATBIT_LOG_LEVEL", "WARNING"),
    )
    print(f"featbit-shm demo: gunicorn with {WORKERS} workers on 127.0.0.1:{port}, flags from {flags_file}")
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn_hooks" / "featbit.conf.py"), "--log-level", "warning", "demo_app:app"],
        env=env,
        cwd=ROOT,
    )
    ok = True
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ask(port)
                break
            except OSError:
                if time.monotonic() > deadline or gunicorn.poll() is not None:
                    print("gunicorn did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        before = sample(port, WORKERS, 15)
        show("Every worker answers from the same shared snapshot:", before)
        generations = {a["generation"] for a in before.values()}
        ok &= len(generations) == 1 and len(before) >= 2

        doc = json.loads(flags_file.read_text())
        banner = next(f for f in doc["data"]["featureFlags"] if f["key"] == "welcome-banner")
        banner["isEnabled"] = False  # serve the disabled variation (false) to everyone
        banner["updatedAt"] = "2025-06-01T00:00:00.000Z"
        tmp = flags_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, flags_file)
        changed = time.monotonic()
        print("\nEdited the flag file: welcome-banner is now disabled.")
        new_gen = max(generations) + 1
        after = sample(port, len(before), 15, lambda a: a["generation"] >= new_gen)
        elapsed = time.monotonic() - changed
        show(f"{len(after)} workers serve the change {elapsed:.2f} s after the edit:", after)
        ok &= len(after) == len(before) and all(a["flags"]["welcome-banner"] is False for a in after.values())

        status = subprocess.run(
            [sys.executable, "-m", "featbit_shm.cli", "status", "--json"], env=env, capture_output=True, text=True, timeout=30
        )
        info = json.loads(status.stdout)
        print(
            "\nfeatbit-shm status: "
            + ", ".join(f"{k}={info.get(k)}" for k in ("state", "generation", "flags", "segments", "leader_pid", "heartbeat_age_s", "snapshot_bytes"))
        )
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        try:
            gunicorn.wait(30)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
            ok = False
        shutil.rmtree(workdir, ignore_errors=True)
    time.sleep(0.5)
    shm_after, procs = leftovers(namespace)
    new_objects = sorted(set(shm_after) - set(shm_before))
    print(f"\nStopped gunicorn: {len(procs)} sync processes and {len(new_objects)} new /dev/shm objects left behind.")
    ok &= not new_objects and not procs
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
