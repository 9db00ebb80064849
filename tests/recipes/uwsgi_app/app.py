"""A WSGI app that serves one feature flag from featbit-shm.

    GET /?user=KEY  ->  {"pid": ..., "user": KEY, "theme": ..., "kind": ..., "generation": ...}

Each request evaluates ``checkout-theme`` for the user (one evaluation
event, which the host's sync process sends to FeatBit).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import featbit_shm


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    key = parse_qs(environ.get("QUERY_STRING", "")).get("user", ["anonymous"])[0]
    client = featbit_shm.get()  # this worker's client, built on its first request
    detail = client.variation_detail("checkout-theme", {"key": key, "name": key}, "classic")
    body = json.dumps(
        {
            "pid": os.getpid(),
            "user": key,
            "theme": detail.variation,
            "kind": detail.kind.value,
            "generation": client.generation,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
