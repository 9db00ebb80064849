"""A Flask app that serves a feature flag from featbit-shm.

    GET /?user=KEY  ->  {"pid": ..., "uid": ..., "user": KEY, "theme": ..., "kind": ..., "generation": ...}
    GET /health     ->  200 while this worker serves fresh flags, else 503

Each request to / evaluates ``checkout-theme`` for the user (one evaluation
event, which the host's sync process sends to FeatBit).
"""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify, request

import featbit_shm

app = Flask(__name__)


@app.get("/")
def index() -> Response:
    user = request.args.get("user", "anonymous")
    # This worker's client: the hooks built it in post_fork, from the FEATBIT_*
    # variables. A read of shared memory, about a microsecond; no I/O.
    client = featbit_shm.get()
    detail = client.variation_detail("checkout-theme", {"key": user, "name": user}, "classic")
    return jsonify(
        pid=os.getpid(),
        uid=os.getuid(),  # the account the worker runs as (see "Workers under another account")
        user=user,
        theme=detail.variation,
        kind=detail.kind.value,
        generation=client.generation,
    )


@app.get("/health")
def health() -> tuple[Response, int]:
    state = featbit_shm.get().health()
    return jsonify(state.to_json_dict()), 200 if state else 503
