"""A gunicorn fleet: featbit_shm against fb-python-sdk in every worker, one run, one machine.

    python benchmarks/bench_fleet.py [--quick] [--workers 1,4,8,16] [--flags 1000,10000]
                                     [--sdk shm|fbclient] [--out FILE] [--json FILE] [--keep]

For each flag count and worker count N, the same app (``fleet_app.py``: an
endpoint that evaluates 10 flags for a user, each evaluation recording one
analytics event) runs under two real gunicorns (sync workers) side by side,
each against its own FeatBit stand-in (``featbit_shm.testing.server``, in
this process, loopback) holding that many string flags with a targeting rule
and a 50/50 split:

* featbit_shm -- ``fleet_conf_shm.py``: the project's gunicorn hooks; the
  master starts the sync process in ``when_ready``, workers attach in
  ``post_fork`` and use ``featbit_shm.get()``;
* baseline -- ``fleet_conf_fbclient.py``: each worker creates
  ``fbclient.FBClient(Config(secret, event_url, streaming_url))`` in
  ``post_fork`` and stops it in ``worker_exit`` (which sends its events).

What is measured, in this order, on one server while the other is idle
(except the throughput):

1. cold start -- in each worker, from the entry of ``post_fork`` to the
   first evaluation of the probe flag that returns its current value
   (``time.monotonic()`` in the worker; both SDKs are imported by the master
   before the fork). p50 over the N workers gunicorn forks at start (all at
   once, on 2 cores) and, separately, over workers recycled one at a time
   (SIGTERM to a worker: gunicorn forks a replacement, as ``max_requests``
   does) while the others are idle;
2. the driver then waits until the server's processes are idle (fb-python-sdk
   keeps a worker busy for a while after its full sync), and counts the
   websockets open at the stand-in;
3. propagation -- the stand-in pushes patches of the probe flag, a new value
   each. Each worker's probe thread (the benchmark's; it sleeps outside this
   phase) reads the SDK's data version every 1 ms and evaluates the probe
   flag when it changed, recording when each value was first returned. A
   patch's latency runs from just before the stand-in sends it until the
   LAST worker returned its value; p50 and p99 over the patches (150; 100
   with --quick). The next patch goes out once every worker has the
   previous one and as long again has passed (at least 10 ms), so a slow
   fleet is not also measured on a backlog;
4. throughput -- ``fleet_load.py`` (8 client threads in one process, a new
   HTTP/1.1 connection per request as gunicorn's sync workers close them,
   bounded by a request count and a time limit) against ``/eval``; only 200
   answers with all 10 flags evaluated count. 6 s per SDK in 1 s slices that
   alternate between the two servers (2 x 1 s with --quick), so a change in
   the machine's load hits both alike. The load generator shares the 2
   cores with the server, the same way for both SDKs;
5. memory and threads, after the load: total memory is the PSS
   (``/proc/PID/smaps``) of the master, every worker and the sync process
   and its standby, without their mappings of ``/dev/shm/fbshm.*``, plus the
   bytes those objects hold in /dev/shm (snapshot, control block, registry,
   and the event rings: the pages they hold, st_blocks), mapped or not. Threads
   per worker: ``Threads:`` of ``/proc/PID/status`` minus the probe thread
   (the main thread included);
6. events -- gunicorn is stopped gracefully (SIGTERM to the master, wait for
   it to exit); sent is what each worker counted: its evaluations that
   returned a flag's value (one event each, in both SDKs); received is the
   number of flag evaluations in the payloads the stand-in accepted.

Targets (issue 8), at 8 workers and 10,000 flags: total memory <= 35% of the
baseline; cold start p50 <= 5 ms; propagation p99 <= 20 ms; throughput >=
the baseline; 0 events lost. The full run takes under 10 minutes on 2 cores
and writes ``benchmarks/results/bench_fleet.md``; ``--quick`` (8 workers,
1,000 and 10,000 flags, fewer recycles, patches and requests: a CI smoke
run) under 2 minutes and writes a file only with ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import bench_sync

from featbit_shm.shm.names import PREFIX, SHM_DIR, StoreNames
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

os.environ.setdefault("FEATBIT_SHM_WARM_START", "0")  # benchmark stores leave no warm-start file behind

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
T0 = 1_700_000_000_000
PROBE = "fleet-probe"
SDKS = ("shm", "fbclient")
LABEL = {"shm": "featbit_shm", "fbclient": "fb-python-sdk"}
CONNECTIONS = 8  # load generator client threads, the same for both


@dataclass(frozen=True)
class Plan:
    patches: int
    gap: float  # seconds at least between one patch seen everywhere and the next
    recycles: int
    load_requests: int
    load_seconds: float  # per SDK, in load_slices slices alternating with the other SDK's
    load_slices: int


FULL = Plan(patches=150, gap=0.010, recycles=5, load_requests=30_000, load_seconds=6.0, load_slices=6)
QUICK = Plan(patches=100, gap=0.010, recycles=3, load_requests=10_000, load_seconds=2.0, load_slices=2)


# ----------------------------------------------------------------------------- data


def wire_flags(n: int) -> list[dict[str, Any]]:
    """bench_sync's n string flags (a targeting rule and a 50/50 split), plus the probe flag."""
    return [*bench_sync.flags(n), probe_flag(0)]


