"""A WSGI app that answers with one flag's value, from featbit-shm.

    gunicorn app:app

GET /?user=KEY answers {"pid", "user", "value", "kind"} as JSON and records
one evaluation event.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import featbit_shm

FLAG = "checkout-flow"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    key = query.get("user", ["anonymous"])[0]
    detail = featbit_shm.get().variation_detail(FLAG, {"key": key, "name": key}, "classic")
    body = json.dumps({"pid": os.getpid(), "user": key, "value": detail.variation, "kind": detail.kind.value}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
