"""A small WSGI app that evaluates flags with featbit_shm (used by the README demo).

    GET /?user=alice&country=us   ->  {"pid": ..., "uid": ..., "generation": ..., "flags": {...}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import featbit_shm


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    client = featbit_shm.get()  # this worker's client: attached to the host's shared snapshot
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    user = {"key": query.get("user", "demo-user"), "name": query.get("user", "Demo User"), "country": query.get("country", "us"), "plan": query.get("plan", "free")}
    banner = client.variation_detail("welcome-banner", user, False)
    body = {
        "pid": os.getpid(),
        "uid": os.geteuid(),
        "generation": client.generation,
        "user": user["key"],
        "flags": {
            "welcome-banner": banner.variation,
            "welcome-banner.reason": banner.reason,
            "checkout-theme": client.variation("checkout-theme", user, "classic"),
            "max-cart-items": client.variation("max-cart-items", user, 10),
        },
    }
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
