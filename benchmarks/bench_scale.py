"""Scale: what a patch costs a worker, and what a cold worker's first pass costs (issue 19).

    python benchmarks/bench_scale.py [--quick] [--full] [--json out.json] [--md out.md]

Measures, in one run (a writer in this process, workers in this process or in
worker processes, as each figure says):

1. **Unrelated patch, per worker.** 1,000 flags, one segment of 100 / 10k /
   200k keys and a flag that uses it (and once 10,000 flags with 10k keys).
   The writer publishes a one-flag patch of a flag the worker does not use;
   a worker process then serves its next request: ``current()`` (it maps the
   new generation) and evaluates the segment flag plus 20 other flags, with
   everything compiled before, then serves the same request again at once.
   The worker times both (perf_counter, single calls, not a batch average);
   what the patch cost it is the difference: p50 / p99 / max over the
   rounds. Target: <= 0.2 ms whatever the segment size.
2. **One-key change to the segment, per worker.** The writer adds one key to
   the segment; the worker's next request evaluates the segment flag for
   that key (and must see it included). Same timing as (1). ``publish()``
   is timed too (the writer's encode, write and flip).
3. **One-key change, propagation to 8 worker processes.** Each worker polls
   ``current()`` every 1 ms (a worker serving about 1,000 requests/s; eight
   polling every 0.1 ms would take a core of the two from the writer) and
   evaluates the segment flag for the changed key until it answers "in"; it notes that
   moment (CLOCK_MONOTONIC is shared by the host's processes). Latency is
   from the start of ``publish()`` (after the sync process parsed and merged
   the patch, which is reported separately) to each worker's first correct
   answer; "all 8" is the slowest worker of a round. Target: p99 < 20 ms at
   200k keys.
4. **Cold worker, first pass.** A fresh worker process attaches and
   evaluates every flag once (1k / 10k flags, 100k with ``--full``): total
   time, longest garbage-collection pause, RSS after. Targets: 10k < 0.6 s;
   100k < 8 s with no pause > 50 ms.

Growth of each cost (flat / linear / worse) is stated from the curve. The
results go to ``benchmarks/results/bench_scale.md`` (``--md`` to change).
The run leaves no process and no /dev/shm object behind (checked at the end).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from featbit_shm._core.dataset import Changes, DataSet
from featbit_shm._core.wire import parse_data_sync
from featbit_shm.shm.names import SHM_DIR, StoreNames
from featbit_shm.shm.writer import SnapshotWriter
from featbit_shm.testing import builders as b

os.environ.setdefault("FEATBIT_SHM_WARM_START", "0")  # benchmark stores leave no warm-start file behind

SEGMENT_ID = "2b0c6c1e-seg-big"
SEG_FLAG = "seg-flag"
RESULTS = Path(__file__).resolve().parent / "results" / "bench_scale.md"
T0 = 1_700_000_000_000


# --------------------------------------------------------------------------- data


def plain_flag(i: int, version: int = T0) -> dict[str, Any]:
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


def seg_flag() -> dict[str, Any]:
    return b.flag(
        SEG_FLAG,
        variations=["in", "out"],
        variation_type="string",
        rules=[b.rule([b.in_segment(SEGMENT_ID)], b.serve(0), name="members")],
        fallthrough=b.serve(1),
        updated_at=T0,
    )


def segment_keys(n: int) -> list[str]:
    return [f"member-{i:07d}" for i in range(n)]


def normalised(flags: list[dict[str, Any]], segments: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Wire JSON text -> normalised entities, as the sync process gets them."""
    msg = parse_data_sync(json.loads(json.dumps(b.data_sync(flags, segments)))["data"])
    return msg.flags, msg.segments


def dataset_with_segment(n_flags: int, n_keys: int) -> DataSet:
    flags, segs = normalised([*(plain_flag(i) for i in range(n_flags)), seg_flag()], [b.segment(SEGMENT_ID, included=segment_keys(n_keys), updated_at=T0)])
    return DataSet({f["key"]: f for f in flags}, {s["id"]: s for s in segs})


def flag_patch(ds: DataSet, i: int, version: int) -> tuple[DataSet, Changes]:
    (flag,), _ = normalised([plain_flag(i, version)], [])
    flags = dict(ds.flags)
    flags[flag["key"]] = flag
    return DataSet(flags, ds.segments, version=max(ds.version, version)), Changes(False, frozenset({flag["key"]}), frozenset())


