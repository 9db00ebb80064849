"""bench_fleet's load generator: bounded in requests and in time, loopback only.

    python benchmarks/fleet_load.py PORT --connections 8 --requests 20000 --seconds 8

``connections`` threads each send ``GET /eval?user=u<n>`` one after another
with ``http.client`` (HTTP/1.1; gunicorn's sync workers close every
connection, so each request opens a new one). It stops after ``requests``
requests or ``seconds`` seconds, whichever comes first, and prints one JSON
line: requests answered 200 with all 10 flags evaluated, errors, elapsed
seconds, and the latency p50/p99 in ms.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import threading
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--expect", type=int, default=10, help="flags each answer must have evaluated")
    args = parser.parse_args()
    tickets = itertools.count()  # next() is atomic under the GIL
    lock = threading.Lock()
    ok: list[float] = []
    errors: list[str] = []
    started = time.monotonic()
    deadline = started + args.seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
        mine: list[float] = []
        bad: list[str] = []
        while time.monotonic() < deadline:
            n = next(tickets)
            if n >= args.requests:
                break
            t = time.monotonic()
            try:
                conn.request("GET", f"/eval?user=u{n}")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200 and json.loads(body)["ok"] == args.expect:
                    mine.append(time.monotonic() - t)
                else:
                    bad.append(f"{resp.status} {body[:80]!r}")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                bad.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)
        conn.close()
        with lock:
            ok.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lat = sorted(ok)

    def pctl(q: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * q))] * 1000 if lat else float("nan")

    print(
        json.dumps(
            {
                "ok": len(ok),
                "errors": len(errors),
                "first_errors": errors[:3],
                "elapsed": elapsed,
                "p50_ms": pctl(0.5),
                "p99_ms": pctl(0.99),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
