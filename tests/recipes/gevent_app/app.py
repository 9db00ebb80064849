"""A WSGI app for gunicorn's gevent workers that serves a feature flag from featbit-shm.

    GET /?user=KEY&wait=S  ->  {"pid": ..., "user": KEY, "theme": ..., "kind": ...,
                                "generation": ..., "in_flight": ...}
    GET /changes           ->  {"pid": ..., "changes": [...]}

/ evaluates ``checkout-theme`` for the user (one evaluation event, which the
host's sync process sends to FeatBit), then waits S seconds, standing for a
slow call to a database or an API: under gevent the wait yields, and the
worker serves other requests meanwhile (``in_flight`` counts them).
/changes lists the changes of ``checkout-theme`` this worker's flag watcher
heard of; it does not touch the client.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import featbit_shm

client = featbit_shm.get()  # this worker's client (the hooks' post_fork built it)
in_flight = 0  # requests this worker is serving now
changes: list[dict[str, Any]] = []


def remember_change(key: str, old: Any, new: Any) -> None:
    changes.append({"flag": key, "old": old, "new": new, "at": time.time()})


# Optional: hear of flag changes while no request touches the client. The
# module is imported in the worker after gevent patched it, so this watcher
# "thread" is a greenlet that wakes every 0.25 s.
client.flag_tracker.add_flag_value_changed_listener("checkout-theme", {"key": "watcher"}, remember_change)
client.flag_tracker.start_watching(0.25)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global in_flight
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if environ.get("PATH_INFO") == "/changes":
        body: dict[str, Any] = {"pid": os.getpid(), "changes": changes}
    else:
        key = query.get("user", "anonymous")
        in_flight += 1
        try:
            # A read of shared memory, about a microsecond: it never yields.
            detail = client.variation_detail("checkout-theme", {"key": key, "name": key}, "classic")
            time.sleep(float(query.get("wait", 0)))  # monkey-patched: other greenlets run meanwhile
            body = {
                "pid": os.getpid(),
                "user": key,
                "theme": detail.variation,
                "kind": detail.kind.value,
                "generation": client.generation,
                "in_flight": in_flight,
            }
        finally:
            in_flight -= 1
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