def probe_flag(i: int) -> dict[str, Any]:
    return b.flag(PROBE, variations=[f"p{i}", "off"], variation_type="string", updated_at=T0 + i)


def endpoint_flags(n: int) -> list[str]:
    """The 10 flags /eval evaluates, spread over the key space."""
    return [f"flag-{i * (n // 10):05d}" for i in range(10)]


# ----------------------------------------------------------------------------- /proc


def read_text(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def parent_of(pid: int) -> int:
    stat = read_text(f"/proc/{pid}/stat")
    if not stat:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process under ``root`` (workers, the sync process, its standby)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parents.setdefault(parent_of(int(entry)), []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    return read_text(f"/proc/{pid}/cmdline").replace("\0", " ")


def alive(pid: int) -> bool:
    stat = read_text(f"/proc/{pid}/stat")
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def pss_kib(pid: int) -> tuple[int, int]:
    """(PSS of the process, PSS of its mappings of featbit_shm's /dev/shm objects), KiB."""
    total = shm = 0
    in_store = False
    for line in read_text(f"/proc/{pid}/smaps").splitlines():
        head = line.split(None, 1)[0] if line else ""
        if head and not head.endswith(":"):  # a mapping's header line: address range ... path
            parts = line.split(None, 5)
            in_store = len(parts) == 6 and parts[5].startswith(f"{SHM_DIR}/{PREFIX}")
        elif head == "Pss:":
            kib = int(line.split()[1])
            total += kib
            if in_store:
                shm += kib
    return total, shm


def threads(pid: int) -> int:
    for line in read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def store_bytes(tag: str) -> tuple[int, int]:
    """Bytes the store's /dev/shm objects hold (allocated blocks, mapped or
    not): (event rings, everything else: snapshot, control block, registry)."""
    rings = other = 0
    for entry in os.listdir(SHM_DIR):
        if entry.startswith(f"{PREFIX}{tag}."):
            with contextlib.suppress(OSError):
                size = os.stat(os.path.join(SHM_DIR, entry)).st_blocks * 512
                if entry[len(PREFIX) + len(tag) + 1 :].startswith("r"):
                    rings += size
                else:
                    other += size
    return rings, other


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pctl(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- one gunicorn run


@dataclass
class Result:
    sdk: str
    flags: int
    workers: int
    websockets: int = -1
    memory_mib: float = float("nan")
    memory_parts: dict[str, float] = field(default_factory=dict)
    threads_per_worker: float = float("nan")
    cold_start_ms: float = float("nan")  # p50, N workers forked at once
    cold_start_recycled_ms: float = float("nan")  # p50, one worker at a time
    cold_failures: int = 0
    cold_attach_ms: float = float("nan")  # p50 over every boot: post_fork entry -> SDK client built
    propagation_p50_ms: float = float("nan")
    propagation_p99_ms: float = float("nan")
    patches_seen: int = 0
    patches: int = 0
    req_per_s: float = float("nan")
    load: dict[str, Any] = field(default_factory=dict)
    events_sent: int = 0
    events_received: int = 0
    exit_code: int | None = None
    failed: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Fleet:
    """One gunicorn (N workers, one SDK) against one stand-in; cleans up after itself."""

    def __init__(
        self, sdk: str, n_flags: int, workers: int, server: FeatBitStandIn, plan: Plan, *, keep: bool = False
    ) -> None:
        self.keep = keep
        self.sdk = sdk
        self.n_flags = n_flags
        self.n = workers
        self.server = server
        self.plan = plan
        self.dir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
        self.namespace = f"fleet-{uuid.uuid4().hex[:10]}"
        self.tag = StoreNames.for_env(server.secret, self.namespace).tag
        self.port = free_port()
        self.known: set[int] = set()  # every pid seen under the master, killed at cleanup if left
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: BinaryIO | None = None  # gunicorn's output (and the SDKs' and sync process's logs)
        self.result = Result(sdk, n_flags, workers)
        self.phases: list[str] = []  # "name seconds" of each phase run, for the progress lines

    # lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "GUNICORN_", "FLEET_"))}
        env.update(
            FEATBIT_ENV_SECRET=self.server.secret,
            FEATBIT_STREAMING_URL=self.server.streaming_url,
            FEATBIT_EVENT_URL=self.server.event_url,
            FEATBIT_NAMESPACE=self.namespace,
            FEATBIT_LOG_LEVEL="WARNING",
            FEATBIT_SHM_RUNTIME_DIR=str(self.dir),
            FEATBIT_START_WAIT="30",
            FLEET_SDK=self.sdk,
            FLEET_DIR=str(self.dir),
            FLEET_FLAGS=",".join(endpoint_flags(self.n_flags)),
            FLEET_BIND=f"127.0.0.1:{self.port}",
            FLEET_WORKERS=str(self.n),
            FLEET_PROBE_EXPECT="p0",
            PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]),
        )
        conf = HERE / ("fleet_conf_shm.py" if self.sdk == "shm" else "fleet_conf_fbclient.py")
        self.log = open(self.dir / "gunicorn.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(conf), "fleet_app:app"],
            env=env,
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        # Look for the workers' boot reports first (a directory listing), and
        # only then in /proc: scanning /proc while workers boot would take
        # CPU from them on this 2-core machine.
        if not wait_until(
            lambda: self.boot_count() >= self.n and len(self.workers()) == self.n, timeout=180, interval=0.05
        ):
            raise RuntimeError(
                f"{self.sdk}: {self.n} workers did not boot; gunicorn.log ends with:\n{self.server_log()[-2000:]}"
            )

    def server_log(self) -> str:
        return read_text(str(self.dir / "gunicorn.log"))

    def tree(self) -> list[int]:
        assert self.proc is not None
        pids = descendants(self.proc.pid)
        self.known.update(pids)
        return pids

    def workers(self) -> list[int]:
        assert self.proc is not None
        return [p for p in self.tree() if parent_of(p) == self.proc.pid and "featbit_shm.sync" not in cmdline(p)]

    def sync_processes(self) -> list[int]:
        return [p for p in self.tree() if "featbit_shm.sync" in cmdline(p)]

    def boot_count(self) -> int:
        return sum(1 for _ in self.dir.glob("boot-*.json"))

    def boots(self) -> dict[int, dict[str, Any]]:
        found = {}
        for path in self.dir.glob("boot-*.json"):
            doc = json.loads(path.read_text())
            found[doc["pid"]] = doc
        return found

    def stop(self) -> None:
        """Graceful stop: SIGTERM to the master, wait for it to exit."""
        assert self.proc is not None
        self.tree()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.result.exit_code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.result.notes.append("gunicorn did not exit within 120 s of SIGTERM; killed")
            self.proc.kill()
            self.result.exit_code = self.proc.wait(10)
        if self.result.exit_code != 0:
            self.result.notes.append(f"gunicorn exited with status {self.result.exit_code}")

    def scan_log(self) -> None:
        """Note errors the server, the SDKs or the sync process logged."""
        errors = [
            line
            for line in self.server_log().splitlines()
            if "ERROR" in line or "Traceback" in line or "CRITICAL" in line
        ]
        if errors:
            self.result.notes.append(f"{len(errors)} error lines in the server log, first: {errors[0].strip()[:200]}")

    def cleanup(self) -> None:
        self.scan_log()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.known:
            if alive(pid) and ("gunicorn" in cmdline(pid) or "featbit_shm" in cmdline(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(f"{PREFIX}{self.tag}."):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(SHM_DIR, entry))
        if self.log is not None:
            self.log.close()
        if self.keep:
            print(f"kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # measurements ----------------------------------------------------------------

    def measure_cold_start(self) -> None:
        boots = self.boots()
        initial = [(d["t1"] - d["t0"]) * 1000 for d in boots.values()]
        recycled: list[float] = []
        for i in range(self.plan.recycles):
            self.settle()  # the previous boot is over: the replacement starts on an idle server
            victim = sorted(self.workers())[i % self.n]
            before = set(self.boots())
            if not self.replace_worker(victim):
                self.result.notes.append(f"recycle {i}: no replacement worker within 90 s")
                break
            for pid in set(self.boots()) - before:
                doc = self.boots()[pid]
                recycled.append((doc["t1"] - doc["t0"]) * 1000)
        everything = self.boots().values()
        self.result.cold_failures = sum(1 for d in everything if not d["ok"])
        if self.result.cold_failures:
            self.result.notes.append(f"{self.result.cold_failures} workers never evaluated the probe flag correctly")
        self.result.cold_attach_ms = median([(d["attached"] - d["t0"]) * 1000 for d in everything])
        self.result.cold_start_ms = median(initial)
        self.result.cold_start_recycled_ms = median(recycled)

    def replace_worker(self, victim: int) -> bool:
        """SIGTERM one worker; True once gunicorn's replacement has booted.
        The boot report is looked for first (a directory listing): scanning
        /proc meanwhile would take CPU from the booting worker."""
        count = self.boot_count()
        os.kill(victim, signal.SIGTERM)
        if not wait_until(lambda: self.boot_count() > count, timeout=90, interval=0.02):
            return False
        return wait_until(lambda: not alive(victim) and len(self.workers()) == self.n, timeout=30, interval=0.02)

    def measure_websockets(self) -> None:
        expected = 1 if self.sdk == "shm" else self.n
        wait_until(lambda: self.server.open_connections == expected, timeout=20, interval=0.05)
        time.sleep(0.3)
        self.result.websockets = self.server.open_connections

    def measure_propagation(self) -> None:
        pids = self.workers()
        on = self.dir / "probe-on"
        on.touch()
        fds = [os.open(self.dir / f"seen-{pid}", os.O_RDONLY) for pid in pids]
        try:

            def lowest() -> int:  # the patch number every worker has returned
                return min(int(struct.unpack("<q", os.pread(fd, 8, 0))[0]) for fd in fds)

            if not wait_until(lambda: lowest() >= 0, timeout=10):  # every probe thread is polling
                self.result.notes.append("some probe threads did not start")
            pushed: dict[int, float] = {}
            for i in range(1, self.plan.patches + 1):
                patch = probe_flag(i)
                pushed[i] = time.monotonic()
                self.server.update_flag(patch)
                if not wait_until(lambda i=i: lowest() >= i, timeout=10, interval=0.001):  # type: ignore[misc]
                    self.result.notes.append(f"patch {i} not seen by every worker within 10 s")
                # Let the fleet finish what the patch started (fb-python-sdk
                # sends change notices after applying it) before the next one.
                time.sleep(max(self.plan.gap, time.monotonic() - pushed[i]))
        finally:
            for fd in fds:
                os.close(fd)
        on.unlink()
        files = [self.dir / f"probe-{pid}.json" for pid in pids]
        if not wait_until(lambda: all(f.exists() for f in files), timeout=20, interval=0.02):
            self.result.notes.append("some workers wrote no probe report")
        per_worker = []
        for f in files:
            if f.exists():
                seen = json.loads(f.read_text())["seen"]
                per_worker.append(sorted((int(v[1:]), t) for v, t in seen.items() if v.startswith("p")))

        def first_seen(items: list[tuple[int, float]], version: int) -> float | None:
            # a worker serves patch i from the first time it returns p_i or a later value
            times = [t for v, t in items if v >= version]
            return min(times) if times else None

        latencies = []
        for i, t in pushed.items():
            times = [first_seen(items, i) for items in per_worker]
            if len(per_worker) == len(pids) and all(x is not None for x in times):
                latencies.append((max(x for x in times if x is not None) - t) * 1000)
        self.result.patches = len(pushed)
        self.result.patches_seen = len(latencies)
        self.result.propagation_p50_ms = median(latencies)
        self.result.propagation_p99_ms = pctl(latencies, 0.99)

    def load_slice(self, seconds: float, requests: int) -> None:
        """One slice of the throughput phase; slices of both SDKs alternate."""
        out = subprocess.run(
            [
                sys.executable,
                str(HERE / "fleet_load.py"),
                str(self.port),
                "--connections",
                str(CONNECTIONS),
                "--requests",
                str(requests),
                "--seconds",
                str(seconds),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=True,
        )
        load = json.loads(out.stdout.strip().splitlines()[-1])
        total = self.result.load
        for key in ("ok", "errors", "elapsed"):
            total[key] = total.get(key, 0) + load[key]
        total.setdefault("slices", []).append(load)
        self.result.req_per_s = total["ok"] / total["elapsed"]
        if load["errors"]:
            self.result.notes.append(f"load: {load['errors']} failed requests, e.g. {load['first_errors'][:1]}")

    def measure_memory_and_threads(self) -> None:
        assert self.proc is not None
        workers = self.workers()
        leader = [p for p in self.sync_processes() if parent_of(p) == self.proc.pid]
        standby = [p for p in self.sync_processes() if p not in leader]
        parts: dict[str, float] = {}
        for role, pids in (("master", [self.proc.pid]), ("workers", workers), ("sync", leader), ("standby", standby)):
            parts[role] = 0.0
            for pid in pids:
                total, shm = pss_kib(pid)
                parts[role] += (total - shm) / 1024
        rings, other = store_bytes(self.tag)
        parts["snapshot"] = other / 2**20
        parts["rings"] = rings / 2**20
        self.result.memory_parts = parts
        self.result.memory_mib = sum(parts.values())
        self.result.threads_per_worker = statistics.mean(threads(p) - 1 for p in workers)  # minus the probe thread

    def count_events(self) -> None:
        sent = 0
        for path in self.dir.glob("events-*.json"):
            sent += json.loads(path.read_text())["evaluations"]
        boots = len(self.boots())
        reports = len(list(self.dir.glob("events-*.json")))
        if reports != boots:
            self.result.notes.append(f"{boots - reports} workers wrote no event count (not a graceful exit)")

        def received() -> int:
            return sum(len(e.get("variations", [])) for e in self.server.events)

        last = -1
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # settled: equal to sent, or unchanged for 2 s
            now = received()
            if now >= sent or now == last:
                break
            last = now
            time.sleep(2.0)
        self.result.events_sent = sent
        self.result.events_received = received()

    def settle(self, timeout: float = 90.0) -> None:
        """Wait until the server's processes are idle (under 10% of one core
        over 0.5 s): fb-python-sdk keeps a worker busy for a while after its
        full sync (it sends a change notice per flag, O(flags²)), and such a
        backlog would be measured as propagation delay."""

        def cpu_seconds() -> float:
            total = 0
            for pid in [*self.tree(), self.proc.pid if self.proc else 0]:
                fields = read_text(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
                if len(fields) > 12:
                    total += int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
            return total / os.sysconf("SC_CLK_TCK")

        deadline = time.monotonic() + timeout
        before = cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = cpu_seconds()
            if now - before < 0.05:
                return
            before = now
        self.result.notes.append(f"the server was still busy after {timeout:.0f} s")

    def step(self, name: str, action: Callable[[], None]) -> None:
        """Run one phase unless an earlier one failed; a failure is noted in
        the result (and reported by the exit status), not raised."""
        if self.result.failed:
            return
        t = time.monotonic()
        try:
            action()
        except Exception as exc:  # noqa: BLE001
            self.result.failed = True
            self.result.notes.append(f"run failed in {name}: {exc!r}"[:600])
        self.phases.append(f"{name} {time.monotonic() - t:.1f}")


def run_pair(
    n_flags: int, n: int, sdks: list[str], flags: list[dict[str, Any]], plan: Plan, keep: bool
) -> list[Result]:
    """Both SDKs' servers for one (flags, workers) point, side by side.

    Each measurement runs on one server while the other is idle, except the
    throughput: its slices alternate between the two (A B B A A B ...) so a
    change in the machine's load from anything else hits both alike.
    """
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        fleets = []
        for sdk in sdks:
            server = stack.enter_context(FeatBitStandIn(flags=flags))
            fleets.append(Fleet(sdk, n_flags, n, server, plan, keep=keep))
        try:
            for f in fleets:  # one boots while the other is idle
                f.step("start", f.start)
                f.step("settle", f.settle)
            for name in ("measure_cold_start", "settle", "measure_websockets", "measure_propagation", "settle"):
                for f in fleets:
                    f.step(name, getattr(f, name))
            slices = plan.load_slices
            for i in range(slices):
                for f in fleets if i % 2 == 0 else fleets[::-1]:
                    f.step("load", lambda f=f: f.load_slice(plan.load_seconds / slices, plan.load_requests // slices))  # type: ignore[misc]
            for name in ("measure_memory_and_threads", "stop", "count_events"):
                for f in fleets:
                    f.step(name, getattr(f, name))
        finally:
            for f in fleets:
                print(f"    {f.sdk} {f.n_flags} x{f.n}: " + ", ".join(f.phases), file=sys.stderr, flush=True)
                f.cleanup()
    for f in fleets:
        f.result.seconds = time.monotonic() - started
    return [f.result for f in fleets]


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "unknown cpu"
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = []
    for dist in ("featbit-shm", "fb-python-sdk", "gunicorn", "websocket-client", "msgpack", "posix_ipc"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    date = subprocess.run(
        ["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True, check=False
    ).stdout.strip()
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "featbit_shm", "gunicorn_hooks"], capture_output=True, text=True, check=False
    )
    code = f"featbit-shm at {commit.stdout.strip() or '?'}" + (
        " with uncommitted changes" if dirty.stdout.strip() else ""
    )
    return (
        f"{date}; {code}; {os.cpu_count()} cpus ({cpu}), Linux {platform.release()}, {platform.machine()}; "
        f"Python {platform.python_version()}; {', '.join(versions)}; loopback only"
    )


def fmt(value: float, unit: str = "", digits: int = 1) -> str:
    if value != value:  # nan
        return "—"
    return f"{value:,.{digits}f}{unit}"


def ratio(a: float, b: float) -> str:
    if a != a or b != b or b == 0:
        return "—"
    x = a / b
    return f"{x:.2f}" if x >= 0.1 or x == 0 else f"1/{1 / x:,.0f}"


def table(results: list[Result]) -> list[str]:
    lines = [
        "| flags | workers | SDK | websockets | total memory | threads/worker | cold start p50: at start | recycled "
        "| propagation p50 | p99 | req/s | events received/sent |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r.flags, r.workers, r.sdk): r for r in results}
    for n_flags, n in sorted({(r.flags, r.workers) for r in results}):
        pair = [by.get((n_flags, n, sdk)) for sdk in SDKS]
        for r in pair:
            if r is None:
                continue
            lines.append(
                f"| {n_flags:,} | {n} | {LABEL[r.sdk]} | {r.websockets} | {fmt(r.memory_mib, ' MiB')} | "
                f"{fmt(r.threads_per_worker, '', 0)} | {fmt(r.cold_start_ms, ' ms', 2)} | {fmt(r.cold_start_recycled_ms, ' ms', 2)} | "
                f"{fmt(r.propagation_p50_ms, ' ms', 2)} | {fmt(r.propagation_p99_ms, ' ms', 2)} | {fmt(r.req_per_s, '', 0)} | "
                f"{r.events_received:,}/{r.events_sent:,} |"
            )
        shm, base = pair
        if shm is not None and base is not None:
            lost = (
                ""
                if shm.events_sent == 0 or base.events_sent == 0
                else (f"{shm.events_received / shm.events_sent:.3f} vs {base.events_received / base.events_sent:.3f}")
            )
            lines.append(
                f"| | | *ratio* | {shm.websockets}:{base.websockets} | {ratio(shm.memory_mib, base.memory_mib)} | "
                f"{shm.threads_per_worker:.0f}:{base.threads_per_worker:.0f} | {ratio(shm.cold_start_ms, base.cold_start_ms)} | "
                f"{ratio(shm.cold_start_recycled_ms, base.cold_start_recycled_ms)} | "
                f"{ratio(shm.propagation_p50_ms, base.propagation_p50_ms)} | {ratio(shm.propagation_p99_ms, base.propagation_p99_ms)} | "
                f"{ratio(shm.req_per_s, base.req_per_s)} | {lost} |"
            )
    return lines


def memory_table(results: list[Result]) -> list[str]:
    lines = [
        "| flags | workers | SDK | master | workers (sum) | sync process | standby | snapshot in /dev/shm "
        "| event rings in /dev/shm | total |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r.flags, r.workers, SDKS.index(r.sdk))):
        p = r.memory_parts
        if not p:
            continue
        cells = " | ".join(
            f"{p[k]:.1f}" if p[k] else "—" for k in ("master", "workers", "sync", "standby", "snapshot", "rings")
        )
        lines.append(f"| {r.flags:,} | {r.workers} | {LABEL[r.sdk]} | {cells} | {r.memory_mib:.1f} |")
    return lines


def targets(results: list[Result]) -> list[str]:
    by = {(r.flags, r.workers, r.sdk): r for r in results}
    shm, base = by.get((10_000, 8, "shm")), by.get((10_000, 8, "fbclient"))
    if shm is None or base is None:
        return ["targets are set at 8 workers and 10,000 flags: not run"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return [
        f"target total memory <= 35% of the baseline (8 workers, 10k flags): "
        f"{shm.memory_mib / base.memory_mib:.0%}: {verdict(shm.memory_mib <= 0.35 * base.memory_mib)}",
        f"target cold start p50 <= 5 ms: at start {shm.cold_start_ms:.2f} ms: {verdict(shm.cold_start_ms <= 5)}; "
        f"recycled {shm.cold_start_recycled_ms:.2f} ms: {verdict(shm.cold_start_recycled_ms <= 5)}",
        f"target propagation p99 <= 20 ms: {shm.propagation_p99_ms:.2f} ms "
        f"({shm.patches_seen}/{shm.patches} patches seen by every worker): "
        f"{verdict(shm.propagation_p99_ms <= 20 and shm.patches_seen == shm.patches)}",
        f"target throughput >= the baseline: {shm.req_per_s:,.0f} against {base.req_per_s:,.0f} req/s: "
        f"{verdict(shm.req_per_s >= base.req_per_s)}",
        f"target 0 events lost: {shm.events_sent - shm.events_received:,} lost of {shm.events_sent:,}: "
        f"{verdict(shm.events_received == shm.events_sent and shm.events_sent > 0)}",
    ]


def report(results: list[Result], plan: Plan, quick: bool, wall: float) -> str:
    out = [
        f"# bench_fleet — {time.strftime('%Y-%m-%d')} — Python {platform.python_version()}, {os.cpu_count()} cpus, loopback"
        + (" (--quick)" if quick else ""),
        "",
        f"Machine: {machine()}.",
        "",
        "gunicorn sync workers, the same app and load for both, against the FeatBit stand-in on loopback. "
        "Cold start: post_fork entry to the first evaluation returning the flag's current value, in the worker "
        "(at start: the N workers forked at once; recycled: a worker replaced while the others are idle, "
        f"{plan.recycles} times). Propagation: stand-in push to the moment the LAST worker returns the new value "
        f"(each worker polls its SDK's data version every 1 ms), {plan.patches} patches, each sent once every worker "
        "had the previous one. req/s: 8 client threads, a new connection per request, /eval evaluates 10 flags "
        "(10 events), 1 s slices alternating between the two servers. Memory: PSS of master + workers + sync process + standby, after the load, with featbit_shm's "
        "/dev/shm objects at their allocated size. Events: after a graceful stop. Details: the docstring of "
        "benchmarks/bench_fleet.py. Ratio = featbit_shm ÷ fb-python-sdk (websockets and threads as "
        "featbit_shm:baseline; events as received/sent of each).",
        "",
        *table(results),
        "",
        "Total memory, MiB: PSS of each process without its /dev/shm mappings, plus the bytes featbit_shm's "
        "/dev/shm objects hold (allocated pages; an event ring of FEATBIT_SHM_RING_BYTES = 16 MiB capacity "
        "holds only the pages of events not yet sent, 64 KiB at a time: one ring per worker and spares):",
        "",
        *memory_table(results),
        "",
        *targets(results),
    ]
    notes = [f"* {LABEL[r.sdk]}, {r.flags:,} flags, {r.workers} workers: {n}" for r in results for n in r.notes]
    if notes:
        out += ["", "Notes:", *notes]
    out += ["", f"wall time {wall:.0f} s"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="8 workers, 1,000 and 10,000 flags, fewer patches and requests"
    )
    parser.add_argument("--workers", help="comma-separated worker counts (default 1,4,8,16; --quick 8)")
    parser.add_argument("--flags", help="comma-separated flag counts (default 1000,10000)")
    parser.add_argument(
        "--out", help="write the report here (default, full run only: benchmarks/results/bench_fleet.md)"
    )
    parser.add_argument("--json", help="write every figure as JSON here")
    parser.add_argument("--sdk", help="run only this SDK: shm or fbclient (default both)")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (worker reports, gunicorn.log)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    worker_counts = [int(x) for x in (args.workers or ("8" if args.quick else "1,4,8,16")).split(",")]
    flag_counts = [int(x) for x in (args.flags or "1000,10000").split(",")]
    started = time.monotonic()
    results: list[Result] = []
    for n_flags in flag_counts:
        flags = wire_flags(n_flags)
        for n in worker_counts:
            pair = run_pair(n_flags, n, [args.sdk] if args.sdk else list(SDKS), flags, plan, args.keep)
            results += pair
            print(f"... {n_flags:,} flags, {n} workers: {pair[0].seconds:.1f} s", file=sys.stderr, flush=True)
    text = report(results, plan, args.quick, time.monotonic() - started)
    print(text, end="")
    out = args.out or (None if args.quick else str(HERE / "results" / "bench_fleet.md"))
    if out:
        Path(out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
