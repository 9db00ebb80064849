"""The sync process's side of a patch: what publish() costs and what the process holds.

    python benchmarks/bench_publish.py [--quick] [--json out.json]

1. ``SnapshotWriter.publish()`` of a one-flag patch at 1k / 10k / 100k
   flags, into real shared memory, timed call by call (p50 / p99 / max of
   single calls, never a batch average). Each patch is parsed from wire
   JSON and merged into the data set first, as the sync process does; that
   share (``DataSet.apply``) is reported beside it, not counted in publish.
   Target (issue 19.1): under 3 ms at 100k flags.
2. RSS of a real sync process (``python -m featbit_shm.sync``, a fresh
   interpreter, standby off) after a full sync of 10k / 100k flags from the
   FeatBit stand-in: VmRSS once the snapshot is published and the state is
   OK, and VmHWM (its peak). Targets: 10k under 50 MiB, 100k under 400 MiB.

Run it against another checkout for an A/B: ``PYTHONPATH=/path/to/other
python benchmarks/bench_publish.py`` (the sync process inherits PYTHONPATH).
The flags are bench_scale's: a target list, one rule of two conditions, a
percentage rollout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from typing import Any

from featbit_shm._core.dataset import DataSet
from featbit_shm._core.wire import parse_data_sync
from featbit_shm.shm.control import SyncState
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.reader import SnapshotReader, find_control
from featbit_shm.shm.writer import SnapshotWriter
from featbit_shm.sync import SyncSettings, spawn_sync_process
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

os.environ.setdefault("FEATBIT_SHM_WARM_START", "0")  # benchmark stores leave no warm-start file behind

T0 = 1_700_000_000_000


def wire_flag(i: int, version: int = T0) -> dict[str, Any]:
    return b.flag(
        f"flag-{i:06d}",
        variations=[f"on-{i}", "off"],
        variation_type="string",
        targets={0: [f"vip-{i}"]},
        rules=[
            b.rule(
                [b.cond("country", "IsOneOf", ["us", "fr", "de"]), b.cond("age", "BiggerThan", "30")],
                b.split((0, 0, 0.5, 1), (1, 0.5, 1, 1)),
                name="rule",
            )
        ],
        updated_at=version,
    )


def pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p99": pctl(values, 0.99), "max": max(values), "n": len(values)}


# --------------------------------------------------------------------------- 1. publish()


def publish_costs(n_flags: int, patches: int) -> dict[str, Any]:
    text = json.dumps(b.data_sync([wire_flag(i) for i in range(n_flags)], []))
    dataset, _ = DataSet(packed=True).apply(parse_data_sync(json.loads(text)["data"]))  # as the sync process holds it
    del text
    names = StoreNames.for_env("", f"bench-publish-{uuid.uuid4().hex[:8]}")
    publish_ms: list[float] = []
    apply_ms: list[float] = []
    clock = time.perf_counter
    with SnapshotWriter(names) as writer:
        t0 = clock()
        writer.publish(dataset)
        full_ms = (clock() - t0) * 1000
        for r in range(1, patches + 1):
            patch = json.dumps(b.data_sync([wire_flag((r * 7919) % n_flags, T0 + r)], [], event_type="patch"))
            t0 = clock()
            dataset, changes = dataset.apply(parse_data_sync(json.loads(patch)["data"]))
            t1 = clock()
            writer.publish(dataset, changes)
            t2 = clock()
            apply_ms.append((t1 - t0) * 1000)
            publish_ms.append((t2 - t1) * 1000)
    return {
        "flags": n_flags,
        "full_publish_ms": full_ms,
        "publish_ms": summary(publish_ms),
        "apply_ms": summary(apply_ms),
    }


# --------------------------------------------------------------------------- 2. RSS


def _status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as fh:
        return {line.split(":")[0]: int(line.split()[1]) for line in fh if line.startswith(("VmRSS:", "VmHWM:"))}


def sync_rss(n_flags: int) -> dict[str, Any]:
    namespace = f"bench-publish-{uuid.uuid4().hex[:8]}"
    with FeatBitStandIn(flags=[wire_flag(i) for i in range(n_flags)]) as server:
        names = StoreNames.for_env(server.secret, namespace)
        settings = SyncSettings(
            env_secret=server.secret,
            streaming_url=server.streaming_url,
            event_url=server.event_url,
            namespace=namespace,
            standby=False,
        )
        t0 = time.monotonic()
        sync = spawn_sync_process(settings, owner_pid=os.getpid())
        try:
            probe = SnapshotReader(names, retry_interval=0.05)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not (probe.current() and probe.state() is SyncState.OK):
                time.sleep(0.05)
            synced_s = time.monotonic() - t0
            time.sleep(1.0)  # settled: the message and its parse are gone
            block, _ = find_control(names)
            assert block is not None
            status = _status(block.leader_pid)
        finally:
            sync.terminate()
            sync.wait(60)
    return {
        "flags": n_flags,
        "rss_mib": status["VmRSS"] / 1024,
        "peak_mib": status["VmHWM"] / 1024,
        "synced_s": synced_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 patches per size instead of 200; RSS at 10k only")
    parser.add_argument("--json")
    parser.add_argument("--part", choices=["publish", "rss", "both"], default="both")
    args = parser.parse_args()
    patches = 50 if args.quick else 200
    publishes = [publish_costs(n, patches) for n in (1_000, 10_000, 100_000)] if args.part != "rss" else []
    rss = [sync_rss(n) for n in ((10_000,) if args.quick else (10_000, 100_000))] if args.part != "publish" else []
    import featbit_shm

    print(f"# bench_publish — {time.strftime('%Y-%m-%d')} — Python {platform.python_version()}, {os.cpu_count()} cpus")
    print(f"code: {os.path.dirname(os.path.dirname(featbit_shm.__file__))}")
    if publishes:
        print()
        print("| flags | full publish | one-flag patch: publish() p50 | p99 | max | parse + merge p50 (not counted) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for p in publishes:
            s, a = p["publish_ms"], p["apply_ms"]
            print(
                f"| {p['flags']:,} | {p['full_publish_ms']:.0f} ms | {s['p50']:.3f} ms | {s['p99']:.3f} ms | {s['max']:.2f} ms | {a['p50']:.3f} ms |"
            )
        at_100k = publishes[-1]["publish_ms"]["p50"]
        print(
            f"\ntarget publish() under 3 ms at 100k flags: {'met' if at_100k < 3 else 'MISSED'} (p50 {at_100k:.2f} ms)"
        )
    if rss:
        print()
        print("| flags | sync process RSS after a full sync | peak (VmHWM) | time to OK |")
        print("|---:|---:|---:|---:|")
        for r in rss:
            print(f"| {r['flags']:,} | {r['rss_mib']:.0f} MiB | {r['peak_mib']:.0f} MiB | {r['synced_s']:.1f} s |")
        limits = {10_000: 50, 100_000: 400}
        for r in rss:
            limit = limits[r["flags"]]
            print(
                f"target RSS at {r['flags']:,} flags under {limit} MiB: {'met' if r['rss_mib'] < limit else 'MISSED'}"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"publish": publishes, "rss": rss}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
