"""The chaos soak: real gunicorn, the FeatBit stand-in, a load generator, faults at random.

:func:`run_soak` runs one soak and returns its report (a JSON-able dict);
``test_soak.py`` writes the report and asserts on it. The run:

1. the stand-in holds 5,000 flags (:mod:`tests.soak.world`); gunicorn starts
   with 8 gthread workers, preload and ``max_requests`` recycling, with the
   shipped featbit_shm hooks; the load generator (:mod:`tests.soak.load`, a
   separate process) evaluates 10 flags per request at a bounded rate;
2. for ``minutes``, two threads follow a schedule drawn from ``seed``: the
   *data* thread changes flags (patches at up to 50/s, archives and
   restores, segment changes, full resyncs); the *fault* thread breaks things
   (websocket drops, close 1000 and 1011, 2 s of silence, SIGKILL of the
   sync leader or its standby, SIGKILL of workers, SIGHUP, 10 s of insight
   500s, 10 s of a slow ``/dev/shm`` writer). A monitor samples the open
   websockets, the store's objects and the events received;
3. every fault ends; the driver times how long until every worker serves
   the server's final data version, then checks each worker's values for
   every flag against an oracle;
4. gunicorn gets SIGTERM; after it the driver counts processes and
   ``/dev/shm`` objects left, and balances events: served, received, counted.

Every loop is bounded in count and time; every process and object is
removed in ``finally`` whatever happened.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featbit_shm import Config, FBClient
from featbit_shm.shm.control import ControlBlock, SyncState
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.objects import remove_objects
from featbit_shm.shm.reader import find_control
from featbit_shm.testing.server import FeatBitStandIn

from ..app_servers import free_port, new_namespace
from ..sync_helpers import eventually, processes_of
from .world import DEFAULT, PROBE_USERS, World, digest, flag_key, parse_value

log = logging.getLogger("soak")

ROOT = Path(__file__).resolve().parents[2]
FLAGS = 5_000
WORKERS = 8
LOAD_RATE = 120.0  # requests per second, in total (10 evaluations each)
LOAD_THREADS = 4
# gunicorn recycling: each worker after 2,000..6,000 requests (about 130..400 s
# at this load), so some recycle early and some live long enough to show a leak.
MAX_REQUESTS = 2_000
MAX_REQUESTS_JITTER = 4_000
CONVERGE_WITHIN_S = 2.0
RSS_DRIFT_MAX = 0.10
# A worker's first minute is warm-up: its private memory grows by about 15%
# while it compiles flags, fills caches and pymalloc arenas, then stays flat
# (measured: 5 minutes without recycling, 120 req/s). A worker observed for
# another minute after that is long-lived; its drift is the median of its
# last 10 s against the median of the 10 s after warm-up.
WARMUP_S = 60.0
WINDOW_S_RSS = 10.0
LONG_LIVED_S = 60.0
RING_BYTES = 16 << 20  # FEATBIT_SHM_RING_BYTES default: each worker's ring, reserved when made

FAULTS = (
    "ws_drop",
    "close_1000",
    "close_1011",
    "silence_2s",
    "sync_kill",
    "standby_kill",
    "worker_kill",
    "sighup",
    "insight_500_10s",
    "slow_writer_10s",
)
# Relative frequencies after every kind has occurred once.
WEIGHTS = {
    "ws_drop": 3,
    "close_1000": 2,
    "close_1011": 2,
    "silence_2s": 2,
    "sync_kill": 4,
    "standby_kill": 1,
    "worker_kill": 4,
    "sighup": 1,
    "insight_500_10s": 1,
    "slow_writer_10s": 1,
}
WINDOW_S = {"silence_2s": 2.0, "insight_500_10s": 10.0, "slow_writer_10s": 10.0}


# ---------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the chaos starts
    kind: str
    arg: float = 0.0


def schedule(seed: int, seconds: float) -> tuple[list[Step], list[Step]]:
    """(data steps, fault steps) for a run of ``seconds``, the same for the same seed."""
    rng = random.Random(seed)
    data: list[Step] = []
    t = 0.0
    while t < seconds:  # patch rate changes every 5 s: quiet, steady, or bursts up to 50/s
        rate = rng.choice((0, 2, 5, 10, 25, 50))
        span = min(5.0, seconds - t)
        data.extend(Step(t + rng.random() * span, "patch") for _ in range(int(rate * span)))
        t += 5.0
    data.extend(Step(rng.random() * seconds, "segment") for _ in range(max(2, int(seconds / 3))))
    data.extend(Step(rng.random() * seconds, "full") for _ in range(max(2, int(seconds / 30))))
    data.sort(key=lambda s: s.at)

    faults: list[Step] = []
    kinds = list(FAULTS)
    rng.shuffle(kinds)  # every kind at least once, in a seeded order
    gap = min(6.0, seconds * 0.8 / len(FAULTS))
    # SIGHUP replaces every worker: beyond the first pass, at most one per
    # 150 s and only in the first 40% of the run, so the workers of the last
    # reload live long enough for the memory check.
    hups = max(1, int(seconds // 150))
    t = 2.0
    while t < seconds - 1.0:
        if kinds:
            kind = kinds.pop()
        else:
            allowed = {k: w for k, w in WEIGHTS.items() if k != "sighup" or (hups > 0 and t < 0.4 * seconds)}
            kind = rng.choices(list(allowed), weights=list(allowed.values()))[0]
        hups -= kind == "sighup"
        arg = round(rng.uniform(0.2, 1.0), 2) if kind == "slow_writer_10s" else 0.0
        faults.append(Step(t, kind, arg))
        t += rng.uniform(0.5, 1.5) * gap
    return data, faults


# ---------------------------------------------------------------------------- processes


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def started_at(pid: int) -> int:
    """Start time of a process (clock ticks since boot)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def is_sync(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"featbit_shm.sync" in fh.read()
    except OSError:
        return False


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------- the run


@dataclass
class Soak:
    seed: int
    minutes: float
    workdir: Path
    server: FeatBitStandIn = field(init=False)
    world: World = field(init=False)
    log: list[dict[str, Any]] = field(default_factory=list)  # every action, with times
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seconds = self.minutes * 60.0
        self.namespace = new_namespace("soak")
        self.port = free_port()
        self.delay_file = self.workdir / "publish-delay"
        self.delay_file.write_text("")
        self.load_out = self.workdir / "load.jsonl"
        self.stop = threading.Event()
        self.events: Counter[tuple[str, str]] = Counter()
        self.events_total = 0
        self.monitor: dict[str, Any] = {"max_open_websockets": 0, "samples_with_other_than_one_websocket": 0, "samples": 0, "max_store_objects": 0, "max_sync_processes": 0, "zero_sync_process_samples": 0}
        self.heals: list[dict[str, Any]] = []
        self.lag_ms: list[int] = []
        self.slow_until = 0.0
        self.standby_restores: list[dict[str, Any]] = []
        self.worker_kills: list[float] = []
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.load: subprocess.Popen[bytes] | None = None
        self.errors: list[str] = []  # exceptions in the driver's own threads
        self.load_started = self.load_seconds = 0.0
        self.snapshot_bytes = 0

    # ------------------------------------------------------------------ helpers

    @property
    def names(self) -> StoreNames:
        return StoreNames.for_env(self.server.secret, self.namespace)

    def record(self, kind: str, **details: Any) -> None:
        self.log.append({"t": round(time.monotonic() - self.t0, 3), "kind": kind, **details})

    def workers(self) -> list[int]:
        assert self.gunicorn is not None
        return [p for p in children(self.gunicorn.pid) if not is_sync(p) and not is_zombie(p)]

    def sync_pids(self) -> list[int]:
        return [p for p in processes_of(self.namespace) if not is_zombie(p)]

    def control(self) -> ControlBlock | None:
        block, _refused = find_control(self.names)
        return block

    def get(self, path: str, timeout: float = 10.0) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            if resp.status != 200:
                raise OSError(f"status {resp.status}: {body}")
            return body  # type: ignore[no-any-return]
        finally:
            conn.close()

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATBIT_", "GUNICORN_", "SOAK_"))}
        env.update(
            FEATBIT_ENV_SECRET=self.server.secret,
            FEATBIT_STREAMING_URL=self.server.streaming_url,
            FEATBIT_EVENT_URL=self.server.event_url,
            FEATBIT_NAMESPACE=self.namespace,
            FEATBIT_LOG_LEVEL="WARNING",
            FEATBIT_START_WAIT="30",
            FEATBIT_SHM_FAULT_PUBLISH_DELAY=str(self.delay_file),
            SOAK_BIND=f"127.0.0.1:{self.port}",
            SOAK_MAX_REQUESTS=str(MAX_REQUESTS),
            SOAK_MAX_REQUESTS_JITTER=str(MAX_REQUESTS_JITTER),
            PYTHONPATH=str(ROOT),
        )
        self.gunicorn_log = open(self.workdir / "gunicorn.log", "wb")
        command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "tests" / "soak" / "gunicorn.conf.py"), "--log-level", "warning", "tests.soak.soak_app:app"]
        self.gunicorn = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.gunicorn_log)

        def up() -> bool:
            try:
                return bool(self.get("/final"))
            except (OSError, ValueError, http.client.HTTPException):
                return False

        assert eventually(up, timeout=90, interval=0.1), "gunicorn did not start"
        assert eventually(lambda: len(self.workers()) == WORKERS and len(self.sync_pids()) == 2, timeout=60, interval=0.1), "workers or sync processes missing"
        self.block = self.control()  # stays mapped after the store is unlinked: the final counters
        assert self.block is not None
        load_env = {k: v for k, v in env.items() if not k.startswith("FEATBIT_")}
        self.load_started = time.monotonic()
        self.load = subprocess.Popen(
            [sys.executable, "-m", "tests.soak.load", "--port", str(self.port), "--seed", str(self.seed), "--rate", str(LOAD_RATE),
             "--threads", str(LOAD_THREADS), "--flags", str(FLAGS), "--max-seconds", str(self.seconds + 300), "--out", str(self.load_out)],
            env=load_env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        )

    # ------------------------------------------------------------------ threads

    def guarded(self, target: Any) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception as exc:
                log.exception("soak thread %s failed", getattr(target, "__name__", target))
                self.errors.append(f"{getattr(target, '__name__', target)}: {exc!r}")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def wait_until(self, at: float) -> bool:
        """Sleep until ``at`` (seconds after t0); False when the run is stopping."""
        delay = self.t0 + at - time.monotonic()
        return not self.stop.wait(delay) if delay > 0 else not self.stop.is_set()

    def data_thread(self, steps: list[Step]) -> None:
        for step in steps:
            if not self.wait_until(step.at):
                return
            now_ms = self.server.now_ms()
            if step.kind == "patch":
                self.server.update_flag(self.world.patch(now_ms))
            elif step.kind == "segment":
                self.server.update_segment(self.world.segment_change(now_ms))
            elif step.kind == "full":
                self.world.full_resync(now_ms)
                self.server.set_data(list(self.world.flags.values()), list(self.world.segments.values()), push=True)
                self.record("full_resync")
            self.last_change = time.monotonic()

    def fault_thread(self, steps: list[Step]) -> None:
        for step in steps:
            if not self.wait_until(step.at):
                return
            getattr(self, "fault_" + step.kind)(step.arg)

    def monitor_thread(self) -> None:
        m = self.monitor
        while not self.stop.wait(0.25):
            self.take_events()
            open_ws = self.server.open_connections
            m["samples"] += 1
            m["max_open_websockets"] = max(m["max_open_websockets"], open_ws)
            m["samples_with_other_than_one_websocket"] += open_ws != 1
            m["max_store_objects"] = max(m["max_store_objects"], len(self.names.all_objects()))
            syncs = len(self.sync_pids())
            m["max_sync_processes"] = max(m["max_sync_processes"], syncs)
            m["zero_sync_process_samples"] += syncs == 0
            pointer = self.block.read_pointer()
            if pointer is not None:  # how far the published data is behind the server, in ms of versions
                self.lag_ms.append(max(0, self.world.version - pointer.data_version))

    def take_events(self) -> None:
        for event in self.server.take_events():
            user = (event.get("user") or {}).get("keyId", "")
            for variation in event.get("variations") or ():
                self.events[(user, variation.get("featureFlagKey", ""))] += 1
                self.events_total += 1

    # ------------------------------------------------------------------ faults

    def window(self, kind: str, seconds: float, **details: Any) -> None:
        self.record(kind, **details)
        self.fault_end = max(self.fault_end, time.monotonic() + seconds)

    def fault_ws_drop(self, _arg: float) -> None:
        self.window("ws_drop", 0, connections=self.server.drop_connections())

    def fault_close_1000(self, _arg: float) -> None:
        self.window("close_1000", 0, connections=self.server.close_connections(1000))

    def fault_close_1011(self, _arg: float) -> None:
        self.window("close_1011", 0, connections=self.server.close_connections(1011))

    def fault_silence_2s(self, _arg: float) -> None:
        self.server.silence(2.0)
        self.window("silence_2s", 2.0)

    def fault_insight_500_10s(self, _arg: float) -> None:
        self.server.fail_insight_for(10.0, 500)
        self.window("insight_500_10s", 10.0)

    def fault_slow_writer_10s(self, delay: float) -> None:
        self.delay_file.write_text(str(delay))
        self.window("slow_writer_10s", 10.0, delay_s=delay)
        self.slow_until = until = time.monotonic() + 10.0
        timer = threading.Timer(10.0, self.end_slow_writer, args=(until,))
        timer.daemon = True
        timer.start()

    def end_slow_writer(self, until: float) -> None:
        if self.slow_until == until:  # a later slow-writer window is not cut short
            self.delay_file.write_text("")

    def fault_worker_kill(self, _arg: float) -> None:
        workers = self.workers()
        if not workers:
            self.record("worker_kill", pid=None)
            return
        # Any worker but the two that have run longest: the memory check needs
        # long-lived workers (they still go with max_requests and SIGHUP).
        by_age = sorted(workers, key=started_at)
        pid = random.Random(f"{self.seed}-{len(self.log)}").choice(by_age[2:] or by_age)
        self.worker_kills.append(time.monotonic())
        kill(pid)
        self.window("worker_kill", 0, pid=pid)

    def fault_sighup(self, _arg: float) -> None:
        assert self.gunicorn is not None
        self.gunicorn.send_signal(signal.SIGHUP)
        self.window("sighup", 0)

    def fault_standby_kill(self, _arg: float) -> None:
        block = self.control()
        leader = block.leader_pid if block is not None else 0
        standbys = [p for p in self.sync_pids() if p != leader]
        if not standbys:
            self.record("standby_kill", pid=None, note="no standby running")
            return
        kill(standbys[0])
        killed = time.monotonic()
        self.window("standby_kill", 0, pid=standbys[0])
        # Is a standby restored (the leader keeps one ready, DESIGN "Processes and roles")?
        back = eventually(lambda: [p for p in self.sync_pids() if p not in (leader, standbys[0])], timeout=10, interval=0.02)
        self.standby_restores.append({"pid": standbys[0], "restored_s": round(time.monotonic() - killed, 3) if back else None})

    def fault_sync_kill(self, _arg: float) -> None:
        """SIGKILL the leader; time until a new leader has synced (state OK)."""
        # Every kill meets a leader with its standby (a double failure, both
        # killed at once, is not what this fault is about).
        standby_ready = bool(eventually(lambda: len(self.sync_pids()) >= 2, timeout=10, interval=0.05))
        block = self.control()
        if block is None or not block.leader_pid:
            self.record("sync_kill", pid=None)
            return
        leader = block.leader_pid
        kill(leader)
        killed = time.monotonic()
        self.window("sync_kill", 0, pid=leader, standby_was_running=standby_ready)

        def healed() -> bool:
            b = self.control()
            return b is not None and b.leader_pid not in (0, leader) and b.state is SyncState.OK and not is_zombie(b.leader_pid)

        ok = eventually(healed, timeout=30, interval=0.005)
        heal = round(time.monotonic() - killed, 4) if ok else None
        self.heals.append({"pid": leader, "heal_s": heal, "standby_was_running": standby_ready})
        self.fault_end = max(self.fault_end, time.monotonic())

    # ------------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        self.t0 = time.monotonic()
        self.fault_end = self.t0
        self.last_change = self.t0
        data, faults = schedule(self.seed, self.seconds)
        threads = [self.guarded(lambda: self.data_thread(data)), self.guarded(lambda: self.fault_thread(faults)), self.guarded(self.monitor_thread)]
        deadline = self.chaos_end = self.t0 + self.seconds
        while time.monotonic() < deadline and not self.errors:
            time.sleep(0.2)
        # Every fault ends now: the driver waits for the two threads (a heal
        # measurement may still run), cuts short any window still open.
        for thread in threads[:2]:
            thread.join(60)
        self.stop.set()
        threads[2].join(10)
        self.delay_file.write_text("")
        self.server.fail_insight_for(0)
        now = time.monotonic()
        if self.fault_end > now:
            # silence ends by itself (<= 2 s); windows cut short end now
            self.fault_end = now if not any(e["kind"] == "silence_2s" and self.t0 + e["t"] + 2.0 > now for e in self.log) else self.fault_end
        last_fault = max(self.fault_end, self.last_change)
        kinds = [e["kind"] for e in self.log if e["kind"] in FAULTS]
        self.last_fault_kind = "data change" if self.last_change >= self.fault_end else (kinds[-1] if kinds else None)
        report: dict[str, Any] = {"faults": dict(Counter(e["kind"] for e in self.log if e["kind"] in FAULTS)), "data_changes": dict(self.world.counts)}
        report["convergence"] = self.converge(last_fault)
        report["websockets"] = {
            "open_at_end": self.server.open_connections,
            "connections_accepted": self.server.connections_accepted,
            "reconnects_counter": self.block.counter("reconnects"),
            **{k: self.monitor[k] for k in ("max_open_websockets", "samples_with_other_than_one_websocket", "samples")},
        }
        report["final_state"] = self.check_final_values()
        self.stop_load()
        from featbit_shm.cli import read_status

        status = read_status(self.names)
        self.snapshot_bytes = int(status.get("snapshot_bytes") or 0)
        report["status_before_stop"] = {k: status.get(k) for k in ("state", "generation", "data_version", "flags", "segments", "snapshot_bytes", "publishes", "publish_errors", "reconnects", "events_sent", "events_dropped", "events_failed")}
        report["store_during_run"] = {k: self.monitor[k] for k in ("max_store_objects", "max_sync_processes", "zero_sync_process_samples")}
        report["publish_lag_ms"] = {"p50": percentile(self.lag_ms, 0.5), "p99": percentile(self.lag_ms, 0.99), "max": max(self.lag_ms, default=0), "samples": len(self.lag_ms)}
        report["graceful_stop"] = self.graceful_stop()
        report.update(self.check_requests())
        report["events"] = self.check_events(report.pop("_served"), report.pop("_unanswered"))
        report["heal_after_sync_kill"] = {
            "kills": len(self.heals),
            "healed": sum(h["heal_s"] is not None for h in self.heals),
            "max_s": max((h["heal_s"] for h in self.heals if h["heal_s"] is not None), default=None),
            "p99_s": percentile([h["heal_s"] for h in self.heals if h["heal_s"] is not None], 0.99) if any(h["heal_s"] is not None for h in self.heals) else None,
            "median_s": statistics.median([h["heal_s"] for h in self.heals if h["heal_s"] is not None]) if any(h["heal_s"] is not None for h in self.heals) else None,
            "each_s": [h["heal_s"] for h in self.heals],
        }
        report["standby_after_standby_kill"] = {
            "kills": len(self.standby_restores),
            "restored": sum(r["restored_s"] is not None for r in self.standby_restores),
            "each_s": [r["restored_s"] for r in self.standby_restores],
        }
        report["driver_errors"] = self.errors
        report["fault_log"] = [e for e in self.log if e["kind"] in FAULTS or e["kind"] == "full_resync"]
        return report

    # ------------------------------------------------------------------ after the chaos

    def converge(self, last_fault: float) -> dict[str, Any]:
        """Time from the last fault until every live worker serves the
        server's final data version.

        Each round asks every worker at once (8 requests in parallel) and
        reads the control block; a worker counts from the first answer at the
        final version. ``converged_s`` is when the last worker was seen there
        (an upper bound: it may have got there between two rounds);
        ``last_stale_s`` is when a worker was last seen behind (a lower bound).
        """
        target = self.world.version
        at_target: dict[str, float] = {}
        last_stale = last_fault
        stale_after: list[str] = []
        done_at = sync_at = None
        rounds = 0
        deadline = time.monotonic() + 30
        block = self.control()
        while time.monotonic() < deadline and rounds < 2000:
            rounds += 1
            if sync_at is None and block is not None and block.read_pointer() is not None and block.read_pointer().data_version == target:  # type: ignore[union-attr]
                sync_at = time.monotonic()
            for a in self.parallel_final(WORKERS):
                if a["s"][2] == target:
                    at_target.setdefault(a["w"], time.monotonic())
                elif a["w"] in at_target:
                    stale_after.append(a["w"])  # went back: never expected
                else:
                    last_stale = max(last_stale, time.monotonic())
            workers = self.workers()
            live = {w for w in at_target if int(w.split("-")[0]) in workers}
            if len(live) >= WORKERS and len(workers) == WORKERS:
                done_at = time.monotonic()
                break
        return {
            "target_data_version": target,
            "converged_s": round(done_at - last_fault, 4) if done_at is not None else None,
            "last_stale_s": round(last_stale - last_fault, 4),
            "sync_process_at_target_s": round(sync_at - last_fault, 4) if sync_at is not None else None,
            "each_worker_s": sorted(round(t - last_fault, 3) for t in at_target.values()),
            "last_fault": self.last_fault_kind,
            "workers_at_target": len(at_target),
            "rounds": rounds,
            "stale_after_target": len(stale_after),
            "limit_s": CONVERGE_WITHIN_S,
        }

    def parallel_final(self, n: int, path: str = "/final?quick=1") -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        lock = threading.Lock()

        def one() -> None:
            try:
                a = self.get(path, timeout=10)
            except (OSError, ValueError, http.client.HTTPException):
                return
            with lock:
                answers.append(a)

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        return answers

    def check_final_values(self) -> dict[str, Any]:
        """Every live worker's value of every flag, for each probe user, equals
        the oracle's: an offline client loaded with the server's final data."""
        oracle = FBClient(Config(offline=True))
        assert oracle.initialize_from_external_json(json.dumps(self.world.document()))
        expected = []
        for user in PROBE_USERS:
            states = oracle.get_all_latest_flag_variations(user)
            expected.append(digest((key, states.get_variation(key)) for key in states.keys()))
        seen: dict[str, bool] = {}
        for _ in range(200):
            for a in self.parallel_final(4, "/final"):
                seen[a["w"]] = a["d"] == expected and a["s"][2] == self.world.version
            live = {w for w in seen if int(w.split("-")[0]) in self.workers()}
            if len(live) >= WORKERS:
                break
        return {"workers_checked": len(seen), "workers_matching_oracle": sum(seen.values()), "flags_per_worker": FLAGS * len(PROBE_USERS)}

    def stop_load(self) -> None:
        if self.load is not None and self.load.poll() is None:
            self.load_seconds = time.monotonic() - self.load_started
            self.load.send_signal(signal.SIGTERM)
            try:
                self.load.wait(30)
            except subprocess.TimeoutExpired:
                self.load.kill()
                self.load.wait(10)

    def graceful_stop(self) -> dict[str, Any]:
        assert self.gunicorn is not None
        pids_before = sorted(set(processes_of(self.namespace, sync_only=False)))
        stopped = time.monotonic()
        self.gunicorn.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.gunicorn.wait(90)
        except subprocess.TimeoutExpired:
            code = None
        eventually(lambda: not processes_of(self.namespace, sync_only=False), timeout=30, interval=0.05)
        left = processes_of(self.namespace, sync_only=False)
        gone = time.monotonic() - stopped
        eventually(lambda: not self.names.all_objects(), timeout=10, interval=0.05)
        objects = self.names.all_objects()
        # The last events arrive with the sync process's final drain.
        self.take_events()
        return {
            "gunicorn_exit_code": code,
            "processes_before_stop": len(pids_before),
            "processes_after_stop": len(left),
            "shm_objects_after_stop": len(objects),
            "shm_objects_left": objects,
            "all_gone_s": round(gone, 3),
        }

    def check_requests(self) -> dict[str, Any]:
        """Every response: values published and consistent with its snapshot,
        per-worker monotonic generation and data version, RSS; failures."""
        history = self.world.history
        failed: list[dict[str, Any]] = []
        reset_by_kill = 0
        total = ok = 0
        not_published = inconsistent = default_not_archived = 0
        examples: list[Any] = []
        samples: dict[str, list[tuple[int, int, int]]] = {}
        rss: dict[str, list[tuple[float, dict[str, int]]]] = {}
        served: set[tuple[str, str]] = set()
        unanswered: set[str] = set()
        kills = sorted(self.worker_kills)
        with open(self.load_out) as fh:
            for line in fh:
                r = json.loads(line)
                total += 1
                if "e" in r or r.get("st") != 200 or "r" not in r.get("b", {}):
                    unanswered.add(r["i"])
                    if "e" in r and any(r["t0"] <= k + 0.1 and r["t1"] >= k for k in kills):
                        reset_by_kill += 1
                    else:
                        failed.append({k: r.get(k) for k in ("i", "t0", "t1", "st", "e")} | {"b": str(r.get("b"))[:200]})
                    continue
                ok += 1
                body = r["b"]
                s0, s1 = body["s0"], body["s1"]
                samples.setdefault(body["w"], []).extend([tuple(s0), tuple(s1)])
                if r["t1"] <= self.chaos_end:  # the final checks compile every flag: not the run's memory
                    rss.setdefault(body["w"], []).append((r["t1"], body["mem"]))
                for index, value in zip(r["q"], body["r"]):
                    key = flag_key(index)
                    allowed = history.acceptable(key, s0[2], s1[2])
                    if value == DEFAULT:
                        if not any(archived for _v, archived, _vals in allowed):
                            default_not_archived += 1
                            if len(examples) < 10:
                                examples.append({"i": r["i"], "key": key, "value": value, "versions": [s0, s1]})
                        continue
                    served.add((r["i"], key))
                    parsed = parse_value(value)
                    if parsed is None or parsed[0] != key or not history.published(key, value):
                        not_published += 1
                        if len(examples) < 10:
                            examples.append({"i": r["i"], "key": key, "value": value, "why": "never published"})
                    elif not any(value in vals and not archived for _v, archived, vals in allowed):
                        inconsistent += 1
                        if len(examples) < 10:
                            examples.append({"i": r["i"], "key": key, "value": value, "versions": [s0, s1], "allowed": [v for v, _a, _vals in allowed]})
        backwards_gen = backwards_ver = 0
        for seq_samples in samples.values():
            seq_samples.sort()
            for (_, g0, v0), (_, g1, v1) in zip(seq_samples, seq_samples[1:]):
                backwards_gen += g1 < g0
                backwards_ver += v1 < v0
        return {
            "requests": {
                "total": total,
                "ok": ok,
                "failed": len(failed),
                "reset_by_worker_sigkill": reset_by_kill,
                "rate_per_s": round(total / max(1e-9, self.load_seconds), 1),
                "evaluations": ok * 10,
                "failed_examples": failed[:10],
            },
            "values": {
                "checked": ok * 10,
                "not_published": not_published,
                "inconsistent_with_snapshot_version": inconsistent,
                "default_for_a_live_flag": default_not_archived,
                "examples": examples,
            },
            "per_worker_order": {"workers": len(samples), "generation_backwards": backwards_gen, "data_version_backwards": backwards_ver},
            "rss": self.rss_drift(rss),
            "_served": served,
            "_unanswered": unanswered,
        }

    def rss_drift(self, rss: dict[str, list[tuple[float, dict[str, int]]]]) -> dict[str, Any]:
        """Memory of each long-lived worker after warm-up, during the chaos
        (the final checks evaluate all 15,000 flag/user pairs in every worker,
        which compiles every flag: samples after the chaos are left out).

        VmRSS counts the pages of shared-memory objects a worker has touched:
        its event ring (16 MiB, reserved in /dev/shm when the ring is made)
        enters its RSS page by page as events fill it, and the snapshot pages
        it read. That growth is bounded by those objects' sizes and uses no
        new host memory, so the 10% limit applies to the private part (RssAnon
        + RssFile: heap, code), and the shared part is checked against its
        bound (ring + twice the snapshot). Both VmRSS and the parts are reported.
        """
        shm_bound_kib = (RING_BYTES + 2 * self.snapshot_bytes) // 1024
        workers = []
        for worker, points in rss.items():
            points.sort(key=lambda p: p[0])
            born = points[0][0]
            start, end = born + WARMUP_S, points[-1][0]
            if end - start < LONG_LIVED_S + WINDOW_S_RSS:
                continue
            first = [m for t, m in points if start <= t < start + WINDOW_S_RSS]
            last = [m for t, m in points if t > end - WINDOW_S_RSS]
            if not first or not last:
                continue

            def median(ms: list[dict[str, int]], *parts: str) -> float:
                return float(statistics.median(sum(m[p] for p in parts) for m in ms))

            private0, private1 = median(first, "anon", "file"), median(last, "anon", "file")
            rss0, rss1 = median(first, "rss"), median(last, "rss")
            workers.append({
                "worker": worker,
                "observed_s": round(end - born, 1),
                "private_kib": [int(private0), int(private1)],
                "private_drift_pct": round(100 * (private1 - private0) / private0, 2),
                "vmrss_kib": [int(rss0), int(rss1)],
                "vmrss_drift_pct": round(100 * (rss1 - rss0) / rss0, 2),
                "shmem_max_kib": max(m["shmem"] for _t, m in points),
            })
        return {
            "long_lived_workers": len(workers),
            "warmup_s": WARMUP_S,
            "max_private_drift_pct": max((w["private_drift_pct"] for w in workers), default=None),
            "max_vmrss_drift_pct": max((w["vmrss_drift_pct"] for w in workers), default=None),
            "max_shmem_kib": max((w["shmem_max_kib"] for w in workers), default=None),
            "shmem_bound_kib": shm_bound_kib,
            "limit_pct": RSS_DRIFT_MAX * 100,
            "workers": sorted(workers, key=lambda w: -w["private_drift_pct"]),
        }

    def check_events(self, served: set[tuple[str, str]], unanswered: set[str]) -> dict[str, Any]:
        received_served = sum(1 for k in served if self.events.get(k))
        missing = len(served) - received_served
        duplicates = sum(c - 1 for c in self.events.values() if c > 1)
        from_unanswered = sum(c for (user, _f), c in self.events.items() if user in unanswered)
        unexpected = sum(c for k, c in self.events.items() if k not in served and k[0] not in unanswered)
        block = self.block
        return {
            "evaluations_served": len(served),
            "received_for_served": received_served,
            "missing": missing,
            "duplicates": duplicates,
            "received_total": self.events_total,
            "from_unanswered_requests": from_unanswered,
            "unexpected": unexpected,
            "counter_sent": block.counter("events_sent"),
            "counter_dropped": block.counter("events_dropped"),
            "counter_failed": block.counter("events_failed"),
            "counter_queued_at_end": block.counter("events_queued"),
            "delivery_stopped": bool(block.counter("delivery_stopped")),
        }

    # ------------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        self.stop.set()
        self.stop_load()
        if self.gunicorn is not None and self.gunicorn.poll() is None:
            self.gunicorn.kill()
            self.gunicorn.wait(10)
        for pid in processes_of(self.namespace, sync_only=False):
            kill(pid)
        remove_objects(self.names.all_objects(), self.names.access)
        with contextlib.suppress(Exception):
            self.gunicorn_log.close()


