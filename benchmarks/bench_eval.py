"""Evaluation speed: featbit_shm against the official fb-python-sdk, in one run.

Both clients run offline in this process on the same flags and users:

  (a) a boolean flag with no rules;
  (b) a flag with 5 rules x 3 conditions, a segment condition and a
      percentage rollout (the user walks every rule before matching the last);
  (c) get_all_latest_flag_variations over 1,000 flags.

Calls are timed in batches (perf_counter_ns around N calls, divided by N) so
the clock's own cost does not dominate; median and p99 are over batches.
Targets (issue 2): (a) p50 <= 1.5 us and (b) p50 <= 5 us, each >= 5x faster
than fb-python-sdk in the same run.

    python benchmarks/bench_eval.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from featbit_shm import Config, FBClient
from featbit_shm.testing import builders as b

SEGMENT_ID = "0f4c5c7a-5e1d-4a3b-9c1e-2f6a7b8c9d0e"


def flags_and_segments() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    simple = b.flag("bench-simple")
    rules = []
    for i in range(4):
        # The first two conditions match, the third does not: every condition runs.
        rules.append(
            b.rule(
                [
                    b.cond("country", "IsOneOf", ["us", "fr", "de"]),
                    b.cond("plan", "StartsWith", "pro"),
                    b.cond("age", "BiggerThan", str(90 + i)),
                ],
                b.serve(1),
                name=f"rule-{i}",
            )
        )
    rules.append(
        b.rule(
            [b.in_segment(SEGMENT_ID), b.cond("plan", "EndsWith", "plus"), b.cond("age", "LessThan", "60")],
            b.split((0, 0, 0.5, 1), (1, 0.5, 1, 1)),
            name="segment-rollout",
        )
    )
    complex_flag = b.flag("bench-complex", rules=rules, fallthrough=b.serve(1))
    segment = b.segment(SEGMENT_ID, rules=[[b.cond("country", "IsOneOf", ["us", "fr"])]])
    many = [
        b.flag(
            f"bulk-{i:04d}",
            variations=[f"v{i}", "other"],
            variation_type="string",
            rules=[b.rule([b.cond("country", "Equal", "us")], b.split((0, 0, 0.3, 1), (1, 0.3, 1, 1)))] if i % 2 else [],
        )
        for i in range(1000)
    ]
    return [simple, complex_flag, *many], [segment]


USERS = [{"key": f"user-{i}", "name": f"User {i}", "country": "us", "plan": "pro-plus", "age": 41} for i in range(64)]


def time_batches(call: Callable[[dict[str, Any]], Any], batch: int, batches: int, deadline: float) -> list[float]:
    """ns per call for each batch; stops early at the deadline."""
    per_call: list[float] = []
    users = USERS
    n_users = len(users)
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(batches):
            u = users[i % n_users]
            start = clock()
            for _ in range(batch):
                call(u)
            per_call.append((clock() - start) / batch)
            if time.monotonic() > deadline:
                break
    finally:
        gc.enable()
    return per_call


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def make_clients(doc: str) -> tuple[FBClient, Any]:
    ours = FBClient(Config(offline=True))
    assert ours.initialize_from_external_json(doc)
    logging.getLogger("fbclient").setLevel(logging.CRITICAL + 1)
    from fbclient.client import FBClient as OfficialClient
    from fbclient.config import Config as OfficialConfig

    theirs = OfficialClient(OfficialConfig("bench-secret", "http://localhost", "ws://localhost", offline=True), start_wait=0)
    assert theirs.initialize_from_external_json(doc)
    return ours, theirs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer batches (a smoke run)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0

    flags, segments = flags_and_segments()
    doc = json.dumps(b.data_sync(flags, segments))
    ours, theirs = make_clients(doc)

    # Both clients must agree before their speed is worth comparing.
    for u in USERS[:8]:
        for key in ("bench-simple", "bench-complex"):
            assert ours.variation(key, u, None) == theirs.variation(key, u, None), key

    cases: list[tuple[str, Callable[[Any], Callable[[dict[str, Any]], Any]], int, int]] = [
        ("(a) bool flag, no rules", lambda c: lambda u: c.variation("bench-simple", u, False), 500, int(600 * scale)),
        ("(b) 5 rules x 3 conds + segment + rollout", lambda c: lambda u: c.variation("bench-complex", u, False), 200, int(600 * scale)),
        ("(c) get_all over 1,000 flags", lambda c: lambda u: c.get_all_latest_flag_variations(u), 1, int(150 * scale)),
    ]
    rows = []
    for name, make, batch, batches in cases:
        result = {"case": name}
        for label, client in (("featbit_shm", ours), ("fb-python-sdk", theirs)):
            call = make(client)
            time_batches(call, batch, max(5, batches // 10), time.monotonic() + 5)  # warm-up
            samples = time_batches(call, batch, batches, time.monotonic() + 60 * scale)
            result[label] = {"p50_ns": statistics.median(samples), "p99_ns": p99(samples), "batches": len(samples)}
        result["speedup_p50"] = result["fb-python-sdk"]["p50_ns"] / result["featbit_shm"]["p50_ns"]
        rows.append(result)
    theirs.stop()

    def fmt(ns: float) -> str:
        return f"{ns / 1000:,.2f} µs" if ns < 1_000_000 else f"{ns / 1e6:,.2f} ms"

    print(f"# bench_eval — {time.strftime('%Y-%m-%d')} — Python {platform.python_version()} on {platform.machine()}, "
          f"{platform.processor() or 'unknown cpu'}")
    print()
    print("| case | featbit_shm p50 | p99 | fb-python-sdk p50 | p99 | speed-up (p50) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        o, t = r["featbit_shm"], r["fb-python-sdk"]
        print(f"| {r['case']} | {fmt(o['p50_ns'])} | {fmt(o['p99_ns'])} | {fmt(t['p50_ns'])} | {fmt(t['p99_ns'])} | {r['speedup_p50']:.1f}x |")
    print()
    targets = [
        ("(a) p50 <= 1.5 µs", rows[0]["featbit_shm"]["p50_ns"] <= 1500),
        ("(a) >= 5x faster", rows[0]["speedup_p50"] >= 5),
        ("(b) p50 <= 5 µs", rows[1]["featbit_shm"]["p50_ns"] <= 5000),
        ("(b) >= 5x faster", rows[1]["speedup_p50"] >= 5),
    ]
    for label, ok in targets:
        print(f"target {label}: {'met' if ok else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "targets": dict(targets)}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