def segment_patch(ds: DataSet, keys: list[str], version: int) -> tuple[DataSet, Changes, float]:
    """A one-key change as the sync process applies it: the wire segment
    (every key, as FeatBit sends it) parsed and merged. Returns the parse +
    merge time (ms): the sync process's share, not counted in the latency."""
    text = json.dumps(b.data_sync([], [b.segment(SEGMENT_ID, included=keys, updated_at=version)], event_type="patch"))
    t0 = time.perf_counter()
    new, changes = ds.apply(parse_data_sync(json.loads(text)["data"]))
    return new, changes, (time.perf_counter() - t0) * 1000


def pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p99": pctl(values, 0.99), "max": max(values), "n": len(values)}


USED: list[StoreNames] = []


def new_names() -> StoreNames:
    names = StoreNames.for_env("", f"bench-scale-{uuid.uuid4().hex[:8]}")
    USED.append(names)
    return names


# --------------------------------------------------------------------------- 1 + 2: one worker's request

OTHER_FLAGS = 20

REQUEST_WORKER = r"""
import sys, time
from featbit_shm._core.evaluator import evaluate
from featbit_shm._core.user import make_user
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.reader import SnapshotReader

reader = SnapshotReader(StoreNames(sys.argv[1]), retry_interval=0.0)
others = [f"flag-{i:06d}" for i in range(500, 500 + int(sys.argv[2]))]
other_user = make_user({"key": "someone", "country": "us", "age": 40})
clock = time.perf_counter
last = -1
for line in sys.stdin:  # the user of the next request; the writer publishes, then sends it
    user = make_user({"key": line.strip(), "country": "us", "age": 40})
    while True:
        t0 = clock()
        view = reader.current()  # a request: the generation check, then evaluations
        if view is None or view.generation == last:
            time.sleep(0.0002)
            continue
        decision = evaluate(view.flag("seg-flag"), user, view.segment)
        for key in others:
            evaluate(view.flag(key), other_user, view.segment)
        t1 = clock()
        view = reader.current()  # the same request again: what a request costs with no patch
        evaluate(view.flag("seg-flag"), user, view.segment)
        for key in others:
            evaluate(view.flag(key), other_user, view.segment)
        t2 = clock()
        last = view.generation
        print(f"{(t1 - t0) * 1000:.6f} {(t2 - t1) * 1000:.6f} {decision.variation.value}", flush=True)
        break
"""


