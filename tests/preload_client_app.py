"""A WSGI app that builds its client at import time, as fbclient's docs do:
with ``preload_app`` the gunicorn master imports it before ``when_ready``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import featbit_shm

IMPORTED = time.time()
client = featbit_shm.FBClient(featbit_shm.Config.from_env(), start_wait=15)
BUILT = time.time()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    user = {"key": "alice", "country": "us"}
    body = {
        "pid": os.getpid(),
        "generation": client.generation,
        "client_built_in_s": BUILT - IMPORTED,
        "flags": {"welcome-banner": client.variation("welcome-banner", user, False)},
    }
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
