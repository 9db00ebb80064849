"""A WSGI app configured only by featbit_shm.set_config(), as a Django settings
module does; the FEATBIT_* connection variables are unset (see the test)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import featbit_shm

featbit_shm.set_config(
    featbit_shm.Config(
        os.environ["APP_FEATBIT_SECRET"],
        os.environ["APP_FEATBIT_EVENTS"],
        os.environ["APP_FEATBIT_STREAMING"],
        namespace=os.environ["APP_FEATBIT_NAMESPACE"],
    )
)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    client = featbit_shm.get()
    body = {
        "pid": os.getpid(),
        "generation": client.generation,
        "flags": {"welcome-banner": client.variation("welcome-banner", {"key": "alice", "country": "us"}, False)},
    }
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