def per_worker(n_keys: int, rounds: int, n_flags: int = 1000) -> dict[str, Any]:
    """(1) unrelated patches, then (2) one-key segment changes, each timed as
    the next request of one worker process (the first after the generation moved)."""
    names = new_names()
    ds = dataset_with_segment(n_flags, n_keys)
    keys = segment_keys(n_keys)
    member = keys[len(keys) // 2]
    unrelated: list[float] = []  # what the patch added to the worker's next request
    changed: list[float] = []
    steady: list[float] = []  # the same request with no patch before it
    publish_unrelated: list[float] = []
    publish_changed: list[float] = []
    clock = time.perf_counter
    with SnapshotWriter(names, grace=0.2, keep=2) as writer:
        writer.publish(ds)
        proc = subprocess.Popen([sys.executable, "-c", REQUEST_WORKER, names.tag, str(OTHER_FLAGS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None

        def request(user_key: str) -> tuple[float, str]:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(user_key + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            assert line, "the worker process died (its error is above)"
            first, again, value = line.split()
            steady.append(float(again))
            return float(first) - float(again), value

        try:
            assert request(member)[1] == "in"  # warm: everything compiled once
            for r in range(rounds):
                ds, changes = flag_patch(ds, r % 500, T0 + 1 + r)  # flags 0..499: never evaluated here
                t0 = clock()
                writer.publish(ds, changes)
                publish_unrelated.append((clock() - t0) * 1000)
                cost, value = request(member)
                assert value == "in"
                unrelated.append(cost)
            for r in range(max(5, rounds // 4)):
                keys = [*keys, f"added-{r}"]
                ds, changes, _ = segment_patch(ds, keys, T0 + 10_000 + r)
                t0 = clock()
                writer.publish(ds, changes)
                publish_changed.append((clock() - t0) * 1000)
                cost, value = request(f"added-{r}")
                assert value == "in"
                changed.append(cost)
        finally:
            proc.stdin.close()
            proc.wait(30)
    return {
        "flags": n_flags,
        "keys": n_keys,
        "steady_request_ms": summary(steady),
        "unrelated_ms": summary(unrelated),
        "unrelated_publish_ms": summary(publish_unrelated),
        "changed_ms": summary(changed),
        "changed_publish_ms": summary(publish_changed),
    }


# --------------------------------------------------------------------------- 3: propagation to worker processes

PROPAGATION_WORKER = r"""
import sys, time
from featbit_shm._core.evaluator import evaluate
from featbit_shm._core.user import make_user
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.reader import SnapshotReader

reader = SnapshotReader(StoreNames(sys.argv[1]), retry_interval=0.0)
rounds = int(sys.argv[2])
users = [make_user({"key": f"added-{r}"}) for r in range(rounds)]

def answer(r):
    view = reader.current()
    if view is None:
        return None
    flag = view.flag("seg-flag")
    if flag is None:
        return None
    d = evaluate(flag, users[r], view.segment)
    return d.variation.value if d.variation is not None else None

deadline = time.monotonic() + 150
while answer(0) != "out" and time.monotonic() < deadline:
    time.sleep(0.001)
print("ready", flush=True)
for r in range(rounds):
    while time.monotonic() < deadline:
        if answer(r) == "in":
            print(f"{r} {time.monotonic():.6f}", flush=True)
            break
        time.sleep(0.001)  # a worker serving about 1,000 requests/s; 8 spinning would starve the writer
sys.stdin.readline()  # stay idle until the run ends: an exiting worker's teardown would delay the others
"""


def propagation(n_keys: int, rounds: int, workers: int = 8) -> dict[str, Any]:
    names = new_names()
    ds = dataset_with_segment(1000, n_keys)
    keys = segment_keys(n_keys)
    per_worker_ms: list[float] = []
    slowest_ms: list[float] = []
    publish_ms: list[float] = []
    apply_ms: list[float] = []
    procs: list[subprocess.Popen[str]] = []
    with SnapshotWriter(names, grace=0.5, keep=3) as writer:
        writer.publish(ds)
        try:
            for _ in range(workers):
                procs.append(
                    subprocess.Popen([sys.executable, "-c", PROPAGATION_WORKER, names.tag, str(rounds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                )
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            time.sleep(0.2)
            for r in range(rounds):
                keys = [*keys, f"added-{r}"]
                ds, changes, parse_ms = segment_patch(ds, keys, T0 + 1 + r)
                apply_ms.append(parse_ms)
                time.sleep(0.01)  # let the parse's garbage settle; workers idle-poll meanwhile
                t0 = time.monotonic()
                writer.publish(ds, changes)
                publish_ms.append((time.monotonic() - t0) * 1000)
                seen: list[float] = []
                for p in procs:
                    assert p.stdout is not None
                    ready, _, _ = select.select([p.stdout], [], [], 30)
                    assert ready, "a worker did not see the change within 30 s"
                    got_r, when = p.stdout.readline().split()
                    assert int(got_r) == r
                    seen.append((float(when) - t0) * 1000)
                per_worker_ms.extend(seen)
                slowest_ms.append(max(seen))
        finally:
            for p in procs:
                p.kill()
                p.wait(10)
                for pipe in (p.stdin, p.stdout):
                    if pipe is not None:
                        pipe.close()
    return {
        "keys": n_keys,
        "workers": workers,
        "rounds": rounds,
        "per_worker_ms": summary(per_worker_ms),
        "all_workers_ms": summary(slowest_ms),
        "publish_ms": summary(publish_ms),
        "sync_parse_merge_ms": summary(apply_ms),
    }


# --------------------------------------------------------------------------- 4: cold first pass

FIRST_PASS_WORKER = r"""
import gc, json, sys, time
from featbit_shm._core.evaluator import evaluate
from featbit_shm._core.user import make_user
from featbit_shm.shm.names import StoreNames
from featbit_shm.shm.reader import SnapshotReader

pauses = []
started = [0.0]
def on_gc(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses.append((time.perf_counter() - started[0]) * 1000)
gc.callbacks.append(on_gc)
reader = SnapshotReader(StoreNames(sys.argv[1]))
user = make_user({"key": "someone", "country": "us", "age": 40})
t0 = time.perf_counter()
view = reader.current()
n = 0
for key in view.flag_keys():
    evaluate(view.flag(key), user, view.segment)
    n += 1
seconds = time.perf_counter() - t0
t1 = time.perf_counter()
for key in view.flag_keys():
    evaluate(view.flag(key), user, view.segment)
warm = time.perf_counter() - t1
with open("/proc/self/status") as fh:
    rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
print(json.dumps({"flags": n, "seconds": seconds, "warm_seconds": warm, "gc_max_ms": max(pauses, default=0.0),
                  "gc_total_ms": sum(pauses), "collections": len(pauses), "rss_kib": rss}), flush=True)
"""


def first_pass(n_flags: int) -> dict[str, Any]:
    names = new_names()
    flags, _ = normalised([plain_flag(i) for i in range(n_flags)], [])
    ds = DataSet({f["key"]: f for f in flags})
    with SnapshotWriter(names) as writer:
        writer.publish(ds)
        out = subprocess.run([sys.executable, "-c", FIRST_PASS_WORKER, names.tag], capture_output=True, text=True, timeout=300, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- report


def growth(xs: list[int], ys: list[float]) -> str:
    """flat / sublinear / linear / worse, from the first and last points of a curve."""
    if len(xs) < 2 or ys[0] <= 0:
        return "n/a"
    size = xs[-1] / xs[0]
    cost = ys[-1] / ys[0]
    if cost < 2:
        return f"flat ({cost:.1f}x over {size:,.0f}x)"
    if cost < size ** 0.8:
        return f"sublinear ({cost:.1f}x over {size:,.0f}x)"
    if cost < size * 1.5:
        return f"linear ({cost:.1f}x over {size:,.0f}x)"
    return f"worse than linear ({cost:.1f}x over {size:,.0f}x)"


def leftovers() -> list[str]:
    """/dev/shm objects of this run's stores still there (the writers' context managers unlink them)."""
    return sorted(n for names in USED for n in os.listdir(SHM_DIR) if n.startswith(names.base[1:] + "."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--full", action="store_true", help="also the 100k-flag first pass (about a minute more)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--md", default=str(RESULTS), help="where to write the markdown results ('' for nowhere)")
    args = parser.parse_args()
    started = time.monotonic()
    sizes = [100, 10_000, 200_000]
    rounds = 40 if args.quick else 200
    prop_rounds = {100: 20, 10_000: 20, 200_000: 15} if args.quick else {100: 60, 10_000: 60, 200_000: 40}

    workers = [per_worker(n, rounds) for n in sizes]
    wide = per_worker(10_000, rounds, n_flags=10_000)
    props = [propagation(n, prop_rounds[n]) for n in sizes]
    cold = [first_pass(n) for n in ([1_000, 10_000, 100_000] if args.full else [1_000, 10_000])]
    elapsed = time.monotonic() - started

    lines: list[str] = []
    out = lines.append
    out(f"# bench_scale — {time.strftime('%Y-%m-%d')} — Python {platform.python_version()}, {os.cpu_count()} cpus"
        f"{' (quick)' if args.quick else ''}")
    out("")
    out(f"## 1-2. What a patch adds to one worker process's next request (the request evaluates the segment flag and {OTHER_FLAGS} others)")
    out("")
    out("Added = that first request after the patch minus the same request repeated at once (no patch before it).")
    out("")
    out("| flags | segment keys | request, no patch p50 | unrelated patch: added p50 | p99 | max | publish() p50 "
        "| one-key segment change: added p50 | p99 | max | publish() p50 |")
    out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in [*workers, wide]:
        s_, u, up, c, cp = w["steady_request_ms"], w["unrelated_ms"], w["unrelated_publish_ms"], w["changed_ms"], w["changed_publish_ms"]
        out(f"| {w['flags']:,} | {w['keys']:,} | {s_['p50']:.3f} ms | {u['p50']:.3f} ms | {u['p99']:.3f} ms | {u['max']:.3f} ms | {up['p50']:.2f} ms "
            f"| {c['p50']:.3f} ms | {c['p99']:.3f} ms | {c['max']:.3f} ms | {cp['p50']:.2f} ms |")
    out("")
    out(f"* unrelated patch, added p50 over segment size: {growth(sizes, [w['unrelated_ms']['p50'] for w in workers])}")
    out(f"* one-key change, added p50 over segment size: {growth(sizes, [w['changed_ms']['p50'] for w in workers])}")
    out(f"* one-key change, publish() p50 over segment size: {growth(sizes, [w['changed_publish_ms']['p50'] for w in workers])}")
    out("")
    out("## 3. One-key segment change reaching 8 worker processes (from the start of publish())")
    out("")
    out("| segment keys | rounds | per worker p50 | p99 | all 8 p50 | all 8 p99 | max | publish() p50 | sync parse + merge p50 (not counted) |")
    out("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in props:
        pw, al, pu, sm = p["per_worker_ms"], p["all_workers_ms"], p["publish_ms"], p["sync_parse_merge_ms"]
        out(f"| {p['keys']:,} | {p['rounds']} | {pw['p50']:.2f} ms | {pw['p99']:.2f} ms | {al['p50']:.2f} ms | {al['p99']:.2f} ms "
            f"| {al['max']:.2f} ms | {pu['p50']:.2f} ms | {sm['p50']:.1f} ms |")
    out("")
    out(f"* all 8, p50 over segment size: {growth(sizes, [p['all_workers_ms']['p50'] for p in props])}")
    out("")
    out("## 4. Cold worker: first pass over every flag (fresh process; 1 rule x 2 conditions, a target, a split per flag)")
    out("")
    out("| flags | first pass | per flag | second pass | longest GC pause | GC total | collections | RSS after |")
    out("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cold:
        out(f"| {c['flags']:,} | {c['seconds']:.3f} s | {c['seconds'] / c['flags'] * 1e6:.1f} µs | {c['warm_seconds']:.3f} s "
            f"| {c['gc_max_ms']:.1f} ms | {c['gc_total_ms']:.0f} ms | {c['collections']} | {c['rss_kib'] / 1024:.1f} MiB |")
    out("")
    out(f"* first pass over flag count: {growth([c['flags'] for c in cold], [c['seconds'] for c in cold])}")
    out("")
    big = workers[-1]
    prop_big = props[-1]
    cold10k = next(c for c in cold if c["flags"] == 10_000)
    targets = {
        "unrelated patch adds <= 0.2 ms to a worker at every segment size (p50)": all(w["unrelated_ms"]["p50"] <= 0.2 for w in workers),
        "one-key change to 200k keys reaches 8 workers, p99 < 20 ms (per worker)": prop_big["per_worker_ms"]["p99"] < 20,
        "one-key change to 200k keys reaches all 8 workers, p99 < 20 ms": prop_big["all_workers_ms"]["p99"] < 20,
        "first pass over 10k flags < 0.6 s": cold10k["seconds"] < 0.6,
    }
    cold100k = next((c for c in cold if c["flags"] == 100_000), None)
    if cold100k is not None:
        targets["first pass over 100k flags < 8 s"] = cold100k["seconds"] < 8
        targets["no GC pause > 50 ms in the 100k first pass"] = cold100k["gc_max_ms"] <= 50
    ratio = big["unrelated_ms"]["p50"] / workers[0]["unrelated_ms"]["p50"]
    out(f"Ratios: unrelated patch at 200k keys / at 100 keys = {ratio:.2f}; one-key change / unrelated patch at 200k keys = "
        f"{big['changed_ms']['p50'] / big['unrelated_ms']['p50']:.1f}x; all 8 workers p99 / 20 ms target = {prop_big['all_workers_ms']['p99'] / 20:.2f}.")
    out("")
    for label, ok in targets.items():
        out(f"target {label}: {'met' if ok else 'MISSED'}")
    out("")
    left = leftovers()
    out(f"Run time {elapsed:.0f} s; /dev/shm objects left behind: {len(left)}.")
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"per_worker": [*workers, wide], "propagation": props, "first_pass": cold, "targets": targets}, fh, indent=2)
    return 1 if left else 0


if __name__ == "__main__":
    gc.collect()
    sys.exit(main())
