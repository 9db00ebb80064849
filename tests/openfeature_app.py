"""A WSGI app that evaluates flags through OpenFeature with FeatBitProvider (tests/test_openfeature.py).

The provider is set when the module is imported: in each worker, or once in
the gunicorn master with ``preload_app``, before it forks. It binds to the
worker's ``featbit_shm.get()`` on first use.

    GET /?user=alice&country=us  ->  {"pid", "generation", "threads", "status", "flags": {...}}
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from openfeature import api
from openfeature.evaluation_context import EvaluationContext

import featbit_shm
from featbit_shm.openfeature import FeatBitProvider

# set_provider_and_wait initialises on this thread (openfeature-sdk 0.10+; 0.9's
# set_provider does too); 0.10's plain set_provider would start a thread for it.
getattr(api, "set_provider_and_wait", api.set_provider)(FeatBitProvider(status_interval=0))
flags = api.get_client()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    context = EvaluationContext(query.get("user", "demo-user"), {"name": query.get("user", ""), "country": query.get("country", "us")})
    banner = flags.get_boolean_details("welcome-banner", False, context)
    theme = flags.get_string_details("checkout-theme", "classic", context)
    body = {
        "pid": os.getpid(),
        "generation": featbit_shm.get().generation,
        "threads": sorted(t.name for t in threading.enumerate()),
        "status": flags.get_provider_status().value,
        "flags": {
            "welcome-banner": banner.value,
            "welcome-banner.reason": str(banner.reason),
            "welcome-banner.variant": banner.variant,
            "checkout-theme": theme.value,
            "checkout-theme.reason": str(theme.reason),
        },
    }
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
