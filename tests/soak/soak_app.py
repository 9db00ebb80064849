"""The WSGI app the soak runs under gunicorn.

    GET /eval?u=<user key>&c=<country>&p=<plan>&f=<flag index>,...
        evaluates each flag with ``client.variation`` (the hot path; one
        event per successful evaluation, R-66) and answers
        {"w": worker id, "s0": [seq, generation, data version], "r": [values],
         "s1": [...], "mem": {"rss", "anon", "file", "shmem"} in KiB}
    GET /final[?quick=1]
        {"w": ..., "s": [...], "d": [digest per probe user]}: every flag for
        each probe user, through get_all_latest_flag_variations (no events);
        with ``quick`` only the worker id and sample.

``s0``/``s1`` are taken under a per-process lock with a per-process sequence
number, so the soak can order one worker's samples exactly even with
several threads per worker. The worker id is the pid plus the process start
time, so a recycled pid is a new worker.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import featbit_shm
from tests.soak.world import DEFAULT, PROBE_USERS, digest, flag_key

_lock = threading.Lock()
_seq = itertools.count()
_worker: tuple[int, str] | None = None
_warm = 0  # the pid that compiled every flag once


def worker_id() -> str:
    global _worker
    pid = os.getpid()
    if _worker is None or _worker[0] != pid:
        with open(f"/proc/{pid}/stat") as fh:
            started = fh.read().rsplit(")", 1)[1].split()[19]
        _worker = (pid, f"{pid}-{started}")
    return _worker[1]


def sample(client: featbit_shm.FBClient) -> list[int]:
    with _lock:
        return [next(_seq), client.generation, client.update_status_provider.latest_version]


def memory() -> dict[str, int]:
    """RSS and its parts in KiB: anonymous (private heap), file-backed, and
    shared memory (the snapshot's and the event ring's pages this process
    touched)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")):
                name, value = line.split()[:2]
                out[name[:-1]] = int(value)
    return {"rss": out.get("VmRSS", 0), "anon": out.get("RssAnon", 0), "file": out.get("RssFile", 0), "shmem": out.get("RssShmem", 0)}


def final(client: featbit_shm.FBClient, quick: bool) -> dict[str, Any]:
    digests: list[str] = []
    s = sample(client)
    for user in () if quick else PROBE_USERS:
        states = client.get_all_latest_flag_variations(user)
        digests.append(digest((key, states.get_variation(key)) for key in states.keys()))
    return {"w": worker_id(), "s": s, "s1": sample(client), "d": digests}


def warm_up(client: featbit_shm.FBClient) -> None:
    """Once per worker, before its first answer: compile every flag (no
    events). A worker's memory then starts at the size of a full flag cache,
    instead of growing whenever the patch schedule happens to leave one
    snapshot alive long enough for more of the 5,000 flags to be compiled;
    growth after that is what the soak's memory check is about."""
    global _warm
    if _warm != os.getpid():
        with _lock:
            if _warm != os.getpid():
                client.get_all_latest_flag_variations(PROBE_USERS[0])
                _warm = os.getpid()


def evaluate(client: featbit_shm.FBClient, query: dict[str, str]) -> dict[str, Any]:
    warm_up(client)
    user = {"key": query["u"], "name": query["u"], "country": query.get("c", "us"), "plan": query.get("p", "free")}
    keys = [flag_key(int(i)) for i in query.get("f", "").split(",") if i]
    s0 = sample(client)
    values = [client.variation(key, user, DEFAULT) for key in keys]
    s1 = sample(client)
    return {"w": worker_id(), "s0": s0, "r": values, "s1": s1, "mem": memory()}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    client = featbit_shm.get()
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "/")
    try:
        body = final(client, "quick" in query) if path == "/final" else evaluate(client, query)
        status = "200 OK"
    except Exception as exc:  # noqa: BLE001 - the soak counts it as a failed request
        body, status = {"error": repr(exc)}, "500 Internal Server Error"
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