@contextlib.contextmanager
def soak(seed: int, minutes: float) -> Iterator[Soak]:
    with tempfile.TemporaryDirectory(prefix="featbit-soak-") as tmp:
        s = Soak(seed, minutes, Path(tmp))
        base_ms = int(time.time() * 1000) - 86_400_000
        s.world = World(seed, FLAGS, base_ms)
        with FeatBitStandIn(flags=list(s.world.flags.values()), segments=list(s.world.segments.values())) as server:
            s.server = server
            try:
                yield s
            finally:
                s.cleanup()


def run_soak(seed: int, minutes: float) -> dict[str, Any]:
    started = time.time()
    with soak(seed, minutes) as s:
        s.start()
        body = s.run()
        gunicorn_log = (s.workdir / "gunicorn.log").read_text(errors="replace")[-4000:]
    import gunicorn

    return {
        "issue": 9,
        "seed": seed,
        "minutes": minutes,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "host": {"cores": os.cpu_count(), "python": platform.python_version(), "gunicorn": gunicorn.__version__, "machine": platform.machine()},
        "setup": {
            "workers": WORKERS,
            "worker_class": "gthread",
            "threads": 4,
            "preload_app": True,
            "max_requests": MAX_REQUESTS,
            "max_requests_jitter": MAX_REQUESTS_JITTER,
            "flags": FLAGS,
            "segments": 20,
            "evaluations_per_request": 10,
            "load_rate_per_s": LOAD_RATE,
        },
        **body,
        "gunicorn_log_tail": gunicorn_log,
    }
