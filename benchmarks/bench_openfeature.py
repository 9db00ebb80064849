"""What OpenFeature costs per evaluation: FeatBitProvider against a direct variation() call.

Offline FBClients in this process (no events, as in bench_eval), the flags
and users of bench_eval; for each flag the same users are evaluated by:

  * ``client.variation()``                       the baseline, on a client with no listener;
  * ``client.bool_variation_detail()``           what the provider calls (same client);
  * ``provider.resolve_boolean_details()``       the provider alone: context -> user, mapping;
  * the same with ``FeatBitProvider()``          bound lazily to ``featbit_shm.get()``;
  * ``api.get_client().get_boolean_details()``   the whole openfeature-sdk path (hooks,
                                                 context merging, type check) on top.

Calls are timed in batches (perf_counter_ns around N calls, divided by N),
the paths taking turns batch by batch so a change in machine load touches
them all alike; p50 and p99 are over batches; every case stops at a deadline.
The provider's client carries the provider's flag change listener (a wrapper
around its flag source), as it does in use.

    python benchmarks/bench_openfeature.py [--quick] [--json out.json]

Writes benchmarks/results/bench_openfeature.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_eval import USERS, flags_and_segments, p99, time_batches
from openfeature import api
from openfeature.evaluation_context import EvaluationContext

import featbit_shm
from featbit_shm import Config, FBClient
from featbit_shm.openfeature import FeatBitProvider
from featbit_shm.testing import builders as b

RESULTS = Path(__file__).resolve().parent / "results" / "bench_openfeature.md"
CONTEXTS = {u["key"]: EvaluationContext(u["key"], {k: v for k, v in u.items() if k != "key"}) for u in USERS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer batches (a smoke run)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    logging.getLogger("featbit_shm").setLevel(logging.ERROR)

    flags, segments = flags_and_segments()
    doc = json.dumps(b.data_sync(flags[:2], segments))
    plain = FBClient(Config(offline=True))
    assert plain.initialize_from_external_json(doc)
    client = FBClient(Config(offline=True))
    assert client.initialize_from_external_json(doc)
    provider = FeatBitProvider(client)
    api.set_provider_and_wait(provider)
    of_client = api.get_client()
    featbit_shm.set_config(Config(offline=True))
    assert featbit_shm.get().initialize_from_external_json(doc)
    lazy = FeatBitProvider()
    lazy.initialize(EvaluationContext())

    # All paths must agree before their speed is worth comparing.
    for u in USERS[:8]:
        ctx = CONTEXTS[u["key"]]
        for key in ("bench-simple", "bench-complex"):
            want = client.variation(key, u, False)
            assert provider.resolve_boolean_details(key, False, ctx).value == want, key
            assert lazy.resolve_boolean_details(key, False, ctx).value == want, key
            details = of_client.get_boolean_details(key, False, ctx)
            assert (details.value, details.error_code) == (want, None), key

    Make = Callable[[str], Callable[[dict[str, Any]], Any]]
    paths: list[tuple[str, Make]] = [
        ("client.variation()", lambda k: lambda u: plain.variation(k, u, False)),
        ("client.bool_variation_detail()", lambda k: lambda u: plain.bool_variation_detail(k, u, False)),
        ("provider.resolve_boolean_details()", lambda k: lambda u: provider.resolve_boolean_details(k, False, CONTEXTS[u["key"]])),
        ("same, FeatBitProvider() (lazy get())", lambda k: lambda u: lazy.resolve_boolean_details(k, False, CONTEXTS[u["key"]])),
        ("OpenFeature client.get_boolean_details()", lambda k: lambda u: of_client.get_boolean_details(k, False, CONTEXTS[u["key"]])),
    ]
    cases = [("(a) bool flag, no rules", "bench-simple", 500), ("(b) 5 rules x 3 conds + segment + rollout", "bench-complex", 200)]
    rows = []
    for case, key, batch in cases:
        calls = [(label, make(key)) for label, make in paths]
        for _label, call in calls:  # warm-up
            time_batches(call, batch, 20, time.monotonic() + 5)
        samples: dict[str, list[float]] = {label: [] for label, _ in calls}
        deadline = time.monotonic() + 60 * scale
        for _ in range(int(400 * scale)):
            for label, call in calls:
                samples[label] += time_batches(call, batch, 1, deadline)
            if time.monotonic() > deadline:
                break
        for label, _ in calls:
            got = samples[label]
            rows.append({"case": case, "path": label, "p50_ns": statistics.median(got), "p99_ns": p99(got), "batches": len(got)})

    base = {r["case"]: r["p50_ns"] for r in rows if r["path"] == "client.variation()"}
    lines = [
        f"# bench_openfeature — {time.strftime('%Y-%m-%d')} — Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cpus, openfeature-sdk {_sdk_version()}",
        "",
        "Offline clients, no events; the flags and users of bench_eval; paths take turns batch by batch. "
        "Overhead is p50 minus the p50 of `client.variation()` on a client with no listener.",
        "",
        "| case | path | p50 | p99 | overhead (p50) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        extra = r["p50_ns"] - base[r["case"]]
        lines.append(f"| {r['case']} | {r['path']} | {_us(r['p50_ns'])} | {_us(r['p99_ns'])} | {'—' if r['path'] == 'client.variation()' else '+' + _us(extra)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    api.shutdown()
    return 0


def _us(ns: float) -> str:
    return f"{ns / 1000:,.2f} µs"


def _sdk_version() -> str:
    from importlib.metadata import version

    return version("openfeature-sdk")


if __name__ == "__main__":
    sys.exit(main())
