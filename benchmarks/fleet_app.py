"""The app and the worker-side probes of bench_fleet, for both SDKs.

    GET /eval?user=u123   evaluates FLEET_FLAGS (10 flags) for that user and
                          answers {"pid": ..., "ok": <evaluations that returned
                          the flag's value, not the default>}

The gunicorn configs (``fleet_conf_shm.py``, ``fleet_conf_fbclient.py``) call
:func:`boot` in ``post_fork`` and :func:`finish` in ``worker_exit``. Every
worker reports through files in ``FLEET_DIR`` (the driver cannot choose which
worker answers an HTTP request, so it reads files instead):

* ``boot-<pid>.json``   -- cold start: ``time.monotonic()`` at the entry of
  ``post_fork`` and at the first evaluation of ``fleet-probe`` that returned
  the expected value ``FLEET_PROBE_EXPECT`` (CLOCK_MONOTONIC is one clock for
  every process of the host);
* ``probe-<pid>.json``  -- propagation: while ``FLEET_DIR/probe-on`` exists, a
  probe thread reads the SDK's data version (``update_status_provider
  .latest_version``, public in both SDKs) every 1 ms and evaluates
  ``fleet-probe`` whenever it changed; the first time each value is returned
  is recorded. Outside that window the thread only looks for the file every
  50 ms. It is the benchmark's thread, not the SDK's: the driver subtracts
  it from the thread count. It also keeps the highest patch number returned
  so far in ``seen-<pid>`` (8 bytes, mapped), which the driver reads to send
  the next patch only once every worker has the previous one;
* ``events-<pid>.json`` -- evaluations that returned a flag's value (each one
  records exactly one analytics event in both SDKs), written at worker exit.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

SDK = os.environ.get("FLEET_SDK", "shm")  # "shm" or "fbclient"
DIR = os.environ.get("FLEET_DIR", "/tmp")
FLAGS = [k for k in os.environ.get("FLEET_FLAGS", "").split(",") if k]
PROBE = "fleet-probe"
DEFAULT = "default"  # no flag of the benchmark has this value

# Import the SDK in the master (this module is imported by the gunicorn
# config), so neither SDK's cold start includes its import.
if SDK == "fbclient":
    import fbclient
    import fbclient.config
else:
    import featbit_shm

_client: Any = None
_evaluations = 0
_count_lock = threading.Lock()
_stopping = threading.Event()


def _write(name: str, obj: object) -> None:
    path = os.path.join(DIR, name)
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh)
    os.replace(path + ".tmp", path)  # the driver never reads a half-written file


def evaluate(key: str, user: dict[str, Any]) -> Any:
    """One evaluation, counted when it returned the flag's value (one event)."""
    global _evaluations
    value = _client.variation(key, user, DEFAULT)
    if value != DEFAULT:
        with _count_lock:
            _evaluations += 1
    return value


def start_fbclient() -> None:
    """The baseline: the official SDK created in each worker, as its README says."""
    global _client
    config = fbclient.config.Config(
        os.environ["FEATBIT_ENV_SECRET"], os.environ["FEATBIT_EVENT_URL"], os.environ["FEATBIT_STREAMING_URL"]
    )
    _client = fbclient.FBClient(config, start_wait=30)


def stop_fbclient() -> None:
    if _client is not None:
        _client.stop()


def start_shm(attach: Callable[[], None]) -> None:
    """featbit_shm: the gunicorn hook attaches; the app uses featbit_shm.get()."""
    global _client
    attach()
    _client = featbit_shm.get()


def boot(start: Callable[[], None]) -> None:
    """post_fork: attach, then evaluate until the probe flag has its expected value."""
    t0 = time.monotonic()
    expect = os.environ.get("FLEET_PROBE_EXPECT", "p0")
    user = {"key": "boot", "name": "boot"}
    ok = False
    attached = t0
    try:
        start()
        attached = time.monotonic()
        deadline = t0 + 60
        while time.monotonic() < deadline:
            if evaluate(PROBE, user) == expect:
                ok = True
                break
            time.sleep(0.0005)
    except Exception as exc:  # noqa: BLE001 - an exception in post_fork halts gunicorn
        print(f"fleet_app: boot failed: {exc!r}", flush=True)
    t1 = time.monotonic()
    _write(f"boot-{os.getpid()}.json", {"pid": os.getpid(), "t0": t0, "attached": attached, "t1": t1, "ok": ok})
    threading.Thread(target=_probe_loop, name="fleet-probe", daemon=True).start()


def finish(stop: Callable[[], None]) -> None:
    """worker_exit: stop the SDK (the baseline flushes its events here), then
    report how many events this worker recorded."""
    _stopping.set()
    try:
        stop()
    except Exception as exc:  # noqa: BLE001
        print(f"fleet_app: stop failed: {exc!r}", flush=True)
    with _count_lock:
        count = _evaluations
    _write(f"events-{os.getpid()}.json", {"pid": os.getpid(), "evaluations": count})


def _probe_loop() -> None:
    flag_file = os.path.join(DIR, "probe-on")
    user = {"key": "probe", "name": "probe"}
    # The highest patch number this worker has returned, for the driver to
    # pace the patches (it reads this file; the latencies come from `seen`).
    with open(os.path.join(DIR, f"seen-{os.getpid()}"), "w+b") as fh:
        fh.write(struct.pack("<q", -1))
        fh.flush()
        progress = mmap.mmap(fh.fileno(), 8)
    while not _stopping.is_set():
        if not os.path.exists(flag_file):
            time.sleep(0.05)
            continue
        status = _client.update_status_provider
        seen: dict[str, float] = {}
        last_version = None
        polls = 0
        while not _stopping.is_set():
            version = status.latest_version
            if version != last_version:
                value = evaluate(PROBE, user)
                now = time.monotonic()
                last_version = version
                if isinstance(value, str) and value not in seen:
                    seen[value] = now
                    if value[1:].isdigit():
                        struct.pack_into("<q", progress, 0, int(value[1:]))
            polls += 1
            if polls % 20 == 0 and not os.path.exists(flag_file):
                break
            time.sleep(0.001)
        _write(f"probe-{os.getpid()}.json", {"pid": os.getpid(), "seen": seen})


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    key = query.get("user", ["anonymous"])[0]
    user = {"key": key, "name": key, "country": ("us", "fr", "de")[zlib.crc32(key.encode()) % 3]}
    ok = 0
    for flag in FLAGS:
        if evaluate(flag, user) != DEFAULT:
            ok += 1
    body = json.dumps({"pid": os.getpid(), "ok": ok}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
