"""The soak's load generator: a separate process, so its requests do not
compete for the driver's GIL with the stand-in and the checks.

    python -m tests.soak.load --port P --seed S --rate 120 --threads 4 --flags 5000 --out FILE

Each request is a fresh connection (no keep-alive: a recycled worker closing
an idle connection is not a failure of anything under test) carrying a
unique user key, so every event it causes can be matched to it. One JSON line
per request goes to ``--out``: ``{"i": id, "t0": ..., "t1": ..., "q": [flag
indices], "st": status, "b": body}`` or ``{"i", "t0", "t1", "q", "e": error}``
(times are CLOCK_MONOTONIC, shared with the driver). The rate is bounded
(``--rate`` requests per second in total) and so is the run: it stops on
SIGTERM, when stdin closes, or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import sys
import threading
import time
from typing import Any, TextIO

from tests.soak.world import COUNTRIES, PLANS

PER_REQUEST = 10


def run_thread(args: argparse.Namespace, index: int, stop: threading.Event, out: TextIO, out_lock: threading.Lock, counter: Any) -> None:
    rng = random.Random(f"{args.seed}-{index}")
    interval = args.threads / args.rate
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < next_at:
            stop.wait(next_at - now)
            continue
        next_at = max(next_at + interval, now - interval)  # never burst to catch up
        with out_lock:
            rid = f"{args.prefix}{next(counter)}"
        flags = rng.sample(range(args.flags), PER_REQUEST)
        query = f"/eval?u={rid}&c={rng.choice(COUNTRIES)}&p={rng.choice(PLANS)}&f={','.join(map(str, flags))}"
        record: dict[str, Any] = {"i": rid, "q": flags}
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
            try:
                conn.request("GET", query, headers={"Connection": "close"})
                resp = conn.getresponse()
                data = resp.read()
                record["st"] = resp.status
                try:
                    record["b"] = json.loads(data)
                except ValueError:
                    record["b"] = {"raw": data[:200].decode("latin-1")}
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            record["e"] = f"{type(exc).__name__}: {exc}"
        record["t0"] = t0
        record["t1"] = time.monotonic()
        line = json.dumps(record, separators=(",", ":"))
        with out_lock:
            out.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--flags", type=int, default=5000)
    parser.add_argument("--prefix", default="r")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    counter = iter(range(1 << 62))
    out_lock = threading.Lock()
    with open(args.out, "w", buffering=1 << 16) as out:
        threads = [threading.Thread(target=run_thread, args=(args, i, stop, out, out_lock, counter)) for i in range(args.threads)]
        for t in threads:
            t.start()
        stop.wait(args.max_seconds)
        stop.set()
        for t in threads:
            t.join(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
